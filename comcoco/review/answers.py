"""Reading one Label Studio annotation as one annotator's answer (an ``AnnotationRecord``).

Nothing here raises for a bad annotation: what cannot count is recorded with its ``error`` (named by
task, sample and annotation), so a pull goes on and the annotator can fix it in Label Studio; an
edited annotation is read again by the next pull. What is read differently from what was clicked is
said in ``note``:

* *accept* with a moved box is recorded as *adjust* (the reviewer found the moved box plausible; the
  box would otherwise be silently lost);
* a box that leaves the image is clipped to it (an error when nothing is left);
* an annotation whose author's account was removed counts, under ``removed``.

Errors: no decision or an unknown one, *adjust* without a box, *reject* without a reason (the
labeling config requires one; an annotation posted through the API can still lack it), a result the
stage's labeling config does not have (the config was edited by hand), a value of the wrong shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from comcoco.decisions import AnnotationRecord
from comcoco.errors import ComcocoError
from comcoco.records import PLACEMENT_DECISIONS
from comcoco.review.tasks import WorkdirView, percent_box, percent_to_box

MOVED_TOLERANCE = 1  # pixels: an accept whose box moved by more is an adjust
KNOWN_RESULTS: dict[str, dict[str, str]] = {
    "placement": {"decision": "choices", "box": "rectanglelabels", "reason": "textarea"},
    "expressions": {"keep": "choices", "spatial": "textarea", "more": "textarea", "object": "rectanglelabels"},
}


class AnnotationError(ComcocoError, ValueError):
    """An annotation that cannot become an answer (no choice made, adjust without a box, ...)."""


def utc(stamp: str) -> str:
    """Label Studio's timestamp as ISO 8601 UTC with a ``Z`` (stable text for the stores)."""
    try:
        dt = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except (AttributeError, ValueError):
        return str(stamp)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def submitted(task: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The task's submitted annotations (skipped ones left out), oldest first."""
    live = [a for a in task.get("annotations") or () if not a.get("was_cancelled")]
    return sorted(live, key=lambda a: (utc(a.get("updated_at") or ""), int(a["id"])))


def _results(annotation: Mapping[str, Any], from_name: str) -> list[dict[str, Any]]:
    return [r for r in annotation.get("result") or () if isinstance(r, dict) and r.get("from_name") == from_name]


def _texts(annotation: Mapping[str, Any], from_name: str) -> list[str]:
    out: list[str] = []
    for r in _results(annotation, from_name):
        for t in (r.get("value") or {}).get("text") or ():
            for line in str(t).splitlines():
                line = " ".join(line.split())
                if line and line not in out:
                    out.append(line)
    return out


def _choices(annotation: Mapping[str, Any], from_name: str) -> list[str]:
    return [str(c) for r in _results(annotation, from_name) for c in (r.get("value") or {}).get("choices") or ()]


def _check_shape(stage: str, annotation: Mapping[str, Any]) -> None:
    known = KNOWN_RESULTS[stage]
    for r in annotation.get("result") or ():
        if not isinstance(r, dict):
            raise AnnotationError(f"a result is not an object: {r!r}")
        name, kind = r.get("from_name"), r.get("type")
        if name not in known or (kind is not None and kind != known[name]):
            raise AnnotationError(
                f"result {name!r} of type {kind!r} is not in the {stage} labeling config "
                f"(expected {', '.join(f'{k} ({v})' for k, v in known.items())}); was the config edited by hand?")
        if not isinstance(r.get("value"), dict):
            raise AnnotationError(f"result {name!r} has no value object: {r.get('value')!r}")


def read_annotation(stage: str, project_id: int, task: Mapping[str, Any], annotation: Mapping[str, Any],
                    view: WorkdirView, annotator: str) -> AnnotationRecord:
    """The ledger record of one annotation (``error`` set when it cannot count; see the module docstring)."""
    data = task.get("data") or {}
    sid = str(data.get("sample_id"))
    base = AnnotationRecord(
        annotation_id=int(annotation["id"]), task_id=int(task["id"]), project_id=int(project_id), stage=stage,
        sample_id=sid, round=int(data.get("round", 0) or 0), slot=int(data.get("slot", 0) or 0),
        annotator=annotator, created_at=utc(annotation.get("created_at") or ""),
        updated_at=utc(annotation.get("updated_at") or annotation.get("created_at") or ""))
    note = "the annotator's account was removed on the server" if annotator == "removed" else ""
    try:
        row = view.rows.get(sid)
        if row is None:
            raise AnnotationError("the sample is not in this work directory")
        _check_shape(stage, annotation)
        if stage == "placement":
            return _placement(base, data, annotation, view, row, note)
        return _expressions(base, annotation, view, row, note)
    except (AnnotationError, KeyError, TypeError, ValueError) as exc:
        why = str(exc) if isinstance(exc, AnnotationError) else f"unreadable value ({type(exc).__name__}: {exc})"
        return replace(base, note=note, error=why)


def _placement(base: AnnotationRecord, data: Mapping[str, Any], annotation: Mapping[str, Any],
               view: WorkdirView, row: Any, note: str) -> AnnotationRecord:
    choices = _choices(annotation, "decision")
    if len(choices) != 1 or choices[0] not in PLACEMENT_DECISIONS:
        raise AnnotationError(f"expected one of {'/'.join(PLACEMENT_DECISIONS)}, got {choices!r}")
    decision = choices[0]
    shown = data.get("placed_box")
    shown_box = tuple(int(v) for v in shown) if isinstance(shown, list) and len(shown) == 4 else row.box
    notes = [note] if note else []
    box = None
    rects = _results(annotation, "box")
    if rects:
        r = rects[-1]
        size = (r.get("original_width"), r.get("original_height"))
        if not all(isinstance(v, int | float) and v > 0 for v in size):
            size = view.image_size(row)
        W, H = int(size[0]), int(size[1])  # type: ignore[arg-type]
        x0, y0, x1, y1 = percent_box(r["value"], (W, H))
        box = percent_to_box(r["value"], (W, H))
        if box[2] < 1 or box[3] < 1:
            raise AnnotationError(f"the box ({x0:.0f}, {y0:.0f})–({x1:.0f}, {y1:.0f}) lies outside the "
                                  f"{W}×{H} image or is empty")
        if x0 < -0.5 or y0 < -0.5 or x1 > W + 0.5 or y1 > H + 0.5:
            notes.append(f"the box ({x0:.0f}, {y0:.0f})–({x1:.0f}, {y1:.0f}) leaves the {W}×{H} image; "
                         f"clipped to {box}")
    if decision == "adjust" and box is None:
        raise AnnotationError("'adjust' without a box")
    if decision == "accept" and box is not None and shown_box is not None and \
            max(abs(a - b) for a, b in zip(box, shown_box, strict=True)) > MOVED_TOLERANCE:
        decision = "adjust"
        notes.append(f"accept with the box moved from {tuple(shown_box)} to {box}: recorded as adjust")
    reason = " ".join(_texts(annotation, "reason"))
    if decision == "reject" and not reason:
        raise AnnotationError("'reject' without a reason (the labeling config requires one); "
                              "the annotator should add it and update the annotation")
    return replace(base, decision=decision, reason=reason, box=box if decision == "adjust" else None,
                   shown_box=tuple(shown_box) if shown_box is not None else None, note="; ".join(notes))


def _expressions(base: AnnotationRecord, annotation: Mapping[str, Any], view: WorkdirView, row: Any,
                 note: str) -> AnnotationRecord:
    sent_ids = [s.sent_id for s in view.sentences(row)]
    kept_aliases = _choices(annotation, "keep")
    try:
        kept = sorted({int(a) for a in kept_aliases})
    except ValueError:
        raise AnnotationError(f"kept expressions {kept_aliases!r} are not sentence ids") from None
    unknown = sorted(set(kept) - set(sent_ids))
    if unknown:
        raise AnnotationError(f"kept expressions {unknown} are not the object's sentences {sent_ids}")
    spatial = _texts(annotation, "spatial")
    phrases = spatial + [t for t in _texts(annotation, "more") if t not in spatial]
    return replace(base, decision="done", kept_sent_ids=tuple(kept),
                   dropped_sent_ids=tuple(sorted(set(sent_ids) - set(kept))), spatial_phrases=tuple(phrases),
                   note=note)


def where(rec: AnnotationRecord) -> str:
    """How messages name an answer: task, sample, round, annotation and its author."""
    return (f"task {rec.task_id} (sample {rec.sample_id}, round {rec.round + 1}), annotation {rec.annotation_id} "
            f"by {rec.annotator}")
