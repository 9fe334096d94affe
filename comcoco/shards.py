"""Run one shard of a plan: compose its samples into a temporary folder, rename, then mark success.

A shard is the unit of work, retry, resume and distribution. Its files appear under
``WORKDIR/shards/NNNNN/`` only when all of them are complete (the folder is renamed into place), and
``_SUCCESS`` is written inside it last. A rerun skips marked shards, deletes what interrupted runs
left behind, and redoes the rest; ``retry_failed`` recomposes only the failed samples of marked shards.
Only paths and ids come in and go out: every image is read and written here, never by the orchestrator.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from comcoco.compose.engine import (
    ComposeModels,
    ImageCache,
    SourceIndex,
    _BytesLRU,
    compose_group,
    load_models,
    plan_groups,
    write_group,
)
from comcoco.compose.samples import SampleRow, read_samples, write_samples
from comcoco.io import write_text_atomic
from comcoco.plan import PLAN_FILE, BuildConfig, PlanRow, SourceSpec, read_plan_meta

SHARDS_DIR = "shards"
MARKER = "_SUCCESS"
SAMPLES_FILE = "samples.parquet"


def shard_name(shard: int) -> str:
    return f"{shard:05d}"


def shard_dir(workdir: str | Path, shard: int) -> Path:
    return Path(workdir) / SHARDS_DIR / shard_name(shard)


def is_complete(workdir: str | Path, shard: int) -> bool:
    return (shard_dir(workdir, shard) / MARKER).is_file()


@dataclass(frozen=True)
class ShardResult:
    shard: int
    samples: int
    ok: int
    failed: int
    skipped: bool
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"shard": self.shard, "samples": self.samples, "ok": self.ok, "failed": self.failed,
                "skipped": self.skipped, "seconds": self.seconds}


_LIMITER: Any = None


def limit_threads() -> None:
    """One OpenCV, torch, OpenMP and BLAS thread per worker: parallelism comes from shards, not libraries.

    Without this, two Dask worker processes on two cores would each start a BLAS and an OpenMP pool
    per core and fight over them.
    """
    global _LIMITER
    import cv2

    cv2.setNumThreads(1)
    try:
        import torch

        if torch.get_num_threads() != 1:
            torch.set_num_threads(1)
    except ImportError:  # torch is a dependency, but the compose path does not need it
        pass
    if _LIMITER is None:
        from threadpoolctl import threadpool_limits

        _LIMITER = threadpool_limits(limits=1)  # kept for the life of the process


# --- per-process caches: a worker loads the source and the models once, not once per shard -----------

_CACHE_LOCK = threading.Lock()
_SOURCES: dict[SourceSpec, tuple[Any, SourceIndex]] = {}
_MODELS: dict[str, ComposeModels] = {}


def cached_source(spec: SourceSpec) -> tuple[Any, SourceIndex]:
    """The loaded source and its compose index, loaded once per process (one source at a time)."""
    with _CACHE_LOCK:
        if spec not in _SOURCES:
            _SOURCES.clear()
            source = spec.load()
            _SOURCES[spec] = (source, SourceIndex.from_source(source))
        return _SOURCES[spec]


def source_index(spec: SourceSpec) -> SourceIndex:
    return cached_source(spec)[1]


def cached_models(config: BuildConfig) -> ComposeModels:
    key = config.compose.fingerprint()
    with _CACHE_LOCK:
        if key not in _MODELS:
            _MODELS.clear()
            _MODELS[key] = load_models(config.compose)
        return _MODELS[key]


# --- running a shard ---------------------------------------------------------------------------------


def _plan_rows(workdir: Path, shard: int) -> list[PlanRow]:
    table = pq.read_table(workdir / PLAN_FILE, filters=[("shard", "=", shard)])
    data = table.to_pydict()
    rows = [PlanRow(**{k: data[k][i] for k in data}) for i in range(table.num_rows)]
    return sorted(rows, key=lambda r: (r.composite_id, r.member))


def _clean_leftovers(workdir: Path, shard: int) -> None:
    """Remove the temporary folders of interrupted attempts and an unmarked final folder."""
    parent = workdir / SHARDS_DIR
    name = shard_name(shard)
    for p in parent.glob(f".{name}.*"):
        shutil.rmtree(p, ignore_errors=True)
    final = parent / name
    if final.exists() and not (final / MARKER).is_file():
        shutil.rmtree(final)


def _tmp_dir(workdir: Path, shard: int, kind: str) -> Path:
    parent = workdir / SHARDS_DIR
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".{shard_name(shard)}.{kind}-{os.getpid()}-{threading.get_ident()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def _compose_rows(
    tmp: Path, plan_rows: Sequence[PlanRow], config: BuildConfig, index: SourceIndex, models: ComposeModels
) -> list[SampleRow]:
    """Compose the composites of ``plan_rows`` into ``tmp``; the plan's ids must be reproduced exactly."""
    groups = plan_groups([r.candidate() for r in plan_rows], index, config.compose)
    planned = {(r.composite_id, r.sample_id) for r in plan_rows}
    made = {(g.composite_id, m.sample_id) for g in groups for m in g.members}
    if made != planned:
        raise RuntimeError(
            f"shard {shard_name(plan_rows[0].shard)}: the plan's sample ids cannot be reproduced "
            "(the work directory was planned by another comcoco version); rebuild into a new work directory"
        )
    cache = ImageCache(index.image_path)
    encoded = _BytesLRU()
    rows: list[SampleRow] = []
    for g in groups:
        rows.extend(write_group(tmp, compose_group(g, cache, config.compose, models), config.compose, encoded))
    return rows


def _mark(final: Path, rows: Sequence[SampleRow]) -> None:
    ok = sum(r.ok for r in rows)
    write_text_atomic(final / MARKER, json.dumps({"samples": len(rows), "ok": ok}, sort_keys=True) + "\n")


def _result(shard: int, rows: Sequence[SampleRow], skipped: bool, t0: float) -> ShardResult:
    ok = sum(r.ok for r in rows)
    return ShardResult(shard, len(rows), ok, len(rows) - ok, skipped, time.perf_counter() - t0)


def run_shard(workdir: str | Path, shard: int, retry_failed: bool = False) -> ShardResult:
    """Make shard ``shard`` of the plan in ``workdir`` (skipping it when it is already complete)."""
    t0 = time.perf_counter()
    workdir = Path(workdir)
    limit_threads()
    meta = read_plan_meta(workdir)
    if meta is None:
        raise FileNotFoundError(f"{workdir}: no plan (plan.json) — run the plan stage first")
    config = BuildConfig.from_dict(meta["config"])
    spec = SourceSpec(**meta["source"])
    final = shard_dir(workdir, shard)
    if (final / MARKER).is_file():
        rows = read_samples(final / SAMPLES_FILE)
        failed = [r for r in rows if not r.ok]
        if not (retry_failed and failed):
            return _result(shard, rows, True, t0)
        return _retry_failed(workdir, shard, rows, config, spec, t0)
    _clean_leftovers(workdir, shard)
    plan_rows = _plan_rows(workdir, shard)
    if not plan_rows:
        raise ValueError(f"{workdir / PLAN_FILE}: shard {shard_name(shard)} has no samples")
    tmp = _tmp_dir(workdir, shard, "tmp")
    try:
        rows = _compose_rows(tmp, plan_rows, config, source_index(spec), cached_models(config))
        write_samples(tmp / SAMPLES_FILE, rows)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _mark(final, rows)
    return _result(shard, rows, False, t0)


def _retry_failed(
    workdir: Path, shard: int, rows: list[SampleRow], config: BuildConfig, spec: SourceSpec, t0: float
) -> ShardResult:
    """Recompose composites holding a failed sample; keep (hard-link) the files of all others."""
    final = shard_dir(workdir, shard)
    redo = {r.composite_id for r in rows if not r.ok}
    keep = [r for r in rows if r.composite_id not in redo]
    plan_rows = [r for r in _plan_rows(workdir, shard) if r.composite_id in redo]
    for p in (workdir / SHARDS_DIR).glob(f".{shard_name(shard)}.*"):
        shutil.rmtree(p, ignore_errors=True)
    tmp = _tmp_dir(workdir, shard, "retry")
    old = final.with_name(f".{final.name}.old-{os.getpid()}-{threading.get_ident()}")
    try:
        for rel in sorted({p for r in keep for p in (r.composite, r.ground_truth, r.mask) if p}):
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            os.link(final / rel, tmp / rel)
        new_rows = keep + _compose_rows(tmp, plan_rows, config, source_index(spec), cached_models(config))
        write_samples(tmp / SAMPLES_FILE, new_rows)
        # Swap: a crash between these renames leaves no marked folder, so the shard is redone whole.
        os.rename(final, old)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _mark(final, new_rows)
    shutil.rmtree(old, ignore_errors=True)
    return _result(shard, new_rows, False, t0)
