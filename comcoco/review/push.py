"""Sending samples to Label Studio for review: projects, task building and an idempotent push.

Two stages, one Label Studio project each (``annotations/placement.xml``, ``annotations/expressions.xml``):

* **placement** — the composite, the object's expressions and its plausibility score; the placed box
  is a prediction the reviewer can drag (adjust). A sample whose adjustment was applied is sent again
  as a new task of the next *round*, showing the recomposed image and box, for a last look.
* **expressions** — the composite with the object highlighted, one tick box per expression (all
  ticked), and spatial phrases proposed from the geometry (``comcoco.text.spatial``) pre-filled.
  Input: samples accepted or adjusted in stage 1; ``without_placement_review`` takes every built
  sample not rejected instead, for runs that skip stage 1.

Bookkeeping lives in ``WORKDIR/review/``: ``projects.json`` (project id and title per stage) and
``tasks.json`` (sample id, stage, round, project id, task id of every imported task). A push imports
only (sample, round) pairs found neither in ``tasks.json`` nor among the project's tasks on the server
(``data.sample_id``/``data.round``), so pushing twice, or after losing ``tasks.json``, creates no
duplicates. Tasks are imported doubtful-first (lowest plausibility first; Label Studio shows tasks in
import order). Images reach the server by local-files serving: the work directory must lie under the
server's document root (``COMCOCO_LS_DOCUMENT_ROOT``), and a local storage for it is registered when the
project is created.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from comcoco.errors import ComcocoError
from comcoco.ids import stable_id
from comcoco.io import write_text_atomic
from comcoco.records import STATUS_OK, ReviewDecision
from comcoco.review.server import ReviewServer
from comcoco.review.settings import REPO, LabelStudioError, local_files_url
from comcoco.workdir import REVIEW_DIR, StatusRow, Workdir, WorkdirError

STAGES: tuple[str, ...] = ("placement", "expressions")
LABEL_CONFIGS: dict[str, Path] = {
    "placement": REPO / "annotations" / "placement.xml",
    "expressions": REPO / "annotations" / "expressions.xml",
}
PROJECTS_FILE = "projects.json"
TASKS_FILE = "tasks.json"
MODEL_VERSION = "comcoco"


class ReviewError(ComcocoError):
    """A review step cannot run on this work directory (nothing built, nothing pushed, bad path)."""


def check_stage(stage: str) -> str:
    if stage not in STAGES:
        raise ReviewError(f"unknown review stage {stage!r} (choose {'|'.join(STAGES)})")
    return stage


# --- local bookkeeping ---------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class TaskRecord:
    """One task imported into Label Studio for one sample at one stage and round."""

    stage: str
    sample_id: str
    round: int
    project_id: int
    task_id: int


def _review_dir(workdir: str | Path) -> Path:
    return Path(workdir) / REVIEW_DIR


def _read_json(path: Path, default: Any) -> Any:
    if not path.is_file():
        return default
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ReviewError(f"{path}: unreadable ({exc}); delete it to rebuild it from the server") from None


def _write_json(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_projects(workdir: str | Path) -> dict[str, dict[str, Any]]:
    return _read_json(_review_dir(workdir) / PROJECTS_FILE, {})


def write_projects(workdir: str | Path, projects: Mapping[str, Mapping[str, Any]]) -> None:
    _write_json(_review_dir(workdir) / PROJECTS_FILE, {k: dict(v) for k, v in sorted(projects.items())})


def read_tasks(workdir: str | Path) -> list[TaskRecord]:
    path = _review_dir(workdir) / TASKS_FILE
    out = []
    for i, rec in enumerate(_read_json(path, [])):
        try:
            out.append(TaskRecord(**rec))
        except TypeError:
            raise ReviewError(f"{path}: entry {i} is not a task record: {rec!r}") from None
    return sorted(set(out))


def write_tasks(workdir: str | Path, tasks: Collection[TaskRecord]) -> None:
    _write_json(_review_dir(workdir) / TASKS_FILE, [asdict(t) for t in sorted(set(tasks))])


def project_title(workdir: str | Path, stage: str) -> str:
    """``comcoco <stage> <folder> <hash>``: unique per work directory, short enough for Label Studio (50)."""
    path = Path(workdir).resolve()
    return f"comcoco {stage} {path.name[:20]} {stable_id('review-project', str(path))[:8]}"


# --- the work directory as review sees it ---------------------------------------------------------


@dataclass
class WorkdirView:
    """What task building needs from a work directory: its samples, its source and its decisions."""

    workdir: Workdir
    rows: dict[str, StatusRow]
    source: Any
    index: Any  # comcoco.plan.SourceIndex
    decisions: dict[tuple[str, str], ReviewDecision]
    category_names: dict[int, str] = field(default_factory=dict)

    @classmethod
    def load(cls, workdir: Workdir | str | Path) -> WorkdirView:
        wd = workdir if isinstance(workdir, Workdir) else Workdir(workdir)
        try:
            rows = wd.status_by_id()
            source, index = wd.source(), wd.index()
        except WorkdirError as exc:
            raise ReviewError(f"{exc} — build the work directory first (comcoco build)") from None
        return cls(
            workdir=wd,
            rows=rows,
            source=source,
            index=index,
            decisions=wd.decisions(),
            category_names={c.id: c.name for c in source.categories()},
        )

    def reviewable(self) -> list[StatusRow]:
        """Built samples (status ok, composite written), doubtful first: plausibility, then id."""
        rows = [r for r in self.rows.values() if r.status == STATUS_OK and r.composite]
        return sorted(rows, key=lambda r: (_plausibility(r), r.sample_id))

    def sentences(self, row: StatusRow) -> tuple[Any, ...]:
        try:
            return self.source.ref(int(row.fg_ref_id)).sentences
        except KeyError:
            raise ReviewError(f"sample {row.sample_id}: ref {row.fg_ref_id} is not in the source") from None

    def image_size(self, row: StatusRow) -> tuple[int, int]:
        img = self.source.image(int(row.bg_image_id))
        return int(img.width), int(img.height)


def _plausibility(row: StatusRow) -> float:
    v = row.plausibility
    return float(v) if v is not None and not math.isnan(float(v)) else -1.0


def box_to_percent(box: Sequence[float], size: Sequence[int]) -> dict[str, float]:
    """Label Studio's rectangle value (percent of the image) for a pixel box."""
    x, y, w, h = (float(v) for v in box)
    W, H = float(size[0]), float(size[1])
    return {"x": 100 * x / W, "y": 100 * y / H, "width": 100 * w / W, "height": 100 * h / H, "rotation": 0}


def percent_to_box(value: Mapping[str, Any], size: Sequence[int]) -> tuple[int, int, int, int]:
    """Pixel box (clipped to the image) for a Label Studio rectangle value."""
    W, H = int(size[0]), int(size[1])
    x0 = float(value["x"]) * W / 100
    y0 = float(value["y"]) * H / 100
    x1 = x0 + float(value["width"]) * W / 100
    y1 = y0 + float(value["height"]) * H / 100
    xa, ya = min(max(round(x0), 0), W), min(max(round(y0), 0), H)
    xb, yb = min(max(round(x1), 0), W), min(max(round(y1), 0), H)
    return int(xa), int(ya), int(xb - xa), int(yb - ya)


def _rect(from_name: str, box: Sequence[float], size: Sequence[int]) -> dict[str, Any]:
    value = box_to_percent(box, size) | {"rectanglelabels": ["object"]}
    return {"from_name": from_name, "to_name": "image", "type": "rectanglelabels",
            "original_width": int(size[0]), "original_height": int(size[1]), "value": value}


def placement_task(view: WorkdirView, row: StatusRow, round_: int, document_root: str | Path) -> dict[str, Any]:
    """Stage 1 task: composite, expressions, score; the placed box as a prediction."""
    size = view.image_size(row)
    score = _plausibility(row)
    return {
        "data": {
            "image": local_files_url(view.workdir.root / row.composite, document_root),
            "expressions": "\n".join(s.sent for s in view.sentences(row)),
            "score": f"{score:.2f}" if score >= 0 else "n/a",
            "sample_id": row.sample_id,
            "round": int(round_),
        },
        "predictions": [{"model_version": MODEL_VERSION, "score": max(score, 0.0),
                         "result": [_rect("box", row.box, size)]}],
    }


def spatial_proposals(view: WorkdirView, row: StatusRow) -> list[str]:
    """Spatial phrases for the sample: its placed box against the background's annotated objects
    and the other objects pasted into the same composite."""
    from comcoco.text.spatial import propose_spatial_phrases

    objects: list[tuple[str, tuple[float, ...]]] = []
    for ann in view.index.anns_by_image.get(int(row.bg_image_id), ()):
        objects.append((view.category_names.get(int(ann.category_id), "object"), tuple(ann.bbox)))
    for other in row.objects:
        o = view.rows.get(other)
        if o is not None and o.status == STATUS_OK and o.box is not None:
            objects.append((view.category_names.get(int(o.category_id), "object"), o.box))
    phrases = propose_spatial_phrases(
        row.box, view.image_size(row), objects,
        target_category=view.category_names.get(int(row.category_id)),
    )
    return [p.text for p in phrases]


def expressions_task(view: WorkdirView, row: StatusRow, document_root: str | Path) -> dict[str, Any]:
    """Stage 2 task: composite with the object highlighted, expressions all ticked, spatial phrases proposed."""
    size = view.image_size(row)
    sentences = view.sentences(row)
    aliases = [str(s.sent_id) for s in sentences]
    result = [
        _rect("object", row.box, size),
        {"from_name": "keep", "to_name": "image", "type": "choices", "value": {"choices": aliases}},
    ]
    phrases = spatial_proposals(view, row)
    if phrases:
        result.append({"from_name": "spatial", "to_name": "image", "type": "textarea", "value": {"text": phrases}})
    return {
        "data": {
            "image": local_files_url(view.workdir.root / row.composite, document_root),
            "expression_options": [{"value": s.sent, "alias": str(s.sent_id)} for s in sentences],
            "sample_id": row.sample_id,
            "round": 0,
        },
        "predictions": [{"model_version": MODEL_VERSION, "score": 1.0, "result": result}],
    }


# --- which tasks a stage needs ---------------------------------------------------------------------


def wanted(
    view: WorkdirView,
    stage: str,
    task_rounds: Mapping[int, int],
    without_placement_review: bool = False,
    only: Collection[str] | None = None,
) -> list[tuple[StatusRow, int]]:
    """(row, round) of every task the stage should have, doubtful first.

    Placement: round 0 until decided; after an applied *adjust* on round r, round r + 1 (the look at
    the recomposed sample); nothing more after accept or reject. Expressions: round 0 for samples
    accepted or adjusted in stage 1 (or every sample not rejected, ``without_placement_review``).
    ``task_rounds`` maps known task ids to their round.
    """
    out: list[tuple[StatusRow, int]] = []
    for row in view.reviewable():
        sid = row.sample_id
        if only is not None and sid not in only:
            continue
        d = view.decisions.get((sid, "placement"))
        if stage == "placement":
            if d is None:
                out.append((row, 0))
            elif d.decision == "adjust":
                done = task_rounds.get(d.task_id, 0) if d.task_id is not None else 0
                out.append((row, done + 1))
        else:
            if d is not None and d.decision == "reject":
                continue
            if d is None and not without_placement_review:
                continue
            out.append((row, 0))
    return out


# --- pushing -------------------------------------------------------------------------------------------


@dataclass
class PushReport:
    stage: str
    project_id: int
    project_created: bool = False
    imported: int = 0
    already: int = 0
    adopted: int = 0  # tasks found on the server but missing from tasks.json
    missing: list[int] = field(default_factory=list)  # task ids in tasks.json deleted on the server
    messages: list[str] = field(default_factory=list)


def ensure_project(
    server: ReviewServer, workdir: str | Path, stage: str, document_root: str | Path, messages: list[str] | None = None
) -> tuple[int, bool]:
    """The stage's project id, creating it (with local storage) when absent; (id, created)."""
    check_stage(stage)
    workdir = Path(workdir)
    messages = messages if messages is not None else []
    projects = read_projects(workdir)
    title = project_title(workdir, stage)
    entry = projects.get(stage)
    if entry is not None:
        if server.project_exists(int(entry["id"])):
            return int(entry["id"]), False
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
    pid = server.create_project(title, config, description=f"comcoco review, stage {stage}: {workdir.resolve()}")
    server.add_local_storage(pid, str(workdir.resolve()), title=f"comcoco {workdir.name}")
    projects[stage] = {"id": pid, "title": title}
    write_projects(workdir, projects)
    return pid, True


def task_key(data: Mapping[str, Any]) -> tuple[Any, int]:
    """A task's identity in a project: (sample id, review round)."""
    return data.get("sample_id"), int(data.get("round", 0) or 0)


def sync_tasks(
    server: ReviewServer, workdir: str | Path, stage: str, project_id: int
) -> tuple[dict[tuple[str, int], int], list[TaskRecord], int]:
    """Reconcile ``tasks.json`` with the server: (server map (sample, round) → task id, missing, adopted).

    Tasks on the server but not in ``tasks.json`` are added to it (a lost record); tasks in it but not
    on the server are returned as missing (deleted in Label Studio) and kept, so they keep being reported.
    """
    on_server: dict[tuple[str, int], int] = {}
    for t in server.list_tasks(project_id):
        sid, rnd = task_key(t["data"])
        if isinstance(sid, str):
            on_server.setdefault((sid, rnd), t["id"])
    local = read_tasks(workdir)
    known = {t.task_id for t in local if t.stage == stage and t.project_id == project_id}
    missing = [t for t in local if t.stage == stage and t.project_id == project_id
               and t.task_id not in set(on_server.values())]
    adopted = [TaskRecord(stage, sid, rnd, project_id, tid) for (sid, rnd), tid in on_server.items() if tid not in known]
    if adopted:
        write_tasks(workdir, local + adopted)
    return on_server, missing, len(adopted)


def push(
    workdir: str | Path,
    stage: str,
    server: ReviewServer,
    document_root: str | Path,
    without_placement_review: bool = False,
    only: Collection[str] | None = None,
    recreate_missing: bool = False,
) -> PushReport:
    """Import the stage's missing tasks (see the module docstring); idempotent."""
    check_stage(stage)
    workdir = Path(workdir)
    view = WorkdirView.load(workdir)
    messages: list[str] = []
    pid, created = ensure_project(server, workdir, stage, document_root, messages)
    on_server, missing, adopted = sync_tasks(server, workdir, stage, pid)
    report = PushReport(stage, pid, created, adopted=adopted, missing=[t.task_id for t in missing], messages=messages)
    local = read_tasks(workdir)
    if recreate_missing and missing:
        gone = set(missing)
        local = [t for t in local if t not in gone]
        write_tasks(workdir, local)
        messages.append(f"{stage}: re-importing {len(missing)} task(s) deleted on the server")
        report.missing = []
    rounds = {t.task_id: t.round for t in local}
    blocked = set() if recreate_missing else {(t.sample_id, t.round) for t in missing}
    todo: list[tuple[StatusRow, int]] = []
    for row, rnd in wanted(view, stage, rounds, without_placement_review, only):
        key = (row.sample_id, rnd)
        if key in on_server or key in blocked:
            report.already += 1
        else:
            todo.append((row, rnd))
    if not todo:
        return report
    if stage == "placement":
        tasks = [placement_task(view, row, rnd, document_root) for row, rnd in todo]
    else:
        tasks = [expressions_task(view, row, document_root) for row, _ in todo]
    report.imported = server.import_tasks(pid, tasks, key=task_key)
    # The server's task list is the truth for ids (a retried import may have landed once already).
    on_server, _, _ = sync_tasks(server, workdir, stage, pid)
    wanted_keys = {(row.sample_id, rnd) for row, rnd in todo}
    lost = sorted(k for k in wanted_keys if k not in on_server)
    if lost:
        raise LabelStudioError(f"{stage}: {len(lost)} imported task(s) not found on the server afterwards, e.g. {lost[0]}")
    return report
