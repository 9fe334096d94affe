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
refreshed once at the end; a marker (``review/.status-stale``) written before the first recomposition
and removed after the refresh makes an interrupted pull refresh them on its next run.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from comcoco.compose.samples import read_samples, write_samples
from comcoco.io import write_text_atomic
from comcoco.records import PLACEMENT_DECISIONS, ReviewDecision
from comcoco.review.decisions import REVIEW_DIR, merge_decisions, read_decisions
from comcoco.review.labelstudio import ReviewServer
from comcoco.review.push import (
    STAGES,
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

APPLIED_FILE = "applied.json"
STALE_MARKER = ".status-stale"


class AnnotationError(ValueError):
    """An annotation that cannot become a decision (no choice made, adjust without a box, ...)."""


class RecomposeError(Exception):
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
                img = view.source.image(int(row["bg_image_id"]))
                size = (img.width, img.height)
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


def recompose_sample(workdir: str | Path, sample_id: str, box: Sequence[int]) -> Recomposed:
    """Recompose ``sample_id``'s composite with its object at ``box``, in place in the work directory.

    The other objects of the composite keep their boxes; every object is harmonized again. New files
    are written beside the shard and renamed over the old ones, then the shard's table is rewritten.
    Same box again → the same rows, and nothing is written (``changed`` False). The work directory's
    ``status.parquet`` is not touched here (see :func:`refresh_status`).
    """
    from comcoco.compose.engine import ImageCache, compose_group, plan_groups, write_group
    from comcoco.plan import BuildConfig, SourceSpec, read_plan, read_plan_meta
    from comcoco.shards import MARKER, SAMPLES_FILE, cached_models, shard_dir, shard_name, source_index

    workdir = Path(workdir)
    meta = read_plan_meta(workdir)
    if meta is None:
        raise ReviewError(f"{workdir}: no plan.json")
    config = BuildConfig.from_dict(meta["config"])
    plan = read_plan(workdir)
    target = next((r for r in plan if r.sample_id == sample_id), None)
    if target is None:
        raise ReviewError(f"{workdir}: sample {sample_id} is not in the plan")
    final = shard_dir(workdir, target.shard)
    if not (final / MARKER).is_file():
        raise ReviewError(f"{workdir}: shard {shard_name(target.shard)} of sample {sample_id} is not complete")
    rows = read_samples(final / SAMPLES_FILE)
    members = [r for r in rows if r.composite_id == target.composite_id]
    plan_rows = sorted((r for r in plan if r.composite_id == target.composite_id), key=lambda r: r.member)
    index = source_index(SourceSpec(**meta["source"]))
    groups = [g for g in plan_groups([r.candidate() for r in plan_rows], index, config.compose)
              if g.composite_id == target.composite_id]
    if len(groups) != 1:
        raise ReviewError(f"composite {target.composite_id} of sample {sample_id} cannot be re-planned")
    boxes: dict[str, Sequence[int]] = {r.sample_id: r.box for r in members if r.ok and r.box is not None}
    boxes[sample_id] = tuple(int(v) for v in box)
    composed = compose_group(groups[0], ImageCache(index.image_path), config.compose, cached_models(config), boxes)
    new_by_id = {cs.row.sample_id: cs.row for cs in composed.samples}
    for old in members:
        new = new_by_id.get(old.sample_id)
        if new is None or (old.ok and not new.ok):
            why = new.reason if new is not None else "missing from the recomposition"
            raise RecomposeError(f"sample {sample_id}: box {tuple(box)} cannot be composed: {old.sample_id}: {why}")
    tmp = final.parent / f".{final.name}.review-{os.getpid()}-{threading.get_ident()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        written = write_group(tmp, composed, config.compose)
        # write_group fills paths and the fidelity error: compare complete rows with the current ones
        by_id = {r.sample_id: r for r in written}
        if all(by_id[m.sample_id] == m for m in members):
            new_row = by_id[sample_id]
            return Recomposed(sample_id, False, new_row.box, new_row.plausibility)  # type: ignore[arg-type]
        for r in written:
            for rel in (r.composite, r.ground_truth, r.mask):
                if rel and (tmp / rel).is_file():
                    (final / rel).parent.mkdir(parents=True, exist_ok=True)
                    os.replace(tmp / rel, final / rel)
        updated = [by_id.get(r.sample_id, r) for r in rows]
        write_samples(final / SAMPLES_FILE, updated)
        ok = sum(r.ok for r in updated)
        write_text_atomic(final / MARKER, json.dumps({"samples": len(updated), "ok": ok}, sort_keys=True) + "\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    new_row = by_id[sample_id]
    return Recomposed(sample_id, True, new_row.box, new_row.plausibility)  # type: ignore[arg-type]


def refresh_status(workdir: str | Path) -> dict[str, Any]:
    """Rewrite ``status.parquet`` and ``manifest.json`` from the shards (after recompositions)."""
    from comcoco.workdir import collect_status, write_manifest

    counts = collect_status(workdir)
    write_manifest(workdir, counts)
    marker = Path(workdir) / REVIEW_DIR / STALE_MARKER
    marker.unlink(missing_ok=True)
    return counts


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
    stale_marker = workdir / REVIEW_DIR / STALE_MARKER
    if stale_marker.is_file():
        refresh_status(workdir)
    view = WorkdirView.load(workdir)
    _, missing, _ = sync_tasks(server, workdir, stage, pid)
    report.missing = [t.task_id for t in missing]
    rounds = {t.task_id: t.round for t in read_tasks(workdir)}
    applied = read_applied(workdir)
    tasks = server.export(pid)
    report.tasks = len(tasks)
    touched_status = False
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
            current = read_decisions(workdir).get((sid, stage))
            task_round = int(data.get("round", 0) or 0)
            if current is not None and current.task_id is not None and current.task_id != d.task_id \
                    and rounds.get(current.task_id, 0) > task_round:
                report.superseded += 1
                rec = replace(rec, outcome="superseded")
            else:
                try:
                    if d.decision == "adjust":
                        assert d.box is not None
                        stale_marker.parent.mkdir(parents=True, exist_ok=True)
                        stale_marker.touch()
                        touched_status = True
                        result = recompose_sample(workdir, sid, d.box)
                        if result.changed:
                            report.recomposed.append(sid)
                    merge_decisions(workdir, [d])
                    report.applied[d.decision] = report.applied.get(d.decision, 0) + 1
                    rec = replace(rec, outcome=d.decision)
                except RecomposeError as exc:
                    report.errors.append(f"task {task['id']}: {exc}")
                    rec = replace(rec, outcome=f"error: {exc}")
        _record_applied(workdir, applied, rec)
        if after_each is not None:
            after_each(rec)
    if touched_status or stale_marker.is_file():
        refresh_status(workdir)
    if stage == "placement":
        adjusted = {k[0] for k, d in read_decisions(workdir).items() if k[1] == "placement" and d.decision == "adjust"}
        if adjusted:
            back = push(workdir, "placement", server, document_root, only=adjusted)
            report.sent_back = back.imported
    return report


# --- status ----------------------------------------------------------------------------------------------


@dataclass
class StageStatus:
    stage: str
    project_id: int | None
    eligible: int
    pushed: int  # samples with at least one task
    decisions: dict[str, int]
    undecided: int  # pushed, no decision yet
    missing: int | None  # tasks deleted on the server (None: server not checked)


def review_status(workdir: str | Path, server: ReviewServer | None = None) -> list[StageStatus]:
    """Counts per stage and decision; with ``server``, also the tasks deleted on the server."""
    from comcoco.review.push import wanted

    workdir = Path(workdir)
    view = WorkdirView.load(workdir)
    tasks = read_tasks(workdir)
    projects = read_projects(workdir)
    decisions = read_decisions(workdir)
    out = []
    for stage in STAGES:
        pid = int(projects[stage]["id"]) if stage in projects else None
        mine = [t for t in tasks if t.stage == stage and t.project_id == pid]
        pushed = {t.sample_id for t in mine}
        decided = {k[0]: d for k, d in decisions.items() if k[1] == stage}
        eligible = {row["sample_id"] for row, _ in wanted(view, stage, {})} | pushed
        missing: int | None = None
        if server is not None and pid is not None:
            if server.project_exists(pid):
                missing = len(sync_tasks(server, workdir, stage, pid)[1])
            else:
                missing = len(mine)
        out.append(StageStatus(
            stage=stage,
            project_id=pid,
            eligible=len(eligible),
            pushed=len(pushed),
            decisions=dict(sorted(Counter(d.decision for d in decided.values()).items())),
            undecided=len(pushed - set(decided)),
            missing=missing,
        ))
    return out
