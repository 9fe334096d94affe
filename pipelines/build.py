"""The build flow: validate source → match → plan → compose shards (mapped) → collect status → record.

A thin Prefect face over ``comcoco.workdir`` and ``comcoco.shards``: tasks take and return paths,
ids and small dicts; every image is read and written inside the shard task. One task per shard keeps
orchestration overhead to a few milliseconds per hundreds of samples.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipelines.runners import RunnerSpec, configure_prefect

configure_prefect()

from prefect import flow, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.futures import as_completed  # noqa: E402

from comcoco.plan import BuildConfig, SourceSpec  # noqa: E402
from comcoco.shards import run_shard  # noqa: E402
from comcoco.workdir import (  # noqa: E402
    BuildRecord,
    check_source,
    code_version,
    collect_status,
    match_stage,
    pending_shards,
    plan_stage,
    prepare_workdir,
    write_manifest,
)


@task(name="validate-source", cache_policy=NO_CACHE)
def validate_source_task(source: dict, workdir: str) -> dict:
    return check_source(SourceSpec(**source), workdir)


@task(name="match", cache_policy=NO_CACHE)
def match_task(source: dict, workdir: str, config: dict) -> str:
    return str(match_stage(SourceSpec(**source), workdir, BuildConfig.from_dict(config)))


@task(name="plan", cache_policy=NO_CACHE)
def plan_task(source: dict, workdir: str, config: dict) -> list[int]:
    return plan_stage(SourceSpec(**source), workdir, BuildConfig.from_dict(config))


@task(name="compose-shard", cache_policy=NO_CACHE)
def compose_shard_task(workdir: str, shard: int, retry_failed: bool = False) -> dict:
    return run_shard(workdir, shard, retry_failed=retry_failed).to_dict()


@task(name="collect-status", cache_policy=NO_CACHE)
def collect_status_task(workdir: str, errors: dict[int, str]) -> dict:
    counts = collect_status(workdir, errors)
    write_manifest(workdir, counts)
    return counts


@flow(name="comcoco-build", log_prints=False)
def build(
    source: dict,
    workdir: str,
    config: dict,
    retry_failed: bool = False,
    runner: dict | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Build ``workdir`` from ``source`` with ``config`` (a BuildConfig as dict); returns a summary."""
    spec, cfg = SourceSpec(**source), BuildConfig.from_dict(config)
    prepare_workdir(workdir, cfg, spec)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    seconds: dict[str, float] = {}

    t = time.perf_counter()
    source_counts = validate_source_task(source, workdir)
    seconds["validate"] = time.perf_counter() - t

    t = time.perf_counter()
    match_task(source, workdir, config)
    seconds["match"] = time.perf_counter() - t

    t = time.perf_counter()
    shards = plan_task(source, workdir, config)
    todo = pending_shards(workdir, shards, retry_failed)
    seconds["plan"] = time.perf_counter() - t

    t = time.perf_counter()
    errors: dict[int, str] = {}
    results: list[dict] = []
    bar = _progress_bar(len(shards), len(shards) - len(todo), progress)
    futures = {compose_shard_task.submit(workdir, s, retry_failed): s for s in todo}
    for fut in as_completed(list(futures)):
        shard = futures[fut]
        try:
            results.append(fut.result())
        except Exception as exc:  # a shard that crashed is reported; the others go on
            errors[shard] = f"{type(exc).__name__}: {exc}"
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    seconds["compose"] = time.perf_counter() - t

    t = time.perf_counter()
    counts = collect_status_task(workdir, errors)
    seconds["collect"] = time.perf_counter() - t

    made = sum(r["samples"] for r in results if not r["skipped"])
    record = BuildRecord(
        runner=(RunnerSpec(**runner) if runner else RunnerSpec()).describe(),
        workers=(runner or {}).get("workers", 1),
        started=started,
        finished=datetime.now(UTC).isoformat(timespec="seconds"),
        seconds={k: round(v, 3) for k, v in seconds.items()},
        shards_run=sum(1 for r in results if not r["skipped"]),
        shards_skipped=len(shards) - len(todo) + sum(1 for r in results if r["skipped"]),
        shard_errors={str(k): v for k, v in sorted(errors.items())},
        samples_per_second=round(made / seconds["compose"], 3) if seconds["compose"] > 0 else 0.0,
        code_version=code_version(),
    )
    record.write(workdir)
    return {"source": source_counts, "status": counts, "record": asdict(record), "shards": len(shards)}


def _progress_bar(total: int, done: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=done, desc="shards", unit="shard", leave=False)


def run_build(
    source: SourceSpec,
    workdir: str | Path,
    config: BuildConfig,
    runner: RunnerSpec | None = None,
    retry_failed: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Run the build flow with the chosen task runner (the Python entry point behind ``comcoco build``)."""
    runner = runner or RunnerSpec()
    flow_fn = build.with_options(task_runner=runner.task_runner())
    return flow_fn(
        source=asdict(source),
        workdir=str(Path(workdir).resolve()),
        config=config.to_dict(),
        retry_failed=retry_failed,
        runner=asdict(runner),
        progress=progress,
    )
