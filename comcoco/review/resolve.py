"""From annotators' answers to one decision per sample and stage: the resolution rule.

A round of a sample has one task (slot 0), or two when the sample is in the overlap (slots 0 and 1,
two different annotators), and a third-look task (slot 2) when those two disagree. Per slot the
latest answer counts. The rule, for two answers of the placement stage:

* both the same → that decision (two adjusts only when their boxes overlap with IoU ≥ 0.7: the
  decision is then *adjust* with the two boxes averaged);
* one *reject* → *reject* (reject wins: a doubtful sample is not worth a place in the dataset);
* otherwise (accept against adjust, or two adjusts that disagree on the box) → no decision: the
  sample gets a third-look task, and the third look's answer decides.

Expressions stage, two answers: an expression is kept only when both kept it, and the spatial
phrases of both are kept (first opinion first, duplicates dropped). One of two answers in → the
sample waits for the second. A sample's decision comes from its highest round that has one; an
answer to an earlier round, edited after a later round decided, changes nothing.

Everything here is pure: the same ledger and tasks give the same decisions, which is what makes a
pull that was interrupted safe to run again.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from comcoco.decisions import SLOT_FIRST, SLOT_SECOND, SLOT_THIRD, AnnotationRecord, box_iou
from comcoco.records import ReviewDecision

IOU_AGREE = 0.7  # two adjusted boxes this similar are averaged; less similar ones need a third look

DECIDED, PENDING, CONFLICT = "decided", "pending", "conflict"


@dataclass(frozen=True)
class Outcome:
    """Where one sample stands at one stage after resolution."""

    sample_id: str
    stage: str
    round: int  # the highest round with answers
    state: str  # decided | pending (waiting for the second opinion) | conflict (needs a third look)
    decision: ReviewDecision | None  # the decision in force (a lower round's, while this one is open)
    rule: str  # single | agreed | reject wins | boxes averaged | merged | third look | ...
    basis: tuple[int, ...] = ()  # annotation ids the outcome rests on
    detail: str = ""  # the disagreement, for the third-look task
    answered_by: tuple[str, ...] = ()  # the annotators of the basis (a third look goes to someone else)


def _latest(records: Iterable[AnnotationRecord]) -> dict[tuple[int, int], AnnotationRecord]:
    out: dict[tuple[int, int], AnnotationRecord] = {}
    for r in records:
        if not r.counts:
            continue
        key = (r.round, r.slot)
        if key not in out or (r.updated_at, r.annotation_id) > (out[key].updated_at, out[key].annotation_id):
            out[key] = r
    return out


def _decision(recs: list[AnnotationRecord], decision: str, **fields: object) -> ReviewDecision:
    """The resolved decision resting on ``recs`` (slot order): reviewers joined, the latest time and ids."""
    newest = max(recs, key=lambda r: (r.updated_at, r.annotation_id))
    reviewers = list(dict.fromkeys(r.annotator for r in recs))
    return ReviewDecision(sample_id=recs[0].sample_id, stage=recs[0].stage, decision=decision,
                          reviewer="+".join(reviewers), reviewed_at=max(r.updated_at for r in recs),
                          task_id=newest.task_id, annotation_id=newest.annotation_id, **fields)  # type: ignore[arg-type]


def as_decision(r: AnnotationRecord) -> ReviewDecision:
    """One answer on its own as a decision."""
    return _decision([r], r.decision, reason=r.reason, box=r.box if r.decision == "adjust" else None,
                     kept_sent_ids=r.kept_sent_ids, dropped_sent_ids=r.dropped_sent_ids,
                     spatial_phrases=r.spatial_phrases)


def combine(a: AnnotationRecord, b: AnnotationRecord) -> tuple[str, ReviewDecision | None, str]:
    """(rule, decision or None for a conflict, what disagreed) for two answers of one round."""
    if a.stage == "expressions":
        kept = tuple(sorted(set(a.kept_sent_ids) & set(b.kept_sent_ids)))
        every = set(a.kept_sent_ids) | set(a.dropped_sent_ids) | set(b.kept_sent_ids) | set(b.dropped_sent_ids)
        phrases = tuple(dict.fromkeys(a.spatial_phrases + b.spatial_phrases))
        return "merged", _decision([a, b], "done", kept_sent_ids=kept,
                                   dropped_sent_ids=tuple(sorted(every - set(kept))), spatial_phrases=phrases), ""
    detail = f"{a.annotator}: {a.decision}; {b.annotator}: {b.decision}"
    if a.decision == b.decision == "accept":
        return "agreed", _decision([a, b], "accept"), ""
    if "reject" in (a.decision, b.decision):
        rejecters = [r for r in (a, b) if r.decision == "reject"]
        reason = "; ".join(dict.fromkeys(r.reason for r in rejecters if r.reason))
        rule = "agreed" if len(rejecters) == 2 else "reject wins"
        return rule, _decision([a, b], "reject", reason=reason), ""
    if a.decision == b.decision == "adjust":
        iou = box_iou(a.box, b.box)
        if iou is not None and iou >= IOU_AGREE:
            box = tuple(int(round((x + y) / 2)) for x, y in zip(a.box, b.box, strict=True))  # type: ignore[arg-type]
            return "boxes averaged", _decision([a, b], "adjust", box=box), ""
        return "conflict", None, f"{detail} (boxes IoU {iou or 0.0:.2f} < {IOU_AGREE})"
    return "conflict", None, detail


def _round(records: Mapping[tuple[int, int], AnnotationRecord], rnd: int, expected: set[int]
           ) -> tuple[str, ReviewDecision | None, str, tuple[int, ...], str]:
    """(state, decision, rule, basis, detail) of one round."""
    third = records.get((rnd, SLOT_THIRD))
    if third is not None:
        return DECIDED, as_decision(third), "third look", (third.annotation_id,), ""
    first, second = records.get((rnd, SLOT_FIRST)), records.get((rnd, SLOT_SECOND))
    answers = [r for r in (first, second) if r is not None]
    if first is not None and second is not None:
        rule, decision, detail = combine(first, second)
        basis = (first.annotation_id, second.annotation_id)
        return (CONFLICT, None, rule, basis, detail) if decision is None else (DECIDED, decision, rule, basis, "")
    if SLOT_SECOND in expected and SLOT_FIRST in expected:
        return PENDING, None, "awaiting the second opinion", tuple(r.annotation_id for r in answers), ""
    only = answers[0]
    return DECIDED, as_decision(only), "single", (only.annotation_id,), ""


def resolve_sample(records: Iterable[AnnotationRecord], expected: Mapping[int, set[int]]) -> Outcome | None:
    """The outcome for one sample and stage from its answers; ``expected`` maps a round to the slots
    that have a task. None when nothing counts yet."""
    latest = _latest(records)
    if not latest:
        return None
    rounds = sorted({rnd for rnd, _ in latest}, reverse=True)
    some = next(iter(latest.values()))
    top: Outcome | None = None
    for rnd in rounds:
        slots = set(expected.get(rnd, set())) | {slot for r, slot in latest if r == rnd}
        state, decision, rule, basis, detail = _round(latest, rnd, slots)
        if top is None:
            who = tuple(dict.fromkeys(r.annotator for r in latest.values() if r.annotation_id in basis))
            top = Outcome(some.sample_id, some.stage, rnd, state, decision, rule, basis, detail, who)
        if decision is not None:
            if top.decision is None:
                top = replace(top, decision=decision)
            break
    return top


def resolve_stage(records: Iterable[AnnotationRecord], expected: Mapping[tuple[str, int], set[int]],
                  stage: str) -> dict[str, Outcome]:
    """Every sample's outcome at ``stage``; ``expected`` maps (sample, round) to the slots with a task."""
    by_sample: dict[str, list[AnnotationRecord]] = defaultdict(list)
    for r in records:
        if r.stage == stage:
            by_sample[r.sample_id].append(r)
    rounds_of: dict[str, dict[int, set[int]]] = defaultdict(dict)
    for (sid, rnd), slots in expected.items():
        rounds_of[sid][rnd] = set(slots)
    out: dict[str, Outcome] = {}
    for sid in sorted(by_sample):
        outcome = resolve_sample(by_sample[sid], rounds_of.get(sid, {}))
        if outcome is not None:
            out[sid] = outcome
    return out
