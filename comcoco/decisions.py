"""The durable store of review decisions: ``WORKDIR/review/decisions.parquet`` (``Workdir.decisions``),
the ledger of every annotator's answer behind them (``annotations.parquet``), and their agreement.

Decisions are keyed by (sample_id, stage): the resolved view a release reads. With several annotators
a decision may rest on two or three answers (``comcoco.review.resolve``); the ledger keeps each of
them with who and when. Writing is atomic and the tables are sorted, so pulling the same annotations
twice leaves the same bytes.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from comcoco.io import write_bytes_atomic
from comcoco.records import PLACEMENT_DECISIONS, REVIEW_STAGES, ReviewDecision

REVIEW_DIR = "review"  # WORKDIR/review/: all of a work directory's review state
DECISIONS_FILE = "decisions.parquet"

_SCHEMA = pa.schema([
    pa.field("sample_id", pa.string(), nullable=False),
    pa.field("stage", pa.string(), nullable=False),
    pa.field("decision", pa.string(), nullable=False),
    pa.field("reviewer", pa.string(), nullable=False),
    pa.field("reviewed_at", pa.string(), nullable=False),
    pa.field("reason", pa.string(), nullable=False),
    pa.field("box", pa.list_(pa.int64())),
    pa.field("kept_sent_ids", pa.list_(pa.int64()), nullable=False),
    pa.field("dropped_sent_ids", pa.list_(pa.int64()), nullable=False),
    pa.field("spatial_phrases", pa.list_(pa.string()), nullable=False),
    pa.field("task_id", pa.int64()),
    pa.field("annotation_id", pa.int64()),
])


def decisions_path(workdir: str | Path) -> Path:
    return Path(workdir) / REVIEW_DIR / DECISIONS_FILE


def validate(d: ReviewDecision) -> None:
    if d.stage not in REVIEW_STAGES:
        raise ValueError(f"sample {d.sample_id}: unknown review stage {d.stage!r}")
    if d.stage == "placement" and d.decision not in PLACEMENT_DECISIONS:
        raise ValueError(f"sample {d.sample_id}: unknown placement decision {d.decision!r}")
    if d.decision == "adjust" and (d.box is None or d.box[2] < 1 or d.box[3] < 1):
        raise ValueError(f"sample {d.sample_id}: an adjust decision needs a box with positive size")


def read_decisions(workdir: str | Path) -> dict[tuple[str, str], ReviewDecision]:
    """All stored decisions by (sample_id, stage); empty when nothing was reviewed yet."""
    path = decisions_path(workdir)
    if not path.is_file():
        return {}
    out: dict[tuple[str, str], ReviewDecision] = {}
    for row in pq.read_table(path).to_pylist():
        row["box"] = tuple(row["box"]) if row["box"] is not None else None
        for key in ("kept_sent_ids", "dropped_sent_ids", "spatial_phrases"):
            row[key] = tuple(row[key])
        d = ReviewDecision(**row)
        out[(d.sample_id, d.stage)] = d
    return out


def write_decisions(workdir: str | Path, decisions: Mapping[tuple[str, str], ReviewDecision]) -> Path:
    rows = []
    for key in sorted(decisions):
        d = decisions[key]
        validate(d)
        rec = asdict(d)
        rec["box"] = list(d.box) if d.box is not None else None
        for k in ("kept_sent_ids", "dropped_sent_ids", "spatial_phrases"):
            rec[k] = list(rec[k])
        rows.append(rec)
    table = pa.Table.from_pylist(rows, schema=_SCHEMA)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", store_schema=False)
    path = decisions_path(workdir)
    write_bytes_atomic(path, buf.getvalue())
    return path


def merge_decisions(workdir: str | Path, new: Iterable[ReviewDecision]) -> tuple[int, int]:
    """Add or replace decisions; returns (added, changed). Same decision again changes nothing."""
    current = read_decisions(workdir)
    added = changed = 0
    for d in new:
        validate(d)
        key = (d.sample_id, d.stage)
        if key not in current:
            added += 1
        elif current[key] != d:
            changed += 1
        else:
            continue
        current[key] = d
    if added or changed:
        write_decisions(workdir, current)
    return added, changed


assert [f.name for f in fields(ReviewDecision)] == _SCHEMA.names


# --- the annotation ledger: every annotator's answer, with who and when ---------------------------------

LEDGER_FILE = "annotations.parquet"
SLOT_FIRST, SLOT_SECOND, SLOT_THIRD = 0, 1, 2  # a round's tasks: first and second opinion, third look


@dataclass(frozen=True)
class AnnotationRecord:
    """One annotation of one annotator, as the last pull read it (``WORKDIR/review/annotations.parquet``).

    ``decisions.parquet`` is the resolved view (one decision per sample and stage); this ledger keeps
    every answer behind it. ``box`` is the box the annotator left (placement), ``shown_box`` the box the
    task showed; ``note`` says what a pull changed in the reading (a moved box on *accept*, a clipped
    box); ``error`` why the answer does not count ("" when it counts).
    """

    annotation_id: int
    task_id: int
    project_id: int
    stage: str
    sample_id: str
    round: int
    slot: int
    annotator: str  # the Label Studio user's e-mail; "user:<id>" or "removed" when the account is gone
    created_at: str  # ISO 8601 UTC
    updated_at: str
    decision: str = ""
    reason: str = ""
    box: tuple[int, int, int, int] | None = None
    shown_box: tuple[int, int, int, int] | None = None
    kept_sent_ids: tuple[int, ...] = ()
    dropped_sent_ids: tuple[int, ...] = ()
    spatial_phrases: tuple[str, ...] = ()
    note: str = ""
    error: str = ""

    @property
    def counts(self) -> bool:
        return not self.error and bool(self.decision)


_LEDGER_SCHEMA = pa.schema([
    pa.field("annotation_id", pa.int64(), nullable=False),
    pa.field("task_id", pa.int64(), nullable=False),
    pa.field("project_id", pa.int64(), nullable=False),
    pa.field("stage", pa.string(), nullable=False),
    pa.field("sample_id", pa.string(), nullable=False),
    pa.field("round", pa.int32(), nullable=False),
    pa.field("slot", pa.int32(), nullable=False),
    pa.field("annotator", pa.string(), nullable=False),
    pa.field("created_at", pa.string(), nullable=False),
    pa.field("updated_at", pa.string(), nullable=False),
    pa.field("decision", pa.string(), nullable=False),
    pa.field("reason", pa.string(), nullable=False),
    pa.field("box", pa.list_(pa.int64())),
    pa.field("shown_box", pa.list_(pa.int64())),
    pa.field("kept_sent_ids", pa.list_(pa.int64()), nullable=False),
    pa.field("dropped_sent_ids", pa.list_(pa.int64()), nullable=False),
    pa.field("spatial_phrases", pa.list_(pa.string()), nullable=False),
    pa.field("note", pa.string(), nullable=False),
    pa.field("error", pa.string(), nullable=False),
])
assert [f.name for f in fields(AnnotationRecord)] == _LEDGER_SCHEMA.names


def ledger_path(workdir: str | Path) -> Path:
    return Path(workdir) / REVIEW_DIR / LEDGER_FILE


def read_ledger(workdir: str | Path) -> dict[int, AnnotationRecord]:
    """Every annotation pulled so far, by annotation id; empty before the first pull."""
    path = ledger_path(workdir)
    if not path.is_file():
        return {}
    out: dict[int, AnnotationRecord] = {}
    for row in pq.read_table(path).to_pylist():
        for key in ("box", "shown_box"):
            row[key] = tuple(row[key]) if row[key] is not None else None
        for key in ("kept_sent_ids", "dropped_sent_ids", "spatial_phrases"):
            row[key] = tuple(row[key])
        out[row["annotation_id"]] = AnnotationRecord(**row)
    return out


def write_ledger(workdir: str | Path, records: Mapping[int, AnnotationRecord]) -> Path:
    """Write the whole ledger, sorted by annotation id (atomic; same records give the same bytes)."""
    rows = []
    for key in sorted(records):
        rec = asdict(records[key])
        for k in ("box", "shown_box"):
            rec[k] = list(rec[k]) if rec[k] is not None else None
        for k in ("kept_sent_ids", "dropped_sent_ids", "spatial_phrases"):
            rec[k] = list(rec[k])
        rows.append(rec)
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=_LEDGER_SCHEMA), buf, compression="zstd", store_schema=False)
    path = ledger_path(workdir)
    write_bytes_atomic(path, buf.getvalue())
    return path


# --- inter-annotator agreement -----------------------------------------------------------------------------


def box_iou(a: Sequence[float] | None, b: Sequence[float] | None) -> float | None:
    """Intersection over union of two (x, y, w, h) boxes; None when either is missing."""
    if a is None or b is None:
        return None
    ax, ay, aw, ah = (float(v) for v in a)
    bx, by, bw, bh = (float(v) for v in b)
    iw = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    ih = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = iw * ih
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else None


def cohen_kappa(pairs: Sequence[tuple[str, str]], labels: Sequence[str]) -> float | None:
    """Cohen's κ of two raters' labels (rater A first in each pair); None when chance agreement is 1."""
    n = len(pairs)
    if n == 0:
        return None
    observed = sum(a == b for a, b in pairs) / n
    expected = sum((sum(a == k for a, _ in pairs) / n) * (sum(b == k for _, b in pairs) / n) for k in labels)
    if expected >= 1.0:
        return None
    return (observed - expected) / (1.0 - expected)


def answered_box(rec: AnnotationRecord) -> tuple[int, int, int, int] | None:
    """The box an answer stands for: the corrected box of an adjust, the shown box of an accept."""
    if rec.decision == "adjust":
        return rec.box
    if rec.decision == "accept":
        return rec.shown_box
    return None


def overlap_pairs(records: Iterable[AnnotationRecord], stage: str) -> list[tuple[AnnotationRecord, AnnotationRecord]]:
    """(first, second opinion) of every sample and round that two different annotators answered."""
    latest: dict[tuple[str, int, int], AnnotationRecord] = {}
    for r in records:
        if r.stage != stage or not r.counts or r.slot not in (SLOT_FIRST, SLOT_SECOND):
            continue
        key = (r.sample_id, r.round, r.slot)
        if key not in latest or (r.updated_at, r.annotation_id) > (latest[key].updated_at, latest[key].annotation_id):
            latest[key] = r
    out = []
    for (sid, rnd, slot), first in sorted(latest.items()):
        second = latest.get((sid, rnd, SLOT_SECOND))
        if slot == SLOT_FIRST and second is not None and second.annotator != first.annotator:
            out.append((first, second))
    return out


def agreement(records: Iterable[AnnotationRecord]) -> dict[str, Any]:
    """Inter-annotator agreement on the samples two annotators answered (the review's overlap).

    Placement: Cohen's κ on accept / reject / adjust (first opinion as rater A, second as rater B),
    the observed agreement, and the mean IoU of the two boxes where both answers have one (accept: the
    box shown; adjust: the corrected box). Expressions: the share of expressions both kept or both dropped.
    """
    records = list(records)
    placement = overlap_pairs(records, "placement")
    labels = [(a.decision, b.decision) for a, b in placement]
    ious = [v for a, b in placement if (v := box_iou(answered_box(a), answered_box(b))) is not None]
    kappa = cohen_kappa(labels, PLACEMENT_DECISIONS)
    expr = overlap_pairs(records, "expressions")
    same = total = 0
    for a, b in expr:
        ids = set(a.kept_sent_ids) | set(a.dropped_sent_ids) | set(b.kept_sent_ids) | set(b.dropped_sent_ids)
        same += sum((i in a.kept_sent_ids) == (i in b.kept_sent_ids) for i in ids)
        total += len(ids)
    return {
        "placement": {
            "pairs": len(placement),
            "observed": round(sum(x == y for x, y in labels) / len(labels), 4) if labels else None,
            "kappa": round(kappa, 4) if kappa is not None else None,
            "box_pairs": len(ious),
            "mean_box_iou": round(sum(ious) / len(ious), 4) if ious else None,
        },
        "expressions": {
            "pairs": len(expr),
            "expressions": total,
            "keep_agreement": round(same / total, 4) if total else None,
        },
    }


def agreement_of(workdir: str | Path) -> dict[str, Any]:
    """``agreement`` over the work directory's ledger."""
    return agreement(read_ledger(workdir).values())
