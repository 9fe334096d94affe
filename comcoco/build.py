"""The build's stages, in the one order both the plain loop and the Prefect flow walk.

``BUILD_STAGES``: validate the source → match → plan → compose every pending shard → collect status
and write the manifest. ``run_build_stages(context, executor)`` walks them and writes ``build.json``;
``build_inline`` does so in this process (tests, the flow benchmark's baseline), the flow in
``pipelines/build.py`` with Prefect tasks, one per shard, on threads or a Dask cluster.

``manifest.json`` depends only on the inputs and the configuration (same inputs → same bytes);
``build.json`` records how one run went (the runner that really ran it, the verdict) and is kept out of
the manifest's ``files``. Every step logs what it found to ``comcoco.build``: inside a Prefect run these
lines land in the log of the task that wrote them (a shard's task says which samples it made and
which failed, and why).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import comcoco
from comcoco.compose.samples import decoy_counts
from comcoco.io import sha256_file, write_text_atomic
from comcoco.outcome import BuildOutcome, build_outcome
from comcoco.plan import (
    BuildConfig,
    SourceSpec,
    check_resume,
    cut_into_shards,
    plan_groups,
    shard_ids,
    write_plan,
)
from comcoco.plan_source import check_source_unchanged, source_fingerprint_of
from comcoco.stages import Executor, Inline, Stage, walk
from comcoco.workdir import (
    BUILD_RECORD,
    CANDIDATES_FILE,
    MANIFEST_FILE,
    SHARDS_DIR,
    SOURCE_REPORT,
    StatusRow,
    Workdir,
    as_workdir,
    cached_source,
    shard_name,
)

log = logging.getLogger(__name__)
SHOWN = 20  # sample ids a shard's log names in one line


def _json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


# --- before the shards ---------------------------------------------------------------------------------


def check_source(spec: SourceSpec, workdir: Workdir | str | Path) -> dict[str, Any]:
    """Load and inspect the source (raises SourceError when it is unusable); save the report."""
    from comcoco.sources.validate import inspect_source

    report = inspect_source(cached_source(spec)[0], deep=False).to_dict()
    write_text_atomic(as_workdir(workdir).path(SOURCE_REPORT), _json(report))
    return {k: report[k] for k in ("refs", "expressions", "images", "annotations")} | {
        "problems": len(report["problems"])
    }


def match_stage(spec: SourceSpec, workdir: Workdir | str | Path, config: BuildConfig, progress: bool = False) -> Path:
    """Scene matching for every ref of the source (``comcoco.matching.source``); reuses the candidates
    of a planned work directory (its configuration was checked by ``prepare_workdir``)."""
    from comcoco.matching.candidates import write_candidates
    from comcoco.matching.source import match_source

    wd = as_workdir(workdir)
    out = wd.path(CANDIDATES_FILE)
    if out.is_file() and wd.plan_meta() is not None:
        return out
    index = cached_source(spec)[1]
    options = config.match_options()
    candidates = match_source(list(index.refs.values()), list(index.annotations.values()), options, progress)
    return write_candidates(out, candidates, options.params())


def plan_stage(spec: SourceSpec, workdir: Workdir | str | Path, config: BuildConfig) -> list[int]:
    """Freeze the plan (once); returns all shard ids."""
    from comcoco.matching.candidates import read_candidates
    from comcoco.matching.targets import group_sizes

    wd = as_workdir(workdir)
    if wd.plan_meta() is not None:
        return shard_ids(wd.plan_rows())
    candidates = read_candidates(wd.path(CANDIDATES_FILE))
    groups = plan_groups(candidates, cached_source(spec)[1], config.compose, config.limit)
    rows = cut_into_shards(groups, config.shard_size)
    shards = shard_ids(rows)
    fingerprint = source_fingerprint_of(wd.root, cached_source(spec)[0], rows)
    meta = {
        "config": config.to_dict(),
        "profile": config.compose.profile,
        "source": asdict(spec),
        "samples": len(rows),
        "composites": len(groups),
        "targets_per_composite": {str(n): c for n, c in group_sizes([g.members for g in groups]).items()},
        **({"decoys_planned": n} if (n := sum(len(g.decoys) for g in groups)) else {}),
        "shards": len(shards),
        "comcoco_version": comcoco.__version__,
        "source_fingerprint": fingerprint,
    }
    write_plan(wd.root, rows, meta)
    return shards


def prepare_workdir(workdir: Workdir | str | Path, config: BuildConfig, spec: SourceSpec,
                    retry_failed: bool = False) -> None:
    """Create the work directory, refusing one that was planned with another configuration or from a
    source that changed since."""
    wd = as_workdir(workdir)
    wd.root.mkdir(parents=True, exist_ok=True)
    meta = check_resume(wd.root, config, spec)
    if meta is not None:
        check_source_unchanged(wd.root, meta, spec, retry_failed)


def verify_shards(workdir: Workdir | str | Path, shards: Sequence[int], threads: int = 4) -> dict[int, str]:
    """Check every complete shard against the hashes its marker recorded; a shard whose files differ
    (bit rot, an edit, a lost file) is reported and removed, so it is made again. Returns
    {shard: what differed}."""
    from concurrent.futures import ThreadPoolExecutor

    wd = as_workdir(workdir)
    done = [s for s in shards if wd.is_complete(s)]
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:  # hashing releases the GIL
        found = dict(zip(done, pool.map(wd.check_shard, done), strict=True))
    damaged = {}
    for shard, problems in found.items():
        if problems:
            more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
            damaged[shard] = "; ".join(problems[:3]) + more
            log.warning("shard %s: its files differ from what was recorded when it was made (%s); "
                        "it is made again", shard_name(shard), damaged[shard])
            final = wd.shard_dir(shard)  # set aside in one step: the shard writer clears it and redoes the shard
            os.rename(final, final.with_name(f".{final.name}.damaged-{os.getpid()}"))
    return damaged


def pending_shards(workdir: Workdir | str | Path, shards: Sequence[int], retry_failed: bool = False) -> list[int]:
    """Shards still to run (all unmarked ones; with ``retry_failed`` also marked ones with failures)."""
    wd = as_workdir(workdir)
    out = []
    for s in shards:
        if not wd.is_complete(s):
            out.append(s)
        elif retry_failed and any(not r.ok for r in wd.shard_samples(s)):
            out.append(s)
    return out


# --- after the shards ------------------------------------------------------------------------------------


def collect_status(workdir: Workdir | str | Path, errors: dict[int, str] | None = None) -> dict[str, Any]:
    """Write ``status.parquet``: every planned sample with status, reason, provenance and file paths.

    Paths are made relative to the work directory. Samples of shards that did not complete are listed
    as ``not_built`` with the shard's error. Returns counts by status.
    """
    wd = as_workdir(workdir)
    errors = errors or {}
    by_shard: dict[int, list] = {}
    for r in wd.plan_rows():
        by_shard.setdefault(r.shard, []).append(r)
    rows: list[StatusRow] = []
    for shard in sorted(by_shard):
        if wd.is_complete(shard):
            rows.extend(StatusRow.of_sample(row, shard) for row in wd.shard_samples(shard))
        else:
            reason = errors.get(shard, "the shard has not completed")
            rows.extend(StatusRow.not_built(p, reason) for p in by_shard[shard])
    wd.write_status(rows)
    counts = Counter(r.status for r in rows)
    decoys = decoy_counts(rows)
    return {"samples": len(rows), "by_status": dict(sorted(counts.items())), **({"decoys": decoys} if decoys else {})}


def write_manifest(workdir: Workdir | str | Path, status_counts: dict[str, Any]) -> dict[str, Any]:
    """``manifest.json``: sha256 of every data file, counts and the configuration."""
    wd = as_workdir(workdir)
    meta = wd.require_plan()
    files = {rel: sha256_file(wd.root / rel) for rel in wd.data_files() if not rel.startswith(SHARDS_DIR + "/")}
    for shard in wd.complete_shards():  # as recorded when each shard was made, not whatever is there now
        files.update(wd.recorded_files(shard))
    manifest = {
        "files": dict(sorted(files.items())),
        "counts": {"shards": meta["shards"], "composites": meta["composites"], **status_counts},
        "profile": meta["config"]["compose"].get("profile", "paper"),
        "config": meta["config"],
        "source": meta["source"],
    }
    write_text_atomic(wd.path(MANIFEST_FILE), _json(manifest))
    return manifest


def refresh_status(workdir: Workdir | str | Path) -> dict[str, Any]:
    """Rewrite ``status.parquet`` and ``manifest.json`` from the shards, then clear the stale flag."""
    wd = as_workdir(workdir)
    counts = collect_status(wd)
    write_manifest(wd, counts)
    wd.clear_stale()
    return counts


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
    """``build.json``: how one run went. ``runner``, ``workers`` and the addresses are what really ran
    the shards (asked of the task runner at the end), not what was asked for."""

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
    scheduler: str | None = None
    worker_addresses: list[str] = field(default_factory=list)
    dashboard: str | None = None
    threads: int | None = None
    matching: dict[str, Any] = field(default_factory=dict)
    outcome: dict[str, Any] = field(default_factory=dict)
    shards_redone: dict[str, str] = field(default_factory=dict)  # damaged on disk, made again

    def write(self, workdir: Workdir | str | Path) -> None:
        write_text_atomic(as_workdir(workdir).path(BUILD_RECORD), _json(asdict(self)))


def failure_summary(workdir: Workdir | str | Path, limit: int | None = 10) -> list[StatusRow]:
    """The first failed samples (all with ``limit=None``), for a build summary."""
    return [r for r in as_workdir(workdir).status() if not r.ok][:limit]


# --- the stage list ------------------------------------------------------------------------------------


@dataclass
class BuildContext:
    """What a build is asked to do, and what its stages found (small things only: no images)."""

    spec: SourceSpec
    workdir: Workdir
    config: BuildConfig
    retry_failed: bool = False
    progress: bool = False
    strict: bool = False
    source_counts: dict[str, Any] = field(default_factory=dict)
    matching: dict[str, Any] = field(default_factory=dict)
    shards: list[int] = field(default_factory=list)
    todo: list[int] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)
    errors: dict[int, str] = field(default_factory=dict)
    damaged: dict[int, str] = field(default_factory=dict)  # complete shards whose files no longer match
    disk_full: bool = False
    counts: dict[str, Any] = field(default_factory=dict)

    def args(self) -> tuple[dict[str, Any], str, dict[str, Any]]:
        """The source, work directory and configuration as the plain values steps receive."""
        return asdict(self.spec), str(self.workdir.root), self.config.to_dict()


def _validate_step(source: dict, workdir: str) -> dict:
    counts = check_source(SourceSpec(**source), workdir)
    log.info("source: %d refs, %d expressions, %d images, %d annotations", counts["refs"], counts["expressions"],
             counts["images"], counts["annotations"])
    if counts["problems"]:
        log.warning("source: %d problem(s), listed in %s (`comcoco inspect` explains them)", counts["problems"],
                    as_workdir(workdir).path(SOURCE_REPORT))
    return counts


def _match_step(source: dict, workdir: str, config: dict) -> dict:
    """Match (or reuse the frozen candidates) and explain every object left with too few backgrounds."""
    from comcoco.matching.candidates import read_candidates
    from comcoco.matching.gaps import match_gaps

    spec, cfg = SourceSpec(**source), BuildConfig.from_dict(config)
    path = match_stage(spec, workdir, cfg)
    candidates = read_candidates(path)
    index = cached_source(spec)[1]
    gaps = match_gaps(list(index.refs.values()), list(index.annotations.values()), candidates,
                      cfg.match_options())
    log.info("matching: %d candidates for %d objects (%d distinct backgrounds)", len(candidates), gaps.refs,
             len({c.bg_image_id for c in candidates}))
    for line in gaps.lines():
        log.warning("matching: %s", line)
    return gaps.to_dict()


def _plan_step(source: dict, workdir: str, config: dict) -> list[int]:
    shards = plan_stage(SourceSpec(**source), workdir, BuildConfig.from_dict(config))
    meta = as_workdir(workdir).require_plan()
    log.info("plan: %d samples in %d composites, %d shard(s)", meta["samples"], meta["composites"], meta["shards"])
    return shards


def _shard_step(shard: int, workdir: str, retry_failed: bool) -> dict:
    """Run one shard and say which samples it made and which failed, with their reasons."""
    from comcoco.shards import run_shard

    result = run_shard(workdir, shard, retry_failed=retry_failed).to_dict()
    name = shard_name(shard)
    if result["skipped"]:
        log.info("shard %s: already complete (%d samples, %d ok); skipped", name, result["samples"], result["ok"])
        return result
    rows = as_workdir(workdir).shard_samples(shard)
    made = [r.sample_id for r in rows if r.ok]
    failed = [r for r in rows if not r.ok]
    more = f" and {len(made) - SHOWN} more" if len(made) > SHOWN else ""
    log.info("shard %s: %d of %d samples ok in %.1f s: %s%s", name, len(made), len(rows), result["seconds"],
             ", ".join(made[:SHOWN]) or "none", more)
    for r in failed:
        log.warning("shard %s: sample %s (ref %s, ann %s, background %s) %s: %s", name, r.sample_id, r.fg_ref_id,
                    r.fg_ann_id, r.bg_image_id, r.status, r.reason)
    result["failed_samples"] = [r.sample_id for r in failed]
    return result


def shard_verdict(result: dict) -> str | None:
    """A shard with failed samples is done, but with failures (shown on its task in the Prefect UI)."""
    if result.get("failed"):
        return f"{result['failed']} of {result['samples']} samples failed"
    return None


def _collect_step(workdir: str, errors: dict[int, str]) -> dict:
    counts = collect_status(workdir, errors)
    write_manifest(workdir, counts)
    log.info("status: %s of %d samples", ", ".join(f"{k} {v}" for k, v in counts["by_status"].items()) or "none",
             counts["samples"])
    return counts


def _validate(ctx: BuildContext, ex: Executor) -> None:
    source, workdir, _ = ctx.args()
    ctx.source_counts = ex.call("validate-source", _validate_step, source, workdir)


def _match(ctx: BuildContext, ex: Executor) -> None:
    ctx.matching = ex.call("match", _match_step, *ctx.args())


def _plan(ctx: BuildContext, ex: Executor) -> None:
    ctx.shards = ex.call("plan", _plan_step, *ctx.args())
    ctx.damaged = verify_shards(ctx.workdir, ctx.shards)
    ctx.todo = pending_shards(ctx.workdir, ctx.shards, ctx.retry_failed)
    log.info("compose: %d of %d shard(s) to run", len(ctx.todo), len(ctx.shards))


def _compose(ctx: BuildContext, ex: Executor) -> None:
    done = ex.map("compose-shard", _shard_step, ctx.todo, str(ctx.workdir.root), ctx.retry_failed,
                  label=lambda s: f"shard {shard_name(s)}", progress=ctx.progress, verdict=shard_verdict)
    for shard, result, error in done:
        if error is None:
            ctx.results.append(result)
            continue
        # a shard that crashed is reported; the others go on
        ctx.errors[shard] = f"{type(error).__name__}: {error}"
        ctx.disk_full |= isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)
        log.error("shard %s did not complete: %s", shard_name(shard), ctx.errors[shard])


def _collect(ctx: BuildContext, ex: Executor) -> None:
    ctx.counts = ex.call("collect-status", _collect_step, str(ctx.workdir.root), ctx.errors)


BUILD_STAGES: tuple[Stage, ...] = (
    Stage("validate", _validate),
    Stage("match", _match),
    Stage("plan", _plan),
    Stage("compose", _compose),
    Stage("collect", _collect),
)


def run_build_stages(ctx: BuildContext, executor: Executor) -> dict[str, Any]:
    """Walk ``BUILD_STAGES`` with ``executor``, write ``build.json``; returns the build's summary.

    The work directory is held for the whole build (``Workdir.lock``): a second build, a review pull or
    a release of it is refused while this one runs. The summary's ``outcome`` is the verdict
    (``comcoco.outcome``) that the CLI's exit code and the flow's final state follow.
    """
    ctx.workdir.root.mkdir(parents=True, exist_ok=True)
    with ctx.workdir.lock("build"):
        return _run_build_stages(ctx, executor)


def _run_build_stages(ctx: BuildContext, executor: Executor) -> dict[str, Any]:
    prepare_workdir(ctx.workdir, ctx.config, ctx.spec, ctx.retry_failed)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    seconds = walk(BUILD_STAGES, ctx, executor)
    made = sum(r["samples"] for r in ctx.results if not r["skipped"])
    errors = {str(k): v for k, v in sorted(ctx.errors.items())}
    outcome = build_outcome(ctx.counts, errors, ctx.matching, ctx.strict, ctx.disk_full)
    ran = executor.describe()
    record = BuildRecord(
        runner=ran["runner"],
        workers=int(ran["workers"]),
        started=started,
        finished=datetime.now(UTC).isoformat(timespec="seconds"),
        seconds={k: round(v, 3) for k, v in seconds.items()},
        shards_run=sum(1 for r in ctx.results if not r["skipped"]),
        shards_skipped=len(ctx.shards) - len(ctx.todo) + sum(1 for r in ctx.results if r["skipped"]),
        shard_errors=errors,
        samples_per_second=round(made / seconds["compose"], 3) if seconds["compose"] > 0 else 0.0,
        code_version=code_version(),
        scheduler=ran.get("scheduler"),
        worker_addresses=list(ran.get("worker_addresses") or []),
        dashboard=ran.get("dashboard"),
        threads=ran.get("threads"),
        matching=ctx.matching,
        outcome=outcome.to_dict(),
        shards_redone={str(k): v for k, v in sorted(ctx.damaged.items())},
    )
    record.write(ctx.workdir)
    (log.info if outcome.verdict == "ok" else log.warning)("build: %s", outcome.line())
    return {"source": ctx.source_counts, "status": ctx.counts, "record": asdict(record), "shards": len(ctx.shards),
            "matching": ctx.matching, "outcome": outcome.to_dict()}


def outcome_of(summary: dict[str, Any]) -> BuildOutcome:
    return BuildOutcome(**summary["outcome"])


def build_inline(spec: SourceSpec, workdir: Workdir | str | Path, config: BuildConfig,
                 retry_failed: bool = False) -> dict[str, Any]:
    """Every build stage in this process, without Prefect (tests, and the flow benchmark's baseline).

    Returns the status counts, like the flow's ``summary["status"]``.
    """
    ctx = BuildContext(spec, as_workdir(workdir), config, retry_failed)
    return run_build_stages(ctx, Inline())["status"]


__all__ = [
    "BUILD_STAGES", "BuildContext", "BuildRecord", "build_inline", "check_source", "code_version",
    "collect_status", "failure_summary", "match_stage", "outcome_of", "pending_shards", "plan_stage",
    "prepare_workdir", "refresh_status", "run_build_stages", "shard_verdict", "verify_shards", "write_manifest",
]
