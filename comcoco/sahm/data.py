"""Release → SAHM training samples: paired crop/flip, resizing, and the tokenizing collate function.

A release is read through ``comcoco.load`` (one item per sample and expression). Training items get a
random crop (same aspect ratio as the image, scale ``min_scale``–1, kept around the referred object) and a
horizontal flip, applied identically to the composite, its ground truth and the mask; then all three are
resized to the configuration's square input. Evaluation items are only resized, so metrics see the whole
image. Randomness depends on (seed, epoch, item index) alone, so it does not matter which DataLoader
worker draws an item, and a resumed run sees the same crops as an uninterrupted one.

Each sample is first brought to a working resolution: area-downscaled (never upscaled) so its shorter
side is what the smallest crop needs to still cover the input size (``size / min_scale``). A 640×480
composite becomes 143×107 for the 64² tiny model, which makes decoding the dominant cost and lets the
decoded samples be kept in memory up to ``cache_mb`` (several expressions share one sample, and every
epoch revisits them). Cached or not, an item's tensors are the same bytes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from comcoco.errors import ComcocoError
from comcoco.ids import rng_for
from comcoco.sahm.train import Collator
from comcoco.text.syntax import extend_identity, split_words

TEXT_MODES = ("original", "random", "null")


class DataError(ComcocoError):
    """A release cannot be turned into training samples; the message names the release and item."""


@dataclass(frozen=True)
class CropBox:
    """A crop window in pixels (left, top, width, height) and whether the result is mirrored."""

    left: int
    top: int
    width: int
    height: int
    flip: bool


def _span(lo_edge: int, hi_edge: int, length: int, extent: int) -> tuple[int, int]:
    """Allowed start positions of a window of ``length`` in ``extent`` that covers [lo_edge, hi_edge)."""
    lo, hi = max(0, hi_edge - length), min(lo_edge, extent - length)
    if lo > hi:  # the object is larger than the window: keep its centre inside instead
        c = (lo_edge + hi_edge - 1) // 2
        lo, hi = max(0, c - length + 1), min(c, extent - length)
    return lo, max(lo, hi)


def sample_crop(
    mask: torch.Tensor, rng: np.random.Generator, min_scale: float = 0.6, flip_prob: float = 0.5
) -> CropBox:
    """A random crop of the image's aspect ratio holding the object's box (or its centre when too large)."""
    h, w = int(mask.shape[-2]), int(mask.shape[-1])
    s = float(rng.uniform(min_scale, 1.0))
    cw, ch = max(1, min(w, round(s * w))), max(1, min(h, round(s * h)))
    ys, xs = torch.nonzero(mask.reshape(h, w) > 0, as_tuple=True)
    if len(xs):
        x0, x1, y0, y1 = int(xs.min()), int(xs.max()) + 1, int(ys.min()), int(ys.max()) + 1
    else:  # no object pixels: any window
        x0, x1, y0, y1 = w, 0, h, 0
    lx, hx = _span(x0, x1, cw, w) if len(xs) else (0, w - cw)
    ly, hy = _span(y0, y1, ch, h) if len(ys) else (0, h - ch)
    left = int(rng.integers(lx, hx + 1))
    top = int(rng.integers(ly, hy + 1))
    return CropBox(left, top, cw, ch, bool(rng.random() < flip_prob))


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear, antialiased resize of a (C,H,W) float tensor to size×size."""
    if tuple(x.shape[-2:]) == (size, size):
        return x
    return F.interpolate(x[None].float(), size=(size, size), mode="bilinear", antialias=True,
                         align_corners=False)[0]


def apply_crop(
    image: torch.Tensor, ground_truth: torch.Tensor, mask: torch.Tensor, box: CropBox | None, size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Crop, flip and resize image, ground truth and mask with one geometry; the mask stays binary.

    The mask goes through the same bilinear resize as the images and is thresholded at 0.5, so an object
    pixel in the mask lands where the object's pixels land in the image.
    """
    out = []
    for x in (image, ground_truth, mask.float()):
        if box is not None:
            x = x[..., box.top : box.top + box.height, box.left : box.left + box.width]
            if box.flip:
                x = x.flip(-1)
        out.append(resize(x, size))
    img, gt, m = out
    return img.clamp(0, 1), gt.clamp(0, 1), (m >= 0.5).float()


def working_size(height: int, width: int, size: int, min_scale: float) -> tuple[int, int]:
    """(height, width) after scaling the shorter side down to ``ceil(size / min_scale)`` (never up)."""
    f = min(1.0, math.ceil(size / min_scale) / min(height, width))
    return max(1, round(height * f)), max(1, round(width * f))


def to_working(array: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Area-downscale an (H, W[, C]) uint8 array to ``hw``; unchanged when already that size."""
    if array.shape[:2] == hw:
        return array
    return cv2.resize(array, (hw[1], hw[0]), interpolation=cv2.INTER_AREA)


class ReleaseSamples(Dataset):
    """SAHM items from one split of a release: ``image``, ``ground_truth``, ``mask``, ``expression`` and ids.

    ``mask`` is the region to remove: the release's effect mask (the object and its shadow; the object's
    mask in releases without effects), since a robust composite differs from its ground truth there.

    ``train=True`` draws a crop and flip per (seed, epoch, index); call ``set_epoch`` before each epoch's
    DataLoader is created. ``train=False`` only resizes. ``cache_mb`` bounds the memory kept for decoded
    working-resolution samples in this process (0: none); with DataLoader workers each worker keeps its own.
    """

    def __init__(
        self,
        release: str | os.PathLike[str],
        split: str,
        size: int,
        train: bool,
        variant: str = "ComCOCO",
        seed: int = 0,
        min_scale: float = 0.6,
        flip_prob: float = 0.5,
        cache_mb: float = 0,
    ):
        from comcoco.release.dataset import ReleaseLoadError, load

        if size % 32:
            raise DataError(f"image size must be a multiple of 32, got {size}")
        if not 0 < min_scale <= 1:
            raise DataError(f"min_scale must be in (0, 1], got {min_scale}")
        try:
            self.base = load(release, variant=variant, split=split)
        except ReleaseLoadError as exc:
            raise DataError(f"{release}: {exc}") from None
        self.release, self.split, self.variant = str(release), split, variant
        self.size, self.train, self.seed = size, train, seed
        self.min_scale, self.flip_prob = min_scale, flip_prob
        self.epoch = 0
        self.cache_bytes = int(cache_mb * 2**20)
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._cached_bytes = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def expression(self, index: int) -> str:
        """The expression of item ``index`` without reading any image."""
        ref_id, k = self.base.items[index]
        return str(self.base.refer.Refs[ref_id]["sentences"][k]["raw"])

    def ref_ids(self) -> list[int]:
        """The referred object (ref id) of every item, in item order."""
        return [int(ref_id) for ref_id, _ in self.base.items]

    def expressions(self) -> list[str]:
        return [self.expression(i) for i in range(len(self))]

    def pasted_counts(self) -> list[int]:
        """How many objects were pasted into each item's composite: its target, the other targets and the
        decoys (the release's provenance: ``other_objects_ann_ids``, ``decoy_ann_ids``)."""
        out = []
        for ref_id, _ in self.base.items:
            made = self.base.refer.Refs[ref_id].get("comcoco") or {}
            out.append(1 + len(made.get("other_objects_ann_ids") or ()) + len(made.get("decoy_ann_ids") or ()))
        return out

    def category_names(self) -> list[str]:
        return sorted(set(self.base.refer.Cats.values()))

    def _sample(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Image, ground truth (3,h,w) and mask (1,h,w) of item ``index``'s sample, uint8 at working size."""
        ref_id = self.base.items[index][0]
        sample_id = str(self.base.refer.Refs[ref_id]["comcoco"]["sample_id"])
        hit = self._cache.get(sample_id)
        if hit is not None:
            return hit
        try:
            image, gt, mask = self._read(ref_id)
        except (OSError, KeyError, ValueError) as exc:
            raise DataError(f"{self.release}: {self.variant}/{self.split} ref {ref_id}: {exc}") from None
        if image.shape != gt.shape or image.shape[:2] != mask.shape:
            raise DataError(
                f"{self.release}: sample {sample_id}: image {image.shape[:2]}, ground truth "
                f"{gt.shape[:2]} and mask {mask.shape} differ in size"
            )
        hw = working_size(int(image.shape[0]), int(image.shape[1]), self.size, self.min_scale)
        rgb = [torch.from_numpy(to_working(x, hw)).permute(2, 0, 1).contiguous() for x in (image, gt)]
        m = to_working(mask * np.uint8(255), hw) >= 128
        out = (rgb[0], rgb[1], torch.from_numpy(m.astype(np.uint8))[None])
        nbytes = sum(t.numel() for t in out)
        if self._cached_bytes + nbytes <= self.cache_bytes:
            self._cache[sample_id] = out
            self._cached_bytes += nbytes
        return out

    def _read(self, ref_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The composite and ground truth (H,W,3 RGB) and the effect mask (H,W, 0/1) of a ref's sample.

        Only the three files a SAHM item needs are decoded (``comcoco.load`` also decodes the object mask),
        with OpenCV's PNG decoder, which is faster than Pillow's; the pixels are the same (lossless PNG).
        """
        from comcoco.release.export import EFFECTS_DIR, GT_DIR, IMAGES_DIR, MASKS_DIR

        root = Path(self.base.root)
        ref = self.base.refer.Refs[ref_id]
        meta = ref["comcoco"]
        effect = meta.get("effect_mask_file_name")  # releases made before effect masks: the object mask
        mask_path = root / EFFECTS_DIR / effect if effect else root / MASKS_DIR / meta["mask_file_name"]
        paths = (root / IMAGES_DIR / self.base.refer.Imgs[ref["image_id"]]["file_name"], root / GT_DIR / meta["gt_file_name"])
        rgb = [_read_png(p, cv2.IMREAD_COLOR) for p in paths]
        mask = (_read_png(mask_path, cv2.IMREAD_GRAYSCALE) > 127).astype(np.uint8)
        return cv2.cvtColor(rgb[0], cv2.COLOR_BGR2RGB), cv2.cvtColor(rgb[1], cv2.COLOR_BGR2RGB), mask

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self.base.items):
            raise IndexError(f"item {index} out of range for {len(self.base.items)} items")
        ref_id, k = self.base.items[index]
        ref = self.base.refer.Refs[ref_id]
        image, gt, mask = self._sample(index)
        image, gt, mask = image.float() / 255, gt.float() / 255, mask.float()
        box = None
        if self.train:
            rng = rng_for(self.seed, "sahm-augment", self.epoch, index)
            box = sample_crop(mask, rng, self.min_scale, self.flip_prob)
        image, gt, mask = apply_crop(image, gt, mask, box, self.size)
        sentence = ref["sentences"][k]
        return {
            "image": image,
            "ground_truth": gt,
            "mask": mask,
            "expression": str(sentence["raw"]),
            "sample_id": str(ref["comcoco"]["sample_id"]),
            "sent_id": int(sentence["sent_id"]),
            "ref_id": int(ref_id),
        }


def _read_png(path: Path, flags: int) -> np.ndarray:
    if not path.is_file():
        raise OSError(f"{path}: missing")
    out = cv2.imread(str(path), flags)
    if out is None:
        raise ValueError(f"{path}: not a readable image")
    return out


class TextSubstitute(Dataset):
    """A dataset's items with the expression replaced: ``random`` words or ``null`` (empty) text.

    ``base`` is any dataset with ``expression(i)`` (``ReleaseSamples``, the synthetic sets). Random text
    has as many words as the original, drawn (seeded per item) from ``vocabulary``.
    """

    def __init__(self, base: Any, mode: str, vocabulary: Sequence[str] = (), seed: int = 0):
        if mode not in TEXT_MODES:
            raise ValueError(f"text mode must be one of {TEXT_MODES}, got {mode!r}")
        if mode == "random" and not vocabulary:
            raise ValueError("random text needs a non-empty vocabulary")
        self.base, self.mode, self.vocabulary, self.seed = base, mode, sorted(set(vocabulary)), seed

    def __len__(self) -> int:
        return len(self.base)

    def text(self, index: int, original: str | None = None) -> str:
        """The substituted expression of item ``index`` (``original``: its expression, when already read)."""
        original = self.base.expression(index) if original is None else original
        if self.mode == "original":
            return original
        if self.mode == "null":
            return ""
        n = max(1, len(split_words(original)))
        rng = rng_for(self.seed, "sahm-random-text", index)
        return " ".join(self.vocabulary[int(k)] for k in rng.integers(len(self.vocabulary), size=n))

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.base[index]
        return {**item, "expression": self.text(index, str(item["expression"]))}


def make_collate(tokenizer: Any, max_len: int, category_names: Iterable[str] = ()) -> Collator:
    """The Trainer's collate function with identity words extended by the release's category names."""
    return Collator(tokenizer, max_len, extend_identity(category_names))


def training_expressions(datasets: Sequence[ReleaseSamples]) -> list[str]:
    """All expressions of the given datasets (the tokenizer's training corpus), in dataset order."""
    return [e for ds in datasets for e in ds.expressions()]
