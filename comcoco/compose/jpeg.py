"""JPEG consistency: give a pasted object the scene's 8×8 block grid and chroma bleed.

A pasted object's own JPEG blocks were resampled away, so it shows no grid where the scene has one
and its chroma edge is sharper than a 4:2:0 photograph's (image forensics reads both: block-artefact
grid mismatch, chroma subsampling).

* ``jpeg_regrid`` — JPEG round trip of the object's region, cut on the full image's 16-px MCU grid
  (so its 8×8 blocks are the background's), at the background's quality and chroma subsampling, taken
  back where the object's alpha is > 0 and, fading out, over a ``bleed``-px ring around it: the object
  then carries the scene's block grid and the chroma bleed a real edge has.
  ``estimate_jpeg_quality`` reads the background file's quantisation tables (Pillow) and matches them
  to the IJG tables scaled by quality; without a JPEG file it finds the quality from the pixels by
  re-compression (the JPEG-ghost dip), or reports that the image shows no JPEG history.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from comcoco.sources.images import imdecode_rgb

# IJG (libjpeg) standard luminance quantisation table, natural order
_IJG_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], np.float64)
_SAMPLING = {0: cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444, 1: cv2.IMWRITE_JPEG_SAMPLING_FACTOR_422,
             2: cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420}
_GHOST_DIP = 0.15  # relative depth of the JPEG-ghost dip that counts as evidence


@dataclass(frozen=True)
class JpegEstimate:
    quality: int | None  # None: no evidence the background was ever JPEG-compressed
    subsampling: int  # 0 = 4:4:4, 1 = 4:2:2, 2 = 4:2:0
    method: str  # "tables" | "pixels" | "none"


@dataclass(frozen=True)
class Regrid:
    """New composite pixels over ``region`` where ``effect`` is set (everything else unchanged)."""

    region: tuple[int, int, int, int]
    pixels: np.ndarray  # h×w×3 uint8
    effect: np.ndarray  # h×w bool: pixels that differ from the composite
    quality: int | None

    def apply(self, canvas: np.ndarray) -> None:
        x, y, w, h = self.region
        if w and h:
            canvas[y:y + h, x:x + w][self.effect] = self.pixels[self.effect]

    def full_effect(self, height: int, width: int) -> np.ndarray:
        out = np.zeros((height, width), dtype=bool)
        x, y, w, h = self.region
        out[y:y + h, x:x + w] = self.effect
        return out


def _ijg_table(q: int) -> np.ndarray:
    scale = 5000.0 / q if q < 50 else 200.0 - 2.0 * q
    return np.clip(np.floor((_IJG_LUMA * scale + 50.0) / 100.0), 1, 255)


_IJG_TABLES = np.stack([_ijg_table(q) for q in range(1, 101)])  # quality 1..100 × 64


def quality_from_table(table: Any) -> int:
    """The IJG quality whose scaled standard luminance table is closest to ``table`` (64 values)."""
    t = np.asarray(list(table), np.float64)
    return int(np.argmin(np.abs(_IJG_TABLES - t[None, :]).sum(axis=1))) + 1


def blockiness(rgb: np.ndarray, origin: tuple[int, int] = (0, 0)) -> float:
    """Mean |second difference| of luma across 8-px block boundaries over that inside blocks (≈1: no grid).

    ``origin`` is the (x, y) of ``rgb``'s top-left pixel in the full image, whose grid is meant.
    """
    if rgb.ndim == 3:
        lum = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2YCrCb)[..., 0].astype(np.float32)
    else:
        lum = rgb.astype(np.float32)
    ratios = []
    for axis, off in ((1, origin[0]), (0, origin[1])):
        d = np.abs(np.diff(lum, n=1, axis=axis))  # d[i] = |I[i+1] − I[i]|: boundary when (off+i+1) % 8 == 0
        if d.shape[axis] < 16:
            continue
        pos = (np.arange(d.shape[axis]) + off + 1) % 8
        on = np.take(d, np.nonzero(pos == 0)[0], axis=axis).mean()
        off_ = np.take(d, np.nonzero(pos != 0)[0], axis=axis).mean()
        ratios.append(float(on) / max(float(off_), 1e-6))
    return float(np.mean(ratios)) if ratios else 1.0


def _roundtrip(rgb: np.ndarray, quality: int, subsampling: int = 2) -> np.ndarray:
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality),
              cv2.IMWRITE_JPEG_SAMPLING_FACTOR, _SAMPLING.get(int(subsampling), _SAMPLING[2])]
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise RuntimeError(f"JPEG encoding of a {rgb.shape} region failed")
    out = imdecode_rgb(buf)
    if out is None:
        raise RuntimeError(f"JPEG decoding of a {rgb.shape} region failed")
    return out


def estimate_jpeg_quality(source: str | Path | bytes | None = None, pixels: np.ndarray | None = None) -> JpegEstimate:
    """The background's JPEG quality: from the file's tables when it is a JPEG, else from its pixels."""
    if source is not None:
        try:
            from PIL import Image, JpegImagePlugin

            fp = source if isinstance(source, str | Path) else io.BytesIO(bytes(source))
            with Image.open(fp) as im:  # the header only: tables are read, pixels are not decoded
                if im.format == "JPEG" and getattr(im, "quantization", None):
                    q = quality_from_table(im.quantization[0])
                    samp = JpegImagePlugin.get_sampling(im)
                    return JpegEstimate(q, samp if samp in (0, 1, 2) else 2, "tables")
        except (OSError, ValueError, SyntaxError):
            pass  # not readable as an image: fall through to the pixels
    if pixels is None:
        return JpegEstimate(None, 2, "none")
    return _quality_from_pixels(pixels)


def _quality_from_pixels(pixels: np.ndarray) -> JpegEstimate:
    """JPEG ghost: re-compressing at the original quality is nearly idempotent, so the error dips there.

    Each quality 50..99 re-compresses a 128-px crop on the image's own 16-px grid; the quality whose
    error is lowest relative to its two neighbours wins if the dip is deep enough (≥ ``_GHOST_DIP``),
    otherwise the image shows no JPEG history and None is returned.
    """
    h, w = pixels.shape[:2]
    s = min(128, (h // 16) * 16, (w // 16) * 16)
    if s < 32:
        return JpegEstimate(None, 2, "pixels")
    y0, x0 = ((h - s) // 32) * 16, ((w - s) // 32) * 16
    crop = np.ascontiguousarray(pixels[y0:y0 + s, x0:x0 + s])
    qs = np.arange(49, 101)
    errs = np.array([np.abs(_roundtrip(crop, int(q)).astype(np.int16) - crop).mean() for q in qs])
    neigh = np.minimum(errs[:-2], errs[2:])
    dip = 1.0 - errs[1:-1] / np.maximum(neigh, 1e-6)
    k = int(np.argmax(dip))
    if dip[k] < _GHOST_DIP:
        return JpegEstimate(None, 2, "pixels")
    return JpegEstimate(int(qs[k + 1]), 2, "pixels")


def jpeg_regrid(composite: np.ndarray, alpha: np.ndarray, box: tuple[int, int, int, int],
                estimate: JpegEstimate, bleed: int = 2) -> Regrid:
    """Round-trip the object's region through JPEG on the image's own grid; see the module docstring.

    ``composite`` is the frame with the object already pasted; ``alpha`` is box-local at ``box``.
    Returns the new pixels and their footprint (nothing is written).
    """
    H, W = composite.shape[:2]
    x, y, w, h = (int(v) for v in box)
    if estimate.quality is None or w < 1 or h < 1:
        return Regrid((x, y, 0, 0), np.zeros((0, 0, 3), np.uint8), np.zeros((0, 0), bool), None)
    x0, y0 = max(0, (x - bleed - 8) // 16 * 16), max(0, (y - bleed - 8) // 16 * 16)
    x1 = min(W, -(-(x + w + bleed + 8) // 16) * 16)
    y1 = min(H, -(-(y + h + bleed + 8) // 16) * 16)
    region = composite[y0:y1, x0:x1]
    dec = _roundtrip(region, int(estimate.quality), estimate.subsampling)
    a = np.zeros(region.shape[:2], np.float32)
    a[y - y0:y - y0 + h, x - x0:x - x0 + w] = np.clip(alpha, 0.0, 1.0)
    wgt = (a > 0).astype(np.float32)
    if bleed > 0:
        d = cv2.distanceTransform((a <= 0).astype(np.uint8), cv2.DIST_L2, 3)
        wgt = np.maximum(wgt, np.clip(1.0 - (d - 1.0) / float(bleed), 0.0, 1.0))
    out = region.astype(np.float32) + wgt[..., None] * (dec.astype(np.float32) - region.astype(np.float32))
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    effect = np.any(out != region, axis=-1)
    return Regrid((x0, y0, x1 - x0, y1 - y0), out, effect, int(estimate.quality))
