"""A deterministic synthetic removal dataset (coloured shapes on smooth backgrounds) for smoke runs.

Each item holds an image with one or two coloured shapes, the expression naming the referred shape by
colour and kind ("the red circle on the left"), the ground truth without that shape, and its mask. It lets
the trainer, tests and benchmarks run without any real data.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from comcoco.ids import rng_for

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.9, 0.1, 0.1),
    "green": (0.1, 0.8, 0.2),
    "blue": (0.1, 0.2, 0.9),
    "yellow": (0.95, 0.9, 0.1),
}
SHAPES = ("circle", "square")


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    base = rng.uniform(0.3, 0.7, size=3)
    gx, gy = rng.uniform(-0.2, 0.2, size=(2, 3))
    img = base[:, None, None] + gx[:, None, None] * xx[None] + gy[:, None, None] * yy[None]
    return np.clip(img, 0, 1).astype(np.float32)


def _shape_mask(kind: str, cx: float, cy: float, r: float, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if kind == "circle":
        return ((xx - cx) ** 2 + (yy - cy) ** 2 <= r * r).astype(np.float32)
    return ((np.abs(xx - cx) <= r) & (np.abs(yy - cy) <= r)).astype(np.float32)


class SyntheticRemovalDataset(Dataset):
    """``n`` items of ``size``² images; item i depends only on (seed, i)."""

    def __init__(self, n: int, size: int = 64, seed: int = 0, distractor: bool = True):
        self.n, self.size, self.seed, self.distractor = n, size, seed, distractor

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < self.n:
            raise IndexError(i)
        rng = rng_for(self.seed, "sahm-synthetic", i)
        s = self.size
        bg = _background(rng, s)
        names = sorted(COLOURS)
        colour = names[int(rng.integers(len(names)))]
        kind = SHAPES[int(rng.integers(len(SHAPES)))]
        side = "left" if rng.random() < 0.5 else "right"
        r = float(rng.uniform(0.12, 0.2) * s)
        cx = float(rng.uniform(r, s / 2 - 1) if side == "left" else rng.uniform(s / 2 + 1, s - r))
        cy = float(rng.uniform(r, s - r))
        image = bg.copy()
        gt = bg.copy()
        if self.distractor:
            other = names[(names.index(colour) + 1 + int(rng.integers(len(names) - 1))) % len(names)]
            ox = s - cx
            oy = float(rng.uniform(r, s - r))
            om = _shape_mask(SHAPES[int(rng.integers(2))], ox, oy, r * 0.8, s)
            oc = np.array(COLOURS[other], dtype=np.float32)[:, None, None]
            image = image * (1 - om) + oc * om
            gt = gt * (1 - om) + oc * om
        m = _shape_mask(kind, cx, cy, r, s)
        c = np.array(COLOURS[colour], dtype=np.float32)[:, None, None]
        image = image * (1 - m) + c * m
        return {
            "image": torch.from_numpy(image.astype(np.float32)),
            "ground_truth": torch.from_numpy(gt.astype(np.float32)),
            "mask": torch.from_numpy(m[None].astype(np.float32)),
            "expression": f"the {colour} {kind} on the {side}",
        }

    def expressions(self) -> list[str]:
        return [self[i]["expression"] for i in range(self.n)]
