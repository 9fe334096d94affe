"""Camera consistency: give a pasted object the noise, sharpness and JPEG grid of the scene around it.

A pasted object comes from another photo, taken with another camera, scaled by the placement, and
its own JPEG blocks were resampled away; image forensics finds such splices by exactly these
differences (noise-level and blur inconsistency, a missing or misaligned 8×8 block grid, no chroma
bleed at the edge). Everything here changes the OBJECT only (its box-local colours, or composite
pixels where the object's alpha or its JPEG bleed ring reaches) and never the background elsewhere.

The estimators (``noise_level``, ``blur_sigma`` and the tiled measurement both steps use) are in
``comcoco.compose.camera_estimate``.

* ``match_camera`` — blur the object (premultiplied by alpha, so no source background bleeds in)
  and its alpha edge (a cut edge is sharper than any photographed one) by √(σ_bg² − σ_obj²) when the
  scene is blurrier; low-pass the object's chroma when its chroma noise exceeds the scene's (a
  resampled 4:2:0 source carries pixel-level chroma noise a camera's own chroma never has), by the
  smallest σ of a ladder after which it measures within 1.25× of the scene's; then
  add seeded Gaussian noise of √((σ_bg/g)² − σ_obj²) per YCrCb channel when the scene is noisier,
  where g is the share of white noise a following JPEG regrid keeps (``jpeg_noise_gain``, measured
  once per quality; 1 without regrid). A sharper scene than object is left alone: sharpening would
  amplify the object's noise and JPEG artefacts. Nothing is resampled here; the cut already scales
  with area interpolation when shrinking (no aliasing).
* ``jpeg_noise_gain`` — how much white noise a JPEG round trip keeps; the JPEG-consistency step
  itself (quality estimate, regrid on the image's grid) lives in ``comcoco.compose.jpeg`` and is
  re-exported here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import cv2
import numpy as np

from comcoco.compose.camera_estimate import (  # noqa: F401  (re-exported: the estimators the steps share)
    _FLAT,
    _IMMERKAER,
    _MIN_PIXELS,
    _SIGMA0,
    _TRIM_MEAN,
    NoiseLevel,
    _blur_from,
    _blur_samples,
    _grad,
    _measure,
    _noise_from,
    _noise_samples,
    _plan,
    _q,
    _Tile,
    _valid,
    _ycrcb,
    blur_sigma,
    noise_level,
)
from comcoco.compose.cutout import MASK_THRESHOLD
from comcoco.compose.jpeg import (  # noqa: F401  (re-exported: the camera step's JPEG half)
    JpegEstimate,
    Regrid,
    _roundtrip,
    blockiness,
    estimate_jpeg_quality,
    jpeg_regrid,
    quality_from_table,
)
from comcoco.ids import fixed_normal

_BLUR_MIN = 0.35  # do not blur the object for a smaller σ difference
_BLUR_MAX = 3.0
_EDGE_MIN = 0.2
_REGRID_STEPS = 3  # trial round trips that set the noise level under the regrid
_OUTLINE_BAND = 2  # px each side of an outline read by ``outline_blur``
_NOISE_MIN = 0.5  # do not add noise below this std (0–255)
_CHROMA_EXCESS = 1.25  # smooth the object's chroma when its chroma noise exceeds the scene's by this
_CHROMA_MIN = 0.2  # ... and is at least this (0–255): pixel-level chroma a 4:2:0 scene lacks
_CHROMA_SIGMAS = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.5, 6.0)  # chroma low-pass σ tried in turn
# YCrCb → RGB noise mixing (ITU-R BT.601 as OpenCV uses it): n_rgb = _MIX @ (n_Y, n_Cr, n_Cb)
_MIX = np.array([[1.0, 1.403, 0.0], [1.0, -0.714, -0.344], [1.0, 0.0, 1.773]], np.float32)


@dataclass(frozen=True)
class CameraParams:
    margin: float = 0.25  # background window: the box grown by this fraction of its long side, 16..48 px
    blur: bool = True
    noise: bool = True


@dataclass(frozen=True)
class CameraMatch:
    """What was measured and applied, for the sample's row (``to_dict``)."""

    blur_object: float | None  # equivalent σ (px) of the object's edges, before matching
    blur_background: float | None
    blur_applied: float  # σ of the Gaussian applied to the object's colours (0: none)
    blur_edge: float  # σ of the Gaussian applied to its alpha, the silhouette (0: none)
    chroma_smoothing: float  # σ of the chroma-only low-pass (0: none)
    noise_object: NoiseLevel | None  # after any blur
    noise_background: NoiseLevel | None
    noise_added: NoiseLevel  # std of the seeded noise added per channel
    reason: str  # "" or why a step was skipped

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SceneCamera:
    """A background's blur and noise, measured once (``scene_camera``) and reused for its objects."""

    blur: float | None
    noise: NoiseLevel | None
    outline: float | None = None  # blur of its annotated objects' outlines (``outline_blur``)


def scene_camera(background: np.ndarray, max_px: int = 65536, outlines: np.ndarray | None = None) -> SceneCamera:
    """Blur and noise of a whole background from tiles spread over it (per-background, cacheable);
    with ``outlines`` (H×W bool, ``outline_band`` of its annotated objects) also their outlines' blur."""
    b, n = _measure(background, None, max_px)
    return SceneCamera(b, n, None if outlines is None else outline_blur(background, outlines))


def outline_band(mask: np.ndarray, radius: int = _OUTLINE_BAND) -> np.ndarray:
    """Pixels within ``radius`` px of a binary mask's outline (either side), bool."""
    m8 = np.asarray(mask, np.uint8)
    k = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
    return (cv2.dilate(m8, k) > 0) & ~(cv2.erode(m8, k, borderType=cv2.BORDER_REPLICATE) > 0)


def outline_blur(rgb: np.ndarray, band: np.ndarray) -> float | None:
    """Equivalent blur σ of the object outlines in ``band``: the re-blur ratio at the band's strongest
    gradients (its top 30 %: the outline itself, not the textures beside it). Only differences of
    squares of two such readings mean anything (the operator's width is in both); None when the
    band holds too few edge pixels."""
    band = np.asarray(band, bool)
    if np.count_nonzero(band) < _MIN_PIXELS:
        return None
    bx, by, bw, bh = cv2.boundingRect(np.ascontiguousarray(band).view(np.uint8))
    x0, y0, x1, y1 = max(0, bx - 4), max(0, by - 4), min(band.shape[1], bx + bw + 4), min(band.shape[0], by + bh + 4)
    lum = _ycrcb(rgb[y0:y1, x0:x1])[..., 0]
    b = band[y0:y1, x0:x1]

    g1 = _grad(lum)
    strong = b & (g1 >= max(_q(g1[b], 0.7), 2.0))
    if np.count_nonzero(strong) < 16:
        return None
    g2 = _grad(cv2.GaussianBlur(lum, (0, 0), _SIGMA0))
    return _blur_from(g2[strong] / g1[strong])


def _silhouette_gap(rgb: np.ndarray, alpha: np.ndarray, background: np.ndarray, box: tuple[int, int, int, int],
                    scene: SceneCamera | None, b_bg: float | None) -> float:
    """σ of the blur the pasted silhouette still lacks: the scene's own outlines' blur against the
    pasted outline's (both read by ``outline_blur``, so the operator's width cancels); without
    annotated outlines, the scene's edge blur against a perfectly sharp cut (``cut_edge_sigma``)."""
    target = scene.outline if scene is not None else None
    if target is not None:
        x, y, w, h = (int(v) for v in box)
        region = background[y:y + h, x:x + w].astype(np.float32)
        if region.shape[:2] == alpha.shape:
            trial = np.rint(region + alpha[..., None] * (rgb.astype(np.float32) - region)).astype(np.uint8)
            own = outline_blur(trial, outline_band(alpha >= MASK_THRESHOLD))
            if own is not None:
                return min(_BLUR_MAX, math.sqrt(max(0.0, target * target - own * own)))
    if b_bg is None:
        return 0.0
    # the silhouette is a new edge: it has none of the object's own blur, only the raster's
    return min(_BLUR_MAX, math.sqrt(max(0.0, b_bg * b_bg - cut_edge_sigma() ** 2)))


# --- matching ------------------------------------------------------------------------------------


def _window(box: tuple[int, int, int, int], shape: tuple[int, ...], margin: float) -> tuple[int, int, int, int]:
    x, y, w, h = box
    m = int(np.clip(round(margin * max(w, h)), 16, 48))
    return max(0, x - m), max(0, y - m), min(shape[1], x + w + m), min(shape[0], y + h + m)


def _premult_blur(rgb: np.ndarray, alpha: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of the object's colours only: blur(rgb·a)/blur(a), so the crop's background cannot bleed in."""
    a = np.clip(alpha, 0.0, 1.0).astype(np.float32)
    num = cv2.GaussianBlur(rgb.astype(np.float32) * a[..., None], (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    den = cv2.GaussianBlur(a, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    out = np.where((den > 1e-3)[..., None], num / np.maximum(den, 1e-3)[..., None], rgb.astype(np.float32))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _chroma_smooth(rgb: np.ndarray, alpha: np.ndarray, sigma: float) -> np.ndarray:
    """Low-pass the object's chroma only (as a camera's chroma subsampling and denoising do), premultiplied."""
    return _chroma_smoother(rgb, alpha)(sigma)


def _chroma_smoother(rgb: np.ndarray, alpha: np.ndarray) -> Callable[[float], np.ndarray]:
    """``sigma -> _chroma_smooth(rgb, alpha, sigma)`` with the colour conversion and the premultiplied
    planes made once: the ladder tries several σ on the same object, each one blur of three planes."""
    ycc = _ycrcb(rgb)
    a = np.clip(alpha, 0.0, 1.0).astype(np.float32)
    lum, cr0, cb0 = cv2.split(ycc)
    planes = cv2.merge([cr0 * a, cb0 * a, a])  # Cr·a, Cb·a, a: blurred together

    def smooth(sigma: float) -> np.ndarray:
        num_cr, num_cb, den = cv2.split(cv2.GaussianBlur(planes, (0, 0), sigma, borderType=cv2.BORDER_REFLECT))
        far = den <= 1e-3  # no object within reach: the colours stay
        np.maximum(den, 1e-3, out=den)
        cr, cb = cv2.divide(num_cr, den), cv2.divide(num_cb, den)
        if far.any():
            cr[far], cb[far] = cr0[far], cb0[far]
        return cv2.cvtColor(cv2.convertScaleAbs(cv2.merge([lum, cr, cb])), cv2.COLOR_YCrCb2RGB)  # rounded, all ≥ 0

    return smooth


def _chroma_ladder(rgb: np.ndarray, alpha: np.ndarray, inner: np.ndarray, plan: list[_Tile], n_bg: NoiseLevel,
                   n_obj: NoiseLevel) -> tuple[np.ndarray, float, NoiseLevel]:
    """(colours, σ, their noise) of the smallest ``_CHROMA_SIGMAS`` low-pass after which the object's
    chroma noise *measures* within ``_CHROMA_EXCESS`` of the scene's: a harmonized object's chroma
    texture is correlated, so no σ predicted from white noise fits it. The excess falls as σ grows,
    so the ladder is searched by halves, its top first (most objects need it): 1–4 trials, not 8."""

    smooth = _chroma_smoother(rgb, alpha)

    def trial(k: int) -> tuple[np.ndarray, NoiseLevel, bool]:
        out = smooth(_CHROMA_SIGMAS[k])
        n = _measure(out, inner, blur=False, plan=plan)[1] or n_obj
        return out, n, max(n.cr / max(n_bg.cr, 1e-6), n.cb / max(n_bg.cb, 1e-6)) <= _CHROMA_EXCESS

    lo, hi = -1, len(_CHROMA_SIGMAS) - 1  # the answer is in (lo, hi]
    best = trial(hi)
    if best[2]:
        while hi - lo > 1:
            mid = (lo + hi) // 2
            got = trial(mid)
            lo, hi, best = (lo, mid, got) if got[2] else (mid, hi, best)
    return best[0], _CHROMA_SIGMAS[hi], best[1]


@lru_cache(maxsize=1)
def cut_edge_sigma() -> float:
    """What ``blur_sigma`` reads on a perfectly sharp cut edge (the rasteriser's coverage alpha).

    The estimator's own operator width inflates every reading; a scene's edge blur *beyond a cut* is
    √(σ_scene² − σ_cut²). Measured once on a fixed pattern of anti-aliased discs (no noise).
    """
    from comcoco.compose.cutout import rasterize_alpha

    rng = np.random.default_rng(20240613)
    acc = np.zeros((256, 256), np.float32)
    t = np.linspace(0.0, 2.0 * np.pi, 80, endpoint=False)
    for _ in range(60):
        cx, cy, r, v = rng.uniform(0, 256), rng.uniform(0, 256), rng.uniform(5, 25), rng.uniform(0, 1)
        a = rasterize_alpha([np.column_stack([cx + r * np.cos(t), cy + r * np.sin(t)])], 256, 256)
        acc = acc * (1.0 - a) + a * np.float32(v)
    grey = np.clip(np.rint(40.0 + 160.0 * acc), 0, 255).astype(np.uint8)
    sigma = blur_sigma(np.repeat(grey[..., None], 3, axis=2))
    return float(sigma) if sigma is not None else 0.0


def _blur_edge(rgb: np.ndarray, alpha: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """The silhouette seen through the scene's lens: alpha blurred by ``sigma`` (its tail below 1/255
    dropped), and the object's colours carried out to the pixels the blurred alpha newly reaches (the
    normalised blur of the object's own colours, so no source background shows there)."""
    a = np.clip(alpha, 0.0, 1.0).astype(np.float32)
    new = cv2.GaussianBlur(a, (0, 0), sigma, borderType=cv2.BORDER_REPLICATE)
    new[new < 1.0 / 255.0] = 0.0
    grown = (new > 0) & (a <= 0)
    if not grown.any():
        return new, rgb
    s = max(1.0, sigma)
    num = cv2.GaussianBlur(rgb.astype(np.float32) * a[..., None], (0, 0), s, borderType=cv2.BORDER_REPLICATE)
    den = cv2.GaussianBlur(a, (0, 0), s, borderType=cv2.BORDER_REPLICATE)
    ok = grown & (den > 1e-4)
    out = rgb.copy()
    out[ok] = np.clip(np.rint(num[ok] / den[ok][:, None]), 0, 255).astype(np.uint8)
    new[grown & ~ok] = 0.0  # nothing of the object is near: not shown
    return new, out


def _after_regrid(rgb: np.ndarray, inner: np.ndarray, jpeg: JpegEstimate, guess: NoiseLevel,
                  target: NoiseLevel, plan: list[_Tile] | None = None) -> NoiseLevel | None:
    """The noise to add so that the object, after the regrid's round trip, has the scene's noise.

    ``jpeg_noise_gain`` is measured on white noise over flat grey; on an object the round trip keeps
    a share that depends on its colours and texture and on the noise's own level (quantisation
    zeroes small coefficients: weak noise dies, strong noise passes), and it changes the object's
    own noise too. So it is measured here on the object itself: one round trip as it is, then up to
    ``_REGRID_STEPS`` trials with a fixed-seed noise field, each rescaling the level by the ratio of
    the noise wanted after the trip (√(target² − own²)) to the noise that survived it. None when the
    object is too small to measure.
    """
    q, ss = int(jpeg.quality), int(jpeg.subsampling)  # type: ignore[arg-type]
    plan = _plan(rgb.shape, inner) if plan is None else plan
    own = _measure(_roundtrip(rgb, q, ss), inner, blur=False, plan=plan)[1]
    if own is None:
        return None
    own_v = np.asarray([own.y, own.cr, own.cb], np.float64)
    want = np.sqrt(np.maximum(np.asarray([target.y, target.cr, target.cb], np.float64) ** 2 - own_v ** 2, 0.0))
    level = np.asarray([guess.y, guess.cr, guess.cb], np.float64)
    level = np.where(want > 0, np.maximum(level, 0.5), 0.0)
    unit = fixed_normal(rgb.shape)  # default_rng(0).standard_normal(rgb.shape, dtype=np.float32)
    for _ in range(_REGRID_STEPS):
        if not level.any():
            break
        after = _measure(_roundtrip(_with_noise(rgb, unit, level), q, ss), inner, blur=False, plan=plan)[1]
        if after is None:
            return None
        kept = np.sqrt(np.maximum(np.asarray([after.y, after.cr, after.cb]) ** 2 - own_v ** 2, 1e-6))
        level = np.clip(level * want / kept, 0.0, 4.0 * np.maximum(want, 1.0))
    return NoiseLevel(*(float(v) if v >= _NOISE_MIN else 0.0 for v in level))


def _with_noise(rgb: np.ndarray, unit: np.ndarray, level: np.ndarray) -> np.ndarray:
    """uint8 rint(rgb + (unit · level) @ mixᵀ), clipped: a trial's noisy object, computed in one
    float32 buffer (the same operations as the plain expression, so the same bits)."""
    noisy = (unit * level.astype(np.float32)) @ _MIX.T
    np.add(noisy, rgb, out=noisy)
    np.clip(np.rint(noisy, out=noisy), 0, 255, out=noisy)
    return noisy.astype(np.uint8)


@lru_cache(maxsize=64)
def jpeg_noise_gain(quality: int, subsampling: int = 2) -> tuple[float, float, float]:
    """How much of white YCrCb noise survives a JPEG round trip at ``quality`` (measured, per channel).

    A mid-grey 128-px patch with noise of std 4 per channel (fixed seed) is compressed; the ratio of
    the measured noise after to before is the gain. Noise meant to match a JPEG scene *after* the
    regrid is added at (scene noise / gain).
    """
    rng = np.random.default_rng(12345)
    base = np.full((128, 128, 3), 128.0, np.float32) + rng.standard_normal((128, 128, 3)).astype(np.float32) * 4.0
    ycc = np.clip(np.rint(base), 0, 255).astype(np.uint8)
    rgb = cv2.cvtColor(ycc, cv2.COLOR_YCrCb2RGB)
    before = noise_level(rgb)
    after = noise_level(_roundtrip(rgb, int(quality), int(subsampling)))
    if before is None or after is None:
        return (1.0, 1.0, 1.0)
    return tuple(float(np.clip(a / max(b, 1e-6), 0.05, 1.0))  # type: ignore[return-value]
                 for a, b in ((after.y, before.y), (after.cr, before.cr), (after.cb, before.cb)))


@dataclass(frozen=True)
class CameraResult:
    rgb: np.ndarray  # h×w×3 uint8, the object's new colours
    alpha: np.ndarray  # h×w float32: the alpha, its edge blurred like the colours
    info: CameraMatch


def match_camera(object_rgb: np.ndarray, alpha: np.ndarray, background: np.ndarray,
                 box: tuple[int, int, int, int], rng: np.random.Generator,
                 params: CameraParams | None = None, scene: SceneCamera | None = None,
                 jpeg: JpegEstimate | None = None) -> CameraResult:
    """The object with the scene's blur and noise (colours and alpha edge); see the module docstring.

    ``object_rgb`` and ``alpha`` are box-local (h×w); ``background`` is the frame the object goes
    into and ``box`` its place there. The scene is measured in a window around the box (tiled), or
    taken from ``scene`` (``scene_camera``, once per background). With ``jpeg`` (a regrid follows at
    that quality) the noise is matched as it will be after the round trip. Never raises on data.
    Kept whole: one decision chain (blur, chroma, noise) over shared measurements.
    """
    p = params or CameraParams()
    alpha = np.asarray(alpha, dtype=np.float32)
    inner = alpha >= MASK_THRESHOLD
    plan = _plan(object_rgb.shape, inner)  # the object is measured up to seven times under this mask
    reasons: list[str] = []
    b_obj, n_obj = _measure(object_rgb, inner, plan=plan)
    if scene is None:
        x0, y0, x1, y1 = _window(tuple(int(v) for v in box), background.shape, p.margin)  # type: ignore[arg-type]
        b_bg, n_bg = _measure(background[y0:y1, x0:x1], None)
    else:
        b_bg, n_bg = scene.blur, scene.noise
    rgb, new_alpha = object_rgb, alpha
    applied, chroma, edge = 0.0, 0.0, 0.0
    if p.blur:
        if b_obj is None or b_bg is None:
            reasons.append("blur: too few edges to measure")
        elif b_bg * b_bg - b_obj * b_obj > _BLUR_MIN * _BLUR_MIN:
            applied = min(_BLUR_MAX, math.sqrt(b_bg * b_bg - b_obj * b_obj))
            rgb = _premult_blur(rgb, alpha, applied)
            n_obj = _measure(rgb, inner, blur=False, plan=plan)[1]  # the blur lowered the object's noise
        elif b_obj > b_bg + _BLUR_MIN:
            reasons.append("blur: object blurrier than the scene (not sharpened)")
        edge = _silhouette_gap(rgb, alpha, background, box, scene, b_bg)
        if edge >= _EDGE_MIN:
            new_alpha, rgb = _blur_edge(rgb, alpha, max(edge, applied))
    gain = (1.0, 1.0, 1.0) if jpeg is None or jpeg.quality is None else jpeg_noise_gain(jpeg.quality, jpeg.subsampling)
    added = NoiseLevel(0.0, 0.0, 0.0)
    if p.noise and (n_obj is None or n_bg is None):
        reasons.append("noise: region too small to measure")
    elif p.noise:
        assert n_obj is not None and n_bg is not None
        ratio = max(1e-3, min(n_bg.cr / max(n_obj.cr, 1e-6), n_bg.cb / max(n_obj.cb, 1e-6)))
        if ratio < 1.0 / _CHROMA_EXCESS and max(n_obj.cr, n_obj.cb) > _CHROMA_MIN:
            rgb, chroma, n_obj = _chroma_ladder(rgb, alpha, inner, plan, n_bg, n_obj)

        def gap(b: float, o: float, g: float) -> float:
            d = math.sqrt(max(0.0, (b / g) ** 2 - o * o))
            return d if d >= _NOISE_MIN else 0.0

        added = NoiseLevel(gap(n_bg.y, n_obj.y, gain[0]), gap(n_bg.cr, n_obj.cr, gain[1]), gap(n_bg.cb, n_obj.cb, gain[2]))
        if jpeg is not None and jpeg.quality is not None:
            added = _after_regrid(rgb, inner, jpeg, added, n_bg, plan) or added
        if added.y or added.cr or added.cb:
            shown = new_alpha > 0  # pixels never shown need no noise
            n = rng.standard_normal((int(np.count_nonzero(shown)), 3), dtype=np.float32)
            n = n * np.asarray([added.y, added.cr, added.cb], np.float32) @ _MIX.T
            rgb = rgb.copy()
            rgb[shown] = np.clip(np.rint(rgb[shown].astype(np.float32) + n), 0, 255).astype(np.uint8)
    if rgb is object_rgb:
        rgb = object_rgb.copy()
    info = CameraMatch(blur_object=b_obj, blur_background=b_bg, blur_applied=round(applied, 4),
                       blur_edge=round(edge, 4),
                       chroma_smoothing=round(chroma, 4), noise_object=n_obj, noise_background=n_bg,
                       noise_added=added, reason="; ".join(reasons))
    return CameraResult(rgb=rgb, alpha=new_alpha if new_alpha is not alpha else alpha.copy(), info=info)
