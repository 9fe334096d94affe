"""Geometric-prior placement in GracoNet's (s, rx, ry) parameterisation: the default placer.

A placement is three numbers in [0, 1] (GracoNet, ECCV 2022): ``s`` is the object's size as a fraction
of the background along its limiting side, ``rx``/``ry`` are the top-left corner as a fraction of the
*free* range, so every placement stays inside the frame by construction and keeps the object's aspect.
Recording (s, rx, ry) makes a reviewer's correction just new parameters or a new box.

Without a trained GracoNet the parameters come from priors taken from the object's source image:
it keeps its apparent size relative to the scene and its relative ground contact (bottom-edge height),
both jittered; ``rx`` is uniform. ``k`` candidates are drawn in a fixed order from
``rng_for(seed, "placement", key)``, hard constraints reject some (covering a box already pasted into
the composite or a pixel of another target's ``Footprint``, hiding most of a referred background
object, burying any background object), and the
valid candidate with the best plausibility score wins. The score and its terms travel with the result.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from comcoco.errors import ComcocoError
from comcoco.ids import rng_for
from comcoco.records import Placement

Box = tuple[float, float, float, float]

SCORE_TERMS: tuple[str, ...] = ("scale", "overlap", "support", "truncation", "avoid")


class PlacementError(ComcocoError):
    """No valid placement exists (the object cannot fit, or every candidate broke a hard constraint)."""


@dataclass(frozen=True)
class SceneObject:
    """An annotated object of the background; ``referred`` marks one that has expressions of its own."""

    category_id: int
    box: Box  # x, y, w, h in background pixels
    referred: bool = False


@dataclass(frozen=True, eq=False)
class Footprint:
    """Pixels a placed box may not touch, as a summed-area table: "does this box touch any?" is four
    lookups, so every candidate is tested against the pixels themselves at the cost of a box test."""

    table: np.ndarray  # (H + 1, W + 1) int32: table[y, x] = taken pixels above and left of (x, y)

    @classmethod
    def of(cls, taken: np.ndarray) -> Footprint:
        """The footprint of an H×W boolean mask (OpenCV's integral image: 0.07 ms for 640×480, where
        two numpy cumulative sums took 5 ms, once per target)."""
        if taken.ndim != 2:
            raise ValueError(f"a footprint is an H×W mask, got shape {taken.shape}")
        return cls(cv2.integral(np.ascontiguousarray(taken, dtype=bool).view(np.uint8)))

    @property
    def size(self) -> tuple[int, int]:
        """(w, h) of the mask."""
        return self.table.shape[1] - 1, self.table.shape[0] - 1

    def taken(self, x0: Any, y0: Any, x1: Any, y1: Any) -> Any:
        """Taken pixels in ``[x0, x1) × [y0, y1)`` (ints inside the frame, or arrays of them: a whole
        grid of windows at once)."""
        t = self.table
        return t[y1, x1] - t[y0, x1] - t[y1, x0] + t[y0, x0]

    def touches(self, box: Sequence[float]) -> bool:
        """True when any taken pixel lies in the pixels the x, y, w, h box covers (partly or wholly)."""
        w, h = self.size
        x0, y0 = max(math.floor(float(box[0])), 0), max(math.floor(float(box[1])), 0)
        x1 = min(math.ceil(float(box[0]) + float(box[2])), w)
        y1 = min(math.ceil(float(box[1]) + float(box[3])), h)
        return x1 > x0 and y1 > y0 and bool(self.taken(x0, y0, x1, y1) > 0)


@dataclass(frozen=True)
class PlacementRequest:
    """Everything the sampler needs to know about one object and one background."""

    fg_box: Box  # object box in its source image (x, y, w, h)
    fg_image_size: tuple[int, int]  # source image (w, h)
    fg_category_id: int
    bg_size: tuple[int, int]  # background (w, h)
    bg_objects: tuple[SceneObject, ...]  # annotated objects of the background
    avoid: tuple[Box, ...] = ()  # boxes already pasted into this composite; never overlapped
    # pixels already taken in this composite (objects with their shadows, grown by a margin); never
    # overlapped. Finer than ``avoid``: a long shadow blocks its pixels, not the whole box it spans.
    footprint: Footprint | None = None
    # at most this many background pixels per source pixel (None: any): enlarging an object blurs it
    # beyond what the scene's camera would, so the robust profile only shrinks
    max_scale: float | None = None


@dataclass(frozen=True)
class SamplerConfig:
    """Priors, hard limits and score weights of the default sampler (documented in docs/placement.md)."""

    scale_jitter: float = 0.15  # sigma of the log-normal jitter on the object's linear size
    bottom_jitter: float = 0.05  # sigma of the bottom-edge jitter, as a fraction of background height
    relaxed_jitter_factor: float = 2.0  # extension rounds widen the size jitter by this factor
    relaxed_bottom_jitter: float = 0.25  # ... and let the ground line move this much (sigma)
    extend_factor: int = 4  # at most extend_factor * k candidates before giving up
    min_side_px: float = 4.0  # the placed object's shorter side is kept at least this long when possible
    max_cover_referred: float = 0.5  # a referred background object may lose at most this fraction
    max_cover_other: float = 0.8  # any other background object may lose at most this fraction
    scale_tolerance: float = 0.5  # sigma (natural log of size ratio) of the scale term
    support_tolerance: float = 0.1  # sigma (fraction of background height) of the support term
    w_scale: float = 0.35
    w_overlap: float = 0.30
    w_support: float = 0.25
    w_truncation: float = 0.10

    def __post_init__(self) -> None:
        if self.extend_factor < 1:
            raise ValueError("extend_factor must be >= 1")
        weights = (self.w_scale, self.w_overlap, self.w_support, self.w_truncation)
        if min(weights) < 0 or sum(weights) <= 0:
            raise ValueError("score weights must be non-negative and not all zero")
        if not 0 <= self.max_cover_referred <= 1 or not 0 <= self.max_cover_other <= 1:
            raise ValueError("cover limits must lie in [0, 1]")


DEFAULT_CONFIG = SamplerConfig()
# Sizes (fractions of the prior's linear size) a scan tries, largest first, when every drawn candidate
# of a request with a footprint was rejected.
SCAN_SIZES: tuple[float, ...] = (1.0, 0.85, 0.7)


# --- GracoNet geometry -------------------------------------------------------------------------


def _height_limited(fg_w: float, fg_h: float, bg_w: float, bg_h: float) -> bool:
    """GracoNet's branch: the object is relatively taller than the scene, so s scales its height."""
    return bg_w / bg_h > fg_w / fg_h


def _check_sizes(fg_w: float, fg_h: float, bg_w: float, bg_h: float) -> None:
    for name, v in (("fg_w", fg_w), ("fg_h", fg_h), ("bg_w", bg_w), ("bg_h", bg_h)):
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be a positive finite number, got {v!r}")


def placement_box(
    s: float, rx: float, ry: float, fg_w: float, fg_h: float, bg_w: int, bg_h: int
) -> tuple[int, int, int, int]:
    """The integer box (x0, y0, w, h) of GracoNet's full-resolution composite for (s, rx, ry).

    Follows ``gen_composite_image``: size from s along the limiting side with the aspect kept, corner
    ``round(free * r)``. Unlike the original, w and h are also capped at the background and the corner
    is pulled back by the rounding pixel, so the box is always inside the frame and at least 1x1.
    """
    _check_sizes(fg_w, fg_h, bg_w, bg_h)
    for name, v in (("s", s), ("rx", rx), ("ry", ry)):
        if not math.isfinite(v):
            raise ValueError(f"{name} must be finite, got {v!r}")
    if s <= 0:
        raise ValueError(f"s must be positive, got {s!r}")
    if _height_limited(fg_w, fg_h, bg_w, bg_h):
        new_h = bg_h * s
        new_w = new_h * fg_w / fg_h
    else:
        new_w = bg_w * s
        new_h = new_w * fg_h / fg_w
    x0 = round((bg_w - new_w) * rx)
    y0 = round((bg_h - new_h) * ry)
    w = min(max(round(new_w), 1), int(bg_w))
    h = min(max(round(new_h), 1), int(bg_h))
    x0 = min(max(x0, 0), int(bg_w) - w)
    y0 = min(max(y0, 0), int(bg_h) - h)
    return int(x0), int(y0), int(w), int(h)


def params_from_box(
    box: Sequence[float], fg_w: float, fg_h: float, bg_w: float, bg_h: float
) -> tuple[float, float, float]:
    """(s, rx, ry) of a box in the background: GracoNet's ``get_trans_label``.

    Where the box spans the whole background along an axis the corner fraction is undefined (any value
    gives the same corner); 0.5 is returned there. Values are clipped to [0, 1], so a box that sticks
    out of the frame maps to the nearest in-frame placement.
    """
    _check_sizes(fg_w, fg_h, bg_w, bg_h)
    x, y, w, h = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        raise ValueError(f"box must be finite with positive size, got {tuple(box)!r}")
    s = h / bg_h if _height_limited(fg_w, fg_h, bg_w, bg_h) else w / bg_w
    rx = x / (bg_w - w) if bg_w - w > 1e-9 else 0.5
    ry = y / (bg_h - h) if bg_h - h > 1e-9 else 0.5
    clip = lambda v: float(min(max(v, 0.0), 1.0))  # noqa: E731
    return clip(s), clip(rx), clip(ry)


# --- box arithmetic ----------------------------------------------------------------------------


def _intersection(a: Sequence[float], b: Sequence[float]) -> float:
    ix = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    iy = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return max(ix, 0.0) * max(iy, 0.0)


def collides(box: Sequence[float], avoid: Sequence[Sequence[float]], footprint: Footprint | None) -> bool:
    """Whether an x, y, w, h box shares area with an avoided box (touching edges do not count) or
    covers a footprint pixel: the hard rule that keeps pasted objects apart."""
    return any(_intersection(box, a) > 0 for a in avoid) or (footprint is not None and footprint.touches(box))


def _gauss(x: float, sigma: float) -> float:
    return float(math.exp(-0.5 * (x / sigma) ** 2)) if sigma > 0 else float(x == 0)


def _valid_box(b: Box) -> bool:
    return all(math.isfinite(float(v)) for v in b) and b[2] > 0 and b[3] > 0


def _validate(req: PlacementRequest) -> None:
    """Reject malformed requests with a message naming the field (a bad sample, not a crash)."""
    fx, fy, fw, fh = (float(v) for v in req.fg_box)
    if not (all(math.isfinite(v) for v in (fx, fy, fw, fh)) and fw > 0 and fh > 0):
        raise PlacementError(f"fg_box must be finite with positive size, got {tuple(req.fg_box)!r}")
    for name, size in (("fg_image_size", req.fg_image_size), ("bg_size", req.bg_size)):
        if len(size) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in size):
            raise PlacementError(f"{name} must be two positive integers (w, h), got {tuple(size)!r}")
    for i, a in enumerate(req.avoid):
        if len(a) != 4 or not all(math.isfinite(float(v)) for v in a):
            raise PlacementError(f"avoid[{i}] must be four finite numbers, got {tuple(a)!r}")
    if req.footprint is not None and req.footprint.size != tuple(int(v) for v in req.bg_size):
        raise PlacementError(f"footprint is {req.footprint.size[0]}x{req.footprint.size[1]}, "
                             f"the background {req.bg_size[0]}x{req.bg_size[1]}")
    for i, o in enumerate(req.bg_objects):
        if len(o.box) != 4 or not all(math.isfinite(float(v)) for v in o.box):
            raise PlacementError(f"bg_objects[{i}].box must be four finite numbers, got {tuple(o.box)!r}")


# --- priors and scoring ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Priors:
    """What the source image says about the object: relative size and relative ground contact."""

    rel_size: float  # sqrt(object box area / image area)
    bottom: float  # bottom edge / image height


def _priors(req: PlacementRequest) -> _Priors:
    _, fy, fw, fh = (float(v) for v in req.fg_box)
    sw, sh = req.fg_image_size
    rel = math.sqrt(fw * fh / (sw * sh))
    bottom = min(max((fy + fh) / sh, 0.0), 1.0)
    return _Priors(rel_size=rel, bottom=bottom)


@dataclass(frozen=True)
class _Scene:
    """A request prepared once for scoring many candidates (floats, valid boxes only)."""

    bg_w: int
    bg_h: int
    priors: _Priors
    objects: tuple[tuple[Box, bool, float], ...]  # box, referred, area
    same_bottoms: tuple[float, ...]  # bottom edges (fraction of bg height) of same-category objects
    same_sizes: tuple[float, ...]  # sqrt areas of the same objects
    avoid: tuple[Box, ...]
    footprint: Footprint | None


def _as_box(b: Sequence[float]) -> Box:
    return (float(b[0]), float(b[1]), float(b[2]), float(b[3]))


def _scene(req: PlacementRequest) -> _Scene:
    bg_w, bg_h = int(req.bg_size[0]), int(req.bg_size[1])
    objects: list[tuple[Box, bool, float]] = []
    same: list[tuple[float, float]] = []
    for o in req.bg_objects:
        ob = _as_box(o.box)
        if not _valid_box(ob):
            continue  # degenerate annotations carry no evidence
        objects.append((ob, bool(o.referred), ob[2] * ob[3]))
        if o.category_id == req.fg_category_id:
            same.append(((ob[1] + ob[3]) / bg_h, math.sqrt(ob[2] * ob[3])))
    same.sort()
    return _Scene(
        bg_w=bg_w,
        bg_h=bg_h,
        priors=_priors(req),
        objects=tuple(objects),
        same_bottoms=tuple(b for b, _ in same),
        same_sizes=tuple(z for _, z in same),
        avoid=tuple(_as_box(a) for a in req.avoid),
        footprint=req.footprint,
    )


def _score(
    scene: _Scene, box: Sequence[float], config: SamplerConfig
) -> tuple[float, dict[str, float], str | None]:
    bx, by, bw, bh = _as_box(box)
    cand: Box = (bx, by, bw, bh)
    area = bw * bh
    inside = _intersection(cand, (0.0, 0.0, float(scene.bg_w), float(scene.bg_h)))
    truncation = inside / area if area > 0 else 0.0
    avoid_hit = collides(cand, scene.avoid, scene.footprint)

    max_ioa = 0.0
    reason: str | None = None
    for ob, referred, ob_area in scene.objects:
        ioa = _intersection(cand, ob) / ob_area
        if ioa > max_ioa:
            max_ioa = ioa
        if reason is None:
            if referred and ioa > config.max_cover_referred:
                reason = "hides a referred object"
            elif ioa > config.max_cover_other:
                reason = "buries a background object"
    if avoid_hit:
        reason = "overlaps an already placed object"
    elif truncation < 1.0 - 1e-9:
        reason = "leaves the frame"

    cand_bottom = (by + bh) / scene.bg_h
    size = math.sqrt(area)
    dist = abs(cand_bottom - scene.priors.bottom)
    if scene.same_bottoms:
        # perspective: the same-category object on the nearest ground line sets the expected size
        gaps = [abs(cand_bottom - b) for b in scene.same_bottoms]
        nearest = min(range(len(gaps)), key=gaps.__getitem__)
        ref_size = scene.same_sizes[nearest]
        dist = min(dist, gaps[nearest])
    else:
        ref_size = scene.priors.rel_size * math.sqrt(scene.bg_w * scene.bg_h)
    scale = _gauss(math.log(size / ref_size), config.scale_tolerance) if size > 0 else 0.0
    support = _gauss(dist, config.support_tolerance)

    components = {
        "scale": scale,
        "overlap": 1.0 - min(max_ioa, 1.0),
        "support": support,
        "truncation": truncation,
        "avoid": 0.0 if avoid_hit else 1.0,
    }
    weights = (config.w_scale, config.w_overlap, config.w_support, config.w_truncation)
    terms = (scale, components["overlap"], support, truncation)
    score = sum(w * t for w, t in zip(weights, terms, strict=True)) / sum(weights)
    return float(score), components, reason


def evaluate_box(
    req: PlacementRequest, box: Sequence[float], config: SamplerConfig = DEFAULT_CONFIG
) -> tuple[float, dict[str, float], str | None]:
    """Score a box in the background; the third value is the reason it is rejected, or None.

    Terms, each in [0, 1]:
    - ``scale``: size consistency. With same-category objects in the background, the sqrt-area ratio
      to the one whose bottom edge is nearest (perspective: things on the same ground line look alike
      in size); otherwise the ratio to the size the source image implies. Gaussian in log ratio.
    - ``overlap``: 1 - the largest fraction of any background object the box covers.
    - ``support``: bottom edge near the source's relative ground contact or a same-category object's.
    - ``truncation``: fraction of the box inside the frame (1 for every (s, rx, ry) placement).
    - ``avoid``: 1 when the box overlaps no avoided box and no footprint pixel (a hard constraint:
      otherwise rejected).
    """
    _validate(req)
    return _score(_scene(req), box, config)


def placement_from_params(
    req: PlacementRequest, s: float, rx: float, ry: float, config: SamplerConfig = DEFAULT_CONFIG
) -> Placement:
    """A scored Placement for given parameters (e.g. a GracoNet proposal); PlacementError if rejected."""
    _validate(req)
    fw, fh = float(req.fg_box[2]), float(req.fg_box[3])
    bg_w, bg_h = req.bg_size
    box = placement_box(s, rx, ry, fw, fh, bg_w, bg_h)
    score, components, reason = _score(_scene(req), box, config)
    if reason is not None:
        raise PlacementError(f"placement (s={s:.4f}, rx={rx:.4f}, ry={ry:.4f}) box {box} {reason}")
    return Placement(s=float(s), rx=float(rx), ry=float(ry), box=box, score=score, components=components)


def _draw_candidate(
    rng: np.random.Generator, req: PlacementRequest, priors: _Priors, relaxed: bool, config: SamplerConfig
) -> tuple[float, float, float]:
    """One (s, rx, ry) from the priors; always consumes exactly three draws so order is fixed."""
    z_size, u_bottom, u_x = rng.standard_normal(), rng.standard_normal(), rng.random()
    bg_w, bg_h = req.bg_size
    jitter = config.scale_jitter * (config.relaxed_jitter_factor if relaxed else 1.0)
    s, h_px = _size(req, priors.rel_size * math.exp(jitter * z_size), config)
    if relaxed:
        # crowded scenes: let the ground line go anywhere; the support term still prefers the prior
        bottom = min(max(priors.bottom + config.relaxed_bottom_jitter * u_bottom, 0.0), 1.0)
    else:
        bottom = priors.bottom + config.bottom_jitter * u_bottom
    free_y = bg_h - h_px
    ry = (bottom * bg_h - h_px) / free_y if free_y > 1e-9 else 0.5
    ry = min(max(ry, 0.0), 1.0)
    return float(s), float(u_x), float(ry)


def _size(req: PlacementRequest, rel: float, config: SamplerConfig) -> tuple[float, float]:
    """``s`` for an object of relative size ``rel`` (sqrt of its share of the background's area), kept
    above ``min_side_px`` and below ``max_scale``, and the placed height in pixels."""
    fw, fh = float(req.fg_box[2]), float(req.fg_box[3])
    bg_w, bg_h = req.bg_size
    target_area = rel * rel * bg_w * bg_h
    new_h = math.sqrt(target_area * fh / fw)
    new_w = target_area / new_h
    tall = _height_limited(fw, fh, bg_w, bg_h)
    s = new_h / bg_h if tall else new_w / bg_w
    # keep the shorter side at least min_side_px when the background allows it
    short_per_s = min(bg_h, bg_h * fw / fh) if tall else min(bg_w, bg_w * fh / fw)
    s_min = min(config.min_side_px / short_per_s, 1.0)
    s = min(max(s, s_min), 1.0)
    if req.max_scale is not None:
        s = min(s, (fh / bg_h if tall else fw / bg_w) * float(req.max_scale))
    h_px = s * bg_h if tall else s * bg_w * fh / fw
    return s, h_px


def _scan(req: PlacementRequest, scene: _Scene, footprint: Footprint, config: SamplerConfig) -> Placement | None:
    """The best valid box on a grid of every position, at the prior size and a few smaller ones: the
    last resort of a crowded composite, where every drawn candidate hit another target's footprint
    though free ground is left. Deterministic (no draws), and cheap: the footprint rules out positions
    for a whole grid at once, only the remaining ones are scored."""
    fw, fh = float(req.fg_box[2]), float(req.fg_box[3])
    bg_w, bg_h = req.bg_size
    best: Placement | None = None
    for factor in SCAN_SIZES:
        s = _size(req, scene.priors.rel_size * factor, config)[0]
        _, _, w, h = placement_box(s, 0.0, 0.0, fw, fh, bg_w, bg_h)
        step = max(2, min(w, h) // 16)
        xs = np.arange(0, bg_w - w + 1, step)
        ys = np.arange(0, bg_h - h + 1, step)
        x0, y0 = xs[None, :], ys[:, None]
        free = footprint.taken(x0, y0, x0 + w, y0 + h) == 0
        for yi, xi in zip(*np.nonzero(free), strict=True):
            ps, prx, pry = params_from_box((xs[xi], ys[yi], w, h), fw, fh, bg_w, bg_h)
            box = placement_box(ps, prx, pry, fw, fh, bg_w, bg_h)
            score, components, reason = _score(scene, box, config)
            if reason is None and (best is None or score > best.score):
                best = Placement(s=ps, rx=prx, ry=pry, box=box, score=score, components=components)
        if best is not None:
            return best  # the largest size that fits: shrinking further only loses the scale term
    return None


def sample_placement(
    req: PlacementRequest, seed: int, key: object, k: int = 8, config: SamplerConfig = DEFAULT_CONFIG
) -> Placement:
    """The best of ``k`` prior candidates; extends to ``config.extend_factor * k`` if none is valid,
    and for a request with a ``footprint`` then scans every position (``_scan``).

    ``key`` names the sample (e.g. its id) so each sample has its own stream:
    ``rng_for(seed, "placement", key)``. Same request, seed and key give the same Placement.
    Raises PlacementError with the rejection counts when no candidate is valid.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    _validate(req)
    rng = rng_for(int(seed), "placement", key)
    scene = _scene(req)
    priors = scene.priors
    fw, fh = float(req.fg_box[2]), float(req.fg_box[3])
    bg_w, bg_h = req.bg_size
    best: Placement | None = None
    rejected: dict[str, int] = {}
    total = k * config.extend_factor
    for i in range(total):
        if i > 0 and i % k == 0 and best is not None:
            break
        s, rx, ry = _draw_candidate(rng, req, priors, relaxed=i >= k, config=config)
        box = placement_box(s, rx, ry, fw, fh, bg_w, bg_h)
        score, components, reason = _score(scene, box, config)
        if reason is not None:
            rejected[reason] = rejected.get(reason, 0) + 1
            continue
        if best is None or score > best.score:
            best = Placement(s=s, rx=rx, ry=ry, box=box, score=score, components=components)
    if best is None and req.footprint is not None:
        best = _scan(req, scene, req.footprint, config)
    if best is None:
        counts = ", ".join(f"{n} {r}" for r, n in sorted(rejected.items()))
        scanned = " and a scan of every position" if req.footprint is not None else ""
        raise PlacementError(f"no valid placement for sample {key!r} after {total} candidates{scanned} ({counts})")
    return best
