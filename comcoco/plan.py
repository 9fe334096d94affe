"""The build plan: composites from candidates, one row per sample with a stable id, cut into fixed
shards, frozen on disk.

``plan_groups`` decides what will be made: which objects go into which background, in which
composite, under which ids (a hash of the inputs and the composing configuration's fingerprint).
A plan is computed once from the candidates and the configuration, saved in the work directory with
that configuration, and every later run (resume, retry, another runner) works from the saved copy.
Resuming with a different configuration or shard size is refused, naming what differs, because the
sample ids and shard contents would no longer match what is already on disk.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from functools import cached_property
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from comcoco.config import (  # noqa: F401 (the configuration a plan is made with; importable from here)
    DEFAULT_SHARD_SIZE,
    BuildConfig,
    BuildConfigError,
    ComposeConfig,
    SourceSpec,
)
from comcoco.errors import ComcocoError
from comcoco.ids import stable_id
from comcoco.io import write_bytes_atomic, write_text_atomic
from comcoco.records import (
    STATUS_BAD_BACKGROUND,
    STATUS_BAD_SOURCE,
    Annotation,
    Candidate,
    ImageInfo,
    Ref,
    release_split_or_none,
)

PLAN_FILE = "plan.parquet"
PLAN_META = "plan.json"
STATUS_FILE = "status.parquet"  # the work directory's status table (comcoco.workdir)
CANDIDATES_FILE = "candidates.parquet"


class PlanMismatchError(ComcocoError):
    """The work directory was planned with another configuration."""


class PlanFileError(ComcocoError):
    """``plan.json`` or ``plan.parquet`` cannot be read (the message names the file)."""


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Human-readable differences between two configuration dicts ("key: saved → current")."""
    a, b = _flatten(saved), _flatten(current)
    return [f"{k}: {a.get(k)!r} (planned) vs {b.get(k)!r} (now)" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


# --- composites from candidates -------------------------------------------------------------------

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

    @cached_property
    def refs_by_ann(self) -> dict[int, tuple[Ref, ...]]:
        """Every ref of an annotation (decoys that are themselves referred must be told apart)."""
        out: dict[int, list[Ref]] = {}
        for rid in sorted(self.refs):
            out.setdefault(self.refs[rid].ann_id, []).append(self.refs[rid])
        return {a: tuple(v) for a, v in out.items()}

    @classmethod
    def from_source(cls, source: Any) -> SourceIndex:
        """Index a ReferSource (comcoco.sources.refer) once per run."""
        # a ref whose split maps to no release split is left out (inspect reports it: unknown_split)
        refs = {r.ref_id: r for r in source.refs() if release_split_or_none(r.split) is not None}
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
class DecoyPlan:
    """A look-alike pasted into a composite that no sample refers to (``comcoco.matching.decoys``)."""

    key: str  # stable id: seeds its placement and paste
    annotation: Annotation
    fg_image: ImageInfo
    target: str  # the sample id of the target whose source photo it comes from

    def as_object(self, target: ObjectPlan) -> ObjectPlan:
        """The decoy as an object plan (placed and pasted as targets are; it makes no sample)."""
        c = target.candidate
        cand = Candidate(ref_id=c.ref_id, ann_id=self.annotation.ann_id, fg_image_id=self.fg_image.image_id,
                         category_id=self.annotation.category_id, cluster=c.cluster, rank=c.rank,
                         bg_image_id=c.bg_image_id, similarity=c.similarity)
        return ObjectPlan(sample_id=self.key, candidate=cand, ref=None, annotation=self.annotation,
                          fg_image=self.fg_image)


@dataclass(frozen=True)
class GroupPlan:
    """One composite: a background and the objects pasted into it (one unless objects_per_image > 1)."""

    composite_id: str
    bg_image_id: int
    bg_image: ImageInfo | None
    bg_objects: tuple[Any, ...]  # comcoco.placement.sampler.SceneObject
    members: tuple[ObjectPlan, ...]
    bg_annotations: tuple[Annotation, ...] = ()  # the background's own objects (their shadows show the light)
    decoys: tuple[DecoyPlan, ...] = ()  # robust: look-alikes no sample refers to


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


def _paper_groups(candidates: Iterable[Candidate], config: ComposeConfig, k: int,
                  limit: int | None) -> list[list[Candidate]]:
    """One object per composite, or up to ``k`` objects whose best candidate is the same background."""
    chosen = select_candidates(candidates, config.candidates_per_ref, limit)
    if k == 1:
        return [[c] for c in chosen]
    by_bg: dict[int, list[Candidate]] = {}
    for c in chosen:
        by_bg.setdefault(c.bg_image_id, []).append(c)
    return [ch for bg in sorted(by_bg) for ch in _chunk(by_bg[bg], k)]


def _target_groups(candidates: Iterable[Candidate], index: SourceIndex, config: ComposeConfig, k: int,
                   limit: int | None) -> list[list[Candidate]]:
    """Robust composites: up to ``k`` distinguishable targets on one of their matched backgrounds
    (``comcoco.matching.targets``); ``limit`` keeps the first refs by id."""
    from comcoco.matching.targets import group_targets

    cands = list(candidates)
    if limit is not None:
        keep = set(sorted({c.ref_id for c in cands})[: max(0, int(limit))])
        cands = [c for c in cands if c.ref_id in keep]
    return group_targets(cands, index.refs, k, config.seed)


def plan_groups(
    candidates: Iterable[Candidate], index: SourceIndex, config: ComposeConfig, limit: int | None = None
) -> list[GroupPlan]:
    """Deterministic composites from candidates: one per object, or up to k objects sharing a background
    (robust profile: k distinguishable targets, ``comcoco.matching.targets``)."""
    fp = config.fingerprint()
    k = int(config.objects_per_image or 1)
    chunks = _target_groups(candidates, index, config, k, limit) if config.robust and k > 1 else \
        _paper_groups(candidates, config, k, limit)
    return [_group_plan(ch, index, config, fp, k) for ch in chunks]


def _group_plan(ch: Sequence[Candidate], index: SourceIndex, config: ComposeConfig, fp: str, k: int) -> GroupPlan:
    """One composite of the chunk ``ch`` (members in order); its ids hash the inputs and the configuration."""
    key = None if k == 1 else [[c.ref_id, c.ann_id] for c in ch]
    members = tuple(
        _object_plan(c, index, stable_id("sample", c.ref_id, c.ann_id, c.bg_image_id, config.seed, fp, key))
        for c in ch
    )
    bg_id = ch[0].bg_image_id
    comp_id = members[0].sample_id if k == 1 else stable_id("composite", bg_id, config.seed, fp, key)
    return GroupPlan(
        composite_id=comp_id,
        bg_image_id=bg_id,
        bg_image=index.images.get(bg_id),
        bg_objects=_bg_objects(index, bg_id),
        members=members,
        bg_annotations=tuple(index.anns_by_image.get(bg_id, ())) if config.robust else (),
        decoys=_decoys(members, index, config, comp_id),
    )


def _decoys(members: Sequence[ObjectPlan], index: SourceIndex, config: ComposeConfig,
            comp_id: str) -> tuple[DecoyPlan, ...]:
    """The composite's look-alikes, chosen from its usable targets' own photos (none without targets)."""
    if not config.decoys:
        return ()
    from comcoco.matching.decoys import choose_decoys

    usable = [m for m in members if m.problem is None]
    chosen = choose_decoys([(m.ref, m.annotation) for m in usable], index.anns_by_image,  # type: ignore[misc]
                           index.refs_by_ann, int(config.decoys), config.seed, comp_id)
    return tuple(DecoyPlan(key=stable_id("decoy", comp_id, a.ann_id), annotation=a,
                           fg_image=usable[i].fg_image, target=usable[i].sample_id)  # type: ignore[arg-type]
                 for i, a in chosen)


def groups_from_rows(rows: Sequence[PlanRow], index: SourceIndex, config: ComposeConfig) -> list[GroupPlan]:
    """The composites a frozen plan's rows describe (members in their planned order).

    Their ids are computed again from the rows' inputs; a plan whose ids come out differently was made by
    another comcoco version, and is refused rather than silently composed under other names.
    """
    fp = config.fingerprint()
    k = int(config.objects_per_image or 1)
    by_comp: dict[str, list[PlanRow]] = {}
    for r in rows:
        by_comp.setdefault(r.composite_id, []).append(r)
    groups = []
    for comp_id in sorted(by_comp):
        members = sorted(by_comp[comp_id], key=lambda r: r.member)
        g = _group_plan([r.candidate() for r in members], index, config, fp, k)
        if g.composite_id != comp_id or [m.sample_id for m in g.members] != [r.sample_id for r in members]:
            raise PlanMismatchError(f"composite {comp_id}: the plan's sample ids cannot be reproduced (the work "
                                    "directory was planned by another comcoco version); rebuild into a new one")
        groups.append(g)
    return groups


# --- the plan table --------------------------------------------------------------------------------

_PLAN_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("composite_id", pa.string(), nullable=False),
        pa.field("shard", pa.int32(), nullable=False),
        pa.field("member", pa.int32(), nullable=False),
        pa.field("ref_id", pa.int64(), nullable=False),
        pa.field("ann_id", pa.int64(), nullable=False),
        pa.field("fg_image_id", pa.int64(), nullable=False),
        pa.field("category_id", pa.int64(), nullable=False),
        pa.field("cluster", pa.int32(), nullable=False),
        pa.field("rank", pa.int32(), nullable=False),
        pa.field("bg_image_id", pa.int64(), nullable=False),
        pa.field("similarity", pa.float64(), nullable=False),
    ]
)


@dataclass(frozen=True)
class PlanRow:
    sample_id: str
    composite_id: str
    shard: int
    member: int
    ref_id: int
    ann_id: int
    fg_image_id: int
    category_id: int
    cluster: int
    rank: int
    bg_image_id: int
    similarity: float

    def candidate(self) -> Candidate:
        return Candidate(
            ref_id=self.ref_id, ann_id=self.ann_id, fg_image_id=self.fg_image_id, category_id=self.category_id,
            cluster=self.cluster, rank=self.rank, bg_image_id=self.bg_image_id, similarity=self.similarity,
        )


def cut_into_shards(groups: Sequence[GroupPlan], shard_size: int) -> list[PlanRow]:
    """Plan rows for ``groups``: ordered by composite id, cut into shards of about ``shard_size`` samples.

    A composite never straddles two shards (its objects are made together); a shard closes when the
    next composite would take it past ``shard_size``.
    """
    if shard_size < 1:
        raise ValueError(f"shard size must be at least 1, got {shard_size}")
    rows: list[PlanRow] = []
    shard, filled = 0, 0
    for g in sorted(groups, key=lambda g: g.composite_id):
        n = len(g.members)
        if filled and filled + n > shard_size:
            shard, filled = shard + 1, 0
        for i, m in enumerate(g.members):
            c = m.candidate
            rows.append(PlanRow(m.sample_id, g.composite_id, shard, i, int(c.ref_id), int(c.ann_id),
                                int(c.fg_image_id), int(c.category_id), int(c.cluster), int(c.rank),
                                int(c.bg_image_id), float(c.similarity)))
        filled += n
    return rows


def plan_table(rows: Sequence[PlanRow]) -> pa.Table:
    cols = {f.name: [getattr(r, f.name) for r in rows] for f in fields(PlanRow)}
    return pa.table(cols, schema=_PLAN_SCHEMA)


def write_plan(workdir: str | Path, rows: Sequence[PlanRow], meta: dict[str, Any]) -> None:
    """Save the plan table and its metadata (config, source, counts) atomically."""
    import io

    workdir = Path(workdir)
    buf = io.BytesIO()
    pq.write_table(plan_table(rows), buf, compression="zstd", write_statistics=False)
    write_bytes_atomic(workdir / PLAN_FILE, buf.getvalue())
    write_text_atomic(workdir / PLAN_META, json.dumps(meta, indent=2, sort_keys=True) + "\n")


def read_plan(workdir: str | Path) -> list[PlanRow]:
    path = Path(workdir) / PLAN_FILE
    try:
        table = pq.read_table(path)
        data = table.to_pydict()
        return [PlanRow(**{f.name: data[f.name][i] for f in fields(PlanRow)}) for i in range(table.num_rows)]
    except FileNotFoundError:
        raise PlanFileError(f"{path}: missing; the work directory was not planned (run `comcoco build`)") from None
    except (pa.ArrowException, OSError, KeyError, TypeError) as exc:
        raise PlanFileError(f"{path}: not a readable plan ({type(exc).__name__}: {exc}); "
                            "build into a new work directory") from None


def read_plan_meta(workdir: str | Path) -> dict[str, Any] | None:
    p = Path(workdir) / PLAN_META
    if not p.is_file():
        return None
    try:
        meta = json.loads(p.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise PlanFileError(f"{p}: not readable as JSON ({exc}); build into a new work directory") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict) or not isinstance(meta.get("source"), dict):
        raise PlanFileError(f"{p}: not a comcoco plan (no config or source); build into a new work directory")
    return meta


def check_resume(workdir: str | Path, config: BuildConfig, source: SourceSpec) -> dict[str, Any] | None:
    """The saved plan metadata if it agrees with ``config`` and ``source``; refuse otherwise."""
    meta = read_plan_meta(workdir)
    if meta is None:
        return None
    saved = meta["config"]
    try:  # a plan from before a field existed reads as that field's old value (BuildConfig.from_dict)
        saved = BuildConfig.from_dict(saved).to_dict()
    except (TypeError, ValueError):
        pass  # an unreadable configuration is compared as written, so every difference is listed
    diffs = config_differences(saved, config.to_dict())
    diffs += config_differences({"source": meta["source"]}, {"source": asdict(source)})
    if diffs:
        raise PlanMismatchError(
            f"{Path(workdir) / PLAN_META}: this work directory was planned with another configuration; "
            "use a new work directory or the same options. Differences: " + "; ".join(diffs)
        )
    return meta


def shard_ids(rows: Sequence[PlanRow]) -> list[int]:
    return sorted({r.shard for r in rows})
