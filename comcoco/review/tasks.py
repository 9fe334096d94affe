"""What a review task shows and which tasks a stage needs.

Two stages, one Label Studio project each (``annotations/placement.xml``, ``annotations/expressions.xml``):

* **placement** — the composite, the object's expressions and its plausibility score; the placed box
  is a prediction the reviewer can drag (adjust). A sample whose adjustment was applied is sent again
  as a task of the next *round*, showing the recomposed image and box: the *look* line above the image
  says so, and who adjusted it.
* **expressions** — the composite with the object highlighted, one tick box per expression (all
  ticked), and spatial phrases proposed from the geometry (``comcoco.text.spatial``) pre-filled.

A task is identified by (sample, round, slot): slot 0 is the first opinion, slot 1 the second one of
a sample in the overlap, slot 2 the third look after those two disagreed (``comcoco.review.resolve``).
"""

from __future__ import annotations

import math
import urllib.parse
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from comcoco.decisions import SLOT_FIRST, SLOT_SECOND, SLOT_THIRD, read_ledger
from comcoco.records import STATUS_OK, ReviewDecision
from comcoco.review.bookkeeping import ReviewError, TaskRecord
from comcoco.review.resolve import CONFLICT, Outcome, resolve_stage
from comcoco.review.settings import local_files_url
from comcoco.review.team import Team
from comcoco.sources.format import usable_sentences
from comcoco.workdir import StatusRow, Workdir, WorkdirError

MODEL_VERSION = "comcoco"


@dataclass
class WorkdirView:
    """What task building needs from a work directory: its samples, its source, its decisions, and
    the samples whose two answers disagree (a third look is due)."""

    workdir: Workdir
    rows: dict[str, StatusRow]
    source: Any
    index: Any  # comcoco.plan.SourceIndex
    decisions: dict[tuple[str, str], ReviewDecision]
    category_names: dict[int, str] = field(default_factory=dict)
    outcomes: dict[str, dict[str, Outcome]] = field(default_factory=dict)  # stage → sample → outcome
    _url_prefix: dict[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, workdir: Workdir | str | Path, tasks: Collection[TaskRecord] = ()) -> WorkdirView:
        wd = workdir if isinstance(workdir, Workdir) else Workdir(workdir)
        try:
            rows = wd.status_by_id()
            source, index = wd.source(), wd.index()
        except WorkdirError as exc:
            raise ReviewError(f"{exc} — build the work directory first (comcoco build)") from None
        view = cls(workdir=wd, rows=rows, source=source, index=index, decisions=wd.decisions(),
                   category_names={c.id: c.name for c in source.categories()})
        view.resolve(read_ledger(wd.root).values(), tasks)
        return view

    def resolve(self, records: Any, tasks: Collection[TaskRecord]) -> None:
        records = list(records)
        for stage in ("placement", "expressions"):
            self.outcomes[stage] = resolve_stage(records, expected_slots(tasks, stage), stage)

    def reviewable(self) -> list[StatusRow]:
        """Built samples (status ok, composite written), doubtful first: plausibility, then id."""
        rows = [r for r in self.rows.values() if r.status == STATUS_OK and r.composite]
        return sorted(rows, key=lambda r: (plausibility(r), r.sample_id))

    def sentences(self, row: StatusRow) -> tuple[Any, ...]:
        try:  # only text that can be shipped (comcoco.sources.format.usable_sentences)
            return usable_sentences(self.source.ref(int(row.fg_ref_id)).sentences)
        except KeyError:
            raise ReviewError(f"sample {row.sample_id}: ref {row.fg_ref_id} is not in the source") from None

    def image_url(self, row: StatusRow, document_root: str | Path) -> str:
        """The local-files URL of the sample's composite; the work directory is resolved against the
        document root once, not per task (a push builds tens of thousands)."""
        key = str(document_root)
        if key not in self._url_prefix:
            folder = local_files_url(self.workdir.root / "_", document_root)[: -len("_")]
            self._url_prefix[key] = folder
        return self._url_prefix[key] + urllib.parse.quote(str(row.composite), safe="/")

    def image_size(self, row: StatusRow) -> tuple[int, int]:
        img = self.source.image(int(row.bg_image_id))
        return int(img.width), int(img.height)


def expected_slots(tasks: Collection[TaskRecord], stage: str) -> dict[tuple[str, int], set[int]]:
    """(sample, round) → the slots that have a task at ``stage``."""
    out: dict[tuple[str, int], set[int]] = {}
    for t in tasks:
        if t.stage == stage:
            out.setdefault((t.sample_id, t.round), set()).add(t.slot)
    return out


def plausibility(row: StatusRow) -> float:
    v = row.plausibility
    return float(v) if v is not None and not math.isnan(float(v)) else -1.0


def box_to_percent(box: Sequence[float], size: Sequence[int]) -> dict[str, float]:
    """Label Studio's rectangle value (percent of the image) for a pixel box."""
    x, y, w, h = (float(v) for v in box)
    W, H = float(size[0]), float(size[1])
    return {"x": 100 * x / W, "y": 100 * y / H, "width": 100 * w / W, "height": 100 * h / H, "rotation": 0}


def percent_box(value: Mapping[str, Any], size: Sequence[int]) -> tuple[float, float, float, float]:
    """The unclipped pixel box (x0, y0, x1, y1) of a Label Studio rectangle value."""
    W, H = int(size[0]), int(size[1])
    x0 = float(value["x"]) * W / 100
    y0 = float(value["y"]) * H / 100
    return x0, y0, x0 + float(value["width"]) * W / 100, y0 + float(value["height"]) * H / 100


def percent_to_box(value: Mapping[str, Any], size: Sequence[int]) -> tuple[int, int, int, int]:
    """Pixel box (clipped to the image) for a Label Studio rectangle value."""
    W, H = int(size[0]), int(size[1])
    x0, y0, x1, y1 = percent_box(value, size)
    xa, ya = min(max(round(x0), 0), W), min(max(round(y0), 0), H)
    xb, yb = min(max(round(x1), 0), W), min(max(round(y1), 0), H)
    return int(xa), int(ya), int(xb - xa), int(yb - ya)


def _rect(from_name: str, box: Sequence[float], size: Sequence[int]) -> dict[str, Any]:
    value = box_to_percent(box, size) | {"rectanglelabels": ["object"]}
    return {"from_name": from_name, "to_name": "image", "type": "rectanglelabels",
            "original_width": int(size[0]), "original_height": int(size[1]), "value": value}


def look_text(view: WorkdirView, stage: str, row: StatusRow, round_: int, slot: int, annotator: str) -> str:
    """The line above the image: which look this is (and why), and whom it is for."""
    who = f"for {annotator}" if annotator else "open to any annotator"
    if slot == SLOT_THIRD:
        outcome = view.outcomes.get(stage, {}).get(row.sample_id)
        why = outcome.detail if outcome is not None and outcome.detail else "two annotators disagreed"
        text = f"Round {round_ + 1}, third look: two annotators disagreed ({why}). Your answer decides."
    elif round_ > 0:
        d = view.decisions.get((row.sample_id, "placement"))
        by = d.reviewer if d is not None else "a reviewer"
        text = (f"Round {round_ + 1}, look again: {by} adjusted the box in round {round_}; this is the image "
                "recomposed with the new box. Accept it if it is now plausible, adjust again or reject.")
    elif slot == SLOT_SECOND:
        text = "Round 1, second opinion: another annotator answers this sample too; answer on your own."
    else:
        text = "Round 1, first look."
    return f"{text} ({who})"


def placement_task(view: WorkdirView, row: StatusRow, round_: int, slot: int, annotator: str,
                   document_root: str | Path) -> dict[str, Any]:
    """Stage 1 task: composite, expressions, score, the look line; the placed box as a prediction."""
    size = view.image_size(row)
    score = plausibility(row)
    return {
        "data": {
            "image": view.image_url(row, document_root),
            "expressions": "\n".join(s.sent for s in view.sentences(row)),
            "score": f"{score:.2f}" if score >= 0 else "n/a",
            "look": look_text(view, "placement", row, round_, slot, annotator),
            "annotator": annotator,
            "sample_id": row.sample_id,
            "round": int(round_),
            "slot": int(slot),
            "placed_box": [int(v) for v in row.box],
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


def expressions_task(view: WorkdirView, row: StatusRow, slot: int, annotator: str,
                     document_root: str | Path) -> dict[str, Any]:
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
            "image": view.image_url(row, document_root),
            "expression_options": [{"value": s.sent, "alias": str(s.sent_id)} for s in sentences],
            "look": look_text(view, "expressions", row, 0, slot, annotator),
            "annotator": annotator,
            "sample_id": row.sample_id,
            "round": 0,
            "slot": int(slot),
        },
        "predictions": [{"model_version": MODEL_VERSION, "score": 1.0, "result": result}],
    }


def build_task(view: WorkdirView, stage: str, row: StatusRow, round_: int, slot: int, annotator: str,
               document_root: str | Path) -> dict[str, Any]:
    if stage == "placement":
        return placement_task(view, row, round_, slot, annotator, document_root)
    return expressions_task(view, row, slot, annotator, document_root)


# --- which tasks a stage needs ---------------------------------------------------------------------


def wanted(
    view: WorkdirView,
    stage: str,
    task_rounds: Mapping[int, int],
    team: Team = Team(),
    without_placement_review: bool = False,
    only: Collection[str] | None = None,
) -> list[tuple[StatusRow, int, int]]:
    """(row, round, slot) of every task the stage should have, doubtful first.

    Placement: round 0 until decided (slot 1 too for a sample in the team's overlap); after an applied
    *adjust* decided in round r, round r + 1 (the look at the recomposed sample); a third look (slot 2)
    while a round's two answers disagree; nothing more after accept or reject. Expressions: round 0
    for samples accepted or adjusted in stage 1 (or every sample not rejected,
    ``without_placement_review``). ``task_rounds`` maps known task ids to their round.
    """
    out: list[tuple[StatusRow, int, int]] = []
    outcomes = view.outcomes.get(stage, {})
    for row in view.reviewable():
        sid = row.sample_id
        if only is not None and sid not in only:
            continue
        d = view.decisions.get((sid, "placement"))
        mine: list[tuple[int, int]] = []
        if stage == "placement":
            if d is None:
                mine.append((0, SLOT_FIRST))
                if team.in_overlap(sid):
                    mine.append((0, SLOT_SECOND))
            elif d.decision == "adjust":
                done = task_rounds.get(d.task_id, 0) if d.task_id is not None else 0
                mine.append((done + 1, SLOT_FIRST))
        else:
            if (d is not None and d.decision == "reject") or (d is None and not without_placement_review):
                continue
            mine.append((0, SLOT_FIRST))
            if team.in_overlap(sid):
                mine.append((0, SLOT_SECOND))
        o = outcomes.get(sid)
        if o is not None and o.state == CONFLICT:
            mine.append((o.round, SLOT_THIRD))
        out.extend((row, rnd, slot) for rnd, slot in sorted(set(mine)))
    return out
