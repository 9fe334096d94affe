"""Image decoding and instance masks.

Decoding goes through Pillow because it reports truncated or corrupt files as errors instead of
returning a partially grey picture; EXIF orientation is deliberately ignored, since COCO polygons are
drawn on the stored pixel grid. Masks go through pycocotools so polygons rasterise exactly as COCO
and REFER rasterise them.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from pycocotools import mask as mask_utils


class ImageReadError(Exception):
    """An image file that is missing, not an image, or cannot be decoded completely."""

    def __init__(self, path: str | os.PathLike[str], reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


_DECODE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Fully decode ``path`` into an RGB ``uint8`` array of shape H×W×3 (a writable copy)."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                rgb = im if im.mode == "RGB" else im.convert("RGB")
                arr = np.array(rgb, dtype=np.uint8)
    except (*_DECODE_ERRORS, Image.DecompressionBombWarning) as exc:
        raise ImageReadError(path, f"cannot decode image ({type(exc).__name__}: {exc})") from None
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ImageReadError(path, f"decoded to unexpected shape {arr.shape}")
    return arr


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(width, height)`` from the file header only (cheap: no pixel decoding)."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "no such file")
    try:
        with Image.open(path) as im:
            return int(im.size[0]), int(im.size[1])
    except _DECODE_ERRORS as exc:
        raise ImageReadError(path, f"not a readable image ({type(exc).__name__}: {exc})") from None


# --- segmentation ------------------------------------------------------------------------------


def is_rle(segmentation: Any) -> bool:
    """True for a COCO RLE dict (compressed string or uncompressed list of counts)."""
    return isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation


def usable_polygons(segmentation: Sequence[Any]) -> list[list[float]]:
    """Polygons with at least three finite points, as float lists (a trailing odd coordinate is dropped).

    pycocotools reads a 4-number "polygon" as a bounding box, so shorter polygons must never reach it.
    """
    out: list[list[float]] = []
    for poly in segmentation:
        if not isinstance(poly, list | tuple | np.ndarray):
            raise ValueError(f"polygon must be a list of numbers, got {type(poly).__name__}")
        coords = [float(v) for v in poly]
        if len(coords) % 2:
            coords = coords[:-1]
        if len(coords) >= 6 and all(math.isfinite(v) for v in coords):
            out.append(coords)
    return out


def segmentation_rles(segmentation: Any, height: int, width: int) -> list[dict[str, Any]]:
    """One pycocotools RLE per part of the segmentation (per polygon, or the single RLE)."""
    height, width = int(height), int(width)
    if is_rle(segmentation):
        size = [int(v) for v in segmentation["size"]]
        if size != [height, width]:
            raise ValueError(f"RLE size {size} does not match image size [{height}, {width}]")
        counts = segmentation["counts"]
        if isinstance(counts, list):
            return [mask_utils.frPyObjects({"size": size, "counts": counts}, height, width)]
        if isinstance(counts, str):
            counts = counts.encode("ascii")
        return [{"size": size, "counts": counts}]
    if isinstance(segmentation, list | tuple):
        if segmentation and all(is_rle(part) for part in segmentation):
            return [rle for part in segmentation for rle in segmentation_rles(part, height, width)]
        polys = usable_polygons(segmentation)
        if not polys:
            return []
        return list(mask_utils.frPyObjects(polys, height, width))
    raise ValueError(f"unsupported segmentation of type {type(segmentation).__name__}")


def annotation_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """Binary ``uint8`` mask (values 0/1, H×W): the union of all polygons, or the decoded RLE."""
    height, width = int(height), int(width)
    rles = segmentation_rles(segmentation, height, width)
    if not rles:
        return np.zeros((height, width), dtype=np.uint8)
    merged = mask_utils.merge(rles) if len(rles) > 1 else rles[0]
    return np.ascontiguousarray(mask_utils.decode(merged), dtype=np.uint8)


def polygon_area(coords: Sequence[float]) -> float:
    """Absolute shoelace area of a flat ``[x0, y0, x1, y1, ...]`` polygon."""
    n = len(coords) // 2
    if n < 3:
        return 0.0
    xs = [float(v) for v in coords[0 : 2 * n : 2]]
    ys = [float(v) for v in coords[1 : 2 * n : 2]]
    # plain Python beats numpy for the few dozen points a COCO polygon has
    twice = sum(x0 * y1 - x1 * y0 for x0, y0, x1, y1 in zip(xs, ys, xs[1:] + xs[:1], ys[1:] + ys[:1], strict=True))
    return abs(twice) / 2.0
