"""No cut-out rim: refine a pasted object's alpha at its boundary and remove the source's colour spill.

A COCO polygon is a coarse outline: along its edge the crop carries a fringe of the *source*
background, which after pasting is a rim of the wrong colour around the object — one of the cues
that tells a pasted object from a native one. Two steps fix it, both box-local and numpy/OpenCV only:

1. **Alpha refinement** inside a narrow band around the polygon edge (``band`` px each side). The
   ``guided`` method (default) is He, Sun and Tang's guided filter with the source crop's luma as
   the guide, written here with box filters: inside a window the alpha is modelled as a linear
   function of the guide, so the edge snaps to the object's real edge where there is one and becomes
   a soft feather where there is none. ``guided-colour`` uses the RGB guide (a 3×3 solve per pixel):
   on the real fixtures it was no better than luma at four times the cost. ``feather`` is erode-then-feather (a Gaussian of the
   mask shrunk by half the band). Outside the band the alpha is what the polygon gave (1 inside,
   0 outside), and the rasteriser's rule is kept: alpha is non-zero only on the binary mask
   (alpha ≥ 0.5) and its one-pixel rim, so everything farther away stays byte-exact.
2. **Colour decontamination** of the band. ``extend`` (default) gives every band pixel with
   alpha < 1 the local object colour F₀, the mean of the crop's sure-object pixels nearby (a
   normalised box filter: interior colours propagated outward); pixels at alpha 1 keep their bytes.
   ``solve`` uses the matting equation I = αF + (1 − α)B with B the local mean of the crop's
   sure-background pixels, F = (I − (1 − α)B)/α, falling back to F₀ where α is small or no
   background pixel is near. On the real COCO fixtures ``solve`` removed less spill and added more
   noise than ``extend`` (a local mean is a poor model of a textured source background); the
   measurement is in docs/compose.md.

A refinement that would empty the object, or keep less than ``min_keep`` of its mask, falls back to
the unrefined alpha with a reason (never an exception).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np

from comcoco.compose.cutout import MASK_THRESHOLD, Cutout

MATTE_METHODS: tuple[str, ...] = ("guided", "guided-colour", "feather", "none")
DECONTAMINATE_METHODS: tuple[str, ...] = ("extend", "solve", "none")
_EDGE = np.ones((3, 3), np.uint8)


@dataclass(frozen=True)
class MatteParams:
    """Knobs of the refinement; the defaults are the measured project choice (docs/compose.md)."""

    method: str = "guided"
    decontaminate: str = "extend"
    band: int | None = None  # half-width of the uncertain band (px); None: 1 + √area/60, clipped to 1..4
    radius: int | None = None  # guided-filter window radius (px); None: the band
    eps: float = 2e-3  # guided-filter regulariser (guide colours in [0, 1])
    min_alpha: float = 0.3  # below this alpha the solved colour yields to the interior colour
    min_keep: float = 0.5  # a refined mask must keep at least this fraction of the original mask

    def __post_init__(self) -> None:
        if self.method not in MATTE_METHODS:
            raise ValueError(f"unknown matte method {self.method!r} (choose {'|'.join(MATTE_METHODS)})")
        if self.decontaminate not in DECONTAMINATE_METHODS:
            raise ValueError(f"unknown decontamination {self.decontaminate!r} (choose {'|'.join(DECONTAMINATE_METHODS)})")
        if self.band is not None and self.band < 1:
            raise ValueError(f"band must be at least 1 px, got {self.band}")
        if not 0 < self.min_keep <= 1:
            raise ValueError(f"min_keep must be in (0, 1], got {self.min_keep}")


@dataclass(frozen=True)
class MatteInfo:
    """What the refinement did, for the sample's row."""

    refined: bool  # False: the unrefined alpha was kept (see ``fallback``)
    fallback: str  # "" or why the refinement was not used
    band: int  # band half-width used (px)
    area_before: int  # mask pixels (alpha ≥ 0.5) of the polygon raster
    area_after: int  # mask pixels of the returned alpha
    fringe_pixels: int  # pixels whose colour the decontamination changed


@dataclass(frozen=True)
class MatteResult:
    rgb: np.ndarray  # h×w×3 uint8, decontaminated in the band
    alpha: np.ndarray  # h×w float32 in [0, 1]
    info: MatteInfo


def _disk(r: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def _box(img: np.ndarray, r: int) -> np.ndarray:
    return cv2.boxFilter(img, -1, (2 * r + 1, 2 * r + 1), normalize=True, borderType=cv2.BORDER_REFLECT)


def default_band(mask_area: int) -> int:
    """Band half-width from the object's size: about 1.5 % of its linear size, 1..4 px."""
    return int(np.clip(round(1 + np.sqrt(max(mask_area, 0)) / 60.0), 1, 4))


def guided_filter(guide: np.ndarray, p: np.ndarray, r: int, eps: float) -> np.ndarray:
    """Colour-guided filter of ``p`` (h×w float32) with ``guide`` (h×w×3 float32 in [0, 1]).

    Per window: p ≈ aᵀI + b with a = (Σ + εU)⁻¹ cov(I, p), b = mean(p) − aᵀ mean(I); the output is
    the window-averaged model evaluated at each pixel. The 3×3 systems are solved in closed form
    (adjugate over determinant) for all pixels at once.
    """
    mean_i = _box(guide, r)
    mean_p = _box(p, r)
    cov_ip = _box(guide * p[..., None], r) - mean_i * mean_p[..., None]
    # symmetric covariance entries of the guide, regularised
    idx = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))
    prods = np.stack([guide[..., i] * guide[..., j] for i, j in idx], axis=-1)
    mprod = _box(prods, r)
    s = {ij: mprod[..., k] - mean_i[..., ij[0]] * mean_i[..., ij[1]] for k, ij in enumerate(idx)}
    a00, a01, a02 = s[(0, 0)] + eps, s[(0, 1)], s[(0, 2)]
    a11, a12, a22 = s[(1, 1)] + eps, s[(1, 2)], s[(2, 2)] + eps
    c00 = a11 * a22 - a12 * a12
    c01 = a02 * a12 - a01 * a22
    c02 = a01 * a12 - a02 * a11
    c11 = a00 * a22 - a02 * a02
    c12 = a01 * a02 - a00 * a12
    c22 = a00 * a11 - a01 * a01
    det = a00 * c00 + a01 * c01 + a02 * c02
    det = np.where(np.abs(det) < 1e-12, 1e-12, det)
    v0, v1, v2 = cov_ip[..., 0], cov_ip[..., 1], cov_ip[..., 2]
    a = np.stack(
        [(c00 * v0 + c01 * v1 + c02 * v2) / det, (c01 * v0 + c11 * v1 + c12 * v2) / det,
         (c02 * v0 + c12 * v1 + c22 * v2) / det],
        axis=-1,
    ).astype(np.float32)
    b = (mean_p - np.sum(a * mean_i, axis=-1)).astype(np.float32)
    return np.sum(_box(a, r) * guide, axis=-1) + _box(b, r)


def guided_filter_gray(guide: np.ndarray, p: np.ndarray, r: int, eps: float) -> np.ndarray:
    """Guided filter with a one-channel guide (h×w float32 in [0, 1]): four box filters."""
    mean_i = _box(guide, r)
    mean_p = _box(p, r)
    var_i = _box(guide * guide, r) - mean_i * mean_i
    cov_ip = _box(guide * p, r) - mean_i * mean_p
    a = cov_ip / (var_i + eps)
    b = mean_p - a * mean_i
    return _box(a, r) * guide + _box(b, r)


def _refined_alpha(rgb01: np.ndarray, alpha: np.ndarray, band_mask: np.ndarray, mask: np.ndarray,
                   band: int, params: MatteParams) -> np.ndarray:
    if params.method in ("guided", "guided-colour"):
        r = max(1, int(params.radius if params.radius is not None else band))
        if params.method == "guided-colour":
            q = guided_filter(rgb01, alpha, r, float(params.eps))
        else:
            luma = rgb01[..., 0] * np.float32(0.299) + rgb01[..., 1] * np.float32(0.587) + rgb01[..., 2] * np.float32(0.114)
            q = guided_filter_gray(luma, alpha, r, float(params.eps))
        # The filter decides where the edge runs, not how soft it is: its output ramps over the whole
        # band (up to 2·band px), much softer than a photo's edge. Steepened back to the rasteriser's
        # ~1 px, the edge keeps the source's sharpness; the camera step blurs it to the scene's.
        q = (q - np.float32(0.5)) * np.float32(2 * band) + np.float32(0.5)
    else:  # feather: shrink by half the band, then a Gaussian of the band's width
        shrunk = cv2.erode(mask.astype(np.uint8), _disk(max(1, band // 2))).astype(np.float32)
        q = cv2.GaussianBlur(shrunk, (0, 0), max(0.5, band / 2.0), borderType=cv2.BORDER_REFLECT)
    np.clip(q, 0.0, 1.0, out=q)
    out = np.where(band_mask, q, np.where(mask, 1.0, 0.0)).astype(np.float32)
    # keep the rasteriser's rule: alpha lives on the mask and its one-pixel rim only
    out *= cv2.dilate((out >= MASK_THRESHOLD).astype(np.uint8), _EDGE)
    return out


def decontaminate(rgb: np.ndarray, alpha: np.ndarray, band_mask: np.ndarray, band: int,
                  method: str = "extend", min_alpha: float = 0.3) -> tuple[np.ndarray, int]:
    """Object colours in the band freed of the source background's spill; (rgb uint8, pixels changed).

    Pixels outside the band, pixels at alpha 1 (``extend``) and pixels with alpha 0 (never pasted)
    keep their bytes. Box filters run over the box; everything else only at the fixed pixels.
    """
    fix = band_mask & (alpha > 0)
    if method == "extend":
        fix &= alpha < 1.0
    if method == "none" or not fix.any():
        return rgb.copy(), 0
    img = rgb.astype(np.float32)
    r = 2 * band + 2
    k = (2 * r + 1, 2 * r + 1)
    w_fg = ((alpha >= 1.0) & ~band_mask).astype(np.float32)
    sf = cv2.boxFilter(img * w_fg[..., None], -1, k, normalize=False, borderType=cv2.BORDER_CONSTANT)[fix]
    wf = cv2.boxFilter(w_fg, -1, k, normalize=False, borderType=cv2.BORDER_CONSTANT)[fix]
    obs = img[fix]
    have_f = (wf > 0.5)[:, None]
    f0 = np.where(have_f, sf / np.maximum(wf, 1.0)[:, None], obs)  # thin parts: keep the observed colour
    if method == "extend":
        f = f0
    else:
        w_bg = ((alpha <= 0.0) & ~band_mask).astype(np.float32)
        sb = cv2.boxFilter(img * w_bg[..., None], -1, k, normalize=False, borderType=cv2.BORDER_CONSTANT)[fix]
        wb = cv2.boxFilter(w_bg, -1, k, normalize=False, borderType=cv2.BORDER_CONSTANT)[fix]
        b = sb / np.maximum(wb, 1.0)[:, None]
        a = np.maximum(alpha[fix], 1e-3)[:, None]
        solved = (obs - (1.0 - a) * b) / a
        t = np.clip((a - 0.5 * min_alpha) / (0.5 * min_alpha), 0.0, 1.0) * (wb > 0.5)[:, None]
        f = t * solved + (1.0 - t) * f0
    new = np.clip(np.rint(f), 0, 255).astype(np.uint8)
    changed = int(np.count_nonzero(np.any(new != rgb[fix], axis=-1)))
    out = rgb.copy()
    out[fix] = new
    return out, changed


def refine_matte(rgb: np.ndarray, alpha: np.ndarray, params: MatteParams | None = None) -> MatteResult:
    """Refine a box-local alpha from its colour crop and decontaminate the fringe. Never raises on data.

    ``rgb`` is the object's crop at the placed size (h×w×3 uint8, the source background included
    where alpha < 1) and ``alpha`` its polygon raster (h×w float32). Returns new rgb and alpha of the
    same size; alpha stays exactly 0 farther than one pixel from the new mask (alpha ≥ 0.5). Only a
    caller's bug (rgb and alpha of different sizes) raises ValueError.
    """
    params = params or MatteParams()
    alpha = np.asarray(alpha, dtype=np.float32)
    if rgb.shape[:2] != alpha.shape or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"rgb {rgb.shape} and alpha {alpha.shape} disagree")
    mask = alpha >= MASK_THRESHOLD
    area = int(np.count_nonzero(mask))
    band = params.band if params.band is not None else default_band(area)

    def keep(reason: str) -> MatteResult:
        return MatteResult(rgb=rgb.copy(), alpha=alpha.copy(),
                           info=MatteInfo(False, reason, band, area, area, 0))

    if area == 0:
        return keep("empty mask")
    if params.method == "none" and params.decontaminate == "none":
        return keep("disabled")
    m8 = mask.astype(np.uint8)
    k = _disk(band)
    band_mask = (cv2.dilate(m8, k) > 0) & (cv2.erode(m8, k, borderType=cv2.BORDER_REPLICATE) == 0)
    rgb01 = rgb.astype(np.float32) * np.float32(1 / 255)
    new_alpha = alpha if params.method == "none" else _refined_alpha(rgb01, alpha, band_mask, mask, band, params)
    new_area = int(np.count_nonzero(new_alpha >= MASK_THRESHOLD))
    if new_area == 0:
        return keep("refinement emptied the mask")
    if new_area < params.min_keep * area:
        return keep(f"refinement kept {new_area} of {area} mask pixels (< {params.min_keep:.0%})")
    new_rgb, n = decontaminate(rgb, new_alpha, band_mask, band, params.decontaminate, params.min_alpha)
    return MatteResult(rgb=new_rgb, alpha=new_alpha, info=MatteInfo(True, "", band, area, new_area, n))


def mask_polygons(mask: np.ndarray, origin: tuple[int, int] = (0, 0)) -> tuple[tuple[float, ...], ...]:
    """Outer outlines of a binary mask as flat COCO polygons, shifted by ``origin``, that rasterise back
    to the same pixels (pycocotools): traced on the mask doubled in size, each vertex a quarter pixel
    inside the pixel's edge, so every pixel centre of the mask is inside and none outside it. Holes are
    filled (COCO polygons have none)."""
    up = cv2.resize(mask.astype(np.uint8), None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(up, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    out = []
    for c in contours:
        pts = c.reshape(-1, 2).astype(np.float64)
        if len(pts) >= 3:
            pts = (pts + 0.5) / 2.0 + np.asarray(origin, dtype=np.float64)
            out.append(tuple(np.round(pts.reshape(-1), 2).tolist()))
    return tuple(out)


def refine_cutout(cut: Cutout, params: MatteParams | None = None) -> tuple[Cutout, MatteInfo]:
    """``refine_matte`` on a Cutout; a refined cutout's ``polygons`` are the new mask's contours."""
    res = refine_matte(cut.rgb, cut.alpha, params)
    if not res.info.refined:
        return replace(cut, rgb=res.rgb), res.info
    polys = cut.polygons
    if res.info.area_after != res.info.area_before or not np.array_equal(res.alpha >= MASK_THRESHOLD, cut.mask):
        polys = mask_polygons(res.alpha >= MASK_THRESHOLD, (cut.box[0], cut.box[1])) or cut.polygons
    return Cutout(rgb=res.rgb, alpha=res.alpha, box=cut.box, polygons=polys), res.info
