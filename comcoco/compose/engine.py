"""One composite at a time: place, cut, paste, harmonize — a pure function from plans and pixels.

``compose_group`` takes a planned composite (``comcoco.plan.GroupPlan``) and an image cache and returns
arrays and rows; bad data becomes failure rows, never an exception. Writing the result is
``comcoco.compose.writer``'s job, running many of them the shard runner's (``comcoco.shards``) or
``comcoco.compose.run``'s.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import TYPE_CHECKING

import cv2
import numpy as np

from comcoco.compose.cutout import (
    Cutout,
    CutoutError,
    ObjectShape,
    cut_object,
    full_alpha,
    full_mask,
    object_shape,
    paste,
    polygons_json,
    rasterize_alpha,
)
from comcoco.compose.models import ComposeModels
from comcoco.compose.samples import SampleRow
from comcoco.config import ComposeConfig
from comcoco.ids import stable_hash64
from comcoco.placement.sampler import Footprint
from comcoco.plan import GroupPlan, ObjectPlan
from comcoco.records import (
    STATUS_BAD_BACKGROUND,
    STATUS_BAD_SOURCE,
    STATUS_HARMONIZE_FAILED,
    STATUS_OK,
    STATUS_PLACEMENT_FAILED,
    FilterArgs,
    Placement,
)
from comcoco.sources.images import ImageCache, ImageLoadError

if TYPE_CHECKING:
    from comcoco.compose.robust import SceneCache


@dataclass
class ComposedSample:
    """A sample's row (paths not yet set) and, when ok, its ground truth and mask arrays."""

    row: SampleRow
    ground_truth: np.ndarray | None = None  # RGB uint8, full size
    mask: np.ndarray | None = None  # uint8 0/255, full size
    gt_is_background: bool = False  # the ground truth is the untouched background (shareable encode)
    effect_mask: np.ndarray | None = None  # robust: uint8 0/255, the mask ∪ every pixel the object changed
    touched: np.ndarray | None = None  # robust: bool, the pixels the object changed


@dataclass
class ComposedGroup:
    composite_id: str
    bg_image_id: int
    composite: np.ndarray | None
    samples: list[ComposedSample] = field(default_factory=list)


@lru_cache(maxsize=8)
def _fingerprint(config: ComposeConfig) -> str:
    """``config.fingerprint()``, computed once per configuration (a frozen, hashable dataclass)."""
    return config.fingerprint()


def _base_row(plan: ObjectPlan, composite_id: str, config: ComposeConfig, fp: str) -> SampleRow:
    c = plan.candidate
    return SampleRow(
        sample_id=plan.sample_id,
        composite_id=composite_id,
        status=STATUS_OK,
        reason="",
        fg_ref_id=int(c.ref_id),
        fg_ann_id=int(c.ann_id),
        fg_image_id=int(plan.fg_image.image_id if plan.fg_image is not None else c.fg_image_id),
        bg_image_id=int(c.bg_image_id),
        category_id=int(plan.ref.category_id if plan.ref is not None else c.category_id),
        candidate_rank=int(c.rank),
        seed=int(config.seed),
        config=fp,
    )


def _place(
    plan: ObjectPlan,
    shape: ObjectShape,
    fg: np.ndarray,
    bg: np.ndarray,
    group: GroupPlan,
    avoid: Sequence[tuple[int, int, int, int]] | Footprint,
    config: ComposeConfig,
    models: ComposeModels,
    given: Sequence[float] | Placement | None = None,
) -> Placement:
    """Describe the object and the scene to ``comcoco.placement.place`` and return its placement."""
    from comcoco.placement.place import place
    from comcoco.placement.sampler import PlacementRequest

    bg_h, bg_w = bg.shape[:2]
    rx, ry, rw, rh = shape.rect
    req = PlacementRequest(
        fg_box=(float(rx), float(ry), float(rw), float(rh)),
        fg_image_size=(int(fg.shape[1]), int(fg.shape[0])),
        fg_category_id=int((plan.ref or plan.annotation).category_id),  # type: ignore[union-attr]
        bg_size=(int(bg_w), int(bg_h)),
        bg_objects=group.bg_objects,
        avoid=() if isinstance(avoid, Footprint) else tuple(tuple(float(v) for v in b) for b in avoid),  # type: ignore[misc]
        footprint=avoid if isinstance(avoid, Footprint) else None,
        max_scale=1.0 if config.robust else None,
    )
    crop = crop_mask = None
    if given is None and config.placement == "graconet":
        crop = np.ascontiguousarray(fg[ry : ry + rh, rx : rx + rw])
        if shape.polygons:
            local = [p - np.array([rx, ry], dtype=np.float64) for p in shape.polygons]
            crop_mask = (rasterize_alpha(local, rw, rh) >= 0.5).astype(np.uint8) * 255
        else:
            crop_mask = shape.mask.astype(np.uint8) * 255  # type: ignore[union-attr]
    return place(req, config.placement, seed=config.seed, key=plan.sample_id, k=config.placement_k,
                 placer=models.placer, crop=crop, crop_mask=crop_mask, background=bg,
                 given_box=None if given is None or isinstance(given, Placement) else
                 tuple(int(round(float(v))) for v in given),
                 fixed=given if isinstance(given, Placement) else None)


def _failed(row: SampleRow, status: str, reason: str) -> ComposedSample:
    return ComposedSample(row=replace(row, status=status, reason=reason))


def _cut(
    m: ObjectPlan,
    row: SampleRow,
    bg: np.ndarray,
    group: GroupPlan,
    avoid: Sequence[tuple[int, int, int, int]] | Footprint,
    images: ImageCache,
    config: ComposeConfig,
    models: ComposeModels,
    given: Sequence[float] | Placement | None,
) -> tuple[Cutout, Placement] | ComposedSample:
    """Load, outline, place and cut one object at its placed size; a failure row when that cannot be."""
    from comcoco.placement.sampler import PlacementError

    assert m.fg_image is not None and m.annotation is not None
    ids = f"ref {m.candidate.ref_id}, ann {m.annotation.ann_id}"
    try:
        fg = images.get(m.fg_image)
    except ImageLoadError as exc:
        return _failed(row, STATUS_BAD_SOURCE, f"source image {m.fg_image.image_id} ({ids}): {exc}")
    try:
        shape = object_shape(m.annotation.segmentation, fg.shape[1], fg.shape[0])
    except CutoutError as exc:
        return _failed(row, STATUS_BAD_SOURCE, f"ann {m.annotation.ann_id} of ref {m.candidate.ref_id} in image "
                                               f"{m.fg_image.image_id}: {exc}")
    try:
        pl = _place(m, shape, fg, bg, group, avoid, config, models, given)
        cut = cut_object(fg, shape, tuple(int(v) for v in pl.box))  # type: ignore[arg-type]
    except (PlacementError, ValueError) as exc:  # CutoutError is a ValueError; so are NaN proposals
        return _failed(row, STATUS_PLACEMENT_FAILED, f"{ids} into background {group.bg_image_id}: {exc}")
    if not cut.mask.any():
        return _failed(row, STATUS_PLACEMENT_FAILED,
                       f"{ids}: mask is empty at the placed size {cut.box[2]}x{cut.box[3]}")
    return cut, pl


def _placed_row(row: SampleRow, cut: Cutout, pl: Placement, mask: np.ndarray, args: FilterArgs) -> SampleRow:
    x, y, w, h = cut.box
    return replace(
        row,
        box_x=x, box_y=y, box_w=w, box_h=h,
        s=float(pl.s), rx=float(pl.rx), ry=float(pl.ry),
        plausibility=None if pl.score is None or math.isnan(float(pl.score)) else float(pl.score),
        polygon=polygons_json(cut.polygons),
        mask_area=int(np.count_nonzero(mask)),
    ).with_filters(args)


def _paste_paper(m: ObjectPlan, row: SampleRow, canvas: np.ndarray, cut: Cutout, pl: Placement,
                 config: ComposeConfig, models: ComposeModels) -> tuple[ComposedSample, Cutout | None]:
    """The paper's recipe: paste as cut, harmonize on the running composite (a failure leaves the canvas
    as it was and returns the failure row with no cutout)."""
    from comcoco.harmonize.fit import harmonize

    ids = f"ref {m.candidate.ref_id}, ann {m.annotation.ann_id}"  # type: ignore[union-attr]
    x, y, w, h = cut.box
    before = canvas[y : y + h, x : x + w].copy()
    paste(canvas, cut)
    try:
        if config.harmonize == "none":
            harmonized, args = canvas, FilterArgs()
        else:
            alpha = full_alpha(cut, canvas.shape[0], canvas.shape[1])
            harmonized, args = harmonize(canvas, alpha, config.harmonize, models.harmonizer)
        if harmonized.shape != canvas.shape or harmonized.dtype != np.uint8:
            raise ValueError(f"harmonizer returned {harmonized.dtype} {harmonized.shape}, expected uint8 {canvas.shape}")
        if not isinstance(args, FilterArgs):
            args = FilterArgs.from_sequence(args)
    except Exception as exc:  # any harmonizer failure is this sample's failure, not the run's
        canvas[y : y + h, x : x + w] = before
        return _failed(row, STATUS_HARMONIZE_FAILED, f"{ids} ({config.harmonize}): {type(exc).__name__}: {exc}"), None
    touched = cut.alpha > 0
    region = canvas[y : y + h, x : x + w]
    region[touched] = harmonized[y : y + h, x : x + w][touched]
    mask = full_mask(cut, canvas.shape[0], canvas.shape[1])
    return ComposedSample(row=_placed_row(row, cut, pl, mask, args), mask=mask), cut


def _ground_truths(done: list[tuple[ComposedSample, Cutout]], canvas: np.ndarray, bg: np.ndarray,
                   decoys: tuple[int, ...] = (), skipped: tuple[str, ...] = ()) -> None:
    """Each object's ground truth: the final composite with only its own pixels restored to the
    background (the plain background when it is alone), and the other objects and decoys named in its row
    (with the planned decoys left out, and why)."""
    for cs, cut in done:
        others = [o for o, _ in done if o is not cs]
        cs.row = replace(
            cs.row,
            objects=tuple(o.row.sample_id for o in others),
            object_ann_ids=tuple(o.row.fg_ann_id for o in others),
            decoy_ann_ids=decoys,
            decoys_skipped=skipped,
        )
        if not others and not decoys:
            cs.ground_truth, cs.gt_is_background = bg, True
        else:
            gt = canvas.copy()
            if cs.touched is None:
                x, y, w, h = cut.box
                touched = cut.alpha > 0
                gt[y : y + h, x : x + w][touched] = bg[y : y + h, x : x + w][touched]
            else:  # within the touched set's bounding box: the same bytes, a fraction of the work
                x, y, w, h = cv2.boundingRect(cs.touched.view(np.uint8))
                np.copyto(gt[y : y + h, x : x + w], bg[y : y + h, x : x + w], where=cs.touched[y : y + h, x : x + w, None])
            cs.ground_truth = gt


def _background(group: GroupPlan, images: ImageCache, rows: list[SampleRow]) -> np.ndarray | list[ComposedSample]:
    """The decoded background, or every member's failure row when it cannot be read."""
    try:
        return images.get(group.bg_image)  # type: ignore[arg-type]
    except ImageLoadError as exc:
        reason = f"background image {group.bg_image_id}: {exc}"
        return [_failed(r, *(m.problem or (STATUS_BAD_BACKGROUND, reason)))
                for m, r in zip(group.members, rows, strict=True)]


def compose_group(
    group: GroupPlan,
    images: ImageCache,
    config: ComposeConfig,
    models: ComposeModels | None = None,
    boxes: Mapping[str, Sequence[float] | Placement] | None = None,
    scenes: SceneCache | None = None,
) -> ComposedGroup:
    """Compose one background with its objects. Bad data yields failure rows, never an exception.

    Objects are pasted in member order. The paper profile harmonizes each on the running composite,
    inside its own box; the robust profile pastes each with its effects (``comcoco.compose.robust``),
    keeping the targets' footprints apart. Object i's ground truth is the final composite with only
    the pixels object i changed restored to the background: exact outside its mask (paper) or its
    effect mask (robust).

    ``boxes`` (sample id → x, y, w, h in background pixels, or a ``Placement`` kept exactly) skips
    placement sampling for those members: review uses it to recompose a sample from a corrected box
    (``comcoco.placement.place.given_placement``) while the composite's other objects keep theirs.
    ``scenes`` (robust profile) keeps each background's measured scene for the next composite on it.
    """
    models = models or ComposeModels()
    fp = _fingerprint(config)
    rows = [_base_row(m, group.composite_id, config, fp) for m in group.members]
    out = ComposedGroup(composite_id=group.composite_id, bg_image_id=group.bg_image_id, composite=None)
    bg: np.ndarray | None = None
    if group.bg_image is not None and any(m.problem is None for m in group.members):
        loaded = _background(group, images, rows)
        if isinstance(loaded, list):
            out.samples = loaded
            return out
        bg = loaded
    canvas = bg.copy() if bg is not None else None
    robust = _Robust(bg, images.path(group.bg_image_id), group, scenes) if config.robust and bg is not None else None
    results: dict[str, ComposedSample] = {}
    done: dict[str, tuple[ComposedSample, Cutout]] = {}
    decoys: list[int] = []
    skipped: list[tuple[int, str]] = []
    avoid: list[tuple[int, int, int, int]] = []

    def paste(m: ObjectPlan, row: SampleRow, target: bool) -> tuple[ComposedSample, Cutout | None]:
        """One object cut, placed and pasted onto the canvas, or its failure row."""
        if m.problem is not None:
            return _failed(row, *m.problem), None
        assert canvas is not None and bg is not None
        given = boxes.get(m.sample_id) if boxes and target else None
        taken = avoid if robust is None else robust.footprint()
        prepared = _cut(m, row, bg, group, taken, images, config, models, given)
        if isinstance(prepared, ComposedSample):
            return prepared, None
        cut, pl = prepared
        if robust is not None:
            return robust.paste(m, row, canvas, cut, pl, config, models, images.get(m.fg_image))
        cs, kept = _paste_paper(m, row, canvas, cut, pl, config, models)
        if kept is not None:
            avoid.append(kept.box)
        return cs, kept

    for m, row, target in _paste_order(group, rows, config.seed):
        cs, kept = paste(m, row, target)
        results[m.sample_id] = cs
        if target and kept is not None:
            done[m.sample_id] = (cs, kept)
        elif not target:
            if kept is not None:
                decoys.append(m.annotation.ann_id)  # type: ignore[union-attr]
            else:
                skipped.append((m.annotation.ann_id, f"{cs.row.status}: {cs.row.reason}"))  # type: ignore[union-attr]
    out.samples.extend(results[m.sample_id] for m in group.members)
    if done:
        assert canvas is not None and bg is not None
        out.composite = canvas
        _ground_truths([done[m.sample_id] for m in group.members if m.sample_id in done], canvas, bg,
                       tuple(sorted(decoys)), tuple(f"{a}: {why}" for a, why in sorted(skipped)))
    return out


def _paste_order(group: GroupPlan, rows: Sequence[SampleRow],
                 seed: int) -> list[tuple[ObjectPlan, SampleRow, bool]]:
    """(object, row, is a target) in paste order: the members in order, then the decoys in a seeded order.

    Targets go first so a decoy never costs a target its place (a crowded frame drops the decoy instead).
    """
    items = [(m, r, True) for m, r in zip(group.members, rows, strict=True)]
    by_id = {m.sample_id: (m, r) for m, r, _ in items}
    decoys = []
    for d in sorted(group.decoys, key=lambda d: (stable_hash64(seed, "paste-order", group.composite_id, d.key), d.key)):
        m, r = by_id[d.target]
        decoy = d.as_object(m)
        decoys.append((decoy, replace(r, sample_id=decoy.sample_id, fg_ann_id=d.annotation.ann_id), False))
    return items + decoys


class _Robust:
    """The robust profile's state over one composite: the scene measured once, the targets' footprints."""

    def __init__(self, bg: np.ndarray, path: object, group: GroupPlan, scenes: SceneCache | None = None):
        from comcoco.compose.robust import measure_scene

        self.bg = bg
        if scenes is None:
            self.scene = measure_scene(bg, path, group.bg_annotations)  # type: ignore[arg-type]
        else:
            self.scene = scenes.get(group.bg_image_id, bg, path, group.bg_annotations)  # type: ignore[arg-type]
        self.forbidden = np.zeros(bg.shape[:2], dtype=bool)

    def footprint(self) -> Footprint:
        """The pixels a next target may not cover: every target so far with its shadow, grown by the
        margin (pixels, not their bounding box: a long shadow leaves the ground beside it free)."""
        return Footprint.of(self.forbidden)

    def paste(self, m: ObjectPlan, row: SampleRow, canvas: np.ndarray, cut: Cutout, pl: Placement,
              config: ComposeConfig, models: ComposeModels,
              source: np.ndarray | None = None) -> tuple[ComposedSample, Cutout | None]:
        from comcoco.compose.robust import keep_out, paste_target

        before = canvas.copy()
        try:
            p = paste_target(canvas, self.bg, cut, self.scene, self.forbidden, config.harmonize, models.harmonizer,
                             config.seed, m.sample_id, source)
        except Exception as exc:  # a harmonizer failure is this sample's failure, not the run's
            canvas[...] = before
            ids = f"ref {m.candidate.ref_id}, ann {m.annotation.ann_id}"  # type: ignore[union-attr]
            return _failed(row, STATUS_HARMONIZE_FAILED, f"{ids} ({config.harmonize}): {type(exc).__name__}: {exc}"), None
        self.forbidden |= keep_out(p.touched)
        new_row = replace(_placed_row(row, replace(p.cut, box=p.box), pl, p.mask, p.args),
                          effect_area=int(np.count_nonzero(p.effect)), **p.info)  # type: ignore[arg-type]
        return ComposedSample(row=new_row, mask=p.mask, effect_mask=p.effect, touched=p.touched), p.cut


def compose_sample(
    plan: ObjectPlan, group: GroupPlan, images: ImageCache, config: ComposeConfig, models: ComposeModels | None = None
) -> ComposedGroup:
    """One object into its background alone (``group`` supplies the background and its objects)."""
    return compose_group(replace(group, composite_id=plan.sample_id, members=(plan,)), images, config, models)


# --- writing -------------------------------------------------------------------------------------
