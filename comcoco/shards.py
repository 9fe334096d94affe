"""The shard writer: the only module that writes into ``WORKDIR/shards/``, and always atomically.

A shard is the unit of work, retry, resume and distribution. It is made in a temporary folder; when
every file is written, ``_SUCCESS`` (the SHA-256 and size of each file) is written beside them and
the folder is renamed into ``WORKDIR/shards/NNNNN/`` in one step. So a shard folder that exists is
marked and holds every file its marker lists, whoever looks, whenever; a second writer of the same
shard (which the work directory's lock already keeps out) finds the folder taken and discards its
copy. A rerun skips marked shards, deletes what interrupted runs left behind, and redoes the rest;
``retry_failed`` recomposes only the failed samples of marked shards; ``rewrite_composite`` replaces
one composite's files after a reviewer moved an object. Both swap the new folder in with one atomic
exchange where the system has it (Linux ``renameat2``), else with two renames whose gap a rerun heals.
Only paths and ids come in and go out: every image is read and written here, never by the orchestrator.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from comcoco.compose.engine import ComposedGroup, compose_group
from comcoco.compose.robust import SceneCache
from comcoco.compose.samples import SampleRow, write_samples
from comcoco.compose.writer import BytesLRU, write_group
from comcoco.io import exchange, write_text_atomic
from comcoco.plan import PLAN_FILE, BuildConfig, PlanMismatchError, PlanRow, groups_from_rows
from comcoco.sources.images import ImageCache
from comcoco.workdir import (  # noqa: F401 (MARKER, SAMPLES_FILE, SHARDS_DIR, shard_name: re-exported)
    MARKER,
    SAMPLES_FILE,
    SHARDS_DIR,
    Workdir,
    WorkdirError,
    as_workdir,
    cached_models,
    cached_source,
    shard_name,
    stamp_folder,
)


def shard_dir(workdir: Workdir | str | Path, shard: int) -> Path:
    return as_workdir(workdir).shard_dir(shard)


def is_complete(workdir: Workdir | str | Path, shard: int) -> bool:
    return as_workdir(workdir).is_complete(shard)


def source_index(spec: Any) -> Any:
    """The compose index of the source ``spec`` names (loaded once per process)."""
    return cached_source(spec)[1]


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
    torch = sys.modules.get("torch")
    if torch is None:
        # not imported: composing needs no torch (importing it costs a worker about 190 MB); a learned
        # placer or harmonizer that imports it later starts with one thread from these
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    elif torch.get_num_threads() != 1:
        torch.set_num_threads(1)
    if _LIMITER is None:
        from threadpoolctl import threadpool_limits

        _LIMITER = threadpool_limits(limits=1)  # kept for the life of the process


# --- folders and markers -------------------------------------------------------------------------------


def _clean_leftovers(wd: Workdir, shard: int) -> None:
    """Remove the temporary folders of interrupted attempts and an unmarked final folder; put back a
    marked folder a crash left set aside between the two renames of a swap."""
    final = wd.shard_dir(shard)
    if not final.exists():
        for old in sorted(wd.shards_root.glob(f".{shard_name(shard)}.old-*")):
            if (old / MARKER).is_file():
                os.rename(old, final)
                break
    for p in wd.shards_root.glob(f".{shard_name(shard)}.*"):
        shutil.rmtree(p, ignore_errors=True)
    if final.exists() and not (final / MARKER).is_file():
        shutil.rmtree(final)


def _tmp_dir(wd: Workdir, shard: int, kind: str) -> Path:
    wd.shards_root.mkdir(parents=True, exist_ok=True)
    tmp = wd.shards_root / f".{shard_name(shard)}.{kind}-{os.getpid()}-{threading.get_ident()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def _mark(folder: Path, rows: Sequence[SampleRow], known: dict[str, dict[str, Any]] | None = None) -> None:
    """Write the marker into a complete ``folder``: counts and every file's SHA-256 and size."""
    ok = sum(r.ok for r in rows)
    files = stamp_folder(folder, known)
    write_text_atomic(folder / MARKER, json.dumps({"samples": len(rows), "ok": ok, "files": files},
                                                  sort_keys=True) + "\n")


def _result(shard: int, rows: Sequence[SampleRow], skipped: bool, t0: float) -> ShardResult:
    ok = sum(r.ok for r in rows)
    return ShardResult(shard, len(rows), ok, len(rows) - ok, skipped, time.perf_counter() - t0)


# --- composing a shard ---------------------------------------------------------------------------------


def _compose_rows(wd: Workdir, tmp: Path, plan_rows: Sequence[PlanRow], config: BuildConfig) -> list[SampleRow]:
    """Compose the composites of ``plan_rows`` into ``tmp``; the plan's ids must be reproduced exactly."""
    index = wd.index()
    try:
        groups = groups_from_rows(plan_rows, index, config.compose)
    except PlanMismatchError as exc:
        raise WorkdirError(f"shard {shard_name(plan_rows[0].shard)}: {exc}") from None
    cache = ImageCache(index.image_path)
    encoded = BytesLRU()
    models = cached_models(config)
    scenes = SceneCache()
    rows: list[SampleRow] = []
    for g in groups:
        rows.extend(write_group(tmp, compose_group(g, cache, config.compose, models, scenes=scenes), config.compose,
                                encoded))
    return rows


def run_shard(workdir: Workdir | str | Path, shard: int, retry_failed: bool = False) -> ShardResult:
    """Make shard ``shard`` of the plan in ``workdir`` (skipping it when it is already complete)."""
    t0 = time.perf_counter()
    wd = as_workdir(workdir)
    limit_threads()
    if wd.plan_meta() is None:
        raise WorkdirError(f"{wd.root}: no plan (plan.json) — run the plan stage first")
    config = wd.config()
    final = wd.shard_dir(shard)
    if (final / MARKER).is_file():
        rows = wd.shard_samples(shard)
        failed = [r for r in rows if not r.ok]
        if not (retry_failed and failed):
            return _result(shard, rows, True, t0)
        return _retry_failed(wd, shard, rows, config, t0)
    _clean_leftovers(wd, shard)
    plan_rows = wd.plan_rows(shard)
    if not plan_rows:
        raise WorkdirError(f"{wd.root / PLAN_FILE}: shard {shard_name(shard)} has no samples")
    tmp = _tmp_dir(wd, shard, "tmp")
    try:
        rows = _compose_rows(wd, tmp, plan_rows, config)
        write_samples(tmp / SAMPLES_FILE, rows, config.compose.robust)
        _mark(tmp, rows)
        try:
            os.rename(tmp, final)
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not (final / MARKER).is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another writer finished this shard first: keep its
            return _result(shard, wd.shard_samples(shard), True, t0)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _result(shard, rows, False, t0)


def _link_files(src: Path, dst: Path, rows: Sequence[SampleRow]) -> None:
    for rel in sorted({p for r in rows for p in r.files}):
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        os.link(src / rel, dst / rel)


def _kept_stamps(wd: Workdir, shard: int, rows: Sequence[SampleRow]) -> dict[str, dict[str, Any]]:
    """The recorded stamps of the files linked over from the old folder (never re-hashed from disk)."""
    record = wd.shard_record(shard) or {}
    return {rel: record[rel] for r in rows for rel in r.files if rel in record}


def _swap_in(final: Path, tmp: Path, rows: Sequence[SampleRow], robust: bool,
             known: dict[str, dict[str, Any]]) -> None:
    """Mark the complete ``tmp`` and put it in place of the marked ``final``.

    One atomic exchange where the filesystem has it; otherwise two renames, and a crash between them
    leaves the old marked folder set aside, which the next run puts back (``_clean_leftovers``).
    """
    write_samples(tmp / SAMPLES_FILE, rows, robust)
    _mark(tmp, rows, known)
    if exchange(tmp, final):
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old folder
        return
    old = final.with_name(f".{final.name}.old-{os.getpid()}-{threading.get_ident()}")
    os.rename(final, old)
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def _retry_failed(wd: Workdir, shard: int, rows: list[SampleRow], config: BuildConfig, t0: float) -> ShardResult:
    """Recompose composites holding a failed sample; keep (hard-link) the files of all others."""
    final = wd.shard_dir(shard)
    redo = {r.composite_id for r in rows if not r.ok}
    keep = [r for r in rows if r.composite_id not in redo]
    plan_rows = [r for r in wd.plan_rows(shard) if r.composite_id in redo]
    for p in wd.shards_root.glob(f".{shard_name(shard)}.*"):
        shutil.rmtree(p, ignore_errors=True)
    tmp = _tmp_dir(wd, shard, "retry")
    try:
        _link_files(final, tmp, keep)
        new_rows = keep + _compose_rows(wd, tmp, plan_rows, config)
        _swap_in(final, tmp, new_rows, config.compose.robust, _kept_stamps(wd, shard, keep))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _result(shard, new_rows, False, t0)


def rewrite_composite(workdir: Workdir | str | Path, shard: int, composed: ComposedGroup) -> tuple[bool, list[SampleRow]]:
    """Replace one composite of a complete shard by ``composed`` (a recomposition, e.g. after review).

    The other composites' files are hard-linked into a fresh folder, the new ones written beside them,
    and the folders swapped as in a retry. Returns (changed, the composite's new rows); when every row
    and file comes out the same as before, nothing is written.
    """
    wd = as_workdir(workdir)
    final = wd.shard_dir(shard)
    if not (final / MARKER).is_file():
        raise WorkdirError(f"{final}: shard {shard_name(shard)} is not complete")
    config = wd.config()
    rows = wd.shard_samples(shard)
    members = [r for r in rows if r.composite_id == composed.composite_id]
    keep = [r for r in rows if r.composite_id != composed.composite_id]
    tmp = _tmp_dir(wd, shard, "rewrite")
    try:
        written = write_group(tmp, composed, config.compose)
        by_id = {r.sample_id: r for r in written}
        if sorted(members, key=lambda r: r.sample_id) == sorted(written, key=lambda r: r.sample_id) and all(
            _same_files(final, tmp, r) for r in written
        ):
            shutil.rmtree(tmp, ignore_errors=True)
            return False, [by_id[m.sample_id] for m in members]
        _link_files(final, tmp, keep)
        _swap_in(final, tmp, keep + written, config.compose.robust, _kept_stamps(wd, shard, keep))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return True, [by_id[m.sample_id] for m in members if m.sample_id in by_id]


def _same_files(a: Path, b: Path, row: SampleRow) -> bool:
    for rel in row.files:
        if rel and (not (a / rel).is_file() or (a / rel).read_bytes() != (b / rel).read_bytes()):
            return False
    return True
