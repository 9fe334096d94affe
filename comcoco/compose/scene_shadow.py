"""The scene's own shadow: learned from its annotated objects, drawn under a pasted one.

``comcoco.compose.shadow`` draws a parametric shadow (a contact band and a projected silhouette)
whose direction, strength and length it estimates from the background. A scene's real shadows have
a shape of their own — how far they reach beside and below an object, how dark their core is, how
soft their edge — that three numbers do not carry, and a pasted object whose shadow differs from its
neighbours' is found by comparing the two. Where the background has annotated objects standing on
visible ground, this module measures the darkening of the ground around each one's base in the
object's own frame (u = (x − x_foot)/width, v = (y − y_base)/height), takes the median over the
objects (what one object's surroundings show by accident, the others do not) and draws that
template, scaled to the pasted object's width and height, under it.

* ``learn_template(background, objects)`` → ``ShadowTemplate`` or None (fewer than ``MIN_OBJECTS``
  usable objects, or their median shows no darkening worth drawing: then the parametric shadow
  decides). Cells under an object are unknown in every measurement; they are filled from their
  neighbours (normalised convolution) because a pasted object's silhouette differs from the natives'.
* ``template_shadow(alpha, box, frame_size, template, background)`` → a ``shadow.Shadow`` with kind
  ``"scene"``: darkening only, region-local, exactly 0 wherever it would not change a uint8 pixel
  (tested on ``background``), clipped at the frame.

Numpy/OpenCV only, deterministic, never raises on data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from comcoco.compose.cutout import MASK_THRESHOLD
from comcoco.compose.shadow import MAX_STRENGTH, NativeObject, Shadow, median_of_known, shade

U_RANGE = (-1.5, 1.5)  # template extent across, in object widths from the foot's centre
V_RANGE = (-0.3, 0.9)  # ... and along the image's vertical, in object heights from the base row
NU, NV = 30, 24  # template cells
MIN_OBJECTS = 2  # objects a template needs
MIN_DARKENING = 0.03  # a median darkening below this anywhere is no shadow worth drawing
_MIN_FREE = 0.5  # a cell counts when at least this share of its pixels is free ground
_REF_U = 1.15  # cells at |u| ≥ this are the reference ground (beyond any object's own shadow)
_MIN_ROW_REF = 3  # reference cells a row needs to be its own reference


@dataclass(frozen=True)
class ShadowTemplate:
    """Median darkening (0..MAX_STRENGTH) of the ground around the scene's objects, NV×NU cells over
    ``U_RANGE`` × ``V_RANGE`` in object widths × heights from the foot."""

    darkening: np.ndarray  # NV×NU float32
    n_objects: int


def _luma(rgb: np.ndarray) -> np.ndarray:
    """0.299 R + 0.587 G + 0.114 B in float32, summed left to right (channel by channel: no float copy
    of the whole frame, the same bits)."""
    out = np.multiply(rgb[..., 0], np.float32(0.299), dtype=np.float32)
    out += np.multiply(rgb[..., 1], np.float32(0.587), dtype=np.float32)
    out += np.multiply(rgb[..., 2], np.float32(0.114), dtype=np.float32)
    return out


def _foot(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    """(x of the foot's centre, base row, width, height) of a box-local binary mask, in its pixels."""
    rows = np.nonzero(mask.any(axis=1))[0]
    cols = np.nonzero(mask.any(axis=0))[0]
    if rows.size == 0:
        return None
    top, base = int(rows[0]), int(rows[-1]) + 1
    oh, ow = float(base - top), float(cols[-1] - cols[0] + 1)
    foot = mask[max(top, base - max(1, int(0.1 * oh))):base]
    xc = float(np.nonzero(foot.any(axis=0))[0].mean()) + 0.5
    return xc, float(base), ow, oh


def _cell_grid(xc: float, yb: float, ow: float, oh: float) -> tuple[np.ndarray, np.ndarray]:
    """Frame coordinates of the template's cell edges (x edges NU+1, y edges NV+1)."""
    xs = xc + ow * np.linspace(U_RANGE[0], U_RANGE[1], NU + 1)
    ys = yb + oh * np.linspace(V_RANGE[0], V_RANGE[1], NV + 1)
    return xs, ys


def _spans(edges: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel spans [start, stop) of the cells between rounded ``edges``: at least one pixel each, clipped
    to [0, size) (a cell can then be empty)."""
    r = [round(float(v)) for v in edges]
    return (np.array([max(0, a) for a in r[:-1]], np.intp),
            np.array([min(size, max(b, a + 1)) for a, b in zip(r[:-1], r[1:], strict=True)], np.intp))


def _cell_means(lum: np.ndarray, occupied: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Mean luma of each cell's free ground (NaN where less than ``_MIN_FREE`` of it is free).

    All cells' pixels are gathered at once, each cell's in row-major order; a cell's mean is numpy's
    own float32 sum of its free pixels over their count, i.e. bit for bit ``pixels.mean()`` of the
    cell's slice (a loop over the 720 cells cost ~8 ms per object). Cells with the same count are
    summed together as the rows of one matrix (a row's sum is the same pairwise sum).
    """
    H, W = lum.shape
    r0, r1 = _spans(ys, H)
    c0, c1 = _spans(xs, W)
    h, w = np.maximum(r1 - r0, 0), np.maximum(c1 - c0, 0)
    ci, cj = np.nonzero((h[:, None] > 0) & (w[None, :] > 0))
    hh, ww = h[ci], w[cj]
    run_cell = np.repeat(np.arange(ci.size), hh)  # one run per (cell, row): ww pixels of that row
    run_row = r0[ci][run_cell] + np.arange(run_cell.size) - np.repeat(np.cumsum(hh) - hh, hh)
    run_len = ww[run_cell]
    first = run_row * W + c0[cj][run_cell] - (np.cumsum(run_len) - run_len)
    flat = np.repeat(first, run_len) + np.arange(int(run_len.sum()), dtype=np.intp)
    free = occupied.reshape(-1)[flat] == 0
    vals = lum.reshape(-1)[flat][free]
    size = hh * ww
    seen = np.concatenate([[0], np.cumsum(free)])
    cells_end = np.cumsum(size)
    n_free = seen[cells_end] - seen[cells_end - size]
    ends = np.cumsum(n_free)
    out = np.full((NV, NU), np.nan, np.float32)
    keep = np.nonzero(n_free >= np.maximum(1.0, _MIN_FREE * size))[0]
    for n in np.unique(n_free[keep]):  # cells of one count are summed as the rows of one matrix
        ks = keep[n_free[keep] == n]
        sums = np.add.reduce(vals[(ends[ks] - n)[:, None] + np.arange(n)], axis=1)
        out[ci[ks], cj[ks]] = sums / np.intp(n)  # float32 sum / count in float64, as ndarray.mean does
    return out


def _object_darkening(lum: np.ndarray, occupied: np.ndarray, o: NativeObject) -> np.ndarray | None:
    """One object's darkening per cell (NaN where unknown), against the free ground beside it."""
    H, W = lum.shape
    pts = np.concatenate(o.polygons)
    x0, y0 = max(0, int(np.floor(pts[:, 0].min()))), max(0, int(np.floor(pts[:, 1].min())))
    x1, y1 = min(W, int(np.ceil(pts[:, 0].max())) + 1), min(H, int(np.ceil(pts[:, 1].max())) + 1)
    if x1 - x0 < 4 or y1 - y0 < 4:
        return None
    own = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.fillPoly(own, [np.rint(p - (x0, y0)).astype(np.int32).reshape(-1, 1, 2) for p in o.polygons], 1)
    if np.count_nonzero(own) < 50:
        return None
    ft = _foot(own > 0)
    if ft is None:
        return None
    xc, yb, ow, oh = ft[0] + x0, ft[1] + y0, ft[2], ft[3]
    if yb >= H - 2 or ow * oh > 0.5 * H * W:
        return None  # base outside the frame, or the object is the scene
    out = _cell_means(lum, occupied, *_cell_grid(xc, yb, ow, oh))
    u = 0.5 * (np.linspace(U_RANGE[0], U_RANGE[1], NU + 1)[:-1] + np.linspace(U_RANGE[0], U_RANGE[1], NU + 1)[1:])
    v = 0.5 * (np.linspace(V_RANGE[0], V_RANGE[1], NV + 1)[:-1] + np.linspace(V_RANGE[0], V_RANGE[1], NV + 1)[1:])
    ring = (np.abs(u)[None, :] >= _REF_U) & (v[:, None] >= 0.0)
    ref_vals = out[ring & np.isfinite(out)]
    if ref_vals.size < 6:
        return None
    ref = float(np.median(ref_vals))
    if ref < 8.0:
        return None  # too dark to see a shadow
    # Each row against the reference ground of its own row where it has some: the ground's light
    # changes with depth (a receding ground, vignetting), and one reference for rows from above the
    # base to far below it misreads that change as shadow or its absence.
    side = np.abs(u)[None, :] >= _REF_U
    rows = np.where(side & np.isfinite(out), out, np.nan)
    n_row = np.count_nonzero(np.isfinite(rows), axis=1)
    row_ref = np.full(NV, ref, np.float32)
    ok = n_row >= _MIN_ROW_REF
    if ok.any():
        row_ref[ok] = median_of_known(rows[ok].T).astype(np.float32)
    row_ref = np.where(row_ref >= 8.0, row_ref, np.float32(ref))
    return (1.0 - out / row_ref[:, None]).astype(np.float32)


def _fill(t: np.ndarray) -> np.ndarray:
    """NaN cells filled from their neighbours: normalised Gaussian convolution, widened until none is left."""
    known = np.isfinite(t)
    if known.all():
        return t
    val = np.where(known, t, 0.0).astype(np.float32)
    w = known.astype(np.float32)
    out = t.copy()
    for sigma in (1.0, 2.0, 4.0, 8.0):
        num = cv2.GaussianBlur(val, (0, 0), sigma, borderType=cv2.BORDER_REPLICATE)
        den = cv2.GaussianBlur(w, (0, 0), sigma, borderType=cv2.BORDER_REPLICATE)
        todo = ~np.isfinite(out) & (den > 1e-3)
        out[todo] = num[todo] / den[todo]
        if np.isfinite(out).all():
            break
    out[~np.isfinite(out)] = 0.0
    return out


def _attached(t: np.ndarray) -> np.ndarray:
    """Only the darkening attached to the foot: a shadow touches its object, whatever else is dark
    around some of the objects (another object's shadow, a dark patch of ground) is not drawn."""
    u = np.linspace(U_RANGE[0], U_RANGE[1], NU + 1)
    v = np.linspace(V_RANGE[0], V_RANGE[1], NV + 1)
    uc, vc = 0.5 * (u[:-1] + u[1:]), 0.5 * (v[:-1] + v[1:])
    foot = (np.abs(uc)[None, :] <= 0.5) & (np.abs(vc)[:, None] <= 0.1)
    core = float(t[foot].max()) if foot.any() else 0.0
    _, labels = cv2.connectedComponents((t >= max(MIN_DARKENING, 0.3 * core)).astype(np.uint8), connectivity=4)
    keep = np.isin(labels, [k for k in np.unique(labels[foot & (labels > 0)])])
    keep = cv2.dilate(keep.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0  # the blob's soft rim
    return np.where(keep, t, 0.0).astype(np.float32)


def learn_template(background: np.ndarray, objects: Sequence[NativeObject],
                   occupied: np.ndarray | None = None) -> ShadowTemplate | None:
    """The median darkening around the background's annotated objects; None when it shows no shadow."""
    bg = np.asarray(background)
    if bg.ndim != 3 or bg.shape[2] != 3 or not objects:
        return None
    H, W = bg.shape[:2]
    if occupied is None:
        occupied = np.zeros((H, W), np.uint8)
        for o in objects:
            cv2.fillPoly(occupied, [np.rint(p).astype(np.int32).reshape(-1, 1, 2) for p in o.polygons], 1)
    lum = _luma(bg)
    maps = [m for m in (_object_darkening(lum, occupied, o) for o in objects) if m is not None]
    if len(maps) < MIN_OBJECTS:
        return None
    stack = np.stack(maps)
    known = np.isfinite(stack).any(axis=0)  # a cell no object could measure stays NaN (no warning:
    med = np.full(stack.shape[1:], np.nan, np.float32)  # catch_warnings is not thread-safe)
    if known.any():
        med[known] = median_of_known(stack[:, known])
    t = _attached(np.clip(_fill(med), 0.0, MAX_STRENGTH).astype(np.float32))
    if float(t.max()) < MIN_DARKENING:
        return None
    # A median of shadows that do not line up cell for cell is weaker in its core than any of them:
    # the core is set back to the objects' median core darkness.
    cores = [c for c in (_core(m) for m in maps) if c is not None]
    core = _core(t)
    if cores and core is not None and core > 0:
        t = np.clip(t * np.float32(np.clip(float(np.median(cores)) / core, 0.5, 2.0)), 0.0, MAX_STRENGTH)
    return ShadowTemplate(darkening=t.astype(np.float32), n_objects=len(maps))


def _core(t: np.ndarray) -> float | None:
    """Darkest cell at the foot (|u| ≤ 0.6, 0 ≤ v ≤ 0.3): how dark a shadow's core is."""
    u = np.linspace(U_RANGE[0], U_RANGE[1], NU + 1)
    v = np.linspace(V_RANGE[0], V_RANGE[1], NV + 1)
    uc, vc = 0.5 * (u[:-1] + u[1:]), 0.5 * (v[:-1] + v[1:])
    sel = t[(vc[:, None] >= 0.0) & (vc[:, None] <= 0.3) & (np.abs(uc)[None, :] <= 0.6)]
    sel = sel[np.isfinite(sel)]
    return float(sel.max()) if sel.size else None


def template_shadow(alpha: np.ndarray, box: Sequence[int], frame_size: tuple[int, int], template: ShadowTemplate,
                    background: np.ndarray | None = None) -> Shadow:
    """The template scaled to the pasted object's foot, width and height (see the module docstring)."""
    fw, fh = int(frame_size[0]), int(frame_size[1])
    bx, by = int(box[0]), int(box[1])
    mask = np.asarray(alpha, dtype=np.float32) >= MASK_THRESHOLD
    empty = np.zeros((0, 0), np.float32)
    ft = _foot(mask)
    if ft is None:
        return Shadow(empty, (bx, by, 0, 0), "none", "empty mask")
    xc, yb, ow, oh = ft[0] + bx, ft[1] + by, ft[2], ft[3]
    xs, ys = _cell_grid(xc, yb, ow, oh)
    x0, x1 = max(0, math.floor(xs[0])), min(fw, math.ceil(xs[-1]))
    y0, y1 = max(0, math.floor(ys[0])), min(fh, math.ceil(ys[-1]))
    if x1 <= x0 or y1 <= y0:
        return Shadow(empty, (bx, by, 0, 0), "none", "shadow lies outside the frame")
    # pixel centres in template cell coordinates (cell centres at integers), bilinear, zero outside
    gx = ((np.arange(x0, x1, dtype=np.float32) + 0.5 - xs[0]) / ((xs[-1] - xs[0]) / NU) - 0.5).astype(np.float32)
    gy = ((np.arange(y0, y1, dtype=np.float32) + 0.5 - ys[0]) / ((ys[-1] - ys[0]) / NV) - 0.5).astype(np.float32)
    mx, my = np.meshgrid(gx, gy)
    m = cv2.remap(template.darkening, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
    m = np.clip(m, 0.0, MAX_STRENGTH).astype(np.float32)
    m[m < np.float32(0.5 / 255.0)] = 0.0
    reason = "clipped at the frame border" if (xs[0] < 0 or xs[-1] > fw or ys[-1] > fh) else ""
    if background is not None:  # tested where m > 0 only: elsewhere shading is the identity
        iy, ix = np.nonzero(m)
        px = background[y0:y1, x0:x1][iy, ix][:, None]
        same = np.all(shade(px, m[iy, ix][:, None]) == px, axis=-1)[:, 0]
        m[iy[same], ix[same]] = 0.0
    if not m.any():
        return Shadow(empty, (bx, by, 0, 0), "none", "shadow too faint to change a pixel")
    return Shadow(m, (x0, y0, x1 - x0, y1 - y0), "scene", reason)
