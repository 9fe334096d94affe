"""Harmonizer's six white-box filters in numpy (the fast path; the differentiable twin is ``filters_torch``).

The filters follow the formulas of Harmonizer (Ke et al., ECCV 2022): they run in the fixed order
temperature → brightness → contrast → saturation → highlight → shadow, each on the *whole running
image* (temperature and contrast use whole-image means), every output clamped to [0, 1]; a mask is
applied only once, at the end: ``filtered·m + img·(1−m)``. Zero arguments are exactly the identity in
numpy (a zero-argument filter is skipped) and within 1e-6 in torch. The numpy and torch versions agree
to 1e-5.

Guards: brightness and saturation use ``1/max(1−x, 1e-6)`` (finite at x = 1, exact identity at x = 0),
channel means get +1e-6, the gamma filters add 1e-9 to their base so 0^p never occurs. The gamma
filters evaluate the power in float64 (then round to float32) so numpy and torch agree even where a
small exponent makes the curve steep near 0 or 1.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from comcoco.records import FILTER_NAMES

# Harmonizer's synthesis ranges, in FILTER_NAMES order (used to draw training perturbations).
FILTER_RANGES: tuple[float, ...] = (0.3, 0.5, 0.5, 0.6, 0.4, 0.4)

EPS = 1e-6
POW_EPS = 1e-9

ArrayF = np.ndarray


# --- numpy ---------------------------------------------------------------------------------------


def _as_image(img: np.ndarray) -> np.ndarray:
    arr = np.asarray(img)
    if arr.ndim < 1 or arr.shape[-1] != 3:
        raise ValueError(f"expected an RGB array with a last axis of 3, got shape {arr.shape}")
    return arr.astype(np.float32, copy=False)


def _f32(x: float) -> np.float32:
    return np.float32(x)


def channel_means(img: np.ndarray) -> np.ndarray:
    """Per-channel means of an (..., 3) image (float64 accumulation), as temperature needs them."""
    return np.asarray(img, dtype=np.float32).reshape(-1, 3).mean(axis=0, dtype=np.float64)


def temperature_gains(means: Sequence[float], x: float) -> np.ndarray:
    """The three channel multipliers temperature applies, given the image's channel means.

    a_c = 1 − g/m_c; x > 0 adds |x| to m_B and |x|/2 to m_G (x < 0: to m_R and m_G);
    gain_c = g′/m′_c + a_c. Exposed so callers can apply the filter with means from another copy.
    """
    m = np.asarray(means, dtype=np.float64).reshape(3)
    xf = float(_f32(x))
    ax = abs(xf)
    g = m.mean()
    a = 1.0 - g / (m + EPS)
    shift = np.array([ax if xf < 0 else 0.0, 0.5 * ax if xf != 0 else 0.0, ax if xf > 0 else 0.0])
    m2 = m + shift
    g2 = m2.mean()
    return (g2 / (m2 + EPS) + a).astype(np.float32)


def temperature(img: np.ndarray, x: float, means: Sequence[float] | None = None) -> np.ndarray:
    """Colour temperature: x > 0 warms, x < 0 cools; channel gains from whole-image means."""
    img = _as_image(img)
    if x == 0:
        return img
    m = channel_means(img) if means is None else means
    return np.clip(img * temperature_gains(m, x), 0.0, 1.0)


def brightness_alpha(x: float) -> np.float32:
    """HSV value multiplier: 1/(1−x) for x ≥ 0 (capped at 1e6), 1+x for x < 0 (float32 maths)."""
    xf = _f32(x)
    if xf >= 0:
        return _f32(_f32(1.0) / max(_f32(1.0) - xf, _f32(EPS)))
    return _f32(_f32(1.0) + xf)


def brightness(img: np.ndarray, x: float) -> np.ndarray:
    """Brightness: V ← α·V at fixed H, S, which is α·RGB (V is not clamped before converting back)."""
    img = _as_image(img)
    if x == 0:
        return img
    return np.clip(img * brightness_alpha(x), 0.0, 1.0)


def contrast_factor(x: float) -> float:
    """Effective contrast slope x′: 255/(256 − ⌊255x⌋) − 1 for x > 0, x otherwise (float32 maths)."""
    xf = _f32(x)
    if xf > 0:
        return float(_f32(255.0) / (_f32(256.0) - np.floor(xf * _f32(255.0))) - _f32(1.0))
    return float(xf)


def contrast(img: np.ndarray, x: float, mean: float | None = None) -> np.ndarray:
    """Contrast around the whole-image mean t (all channels, all pixels): I + (I − t)·x′."""
    img = _as_image(img)
    if x == 0:
        return img
    t = _f32(img.mean(dtype=np.float64) if mean is None else mean)
    return np.clip(img + (img - t) * _f32(contrast_factor(x)), 0.0, 1.0)


def saturation(img: np.ndarray, x: float) -> np.ndarray:
    """HSL saturation: x ≥ 0 pushes away from lightness L (at most to full S), x < 0 towards it."""
    img = _as_image(img)
    if x == 0:
        return img
    xf = _f32(x)
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    cmax = np.maximum(np.maximum(r, g), b)[..., None]  # faster than a reduction over a length-3 axis
    cmin = np.minimum(np.minimum(r, g), b)[..., None]
    var = cmax - cmin
    ran = cmax + cmin
    light = ran * _f32(0.5)
    if xf >= 0:
        s = np.where(light < 0.5, var / (ran + _f32(EPS)), var / (_f32(2.0) - ran + _f32(EPS)))
        a_x = _f32(1.0) / max(_f32(1.0) - xf, _f32(EPS)) - _f32(1.0)
        a = np.where(xf + s > 1, _f32(1.0) / (s + _f32(EPS)) - _f32(1.0), a_x)
        out = img + (img - light) * a
    else:
        out = light + (img - light) * (_f32(1.0) + xf)
    return np.clip(out, 0.0, 1.0)


def highlight(img: np.ndarray, x: float) -> np.ndarray:
    """Highlight: 1 − (1 − I)^(1+x); x > 0 lifts bright tones."""
    img = _as_image(img)
    if x == 0:
        return img
    p = float(_f32(1.0) + _f32(x))
    base = (_f32(1.0) - img).astype(np.float64) + POW_EPS
    out = _f32(1.0) - np.clip(np.power(base, p), 0.0, 1.0).astype(np.float32)
    return np.clip(out, 0.0, 1.0)


def shadow(img: np.ndarray, x: float) -> np.ndarray:
    """Shadow: I^(1−x); x > 0 lifts dark tones."""
    img = _as_image(img)
    if x == 0:
        return img
    p = float(_f32(1.0) - _f32(x))
    return np.clip(np.power(img.astype(np.float64) + POW_EPS, p), 0.0, 1.0).astype(np.float32)


_NUMPY_FILTERS: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    "temperature": temperature,
    "brightness": brightness,
    "contrast": contrast,
    "saturation": saturation,
    "highlight": highlight,
    "shadow": shadow,
}


def apply_filter(name: str, img: np.ndarray, x: float) -> np.ndarray:
    """One named filter on a float32 (..., 3) image in [0, 1] (whole-image statistics)."""
    try:
        fn = _NUMPY_FILTERS[name]
    except KeyError:
        raise ValueError(f"unknown filter {name!r}; expected one of {', '.join(FILTER_NAMES)}") from None
    return fn(img, float(x))


def _check_args(args: Sequence[float]) -> list[float]:
    vals = [float(v) for v in np.asarray(args, dtype=np.float64).reshape(-1)]
    if len(vals) != len(FILTER_NAMES):
        raise ValueError(f"expected {len(FILTER_NAMES)} filter arguments, got {len(vals)}")
    if not all(np.isfinite(vals)):
        raise ValueError(f"filter arguments must be finite, got {vals}")
    return vals


def _mask_hw1(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    m = np.asarray(mask, dtype=np.float32)
    if m.ndim == len(shape):
        m = m[..., 0]
    if m.shape != shape[:-1]:
        raise ValueError(f"mask shape {np.asarray(mask).shape} does not match image shape {shape}")
    return np.clip(m, 0.0, 1.0)[..., None]


def _run_chain(
    img: np.ndarray, names: Sequence[str], vals: Sequence[float], mask: np.ndarray | None
) -> np.ndarray:
    img = _as_image(img)
    out = img
    for name, x in zip(names, vals, strict=True):
        out = apply_filter(name, out, x)
    if mask is None:
        return out
    m = _mask_hw1(mask, img.shape)
    return out * m + img * (_f32(1.0) - m)


def apply_filters(img: np.ndarray, args: Sequence[float], mask: np.ndarray | None = None) -> np.ndarray:
    """The six filters in Harmonizer order on the running image; with a mask, blend once at the end."""
    return _run_chain(img, FILTER_NAMES, _check_args(args), mask)


def synthesize(img: np.ndarray, mask: np.ndarray | None, args: Sequence[float]) -> np.ndarray:
    """Harmonizer's training perturbation: the filters in *reverse* order, blended into the mask."""
    vals = _check_args(args)
    return _run_chain(img, tuple(reversed(FILTER_NAMES)), tuple(reversed(vals)), mask)


def sample_synthesis_args(rng: np.random.Generator, ranges: Sequence[float] = FILTER_RANGES) -> np.ndarray:
    """Random arguments as the synthesis draws them: U(−1, 1)·range per filter."""
    r = np.asarray(ranges, dtype=np.float64)
    return rng.uniform(-1.0, 1.0, size=len(FILTER_NAMES)) * r
