"""One composite at a time: place, cut, paste, harmonize; then encode and write its files.

``compose_group`` is a pure function from plan records and decoded images to arrays and rows;
``write_group`` encodes and writes them; ``run_compose`` reads the source and candidates, plans the
groups and drives the two. The Prefect build flow calls the same functions once per shard.
"""

from __future__ import annotations

import json
import math
import os
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from comcoco.compose.cutout import (
    Cutout,
    CutoutError,
    ObjectShape,
    boxes_overlap,
    cut_object,
    dilated,
    full_alpha,
    full_mask,
    object_shape,
    paste,
    polygons_json,
    rasterize_alpha,
)
from comcoco.compose.samples import SampleRow, write_samples
from comcoco.ids import stable_hash64, stable_id
from comcoco.io import write_text_atomic
from comcoco.records import (
    STATUS_BAD_BACKGROUND,
    STATUS_BAD_SOURCE,
    STATUS_HARMONIZE_FAILED,
    STATUS_OK,
    STATUS_PLACEMENT_FAILED,
    Annotation,
    Candidate,
    FilterArgs,
    ImageInfo,
    Placement,
    Ref,
)

PLACEMENT_METHODS: tuple[str, ...] = ("prior", "graconet")
IMAGE_FORMATS: tuple[str, ...] = ("png", "jpeg")
FIDELITY_RADIUS = 8  # px: outside the mask grown by this much, composite and ground truth agree
GRACONET_ATTEMPTS = 8  # proposals tried before giving up on a box that avoids already pasted objects


class ComposeConfigError(ValueError):
    """An unusable compose configuration (unknown method, missing checkpoint, bad number)."""


@dataclass(frozen=True)
class ComposeConfig:
    """Everything that decides a sample's pixels; its fingerprint goes into every sample id."""

    seed: int = 0
    placement: str = "prior"
    harmonize: str = "fit"
    objects_per_image: int = 1
    candidates_per_ref: int = 1
    image_format: str = "png"
    jpeg_quality: int = 95
    png_compression: int = 1
    placement_k: int = 8
    graconet_ckpt: str | None = None
    harmonizer_ckpt: str | None = None

    def fingerprint(self) -> str:
        """Stable id of all fields: same config → same id on every machine."""
        return stable_id("compose-config", asdict(self))

    @property
    def image_ext(self) -> str:
        return "png" if self.image_format == "png" else "jpg"

    def validate(self) -> None:
        """Raise ComposeConfigError before any work if the configuration cannot run."""
        from comcoco.harmonize.fit import HARMONIZE_METHODS

        if self.placement not in PLACEMENT_METHODS:
            raise ComposeConfigError(f"unknown placement {self.placement!r} (choose {'|'.join(PLACEMENT_METHODS)})")
        if self.harmonize not in HARMONIZE_METHODS:
            raise ComposeConfigError(f"unknown harmonize method {self.harmonize!r} (choose {'|'.join(HARMONIZE_METHODS)})")
        if self.image_format not in IMAGE_FORMATS:
            raise ComposeConfigError(f"unknown image format {self.image_format!r} (choose png|jpeg)")
        if self.objects_per_image < 1:
            raise ComposeConfigError(f"objects per image must be at least 1, got {self.objects_per_image}")
        if self.candidates_per_ref < 1:
            raise ComposeConfigError(f"candidates per ref must be at least 1, got {self.candidates_per_ref}")
        if self.placement_k < 1:
            raise ComposeConfigError(f"placement proposals must be at least 1, got {self.placement_k}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ComposeConfigError(f"JPEG quality must be in 1..100, got {self.jpeg_quality}")
        if not 0 <= self.png_compression <= 9:
            raise ComposeConfigError(f"PNG compression must be in 0..9, got {self.png_compression}")
        if self.placement == "graconet":
            if not self.graconet_ckpt:
                raise ComposeConfigError("--placement graconet needs --graconet-ckpt PATH (a GracoNet checkpoint)")
            if not Path(self.graconet_ckpt).is_file():
                raise ComposeConfigError(f"GracoNet checkpoint not found: {self.graconet_ckpt}")
        if self.harmonize == "network":
            if not self.harmonizer_ckpt:
                raise ComposeConfigError("--harmonize network needs --harmonizer-ckpt PATH (a Harmonizer checkpoint)")
            if not Path(self.harmonizer_ckpt).is_file():
                raise ComposeConfigError(f"Harmonizer checkpoint not found: {self.harmonizer_ckpt}")


@dataclass
class ComposeModels:
    """Learned parts loaded once per run (None when the configuration does not use them)."""

    placer: Any = None
    harmonizer: Any = None


def load_models(config: ComposeConfig, device: str = "cpu") -> ComposeModels:
    """Load the checkpoints the configuration names; an unusable file is a ComposeConfigError."""
    models = ComposeModels()
    if config.placement == "graconet":
        from comcoco.placement.graconet import GracoNetPlacer

        try:
            models.placer = GracoNetPlacer(config.graconet_ckpt, device=device)
        except Exception as exc:  # strict key mismatch, bad pickle, wrong file: all mean "unusable"
            raise ComposeConfigError(f"cannot use GracoNet checkpoint {config.graconet_ckpt}: {exc}") from None
    if config.harmonize == "network":
        from comcoco.harmonize.network import load_harmonizer

        try:
            models.harmonizer = load_harmonizer(config.harmonizer_ckpt, device=device)
        except Exception as exc:
            raise ComposeConfigError(f"cannot use Harmonizer checkpoint {config.harmonizer_ckpt}: {exc}") from None
    return models


# --- decoding ------------------------------------------------------------------------------------


class ImageLoadError(Exception):
    """An image file is missing, truncated, undecodable or not the size its record says."""


def decode_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode a file to RGB uint8 (EXIF orientation ignored, as COCO annotations assume)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageLoadError(f"{path}: missing file") from None
    except OSError as exc:
        raise ImageLoadError(f"{path}: unreadable ({exc.strerror or exc})") from None
    if data[:2] == b"\xff\xd8" and b"\xff\xd9" not in data[-1024:]:
        raise ImageLoadError(f"{path}: truncated JPEG (no end-of-image marker)")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if img is None:
        raise ImageLoadError(f"{path}: undecodable image ({len(data)} bytes)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB, dst=img)


class ImageCache:
    """A small LRU of decoded images by image id (backgrounds are reused); failures are cached too.

    Cached arrays are read-only so no stage can alter a shared background by accident.
    """

    def __init__(self, resolve: Callable[[int], Path], maxsize: int = 16):
        self._resolve = resolve
        self._maxsize = maxsize
        self._items: OrderedDict[int, np.ndarray | ImageLoadError] = OrderedDict()

    def path(self, image_id: int) -> Path:
        return Path(self._resolve(image_id))

    def get(self, info: ImageInfo) -> np.ndarray:
        """The decoded image of ``info``; raises ImageLoadError (also if the size disagrees)."""
        hit = self._items.get(info.image_id)
        if hit is None:
            try:
                img = decode_image(self.path(info.image_id))
                if img.shape[:2] != (info.height, info.width):
                    raise ImageLoadError(
                        f"{self.path(info.image_id)}: decoded size {img.shape[1]}x{img.shape[0]} differs from "
                        f"the recorded {info.width}x{info.height}"
                    )
                img.flags.writeable = False
                hit = img
            except ImageLoadError as exc:
                hit = exc
            self._items[info.image_id] = hit
            if len(self._items) > self._maxsize:
                self._items.popitem(last=False)
        else:
            self._items.move_to_end(info.image_id)
        if isinstance(hit, ImageLoadError):
            raise hit
        return hit


# --- plans ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceIndex:
    """The parts of a source the compose stage needs, indexed by id."""

    refs: Mapping[int, Ref]
    annotations: Mapping[int, Annotation]
    images: Mapping[int, ImageInfo]
    anns_by_image: Mapping[int, tuple[Annotation, ...]]
    referred_anns: frozenset[int]
    image_path: Callable[[int], Path]
    name: str = "source"

    @classmethod
    def from_source(cls, source: Any) -> SourceIndex:
        """Index a ReferSource (comcoco.sources.refer) once per run."""
        refs = {r.ref_id: r for r in source.refs()}
        anns = {a.ann_id: a for a in source.annotations()}
        by_image: dict[int, list[Annotation]] = {}
        for a in sorted(anns.values(), key=lambda a: a.ann_id):
            by_image.setdefault(a.image_id, []).append(a)
        return cls(
            refs=refs,
            annotations=anns,
            images={i.image_id: i for i in source.images()},
            anns_by_image={k: tuple(v) for k, v in by_image.items()},
            referred_anns=frozenset(r.ann_id for r in refs.values()),
            image_path=source.image_path,
            name=str(getattr(source, "DATA_DIR", "source")),
        )


@dataclass(frozen=True)
class ObjectPlan:
    """One sample to make: which object goes into which background, under which id."""

    sample_id: str
    candidate: Candidate
    ref: Ref | None
    annotation: Annotation | None
    fg_image: ImageInfo | None
    problem: tuple[str, str] | None = None  # (status, reason) already known at planning time


@dataclass(frozen=True)
class GroupPlan:
    """One composite: a background and the objects pasted into it (one unless objects_per_image > 1)."""

    composite_id: str
    bg_image_id: int
    bg_image: ImageInfo | None
    bg_objects: tuple[Any, ...]  # comcoco.placement.sampler.SceneObject
    members: tuple[ObjectPlan, ...]


def select_candidates(
    candidates: Iterable[Candidate], candidates_per_ref: int = 1, limit: int | None = None
) -> list[Candidate]:
    """The best ``candidates_per_ref`` candidates of each ref (lowest rank first), in ref order."""
    by_ref: dict[int, list[Candidate]] = {}
    for c in candidates:
        by_ref.setdefault(c.ref_id, []).append(c)
    chosen: list[Candidate] = []
    for ref_id in sorted(by_ref):
        seen: set[int] = set()
        for c in sorted(by_ref[ref_id], key=lambda c: (c.rank, c.bg_image_id, c.ann_id)):
            if c.bg_image_id in seen:
                continue
            seen.add(c.bg_image_id)
            chosen.append(c)
            if len(seen) >= candidates_per_ref:
                break
    return chosen if limit is None else chosen[: max(0, int(limit))]


def _chunk(members: list[Candidate], k: int) -> list[list[Candidate]]:
    """Greedy chunks of at most k objects, never the same annotation twice in one composite."""
    chunks: list[list[Candidate]] = []
    for c in members:
        for ch in chunks:
            if len(ch) < k and all(o.ann_id != c.ann_id for o in ch):
                ch.append(c)
                break
        else:
            chunks.append([c])
    return chunks


def _object_plan(c: Candidate, index: SourceIndex, sample_id: str) -> ObjectPlan:
    ref = index.refs.get(c.ref_id)
    where = f"ref {c.ref_id}, ann {c.ann_id}, source image {c.fg_image_id}, background {c.bg_image_id}"
    problem: tuple[str, str] | None = None
    ann = index.annotations.get(ref.ann_id) if ref is not None else None
    fg = index.images.get(ann.image_id) if ann is not None else None
    if ref is None:
        problem = (STATUS_BAD_SOURCE, f"ref {c.ref_id} is not in {index.name} ({where})")
    elif ref.ann_id != c.ann_id:
        problem = (STATUS_BAD_SOURCE, f"candidate ann {c.ann_id} disagrees with ref {c.ref_id} (ann {ref.ann_id}) in {index.name}")
    elif ann is None:
        problem = (STATUS_BAD_SOURCE, f"annotation {ref.ann_id} of ref {c.ref_id} is not in {index.name}/instances.json")
    elif fg is None:
        problem = (STATUS_BAD_SOURCE, f"image {ann.image_id} of ann {ann.ann_id} is not in {index.name}/instances.json")
    elif c.bg_image_id not in index.images:
        problem = (STATUS_BAD_BACKGROUND, f"background image {c.bg_image_id} is not in {index.name}/instances.json ({where})")
    elif c.bg_image_id == ann.image_id:
        problem = (STATUS_BAD_BACKGROUND, f"background {c.bg_image_id} is the object's own image ({where})")
    return ObjectPlan(sample_id=sample_id, candidate=c, ref=ref, annotation=ann, fg_image=fg, problem=problem)


def _bg_objects(index: SourceIndex, image_id: int) -> tuple[Any, ...]:
    from comcoco.placement.sampler import SceneObject

    return tuple(
        SceneObject(
            category_id=int(a.category_id),
            box=tuple(float(v) for v in a.bbox),  # type: ignore[arg-type]
            referred=a.ann_id in index.referred_anns,
        )
        for a in index.anns_by_image.get(image_id, ())
    )


def plan_groups(
    candidates: Iterable[Candidate], index: SourceIndex, config: ComposeConfig, limit: int | None = None
) -> list[GroupPlan]:
    """Deterministic composites from candidates: one per object, or up to k objects sharing a background."""
    fp = config.fingerprint()
    chosen = select_candidates(candidates, config.candidates_per_ref, limit)
    k = config.objects_per_image
    if k == 1:
        chunks = [[c] for c in chosen]
    else:
        by_bg: dict[int, list[Candidate]] = {}
        for c in chosen:
            by_bg.setdefault(c.bg_image_id, []).append(c)
        chunks = [ch for bg in sorted(by_bg) for ch in _chunk(by_bg[bg], k)]
    groups = []
    for ch in chunks:
        key = None if k == 1 else [[c.ref_id, c.ann_id] for c in ch]
        members = tuple(
            _object_plan(c, index, stable_id("sample", c.ref_id, c.ann_id, c.bg_image_id, config.seed, fp, key))
            for c in ch
        )
        bg_id = ch[0].bg_image_id
        comp_id = members[0].sample_id if k == 1 else stable_id("composite", bg_id, config.seed, fp, key)
        groups.append(
            GroupPlan(
                composite_id=comp_id,
                bg_image_id=bg_id,
                bg_image=index.images.get(bg_id),
                bg_objects=_bg_objects(index, bg_id),
                members=members,
            )
        )
    return groups


# --- composing -----------------------------------------------------------------------------------


@dataclass
class ComposedSample:
    """A sample's row (paths not yet set) and, when ok, its ground truth and mask arrays."""

    row: SampleRow
    ground_truth: np.ndarray | None = None  # RGB uint8, full size
    mask: np.ndarray | None = None  # uint8 0/255, full size
    gt_is_background: bool = False  # the ground truth is the untouched background (shareable encode)


@dataclass
class ComposedGroup:
    composite_id: str
    bg_image_id: int
    composite: np.ndarray | None
    samples: list[ComposedSample] = field(default_factory=list)


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
    avoid: Sequence[tuple[int, int, int, int]],
    config: ComposeConfig,
    models: ComposeModels,
    given_box: tuple[int, int, int, int] | None = None,
) -> Placement:
    from comcoco.placement.sampler import (
        PlacementError,
        PlacementRequest,
        placement_from_params,
        sample_placement,
    )

    bg_h, bg_w = bg.shape[:2]
    rx, ry, rw, rh = shape.rect
    req = PlacementRequest(
        fg_box=(float(rx), float(ry), float(rw), float(rh)),
        fg_image_size=(int(fg.shape[1]), int(fg.shape[0])),
        fg_category_id=int(plan.ref.category_id),  # type: ignore[union-attr]
        bg_size=(int(bg_w), int(bg_h)),
        bg_objects=group.bg_objects,
        avoid=tuple(tuple(float(v) for v in b) for b in avoid),  # type: ignore[misc]
    )
    if given_box is not None:
        pl = _given_placement(req, given_box)
    elif config.placement == "prior":
        pl = sample_placement(req, config.seed, key=plan.sample_id, k=config.placement_k)
    else:
        crop = np.ascontiguousarray(fg[ry : ry + rh, rx : rx + rw])
        if shape.polygons:
            local = [p - np.array([rx, ry], dtype=np.float64) for p in shape.polygons]
            crop_mask = (rasterize_alpha(local, rw, rh) >= 0.5).astype(np.uint8) * 255
        else:
            crop_mask = shape.mask.astype(np.uint8) * 255  # type: ignore[union-attr]
        placer = models.placer
        if placer is None:
            raise ComposeConfigError("--placement graconet needs --graconet-ckpt PATH (no GracoNet loaded)")
        if hasattr(placer, "place"):
            # best of k proposals, scored and constrained like the default sampler (one backbone pass)
            pl = placer.place(req, crop, crop_mask, bg, seed=config.seed, key=plan.sample_id, k=config.placement_k)
        else:
            base_seed = stable_hash64(config.seed, plan.sample_id) & 0x7FFFFFFF
            pl = None
            reasons: list[str] = []
            for attempt in range(GRACONET_ATTEMPTS):
                s, prx, pry = placer.propose(crop, crop_mask, bg, seed=base_seed + attempt)
                try:
                    pl = placement_from_params(req, s, prx, pry)
                    break
                except PlacementError as exc:
                    reasons.append(str(exc))
            if pl is None:
                raise PlacementError(f"{GRACONET_ATTEMPTS} GracoNet proposals rejected: {reasons[0]}")
    x, y, w, h = (int(v) for v in pl.box)
    if w < 1 or h < 1 or x < 0 or y < 0 or x + w > bg_w or y + h > bg_h:
        raise PlacementError(f"box {pl.box} does not fit the {bg_w}x{bg_h} background")
    if any(boxes_overlap((x, y, w, h), b) for b in avoid):
        raise PlacementError(f"box {pl.box} overlaps an object already pasted into this composite")
    return pl


def _given_placement(req: Any, box: Sequence[float]) -> Placement:
    """The placement for a box chosen outside the sampler (a reviewer's correction).

    The box sets scale and position the way GracoNet reads one (``params_from_box``: the limiting side
    gives s, the corner gives rx, ry); the object keeps its aspect ratio, so the final box is the
    ``placement_box`` of those parameters (a box already aspect-true to within a pixel is kept exactly,
    so re-placing an existing box reproduces it). Its plausibility is scored like a sampled one, but a soft
    rejection (e.g. covering a background object) does not overrule the person who chose it; the
    hard limits (inside the frame, no overlap with pasted objects) are checked by the caller.
    """
    from comcoco.placement.sampler import evaluate_box, params_from_box, placement_box

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


def _failed(row: SampleRow, status: str, reason: str) -> ComposedSample:
    return ComposedSample(row=replace(row, status=status, reason=reason))


def compose_group(
    group: GroupPlan,
    images: ImageCache,
    config: ComposeConfig,
    models: ComposeModels | None = None,
    boxes: Mapping[str, Sequence[float]] | None = None,
) -> ComposedGroup:
    """Compose one background with its objects. Bad data yields failure rows, never an exception.

    Objects are pasted in member order, each harmonized on the running composite, inside its own
    box, so object i's ground truth is the final composite with only object i's pixels restored to
    the background: exact outside object i's mask.

    ``boxes`` (sample id → x, y, w, h in background pixels) skips placement sampling for those
    members: review uses it to recompose a sample from a corrected box (see ``_given_placement``).
    """
    from comcoco.harmonize.fit import harmonize
    from comcoco.placement.sampler import PlacementError

    models = models or ComposeModels()
    fp = config.fingerprint()
    rows = [_base_row(m, group.composite_id, config, fp) for m in group.members]
    out = ComposedGroup(composite_id=group.composite_id, bg_image_id=group.bg_image_id, composite=None)
    pending = [(m, r) for m, r in zip(group.members, rows, strict=True)]
    bg: np.ndarray | None = None
    if group.bg_image is not None and any(m.problem is None for m in group.members):
        try:
            bg = images.get(group.bg_image)
        except ImageLoadError as exc:
            reason = f"background image {group.bg_image_id}: {exc}"
            out.samples = [
                _failed(r, *(m.problem or (STATUS_BAD_BACKGROUND, reason))) for m, r in pending
            ]
            return out
    canvas = bg.copy() if bg is not None else None
    done: list[tuple[ComposedSample, Cutout]] = []
    avoid: list[tuple[int, int, int, int]] = []
    for m, row in pending:
        if m.problem is not None:
            out.samples.append(_failed(row, *m.problem))
            continue
        assert canvas is not None and bg is not None and m.fg_image is not None and m.annotation is not None
        ids = f"ref {m.candidate.ref_id}, ann {m.annotation.ann_id}"
        try:
            fg = images.get(m.fg_image)
        except ImageLoadError as exc:
            out.samples.append(_failed(row, STATUS_BAD_SOURCE, f"source image {m.fg_image.image_id} ({ids}): {exc}"))
            continue
        try:
            shape = object_shape(m.annotation.segmentation, fg.shape[1], fg.shape[0])
        except CutoutError as exc:
            out.samples.append(_failed(row, STATUS_BAD_SOURCE, f"ann {m.annotation.ann_id} of ref {m.candidate.ref_id} in image {m.fg_image.image_id}: {exc}"))
            continue
        try:
            given = boxes.get(m.sample_id) if boxes else None
            pl = _place(m, shape, fg, bg, group, avoid, config, models,
                        None if given is None else tuple(int(round(float(v))) for v in given))  # type: ignore[arg-type]
            cut = cut_object(fg, shape, tuple(int(v) for v in pl.box))  # type: ignore[arg-type]
        except (PlacementError, ValueError) as exc:  # CutoutError is a ValueError; so are NaN proposals
            out.samples.append(_failed(row, STATUS_PLACEMENT_FAILED, f"{ids} into background {group.bg_image_id}: {exc}"))
            continue
        if not cut.mask.any():
            out.samples.append(_failed(row, STATUS_PLACEMENT_FAILED, f"{ids}: mask is empty at the placed size {cut.box[2]}x{cut.box[3]}"))
            continue
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
            out.samples.append(_failed(row, STATUS_HARMONIZE_FAILED, f"{ids} ({config.harmonize}): {type(exc).__name__}: {exc}"))
            continue
        touched = cut.alpha > 0
        region = canvas[y : y + h, x : x + w]
        region[touched] = harmonized[y : y + h, x : x + w][touched]
        mask = full_mask(cut, canvas.shape[0], canvas.shape[1])
        row = replace(
            row,
            box_x=x, box_y=y, box_w=w, box_h=h,
            s=float(pl.s), rx=float(pl.rx), ry=float(pl.ry),
            plausibility=None if pl.score is None or math.isnan(float(pl.score)) else float(pl.score),
            polygon=polygons_json(cut.polygons),
            mask_area=int(np.count_nonzero(mask)),
        ).with_filters(args)
        cs = ComposedSample(row=row, mask=mask)
        out.samples.append(cs)
        done.append((cs, cut))
        avoid.append(cut.box)
    if not done:
        return out
    assert canvas is not None and bg is not None
    out.composite = canvas
    for cs, cut in done:
        others = [o for o, _ in done if o is not cs]
        cs.row = replace(
            cs.row,
            objects=tuple(o.row.sample_id for o in others),
            object_ann_ids=tuple(o.row.fg_ann_id for o in others),
        )
        if not others:
            cs.ground_truth, cs.gt_is_background = bg, True
        else:
            gt = canvas.copy()
            x, y, w, h = cut.box
            touched = cut.alpha > 0
            gt[y : y + h, x : x + w][touched] = bg[y : y + h, x : x + w][touched]
            cs.ground_truth = gt
    return out


def compose_sample(
    plan: ObjectPlan, group: GroupPlan, images: ImageCache, config: ComposeConfig, models: ComposeModels | None = None
) -> ComposedGroup:
    """One object into its background alone (``group`` supplies the background and its objects)."""
    return compose_group(replace(group, composite_id=plan.sample_id, members=(plan,)), images, config, models)


# --- writing -------------------------------------------------------------------------------------


def encode_image(rgb: np.ndarray, config: ComposeConfig) -> bytes:
    """PNG (lossless, fast zlib level) or JPEG with the configured quality."""
    if rgb.ndim == 2:
        bgr = rgb
    else:
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if config.image_format == "jpeg" and rgb.ndim == 3:
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(config.jpeg_quality)])
    else:
        ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, int(config.png_compression)])
    if not ok:
        raise RuntimeError(f"could not encode a {rgb.shape} image")
    return buf.tobytes()


def outside_error(composite: bytes, ground_truth: bytes, mask: np.ndarray, radius: int = FIDELITY_RADIUS) -> float:
    """Mean absolute difference (0–255) of the decoded pair outside the mask grown by ``radius``."""
    a = cv2.imdecode(np.frombuffer(composite, np.uint8), cv2.IMREAD_COLOR)
    b = cv2.imdecode(np.frombuffer(ground_truth, np.uint8), cv2.IMREAD_COLOR)
    keep = ~dilated(mask, radius)
    if not keep.any():
        return 0.0
    return float(np.abs(a[keep].astype(np.int16) - b[keep].astype(np.int16)).mean())


def _write_file(path: Path, data: bytes) -> None:
    """Write beside the target, then rename: a file never exists half-written under its name.

    No fsync per file (it would cost more than the encode); ``run_compose`` flushes once with
    ``os.sync()`` before it writes samples.parquet, which therefore marks the images durable.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class _BytesLRU(OrderedDict):
    def __init__(self, maxsize: int = 8):
        super().__init__()
        self.maxsize = maxsize

    def put(self, key: Any, value: bytes) -> None:
        self[key] = value
        self.move_to_end(key)
        if len(self) > self.maxsize:
            self.popitem(last=False)


def write_group(
    out_dir: str | Path, composed: ComposedGroup, config: ComposeConfig, encoded: _BytesLRU | None = None
) -> list[SampleRow]:
    """Encode and write a composed group's images (write-then-rename); return its rows with paths filled.

    Paths: ``images/<composite_id>.<ext>``, ``gt/<sample_id>.<ext>``, ``masks/<sample_id>.png``.
    ``encoded`` caches ground-truth bytes of plain backgrounds, which many samples share.
    """
    out_dir = Path(out_dir)
    ext = config.image_ext
    rows: list[SampleRow] = []
    if composed.composite is None:
        return [cs.row for cs in composed.samples]
    comp_rel = f"images/{composed.composite_id}.{ext}"
    comp_bytes = encode_image(composed.composite, config)
    _write_file(out_dir / comp_rel, comp_bytes)
    for cs in composed.samples:
        if cs.ground_truth is None or cs.mask is None:
            rows.append(cs.row)
            continue
        key = ("bg", composed.bg_image_id)
        gt_bytes = encoded.get(key) if (encoded is not None and cs.gt_is_background) else None
        if gt_bytes is None:
            gt_bytes = encode_image(cs.ground_truth, config)
            if encoded is not None and cs.gt_is_background:
                encoded.put(key, gt_bytes)
        gt_rel = f"gt/{cs.row.sample_id}.{ext}"
        mask_rel = f"masks/{cs.row.sample_id}.png"
        _write_file(out_dir / gt_rel, gt_bytes)
        _write_file(out_dir / mask_rel, encode_image(cs.mask, config))
        err = outside_error(comp_bytes, gt_bytes, cs.mask) if config.image_format == "jpeg" else 0.0
        rows.append(replace(cs.row, composite=comp_rel, ground_truth=gt_rel, mask=mask_rel, outside_error=err))
    return rows


def run_compose(
    source: Any,
    candidates: Sequence[Candidate] | str | Path,
    out_dir: str | Path,
    config: ComposeConfig,
    limit: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    models: ComposeModels | None = None,
) -> list[SampleRow]:
    """Compose every planned sample into ``out_dir`` and write ``out_dir/samples.parquet``.

    ``source`` is a ReferSource (or a prebuilt SourceIndex); ``candidates`` a list or a Parquet path.
    Returns the rows sorted by sample_id.
    """
    config.validate()
    if isinstance(candidates, str | Path):
        from comcoco.matching.scene import read_candidates

        candidates = read_candidates(candidates)
    index = source if isinstance(source, SourceIndex) else SourceIndex.from_source(source)
    models = models if models is not None else load_models(config)
    groups = plan_groups(candidates, index, config, limit)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = ImageCache(index.image_path)
    encoded = _BytesLRU()
    rows: list[SampleRow] = []
    for i, g in enumerate(groups):
        rows.extend(write_group(out_dir, compose_group(g, cache, config, models), config, encoded))
        if progress is not None:
            progress(i + 1, len(groups))
    os.sync()  # one flush for every image written above, before the table that lists them
    write_samples(out_dir / "samples.parquet", rows)
    meta = {"config": asdict(config), "fingerprint": config.fingerprint(), "samples": len(rows)}
    write_text_atomic(out_dir / "compose.json", json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return sorted(rows, key=lambda r: r.sample_id)
