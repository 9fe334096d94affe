"""Pulling finished annotations from Label Studio and applying them to the work directory.

Placement (stage 1): *accept* keeps the sample; *reject* leaves it out of the release (the decision
carries reviewer and reason); *adjust* recomposes the sample from the corrected box — placed, cut and
harmonized again by the compose engine, its files replaced and its row updated in the shard's
``samples.parquet`` — and sends it back to stage 1 as a task of the next round for a look.
Expressions (stage 2): the kept and dropped expressions and the spatial phrases are stored.

Every decision lands in ``WORKDIR/review/decisions.parquet`` with reviewer id and time. Which
annotations were applied is kept in ``WORKDIR/review/applied.json`` by annotation id and update time,
so pulling again applies nothing twice, and an annotation edited in Label Studio is applied again.

Crash safety, in the order of one annotation's application:

1. side effects (the recomposition: new files written beside the shard, then renamed over the old
   ones, then the shard's table) — deterministic, so redoing them gives the same bytes;
2. the decision is merged (same decision again changes nothing);
3. the annotation is recorded as applied.

An interruption anywhere leaves the annotation unrecorded, and the next pull redoes steps 1–3 with
the same result: nothing is lost and nothing counts twice. ``status.parquet`` and ``manifest.json`` are
refreshed once at the end; the work directory's stale flag (``Workdir.mark_stale``), raised before the
first recomposition and cleared by the refresh, makes an interrupted pull refresh them on its next run
and keeps a release from reading the stale table meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from comcoco.errors import ComcocoError
from comcoco.records import PLACEMENT_DECISIONS, Placement, ReviewDecision
from comcoco.review.push import (
    ReviewError,
    WorkdirView,
    _read_json,
    _write_json,
    check_stage,
    percent_to_box,
    push,
    read_projects,
    read_tasks,
    sync_tasks,
)
from comcoco.review.server import ReviewServer
from comcoco.workdir import REVIEW_DIR, Workdir, WorkdirError, as_workdir

APPLIED_FILE = "applied.json"


class AnnotationError(ComcocoError, ValueError):
    """An annotation that cannot become a decision (no choice made, adjust without a box, ...)."""


class RecomposeError(ComcocoError):
    """A corrected box cannot be composed (e.g. it overlaps another object pasted into the composite)."""


# --- the applied ledger ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Applied:
    """One annotation that a pull has dealt with, and how."""

    annotation_id: int
    updated_at: str
    stage: str
    task_id: int
    sample_id: str
    outcome: str  # the decision applied, "superseded", or "error: <why>"


def _applied_path(workdir: str | Path) -> Path:
    return Path(workdir) / REVIEW_DIR / APPLIED_FILE


def read_applied(workdir: str | Path) -> dict[int, Applied]:
    path = _applied_path(workdir)
    out: dict[int, Applied] = {}
    for i, rec in enumerate(_read_json(path, [])):
        try:
            a = Applied(**rec)
        except TypeError:
            raise ReviewError(f"{path}: entry {i} is not an applied-annotation record: {rec!r}") from None
        out[a.annotation_id] = a
    return out


def _record_applied(workdir: str | Path, applied: dict[int, Applied], a: Applied) -> None:
    applied[a.annotation_id] = a
    _write_json(_applied_path(workdir), [vars(applied[k]) for k in sorted(applied)])


# --- annotations → decisions --------------------------------------------------------------------------


def _results(annotation: Mapping[str, Any], from_name: str) -> list[dict[str, Any]]:
    return [r for r in annotation.get("result") or () if r.get("from_name") == from_name]


def _texts(annotation: Mapping[str, Any], from_name: str) -> list[str]:
    out: list[str] = []
    for r in _results(annotation, from_name):
        for t in r.get("value", {}).get("text") or ():
            for line in str(t).splitlines():
                line = " ".join(line.split())
                if line and line not in out:
                    out.append(line)
    return out


def _utc(stamp: str) -> str:
    """Label Studio's timestamp as ISO 8601 UTC with a ``Z`` (stable text for the decision store)."""
    try:
        dt = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except (AttributeError, ValueError):
        return str(stamp)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def latest_annotation(task: Mapping[str, Any]) -> dict[str, Any] | None:
    """The task's most recently updated annotation that was submitted (not skipped); None if none."""
    live = [a for a in task.get("annotations") or () if not a.get("was_cancelled")]
    if not live:
        return None
    return max(live, key=lambda a: (_utc(a.get("updated_at") or ""), int(a["id"])))


def annotation_decision(
    stage: str, task: Mapping[str, Any], annotation: Mapping[str, Any], view: WorkdirView, reviewer: str
) -> ReviewDecision:
    """The ReviewDecision an annotation expresses; AnnotationError when it is incomplete."""
    sid = task["data"]["sample_id"]
    row = view.rows.get(sid)
    where = f"task {task['id']} (sample {sid}), annotation {annotation['id']}"
    if row is None:
        raise AnnotationError(f"{where}: sample is not in this work directory")
    base = {"sample_id": sid, "stage": stage, "reviewer": reviewer,
            "reviewed_at": _utc(annotation.get("updated_at") or annotation.get("created_at") or ""),
            "task_id": int(task["id"]), "annotation_id": int(annotation["id"])}
    if stage == "placement":
        choices = [c for r in _results(annotation, "decision") for c in r.get("value", {}).get("choices") or ()]
        if len(choices) != 1 or choices[0] not in PLACEMENT_DECISIONS:
            raise AnnotationError(f"{where}: expected one of {'/'.join(PLACEMENT_DECISIONS)}, got {choices!r}")
        decision = choices[0]
        box = None
        if decision == "adjust":
            rects = _results(annotation, "box")
            if not rects:
                raise AnnotationError(f"{where}: 'adjust' without a box")
            r = rects[-1]
            size = (r.get("original_width"), r.get("original_height"))
            if not all(isinstance(v, int | float) and v > 0 for v in size):
                size = view.image_size(row)
            box = percent_to_box(r["value"], size)  # type: ignore[arg-type]
            if box[2] < 1 or box[3] < 1:
                raise AnnotationError(f"{where}: the adjusted box {box} is empty")
        return ReviewDecision(decision=decision, reason=" ".join(_texts(annotation, "reason")), box=box, **base)
    sent_ids = [s.sent_id for s in view.sentences(row)]
    kept_aliases = [c for r in _results(annotation, "keep") for c in r.get("value", {}).get("choices") or ()]
    try:
        kept = sorted({int(a) for a in kept_aliases})
    except ValueError:
        raise AnnotationError(f"{where}: kept expressions {kept_aliases!r} are not sentence ids") from None
    unknown = sorted(set(kept) - set(sent_ids))
    if unknown:
        raise AnnotationError(f"{where}: kept expressions {unknown} are not the object's sentences {sent_ids}")
    phrases = _texts(annotation, "spatial") + [t for t in _texts(annotation, "more") if t not in _texts(annotation, "spatial")]
    return ReviewDecision(
        decision="done",
        kept_sent_ids=tuple(kept),
        dropped_sent_ids=tuple(sorted(set(sent_ids) - set(kept))),
        spatial_phrases=tuple(phrases),
        **base,
    )


# --- recomposing a sample from a corrected box -----------------------------------------------------


@dataclass(frozen=True)
class Recomposed:
    sample_id: str
    changed: bool
    box: tuple[int, int, int, int]
    plausibility: float | None


def recompose_sample(workdir: Workdir | str | Path, sample_id: str, box: Sequence[int]) -> Recomposed:
    """Recompose ``sample_id``'s composite with its object at ``box``, in place in the work directory.

    The other objects of the composite keep their boxes; every object is harmonized again. The shard
    writer (``comcoco.shards.rewrite_composite``) swaps the new files in; the same box again gives the
    same rows and writes nothing (``changed`` False). ``status.parquet`` is not touched here (see
    ``comcoco.build.refresh_status``).
    """
    from comcoco.compose.engine import compose_group
    from comcoco.plan import PlanMismatchError, groups_from_rows
    from comcoco.shards import rewrite_composite
    from comcoco.sources.images import ImageCache

    wd = as_workdir(workdir)
    try:
        config = wd.config()
        plan = wd.plan_rows()
    except WorkdirError as exc:
        raise ReviewError(str(exc)) from None
    target = next((r for r in plan if r.sample_id == sample_id), None)
    if target is None:
        raise ReviewError(f"{wd.root}: sample {sample_id} is not in the plan")
    if not wd.is_complete(target.shard):
        raise ReviewError(f"{wd.root}: the shard of sample {sample_id} is not complete")
    members = [r for r in wd.shard_samples(target.shard) if r.composite_id == target.composite_id]
    plan_rows = sorted((r for r in plan if r.composite_id == target.composite_id), key=lambda r: r.member)
    index = wd.index()
    try:
        groups = groups_from_rows(plan_rows, index, config.compose)
    except PlanMismatchError as exc:
        raise ReviewError(f"sample {sample_id}: {exc}") from None
    boxes: dict[str, Sequence[int] | Placement] = {
        r.sample_id: Placement(s=r.s, rx=r.rx, ry=r.ry, box=r.box, score=r.plausibility)  # type: ignore[arg-type]
        for r in members if r.ok and r.box is not None and r.sample_id != sample_id}
    boxes[sample_id] = tuple(int(v) for v in box)
    composed = compose_group(groups[0], ImageCache(index.image_path), config.compose, wd.models(), boxes)
    new_by_id = {cs.row.sample_id: cs.row for cs in composed.samples}
    for old in members:
        new = new_by_id.get(old.sample_id)
        if new is None or (old.ok and not new.ok):
            why = new.reason if new is not None else "missing from the recomposition"
            raise RecomposeError(f"sample {sample_id}: box {tuple(box)} cannot be composed: {old.sample_id}: {why}")
    changed, rows = rewrite_composite(wd, target.shard, composed)
    new_row = next(r for r in rows if r.sample_id == sample_id)
    return Recomposed(sample_id, changed, new_row.box, new_row.plausibility)  # type: ignore[arg-type]


# --- pulling ---------------------------------------------------------------------------------------------


@dataclass
class PullReport:
    stage: str
    project_id: int
    tasks: int = 0
    pending: int = 0  # tasks without a submitted annotation
    unchanged: int = 0  # annotations applied by an earlier pull
    applied: dict[str, int] = field(default_factory=dict)  # decision → count, this pull
    recomposed: list[str] = field(default_factory=list)
    superseded: int = 0
    errors: list[str] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)  # task ids deleted on the server
    sent_back: int = 0  # adjusted samples pushed again to stage 1
    messages: list[str] = field(default_factory=list)


def _apply(wd: Workdir, d: ReviewDecision, rec: Applied, task_round: int, rounds: Mapping[int, int],
           report: PullReport) -> Applied:
    """Apply one decision (recompose first for an adjust) unless a later round already decided;
    returns the ledger record with its outcome."""
    current = wd.decisions().get((d.sample_id, d.stage))
    if current is not None and current.task_id is not None and current.task_id != d.task_id \
            and rounds.get(current.task_id, 0) > task_round:
        report.superseded += 1
        return replace(rec, outcome="superseded")
    try:
        if d.decision == "adjust":
            assert d.box is not None
            wd.mark_stale()
            result = recompose_sample(wd, d.sample_id, d.box)
            if result.changed:
                report.recomposed.append(d.sample_id)
        wd.merge_decisions([d])
    except RecomposeError as exc:
        report.errors.append(f"task {rec.task_id}: {exc}")
        return replace(rec, outcome=f"error: {exc}")
    report.applied[d.decision] = report.applied.get(d.decision, 0) + 1
    return replace(rec, outcome=d.decision)


def pull(
    workdir: str | Path,
    stage: str,
    server: ReviewServer,
    document_root: str | Path,
    after_each: Callable[[Applied], None] | None = None,
) -> PullReport:
    """Fetch the stage's finished annotations and apply the new ones (see the module docstring).

    ``after_each`` is called after every annotation dealt with (progress reporting; tests use it to
    interrupt a pull halfway).
    """
    check_stage(stage)
    workdir = Path(workdir)
    entry = read_projects(workdir).get(stage)
    if entry is None:
        raise ReviewError(f"{workdir}: nothing pushed for stage {stage} yet (run `comcoco review push --stage {stage}` first)")
    pid = int(entry["id"])
    report = PullReport(stage, pid)
    if not server.project_exists(pid):
        report.messages.append(f"{stage}: project {pid} was deleted on the server; its unapplied annotations are lost "
                               "(push again to create a new project)")
        return report
    from comcoco.build import refresh_status

    wd = Workdir(workdir)
    if wd.stale:
        refresh_status(wd)
    view = WorkdirView.load(wd)
    _, missing, _ = sync_tasks(server, workdir, stage, pid)
    report.missing = [t.task_id for t in missing]
    rounds = {t.task_id: t.round for t in read_tasks(workdir)}
    applied = read_applied(workdir)
    tasks = server.export(pid)
    report.tasks = len(tasks)
    for task in tasks:
        data = task.get("data") or {}
        if not isinstance(data.get("sample_id"), str):
            report.errors.append(f"task {task.get('id')}: no sample_id in its data; not a comcoco task")
            continue
        ann = latest_annotation(task)
        if ann is None:
            report.pending += 1
            continue
        stamp = _utc(ann.get("updated_at") or "")
        prev = applied.get(int(ann["id"]))
        if prev is not None and prev.updated_at == stamp:
            report.unchanged += 1
            continue
        sid = data["sample_id"]
        rec = Applied(int(ann["id"]), stamp, stage, int(task["id"]), sid, "")
        try:
            d = annotation_decision(stage, task, ann, view, server.reviewer_name(ann.get("completed_by")))
        except (AnnotationError, ReviewError) as exc:
            report.errors.append(str(exc))
            rec = replace(rec, outcome=f"error: {exc}")
        else:
            rec = _apply(wd, d, rec, int(data.get("round", 0) or 0), rounds, report)
        _record_applied(workdir, applied, rec)
        if after_each is not None:
            after_each(rec)
    if wd.stale:  # raised by a recomposition of this pull (or an earlier, interrupted one)
        refresh_status(wd)
    if stage == "placement":
        adjusted = {k[0] for k, d in wd.decisions().items() if k[1] == "placement" and d.decision == "adjust"}
        if adjusted:
            back = push(workdir, "placement", server, document_root, only=adjusted)
            report.sent_back = back.imported
    return report
