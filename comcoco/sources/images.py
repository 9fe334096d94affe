"""Image decoding and instance masks: the one decoder every stage uses, and COCO masks.

``decode_image`` is the only way comcoco turns an image file into pixels: ``inspect --deep`` checks
files with it and the build composes from it, so a file that passes inspection decodes the same way
in the build. It decodes with OpenCV (libjpeg-turbo, fast) and refuses what OpenCV would silently
paint grey: a JPEG without its end-of-image marker, or bytes OpenCV cannot read. EXIF orientation is
deliberately ignored, since COCO polygons are drawn on the stored pixel grid. Masks go through
pycocotools so polygons rasterise exactly as COCO and REFER rasterise them.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError
from pycocotools import mask as mask_utils

from comcoco.errors import ComcocoError
from comcoco.records import ImageInfo


class ImageReadError(ComcocoError):
    """An image file that is missing, not an image, truncated, or not the size its record says."""

    def __init__(self, path: str | os.PathLike[str], reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


ImageLoadError = ImageReadError  # the name the compose stage has always caught

_HEADER_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


def decode_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode a file to an RGB ``uint8`` array of shape H×W×3 (grey and RGBA become RGB)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageReadError(path, "missing file") from None
    except OSError as exc:
        raise ImageReadError(path, f"unreadable ({exc.strerror or exc})") from None
    if data[:2] == b"\xff\xd8" and b"\xff\xd9" not in data[-1024:]:
        raise ImageReadError(path, "truncated JPEG (no end-of-image marker)")
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    except cv2.error as exc:
        raise ImageReadError(path, f"undecodable image ({len(data)} bytes): {str(exc).strip()[:200]}") from None
    if img is None:
        raise ImageReadError(path, f"undecodable image ({len(data)} bytes)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB, dst=img)


read_image = decode_image  # the name inspection used


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(width, height)`` from the file header only (cheap: no pixel decoding)."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "no such file")
    try:
        with Image.open(path) as im:
            return int(im.size[0]), int(im.size[1])
    except _HEADER_ERRORS as exc:
        raise ImageReadError(path, f"not a readable image ({type(exc).__name__}: {exc})") from None


class ImageCache:
    """A small LRU of decoded images by image id (backgrounds are reused); failures are cached too.

    Cached arrays are read-only so no stage can alter a shared background by accident.
    """

    def __init__(self, resolve: Callable[[int], Path], maxsize: int = 16):
        self._resolve = resolve
        self._maxsize = maxsize
        self._items: OrderedDict[int, np.ndarray | ImageReadError] = OrderedDict()

    def path(self, image_id: int) -> Path:
        return Path(self._resolve(image_id))

    def get(self, info: ImageInfo) -> np.ndarray:
        """The decoded image of ``info``; raises ImageReadError (also if the size disagrees)."""
        hit = self._items.get(info.image_id)
        if hit is None:
            try:
                img = decode_image(self.path(info.image_id))
                if img.shape[:2] != (info.height, info.width):
                    raise ImageReadError(
                        self.path(info.image_id),
                        f"decoded size {img.shape[1]}x{img.shape[0]} differs from the recorded "
                        f"{info.width}x{info.height}",
                    )
                img.flags.writeable = False
                hit = img
            except ImageReadError as exc:
                hit = exc
            self._items[info.image_id] = hit
            if len(self._items) > self._maxsize:
                self._items.popitem(last=False)
        else:
            self._items.move_to_end(info.image_id)
        if isinstance(hit, ImageReadError):
            raise hit
        return hit


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
