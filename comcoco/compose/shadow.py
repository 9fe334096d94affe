"""Effects travel with the object: a soft contact and cast shadow for a pasted object.

A pasted object without the shadow that the scene's own objects have is found without reading the
expression, and a removal model trained on such pairs learns to leave shadows behind (ObjectDrop,
Winter et al. 2024). This module estimates the scene's light from the background and draws a
darkening-only shadow map for a placed object; the caller applies it to the background before
pasting the object, so the shadow is part of what the sample asks to remove.

Light (``estimate_light``), in order of preference:

* ``objects`` — the background's annotated objects' own shadows: around each object's base the
  luminance of eight probes (right, down-right, …, in ground-plane directions foreshortened by
  ``SQUASH``) half an object width out is compared with the ground farther away; the direction in
  which the ground is darkest is where shadows fall; the darkest probe is the strength, shrunk
  towards the default strength by 1 − (1 − e^(−n/2)) for n objects (one object's dark surroundings
  may be unannotated things rather than its shadow).
  Probes further along that direction (up to 1.4 widths) give the shadow's length: the farthest
  one still at least half as dark. Confidence grows with the number of objects and with the
  asymmetry between the darkest side and the opposite one (a contact shadow centred under an object
  is dark on both sides and says nothing about the light); an unsure direction is shrunk towards
  the default and its cast shadow shortened in proportion.
* ``gradient`` — no usable objects: the background's large-scale horizontal luminance gradient
  (a plane fitted to log-luminance of a ≤48-px copy). Light comes from the brighter side, so shadows
  fall towards the darker side and towards the camera; strength is the default.
* ``default`` — neither: ``DEFAULT_LIGHT`` (shadows fall straight down, towards the camera, at
  strength 0.3); ``cast_shadow`` then draws a contact shadow only.

Shadow (``cast_shadow``): a contact shadow (the silhouette dropped straight down: a band on the base
row as wide as the object, darkest under its bulk and under its foot) plus,
when the light's direction is known, a cast shadow: the silhouette projected onto the ground away
from the light (x′ = x + k_x·z, y′ = y_base + k_y·z for a point at height z above the base),
fading with z, blurred, clipped to the frame. The map is region-local (never full frame) and exactly
0 wherever it would not change a uint8 pixel, so ``effect = map > 0`` holds every changed pixel.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from comcoco.compose.cutout import MASK_THRESHOLD

LIGHT_SOURCES: tuple[str, ...] = ("objects", "gradient", "default")
SQUASH = 0.35  # foreshortening of ground-plane depth in the image (camera looking slightly down)
MAX_STRENGTH = 0.6  # no shadow removes more than this fraction of the light
_LUMA = (0.299, 0.587, 0.114)
_N_DIRS = 8
_DISTANCES = (0.25, 0.5, 0.9, 1.4)  # probe distances from the base, in object widths
_DIR_AT = 1  # the direction is read at half a width
_MAX_LENGTH = 1.5  # longest cast shadow measured, × object height
_MIN_PROBE = 12  # pixels a probe needs to count
_PROBE_HEIGHT = 48.0  # objects are probed at most this tall (px)
_MIN_REF = 30  # ground pixels the reference needs
_G_MIN = 0.05  # log-luminance change across the image width below which the gradient says nothing
_G_REF = 0.3  # ... and at which it is fully trusted
_MIN_KY = 0.12  # the cast shadow's depth on the ground is at least this fraction of the object height


@dataclass(frozen=True)
class Light:
    """The scene's light as seen on the ground.

    ``direction`` is the unit ground-plane direction in which shadows fall from an object's base,
    in image axes (x right, y down = towards the camera); ``strength`` is the fraction of light a
    contact shadow's core removes.
    """

    direction: tuple[float, float]
    strength: float
    source: str  # "objects" | "gradient" | "default"
    confidence: float  # 0..1
    n_objects: int = 0  # annotated objects that contributed
    length: float | None = None  # cast shadow length on the ground, × object height; None: the default

    def to_dict(self) -> dict[str, Any]:
        return {"direction": [round(self.direction[0], 4), round(self.direction[1], 4)],
                "strength": round(self.strength, 4), "source": self.source,
                "confidence": round(self.confidence, 4), "n_objects": self.n_objects,
                "length": None if self.length is None else round(self.length, 4)}


DEFAULT_LIGHT = Light(direction=(0.0, 1.0), strength=0.3, source="default", confidence=0.0)


@dataclass(frozen=True)
class NativeObject:
    """A background's own annotated object: its box and outline in background pixels."""

    box: tuple[float, float, float, float]  # x, y, w, h
    polygons: tuple[np.ndarray, ...]  # each (n, 2) float64

    @classmethod
    def from_annotation(cls, bbox: Sequence[float], segmentation: Any) -> NativeObject | None:
        """From COCO fields; None for RLE/crowd or unusable outlines (they cannot be probed)."""
        if not isinstance(segmentation, list | tuple):
            return None
        polys = []
        for part in segmentation:
            try:
                arr = np.asarray(part, dtype=np.float64)
            except (TypeError, ValueError):
                return None
            if arr.ndim == 1 and arr.size >= 6 and arr.size % 2 == 0 and np.all(np.isfinite(arr)):
                polys.append(arr.reshape(-1, 2))
        if not polys or len(bbox) != 4:
            return None
        return cls(box=tuple(float(v) for v in bbox), polygons=tuple(polys))  # type: ignore[arg-type]


@dataclass(frozen=True)
class ShadowParams:
    """Shape of the drawn shadow, in fractions of the object's height H (documented choices)."""

    contact: float = 0.07  # contact shadow: a flat-topped band exp(−½(r/c)⁴), c = this × H, on the base row
    foot: float = 0.25  # the columns of the silhouette's lowest quarter are always fully in it
    cast_length: float = 0.6  # cast shadow length along the ground when the light does not say, × H
    gradient_length: float = 0.35  # ... for a light from the gradient (less sure)
    cast_darkness: float = 0.7  # cast shadow darkness relative to the contact core
    fade: float = 0.8  # cast shadow fades as exp(−z / (fade·H)) with the casting point's height z
    blur: float = 0.03  # contact softness (Gaussian σ), × H, at least 1 px
    cast_blur: float = 0.06  # cast softness, × H, at least 1.5 px


@dataclass(frozen=True)
class Shadow:
    """A darkening map over ``region`` (x, y, w, h in the frame): out = round(bg·(1 − map)) where map > 0."""

    map: np.ndarray  # h×w float32 in [0, MAX_STRENGTH]
    region: tuple[int, int, int, int]
    kind: str  # "cast" (contact + cast) | "contact" | "none"
    reason: str  # why the shadow is less than a cast shadow (or "")

    @property
    def effect(self) -> np.ndarray:
        """Boolean footprint: every pixel the shadow may change."""
        return self.map > 0

    def full_effect(self, height: int, width: int) -> np.ndarray:
        """The footprint in frame coordinates (bool, height×width)."""
        out = np.zeros((height, width), dtype=bool)
        x, y, w, h = self.region
        out[y:y + h, x:x + w] = self.map > 0
        return out


def _luma(rgb: np.ndarray) -> np.ndarray:
    r, g, b = _LUMA
    return (rgb[..., 0] * np.float32(r) + rgb[..., 1] * np.float32(g) + rgb[..., 2] * np.float32(b)).astype(np.float32)


def median_of_known(grid: np.ndarray) -> np.ndarray:
    """``np.nanmedian(grid, axis=0)`` for a 2-D float grid whose every column holds a number: the
    middle of each column's numbers (NaNs sort last), the mean of the two middles for an even count,
    as ``sum(low, high) / 2`` in the grid's dtype — numpy's own steps (its masked sort: the NaNs as +inf
    through ``argsort``, or a plain sort without NaNs, so even ±0 ties land alike), without its
    masked-array machinery (which costs ~0.2 ms a call on these few objects × cells)."""
    nan = np.isnan(grid)
    if nan.any():
        srt = np.take_along_axis(grid, np.where(nan, np.inf, grid).argsort(axis=0), axis=0)
    else:
        srt = np.sort(grid, axis=0)
    n = np.count_nonzero(~nan, axis=0)
    high = n // 2
    low = np.where(n % 2 == 1, high, high - 1)
    cols = np.arange(grid.shape[1])
    return np.stack([srt[low, cols], srt[high, cols]]).sum(axis=0) / 2  # numpy's sum: -0 + -0 is +0 here


def _objects_mask(objects: Sequence[NativeObject], h: int, w: int) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    for o in objects:
        cv2.fillPoly(m, [np.rint(p).astype(np.int32).reshape(-1, 1, 2) for p in o.polygons], 1)
    return m


def _probe_profile(bg: np.ndarray, occupied: np.ndarray, o: NativeObject) -> tuple[np.ndarray, float] | None:
    """Darkening (1 − probe/ground) around one object's base: eight directions × ``_DISTANCES``.

    Returns the grid and the object's width/height ratio (distances are in object widths).

    Works on a window around the object only; probes are rectangles (slices), so the cost does not
    grow with the frame.
    """
    H, W = occupied.shape
    pts = np.concatenate(o.polygons)
    bx0, by0 = max(0, int(np.floor(pts[:, 0].min()))), max(0, int(np.floor(pts[:, 1].min())))
    bx1, by1 = min(W, int(np.ceil(pts[:, 0].max())) + 1), min(H, int(np.ceil(pts[:, 1].max())) + 1)
    if bx1 - bx0 < 4 or by1 - by0 < 4 or (bx1 - bx0) * (by1 - by0) > 0.6 * H * W:
        return None
    own = np.zeros((by1 - by0, bx1 - bx0), np.uint8)
    cv2.fillPoly(own, [np.rint(p - (bx0, by0)).astype(np.int32).reshape(-1, 1, 2) for p in o.polygons], 1)
    rows = np.nonzero(own.any(axis=1))[0]
    if rows.size == 0 or np.count_nonzero(own) < 50:
        return None
    y1 = by0 + int(rows[-1]) + 1
    cols = np.nonzero(own.any(axis=0))[0]
    ow, oh = float(cols[-1] - cols[0] + 1), float(y1 - by0 - rows[0])
    if y1 >= H - 2 or ow * oh > 0.5 * H * W:
        return None  # base outside the frame, or the object is the scene (bed, couch, table)
    foot_rows = own[max(0, int(rows[-1]) + 1 - max(1, int(0.1 * oh))):int(rows[-1]) + 1]
    xc, yb = bx0 + float(np.nonzero(foot_rows.any(axis=0))[0].mean()) + 0.5, float(y1)
    wx0, wx1 = max(0, int(xc - 2.0 * ow)), min(W, int(xc + 2.0 * ow) + 1)
    wy0, wy1 = max(0, int(yb - 0.3 * oh)), min(H, int(yb + 0.5 * oh) + 1)
    # a large object is probed on a copy where it is _PROBE_HEIGHT px tall: cost bounded per object
    f = min(1.0, _PROBE_HEIGHT / oh)
    win, occ = bg[wy0:wy1, wx0:wx1], occupied[wy0:wy1, wx0:wx1]
    if f < 1.0:
        size = (max(1, round((wx1 - wx0) * f)), max(1, round((wy1 - wy0) * f)))
        win = cv2.resize(win, size, interpolation=cv2.INTER_AREA)
        occ = cv2.resize(occ, size, interpolation=cv2.INTER_NEAREST)
    lum = _luma(win.astype(np.float32))
    free = occ == 0
    xc, yb, ow, oh = (xc - wx0) * f, (yb - wy0) * f, ow * f, oh * f
    gy = np.arange(lum.shape[0], dtype=np.float32)[:, None]
    gx = np.arange(lum.shape[1], dtype=np.float32)[None, :]
    near = ((gx - xc) / (1.1 * ow)) ** 2 + ((gy - yb) / max(3.0, 0.3 * oh)) ** 2 < 1.0
    ref_sel = free & ~near & (gy >= yb - 0.15 * oh)
    if np.count_nonzero(ref_sel) < _MIN_REF:
        return None
    ref = float(np.median(lum[ref_sel]))
    if ref < 8.0:
        return None  # too dark to see a shadow
    prof = np.full((_N_DIRS, len(_DISTANCES)), np.nan)
    half_w, half_h = 0.2 * ow, max(2.0, 0.06 * oh)
    for k in range(_N_DIRS):
        phi = 2 * math.pi * k / _N_DIRS
        for j, dist in enumerate(_DISTANCES):
            px, py = xc + dist * ow * math.cos(phi), yb + dist * ow * math.sin(phi) * SQUASH
            x0, x1 = max(0, int(px - half_w)), min(lum.shape[1], int(px + half_w) + 1)
            y0, y1p = max(0, int(py - half_h)), min(lum.shape[0], int(py + half_h) + 1)
            if x1 <= x0 or y1p <= y0:
                continue
            v = lum[y0:y1p, x0:x1][free[y0:y1p, x0:x1]]
            if v.size >= _MIN_PROBE:
                prof[k, j] = 1.0 - float(np.partition(v, v.size // 2)[v.size // 2]) / ref  # median
    return prof, ow / oh


def _from_objects(bg: np.ndarray, objects: Sequence[NativeObject], occupied: np.ndarray | None = None) -> Light | None:
    """Direction from the darkest of eight probes half a width from the base; strength from its
    darkening; length from how far along that direction the ground stays at least half as dark.
    ``occupied``: the objects' fill (``_objects_mask``) when the caller already has it."""
    if occupied is None:
        occupied = _objects_mask(objects, bg.shape[0], bg.shape[1])
    probes = [p for p in (_probe_profile(bg, occupied, o) for o in objects) if p is not None]
    probes = [p for p in probes if np.count_nonzero(~np.isnan(p[0][:, _DIR_AT])) >= 3]
    if not probes:
        return None
    grid = np.stack([p[0] for p in probes])  # objects × directions × distances
    aspect = float(np.median([p[1] for p in probes]))
    # a probe no object could place is an all-NaN column: it stays NaN, without nanmedian's warning
    # (catch_warnings is not thread-safe: with threaded shards the warning leaked to stderr)
    known = ~np.isnan(grid).all(axis=0)
    agg_grid = np.full(grid.shape[1:], np.nan)
    agg_grid[known] = median_of_known(grid[:, known])
    agg = agg_grid[:, _DIR_AT]
    valid = ~np.isnan(agg)
    if np.count_nonzero(valid) < 3:
        return None
    # the darkest ground near a base, shrunk towards the default by how few objects say so (one
    # object's dark surroundings may be unannotated things rather than its shadow)
    n = len(probes)
    trust = 1.0 - math.exp(-n / 2.0)
    measured = float(np.clip(np.nanmax(agg_grid), 0.0, MAX_STRENGTH))
    strength = trust * measured + (1.0 - trust) * DEFAULT_LIGHT.strength
    base = float(np.nanmedian(agg))
    wts = np.where(valid, np.clip(agg - base, 0.0, None), 0.0) ** 2
    phis = 2 * np.pi * np.arange(_N_DIRS) / _N_DIRS
    vx, vy = float(np.sum(wts * np.cos(phis))), float(np.sum(wts * np.sin(phis)))
    norm = math.hypot(vx, vy)
    # evidence for a direction is asymmetry: the darkest side against the opposite side (a contact
    # shadow centred under the object is as dark on both sides and says nothing about the light)
    k_best = int(np.nanargmax(agg))
    opposite = agg[(k_best + _N_DIRS // 2) % _N_DIRS]
    if not np.isfinite(opposite):
        opposite = base
    asym = (float(agg[k_best]) - float(opposite)) / max(float(agg[k_best]), 1e-6)
    conf = trust * float(np.clip(asym / 0.5, 0.0, 1.0))
    if norm < 1e-9 or measured <= 0.0:
        return Light(direction=DEFAULT_LIGHT.direction, strength=strength, source="objects",
                     confidence=0.0, n_objects=n, length=0.0)
    along = agg_grid[k_best]
    reach = [d for d, v in zip(_DISTANCES, along, strict=True) if np.isfinite(v) and v >= 0.5 * measured]
    # an unsure direction casts a shorter shadow: the contact shadow carries the rest
    length = conf * float(np.clip((max(reach) if reach else 0.0) * aspect, 0.0, _MAX_LENGTH))
    # an unsure direction is shrunk towards the default (shadows straight towards the camera)
    dx = conf * vx / norm + (1.0 - conf) * DEFAULT_LIGHT.direction[0]
    dy = conf * vy / norm + (1.0 - conf) * DEFAULT_LIGHT.direction[1]
    dn = math.hypot(dx, dy)
    if dn < 1e-6:
        dx, dy, dn = DEFAULT_LIGHT.direction[0], DEFAULT_LIGHT.direction[1], 1.0
    return Light(direction=(dx / dn, dy / dn), strength=strength, source="objects",
                 confidence=round(conf, 6), n_objects=n, length=round(length, 4))


def _from_gradient(bg: np.ndarray) -> Light | None:
    h, w = bg.shape[:2]
    scale = 48.0 / max(h, w)
    small = cv2.resize(bg, (max(2, round(w * scale)), max(2, round(h * scale))), interpolation=cv2.INTER_AREA)
    lum = np.log(_luma(small.astype(np.float32)) + 1.0)
    sh, sw = lum.shape
    yy, xx = np.mgrid[0:sh, 0:sw].astype(np.float64)
    A = np.column_stack([np.ones(lum.size), xx.ravel() / max(sw - 1, 1), yy.ravel() / max(sh - 1, 1)])
    coef, *_ = np.linalg.lstsq(A, lum.ravel().astype(np.float64), rcond=None)
    gx = float(coef[1])  # log-luminance change across the full width
    if not math.isfinite(gx) or abs(gx) < _G_MIN:
        return None
    t = float(np.clip(abs(gx) / _G_REF, 0.0, 1.0))
    dx = -math.copysign(t, gx) * math.sqrt(0.5)
    dy = math.sqrt(1.0 - dx * dx)
    return Light(direction=(dx, dy), strength=DEFAULT_LIGHT.strength, source="gradient", confidence=round(0.5 * t, 6))


def estimate_light(background: np.ndarray, native_objects: Iterable[NativeObject] = (),
                   occupied: np.ndarray | None = None) -> Light:
    """The light from ``background`` (H×W×3 uint8) and its annotated objects; never raises on data.
    ``occupied`` (H×W uint8, 1 on the objects' polygons: ``_objects_mask`` of them) saves filling them again."""
    bg = np.asarray(background)
    if bg.ndim != 3 or bg.shape[2] != 3 or bg.shape[0] < 4 or bg.shape[1] < 4:
        return DEFAULT_LIGHT
    objs = [o for o in native_objects if o is not None]
    if objs:
        light = _from_objects(bg, objs, occupied)
        if light is not None:
            return light
    return _from_gradient(bg) or DEFAULT_LIGHT


def _warp(sil: np.ndarray, kx: float, ky: float, yb: float, ox: float, oy: float, size: tuple[int, int]) -> np.ndarray:
    """Project a box-local silhouette to the ground: (u, v) → (u + kx·z, yb + ky·z), z = yb − v, then shift."""
    M = np.float32([[1.0, -kx, kx * yb + ox], [0.0, -ky, yb + ky * yb + oy]])
    return cv2.warpAffine(sil, M, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def cast_shadow(alpha: np.ndarray, box: Sequence[int], frame_size: tuple[int, int], light: Light,
                background: np.ndarray | None = None, params: ShadowParams | None = None) -> Shadow:
    """The shadow map of an object with box-local ``alpha`` placed at ``box`` in a ``frame_size`` (w, h) frame.

    With ``background`` (the frame's pixels) the map is also zeroed where rounding would leave the
    pixel unchanged, so ``effect`` is exactly the set of changed pixels; without it, where no uint8
    value could change (map < 0.5/255). Never raises on data: an empty mask, an object at the bottom
    border, or a light of unknown direction give a smaller shadow with a reason.

    Kept whole: the region, both shadow parts and the fallbacks share the same reach numbers.
    """
    p = params or ShadowParams()
    fw, fh = int(frame_size[0]), int(frame_size[1])
    bx, by, bw, bh = (int(v) for v in box)
    mask = np.asarray(alpha, dtype=np.float32) >= MASK_THRESHOLD
    empty = Shadow(np.zeros((0, 0), np.float32), (bx, by, 0, 0), "none", "")
    if not mask.any():
        return Shadow(empty.map, empty.region, "none", "empty mask")
    s = float(np.clip(light.strength, 0.0, MAX_STRENGTH))
    if s <= 0.0:
        return Shadow(empty.map, empty.region, "none", f"the scene shows no shadows ({light.source})")
    rows = np.nonzero(mask.any(axis=1))[0]
    top, yb_local = int(rows[0]), float(rows[-1] + 1)
    H = yb_local - top
    reason, cast = "", True
    if light.source == "default":
        cast, reason = False, "light direction unknown: contact shadow only"
    if by + yb_local >= fh:
        cast, reason = False, "object touches the bottom border: no ground below it"
    if light.length is not None:
        length = light.length
    else:
        length = p.cast_length if light.source == "objects" else p.gradient_length
    dx, dy = light.direction
    kx, ky = length * dx, length * dy * SQUASH
    if abs(ky) < _MIN_KY:  # a sideways light: the shadow still has the object's depth on the ground
        ky = math.copysign(_MIN_KY, ky if ky != 0 else 1.0)
    sig_c = max(1.0, p.blur * H)
    sig_k = max(1.5, p.cast_blur * H)
    reach_x = abs(kx) * H + 3 * sig_k if cast else 3 * sig_c
    reach_dn = (max(ky, 0.0) * H if cast else 0.0) + p.contact * H + 3 * max(sig_c, sig_k if cast else 0.0)
    reach_up = (max(-ky, 0.0) * H if cast else 0.0) + 3 * sig_c
    x0, x1 = max(0, math.floor(bx - reach_x)), min(fw, math.ceil(bx + bw + reach_x))
    y0 = max(0, math.floor(by + yb_local - max(reach_up, p.contact * H + 3 * sig_c)))
    y1 = min(fh, math.ceil(by + yb_local + reach_dn))
    if x1 <= x0 or y1 <= y0:
        return Shadow(empty.map, empty.region, "none", "shadow lies outside the frame")
    size = (x1 - x0, y1 - y0)
    ox, oy = bx - x0, by - y0
    sil = mask.astype(np.float32)
    z = (yb_local - np.arange(mask.shape[0], dtype=np.float32) - 0.5)[:, None]
    # contact: what the object shades under diffuse light from above, its silhouette dropped straight
    # down: per column the share of the object above it (the foot's columns at least), spread as a
    # Gaussian band on the base row (separable, alias-free)
    cover = sil.sum(axis=0)
    foot_cols = np.maximum((sil * (z <= max(1.0, p.foot * H))).max(axis=0),
                           np.sqrt(cover / max(float(cover.max()), 1.0)))
    cols = np.zeros(size[0], np.float32)
    cx0, cx1 = max(0, ox), min(size[0], ox + bw)
    cols[cx0:cx1] = foot_cols[cx0 - ox:cx1 - ox]
    cols = cv2.GaussianBlur(cols[None, :], (0, 0), sigmaX=sig_c, sigmaY=0.1, borderType=cv2.BORDER_CONSTANT)[0]
    ry = np.arange(size[1], dtype=np.float32) + 0.5 - (oy + yb_local)
    prof = np.exp(-0.5 * (ry / max(1.0, p.contact * H)) ** 4).astype(np.float32)  # flat-topped: a footprint
    contact = prof[:, None] * cols[None, :]
    m = np.clip(contact * (1.0 / max(float(contact.max()), 1e-6)), 0.0, 1.0)
    if cast:
        faded = sil * np.exp(-np.clip(z, 0, None) / (p.fade * H)).astype(np.float32)
        # the projection squashes heights by |ky|: pre-blur vertically so no row is skipped (aliasing)
        faded = cv2.GaussianBlur(faded, (0, 0), sigmaX=0.3, sigmaY=max(0.3, 0.5 / abs(ky)))
        proj = _warp(faded, kx, ky, yb_local, ox, oy, size)
        proj = cv2.GaussianBlur(proj, (0, 0), sig_k, borderType=cv2.BORDER_CONSTANT)
        peak = float(proj.max())
        if peak > 1e-6:  # blur spreads a thin shadow thinner still; its core keeps the cast darkness
            m = np.maximum(m, (p.cast_darkness / peak) * proj)
    m = (m * np.float32(s)).astype(np.float32)
    m[m < np.float32(0.5 / 255.0)] = 0.0
    clipped = (bx - reach_x < 0 or bx + bw + reach_x > fw or by + yb_local + reach_dn > fh)
    if clipped and not reason:
        reason = "clipped at the frame border"
    if background is not None:  # tested where m > 0 only: elsewhere shading is the identity
        iy, ix = np.nonzero(m)
        px = background[y0:y1, x0:x1][iy, ix][:, None]
        same = np.all(shade(px, m[iy, ix][:, None]) == px, axis=-1)[:, 0]
        m[iy[same], ix[same]] = 0.0
    kind = "cast" if cast else "contact"
    if not m.any():
        return Shadow(empty.map, empty.region, "none", reason or "shadow too faint to change a pixel")
    return Shadow(m, (x0, y0, size[0], size[1]), kind, reason)


def shade(region: np.ndarray, m: np.ndarray) -> np.ndarray:
    """round(region·(1 − m)) as uint8 (region h×w×3 uint8, m h×w float32)."""
    out = region.astype(np.float32) * (np.float32(1.0) - m)[..., None]
    return np.rint(out).astype(np.uint8)


def apply_shadow(canvas: np.ndarray, shadow: Shadow) -> None:
    """Darken ``canvas`` (H×W×3 uint8) in place where the shadow's map is > 0; nothing else changes."""
    x, y, w, h = shadow.region
    if w == 0 or h == 0:
        return
    region = canvas[y:y + h, x:x + w]
    sel = shadow.map > 0
    region[sel] = shade(region, shadow.map)[sel]
