"""Where a review stands: per stage, the samples eligible, pushed, decided, waiting and missing, who
answered how much, and how well two annotators agree on the samples both answered."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from comcoco.decisions import agreement, read_ledger
from comcoco.review.bookkeeping import STAGES, read_projects, read_tasks
from comcoco.review.push import sync_tasks
from comcoco.review.resolve import CONFLICT, PENDING
from comcoco.review.server import ReviewServer
from comcoco.review.tasks import WorkdirView, wanted
from comcoco.review.team import Team


@dataclass
class StageStatus:
    stage: str
    project_id: int | None
    eligible: int
    pushed: int  # samples with at least one task
    decisions: dict[str, int]
    undecided: int  # pushed, no decision yet
    missing: int | None  # tasks deleted on the server (None: server not checked)
    awaiting_second: int = 0  # one of two opinions in
    third_looks: int = 0  # two opinions disagree: a third look is due or open
    annotators: list[str] = field(default_factory=list)
    overlap: float = 0.0
    answers: dict[str, int] = field(default_factory=dict)  # annotator → answers that count
    agreement: dict[str, Any] = field(default_factory=dict)  # comcoco.decisions.agreement, this stage


def review_status(workdir: str | Path, server: ReviewServer | None = None) -> list[StageStatus]:
    """Counts per stage and decision, team and agreement; with ``server``, also the tasks deleted on it
    (checked by the project's task count, and by the full task list only when that differs)."""
    workdir = Path(workdir)
    tasks = read_tasks(workdir)
    view = WorkdirView.load(workdir, tasks)
    projects = read_projects(workdir)
    ledger = list(read_ledger(workdir).values())
    overall = agreement(ledger)
    out = []
    for stage in STAGES:
        pid = int(projects[stage]["id"]) if stage in projects else None
        team = Team.from_dict((projects.get(stage) or {}).get("team"))
        mine = [t for t in tasks if t.stage == stage and t.project_id == pid]
        pushed = {t.sample_id for t in mine}
        decided = {k[0]: d for k, d in view.decisions.items() if k[1] == stage}
        eligible = {row.sample_id for row, _, _ in wanted(view, stage, {}, team)} | pushed
        missing: int | None = None
        if server is not None and pid is not None:
            counts = server.project_counts(pid)
            if counts is None:
                missing = len(mine)
            elif counts["tasks"] == len(mine):
                missing = 0
            else:
                missing = len(sync_tasks(server, workdir, stage, pid)[1])
        outcomes = view.outcomes.get(stage, {}).values()
        out.append(StageStatus(
            stage=stage,
            project_id=pid,
            eligible=len(eligible),
            pushed=len(pushed),
            decisions=dict(sorted(Counter(d.decision for d in decided.values()).items())),
            undecided=len(pushed - set(decided)),
            missing=missing,
            awaiting_second=sum(1 for o in outcomes if o.state == PENDING),
            third_looks=sum(1 for o in outcomes if o.state == CONFLICT),
            annotators=list(team.annotators),
            overlap=team.overlap,
            answers=dict(sorted(Counter(r.annotator for r in ledger if r.stage == stage and r.counts).items())),
            agreement=overall[stage],
        ))
    return out


def agreement_lines(stage: str, agr: dict[str, Any]) -> list[str]:
    """The agreement of a stage as the status command prints it."""
    if not agr or not agr.get("pairs"):
        return []
    if stage == "placement":
        kappa = "n/a" if agr["kappa"] is None else f"{agr['kappa']:.2f}"
        iou = "n/a" if agr["mean_box_iou"] is None else f"{agr['mean_box_iou']:.2f}"
        return [f"agreement on {agr['pairs']} sample(s) answered by two annotators: Cohen's kappa {kappa} "
                f"(accept/reject/adjust; observed {agr['observed']:.2f}); mean box IoU {iou} over {agr['box_pairs']} "
                "pair(s) with boxes"]
    keep = "n/a" if agr["keep_agreement"] is None else f"{agr['keep_agreement']:.2f}"
    return [f"agreement on {agr['pairs']} sample(s) answered by two annotators: keep/drop agreed on {keep} of "
            f"{agr['expressions']} expression(s)"]
