"""A deterministic synthetic removal dataset (coloured shapes on smooth backgrounds) for smoke runs.

Each item holds an image with coloured shapes, the expression naming the referred shape, the ground truth
without that shape, and its mask. It lets the trainer, tests and benchmarks run without any real data.

Layouts:

- ``default``: the referred shape and, with ``distractor``, one smaller shape of another colour on the
  other side ("the red circle on the left");
- ``fair``: the referred shape among ``distractors`` shapes of the same size and other colours, all placed
  at random without overlap ("the red circle"). Only the expression says which one is meant, so a model
  given no text can at best guess: the language baseline must collapse;
- ``shortcut``: as ``fair``, but the referred shape alone carries a bright one-pixel rim, the kind of seam
  a careless paste leaves. A model can find it without reading: the language baseline must not collapse.
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
LAYOUTS = ("default", "fair", "shortcut")


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
    """``n`` items of ``size``² images; item i depends only on (seed, i).

    Besides items it answers what the language baseline asks of a split: ``expression(i)``,
    ``ref_ids()`` (every item is its own object) and ``split``.
    """

    def __init__(self, n: int, size: int = 64, seed: int = 0, distractor: bool = True,
                 layout: str = "default", distractors: int = 3, split: str = "synthetic"):
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        if layout != "default" and not 1 <= distractors < len(COLOURS):
            raise ValueError(f"distractors must be 1..{len(COLOURS) - 1} (one colour each), got {distractors}")
        self.n, self.size, self.seed, self.distractor = n, size, seed, distractor
        self.layout, self.distractors, self.split = layout, distractors, split

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < self.n:
            raise IndexError(i)
        if self.layout != "default":
            return self._scene(i)
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

    def _scene(self, i: int) -> dict[str, Any]:
        """A ``fair`` or ``shortcut`` item: same-size shapes of distinct colours at random places."""
        rng = rng_for(self.seed, "sahm-synthetic", self.layout, i)
        s = self.size
        bg = _background(rng, s)
        colours = [sorted(COLOURS)[int(k)] for k in rng.permutation(len(COLOURS))[: self.distractors + 1]]
        kinds = [SHAPES[int(rng.integers(len(SHAPES)))] for _ in colours]
        r = float(rng.uniform(0.1, 0.14) * s)
        centres: list[tuple[float, float]] = []
        tries = 0
        while len(centres) < len(colours):  # rejection sampling: no two shapes overlap (> 2√2·r apart)
            c = (float(rng.uniform(r + 1, s - r - 1)), float(rng.uniform(r + 1, s - r - 1)))
            if all((c[0] - x) ** 2 + (c[1] - y) ** 2 > (2.9 * r) ** 2 for x, y in centres):
                centres.append(c)
            tries += 1
            if tries % 50 == 0:  # an early shape left no room: start the layout again
                centres.clear()
        image, gt = bg.copy(), bg.copy()
        masks = [_shape_mask(k, cx, cy, r, s) for k, (cx, cy) in zip(kinds, centres, strict=True)]
        for n, (m, colour) in enumerate(zip(masks, colours, strict=True)):
            c = np.array(COLOURS[colour], dtype=np.float32)[:, None, None]
            image = image * (1 - m) + c * m
            if n:  # shape 0 is the referred one: absent from the ground truth
                gt = gt * (1 - m) + c * m
        mask = masks[0]
        if self.layout == "shortcut":  # a white seam just outside the pasted shape, removed with it
            grown = _shape_mask(kinds[0], *centres[0], r + 1.0, s)
            rim = grown * (1 - mask)
            image = image * (1 - rim) + rim
            mask = grown
        return {
            "image": torch.from_numpy(image.astype(np.float32)),
            "ground_truth": torch.from_numpy(gt.astype(np.float32)),
            "mask": torch.from_numpy(mask[None].astype(np.float32)),
            "expression": f"the {colours[0]} {kinds[0]}",
        }

    def expression(self, i: int) -> str:
        return str(self[i]["expression"])

    def expressions(self) -> list[str]:
        return [self[i]["expression"] for i in range(self.n)]

    def ref_ids(self) -> list[int]:
        return list(range(self.n))
