"""Loading a release: a torch Dataset of removal samples, its batches, and the REFER index of a variant.

The Dataset has one item per (sample, expression), the unit referring-removal models train on: each
item carries one expression with the composite, its ground truth and the object's mask. Composites keep
their COCO sizes, so items differ in height and width and PyTorch's default collate cannot stack them;
``collate`` pads them to the batch's largest size (or keeps lists), for ``DataLoader(collate_fn=...)``.
Variants are accepted by every name the card uses (``ComCOCO+`` and its config name ``ComCOCO_plus``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from comcoco.errors import ComcocoError
from comcoco.release.export import EFFECTS_DIR, GT_DIR, IMAGES_DIR, MASKS_DIR, SPLIT_BY, VARIANTS

SPLITS = ("train", "val", "test")


class ReleaseLoadError(ComcocoError):
    """The path is not a usable comcoco release, or the variant/split is unknown."""


def variant_names() -> dict[str, str]:
    """Every name of a variant, lower-cased, → its folder: ``ComCOCO+``, ``ComCOCO_plus`` (the card's config
    name), ``comcoco-plus`` and ``comcoco plus`` all name ComCOCO+."""
    out = {}
    for v in VARIANTS:
        for name in {v, v.replace("+", "_plus"), v.replace("+", "-plus"), v.replace("+", " plus"), v.replace("+", "plus")}:
            out[name.lower()] = v
    return out


def resolve_variant(variant: str) -> str:
    """The variant folder a name means (case-insensitive); ReleaseLoadError names the accepted ones."""
    found = variant_names().get(str(variant).strip().lower())
    if found is None:
        raise ReleaseLoadError(f"unknown variant {variant!r}; choose one of "
                               + ", ".join(f"{v} (or {v.replace('+', '_plus')})" if "+" in v else v for v in VARIANTS))
    return found


def load_refer(path: str | os.PathLike[str], variant: str = "ComCOCO") -> Any:
    """The project's REFER index (``ReferSource``) over ``<release>/<variant>/``; images in ``images/``."""
    from comcoco.sources.refer import SourceError, load_source

    variant = resolve_variant(variant)
    root = Path(path)
    try:
        return load_source(root, dataset=variant, split_by=SPLIT_BY, images=root / IMAGES_DIR)
    except SourceError as exc:
        raise ReleaseLoadError(str(exc)) from None


def _read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.array(im.convert("RGB"))


class ComCOCODataset(Dataset):
    """Items are dicts: ``image``, ``ground_truth`` (3×H×W), ``mask`` and ``effect_mask`` (1×H×W: the object,
    and the object with everything pasting it changed — its shadow — which a removal model inpaints),
    ``expression`` and ids.

    Images are uint8 tensors, or float32 in [0, 1] with ``as_float``; the mask holds 0/1. ``transform``
    (optional) is applied to each item dict and its result returned.
    """

    def __init__(self, path: str | os.PathLike[str], variant: str = "ComCOCO", split: str | None = "train",
                 transform: Callable[[dict[str, Any]], Any] | None = None, as_float: bool = False):
        if split is not None and split not in SPLITS:
            raise ReleaseLoadError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)} (or None for all)")
        self.root = Path(path)
        variant = resolve_variant(variant)
        self.variant, self.split = variant, split
        self.transform, self.as_float = transform, as_float
        self.refer = load_refer(self.root, variant)
        self.items: list[tuple[int, int]] = []  # (ref_id, sentence index)
        for ref_id in self.refer.getRefIds(split=split or ""):
            ref = self.refer.Refs[ref_id]
            if "comcoco" not in ref:
                raise ReleaseLoadError(f"{self.refer.refs_file}: ref {ref_id} has no 'comcoco' key; "
                                       "not a comcoco release")
            self.items.extend((ref_id, i) for i in range(len(ref["sentences"])))

    def __len__(self) -> int:
        return len(self.items)

    def _tensor(self, arr: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(arr))
        if t.ndim == 2:
            t = t.unsqueeze(0)
        else:
            t = t.permute(2, 0, 1)
        return t.float().div_(255.0) if self.as_float and t.dtype == torch.uint8 else t

    def _binary(self, m: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(m).unsqueeze(0)
        return t.float() if self.as_float else t

    def __getitem__(self, index: int) -> Any:
        ref_id, k = self.items[index]
        ref = self.refer.Refs[ref_id]
        meta = ref["comcoco"]
        image = self.refer.Imgs[ref["image_id"]]
        sentence = ref["sentences"][k]
        with Image.open(self.root / MASKS_DIR / meta["mask_file_name"]) as im:
            mask = (np.array(im.convert("L")) > 127).astype(np.uint8)
        effect_name = meta.get("effect_mask_file_name")  # releases made before effect masks: the mask
        if effect_name:
            with Image.open(self.root / EFFECTS_DIR / effect_name) as im:
                effect = (np.array(im.convert("L")) > 127).astype(np.uint8)
        else:
            effect = mask
        item = {
            "image": self._tensor(_read_rgb(self.root / IMAGES_DIR / image["file_name"])),
            "ground_truth": self._tensor(_read_rgb(self.root / GT_DIR / meta["gt_file_name"])),
            "mask": self._binary(mask),
            "effect_mask": self._binary(effect),
            "expression": sentence["raw"],
            "sent_id": sentence["sent_id"],
            "ref_id": ref_id,
            "ann_id": ref["ann_id"],
            "image_id": ref["image_id"],
            "sample_id": meta["sample_id"],
            "category_id": ref["category_id"],
            "split": ref["split"],
        }
        return self.transform(item) if self.transform is not None else item


def load(path: str | os.PathLike[str], variant: str = "ComCOCO", split: str | None = "train",
         transform: Callable[[dict[str, Any]], Any] | None = None, as_float: bool = False) -> ComCOCODataset:
    """A torch Dataset over one variant and split of an extracted release (``split=None``: all).

    Batch it with ``DataLoader(ds, batch_size=B, collate_fn=comcoco.collate)``: items differ in size.
    """
    return ComCOCODataset(path, variant=variant, split=split, transform=transform, as_float=as_float)


def _size(item: dict[str, Any]) -> tuple[int, int] | None:
    """The item's height and width: of ``image``, else of its first image-like (C×H×W) tensor."""
    image = item.get("image")
    if isinstance(image, torch.Tensor) and image.ndim == 3:
        return int(image.shape[-2]), int(image.shape[-1])
    for v in item.values():
        if isinstance(v, torch.Tensor) and v.ndim == 3:
            return int(v.shape[-2]), int(v.shape[-1])
    return None


def collate(items: list[dict[str, Any]], pad: bool = True, multiple: int = 1) -> dict[str, Any]:
    """A batch of ``load()`` items of different sizes, for ``DataLoader(collate_fn=comcoco.collate)``.

    Image-like tensors (C×H×W: ``image``, ``ground_truth``, ``mask``) are padded with zeros at the bottom
    and right to the batch's largest height and width (rounded up to ``multiple``) and stacked to
    B×C×H×W; ``valid`` (B×1×H×W, bool) marks the real pixels and ``size`` (B×2) holds each item's own
    height and width, so losses and metrics can ignore the padding. With ``pad=False`` image-like
    tensors stay lists (for models that take any size). Numbers become tensors, strings lists.
    Items that are not dicts (a ``transform`` returned something else) are stacked when they can be,
    listed otherwise. Use ``functools.partial(comcoco.collate, pad=False)`` to change the options.
    """
    if not items:
        return {}
    if not isinstance(items[0], dict):
        first = items[0]
        if isinstance(first, torch.Tensor) and all(isinstance(x, torch.Tensor) and x.shape == first.shape for x in items):
            return torch.stack(items)
        return list(items)
    sizes = [_size(x) for x in items]
    out: dict[str, Any] = {}
    height = width = 0
    if pad and all(s is not None for s in sizes):
        m = max(1, int(multiple))
        height = -(-max(s[0] for s in sizes) // m) * m
        width = -(-max(s[1] for s in sizes) // m) * m
    for key in items[0]:
        values = [x[key] for x in items]
        first = values[0]
        if isinstance(first, torch.Tensor) and first.ndim == 3:
            if not pad:
                out[key] = values
                continue
            batch = first.new_zeros((len(values), first.shape[0], height, width))
            for i, v in enumerate(values):
                batch[i, :, : v.shape[-2], : v.shape[-1]] = v
            out[key] = batch
        elif isinstance(first, torch.Tensor):
            same = all(v.shape == first.shape for v in values)
            out[key] = torch.stack(values) if same else values
        elif isinstance(first, bool | int | float) and all(isinstance(v, bool | int | float) for v in values):
            out[key] = torch.tensor(values)
        else:
            out[key] = values
    if all(s is not None for s in sizes):
        out["size"] = torch.tensor(sizes, dtype=torch.int64)
        if pad:
            valid = torch.zeros((len(items), 1, height, width), dtype=torch.bool)
            for i, (h, w) in enumerate(sizes):
                valid[i, :, :h, :w] = True
            out["valid"] = valid
    return out
