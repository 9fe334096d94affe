"""Pulling annotations from Label Studio: record every annotator's answer, resolve, apply.

A pull asks the server only for tasks with annotations changed since the last complete pull (the
project's tasks filtered on their update time, less a minute of margin, then exported a hundred at a
time), so pulling again with nothing new takes a second whatever the project's size. Every submitted
annotation, of every annotator, is read (``comcoco.review.answers``) into the ledger
``WORKDIR/review/annotations.parquet`` with who and when; an annotation edited in Label Studio is read
again. Then the ledger is resolved (``comcoco.review.resolve``: one task, or two opinions by the
documented rule, or a third look) and the resolved decisions that differ from
``WORKDIR/review/decisions.parquet`` are applied:

Placement (stage 1): *accept* keeps the sample; *reject* leaves it out of the release (the decision
carries reviewer and reason); *adjust* recomposes the sample from the corrected box — placed, cut and
harmonized again by the compose engine, its files replaced and its row updated in the shard's
``samples.parquet`` — and sends it back to stage 1 as a task of the next round for a look. Samples
whose two opinions disagree get a third-look task. Expressions (stage 2): the kept and dropped
expressions and the spatial phrases are stored.

Crash safety. The ledger is written page by page before anything is applied; resolution is a pure
function of the ledger and ``tasks.json``; applying a decision is, for an adjust, the recomposition
(deterministic: redoing it gives the same bytes and is skipped when nothing would change) and then the
merge of the decision. An interruption anywhere is therefore finished by the next pull, with the
same result: nothing is lost and nothing counts twice. ``status.parquet`` and ``manifest.json`` are
refreshed once at the end; the work directory's stale flag (``Workdir.mark_stale``), raised before the
first recomposition and cleared by the refresh, makes an interrupted pull refresh them on its next run
and keeps a release from reading the stale table meanwhile. The server's update time of the newest
task read is kept only once the pull completed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from comcoco.decisions import AnnotationRecord, read_ledger, write_ledger
from comcoco.errors import ComcocoError
from comcoco.progress import Progress
from comcoco.records import Placement, ReviewDecision
from comcoco.review.answers import read_annotation, submitted, utc, where
from comcoco.review.bookkeeping import (
    ReviewError,
    check_stage,
    read_projects,
    read_pull_state,
    read_tasks,
    write_pull_state,
)
from comcoco.review.push import missing_line, push, sync_tasks
from comcoco.review.resolve import CONFLICT, PENDING, Outcome
from comcoco.review.server import ReviewServer
from comcoco.review.tasks import WorkdirView
from comcoco.workdir import Workdir, WorkdirError, as_workdir

MARGIN = timedelta(seconds=60)  # tasks updated this long before the last pull's newest are read again


class RecomposeError(ComcocoError):
    """A corrected box cannot be composed (e.g. it overlaps another object pasted into the composite)."""


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
    wd = as_workdir(workdir)
    with wd.lock("review recompose"):
        return _recompose(wd, sample_id, box)


def _recompose(wd: Workdir, sample_id: str, box: Sequence[int]) -> Recomposed:
    from comcoco.compose.engine import compose_group
    from comcoco.plan import PlanMismatchError, groups_from_rows
    from comcoco.shards import rewrite_composite
    from comcoco.sources.images import ImageCache

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
    tasks: int = 0  # tasks in the project
    pending: int = 0  # tasks without a submitted annotation
    read: int = 0  # tasks with changed annotations read by this pull
    recorded: int = 0  # annotations new or edited since the last pull, recorded in the ledger
    unchanged: int = 0  # annotations recorded by earlier pulls and not edited since
    applied: dict[str, int] = field(default_factory=dict)  # decision → count, this pull
    recomposed: list[str] = field(default_factory=list)
    superseded: int = 0  # answers to an earlier round of a sample a later round decided
    awaiting: int = 0  # samples with one of two opinions in
    conflicts: list[str] = field(default_factory=list)  # "sample: what disagreed" (third look due)
    errors: list[str] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)  # task ids deleted on the server
    sent_back: int = 0  # adjusted samples pushed again to stage 1, and third looks
    messages: list[str] = field(default_factory=list)


def _changed_query(watermark: str | None) -> dict[str, Any]:
    """Data Manager filter: annotated tasks updated since ``watermark`` less the margin."""
    items: list[dict[str, Any]] = [{"filter": "filter:tasks:total_annotations", "operator": "greater",
                                    "type": "Number", "value": 0}]
    if watermark:
        since = datetime.fromisoformat(watermark.replace("Z", "+00:00")) - MARGIN
        items.append({"filter": "filter:tasks:updated_at", "operator": "greater", "type": "Datetime",
                      "value": since.strftime("%Y-%m-%dT%H:%M:%S.%fZ")})
    return {"filters": {"conjunction": "and", "items": items}}


def _read(server: ReviewServer, workdir: Path, stage: str, pid: int, view: WorkdirView,
          ledger: dict[int, AnnotationRecord], report: PullReport, after_each: Callable[[str], None] | None
          ) -> tuple[str | None, set[int]]:
    """Record the annotations changed since the last pull (ledger written per exported page); returns
    the newest task update time seen and the ids recorded."""
    watermark = read_pull_state(workdir, stage, pid)
    changed = server.list_tasks(pid, include="id,updated_at", query=_changed_query(watermark))
    report.read = len(changed)
    newest = max([utc(t.get("updated_at") or "") for t in changed] + ([watermark] if watermark else []), default=None)
    recorded: set[int] = set()
    with Progress(f"pull {stage}", len(changed), unit="task") as bar:
        for page in server.export(pid, [t["id"] for t in changed], progress=bar.advance):
            fresh: list[AnnotationRecord] = []
            for task in page:
                data = task.get("data") or {}
                if not isinstance(data.get("sample_id"), str):
                    report.errors.append(f"task {task.get('id')}: no sample_id in its data; not a comcoco task, left alone")
                    continue
                for ann in submitted(task):
                    prev = ledger.get(int(ann["id"]))
                    if prev is not None and prev.updated_at == utc(ann.get("updated_at") or ""):
                        continue
                    rec = read_annotation(stage, pid, task, ann, view, server.reviewer_name(ann.get("completed_by")))
                    ledger[rec.annotation_id] = rec
                    fresh.append(rec)
            if fresh:
                write_ledger(workdir, ledger)
            for rec in fresh:
                report.recorded += 1
                recorded.add(rec.annotation_id)
                if rec.error:
                    report.errors.append(f"{where(rec)}: {rec.error}; not counted (fix it in Label Studio and pull again)")
                elif rec.note:
                    report.messages.append(f"{stage}: {where(rec)}: {rec.note}")
                if after_each is not None:
                    after_each(f"recorded {rec.annotation_id}")
    return newest, recorded


def _apply(wd: Workdir, stage: str, outcomes: dict[str, Outcome], ledger: dict[int, AnnotationRecord],
           report: PullReport, after_each: Callable[[str], None] | None) -> None:
    """Bring ``decisions.parquet`` to the resolved decisions: recompose each new adjust, then merge."""
    current = wd.decisions()
    batch: list[ReviewDecision] = []
    for sid, o in outcomes.items():
        if o.state == PENDING:
            report.awaiting += 1
        elif o.state == CONFLICT:
            report.conflicts.append(f"{sid}: {o.detail}")
        new, cur = o.decision, current.get((sid, stage))
        if new is None or new == cur:
            continue
        if new.decision == "adjust" and (cur is None or cur.decision != "adjust" or cur.box != new.box):
            try:
                assert new.box is not None
                wd.mark_stale()
                result = recompose_sample(wd, sid, new.box)
            except RecomposeError as exc:
                for aid in o.basis:
                    ledger[aid] = replace(ledger[aid], error=f"the box cannot be composed: {exc}")
                write_ledger(wd.root, ledger)
                report.errors.append(f"{where(ledger[o.basis[-1]])}: {exc}; not applied")
                continue
            if result.changed:
                report.recomposed.append(sid)
            wd.merge_decisions([new])
        else:
            batch.append(new)
        report.applied[new.decision] = report.applied.get(new.decision, 0) + 1
        if after_each is not None:
            after_each(f"decided {sid}")
    if batch:
        wd.merge_decisions(batch)


def pull(
    workdir: str | Path,
    stage: str,
    server: ReviewServer,
    document_root: str | Path,
    after_each: Callable[[str], None] | None = None,
) -> PullReport:
    """Record the stage's new annotations, resolve and apply them (see the module docstring).

    ``after_each`` is called after every annotation recorded and every decision applied (tests use it
    to interrupt a pull halfway). The work directory is held meanwhile (``Workdir.lock``).
    """
    check_stage(stage)
    with Workdir(workdir).lock("review pull"):
        return _pull(Path(workdir), stage, server, document_root, after_each)


def _pull(workdir: Path, stage: str, server: ReviewServer, document_root: str | Path,
          after_each: Callable[[str], None] | None) -> PullReport:
    entry = read_projects(workdir).get(stage)
    if entry is None:
        raise ReviewError(f"{workdir}: nothing pushed for stage {stage} yet (run `comcoco review push --stage {stage}` first)")
    pid = int(entry["id"])
    report = PullReport(stage, pid)
    counts = server.project_counts(pid)
    if counts is None:
        report.messages.append(f"{stage}: project {pid} was deleted on the server; its unpulled annotations are lost "
                               "(answers pulled before are kept; push again to create a new project)")
        return report
    report.tasks, report.pending = counts["tasks"], counts["tasks"] - counts["annotated"]
    from comcoco.build import refresh_status

    wd = Workdir(workdir)
    if wd.stale:
        refresh_status(wd)
    mine = [t for t in read_tasks(workdir) if t.stage == stage and t.project_id == pid]
    missing: list[Any] = []
    if counts["tasks"] != len(mine):
        _, missing, _ = sync_tasks(server, workdir, stage, pid)
        report.missing = [t.task_id for t in missing]
        if missing:
            report.messages.append(missing_line(stage, missing))
    present = [t for t in read_tasks(workdir) if t not in set(missing)]
    view = WorkdirView.load(wd, present)
    ledger = read_ledger(workdir)
    newest, fresh = _read(server, workdir, stage, pid, view, ledger, report, after_each)
    view.resolve(ledger.values(), present)
    outcomes = view.outcomes[stage]
    _apply(wd, stage, outcomes, ledger, report, after_each)
    mine_ids = {a for a, r in ledger.items() if r.stage == stage and r.project_id == pid}
    report.unchanged = len(mine_ids) - report.recorded
    report.superseded = sum(1 for a in fresh if ledger[a].counts and ledger[a].sample_id in outcomes
                            and ledger[a].round < outcomes[ledger[a].sample_id].round)
    if wd.stale:  # raised by a recomposition of this pull (or an earlier, interrupted one)
        refresh_status(wd)
    if stage == "placement":
        decided = wd.decisions()
        again = {sid for (sid, st), d in decided.items() if st == stage and d.decision == "adjust"}
        again |= {sid for sid, o in outcomes.items() if o.state == CONFLICT}
        if again:
            back = push(workdir, stage, server, document_root, only=again)
            report.sent_back = back.imported
            report.messages.extend(back.messages)
    write_pull_state(workdir, stage, pid, newest)
    return report


