"""The camera step's estimators: noise level and edge blur of a region, measured on tiles.

* ``noise_level`` — Immerkær's fast noise estimate: the image convolved with the Laplacian-difference
  kernel [[1,−2,1],[−2,4,−2],[1,−2,1]] has standard deviation 6σ for white noise of std σ. It is
  measured on the flattest half of the region (by the gradient of a smoothed copy) with a trimmed
  mean of |response| (lower 75 %, divided by its Gaussian value 0.515·6), so texture and edges do not
  read as noise. Returned for luma and the two chroma
  channels (YCrCb, 0–255 units).
* ``blur_sigma`` — the edge blur as an equivalent Gaussian σ: at an edge blurred by σ the gradient
  peak scales as 1/σ, so re-blurring by σ₀ scales it by r = σ/√(σ² + σ₀²) and σ = σ₀·r/√(1 − r²);
  r is the median ratio over the region's strongest-gradient pixels. The operator's own width adds
  the same amount to both sides of a comparison, which cancels in σ_bg² − σ_obj².

``_measure`` pools both over tiles of at most ``_TILE`` px so a large region costs no more than a
bound; ``_plan`` keeps a region's tiles and their eroded masks for a caller that measures the same
region under the same mask again (the camera step reads the object up to seven times).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from comcoco.pixels import magnitude

_IMMERKAER = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
_IMMERKAER_1D = np.array([1, -2, 1], np.float32)  # _IMMERKAER is its outer product with itself
_MIN_PIXELS = 64  # a region needs this many usable pixels for an estimate
_TILE = 64  # large regions are measured on tiles of this size
_FLAT = 0.5  # noise is measured on the flattest half of a region (texture would read as noise)
_TRIM_MEAN = 0.51489  # mean of |x| over its lower 75 % for x ~ N(0, 1): 2(φ(0) − φ(1.1503))/0.75
_SIGMA0 = 1.0  # re-blur of the sharpness estimate


@dataclass(frozen=True)
class NoiseLevel:
    """Noise standard deviation (0–255 units) of luma and chroma; None where unmeasurable."""

    y: float
    cr: float
    cb: float


# --- estimators ----------------------------------------------------------------------------------


def _ycrcb(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2YCrCb).astype(np.float32)


def _q(a: np.ndarray, q: float) -> float:
    """Quantile (order statistic) of a sample, from a strided subsample of ≤ 20k values: a threshold."""
    sub = a[:: max(1, a.size // 20000)]
    if sub.size == 0:
        return math.nan
    k = min(sub.size - 1, max(0, int(q * (sub.size - 1))))
    return float(np.partition(sub, k)[k])


def _q_whole(a: np.ndarray, q: float) -> float:
    """``_q`` of non-negative whole numbers (the |Immerkær| responses, below 4,096): the same order
    statistic, read off the values' counts instead of a partition (a third of its cost)."""
    sub = a[:: max(1, a.size // 20000)]
    if sub.size == 0:
        return math.nan
    k = min(sub.size - 1, max(0, int(q * (sub.size - 1))))
    return float(np.searchsorted(np.cumsum(np.bincount(sub.astype(np.intp))), k + 1))


def _valid(mask: np.ndarray | None, shape: tuple[int, ...], border: int) -> np.ndarray:
    if mask is None:  # the erosion of the whole region: all but its ``border``-px frame
        m = np.zeros(shape[:2], bool)
        m[border:shape[0] - border, border:shape[1] - border] = True
        return m
    return cv2.erode(np.asarray(mask, bool).astype(np.uint8), np.ones((2 * border + 1, 2 * border + 1), np.uint8),
                     borderType=cv2.BORDER_CONSTANT, borderValue=0) > 0


def _noise_samples(ycc: np.ndarray, mask: np.ndarray | None, valid: np.ndarray | None = None) -> np.ndarray:
    """|Immerkær response| (k×3, YCrCb) at the flattest half of the region's usable pixels.

    ``ycc`` holds whole numbers (``_ycrcb``), so the separable form of the kernel gives the same
    float32 values as the 3×3 one: every partial sum is a small integer, exact in float32.
    ``valid``: ``_valid(mask, ycc.shape, 1)`` when the caller already has it (it is not changed).
    """
    sel = _valid(mask, ycc.shape, 1) if valid is None else valid.copy()
    if np.count_nonzero(sel) < _MIN_PIXELS:
        return np.zeros((0, 3), np.float32)
    sm = cv2.GaussianBlur(ycc[..., 0], (0, 0), 2.0)
    g = np.abs(cv2.Sobel(sm, cv2.CV_32F, 1, 0, ksize=3))
    g += np.abs(cv2.Sobel(sm, cv2.CV_32F, 0, 1, ksize=3))
    sel &= g <= _q(g[sel], _FLAT)  # the flattest part: texture would read as noise
    return np.abs(cv2.sepFilter2D(ycc, cv2.CV_32F, _IMMERKAER_1D, _IMMERKAER_1D, borderType=cv2.BORDER_REFLECT)[sel])


def _blur_samples(lum: np.ndarray, mask: np.ndarray | None, top: float = 0.1, floor: float = 2.0,
                  valid: np.ndarray | None = None) -> np.ndarray:
    """Re-blur gradient ratios g(G_σ₀ ∗ I)/g(I) at the region's strongest-gradient pixels.

    ``floor`` keeps noise peaks out: a gradient must exceed it (callers pass ~2.5× the noise std,
    the 99.9th percentile of the Sobel magnitude of white noise being about 1.6σ). ``valid``:
    ``_valid(mask, lum.shape, 3)`` when the caller already has it.
    """
    sel = _valid(mask, lum.shape, 3) if valid is None else valid
    if np.count_nonzero(sel) < _MIN_PIXELS:
        return np.zeros(0, np.float32)

    g1 = _grad(lum)
    thr = max(_q(g1[sel], 1.0 - top), floor)  # strong edges only: noise stays below
    strong = sel & (g1 >= thr)
    if not strong.any():
        return np.zeros(0, np.float32)
    g2 = _grad(cv2.GaussianBlur(lum, (0, 0), _SIGMA0))
    return g2[strong] / g1[strong]


def _noise_from(samples: np.ndarray) -> NoiseLevel | None:
    if samples.shape[0] < _MIN_PIXELS:
        return None
    out = []
    for a in np.ascontiguousarray(samples.T):  # per channel, contiguous (the same values)
        a = a[a <= _q_whole(a, 0.75)]  # trimmed: the texture left in the flat part sits in the tail
        out.append(float(a.mean()) / (_TRIM_MEAN * 6.0))
    return NoiseLevel(y=out[0], cr=out[1], cb=out[2])


def _blur_from(ratios: np.ndarray) -> float | None:
    if ratios.size < 16:
        return None
    r = min(max(float(np.median(ratios)), 1e-3), 0.995)
    return _SIGMA0 * r / math.sqrt(1.0 - r * r)


def _grad(img: np.ndarray) -> np.ndarray:
    """Sobel gradient magnitude / 8 (float32; ``comcoco.pixels.magnitude``: the same bits on every run)."""
    return magnitude(cv2.Sobel(img, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(img, cv2.CV_32F, 0, 1, ksize=3)) * np.float32(1 / 8)


def _tiles(h: int, w: int, max_px: int) -> list[tuple[int, int, int, int]]:
    """The region itself if small enough, else a regular grid of _TILE-px tiles totalling about max_px."""
    if h * w <= max_px or h < _TILE or w < _TILE:
        return [(0, 0, w, h)]
    n = max(1, max_px // (_TILE * _TILE))
    step = max(_TILE, int(math.sqrt(h * w / n)))
    return [(x, y, _TILE, _TILE) for y in range((h % step) // 2, h - _TILE + 1, step)
            for x in range((w % step) // 2, w - _TILE + 1, step)]


class _Tile:
    """One tile of a measured region, with its share of the mask and that share's eroded forms
    (made when first needed): what every measurement of the same region under the same mask reuses."""

    __slots__ = ("box", "mask", "_valid1", "_valid3")

    def __init__(self, box: tuple[int, int, int, int], mask: np.ndarray | None):
        self.box, self.mask, self._valid1, self._valid3 = box, mask, None, None

    def valid(self, border: int) -> np.ndarray:
        shape = (self.box[3], self.box[2])
        if border == 1:
            if self._valid1 is None:
                self._valid1 = _valid(self.mask, shape, 1)
            return self._valid1
        if self._valid3 is None:
            self._valid3 = _valid(self.mask, shape, 3)
        return self._valid3


def _plan(shape: tuple[int, ...], mask: np.ndarray | None, max_px: int = 16384) -> list[_Tile]:
    """The tiles ``_measure`` reads of an h×w region under ``mask`` (those at least half inside it)."""
    tiles = []
    for x, y, w, h in _tiles(shape[0], shape[1], max_px):
        m = None if mask is None else mask[y:y + h, x:x + w]
        if m is not None and np.count_nonzero(m) < 0.5 * m.size and (w, h) != (shape[1], shape[0]):
            continue
        tiles.append(_Tile((x, y, w, h), m))
    return tiles


def _measure(rgb: np.ndarray, mask: np.ndarray | None, max_px: int = 16384, blur: bool = True,
             plan: list[_Tile] | None = None) -> tuple[float | None, NoiseLevel | None]:
    """(blur σ, noise) of a region, pooled over tiles so a large region costs no more than max_px.

    Noise first: its level sets the gradient floor of the blur estimate, so a noisy, soft region is
    not read as sharp. ``blur=False``: the noise only (blur None), for callers that need no more.
    ``plan``: ``_plan(rgb.shape, mask, max_px)``, kept by a caller that measures one region often.
    """
    if rgb.shape[0] < 7 or rgb.shape[1] < 7:
        return None, None
    tiles = _plan(rgb.shape, mask, max_px) if plan is None else plan
    if not tiles:
        return None, None
    planes = [(_ycrcb(rgb[y:y + h, x:x + w]), t) for t in tiles for x, y, w, h in (t.box,)]
    noise = _noise_from(np.concatenate([_noise_samples(ycc, t.mask, t.valid(1)) for ycc, t in planes]))
    floor = max(2.0, 2.5 * noise.y) if noise is not None else 2.0
    sigma = _blur_from(np.concatenate([_blur_samples(ycc[..., 0], t.mask, floor=floor, valid=t.valid(3))
                                       for ycc, t in planes])) if blur else None
    return sigma, noise


def noise_level(rgb: np.ndarray, mask: np.ndarray | None = None) -> NoiseLevel | None:
    """Robust Immerkær noise std per YCrCb channel inside ``mask`` (uint8 rgb, h×w×3); None if too small."""
    if rgb.shape[0] < 5 or rgb.shape[1] < 5:
        return None
    return _noise_from(_noise_samples(_ycrcb(rgb), mask))


def blur_sigma(rgb: np.ndarray, mask: np.ndarray | None = None, top: float = 0.1) -> float | None:
    """Equivalent Gaussian σ (px) of the edges inside ``mask``; None without enough edges."""
    if rgb.shape[0] < 7 or rgb.shape[1] < 7:
        return None
    ycc = _ycrcb(rgb)
    noise = _noise_from(_noise_samples(ycc, mask))
    floor = max(2.0, 2.5 * noise.y) if noise is not None else 2.0
    return _blur_from(_blur_samples(ycc[..., 0], mask, top, floor))
