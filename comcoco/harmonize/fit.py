"""Harmonize a pasted object: per-image filter fitting (default), Reinhard transfer, identity, network.

``fit`` finds the six Harmonizer filter arguments for one composite without any learned weights, so
that the pasted object's colour statistics move towards those of the scene across its outline, then
applies them at full resolution inside the object only. It is a closed-form, filter-by-filter solve
on a small working copy (≤128 px long side), cheap enough to run for every composite of the pipeline
(a few ms per object on one core).

Seam statistics: F = the object's pixels within ``band`` (1 working-copy pixel) inside its outline,
R = the surroundings' pixels within ``band`` outside it. Across the seam the scene is most alike, so
the gap between F and R says more about a colour mismatch and less about the object simply being a
different thing than a comparison of the whole object with a wide ring would.

Objective, per filter j in Harmonizer order (running F after filters 1..j−1):

    minimise  (g_j(θ_j) − Δ_j)² + λ_j θ_j²,   Δ_j = log stat_j(R) − log stat_j(F)

where g_j is the log-change of stat_j that argument θ_j produces. The L2 term makes the solution
close a fixed fraction ``strength`` = c²/(c² + λ) = 0.5 of the gap: Gaussian-prior shrinkage with
the natural seam difference and the paste mismatch assumed equally spread. The unconstrained
solution is mapped into the prior box by θ = r·tanh(θ*/r) with Harmonizer's synthesis ranges r.

Statistics: temperature — log chromaticities log(μR/μG), log(μB/μG) of the least saturated 30 %
(1-D grid search, gains from the whole-image means); brightness — mean HSV V; contrast — std of
luma; saturation — mean HSL S; highlight — 95th luma percentile; shadow — 5th luma percentile.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from comcoco.harmonize import HARMONIZE_METHODS
from comcoco.harmonize import filters as flt
from comcoco.quantiles import percentile, quantile
from comcoco.records import FILTER_NAMES, FilterArgs

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_MIN_PIXELS = 16
_GAMMA_LEVELS = 12288  # a multiple of 3: the table is computed as an (n/3, 3) image
_MAX_PIXELS = 4096


@dataclass(frozen=True)
class FitConfig:
    """Knobs of the closed-form fit (defaults are the documented project choices)."""

    ranges: tuple[float, ...] = flt.FILTER_RANGES  # prior box r_i of θ_i = r_i·tanh(u_i)
    strength: float = 0.5  # fraction of the log-statistic gap closed per filter (sets λ)
    work_size: int = 128  # long side of the working copy the fit runs on
    band: int = 1  # width of the seam bands (inside and outside the object), working-copy pixels
    temperature_grid: int = 61  # grid points of the 1-D temperature search
    grey_frac: float = 0.3  # temperature compares the least saturated 30 % of each region

    def __post_init__(self) -> None:
        if len(self.ranges) != len(FILTER_NAMES) or any(not 0 <= r <= 1 for r in self.ranges):
            raise ValueError(f"ranges must be {len(FILTER_NAMES)} values in [0, 1], got {self.ranges}")
        if not 0 <= self.strength <= 1:
            raise ValueError(f"strength must be in [0, 1], got {self.strength}")
        if self.work_size < 16 or self.temperature_grid < 3 or not 0 < self.grey_frac <= 1:
            raise ValueError("work_size must be ≥ 16, temperature_grid ≥ 3 and grey_frac in (0, 1]")
        if self.band < 1:
            raise ValueError(f"band must be ≥ 1 pixel, got {self.band}")


@dataclass(frozen=True)
class ChainStats:
    """Whole-image statistics the global filters need: temperature's channel means, contrast's mean."""

    channel_means: tuple[float, float, float]
    contrast_mean: float


# --- masks and crops -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Alpha:
    """The object's alpha, kept only over its bounding box (everything outside is 0)."""

    shape: tuple[int, int]  # full image (h, w)
    box: tuple[int, int, int, int] | None  # (y0, y1, x0, x1) of alpha > 0; None when empty
    crop: np.ndarray  # float32 alpha in [0, 1] over box


def _binary(mask: np.ndarray) -> np.ndarray:
    """The mask as alpha ≥ 0.5 (bool, uint8 0/255 or 0/1, or float 0..1), for the network's input."""
    m = np.asarray(mask)
    if m.ndim == 3 and m.shape[2] == 1:
        m = m[..., 0]
    if m.dtype == np.bool_:
        return m
    if m.dtype == np.uint8 and int(m.max(initial=0)) > 1:
        return m >= 128
    return m.astype(np.float32) >= 0.5


def _alpha(mask: np.ndarray, shape: tuple[int, int]) -> _Alpha:
    """Object alpha from a bool, uint8 (0/255, or 0/1 when its maximum is 1) or float (0..1) mask."""
    m = np.asarray(mask)
    if m.ndim == 3 and m.shape[2] == 1:
        m = m[..., 0]
    if m.shape != shape:
        raise ValueError(f"mask shape {np.asarray(mask).shape} does not match composite size {shape}")
    if m.dtype.kind == "f" and not np.all(np.isfinite(m)):
        raise ValueError("mask contains NaN or infinite values")
    nz = (m > 0) if m.dtype.kind in "fi" else (m != 0)
    x, y, w, h = cv2.boundingRect(np.ascontiguousarray(nz).view(np.uint8))
    if w == 0 or h == 0:
        return _Alpha(shape, None, np.zeros((0, 0), np.float32))
    box = (y, y + h, x, x + w)
    sub = m[y : y + h, x : x + w]
    if sub.dtype == np.bool_:
        a = sub.astype(np.float32)
    elif sub.dtype == np.uint8:
        a = sub.astype(np.float32) if int(sub.max()) <= 1 else sub.astype(np.float32) / np.float32(255.0)
    else:
        a = np.clip(sub.astype(np.float32), 0.0, 1.0)
    return _Alpha(shape, box, a)


def _check_composite(composite: np.ndarray) -> np.ndarray:
    c = np.asarray(composite)
    if c.ndim != 3 or c.shape[2] != 3 or c.dtype != np.uint8:
        raise ValueError(f"composite must be uint8 HxWx3, got {c.dtype} {c.shape}")
    return c


def _resize(img: np.ndarray, scale: float) -> np.ndarray:
    if scale >= 1.0:
        return img
    h, w = img.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA)


@dataclass
class _Work:
    """The small working copy of one composite: object, seam bands and a whole-image thumbnail."""

    obj: np.ndarray  # (N, 3) float32 pixels of the whole object
    inner: np.ndarray  # object pixels within `band` of its outline (whole object if too few)
    outer: np.ndarray  # surroundings within `band` of the outline, object excluded
    thumb: np.ndarray  # (K, 3) float32 whole-image thumbnail pixels


def _disk(r: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def _working_copy(composite: np.ndarray, al: _Alpha, cfg: FitConfig) -> _Work | None:
    if al.box is None:
        return None
    h, w = al.shape
    by0, by1, bx0, bx1 = al.box
    scale0 = min(1.0, cfg.work_size / max(by1 - by0, bx1 - bx0))
    margin = int(np.ceil((cfg.band + 2) / scale0))
    y0, x0 = max(0, by0 - margin), max(0, bx0 - margin)
    y1, x1 = min(h, by1 + margin), min(w, bx1 + margin)
    crop = composite[y0:y1, x0:x1]
    a_reg = np.zeros((y1 - y0, x1 - x0), np.float32)
    a_reg[by0 - y0 : by1 - y0, bx0 - x0 : bx1 - x0] = al.crop
    scale = min(1.0, cfg.work_size / max(crop.shape[:2]))
    crop_s = _resize(crop, scale).astype(np.float32) / np.float32(255.0)
    a_s = _resize(a_reg, scale)
    obj_m = a_s >= 0.5
    outside = ~(a_s > 0.01)
    obj_u8 = obj_m.view(np.uint8)
    inner_m = obj_m & ~(cv2.erode(obj_u8, _disk(cfg.band), borderType=cv2.BORDER_REPLICATE) > 0)
    outer_m = (cv2.dilate(obj_u8, _disk(cfg.band)) > 0) & outside
    if np.count_nonzero(inner_m) < _MIN_PIXELS:
        inner_m = obj_m
    if np.count_nonzero(outer_m) < _MIN_PIXELS:
        outer_m = outside
    step = max(1, -(-max(h, w) // 64))  # whole-image means from a strided ~64 px thumbnail
    thumb = composite[::step, ::step].reshape(-1, 3).astype(np.float32) / np.float32(255.0)
    return _Work(
        obj=_cap(crop_s[obj_m]),
        inner=_cap(crop_s[inner_m]),
        outer=_cap(crop_s[outer_m]),
        thumb=thumb,
    )


def _cap(px: np.ndarray) -> np.ndarray:
    """At most _MAX_PIXELS pixels, by a fixed stride: statistics need no more, and cost scales with it."""
    step = -(-len(px) // _MAX_PIXELS)
    return px[::step] if step > 1 else px


# --- statistics ----------------------------------------------------------------------------------


def _luma(px: np.ndarray) -> np.ndarray:
    return px @ _LUMA


def _value(px: np.ndarray) -> np.ndarray:
    return np.maximum(np.maximum(px[:, 0], px[:, 1]), px[:, 2])


def _hsl_s(px: np.ndarray) -> np.ndarray:
    cmax = np.maximum(np.maximum(px[:, 0], px[:, 1]), px[:, 2])
    cmin = np.minimum(np.minimum(px[:, 0], px[:, 1]), px[:, 2])
    ran = cmax + cmin
    var = cmax - cmin
    return np.where(ran < 1.0, var / (ran + 1e-6), var / (2.0 - ran + 1e-6))


def _grey_mean(px: np.ndarray, grey_frac: float, s: np.ndarray | None = None) -> np.ndarray:
    """Mean colour (float64, + 1e-4) of the least saturated pixels: their colour cast is the illuminant's.
    ``s``: ``_hsl_s(px)`` when the caller has it."""
    if 0 < grey_frac < 1 and len(px) >= 2 * _MIN_PIXELS:
        s = _hsl_s(px) if s is None else s
        px = px[s <= quantile(s, grey_frac)]
    return px.mean(axis=0, dtype=np.float64) + 1e-4


def _chroma(px: np.ndarray, grey_frac: float, m: np.ndarray | None = None) -> np.ndarray:
    """Log chromaticities of the least saturated pixels (``m``: their ``_grey_mean``, if known)."""
    m = _grey_mean(px, grey_frac) if m is None else m
    return np.log(np.array([m[0] / m[1], m[2] / m[1]]))


def _log_ratio(target: float, source: float) -> float:
    return float(np.log(max(target, 1e-4) / max(source, 1e-4)))


def _squash(x: float, r: float) -> float:
    """Map an unconstrained solution into the prior box: θ = r·tanh(θ*/r)."""
    return float(r * np.tanh(x / r)) if r > 0 else 0.0


def _arg_from_gain(log_gain: float) -> float:
    """Argument of the 1/(1−x) | 1+x family (brightness, saturation) producing gain e^log_gain."""
    g = float(np.exp(log_gain))
    return 1.0 - 1.0 / g if g >= 1.0 else g - 1.0


def _contrast_arg(slope: float) -> float:
    """Argument giving the contrast slope x′ (x > 0 is quantized by Harmonizer's ⌊255x⌋)."""
    if slope <= 0:
        return max(slope, -1.0)
    n = int(np.clip(round(256.0 - 255.0 / (1.0 + slope)), 1, 254))
    return (n + 0.5) / 255.0


# --- the fit -------------------------------------------------------------------------------------


def _temperature_gains_grid(means: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Temperature's channel gains for many arguments at once, (G, 3); same maths as the filter."""
    m = np.asarray(means, dtype=np.float64).reshape(1, 3)
    x = xs.astype(np.float32).astype(np.float64)[:, None]
    ax = np.abs(x)
    g = m.mean(axis=1, keepdims=True)
    a = 1.0 - g / (m + flt.EPS)
    shift = np.concatenate(
        [np.where(x < 0, ax, 0.0), np.where(x != 0, 0.5 * ax, 0.0), np.where(x > 0, ax, 0.0)], axis=1
    )
    m2 = m + shift
    return m2.mean(axis=1, keepdims=True) / (m2 + flt.EPS) + a


def _fit_work(work: _Work, cfg: FitConfig) -> tuple[np.ndarray, ChainStats]:
    r = cfg.ranges
    theta = np.zeros(len(FILTER_NAMES), dtype=np.float64)
    obj, ref, thumb = work.inner, work.outer, work.thumb

    # 1. temperature: 1-D search over the prior box, gains from the whole-image means.
    means = flt.channel_means(thumb)
    k = float(cfg.strength)
    mo = _grey_mean(obj, cfg.grey_frac)  # the object's grey pixels: its chroma and the search's start
    s_ref, lum_ref = _hsl_s(ref), _luma(ref)  # the reference's statistics read more than once below
    c_obj, c_ref = _chroma(obj, cfg.grey_frac, mo), _chroma(ref, cfg.grey_frac, _grey_mean(ref, cfg.grey_frac, s_ref))
    target = c_obj + k * (c_ref - c_obj)
    xs = np.linspace(-r[0], r[0], cfg.temperature_grid)
    mg = mo[None, :] * _temperature_gains_grid(means, xs)
    valid = np.all(mg > 0, axis=1)
    err = np.full(len(xs), np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        chroma = np.log(np.stack([mg[:, 0] / mg[:, 1], mg[:, 2] / mg[:, 1]], axis=1))
        err[valid] = np.sum((chroma[valid] - target) ** 2, axis=1)
    # smallest error; ties go to the argument closest to the identity
    order = np.lexsort((np.abs(xs), np.round(err, 12)))
    best = float(xs[order[0]]) if np.isfinite(err[order[0]]) else 0.0
    theta[0] = best
    obj = flt.temperature(obj, theta[0], means=means)
    thumb = flt.temperature(thumb, theta[0], means=means)

    # 2. brightness: mean HSV value.
    lg = k * _log_ratio(float(_value(ref).mean()), float(_value(obj).mean()))
    theta[1] = _squash(_arg_from_gain(lg), r[1])
    obj = flt.brightness(obj, theta[1])
    thumb = flt.brightness(thumb, theta[1])

    # 3. contrast: std of luma; pivot is the whole-image mean of the running image.
    t = float(thumb.mean(dtype=np.float64))
    lg = k * _log_ratio(float(lum_ref.std()), float(_luma(obj).std()))
    theta[2] = _contrast_arg(_squash(float(np.expm1(lg)), r[2]))
    obj = flt.contrast(obj, theta[2], mean=t)

    # 4. saturation: mean HSL saturation.
    lg = k * _log_ratio(float(s_ref.mean()), float(_hsl_s(obj).mean()))
    theta[3] = _squash(_arg_from_gain(lg), r[3])
    obj = flt.saturation(obj, theta[3])

    # 5. highlight: 95th luma percentile, exponent of 1 − (1 − I)^(1+x), shrunk geometrically.
    p = float(np.clip(percentile(_luma(obj), 95), 0.02, 0.98))
    q = float(np.clip(percentile(lum_ref, 95), 0.02, 0.98))
    e = float(np.exp(k * np.log(np.log1p(-q) / np.log1p(-p))))
    theta[4] = _squash(e - 1.0, r[4])
    obj = flt.highlight(obj, theta[4])

    # 6. shadow: 5th luma percentile, exponent of I^(1−x).
    p = float(np.clip(percentile(_luma(obj), 5), 0.02, 0.98))
    q = float(np.clip(percentile(lum_ref, 5), 0.02, 0.98))
    e = float(np.exp(k * np.log(np.log(q) / np.log(p))))
    theta[5] = _squash(1.0 - e, r[5])

    stats = ChainStats(channel_means=(float(means[0]), float(means[1]), float(means[2])), contrast_mean=t)
    return theta, stats


def fit_arguments(
    composite: np.ndarray, mask: np.ndarray, config: FitConfig | None = None
) -> tuple[FilterArgs, ChainStats | None]:
    """Fit the six filter arguments for one composite (identity when the object or seam is too small).

    Returns the arguments and the whole-image statistics the fit assumed, for :func:`apply_arguments`.
    """
    comp = _check_composite(composite)
    return _fit(comp, _alpha(mask, comp.shape[:2]), config or FitConfig())


def _fit(comp: np.ndarray, al: _Alpha, cfg: FitConfig) -> tuple[FilterArgs, ChainStats | None]:
    work = _working_copy(comp, al, cfg)
    if work is None or len(work.inner) < _MIN_PIXELS or len(work.outer) < _MIN_PIXELS:
        return FilterArgs(), None
    theta, stats = _fit_work(work, cfg)
    return FilterArgs.from_sequence(theta), stats


# --- full-resolution application -----------------------------------------------------------------


def chain_stats(composite: np.ndarray, args: FilterArgs | Sequence[float]) -> ChainStats:
    """Exact whole-image statistics of the chain on the full composite (temperature, then contrast)."""
    vals = args.as_tuple() if isinstance(args, FilterArgs) else tuple(float(v) for v in args)
    img = _check_composite(composite).astype(np.float32) / 255.0
    means = flt.channel_means(img)
    run = flt.brightness(flt.temperature(img, vals[0], means=means), vals[1])
    return ChainStats(
        channel_means=(float(means[0]), float(means[1]), float(means[2])),
        contrast_mean=float(run.mean(dtype=np.float64)),
    )


def apply_arguments(
    composite: np.ndarray,
    mask: np.ndarray,
    args: FilterArgs | Sequence[float],
    stats: ChainStats | None = None,
) -> np.ndarray:
    """Apply the chain at full resolution inside the object only; other pixels are returned bit-exact.

    Temperature, brightness and contrast are per-channel functions of a uint8 value once the
    whole-image statistics are fixed, so they run as a 256-entry table; the remaining filters run on
    the object's pixels only (or join the table when saturation is zero). ``stats`` defaults to the
    exact statistics of the full composite.
    """
    comp = _check_composite(composite)
    vals = args.as_tuple() if isinstance(args, FilterArgs) else tuple(float(v) for v in args)
    if len(vals) != len(FILTER_NAMES):
        raise ValueError(f"expected {len(FILTER_NAMES)} filter arguments, got {len(vals)}")
    return _apply(comp, _alpha(mask, comp.shape[:2]), vals, stats)


def _apply(comp: np.ndarray, al: _Alpha, vals: tuple[float, ...], stats: ChainStats | None) -> np.ndarray:
    out = comp.copy()
    if al.box is None or not any(vals):
        return out
    st = stats if stats is not None else chain_stats(comp, vals)
    y0, y1, x0, x1 = al.box
    crop = comp[y0:y1, x0:x1]
    sel = al.crop > 0
    lut = np.repeat((np.arange(256, dtype=np.float32) / np.float32(255.0))[:, None], 3, axis=1)
    lut = flt.temperature(lut, vals[0], means=st.channel_means)
    lut = flt.brightness(lut, vals[1])
    lut = flt.contrast(lut, vals[2], mean=st.contrast_mean)
    if vals[3] == 0:
        lut = flt.shadow(flt.highlight(lut, vals[4]), vals[5])
    px = crop[sel]  # (N, 3) uint8
    f = np.stack([lut[px[:, c], c] for c in range(3)], axis=1)
    if vals[3] != 0:
        f = flt.saturation(f, vals[3])
        if vals[4] != 0 or vals[5] != 0:
            # highlight∘shadow as a table over _GAMMA_LEVELS input levels (≤0.5 of a uint8 step off)
            levels = (np.arange(_GAMMA_LEVELS, dtype=np.float32) / np.float32(_GAMMA_LEVELS - 1)).reshape(
                -1, 3
            )
            curve = flt.shadow(flt.highlight(levels, vals[4]), vals[5]).reshape(-1)
            f = curve[np.rint(f * np.float32(_GAMMA_LEVELS - 1)).astype(np.intp)]
    _write(out, al, sel, px, f)
    return out


def _write(out: np.ndarray, al: _Alpha, sel: np.ndarray, px: np.ndarray, f: np.ndarray) -> None:
    """Blend the new object pixels with the alpha and write them; pixels with alpha 0 stay as they are."""
    assert al.box is not None
    y0, y1, x0, x1 = al.box
    al_px = al.crop[sel]
    if np.all(al_px == 1.0):
        val = f * np.float32(255.0)
    else:
        a = al_px[:, None]
        val = (f * a + (px.astype(np.float32) / np.float32(255.0)) * (np.float32(1.0) - a)) * np.float32(
            255.0
        )
    region = out[y0:y1, x0:x1]
    region[sel] = np.clip(np.rint(val), 0, 255).astype(np.uint8)


# --- Reinhard ------------------------------------------------------------------------------------


def _lab(px_rgb01: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(px_rgb01.reshape(-1, 1, 3).astype(np.float32), cv2.COLOR_RGB2Lab).reshape(-1, 3)


def reinhard(composite: np.ndarray, mask: np.ndarray, config: FitConfig | None = None) -> np.ndarray:
    """Masked Reinhard transfer in Lab: object mean/std per channel → those of the surroundings' seam band."""
    comp = _check_composite(composite)
    return _reinhard(comp, _alpha(mask, comp.shape[:2]), config or FitConfig())


def _reinhard(comp: np.ndarray, al: _Alpha, cfg: FitConfig) -> np.ndarray:
    out = comp.copy()
    work = _working_copy(comp, al, cfg)
    if work is None or len(work.obj) < _MIN_PIXELS or len(work.outer) < _MIN_PIXELS:
        return out
    lo, lr = _lab(work.obj), _lab(work.outer)
    mu_o, sd_o = lo.mean(axis=0), lo.std(axis=0)
    mu_r, sd_r = lr.mean(axis=0), lr.std(axis=0)
    gain = np.where(sd_o > 1e-6, sd_r / np.maximum(sd_o, 1e-6), 1.0).astype(np.float32)
    assert al.box is not None
    y0, y1, x0, x1 = al.box
    sel = al.crop > 0
    px = comp[y0:y1, x0:x1][sel]
    lab = (_lab(px.astype(np.float32) / np.float32(255.0)) - mu_o) * gain + mu_r
    lab[:, 0] = np.clip(lab[:, 0], 0.0, 100.0)
    rgb = np.clip(cv2.cvtColor(lab.reshape(-1, 1, 3), cv2.COLOR_Lab2RGB).reshape(-1, 3), 0.0, 1.0)
    _write(out, al, sel, px, rgb)
    return out


# --- entry point ---------------------------------------------------------------------------------


def harmonize(
    composite: np.ndarray,
    mask: np.ndarray,
    method: str = "fit",
    network: Any = None,
    config: FitConfig | None = None,
    network_mask: np.ndarray | None = None,
) -> tuple[np.ndarray, FilterArgs]:
    """Harmonize the object under ``mask`` in ``composite``; returns the image and the filter arguments.

    Only pixels where the mask is non-zero change (alpha-weighted); every other pixel is returned
    bit-exactly. ``reinhard`` and ``none`` report all-zero arguments; ``network`` needs a loaded
    :class:`comcoco.harmonize.network.HarmonizerNet` in ``network``. The network sees a binary mask, as
    Harmonizer's own inference gives it: ``network_mask`` when given, else ``mask`` ≥ 0.5; the filters
    are still blended with the soft ``mask``.
    """
    if method not in HARMONIZE_METHODS:
        raise ValueError(
            f"unknown harmonize method {method!r}; expected one of {', '.join(HARMONIZE_METHODS)}"
        )
    comp = _check_composite(composite)
    al = _alpha(mask, comp.shape[:2])
    cfg = config or FitConfig()
    if method == "none":
        return comp.copy(), FilterArgs()
    if method == "reinhard":
        return _reinhard(comp, al, cfg), FilterArgs()
    if method == "network":
        if network is None:
            raise ValueError("harmonize method 'network' needs a loaded Harmonizer checkpoint (network=...)")
        from comcoco.harmonize.network import predict_arguments

        binary = _binary(mask) if network_mask is None else np.asarray(network_mask) > 0
        args = predict_arguments(network, comp, binary.astype(np.float32))
        return _apply(comp, al, args.as_tuple(), None), args
    args, stats = _fit(comp, al, cfg)
    return _apply(comp, al, args.as_tuple(), stats), args
