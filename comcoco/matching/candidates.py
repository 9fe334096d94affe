"""Candidates files: the matching output as byte-stable Parquet, its settings, and a summary.

One row per (ref_id, rank) with the fixed columns below; the matching settings are stored as JSON in
the schema metadata so a candidates file always says how it was made.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from comcoco.errors import ComcocoError
from comcoco.io import write_bytes_atomic
from comcoco.records import Candidate, Ref

CANDIDATE_COLUMNS: tuple[str, ...] = (
    "ref_id",
    "ann_id",
    "fg_image_id",
    "category_id",
    "cluster",
    "rank",
    "bg_image_id",
    "similarity",
)
PARAMS_METADATA_KEY = b"comcoco.matching"


class CandidatesFileError(ComcocoError, ValueError):
    """A candidates parquet that cannot be read back (the message names the file)."""


def _schema(params: dict[str, Any] | None) -> Any:
    import json

    import pyarrow as pa

    fields = [pa.field(name, pa.int64(), nullable=False) for name in CANDIDATE_COLUMNS[:-1]]
    fields.append(pa.field("similarity", pa.float64(), nullable=False))
    meta = None
    if params is not None:
        meta = {PARAMS_METADATA_KEY: json.dumps(params, sort_keys=True, separators=(",", ":")).encode()}
    return pa.schema(fields, metadata=meta)


def candidates_to_table(candidates: Sequence[Candidate], params: dict[str, Any] | None = None) -> Any:
    """A pyarrow Table with the fixed candidates schema, rows sorted by (ref_id, rank)."""
    import pyarrow as pa

    rows = sorted(candidates, key=lambda c: (c.ref_id, c.rank))
    columns = [
        pa.array(np.fromiter((getattr(c, name) for c in rows), dtype=np.int64, count=len(rows)), pa.int64())
        for name in CANDIDATE_COLUMNS[:-1]
    ]
    columns.append(pa.array(np.fromiter((c.similarity for c in rows), dtype=np.float64, count=len(rows))))
    return pa.Table.from_arrays(columns, schema=_schema(params))


def write_candidates(
    path: str | Path, candidates: Sequence[Candidate], params: dict[str, Any] | None = None
) -> Path:
    """Write candidates as parquet, atomically and byte-identically for identical inputs.

    ``params`` (the matching settings) are stored as JSON in the schema metadata for provenance.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = candidates_to_table(candidates, params)
    sink = pa.BufferOutputStream()
    pq.write_table(
        table,
        sink,
        row_group_size=1 << 20,
        compression="zstd",
        compression_level=3,
        use_dictionary=False,
        write_statistics=True,
        version="2.6",
        data_page_version="1.0",
        store_schema=True,
    )
    path = Path(path)
    write_bytes_atomic(path, sink.getvalue().to_pybytes())
    return path


def read_candidates(path: str | Path) -> list[Candidate]:
    """Read a candidates parquet back into records (checks the columns, names the file on error)."""
    import pyarrow.parquet as pq

    path = Path(path)
    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as exc:
        raise CandidatesFileError(f"{path}: not a readable parquet file ({exc})") from None
    missing = [c for c in CANDIDATE_COLUMNS if c not in table.column_names]
    if missing:
        raise CandidatesFileError(f"{path}: missing candidate columns {', '.join(missing)}")
    cols = {name: table.column(name).to_pylist() for name in CANDIDATE_COLUMNS}
    out = []
    for i in range(table.num_rows):
        values = {name: cols[name][i] for name in CANDIDATE_COLUMNS}
        if any(v is None for v in values.values()):
            raise CandidatesFileError(f"{path}: row {i} has an empty value")
        out.append(Candidate(**{n: (float(v) if n == "similarity" else int(v)) for n, v in values.items()}))
    return out


def read_candidates_params(path: str | Path) -> dict[str, Any] | None:
    """The matching settings stored in a candidates file, if any."""
    import json

    import pyarrow.parquet as pq

    meta = pq.read_schema(Path(path)).metadata or {}
    raw = meta.get(PARAMS_METADATA_KEY)
    return None if raw is None else json.loads(raw)


def match_summary(refs: Sequence[Ref], candidates: Sequence[Candidate], k: int) -> dict[str, int]:
    """Counts for reports: refs, candidate rows, refs with fewer than ``k`` and with none, distinct
    backgrounds, and chosen backgrounds whose expressions are more similar than ``DISTINCT_JACCARD``."""
    from comcoco.matching.rules import DISTINCT_JACCARD

    per_ref: dict[int, int] = {}
    for c in candidates:
        per_ref[c.ref_id] = per_ref.get(c.ref_id, 0) + 1
    counts = [per_ref.get(r.ref_id, 0) for r in refs]
    return {
        "refs": len(refs),
        "candidates": len(candidates),
        "refs_short": sum(1 for n in counts if 0 < n < k),
        "refs_without": sum(1 for n in counts if n == 0),
        "backgrounds": len({c.bg_image_id for c in candidates}),
        "above_distinct": sum(1 for c in candidates if c.similarity > DISTINCT_JACCARD),
    }
