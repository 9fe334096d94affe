"""Cutting an object out of its source image and pasting it into a background.

The object's alpha is rasterised straight from its (scaled) polygon at the placed size with 4×
supersampling, so edges are anti-aliased without blurring the colour crop, and the placed polygon
written to the metadata describes exactly the pixels that were pasted. Only the object's box is ever
touched or converted to float: the rest of the background stays bit-exact.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from comcoco.errors import ComcocoError

# Alpha at or above this value counts as object in the binary mask (so mask area ≈ pasted pixels).
MASK_THRESHOLD = 0.5
# Supersampling factor for the alpha raster; lowered for very large boxes to bound memory and time.
SUPERSAMPLE = 4
_LARGE_BOX = 640 * 640
_SHIFT = 4  # fixed-point fractional bits for cv2.fillPoly
_ERODE = np.ones((2, 2), np.uint8)
_EDGE = np.ones((3, 3), np.uint8)


class CutoutError(ComcocoError, ValueError):
    """The object cannot be cut: its segmentation is missing, malformed or degenerate."""


@dataclass(frozen=True)
class ObjectShape:
    """An object's outline in its source image and the integer crop rectangle around it.

    ``polygons`` is empty for RLE segmentations; then ``mask`` (the crop-sized binary mask) is set.
    """

    polygons: tuple[np.ndarray, ...]  # each (n, 2) float64, source image coordinates
    rect: tuple[int, int, int, int]  # x, y, w, h of the crop in the source image
    mask: np.ndarray | None = None  # uint8 {0,1}, rect-sized; only for RLE segmentations


@dataclass(frozen=True)
class Cutout:
    """An object ready to paste: colour and alpha at the placed size, and its placed outline."""

    rgb: np.ndarray  # h×w×3 uint8
    alpha: np.ndarray  # h×w float32 in [0, 1]
    box: tuple[int, int, int, int]  # x, y, w, h in the background
    polygons: tuple[tuple[float, ...], ...]  # flat [x1, y1, x2, y2, ...] in background coordinates

    @property
    def mask(self) -> np.ndarray:
        """Binary box-sized mask: alpha ≥ MASK_THRESHOLD."""
        return self.alpha >= MASK_THRESHOLD


def _polygon_area(p: np.ndarray) -> float:
    x, y = p[:, 0], p[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def object_shape(segmentation: Any, image_w: int, image_h: int) -> ObjectShape:
    """Validate a COCO segmentation and find the crop rectangle that holds it.

    Polygons with fewer than three points are dropped (COCO has a few); an outline that is empty, not
    finite, of zero area or outside the image raises CutoutError.
    """
    if isinstance(segmentation, dict):
        return _rle_shape(segmentation, image_w, image_h)
    if not isinstance(segmentation, list | tuple) or not segmentation:
        raise CutoutError("empty segmentation")
    polys: list[np.ndarray] = []
    for part in segmentation:
        if not isinstance(part, list | tuple) or len(part) < 6:
            continue
        try:
            arr = np.asarray(part, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise CutoutError(f"polygon has non-numeric coordinates: {exc}") from None
        if arr.ndim != 1 or arr.size % 2:
            raise CutoutError(f"polygon has an odd number of coordinates ({arr.size})")
        if not np.all(np.isfinite(arr)):
            raise CutoutError("polygon has non-finite coordinates")
        pts = arr.reshape(-1, 2)
        if _polygon_area(pts) > 1e-6:
            polys.append(pts)
    if not polys:
        raise CutoutError("degenerate polygon: no part with three points and non-zero area")
    allp = np.concatenate(polys)
    x0 = max(0, math.floor(float(allp[:, 0].min())))
    y0 = max(0, math.floor(float(allp[:, 1].min())))
    x1 = min(image_w, math.ceil(float(allp[:, 0].max())))
    y1 = min(image_h, math.ceil(float(allp[:, 1].max())))
    if x1 - x0 < 1 or y1 - y0 < 1:
        raise CutoutError(f"polygon lies outside the {image_w}x{image_h} image")
    return ObjectShape(polygons=tuple(polys), rect=(x0, y0, x1 - x0, y1 - y0))


def _rle_shape(segmentation: dict, image_w: int, image_h: int) -> ObjectShape:
    from comcoco.sources.images import annotation_mask

    try:
        full = annotation_mask(segmentation, image_h, image_w)
    except Exception as exc:  # pycocotools raises a variety of types on bad RLE
        raise CutoutError(f"undecodable RLE segmentation: {exc}") from None
    ys, xs = np.nonzero(full)
    if xs.size == 0:
        raise CutoutError("degenerate RLE segmentation: empty mask")
    x0, x1, y0, y1 = int(xs.min()), int(xs.max()) + 1, int(ys.min()), int(ys.max()) + 1
    crop = np.ascontiguousarray(full[y0:y1, x0:x1], dtype=np.uint8)
    return ObjectShape(polygons=(), rect=(x0, y0, x1 - x0, y1 - y0), mask=crop)


def rasterize_alpha(polygons: Sequence[np.ndarray], w: int, h: int, factor: int | None = None) -> np.ndarray:
    """Anti-aliased coverage of polygons (box-local pixel coordinates) on a w×h grid, float32 [0, 1].

    Pixel (i, j) covers [j, j+1)×[i, i+1); each is sampled on a factor×factor subgrid and averaged
    (area downsampling), so alpha is the covered fraction of the pixel to 1/factor².
    """
    if factor is None:
        factor = SUPERSAMPLE if w * h <= _LARGE_BOX else 2
    canvas = np.zeros((h * factor, w * factor), dtype=np.uint8)
    scale = float(1 << _SHIFT)
    for p in polygons:
        # cv2.fillPoly rounds both span ends and includes them (one subsample too many per span and
        # row); drawing half a subsample down-right and eroding by 2x2 at the top-left corner leaves
        # exactly the subsample centres inside the polygon (area bias < 0.3 % instead of +0.6 %).
        pts = np.rint(p * factor * scale).astype(np.int32).reshape(-1, 1, 2)
        cv2.fillPoly(canvas, [pts], 255, lineType=cv2.LINE_8, shift=_SHIFT)
    canvas = cv2.erode(canvas, _ERODE, anchor=(0, 0), borderType=cv2.BORDER_CONSTANT, borderValue=0)
    if factor == 1:
        small = canvas
    else:
        small = cv2.resize(canvas, (w, h), interpolation=cv2.INTER_AREA)
    return small.astype(np.float32) * np.float32(1.0 / 255.0)


def _resize(img: np.ndarray, w: int, h: int) -> np.ndarray:
    """Area interpolation when shrinking (no aliasing), bilinear when enlarging."""
    if img.shape[1] == w and img.shape[0] == h:
        return img.copy()
    shrink = w * h < img.shape[0] * img.shape[1]
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def _contour_polygons(mask: np.ndarray) -> list[np.ndarray]:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    out = []
    for c in contours:
        pts = c.reshape(-1, 2).astype(np.float64)
        if len(pts) >= 3:
            out.append(pts)
    return out


def cut_object(image: np.ndarray, shape: ObjectShape, box: tuple[int, int, int, int]) -> Cutout:
    """Scale the object's crop and outline to ``box`` (x, y, w, h in the background).

    The outline maps by x′ = x₀ + k_x·(x − r_x), y′ = y₀ + k_y·(y − r_y) with k_x = w/r_w, k_y = h/r_h
    (equal up to the integer rounding of the box, since placement keeps the aspect ratio).
    """
    bx, by, bw, bh = (int(v) for v in box)
    if bw < 1 or bh < 1:
        raise CutoutError(f"placed box {box} is empty")
    rx, ry, rw, rh = shape.rect
    crop = image[ry : ry + rh, rx : rx + rw]
    rgb = _resize(crop, bw, bh)
    kx, ky = bw / rw, bh / rh
    if shape.polygons:
        local = [np.column_stack(((p[:, 0] - rx) * kx, (p[:, 1] - ry) * ky)) for p in shape.polygons]
        alpha = rasterize_alpha(local, bw, bh)
    else:
        assert shape.mask is not None
        alpha = _resize(shape.mask.astype(np.float32), bw, bh)
        np.clip(alpha, 0.0, 1.0, out=alpha)
        local = _contour_polygons(alpha >= MASK_THRESHOLD)
    # Anti-aliasing lives on the mask's edge only: sub-threshold slivers (strands thinner than half
    # a pixel after scaling) are dropped, so every changed pixel is within 1 px of the binary mask.
    edge = cv2.dilate((alpha >= MASK_THRESHOLD).astype(np.uint8), _EDGE)
    alpha *= edge
    placed = []
    for p in local:
        q = np.column_stack((np.clip(p[:, 0], 0, bw) + bx, np.clip(p[:, 1], 0, bh) + by))
        placed.append(tuple(round(float(v), 2) for v in q.reshape(-1)))
    return Cutout(rgb=rgb, alpha=alpha, box=(bx, by, bw, bh), polygons=tuple(placed))


def paste(canvas: np.ndarray, cut: Cutout) -> None:
    """Alpha-blend the cutout into ``canvas`` in place, within its box only.

    Where alpha is 0 the blend adds exactly 0, so those pixels keep their original bytes.
    """
    x, y, w, h = cut.box
    region = canvas[y : y + h, x : x + w]
    base = region.astype(np.float32)
    a = cut.alpha[:, :, None]
    out = base + a * (cut.rgb.astype(np.float32) - base)
    np.rint(out, out=out)
    region[...] = out.astype(np.uint8)


def full_mask(cut: Cutout, height: int, width: int) -> np.ndarray:
    """The binary mask (uint8 0/255, one channel) of a cutout in background coordinates."""
    m = np.zeros((height, width), dtype=np.uint8)
    x, y, w, h = cut.box
    m[y : y + h, x : x + w][cut.mask] = 255
    return m


def full_alpha(cut: Cutout, height: int, width: int) -> np.ndarray:
    """The object's alpha (float32 0..1) in background coordinates."""
    a = np.zeros((height, width), dtype=np.float32)
    x, y, w, h = cut.box
    a[y : y + h, x : x + w] = cut.alpha
    return a


def dilated(mask: np.ndarray, radius: int = 8) -> np.ndarray:
    """Binary mask grown by ``radius`` pixels (elliptical kernel): the pair-fidelity exclusion zone."""
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.dilate((mask > 0).astype(np.uint8), k) > 0


def polygons_json(polygons: Sequence[Sequence[float]]) -> str:
    """Placed polygons as a compact JSON list of flat coordinate lists (the COCO layout)."""
    return json.dumps([list(p) for p in polygons], separators=(",", ":"))
