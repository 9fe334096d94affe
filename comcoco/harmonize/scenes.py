"""Harmonize by the two photos, not by the seam: the robust profile's use of the ``fit`` filters.

``fit`` compares the object's pixels just inside its outline with the surroundings just outside and
closes half of every gap. That corrects a lighting mismatch, but it also erases part of the real
difference between an object and what stands behind it — a red jacket against green grass becomes a
duller jacket — and the scene's own objects keep that difference in full: an object harmonized by
its seam is told from them by its low contrast to its surroundings.

The mismatch a paste brings is the one between the two *photos* (exposure, white balance, contrast,
tone curve of two cameras and two lights), so ``fit_between`` fits the same six filters, with the
same solver and shrinkage, to move the statistics of the whole source photo towards those of the
whole background, and the object gets those arguments. Its own contrast with its new surroundings is
then whatever the two things are, as it is for the scene's own objects.
"""

from __future__ import annotations

import numpy as np

from comcoco.harmonize.fit import (
    _MIN_PIXELS,
    ChainStats,
    FitConfig,
    _alpha,
    _apply,
    _cap,
    _check_composite,
    _fit_work,
    _Work,
)
from comcoco.records import FilterArgs

_THUMB = 64  # whole-photo statistics from a strided thumbnail of about this many pixels per side


def _pixels(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    step = max(1, -(-max(h, w) // _THUMB))
    return img[::step, ::step].reshape(-1, 3).astype(np.float32) / np.float32(255.0)


def fit_between(source: np.ndarray, composite: np.ndarray, config: FitConfig | None = None) -> tuple[FilterArgs, ChainStats | None]:
    """The six filter arguments that move the ``source`` photo's statistics towards those of the
    ``composite`` (the background with the object in it; its thumbnail also fixes the whole-image
    statistics the filters are applied with). Identity when either photo is too small."""
    return _fit_pixels(_pixels(_check_composite(source)), _pixels(_check_composite(composite)), config)


def _fit_pixels(src: np.ndarray, dst: np.ndarray, config: FitConfig | None) -> tuple[FilterArgs, ChainStats | None]:
    if len(src) < _MIN_PIXELS or len(dst) < _MIN_PIXELS:
        return FilterArgs(), None
    work = _Work(obj=_cap(src), inner=_cap(src), outer=_cap(dst), thumb=dst)
    theta, stats = _fit_work(work, config or FitConfig())
    return FilterArgs.from_sequence(theta), stats


def harmonize_between(source: np.ndarray, composite: np.ndarray, mask: np.ndarray,
                      config: FitConfig | None = None) -> tuple[np.ndarray, FilterArgs]:
    """``composite`` with the object under ``mask`` given ``fit_between``'s arguments; every pixel
    where the mask is 0 is returned bit-exactly."""
    comp = _check_composite(composite)
    args, stats = fit_between(source, comp, config)
    return _apply(comp, _alpha(mask, comp.shape[:2]), args.as_tuple(), stats), args


def harmonize_object_between(source: np.ndarray, background: np.ndarray, rgb: np.ndarray, mask: np.ndarray,
                             box: tuple[int, int, int, int], config: FitConfig | None = None,
                             ) -> tuple[np.ndarray, FilterArgs]:
    """What ``harmonize_between`` gives the object, box-local, without building the full composite.

    The object (``rgb``, h×w×3, pasted at ``box`` = x, y, w, h where ``mask``) is what the composite
    would be the background plus. The fit reads the composite only through its strided thumbnail —
    the background's with the object's pixels on the thumbnail's grid — and the filters change the
    object's pixels only, each from its own value: the same bytes at a fraction of the work (no
    full-frame copies). Returns the object's colours (``rgb`` where ``mask`` is False).
    """
    comp = _check_composite(background)
    x, y, w, h = (int(v) for v in box)
    step = max(1, -(-max(comp.shape[:2]) // _THUMB))
    thumb = comp[::step, ::step].copy()
    r0, c0 = -(-y // step) * step, -(-x // step) * step  # the first grid row and column in the box
    on = mask[r0 - y::step, c0 - x::step]
    thumb[r0 // step:r0 // step + on.shape[0], c0 // step:c0 // step + on.shape[1]][on] = \
        rgb[r0 - y::step, c0 - x::step][on]
    dst = thumb.reshape(-1, 3).astype(np.float32) / np.float32(255.0)
    args, stats = _fit_pixels(_pixels(_check_composite(source)), dst, config)
    obj = np.ascontiguousarray(rgb)
    return _apply(obj, _alpha(mask, obj.shape[:2]), args.as_tuple(), stats), args
