"""The work directory: one owner for its layout and for everything read from it or recorded in it.

A work directory holds everything a build made::

    WORKDIR/source-report.json   what `inspect` found (counts, problems)
    WORKDIR/candidates.parquet   matching output
    WORKDIR/plan.parquet, plan.json   the frozen plan and the configuration it was made with
    WORKDIR/shards/NNNNN/        images/, gt/, masks/, samples.parquet, _SUCCESS (the files' hashes)
    WORKDIR/status.parquet       every planned sample: status, reason, provenance, file paths
    WORKDIR/manifest.json        sha256 of every data file, counts, configuration
    WORKDIR/build.json           the run record: timings per stage, code version, runner
    WORKDIR/review/              Label Studio bookkeeping and decisions.parquet

``Workdir`` knows these names and hands out typed things: the build configuration and source, the
plan's rows, the status rows (``StatusRow``, typed until written), the review decisions and the
stale flag an interrupted review pull leaves. Stages, review, release and the CLI ask it instead of
spelling paths; only ``comcoco.shards`` writes into ``shards/``.

It also owns the work directory's lock (``Workdir.lock``): one writer at a time (a build, a review
pull or push), refused at once with "in use by pid N since T"; a release reads under a shared lock.
A shard's marker records the SHA-256 and size of every file the shard holds, written when the shard
was made: ``check_shard`` compares what is on disk with that record (bit rot, edits, lost files) and
``recorded_files`` gives the manifest those hashes instead of re-hashing whatever is there now.
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from comcoco.compose.models import ComposeModels, load_models
from comcoco.compose.samples import (
    FILE_FIELDS,
    ROBUST_SAMPLES_SCHEMA,
    SAMPLES_SCHEMA,
    SampleRow,
    lists_as_tuples,
    read_samples,
    rows_table,
)
from comcoco.decisions import REVIEW_DIR, merge_decisions, read_decisions
from comcoco.errors import ComcocoError
from comcoco.io import file_stamp, sha256_file, write_bytes_atomic
from comcoco.locks import exclusive
from comcoco.plan import (
    PLAN_FILE,
    PLAN_META,
    STATUS_FILE,
    BuildConfig,
    PlanFileError,
    PlanRow,
    SourceIndex,
    SourceSpec,
    read_plan,
    read_plan_meta,
)
from comcoco.records import STATUS_NOT_BUILT, ReviewDecision

SOURCE_REPORT = "source-report.json"
CANDIDATES_FILE = "candidates.parquet"
SHARDS_DIR = "shards"
MARKER = "_SUCCESS"
SAMPLES_FILE = "samples.parquet"
MANIFEST_FILE = "manifest.json"
BUILD_RECORD = "build.json"
STALE_MARKER = ".status-stale"  # in review/: status.parquet is older than the shards
LOCK_FILE = ".comcoco.lock"  # held by the one writer (see comcoco.locks)
STATUS_BATCH_ROWS = 2048  # status.parquet is read this many rows at a time


class WorkdirError(ComcocoError):
    """The work directory is not in the state an operation needs (not built, not planned, stale)."""


def shard_name(shard: int) -> str:
    return f"{shard:05d}"


# --- typed status rows --------------------------------------------------------------------------------


@dataclass(frozen=True)
class StatusRow(SampleRow):
    """A sample as ``status.parquet`` lists it: its shard's row with paths relative to the work directory.

    Samples of shards that did not complete are listed with status ``not_built`` and the shard's error.
    """

    shard: int = -1

    @classmethod
    def of_sample(cls, row: SampleRow, shard: int) -> StatusRow:
        prefix = f"{SHARDS_DIR}/{shard_name(shard)}/"
        base = {f.name: getattr(row, f.name) for f in fields(SampleRow)}
        for key in FILE_FIELDS:
            if base[key]:
                base[key] = prefix + base[key]
        return cls(**base, shard=shard)

    @classmethod
    def not_built(cls, plan: PlanRow, reason: str) -> StatusRow:
        return cls(
            sample_id=plan.sample_id, composite_id=plan.composite_id, status=STATUS_NOT_BUILT,
            reason=f"shard {shard_name(plan.shard)}: {reason}", fg_ref_id=plan.ref_id, fg_ann_id=plan.ann_id,
            fg_image_id=plan.fg_image_id, bg_image_id=plan.bg_image_id, category_id=plan.category_id,
            candidate_rank=plan.rank, seed=-1, config="", shard=plan.shard,
        )


_SHARD_FIELD = pa.field("shard", pa.int32(), nullable=False)
STATUS_SCHEMA = pa.schema(list(SAMPLES_SCHEMA) + [_SHARD_FIELD])
ROBUST_STATUS_SCHEMA = pa.schema(list(ROBUST_SAMPLES_SCHEMA) + [_SHARD_FIELD])
assert [f.name for f in fields(StatusRow)] == ROBUST_STATUS_SCHEMA.names


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


def cached_models(config: BuildConfig) -> ComposeModels:
    """The learned parts ``config`` names, loaded once per process."""
    key = config.compose.fingerprint()
    with _CACHE_LOCK:
        if key not in _MODELS:
            _MODELS.clear()
            _MODELS[key] = load_models(config.compose)
        return _MODELS[key]


# --- the owner -----------------------------------------------------------------------------------------


class Workdir:
    """A work directory by path; nothing is read until asked for."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"Workdir({str(self.root)!r})"

    def __fspath__(self) -> str:
        return str(self.root)

    # layout
    def path(self, name: str) -> Path:
        return self.root / name

    @property
    def shards_root(self) -> Path:
        return self.root / SHARDS_DIR

    @property
    def review_dir(self) -> Path:
        return self.root / REVIEW_DIR

    def shard_dir(self, shard: int) -> Path:
        return self.shards_root / shard_name(shard)

    def is_complete(self, shard: int) -> bool:
        return (self.shard_dir(shard) / MARKER).is_file()

    @contextmanager
    def lock(self, operation: str, shared: bool = False) -> Iterator[None]:
        """Hold the work directory for ``operation`` (exclusive; ``shared`` for readers such as a release)."""
        with exclusive(self.root / LOCK_FILE, operation, f"work directory {self.root}", shared=shared):
            yield

    # shard integrity
    def shard_record(self, shard: int) -> dict[str, dict[str, Any]] | None:
        """``{relpath: {"sha256", "size"}}`` recorded in a complete shard's marker (paths relative to the
        shard); None for a marker written before markers recorded hashes."""
        path = self.shard_dir(shard) / MARKER
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise WorkdirError(f"{path}: unreadable shard marker ({type(exc).__name__}: {exc})") from None
        files = data.get("files") if isinstance(data, dict) else None
        if files is None:
            return None
        if not isinstance(files, dict) or not all(
                isinstance(v, dict) and isinstance(v.get("sha256"), str) and isinstance(v.get("size"), int)
                for v in files.values()):
            raise WorkdirError(f"{path}: the shard marker's file list is malformed")
        return files

    def check_shard(self, shard: int) -> list[str]:
        """What differs between a complete shard's files and its record: missing, resized, changed."""
        try:
            record = self.shard_record(shard)
        except WorkdirError as exc:
            return [str(exc)]
        if record is None:
            return []  # an older marker: nothing recorded to check against
        base = self.shard_dir(shard)
        problems = []
        for rel in sorted(record):
            p = base / rel
            try:
                st = p.stat()
            except OSError:
                problems.append(f"{rel}: missing")
                continue
            if st.st_size != record[rel]["size"]:
                problems.append(f"{rel}: {st.st_size} bytes, {record[rel]['size']} recorded")
            elif sha256_file(p) != record[rel]["sha256"]:
                problems.append(f"{rel}: content differs from the recorded sha256")
        return problems

    def recorded_files(self, shard: int) -> dict[str, str]:
        """sha256 of a complete shard's files by path relative to the work directory, as recorded when
        the shard was made (hashed now only for an older marker that recorded none)."""
        prefix = f"{SHARDS_DIR}/{shard_name(shard)}/"
        record = self.shard_record(shard)
        if record is None:
            base = self.shard_dir(shard)
            return {prefix + str(p.relative_to(base)): sha256_file(p) for p in sorted(base.rglob("*"))
                    if p.is_file() and p.name != MARKER and not p.name.startswith(".")}
        return {prefix + rel: v["sha256"] for rel, v in record.items()}

    # plan and configuration
    def plan_meta(self) -> dict[str, Any] | None:
        try:
            return read_plan_meta(self.root)
        except PlanFileError as exc:
            raise WorkdirError(str(exc)) from None

    def require_plan(self) -> dict[str, Any]:
        meta = self.plan_meta()
        if meta is None:
            raise WorkdirError(f"{self.root / PLAN_META}: not a built work directory (no plan); "
                               "run `comcoco build` first")
        return meta

    def config(self) -> BuildConfig:
        return BuildConfig.from_dict(self.require_plan()["config"])

    def source_spec(self) -> SourceSpec:
        return SourceSpec(**self.require_plan()["source"])

    def source(self) -> Any:
        """The source it was built from (a ``ReferSource``), loaded once per process."""
        return cached_source(self.source_spec())[0]

    def index(self) -> SourceIndex:
        return cached_source(self.source_spec())[1]

    def models(self) -> ComposeModels:
        return cached_models(self.config())

    def plan_rows(self, shard: int | None = None) -> list[PlanRow]:
        """The frozen plan's rows (of one shard, ordered by composite and member, when ``shard`` is given)."""
        try:
            if shard is None:
                return read_plan(self.root)
            table = pq.read_table(self.root / PLAN_FILE, filters=[("shard", "=", shard)])
            data = table.to_pydict()
            rows = [PlanRow(**{k: data[k][i] for k in data}) for i in range(table.num_rows)]
        except PlanFileError as exc:
            raise WorkdirError(str(exc)) from None
        except (pa.ArrowException, OSError, TypeError) as exc:
            raise WorkdirError(f"{self.root / PLAN_FILE}: not a readable plan ({type(exc).__name__}: {exc})") from None
        return sorted(rows, key=lambda r: (r.composite_id, r.member))

    def shard_samples(self, shard: int) -> list[SampleRow]:
        """A complete shard's rows (paths relative to the shard)."""
        return read_samples(self.shard_dir(shard) / SAMPLES_FILE)

    # status
    @property
    def has_status(self) -> bool:
        return (self.root / STATUS_FILE).is_file()

    def status(self) -> list[StatusRow]:
        """Every planned sample, sorted by sample id; WorkdirError when the build has not finished."""
        path = self.root / STATUS_FILE
        if not path.is_file():
            raise WorkdirError(f"{path}: missing; the build has not finished (run `comcoco build`)")
        out = []
        try:  # a batch at a time: the whole table as Python dicts at once was 3x the rows' own size
            for batch in pq.ParquetFile(path).iter_batches(batch_size=STATUS_BATCH_ROWS):
                for d in batch.to_pylist():
                    out.append(StatusRow(**lists_as_tuples(d)))
        except (pa.ArrowException, OSError, KeyError, TypeError) as exc:
            raise WorkdirError(f"{path}: not a readable status table ({type(exc).__name__}: {exc}); "
                               "run `comcoco build` again to rewrite it") from None
        return out

    def status_rows(self) -> int:
        """How many samples ``status.parquet`` lists, from its footer (0 when it is missing or unreadable:
        ``status`` says why)."""
        try:
            return pq.ParquetFile(self.root / STATUS_FILE).metadata.num_rows
        except (pa.ArrowException, OSError):
            return 0

    def status_by_id(self) -> dict[str, StatusRow]:
        return {r.sample_id: r for r in self.status()}

    def write_status(self, rows: Iterable[StatusRow]) -> None:
        schema = ROBUST_STATUS_SCHEMA if self.config().compose.robust else STATUS_SCHEMA
        table = rows_table(sorted(rows, key=lambda r: r.sample_id), schema, StatusRow)
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd", store_schema=False)
        write_bytes_atomic(self.root / STATUS_FILE, buf.getvalue())

    # review
    def decisions(self) -> dict[tuple[str, str], ReviewDecision]:
        return read_decisions(self.root)

    def merge_decisions(self, new: Sequence[ReviewDecision]) -> tuple[int, int]:
        return merge_decisions(self.root, new)

    @property
    def stale(self) -> bool:
        """True while ``status.parquet`` may be older than the shards (after an interrupted review pull)."""
        return (self.review_dir / STALE_MARKER).exists()

    def mark_stale(self) -> None:
        self.review_dir.mkdir(parents=True, exist_ok=True)
        (self.review_dir / STALE_MARKER).touch()

    def clear_stale(self) -> None:
        (self.review_dir / STALE_MARKER).unlink(missing_ok=True)

    def stale_marker(self) -> Path:
        return self.review_dir / STALE_MARKER

    def check_against_manifest(self, files: Iterable[str], threads: int = 4) -> list[str]:
        """What differs between ``files`` (relative paths) and the sha256 ``manifest.json`` lists for them:
        a file missing, unlisted or changed since the build (or review pull) that wrote the manifest."""
        from concurrent.futures import ThreadPoolExecutor

        path = self.root / MANIFEST_FILE
        try:
            listed = json.loads(path.read_text())["files"]
            if not isinstance(listed, dict):
                raise TypeError("files is not a mapping")
        except FileNotFoundError:
            return [f"{path}: missing (the build did not finish; run `comcoco build` again)"]
        except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            return [f"{path}: unreadable ({type(exc).__name__}: {exc})"]
        wanted = sorted(set(files))

        def one(rel: str) -> str | None:
            p = self.root / rel
            if rel not in listed:
                return f"{rel}: not in manifest.json"
            if not p.is_file():
                return f"{rel}: missing"
            return None if sha256_file(p) == listed[rel] else f"{rel}: content differs from manifest.json"

        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:  # hashing releases the GIL
            return [p for p in pool.map(one, wanted) if p is not None]

    # data files
    def complete_shards(self) -> list[int]:
        if not self.shards_root.is_dir():
            return []
        return sorted(int(d.name) for d in self.shards_root.iterdir()
                      if d.name.isdigit() and (d / MARKER).is_file())

    def data_files(self) -> list[str]:
        """Every data output of a build, relative to the work directory (markers and records excluded)."""
        files = [n for n in (SOURCE_REPORT, CANDIDATES_FILE, PLAN_FILE, PLAN_META, STATUS_FILE)
                 if (self.root / n).is_file()]
        if self.shards_root.is_dir():
            for d in sorted(self.shards_root.iterdir()):
                if d.name.startswith(".") or not (d / MARKER).is_file():
                    continue
                files.extend(str(p.relative_to(self.root)) for p in sorted(d.rglob("*"))
                             if p.is_file() and p.name != MARKER and not p.name.startswith("."))
        return sorted(files)


def stamp_folder(folder: Path, known: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """``{relpath: {"sha256", "size"}}`` of every file under ``folder`` (markers and dot-files excluded);
    ``known`` supplies stamps already recorded for files that were linked in, not written."""
    known = known or {}
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != MARKER and not p.name.startswith("."):
            rel = p.relative_to(folder).as_posix()
            out[rel] = known[rel] if rel in known else file_stamp(p)
    return out


def as_workdir(workdir: Workdir | str | Path) -> Workdir:
    return workdir if isinstance(workdir, Workdir) else Workdir(workdir)


__all__ = [
    "BUILD_RECORD", "CANDIDATES_FILE", "MANIFEST_FILE", "MARKER", "REVIEW_DIR", "SAMPLES_FILE", "SHARDS_DIR",
    "LOCK_FILE", "SOURCE_REPORT", "STALE_MARKER", "STATUS_FILE", "STATUS_SCHEMA", "StatusRow", "Workdir",
    "WorkdirError", "as_workdir", "cached_models", "cached_source", "shard_name", "stamp_folder",
]
