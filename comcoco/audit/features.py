"""Cue features of one object in its image: what tells a pasted object from a native one.

Every feature compares the object with its own surroundings, so it describes the *paste*, not the
kind of object. Bands come from the distance to the mask edge, in a window around the object (its
box grown by half its long side, 8..64 px), at native resolution (resizing would erase the noise and
the JPEG grid):

* ``edge``: within ``EDGE_TOL`` = 3 px of the edge on either side; ``near``: 3–6 px inside / outside;
* ``in`` / ``out``: 6..6+R px inside / outside, R = clip(0.15·√area, 6, 24).

The edge band is wide on purpose: a native object's COCO polygon misses its true edge by a pixel or
two, while a pasted object's published mask is its pixel edge exactly. A feature that looked at the
mask's own pixel (a gradient profile at ±1 px) would detect that annotation difference, which an
image model never sees, rather than anything in the picture. No feature depends on where, within
±3 px, the mask edge lies.

Families (the columns of ``FEATURE_NAMES`` carry their family in ``FEATURE_FAMILY``):

* boundary — gradient in the edge band vs the texture on both sides, how peaked it is (a cut is
  one step), its Laplacian-to-gradient ratio, a luminance halo (the edge band's departure from the
  near bands) and the colour rim (edge colours vs the object's own colours nearby);
* noise — Immerkær noise (flattest half, trimmed mean) inside vs outside, luma and chroma;
* sharpness — equivalent blur σ (re-blur ratio on strong edges) inside vs outside, Laplacian energy;
* shadow — luminance just below the object's base vs the ground beside it and vs the ring above;
* colour — YCrCb means, luma spread and chroma inside vs outside;
* jpeg — 8×8 blockiness on the full image's grid inside vs outside; chroma bleed in the edge band:
  the share of chroma-gradient energy at pixels where the luma gradient is low (subsampled chroma
  spreads away from the luma edge), against the same share in the surrounding texture.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from comcoco.pixels import magnitude

FAMILIES: tuple[str, ...] = ("boundary", "noise", "sharpness", "shadow", "colour", "jpeg")
LABELS: tuple[str, ...] = ("pasted", "native")
MIN_AREA = 64  # objects with fewer mask pixels carry no usable cue and are skipped

_FEATURES: tuple[tuple[str, str], ...] = (
    ("boundary", "edge_grad_ratio"), ("boundary", "edge_peak"), ("boundary", "edge_lap"),
    ("boundary", "halo_in"), ("boundary", "halo_out"), ("boundary", "rim_dev"),
    ("noise", "y_ratio"), ("noise", "cr_ratio"), ("noise", "cb_ratio"), ("noise", "y_in"), ("noise", "y_out"),
    ("sharpness", "blur_in"), ("sharpness", "blur_out"), ("sharpness", "blur_ratio"), ("sharpness", "lap_ratio"),
    ("shadow", "below_vs_side"), ("shadow", "below_vs_ring"), ("shadow", "dark_below_vs_side"),
    ("colour", "dY"), ("colour", "dCr"), ("colour", "dCb"), ("colour", "Y_spread"), ("colour", "chroma_ratio"),
    ("jpeg", "block_in"), ("jpeg", "block_out"), ("jpeg", "block_ratio"), ("jpeg", "bleed_edge"),
    ("jpeg", "bleed_texture"), ("jpeg", "bleed_ratio"),
)
FEATURE_NAMES: tuple[str, ...] = tuple(f"{fam}.{name}" for fam, name in _FEATURES)
FEATURE_FAMILY: tuple[str, ...] = tuple(fam for fam, _ in _FEATURES)

EDGE_TOL = 3.0  # px: half-width of the edge band (COCO polygons miss true edges by about this much)
_IMMERKAER = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
_TRIM_MEAN = 0.51489  # mean of |x| over its lower 75 % for x ~ N(0, 1)
_EPS = 1e-6


@dataclass(frozen=True)
class AuditRecord:
    """One object to judge: its image (array or path), its mask, its label and its composite.

    ``mask`` is box-local at ``offset`` (x, y) in the image, or full-frame with offset (0, 0).
    ``group`` overrides the composite as the unit the folds keep together (e.g. the background
    image, when several composites share one background and so its native objects).
    """

    composite_id: str
    image: np.ndarray | str | Path
    mask: np.ndarray
    label: str  # "pasted" | "native"
    object_id: str = ""
    offset: tuple[int, int] = (0, 0)
    group: str = ""

    @property
    def fold_group(self) -> str:
        return self.group or self.composite_id

    @classmethod
    def from_full_mask(cls, composite_id: str, image: np.ndarray | str | Path, mask: np.ndarray, label: str,
                       object_id: str = "", group: str = "") -> AuditRecord:
        """Crop a full-frame mask to its bounding box (records stay small)."""
        ys, xs = np.nonzero(np.asarray(mask) > 0)
        if xs.size == 0:
            return cls(composite_id, image, np.zeros((0, 0), bool), label, object_id, (0, 0), group)
        x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        return cls(composite_id, image, np.asarray(mask)[y0:y1, x0:x1] > 0, label, object_id, (x0, y0), group)

    @classmethod
    def from_polygons(cls, composite_id: str, image: np.ndarray | str | Path, polygons: Sequence[Sequence[float]],
                      label: str, object_id: str = "", group: str = "") -> AuditRecord:
        """Rasterise COCO flat polygons (image coordinates) into a box-local mask."""
        pts = [np.asarray(p, np.float64).reshape(-1, 2) for p in polygons if len(p) >= 6]
        if not pts:
            return cls(composite_id, image, np.zeros((0, 0), bool), label, object_id, (0, 0), group)
        allp = np.concatenate(pts)
        x0, y0 = max(0, int(math.floor(allp[:, 0].min()))), max(0, int(math.floor(allp[:, 1].min())))
        x1, y1 = int(math.ceil(allp[:, 0].max())) + 1, int(math.ceil(allp[:, 1].max())) + 1
        m = np.zeros((y1 - y0, x1 - x0), np.uint8)
        cv2.fillPoly(m, [np.rint(p - (x0, y0)).astype(np.int32).reshape(-1, 1, 2) for p in pts], 1)
        return cls(composite_id, image, m > 0, label, object_id, (x0, y0), group)

    @property
    def area(self) -> int:
        return int(np.count_nonzero(self.mask))

    @property
    def box(self) -> tuple[int, int, int, int]:
        return self.offset[0], self.offset[1], int(self.mask.shape[1]), int(self.mask.shape[0])


def _mean(a: np.ndarray, sel: np.ndarray) -> float:
    n = np.count_nonzero(sel)
    return float(a[sel].mean()) if n else math.nan


def _log_ratio(a: float, b: float) -> float:
    if not (math.isfinite(a) and math.isfinite(b)):
        return math.nan
    return math.log((a + 0.05) / (b + 0.05))


def _noise(r: np.ndarray, flat: np.ndarray, sel: np.ndarray) -> float:
    s = sel & flat
    if np.count_nonzero(s) < 32:
        return math.nan
    a = np.abs(r[s])
    a = a[a <= np.quantile(a, 0.75)]
    return float(a.mean()) / (_TRIM_MEAN * 6.0)


def _blur(g1: np.ndarray, g2: np.ndarray, sel: np.ndarray) -> float:
    if np.count_nonzero(sel) < 32:
        return math.nan
    thr = max(float(np.quantile(g1[sel], 0.9)), 2.0)
    strong = sel & (g1 >= thr)
    if np.count_nonzero(strong) < 8:
        return math.nan
    r = min(max(float(np.median(g2[strong] / g1[strong])), 1e-3), 0.995)
    return r / math.sqrt(1.0 - r * r)


def _blockiness(y: np.ndarray, sel: np.ndarray, ox: int, oy: int) -> float:
    """Mean |first difference| across 8-px boundaries of the full image's grid over that inside blocks."""
    on, off = [], []
    dx = np.abs(np.diff(y, axis=1))
    sx = sel[:, 1:] & sel[:, :-1]
    bx = ((np.arange(dx.shape[1]) + ox + 1) % 8 == 0)[None, :]
    on.append(dx[sx & bx])
    off.append(dx[sx & ~bx])
    dy = np.abs(np.diff(y, axis=0))
    sy = sel[1:, :] & sel[:-1, :]
    by = ((np.arange(dy.shape[0]) + oy + 1) % 8 == 0)[:, None]
    on.append(dy[sy & by])
    off.append(dy[sy & ~by])
    a, b = np.concatenate(on), np.concatenate(off)
    if a.size < 16 or b.size < 16:
        return math.nan
    return float(a.mean()) / (float(b.mean()) + 0.1)


def _off_luma_share(gc: np.ndarray, g: np.ndarray, sel: np.ndarray) -> float:
    """Share of the chroma-gradient energy in ``sel`` at pixels whose luma gradient is below its median."""
    if np.count_nonzero(sel) < 16:
        return math.nan
    c, lg = gc[sel], g[sel]
    tot = float(c.sum())
    if tot <= 1e-6:
        return math.nan
    return float(c[lg < np.median(lg)].sum()) / tot


def _local_dev(c: np.ndarray, target: np.ndarray, ref: np.ndarray, r: int) -> float:
    """Mean colour distance of ``target`` pixels from the local mean of ``ref`` pixels (radius r)."""
    w = cv2.boxFilter(ref.astype(np.float32), -1, (2 * r + 1, 2 * r + 1), normalize=True)
    s = cv2.boxFilter(c * ref[..., None].astype(np.float32), -1, (2 * r + 1, 2 * r + 1), normalize=True)
    ok = target & (w > 1e-3)
    if np.count_nonzero(ok) < 8:
        return math.nan
    mean = s[ok] / w[ok][:, None]
    return float(np.linalg.norm(c[ok] - mean, axis=1).mean())


def object_features(image: np.ndarray, mask: np.ndarray, offset: tuple[int, int] = (0, 0)) -> np.ndarray | None:
    """The feature vector (``FEATURE_NAMES`` order) of one object; None if it is too small to judge.

    Kept whole: each family reads the same window, bands and channel planes, and splitting it would
    only pass a dozen arrays around.
    """
    H, W = image.shape[:2]
    mh, mw = mask.shape
    ox, oy = int(offset[0]), int(offset[1])
    area = int(np.count_nonzero(mask))
    if area < MIN_AREA:
        return None
    m = int(np.clip(0.5 * max(mw, mh), 8, 64))
    x0, y0, x1, y1 = max(0, ox - m), max(0, oy - m), min(W, ox + mw + m), min(H, oy + mh + m)
    win = image[y0:y1, x0:x1]
    obj = np.zeros(win.shape[:2], np.uint8)
    sx0, sy0 = max(0, x0 - ox), max(0, y0 - oy)
    sx1, sy1 = min(mw, x1 - ox), min(mh, y1 - oy)
    obj[sy0 + oy - y0:sy1 + oy - y0, sx0 + ox - x0:sx1 + ox - x0] = mask[sy0:sy1, sx0:sx1] > 0
    if np.count_nonzero(obj) < MIN_AREA:
        return None
    d_in = cv2.distanceTransform(obj, cv2.DIST_L2, 3)
    d_out = cv2.distanceTransform(1 - obj, cv2.DIST_L2, 3)
    R = float(np.clip(0.15 * math.sqrt(area), 6, 24))
    t = EDGE_TOL
    inside, outside = obj > 0, obj == 0
    edge_in, edge_out = inside & (d_in <= t), outside & (d_out <= t)
    edge = edge_in | edge_out
    near_in, near_out = inside & (d_in > t) & (d_in <= 2 * t), outside & (d_out > t) & (d_out <= 2 * t)
    band_in = inside & (d_in > 2 * t) & (d_in <= 2 * t + R)
    band_out = outside & (d_out > 2 * t) & (d_out <= 2 * t + R)

    ycc = cv2.cvtColor(np.ascontiguousarray(win), cv2.COLOR_RGB2YCrCb).astype(np.float32)
    y = ycc[..., 0]
    gx, gy = cv2.Sobel(y, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(y, cv2.CV_32F, 0, 1, ksize=3)
    g = np.sqrt(gx * gx + gy * gy) * np.float32(1 / 8)
    lap = np.abs(cv2.Laplacian(y, cv2.CV_32F))
    f = []

    # boundary
    g_tex = 0.5 * (_mean(g, band_in) + _mean(g, band_out))
    g_edge = _mean(g, edge)
    f.append(_log_ratio(g_edge, g_tex))
    f.append(_log_ratio(float(np.quantile(g[edge], 0.95)) if edge.any() else math.nan, g_edge))
    f.append(_log_ratio(_mean(lap, edge), g_edge))
    y_near_in, y_near_out = _mean(y, near_in), _mean(y, near_out)
    contrast = abs(y_near_in - y_near_out) + 5.0
    f.append((_mean(y, edge_in) - y_near_in) / contrast)
    f.append((_mean(y, edge_out) - y_near_out) / contrast)
    f.append(_log_ratio(_local_dev(ycc, edge_in, near_in, 4), _local_dev(ycc, near_in, band_in, 4)))

    # noise
    flat_g = cv2.GaussianBlur(y, (0, 0), 2.0)
    fg = np.abs(cv2.Sobel(flat_g, cv2.CV_32F, 1, 0)) + np.abs(cv2.Sobel(flat_g, cv2.CV_32F, 0, 1))
    nz = []
    for sel in (band_in, band_out):
        flat = fg <= np.quantile(fg[sel], 0.5) if np.count_nonzero(sel) >= 32 else np.zeros_like(sel)
        nz.append([_noise(cv2.filter2D(ycc[..., c], cv2.CV_32F, _IMMERKAER, borderType=cv2.BORDER_REFLECT),
                          flat, sel) for c in range(3)])
    f.extend(_log_ratio(nz[0][c], nz[1][c]) for c in range(3))
    f.extend([math.log(nz[0][0] + 0.05) if math.isfinite(nz[0][0]) else math.nan,
              math.log(nz[1][0] + 0.05) if math.isfinite(nz[1][0]) else math.nan])

    # sharpness
    yb = cv2.GaussianBlur(y, (0, 0), 1.0)
    g2 = np.sqrt(cv2.Sobel(yb, cv2.CV_32F, 1, 0) ** 2 + cv2.Sobel(yb, cv2.CV_32F, 0, 1) ** 2) * np.float32(1 / 8)
    b_in, b_out = _blur(g, g2, band_in | near_in), _blur(g, g2, band_out | near_out)
    f.extend([b_in, b_out, _log_ratio(b_in, b_out),
              _log_ratio(_mean(lap, band_in) / (_mean(g, band_in) + 0.5), _mean(lap, band_out) / (_mean(g, band_out) + 0.5))])

    # shadow: the ground just below the base vs beside it and vs the ring higher up
    rows = np.nonzero(obj.any(axis=1))[0]
    cols = np.nonzero(obj.any(axis=0))[0]
    base, top = int(rows[-1]) + 1, int(rows[0])
    oh, ow = base - top, int(cols[-1] - cols[0] + 1)
    rr = np.arange(obj.shape[0])[:, None]
    cc = np.arange(obj.shape[1])[None, :]
    below_rows = (rr >= base - 0.1 * oh) & (rr < base + max(2.0, 0.15 * oh))
    cx = 0.5 * (cols[0] + cols[-1])
    below = outside & (d_out > t) & below_rows & (np.abs(cc - cx) <= 0.6 * ow)
    side = outside & (d_out > t) & below_rows & (np.abs(cc - cx) > 0.6 * ow) & (np.abs(cc - cx) <= 1.2 * ow)
    upper = band_out & (rr < base - 0.3 * oh)
    y_below = _mean(y, below)
    f.append(_log_ratio(y_below, _mean(y, side)))
    f.append(_log_ratio(y_below, _mean(y, upper)))
    dark_b = float(np.quantile(y[below], 0.2)) if np.count_nonzero(below) >= 8 else math.nan
    dark_s = float(np.quantile(y[side], 0.2)) if np.count_nonzero(side) >= 8 else math.nan
    f.append(_log_ratio(dark_b, dark_s))

    # colour
    for c in range(3):
        f.append(_mean(ycc[..., c], band_in) - _mean(ycc[..., c], band_out))
    sd_in = float(y[band_in].std()) if np.count_nonzero(band_in) > 8 else math.nan
    sd_out = float(y[band_out].std()) if np.count_nonzero(band_out) > 8 else math.nan
    f.append(_log_ratio(sd_in, sd_out))
    chroma = np.sqrt((ycc[..., 1] - 128.0) ** 2 + (ycc[..., 2] - 128.0) ** 2)
    f.append(_log_ratio(_mean(chroma, band_in), _mean(chroma, band_out)))

    # jpeg
    blk_in, blk_out = _blockiness(y, band_in, x0, y0), _blockiness(y, band_out, x0, y0)
    f.extend([blk_in, blk_out, _log_ratio(blk_in, blk_out)])
    gc = magnitude(cv2.Sobel(ycc[..., 1], cv2.CV_32F, 1, 0), cv2.Sobel(ycc[..., 1], cv2.CV_32F, 0, 1)) + \
        magnitude(cv2.Sobel(ycc[..., 2], cv2.CV_32F, 1, 0), cv2.Sobel(ycc[..., 2], cv2.CV_32F, 0, 1))
    bleed_e, bleed_t = _off_luma_share(gc, g, edge), _off_luma_share(gc, g, band_in | band_out)
    f.extend([bleed_e, bleed_t, bleed_e - bleed_t if math.isfinite(bleed_e) and math.isfinite(bleed_t) else math.nan])
    out = np.asarray(f, np.float64)
    assert out.shape == (len(FEATURE_NAMES),)
    return out


def _decode(path: str | Path) -> np.ndarray:
    data = np.fromfile(str(path), np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if img is None:
        raise ValueError(f"{path}: undecodable image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def extract_features(records: Sequence[AuditRecord]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Features of every usable record: (X n×F, indices of the records used, problems).

    Records are visited grouped by image so a path is decoded once; an undecodable image or a mask
    that does not fit its image becomes a problem string naming the record, not an exception.
    """
    order = sorted(range(len(records)), key=lambda i: (records[i].composite_id, str(_key(records[i].image)), i))
    rows: list[np.ndarray] = []
    used: list[int] = []
    problems: list[str] = []
    cache_key: object = None
    cache_img: np.ndarray | None = None
    for i in order:
        r = records[i]
        key = _key(r.image)
        try:
            if isinstance(r.image, np.ndarray):
                img = r.image
            elif key == cache_key and cache_img is not None:
                img = cache_img
            else:
                img = _decode(r.image)
                cache_key, cache_img = key, img
        except (OSError, ValueError) as exc:
            problems.append(f"{r.composite_id}/{r.object_id or i}: {exc}")
            continue
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            problems.append(f"{r.composite_id}/{r.object_id or i}: image is not RGB uint8 ({img.dtype} {img.shape})")
            continue
        x, y, w, h = r.box
        if x >= img.shape[1] or y >= img.shape[0] or w == 0 or h == 0:
            problems.append(f"{r.composite_id}/{r.object_id or i}: mask {r.box} outside the {img.shape[1]}x{img.shape[0]} image")
            continue
        v = object_features(img, r.mask, r.offset)
        if v is None:
            continue
        rows.append(v)
        used.append(i)
    X = np.vstack(rows) if rows else np.zeros((0, len(FEATURE_NAMES)))
    return X, np.asarray(used, dtype=np.int64), problems


def _key(image: np.ndarray | str | Path) -> object:
    return ("array", id(image)) if isinstance(image, np.ndarray) else str(image)
