"""Placement's entry point: from one object and one background to a checked ``Placement``.

``place`` is to placement what ``comcoco.harmonize.fit.harmonize`` is to style: the compose engine
describes the object and the scene (a ``PlacementRequest``) and names a method; this module picks the
default sampler, a loaded GracoNet, or a box a reviewer chose, and enforces the hard limits every
placement must meet whatever produced it (inside the frame, never over an object already pasted into
the composite).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from comcoco.errors import ComcocoError
from comcoco.ids import stable_hash64
from comcoco.placement import PLACEMENT_METHODS
from comcoco.placement.sampler import (
    PlacementError,
    PlacementRequest,
    collides,
    evaluate_box,
    params_from_box,
    placement_box,
    placement_from_params,
    sample_placement,
)
from comcoco.records import Placement

GRACONET_ATTEMPTS = 8  # proposals tried before giving up on a box that avoids already pasted objects


class PlacerMissingError(ComcocoError, ValueError):
    """``graconet`` placement was asked for without a loaded model."""


def given_placement(req: PlacementRequest, box: Sequence[float]) -> Placement:
    """The placement for a box chosen outside the sampler (a reviewer's correction).

    The box sets scale and position the way GracoNet reads one (``params_from_box``: the limiting side
    gives s, the corner gives rx, ry); the object keeps its aspect ratio, so the final box is the
    ``placement_box`` of those parameters (a box already aspect-true to within a pixel is kept exactly,
    so re-placing an existing box reproduces it). Its plausibility is scored like a sampled one, but a soft
    rejection (e.g. covering a background object) does not overrule the person who chose it; the
    hard limits are checked by ``place``.
    """
    fw, fh = float(req.fg_box[2]), float(req.fg_box[3])
    bg_w, bg_h = req.bg_size
    s, rx, ry = params_from_box(box, fw, fh, bg_w, bg_h)
    placed = placement_box(s, rx, ry, fw, fh, bg_w, bg_h)
    x, y, w, h = (int(round(float(v))) for v in box)
    inside = x >= 0 and y >= 0 and w >= 1 and h >= 1 and x + w <= bg_w and y + h <= bg_h
    if inside and abs(placed[2] - w) <= 1 and abs(placed[3] - h) <= 1:
        # already aspect-true up to the integer rounding: keep it exactly, so boxes never drift
        placed = (x, y, w, h)
    score, components, _soft_reason = evaluate_box(req, placed)
    return Placement(s=s, rx=rx, ry=ry, box=placed, score=score, components=components)


def _graconet(req: PlacementRequest, placer: Any, crop: np.ndarray, crop_mask: np.ndarray,
              background: np.ndarray, seed: int, key: str, k: int) -> Placement:
    if hasattr(placer, "place"):
        # best of k proposals, scored and constrained like the default sampler (one backbone pass)
        return placer.place(req, crop, crop_mask, background, seed=seed, key=key, k=k)
    base_seed = stable_hash64(seed, key) & 0x7FFFFFFF
    reasons: list[str] = []
    for attempt in range(GRACONET_ATTEMPTS):
        s, prx, pry = placer.propose(crop, crop_mask, background, seed=base_seed + attempt)
        try:
            return placement_from_params(req, s, prx, pry)
        except PlacementError as exc:
            reasons.append(str(exc))
    raise PlacementError(f"{GRACONET_ATTEMPTS} GracoNet proposals rejected: {reasons[0]}")


def place(
    req: PlacementRequest,
    method: str = "prior",
    *,
    seed: int,
    key: str,
    k: int = 8,
    placer: Any = None,
    crop: np.ndarray | None = None,
    crop_mask: np.ndarray | None = None,
    background: np.ndarray | None = None,
    given_box: Sequence[float] | None = None,
    fixed: Placement | None = None,
) -> Placement:
    """Where the object of ``req`` goes. ``key`` names the sample (its seeded draws); ``given_box`` skips
    sampling (a reviewer's box); ``fixed`` keeps a placement made before exactly (an object that stays
    put while another one of its composite is moved); ``graconet`` needs ``placer`` and the object's
    crop, mask and the background.

    Raises ``PlacementError`` when no placement meets the hard limits.
    """
    if fixed is not None:
        pl = fixed
    elif given_box is not None:
        pl = given_placement(req, given_box)
    elif method == "prior":
        pl = sample_placement(req, seed, key=key, k=k)
    elif method == "graconet":
        if placer is None:
            raise PlacerMissingError("--placement graconet needs --graconet-ckpt PATH (no GracoNet loaded)")
        if crop is None or crop_mask is None or background is None:
            raise PlacerMissingError("graconet placement needs the object's crop, its mask and the background")
        pl = _graconet(req, placer, crop, crop_mask, background, seed, key, k)
    else:
        raise PlacerMissingError(f"unknown placement {method!r} (choose {'|'.join(PLACEMENT_METHODS)})")
    x, y, w, h = (int(v) for v in pl.box)
    bg_w, bg_h = req.bg_size
    if w < 1 or h < 1 or x < 0 or y < 0 or x + w > bg_w or y + h > bg_h:
        raise PlacementError(f"box {pl.box} does not fit the {bg_w}x{bg_h} background")
    if collides((x, y, w, h), req.avoid, req.footprint):
        raise PlacementError(f"box {pl.box} overlaps an object already pasted into this composite "
                             "(or its shadow)")
    return pl
