"""The build plan: one row per sample with a stable id, cut into fixed shards, frozen on disk.

A plan is computed once from the candidates and the configuration, saved in the work directory with
that configuration, and every later run (resume, retry, another runner) works from the saved copy.
Resuming with a different configuration or shard size is refused, naming what differs, because the
sample ids and shard contents would no longer match what is already on disk.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from comcoco.compose.engine import ComposeConfig, GroupPlan
from comcoco.ids import stable_id
from comcoco.io import write_bytes_atomic, write_text_atomic
from comcoco.records import Candidate

PLAN_FILE = "plan.parquet"
PLAN_META = "plan.json"
CANDIDATES_FILE = "candidates.parquet"
DEFAULT_SHARD_SIZE = 256


class PlanMismatchError(Exception):
    """The work directory was planned with another configuration."""


@dataclass(frozen=True)
class SourceSpec:
    """Where the source lives; paths are stored absolute so any worker process can open it."""

    root: str
    dataset: str = "refcoco+"
    split_by: str = "unc"
    images: str | None = None

    def load(self) -> Any:
        from comcoco.sources.refer import load_source

        return load_source(self.root, dataset=self.dataset, split_by=self.split_by, images=self.images)


@dataclass(frozen=True)
class BuildConfig:
    """Everything that decides what a build produces (and so what a resume must agree with)."""

    seed: int = 0
    k: int = 5
    similarity: str = "max"
    max_uses: int | None = None
    match_within_splits: bool = True  # backgrounds only from the object's own source split group
    limit: int | None = None
    shard_size: int = DEFAULT_SHARD_SIZE
    compose: ComposeConfig | None = None  # None: the default composing configuration with this seed

    def __post_init__(self) -> None:
        if self.compose is None:
            object.__setattr__(self, "compose", ComposeConfig(seed=self.seed))
        if self.compose.seed != self.seed:  # one seed drives matching and composing
            raise ValueError(f"compose seed {self.compose.seed} differs from build seed {self.seed}")
        if self.shard_size < 1:
            raise ValueError(f"shard size must be at least 1, got {self.shard_size}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BuildConfig:
        data = dict(data)
        compose = ComposeConfig(**data.pop("compose", {}))
        known = {f.name for f in fields(cls)}
        return cls(compose=compose, **{k: v for k, v in data.items() if k in known})

    def fingerprint(self) -> str:
        return stable_id("build-config", self.to_dict())


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Human-readable differences between two configuration dicts ("key: saved → current")."""
    a, b = _flatten(saved), _flatten(current)
    return [f"{k}: {a.get(k)!r} (planned) vs {b.get(k)!r} (now)" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


# --- the plan table --------------------------------------------------------------------------------

_PLAN_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("composite_id", pa.string(), nullable=False),
        pa.field("shard", pa.int32(), nullable=False),
        pa.field("member", pa.int32(), nullable=False),
        pa.field("ref_id", pa.int64(), nullable=False),
        pa.field("ann_id", pa.int64(), nullable=False),
        pa.field("fg_image_id", pa.int64(), nullable=False),
        pa.field("category_id", pa.int64(), nullable=False),
        pa.field("cluster", pa.int32(), nullable=False),
        pa.field("rank", pa.int32(), nullable=False),
        pa.field("bg_image_id", pa.int64(), nullable=False),
        pa.field("similarity", pa.float64(), nullable=False),
    ]
)


@dataclass(frozen=True)
class PlanRow:
    sample_id: str
    composite_id: str
    shard: int
    member: int
    ref_id: int
    ann_id: int
    fg_image_id: int
    category_id: int
    cluster: int
    rank: int
    bg_image_id: int
    similarity: float

    def candidate(self) -> Candidate:
        return Candidate(
            ref_id=self.ref_id, ann_id=self.ann_id, fg_image_id=self.fg_image_id, category_id=self.category_id,
            cluster=self.cluster, rank=self.rank, bg_image_id=self.bg_image_id, similarity=self.similarity,
        )


def cut_into_shards(groups: Sequence[GroupPlan], shard_size: int) -> list[PlanRow]:
    """Plan rows for ``groups``: ordered by composite id, cut into shards of about ``shard_size`` samples.

    A composite never straddles two shards (its objects are made together); a shard closes when the
    next composite would take it past ``shard_size``.
    """
    if shard_size < 1:
        raise ValueError(f"shard size must be at least 1, got {shard_size}")
    rows: list[PlanRow] = []
    shard, filled = 0, 0
    for g in sorted(groups, key=lambda g: g.composite_id):
        n = len(g.members)
        if filled and filled + n > shard_size:
            shard, filled = shard + 1, 0
        for i, m in enumerate(g.members):
            c = m.candidate
            rows.append(PlanRow(m.sample_id, g.composite_id, shard, i, int(c.ref_id), int(c.ann_id),
                                int(c.fg_image_id), int(c.category_id), int(c.cluster), int(c.rank),
                                int(c.bg_image_id), float(c.similarity)))
        filled += n
    return rows


def plan_table(rows: Sequence[PlanRow]) -> pa.Table:
    cols = {f.name: [getattr(r, f.name) for r in rows] for f in fields(PlanRow)}
    return pa.table(cols, schema=_PLAN_SCHEMA)


def write_plan(workdir: str | Path, rows: Sequence[PlanRow], meta: dict[str, Any]) -> None:
    """Save the plan table and its metadata (config, source, counts) atomically."""
    import io

    workdir = Path(workdir)
    buf = io.BytesIO()
    pq.write_table(plan_table(rows), buf, compression="zstd", write_statistics=False)
    write_bytes_atomic(workdir / PLAN_FILE, buf.getvalue())
    write_text_atomic(workdir / PLAN_META, json.dumps(meta, indent=2, sort_keys=True) + "\n")


def read_plan(workdir: str | Path) -> list[PlanRow]:
    table = pq.read_table(Path(workdir) / PLAN_FILE)
    data = table.to_pydict()
    return [PlanRow(**{f.name: data[f.name][i] for f in fields(PlanRow)}) for i in range(table.num_rows)]


def read_plan_meta(workdir: str | Path) -> dict[str, Any] | None:
    p = Path(workdir) / PLAN_META
    return json.loads(p.read_text()) if p.is_file() else None


def check_resume(workdir: str | Path, config: BuildConfig, source: SourceSpec) -> dict[str, Any] | None:
    """The saved plan metadata if it agrees with ``config`` and ``source``; refuse otherwise."""
    meta = read_plan_meta(workdir)
    if meta is None:
        return None
    diffs = config_differences(meta["config"], config.to_dict())
    diffs += config_differences({"source": meta["source"]}, {"source": asdict(source)})
    if diffs:
        raise PlanMismatchError(
            f"{Path(workdir) / PLAN_META}: this work directory was planned with another configuration; "
            "use a new work directory or the same options. Differences: " + "; ".join(diffs)
        )
    return meta


def shard_ids(rows: Sequence[PlanRow]) -> list[int]:
    return sorted({r.shard for r in rows})
