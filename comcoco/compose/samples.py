"""The per-sample table (``samples.parquet``) the compose stage writes.

The schema is fixed and explicit (no pandas metadata), rows are sorted by ``sample_id`` and the file
is written atomically, so the same samples always give the same bytes.
"""

from __future__ import annotations

import io
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from comcoco.errors import ComcocoError
from comcoco.io import write_bytes_atomic
from comcoco.records import FILTER_NAMES, STATUS_OK, STATUSES, FilterArgs

FILE_FIELDS: tuple[str, ...] = ("composite", "ground_truth", "mask", "effect_mask")


class SamplesFileError(ComcocoError, ValueError):
    """A samples table is missing, unreadable or lacks required columns."""


@dataclass(frozen=True)
class SampleRow:
    """One composed sample (or one failed attempt, with ``status`` ≠ ``ok`` and a ``reason``).

    Image paths are relative to the output directory. ``box_*`` is the placed box in composite
    pixels; ``polygon`` the placed outline as JSON (COCO flat lists, composite coordinates).
    ``objects``/``object_ann_ids`` name the *other* samples pasted into the same composite; each
    sample's ground truth shows those objects but not its own.
    """

    sample_id: str
    composite_id: str
    status: str
    reason: str
    fg_ref_id: int
    fg_ann_id: int
    fg_image_id: int
    bg_image_id: int
    category_id: int
    candidate_rank: int
    seed: int
    config: str
    composite: str | None = None
    ground_truth: str | None = None
    mask: str | None = None
    box_x: int | None = None
    box_y: int | None = None
    box_w: int | None = None
    box_h: int | None = None
    s: float | None = None
    rx: float | None = None
    ry: float | None = None
    plausibility: float | None = None
    temperature: float | None = None
    brightness: float | None = None
    contrast: float | None = None
    saturation: float | None = None
    highlight: float | None = None
    shadow: float | None = None
    polygon: str | None = None
    mask_area: int | None = None
    outside_error: float | None = None
    objects: tuple[str, ...] = field(default=())
    object_ann_ids: tuple[int, ...] = field(default=())
    # robust profile only (docs/compose.md): what travelled with the object, and how it was matched
    effect_mask: str | None = None  # object ∪ its shadow ∪ its JPEG ring: what a removal model inpaints
    effect_area: int | None = None
    light: str | None = None  # where the light came from: objects | gradient | default
    shadow_kind: str | None = None  # cast | contact | none, with the reason for less than a cast shadow
    shadow_strength: float | None = None
    blur: float | None = None  # σ (px) applied to the object to match the scene
    noise: float | None = None  # luma noise std (0–255) added to the object
    jpeg_quality: int | None = None  # quality of the re-encoding on the scene's grid (None: not done)
    matte: str | None = None  # refined, or kept: why the refinement was not used
    decoy_ann_ids: tuple[int, ...] = field(default=())  # look-alikes in the composite no sample refers to
    decoys_skipped: tuple[str, ...] = field(default=())  # planned decoys left out: "ann_id: status: reason"

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK

    @property
    def box(self) -> tuple[int, int, int, int] | None:
        if self.box_x is None:
            return None
        return (int(self.box_x), int(self.box_y), int(self.box_w), int(self.box_h))  # type: ignore[arg-type]

    @property
    def filter_args(self) -> FilterArgs | None:
        if self.temperature is None:
            return None
        return FilterArgs.from_sequence([getattr(self, n) for n in FILTER_NAMES])

    @property
    def files(self) -> tuple[str, ...]:
        """The sample's files (composite, ground truth, mask, effect mask), relative paths, those it has."""
        return tuple(p for p in (getattr(self, k) for k in FILE_FIELDS) if p)

    def with_filters(self, args: FilterArgs) -> SampleRow:
        return replace(self, **dict(zip(FILTER_NAMES, args.as_tuple(), strict=True)))


_I64, _I32, _F64, _STR = pa.int64(), pa.int32(), pa.float64(), pa.string()
_TYPES: dict[str, pa.DataType] = {
    "sample_id": _STR,
    "composite_id": _STR,
    "status": _STR,
    "reason": _STR,
    "fg_ref_id": _I64,
    "fg_ann_id": _I64,
    "fg_image_id": _I64,
    "bg_image_id": _I64,
    "category_id": _I64,
    "candidate_rank": _I32,
    "seed": _I64,
    "config": _STR,
    "composite": _STR,
    "ground_truth": _STR,
    "mask": _STR,
    "box_x": _I32,
    "box_y": _I32,
    "box_w": _I32,
    "box_h": _I32,
    **{n: _F64 for n in ("s", "rx", "ry", "plausibility", *FILTER_NAMES)},
    "polygon": _STR,
    "mask_area": _I64,
    "outside_error": _F64,
    "objects": pa.list_(_STR),
    "object_ann_ids": pa.list_(_I64),
    "effect_mask": _STR,
    "effect_area": _I64,
    "light": _STR,
    "shadow_kind": _STR,
    "shadow_strength": _F64,
    "blur": _F64,
    "noise": _F64,
    "jpeg_quality": _I32,
    "matte": _STR,
    "decoy_ann_ids": pa.list_(_I64),
    "decoys_skipped": pa.list_(_STR),
}
# Columns only a robust-profile table has; a paper-profile table keeps the original schema (and bytes).
ROBUST_COLUMNS: tuple[str, ...] = ("effect_mask", "effect_area", "light", "shadow_kind", "shadow_strength", "blur",
                                   "noise", "jpeg_quality", "matte", "decoy_ann_ids", "decoys_skipped")
_REQUIRED = {"sample_id", "composite_id", "status", "reason", "fg_ref_id", "fg_ann_id", "fg_image_id",
             "bg_image_id", "category_id", "candidate_rank", "seed", "config"}
ROBUST_SAMPLES_SCHEMA = pa.schema(
    [pa.field(f.name, _TYPES[f.name], nullable=f.name not in _REQUIRED) for f in fields(SampleRow)]
)
SAMPLES_SCHEMA = pa.schema([f for f in ROBUST_SAMPLES_SCHEMA if f.name not in ROBUST_COLUMNS])
assert [f.name for f in fields(SampleRow)] == ROBUST_SAMPLES_SCHEMA.names


LIST_COLUMNS: tuple[str, ...] = ("objects", "object_ann_ids", "decoy_ann_ids", "decoys_skipped")
_TEXT_LISTS = frozenset({"objects", "decoys_skipped"})


def lists_as_tuples(d: dict[str, Any]) -> dict[str, Any]:
    """A row read from Parquet with its list columns as tuples (ids as int), in place; absent ones stay absent."""
    for name in LIST_COLUMNS:
        if name in d:
            d[name] = tuple(v if name in _TEXT_LISTS else int(v) for v in (d[name] or ()))
    return d


def decoy_counts(rows: Iterable[SampleRow]) -> dict[str, Any]:
    """Decoys pasted and left out over the composites of ``rows`` that were made (each composite's ok rows
    all list the same ones), the left-out ones counted by their failure status; empty when none were planned."""
    seen: dict[str, SampleRow] = {}
    for r in rows:
        if r.ok:
            seen.setdefault(r.composite_id, r)
    pasted = sum(len(r.decoy_ann_ids) for r in seen.values())
    why = Counter(s.split(": ")[1] for r in seen.values() for s in r.decoys_skipped)
    if not pasted and not why:
        return {}
    return {"pasted": pasted, "composites": sum(1 for r in seen.values() if r.decoy_ann_ids),
            "skipped": sum(why.values()), "skipped_by_status": dict(sorted(why.items()))}


def samples_schema(robust: bool) -> pa.Schema:
    return ROBUST_SAMPLES_SCHEMA if robust else SAMPLES_SCHEMA


def _clean_float(v: float | None) -> float | None:
    if v is None:
        return None
    v = float(v)
    return None if math.isnan(v) else v


def rows_table(rows: Sequence[Any], schema: pa.Schema, row_type: type, statuses: Sequence[str] | None = None) -> pa.Table:
    """Typed rows (``SampleRow`` or a subclass) as an Arrow table with ``schema``, in the given order.

    NaN floats become nulls; ``statuses`` (when given) are the only status values accepted.
    """
    names = schema.names
    cols: dict[str, list[Any]] = {name: [] for name in names}
    floats = {f.name for f in schema if f.type == _F64}
    for r in rows:
        if statuses is not None and r.status not in statuses:
            raise ValueError(f"sample {r.sample_id}: unknown status {r.status!r}")
        for name in names:
            v = getattr(r, name)
            if name in floats:
                v = _clean_float(v)
            elif name in LIST_COLUMNS:
                v = list(v)
            cols[name].append(v)
    return pa.table(cols, schema=schema)


def samples_table(rows: Sequence[SampleRow], robust: bool = False) -> pa.Table:
    """Rows as an Arrow table with the fixed schema of their profile, sorted by sample_id."""
    return rows_table(sorted(rows, key=lambda r: r.sample_id), samples_schema(robust), SampleRow, STATUSES)


def write_samples(path: str | Path, rows: Sequence[SampleRow], robust: bool = False) -> Path:
    """Write rows to a Parquet file, sorted and byte-deterministic, atomically (``robust``: the robust
    profile's columns too)."""
    path = Path(path)
    buf = io.BytesIO()
    pq.write_table(samples_table(rows, robust), buf, compression="zstd", store_schema=False)
    write_bytes_atomic(path, buf.getvalue())
    return path


def read_samples(path: str | Path) -> list[SampleRow]:
    """Read a samples table written by :func:`write_samples` (extra columns are ignored)."""
    path = Path(path)
    try:
        table = pq.read_table(path)
    except FileNotFoundError:
        raise SamplesFileError(f"{path}: no such samples file") from None
    except (pa.ArrowInvalid, OSError) as exc:
        raise SamplesFileError(f"{path}: not a readable Parquet file ({exc})") from None
    missing = [n for n in SAMPLES_SCHEMA.names if n not in table.column_names]
    if missing:
        raise SamplesFileError(f"{path}: missing columns {', '.join(missing)}")
    names = SAMPLES_SCHEMA.names + [n for n in ROBUST_COLUMNS if n in table.column_names]
    data = table.select(names).to_pylist()
    out = []
    for i, d in enumerate(data):
        if d["sample_id"] is None or d["status"] not in STATUSES:
            raise SamplesFileError(f"{path}: row {i} has no sample_id or an unknown status {d['status']!r}")
        out.append(SampleRow(**lists_as_tuples(d)))
    return out
