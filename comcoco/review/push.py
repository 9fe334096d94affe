"""Sending samples to Label Studio for review: the stage's project, its team, and an idempotent push.

A push creates the stage's project on first use (labeling config, the guidelines as its instruction,
a local storage for the work directory), records the team that reviews it (``comcoco.review.team``),
and imports, doubtful first (lowest plausibility first; Label Studio shows tasks in import order), only
the (sample, round, slot) tasks found neither in ``tasks.json`` nor on the server.

It scales to a paper-sized build: tasks are built and imported a page at a time (bounded memory,
``tasks.json`` written after each page, a progress bar), and the server's full task list — the slow
call, about a minute per 24,000 tasks — is read only when the project's task count differs from the
local record (a task deleted on the server, a lost ``tasks.json``, an interrupted import) or when a
team member's account is gone and their open tasks must be handed to the others.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from comcoco.progress import Progress
from comcoco.review.bookkeeping import (
    ReviewError,
    TaskRecord,
    check_stage,
    project_title,
    read_projects,
    read_tasks,
    task_key,
    write_projects,
    write_tasks,
)
from comcoco.review.guidelines import instruction_html
from comcoco.review.server import ReviewServer
from comcoco.review.settings import REPO, LabelStudioError
from comcoco.review.tasks import WorkdirView, build_task, look_text, wanted
from comcoco.review.team import Team, choose_team, sync_tabs
from comcoco.workdir import Workdir

LABEL_CONFIGS: dict[str, Path] = {
    "placement": REPO / "annotations" / "placement.xml",
    "expressions": REPO / "annotations" / "expressions.xml",
}
PAGE = 1000  # tasks built and imported per page (and per write of tasks.json)


@dataclass
class PushReport:
    stage: str
    project_id: int
    project_created: bool = False
    imported: int = 0
    already: int = 0
    adopted: int = 0  # tasks found on the server but missing from tasks.json
    missing: list[int] = field(default_factory=list)  # task ids in tasks.json deleted on the server
    second_opinions: int = 0  # imported tasks of slot 1 (overlap)
    third_looks: int = 0  # imported tasks of slot 2 (disagreements)
    reassigned: int = 0  # open tasks of a removed annotator handed to another
    annotators: list[str] = field(default_factory=list)
    overlap: float = 0.0
    messages: list[str] = field(default_factory=list)


def ensure_project(
    server: ReviewServer, workdir: str | Path, stage: str, document_root: str | Path, messages: list[str] | None = None
) -> tuple[int, bool]:
    """The stage's project id, creating it (config, instruction, local storage) when absent; (id, created).

    An existing project gets the current guidelines as its instruction when they changed.
    """
    check_stage(stage)
    workdir = Path(workdir)
    messages = messages if messages is not None else []
    projects = read_projects(workdir)
    title = project_title(workdir, stage)
    entry = projects.get(stage)
    instruction = instruction_html(stage)
    if entry is not None:
        if server.project_exists(int(entry["id"])):
            pid = int(entry["id"])
            current = server.project(pid)
            if current.get("expert_instruction") != instruction or not current.get("show_instruction"):
                server.update_project(pid, expert_instruction=instruction, show_instruction=True)
            return pid, False
        messages.append(f"{stage}: project {entry['id']} was deleted on the server; creating a new one")
        write_tasks(workdir, [t for t in read_tasks(workdir) if t.project_id != int(entry["id"])])
    else:
        found = server.find_projects(title)
        if found:
            projects[stage] = {"id": found[0], "title": title}
            write_projects(workdir, projects)
            messages.append(f"{stage}: reusing project {found[0]} ({title!r}) found on the server")
            return found[0], False
    root = Path(document_root).resolve()
    try:
        Path(workdir).resolve().relative_to(root)
    except ValueError:
        raise ReviewError(
            f"{workdir.resolve()} is not under the server's document root {root}: images could not be shown "
            "(build the work directory under COMCOCO_LS_DOCUMENT_ROOT, or set it to a parent folder)"
        ) from None
    config = LABEL_CONFIGS[stage].read_text()
    pid = server.create_project(title, config, description=f"comcoco review, stage {stage}: {workdir.resolve()}",
                                instruction=instruction)
    server.add_local_storage(pid, str(workdir.resolve()), title=f"comcoco {workdir.name}")
    projects[stage] = {"id": pid, "title": title}
    write_projects(workdir, projects)
    return pid, True


def sync_tasks(
    server: ReviewServer, workdir: str | Path, stage: str, project_id: int, with_counts: bool = False
) -> tuple[dict[tuple[str, int, int], dict[str, Any]], list[TaskRecord], int]:
    """Reconcile ``tasks.json`` with the server's full task list: (server map (sample, round, slot) →
    task, missing, adopted).

    Tasks on the server but not in ``tasks.json`` are added to it (a lost record); tasks in it but not
    on the server are returned as missing (deleted in Label Studio) and kept, so they keep being reported.
    """
    include = "id,data,total_annotations" if with_counts else "id,data"
    on_server: dict[tuple[str, int, int], dict[str, Any]] = {}
    for t in server.list_tasks(project_id, include=include):
        sid, rnd, slot = task_key(t["data"])
        if isinstance(sid, str):
            on_server.setdefault((sid, rnd, slot), t)
    local = read_tasks(workdir)
    known = {t.task_id for t in local if t.stage == stage and t.project_id == project_id}
    ids = {t["id"] for t in on_server.values()}
    missing = [t for t in local if t.stage == stage and t.project_id == project_id and t.task_id not in ids]
    adopted = [TaskRecord(stage, sid, rnd, project_id, t["id"], slot, str(t["data"].get("annotator") or ""))
               for (sid, rnd, slot), t in on_server.items() if t["id"] not in known]
    if adopted:
        write_tasks(workdir, local + adopted)
    return on_server, missing, len(adopted)


def _reassign(server: ReviewServer, view: WorkdirView, stage: str, team: Team,
              on_server: dict[tuple[str, int, int], dict[str, Any]], report: PushReport) -> None:
    """Hand the not yet annotated tasks of removed annotators to the remaining team."""
    gone = set(team.removed)
    for (sid, rnd, slot), t in sorted(on_server.items()):
        data = t["data"]
        if data.get("annotator") not in gone:
            continue
        if int(t.get("total_annotations") or 0) > 0:
            report.messages.append(f"{stage}: task {t['id']} (sample {sid}) was answered by {data['annotator']}, "
                                   "whose account is gone; the answer is kept")
            continue
        row = view.rows.get(sid)
        new = team.assignee(sid, rnd, slot, exclude=gone)
        if row is None:
            continue
        if server.update_task_data(t["id"], {**data, "annotator": new,
                                             "look": look_text(view, stage, row, rnd, slot, new)}):
            report.reassigned += 1
            report.messages.append(f"{stage}: task {t['id']} (sample {sid}) was meant for {data['annotator']}, "
                                   f"whose account is gone; reassigned to {new or 'any annotator'}")


def missing_line(stage: str, missing: Sequence[TaskRecord], shown: int = 10) -> str:
    """One line naming the tasks deleted on the server (task, sample, round) and what is done about them."""
    names = ", ".join(f"{t.task_id} (sample {t.sample_id}, round {t.round + 1})" for t in missing[:shown])
    more = f" and {len(missing) - shown} more" if len(missing) > shown else ""
    return (f"{stage}: {len(missing)} task(s) missing on the server (deleted in Label Studio): {names}{more}; "
            "answers already pulled are kept; not imported again unless `push --recreate-missing`")


def push(
    workdir: str | Path,
    stage: str,
    server: ReviewServer,
    document_root: str | Path,
    without_placement_review: bool = False,
    only: Collection[str] | None = None,
    recreate_missing: bool = False,
    annotators: Sequence[str] | None = None,
    overlap: float | None = None,
    seed: int | None = None,
) -> PushReport:
    """Import the stage's missing tasks (see the module docstring); idempotent.

    ``annotators`` (e-mails, or ``["all"]``), ``overlap`` (share of samples answered twice) and ``seed``
    set the stage's team; None keeps the one recorded by an earlier push (none: tasks open to anyone).
    The work directory is held meanwhile (``Workdir.lock``): a build or another pull or push is refused.
    """
    check_stage(stage)
    with Workdir(workdir).lock("review push"):
        return _push(Path(workdir), stage, server, document_root, without_placement_review, only,
                     recreate_missing, annotators, overlap, seed)


def _push(workdir: Path, stage: str, server: ReviewServer, document_root: str | Path,
          without_placement_review: bool, only: Collection[str] | None, recreate_missing: bool,
          annotators: Sequence[str] | None, overlap: float | None, seed: int | None) -> PushReport:
    local = read_tasks(workdir)
    view = WorkdirView.load(workdir, local)
    messages: list[str] = []
    pid, created = ensure_project(server, workdir, stage, document_root, messages)
    projects = read_projects(workdir)
    stored = Team.from_dict(projects[stage].get("team"))
    team = choose_team(server, stored, annotators, overlap, seed, default_seed=view.workdir.config().seed)
    for gone in team.removed:
        messages.append(f"{stage}: annotator {gone} has no account on the server any more: left out of the team")
    if team != stored or team.annotators and "tabs" not in projects[stage]:
        projects[stage]["tabs"] = sync_tabs(server, pid, team, projects[stage].get("tabs") or {})
        projects[stage]["team"] = team.to_dict()
        write_projects(workdir, projects)
    report = PushReport(stage, pid, created, annotators=list(team.annotators), overlap=team.overlap, messages=messages)

    mine = [t for t in local if t.stage == stage and t.project_id == pid]
    counts = server.project_counts(pid) or {"tasks": -1}
    missing: list[TaskRecord] = []
    if counts["tasks"] != len(mine) or team.removed or recreate_missing:
        on_server, missing, report.adopted = sync_tasks(server, workdir, stage, pid, with_counts=bool(team.removed))
        if team.removed:
            _reassign(server, view, stage, team, on_server, report)
        keys = set(on_server)
    else:
        keys = {t.key for t in mine}
    local = read_tasks(workdir)
    report.missing = [t.task_id for t in missing]
    if recreate_missing and missing:
        local = [t for t in local if t not in set(missing)]
        write_tasks(workdir, local)
        messages.append(f"{stage}: re-importing {len(missing)} task(s) deleted on the server")
        report.missing, missing = [], []
    elif missing:
        messages.append(missing_line(stage, missing))
    rounds = {t.task_id: t.round for t in local}
    blocked = {t.key for t in missing}
    todo = []
    for row, rnd, slot in wanted(view, stage, rounds, team, without_placement_review, only):
        if (row.sample_id, rnd, slot) in keys or (row.sample_id, rnd, slot) in blocked:
            report.already += 1
        else:
            todo.append((row, rnd, slot))
    if todo:
        _import(server, view, stage, pid, team, todo, document_root, local, report)
    return report


def _import(server: ReviewServer, view: WorkdirView, stage: str, pid: int, team: Team,
            todo: list[tuple[Any, int, int]], document_root: str | Path, local: list[TaskRecord],
            report: PushReport) -> None:
    """Build and import ``todo`` a page at a time, recording each page's tasks in ``tasks.json``."""
    workdir = view.workdir.root
    records = list(local)
    with Progress(f"push {stage}", len(todo), unit="task") as bar:
        for i in range(0, len(todo), PAGE):
            page = todo[i : i + PAGE]
            tasks, who = [], {}
            for row, rnd, slot in page:
                answered = _answered_by(view, stage, row.sample_id, rnd)
                annotator = team.assignee(row.sample_id, rnd, slot, exclude=answered)
                tasks.append(build_task(view, stage, row, rnd, slot, annotator, document_root))
                who[(row.sample_id, rnd, slot)] = annotator
            ids = server.import_tasks(pid, tasks, key=task_key, progress=bar.advance)
            for (sid, rnd, slot), annotator in who.items():
                if (sid, rnd, slot) in ids:
                    records.append(TaskRecord(stage, sid, rnd, pid, int(ids[(sid, rnd, slot)]), slot, annotator))
            write_tasks(workdir, records)
            report.imported += len(page)
            report.second_opinions += sum(1 for _, _, slot in page if slot == 1)
            report.third_looks += sum(1 for _, _, slot in page if slot == 2)
    # The server is the truth: every task must be there once (a retried import may have landed twice
    # or been answered without ids); a count that differs is settled by the full list.
    expected = {t.key for t in records if t.stage == stage and t.project_id == pid}
    counts = server.project_counts(pid) or {"tasks": -1}
    if counts["tasks"] != len(expected) or len(expected) < len({(r.sample_id, n, s) for r, n, s in todo}):
        on_server, _, _ = sync_tasks(server, workdir, stage, pid)
        lost = sorted(k for k in ((r.sample_id, n, s) for r, n, s in todo) if k not in on_server)
        if lost:
            raise LabelStudioError(f"{stage}: {len(lost)} imported task(s) not found on the server afterwards, "
                                   f"e.g. {lost[0]}")


def _answered_by(view: WorkdirView, stage: str, sample_id: str, round_: int) -> set[str]:
    """Who answered the round's first and second opinion (a third look goes to someone else)."""
    o = view.outcomes.get(stage, {}).get(sample_id)
    return set(o.answered_by) if o is not None and o.round == round_ else set()
