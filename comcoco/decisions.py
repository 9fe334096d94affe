"""The durable store of review decisions: ``WORKDIR/review/decisions.parquet`` (``Workdir.decisions``).

Decisions are keyed by (sample_id, stage); the latest annotation wins. Writing is atomic and the
table is sorted, so pulling the same annotations twice leaves the same bytes.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from dataclasses import asdict, fields
from pathlib import Path

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
