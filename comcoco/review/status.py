"""Where a review stands: per stage, how many samples are eligible, pushed, decided and missing."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from comcoco.review.push import STAGES, WorkdirView, read_projects, read_tasks, sync_tasks, wanted
from comcoco.review.server import ReviewServer


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
    view = WorkdirView.load(workdir)
    workdir = view.workdir.root
    tasks = read_tasks(workdir)
    projects = read_projects(workdir)
    out = []
    for stage in STAGES:
        pid = int(projects[stage]["id"]) if stage in projects else None
        mine = [t for t in tasks if t.stage == stage and t.project_id == pid]
        pushed = {t.sample_id for t in mine}
        decided = {k[0]: d for k, d in view.decisions.items() if k[1] == stage}
        eligible = {row.sample_id for row, _ in wanted(view, stage, {})} | pushed
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
