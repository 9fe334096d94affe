"""The stages of a build around the shards: check the source, match, plan; then collect and record.

A work directory holds everything a build made::

    WORKDIR/source-report.json   what `inspect` found (counts, problems)
    WORKDIR/candidates.parquet   matching output
    WORKDIR/plan.parquet, plan.json   the frozen plan and the configuration it was made with
    WORKDIR/shards/NNNNN/        images/, gt/, masks/, samples.parquet, _SUCCESS (written last)
    WORKDIR/status.parquet       every planned sample: status, reason, provenance, file paths
    WORKDIR/manifest.json        sha256 of every data file, counts, configuration
    WORKDIR/build.json           the run record: timings per stage, code version, runner

``manifest.json`` depends only on the inputs and the configuration (same inputs → same bytes);
``build.json`` records how one run went and is kept out of the manifest's ``files``.
"""

from __future__ import annotations

import io
import json
import subprocess
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

import comcoco
from comcoco.compose.engine import plan_groups
from comcoco.compose.samples import SAMPLES_SCHEMA, read_samples
from comcoco.io import sha256_file, write_bytes_atomic, write_text_atomic
from comcoco.plan import (
    CANDIDATES_FILE,
    PLAN_FILE,
    PLAN_META,
    BuildConfig,
    SourceSpec,
    check_resume,
    cut_into_shards,
    read_plan,
    shard_ids,
    write_plan,
)
from comcoco.shards import (
    MARKER,
    SAMPLES_FILE,
    SHARDS_DIR,
    cached_source,
    is_complete,
    shard_dir,
    shard_name,
    source_index,
)

SOURCE_REPORT = "source-report.json"
STATUS_FILE = "status.parquet"
MANIFEST_FILE = "manifest.json"
BUILD_RECORD = "build.json"
STATUS_NOT_BUILT = "not_built"


def _json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


# --- before the shards ---------------------------------------------------------------------------------


def check_source(spec: SourceSpec, workdir: str | Path) -> dict[str, Any]:
    """Load and inspect the source (raises SourceError when it is unusable); save the report."""
    from comcoco.sources.validate import inspect_source

    report = inspect_source(cached_source(spec)[0], deep=False).to_dict()
    write_text_atomic(Path(workdir) / SOURCE_REPORT, _json(report))
    return {k: report[k] for k in ("refs", "expressions", "images", "annotations")} | {
        "problems": len(report["problems"])
    }


def image_split_groups(refs: Sequence[Any], image_ids: Sequence[int], seed: int) -> dict[int, str]:
    """Each image's release split group from the refs on it (train, val; testA/testB → test).

    An image without refs joins a group by a seeded hash, in proportion to the images with refs; an
    image whose refs disagree (not the case in RefCOCO+) takes the first group in train, val, test order.
    """
    from comcoco.ids import stable_hash64
    from comcoco.release.splits import SPLITS, release_split_of

    groups: dict[int, set[str]] = {}
    for r in refs:
        groups.setdefault(int(r.image_id), set()).add(release_split_of(r.split))
    out = {i: min(g, key=SPLITS.index) for i, g in groups.items()}
    counts = Counter(out.values())
    total = sum(counts.values())
    shares = [(s, counts.get(s, 0) / total) for s in SPLITS] if total else [("train", 1.0)]
    for image_id in sorted(set(int(i) for i in image_ids) - set(out)):
        u = stable_hash64(seed, "split-group", image_id) / 2**64
        acc, chosen = 0.0, shares[-1][0]
        for name, share in shares:
            acc += share
            if u < acc:
                chosen = name
                break
        out[image_id] = chosen
    return out


def match_stage(spec: SourceSpec, workdir: str | Path, config: BuildConfig, progress: bool = False) -> Path:
    """Scene matching for every ref of the source; reuses the candidates of a matching plan.

    By default an object's backgrounds come only from images of its own split group (train, val,
    test), so that samples never tie a training image to a test image and the release can be split
    without leaks (see docs/matching.md).
    """
    from comcoco.matching.scene import match_backgrounds, write_candidates

    out = Path(workdir) / CANDIDATES_FILE
    if out.is_file() and (Path(workdir) / PLAN_META).is_file():
        return out  # planned already with this configuration (checked by prepare_workdir)
    index = source_index(spec)
    refs = sorted(index.refs.values(), key=lambda r: r.ref_id)
    anns = sorted(index.annotations.values(), key=lambda a: a.ann_id)
    kwargs = {"k": config.k, "seed": config.seed, "similarity": config.similarity, "max_uses": config.max_uses}
    if not config.match_within_splits:
        candidates = match_backgrounds(refs, anns, progress=progress, **kwargs)
    else:
        group_of = image_split_groups(refs, [a.image_id for a in anns], config.seed)
        candidates = []
        for group in sorted(set(group_of.values())):
            g_refs = [r for r in refs if group_of.get(int(r.image_id)) == group]
            g_anns = [a for a in anns if group_of.get(int(a.image_id)) == group]
            if g_refs:
                candidates += match_backgrounds(g_refs, g_anns, progress=progress, **kwargs)
        candidates.sort(key=lambda c: (c.ref_id, c.rank))
    params = {**kwargs, "match_within_splits": config.match_within_splits}
    return write_candidates(out, candidates, params)


def plan_stage(spec: SourceSpec, workdir: str | Path, config: BuildConfig) -> list[int]:
    """Freeze the plan (once); returns all shard ids."""
    from comcoco.matching.scene import read_candidates

    workdir = Path(workdir)
    if (workdir / PLAN_META).is_file():
        return shard_ids(read_plan(workdir))
    candidates = read_candidates(workdir / CANDIDATES_FILE)
    groups = plan_groups(candidates, source_index(spec), config.compose, config.limit)
    rows = cut_into_shards(groups, config.shard_size)
    shards = shard_ids(rows)
    meta = {
        "config": config.to_dict(),
        "source": asdict(spec),
        "samples": len(rows),
        "composites": len(groups),
        "shards": len(shards),
        "comcoco_version": comcoco.__version__,
    }
    write_plan(workdir, rows, meta)
    return shards


def prepare_workdir(workdir: str | Path, config: BuildConfig, spec: SourceSpec) -> None:
    """Create the work directory, refusing one that was planned with another configuration."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    check_resume(workdir, config, spec)


def pending_shards(workdir: str | Path, shards: Sequence[int], retry_failed: bool = False) -> list[int]:
    """Shards still to run (all unmarked ones; with ``retry_failed`` also marked ones with failures)."""
    out = []
    for s in shards:
        if not is_complete(workdir, s):
            out.append(s)
        elif retry_failed and any(not r.ok for r in read_samples(shard_dir(workdir, s) / SAMPLES_FILE)):
            out.append(s)
    return out


# --- after the shards ------------------------------------------------------------------------------------

_STATUS_EXTRA = [pa.field("shard", pa.int32(), nullable=False)]


def collect_status(workdir: str | Path, errors: dict[int, str] | None = None) -> dict[str, Any]:
    """Write ``status.parquet``: every planned sample with status, reason, provenance and file paths.

    Paths are made relative to the work directory. Samples of shards that did not complete are listed
    as ``not_built`` with the shard's error. Returns counts by status.
    """
    workdir = Path(workdir)
    errors = errors or {}
    plan = read_plan(workdir)
    by_shard: dict[int, list] = {}
    for r in plan:
        by_shard.setdefault(r.shard, []).append(r)
    records: list[dict[str, Any]] = []
    for shard in sorted(by_shard):
        prefix = f"{SHARDS_DIR}/{shard_name(shard)}/"
        if is_complete(workdir, shard):
            for row in read_samples(shard_dir(workdir, shard) / SAMPLES_FILE):
                rec = asdict(row)
                for key in ("composite", "ground_truth", "mask"):
                    if rec[key]:
                        rec[key] = prefix + rec[key]
                rec["objects"] = list(rec["objects"])
                rec["object_ann_ids"] = list(rec["object_ann_ids"])
                rec["shard"] = shard
                records.append(rec)
        else:
            reason = errors.get(shard, "the shard has not completed")
            for p in by_shard[shard]:
                records.append({
                    "sample_id": p.sample_id, "composite_id": p.composite_id, "status": STATUS_NOT_BUILT,
                    "reason": f"shard {shard_name(shard)}: {reason}", "fg_ref_id": p.ref_id,
                    "fg_ann_id": p.ann_id, "fg_image_id": p.fg_image_id, "bg_image_id": p.bg_image_id,
                    "category_id": p.category_id, "candidate_rank": p.rank, "seed": -1, "config": "",
                    "objects": [], "object_ann_ids": [], "shard": shard,
                })
    schema = pa.schema(list(SAMPLES_SCHEMA) + _STATUS_EXTRA)
    records.sort(key=lambda r: r["sample_id"])
    table = pa.Table.from_pylist(records, schema=schema)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", store_schema=False)
    write_bytes_atomic(workdir / STATUS_FILE, buf.getvalue())
    counts = Counter(r["status"] for r in records)
    return {"samples": len(records), "by_status": dict(sorted(counts.items()))}


def read_status(workdir: str | Path) -> list[dict[str, Any]]:
    return pq.read_table(Path(workdir) / STATUS_FILE).to_pylist()


def data_files(workdir: str | Path) -> list[str]:
    """Every data output of a build, relative to the work directory (markers and records excluded)."""
    workdir = Path(workdir)
    files = [n for n in (SOURCE_REPORT, CANDIDATES_FILE, PLAN_FILE, PLAN_META, STATUS_FILE) if (workdir / n).is_file()]
    root = workdir / SHARDS_DIR
    if root.is_dir():
        for d in sorted(root.iterdir()):
            if d.name.startswith(".") or not (d / MARKER).is_file():
                continue
            files.extend(str(p.relative_to(workdir)) for p in sorted(d.rglob("*"))
                         if p.is_file() and p.name != MARKER and not p.name.startswith("."))
    return sorted(files)


def write_manifest(workdir: str | Path, status_counts: dict[str, Any]) -> dict[str, Any]:
    """``manifest.json``: sha256 of every data file, counts and the configuration."""
    workdir = Path(workdir)
    meta = json.loads((workdir / PLAN_META).read_text())
    manifest = {
        "files": {rel: sha256_file(workdir / rel) for rel in data_files(workdir)},
        "counts": {"shards": meta["shards"], "composites": meta["composites"], **status_counts},
        "config": meta["config"],
        "source": meta["source"],
    }
    write_text_atomic(workdir / MANIFEST_FILE, _json(manifest))
    return manifest


def code_version() -> str:
    """The package version, plus the git commit when running from a checkout."""
    version = comcoco.__version__
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
        if sha.returncode == 0 and sha.stdout.strip():
            version += f"+g{sha.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        pass
    return version


@dataclass
class BuildRecord:
    runner: str
    workers: int
    started: str
    finished: str
    seconds: dict[str, float]
    shards_run: int
    shards_skipped: int
    shard_errors: dict[str, str]
    samples_per_second: float
    code_version: str

    def write(self, workdir: str | Path) -> None:
        write_text_atomic(Path(workdir) / BUILD_RECORD, _json(asdict(self)))


def failure_summary(workdir: str | Path, limit: int = 10) -> list[dict[str, Any]]:
    """The first failed samples (status, reason, ids) for a build summary."""
    rows = [r for r in read_status(workdir) if r["status"] != "ok"]
    keys = ("sample_id", "status", "reason", "fg_ref_id", "fg_ann_id", "bg_image_id")
    return [{k: r[k] for k in keys} for r in rows[:limit]]


def build_inline(spec: SourceSpec, workdir: str | Path, config: BuildConfig, retry_failed: bool = False) -> dict[str, Any]:
    """Every build stage in this process, in a plain loop, without Prefect.

    The same functions the flow's tasks call; used by tests that need a work directory and as the
    baseline that measures the orchestrator's overhead.
    """
    from comcoco.shards import run_shard

    prepare_workdir(workdir, config, spec)
    check_source(spec, workdir)
    match_stage(spec, workdir, config)
    shards = plan_stage(spec, workdir, config)
    for s in pending_shards(workdir, shards, retry_failed):
        run_shard(workdir, s, retry_failed=retry_failed)
    counts = collect_status(workdir)
    write_manifest(workdir, counts)
    return counts
