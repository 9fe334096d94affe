"""The object's rim as it was in its own photo: how much darker (or lighter) its outermost pixels are.

A photographed object's outermost pixels differ from its interior in a way of their own — shading
that falls off towards the silhouette, the lens mixing it with what is behind it — and the scene's
own objects keep theirs. A pasted object's rim is changed by the steps before it reaches the
composite: the matte's decontamination gives the fringe the interior's colour, the harmonization
scales the colours, the camera step blurs the silhouette into a new background. On the 900-image
demo the audit read the result as a lighter inner rim than the natives' (``boundary.halo_in``,
docs/compose.md). This module measures the rim on the cut as it came from its photo and gives the
pasted object the same rim on the composite:

* ``rim_ratio(lum, mask)`` — log(mean luma of the rim / mean luma of the band just inside it): the rim
  is the mask's pixels within ``RIM`` px of its outline (a box edge counts as outline), the band the
  next ``RIM`` px; None when either has fewer than ``MIN_PIXELS`` pixels or is nearly black.
* ``source_rim(rgb, alpha)`` — that ratio of a cut (its box-local colours, with the source photo's
  background around the object, and its mask alpha ≥ 0.5).
* ``match_rim(rgb, alpha, background, box, target)`` — the object's colours multiplied by 1 + a·w, w
  a weight that is 1 on the rim (and on the soft pixels outside the mask) and falls to 0 over the
  next ``_FADE`` px, with the gain a solved so that the ratio read on the object blended into the
  background is ``target``; |a| is capped at ``MAX_GAIN``.

Numpy/OpenCV only, deterministic, never raises on data.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from comcoco.compose.cutout import MASK_THRESHOLD

RIM = 3  # px: the rim, and the width of the band inside it that it is compared with
MIN_PIXELS = 24  # pixels the rim and the band each need
MAX_GAIN = 0.1  # the rim's colours are scaled by at most ±10 % (±20 %: the same audit, docs/compose.md)
_FADE = 3.0  # px over which the gain fades inside the rim (no step at its inner edge)
_MIN_LUMA = 4.0  # a rim or band darker than this carries no ratio


def luma(rgb: np.ndarray) -> np.ndarray:
    """Y of YCrCb (BT.601, OpenCV's), float32: linear in R, G and B, so a gain on the colours scales it."""
    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2YCrCb)[..., 0].astype(np.float32)


def _depth(mask: np.ndarray) -> np.ndarray:
    """Distance (px) of each mask pixel from the nearest pixel outside it; a box edge counts as outside."""
    m8 = np.pad(np.asarray(mask, np.uint8), 1)
    return cv2.distanceTransform(m8, cv2.DIST_L2, 3)[1:-1, 1:-1]


def _bands(depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return (depth > 0) & (depth <= RIM), (depth > RIM) & (depth <= 2 * RIM)


def rim_ratio(lum: np.ndarray, mask: np.ndarray) -> float | None:
    """log(mean luma of the rim / mean luma of the band inside it) of one mask (module docstring)."""
    rim, band = _bands(_depth(mask))
    if np.count_nonzero(rim) < MIN_PIXELS or np.count_nonzero(band) < MIN_PIXELS:
        return None
    e, n = float(lum[rim].mean()), float(lum[band].mean())
    if e < _MIN_LUMA or n < _MIN_LUMA:
        return None
    return math.log(e / n)


def source_rim(rgb: np.ndarray, alpha: np.ndarray) -> float | None:
    """``rim_ratio`` of a cut as it came from its photo (box-local colours and alpha)."""
    return rim_ratio(luma(rgb), np.asarray(alpha) >= MASK_THRESHOLD)


def match_rim(rgb: np.ndarray, alpha: np.ndarray, background: np.ndarray, box: tuple[int, int, int, int],
              target: float) -> tuple[np.ndarray, float]:
    """(colours, gain a): the object's rim ratio on the composite brought to ``target`` (module docstring).

    The composite's luma is linear in the gain: on the blend αF + (1 − α)B, scaling F by 1 + a·w adds
    a·w·α·Y_F, so the rim's and the band's means are A + a·B each and a follows from one equation.
    Returns the colours unchanged (gain 0) when the object is too small to measure.
    """
    x, y, w, h = (int(v) for v in box)
    region = background[y:y + h, x:x + w]
    if region.shape[:2] != alpha.shape:
        return rgb, 0.0
    a = np.clip(np.asarray(alpha, np.float32), 0.0, 1.0)
    depth = _depth(a >= MASK_THRESHOLD)
    rim, band = _bands(depth)
    if np.count_nonzero(rim) < MIN_PIXELS or np.count_nonzero(band) < MIN_PIXELS:
        return rgb, 0.0
    y_obj = luma(rgb)
    trial = a * y_obj + (1.0 - a) * luma(region)
    weight = np.clip((RIM + _FADE - depth) / _FADE, 0.0, 1.0)  # 1 on the rim and outside, 0 from RIM + _FADE
    gain_y = weight * a * y_obj
    t = math.exp(target)
    ae, an = float(trial[rim].mean()), float(trial[band].mean())
    be, bn = float(gain_y[rim].mean()), float(gain_y[band].mean())
    den = be - t * bn
    if abs(den) < 1e-3:
        return rgb, 0.0
    gain = float(np.clip((t * an - ae) / den, -MAX_GAIN, MAX_GAIN))
    if abs(gain) < 1e-3:
        return rgb, 0.0
    shown = (a > 0) & (weight > 0)
    out = rgb.copy()
    scale = (1.0 + gain * weight[shown])[:, None]
    out[shown] = np.clip(np.rint(rgb[shown].astype(np.float32) * scale), 0, 255).astype(np.uint8)
    return out, round(gain, 4)
