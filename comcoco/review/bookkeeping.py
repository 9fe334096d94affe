"""The review's local bookkeeping in ``WORKDIR/review/``: projects, tasks and how far pulls got.

* ``projects.json`` — per stage: the Label Studio project's id and title, and the team it is reviewed
  by (annotators, overlap, seed), so that later pushes (and the look tasks a pull sends) assign the
  same way;
* ``tasks.json`` — every imported task: stage, sample, round, slot (first or second opinion, third
  look), project, task id and the annotator it was meant for;
* ``pull-state.json`` — per stage: the project and the server's update time of the newest task a
  pull has read, so the next pull asks only for tasks changed since (minus a safety margin).

The decisions and the annotation ledger are ``comcoco.decisions``'s.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from comcoco.decisions import SLOT_FIRST
from comcoco.errors import ComcocoError
from comcoco.ids import stable_id
from comcoco.io import write_text_atomic
from comcoco.workdir import REVIEW_DIR

STAGES: tuple[str, ...] = ("placement", "expressions")
PROJECTS_FILE = "projects.json"
TASKS_FILE = "tasks.json"
PULL_STATE_FILE = "pull-state.json"


class ReviewError(ComcocoError):
    """A review step cannot run on this work directory (nothing built, nothing pushed, bad path)."""


def check_stage(stage: str) -> str:
    if stage not in STAGES:
        raise ReviewError(f"unknown review stage {stage!r} (choose {'|'.join(STAGES)})")
    return stage


@dataclass(frozen=True, order=True)
class TaskRecord:
    """One task imported into Label Studio for one sample at one stage, round and slot."""

    stage: str
    sample_id: str
    round: int
    project_id: int
    task_id: int
    slot: int = SLOT_FIRST
    annotator: str = ""  # whom the task was meant for when imported ("" = anyone)

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.sample_id, self.round, self.slot)


def task_key(data: Mapping[str, Any]) -> tuple[Any, int, int]:
    """A task's identity in a project, from its data: (sample id, review round, slot)."""
    return data.get("sample_id"), int(data.get("round", 0) or 0), int(data.get("slot", 0) or 0)


def review_dir(workdir: str | Path) -> Path:
    return Path(workdir) / REVIEW_DIR


def read_json(path: Path, default: Any) -> Any:
    if not path.is_file():
        return default
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ReviewError(f"{path}: unreadable ({exc}); delete it to rebuild it from the server") from None


def write_json(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_projects(workdir: str | Path) -> dict[str, dict[str, Any]]:
    return read_json(review_dir(workdir) / PROJECTS_FILE, {})


def write_projects(workdir: str | Path, projects: Mapping[str, Mapping[str, Any]]) -> None:
    write_json(review_dir(workdir) / PROJECTS_FILE, {k: dict(v) for k, v in sorted(projects.items())})


def read_tasks(workdir: str | Path) -> list[TaskRecord]:
    path = review_dir(workdir) / TASKS_FILE
    out = []
    for i, rec in enumerate(read_json(path, [])):
        try:
            out.append(TaskRecord(**rec))
        except TypeError:
            raise ReviewError(f"{path}: entry {i} is not a task record: {rec!r}") from None
    return sorted(set(out))


def write_tasks(workdir: str | Path, tasks: Collection[TaskRecord]) -> None:
    write_json(review_dir(workdir) / TASKS_FILE, [asdict(t) for t in sorted(set(tasks))])


def read_pull_state(workdir: str | Path, stage: str, project_id: int) -> str | None:
    """The update time (server clock, ISO UTC) of the newest task the last complete pull read, or None."""
    entry = read_json(review_dir(workdir) / PULL_STATE_FILE, {}).get(stage) or {}
    return entry.get("watermark") if entry.get("project_id") == project_id else None


def write_pull_state(workdir: str | Path, stage: str, project_id: int, watermark: str | None) -> None:
    path = review_dir(workdir) / PULL_STATE_FILE
    state = read_json(path, {})
    state[stage] = {"project_id": project_id, "watermark": watermark}
    write_json(path, state)


def project_title(workdir: str | Path, stage: str) -> str:
    """``comcoco <stage> <folder> <hash>``: unique per work directory, short enough for Label Studio (50)."""
    path = Path(workdir).resolve()
    return f"comcoco {stage} {path.name[:20]} {stable_id('review-project', str(path))[:8]}"
