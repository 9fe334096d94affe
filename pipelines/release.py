"""The release flow: start → select → export → validate (optional) → card → manifest → dist → publish.

A thin Prefect face over ``comcoco.release.builder``: every task takes and returns paths, a version
string and small dicts; images are read and written inside the tasks. On any failure the staging
folder ``comcoco-X.Y.Z.incomplete`` is removed, so nothing half-built is ever published.

The validation step is a hook: pass ``validation_hook="package.module:function"``; the function gets
the staged release's path and returns ``{"title", "metrics", "notes"}``, which the card shows.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from pipelines.runners import configure_prefect

configure_prefect()

from prefect import flow, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from comcoco.release.builder import (  # noqa: E402
    ReleaseOptions,
    card_stage,
    dist_stage,
    export_stage,
    finish_release,
    manifest_stage,
    select_stage,
    start_release,
    validation_stage,
)


@task(name="release-start", cache_policy=NO_CACHE)
def start_task(releases: str, version: str) -> str:
    return str(start_release(releases, version))


@task(name="release-select", cache_policy=NO_CACHE)
def select_task(workdir: str, staging: str, options: dict) -> dict:
    return select_stage(workdir, staging, ReleaseOptions(**options))


@task(name="release-export", cache_policy=NO_CACHE)
def export_task(workdir: str, staging: str, options: dict, progress: bool) -> dict:
    return export_stage(workdir, staging, ReleaseOptions(**options), progress)["files"]


@task(name="release-validate", cache_policy=NO_CACHE)
def validate_task(staging: str, hook: str) -> dict | None:
    return validation_stage(staging, hook)


@task(name="release-card", cache_policy=NO_CACHE)
def card_task(staging: str, version: str, options: dict) -> list[str]:
    return card_stage(staging, version, ReleaseOptions(**options))


@task(name="release-manifest", cache_policy=NO_CACHE)
def manifest_task(workdir: str, staging: str, version: str, options: dict, progress: bool) -> dict:
    manifest = manifest_stage(workdir, staging, version, ReleaseOptions(**options), progress)
    return {"files": len(manifest["files"]), "counts": manifest["counts"]["total"]}


@task(name="release-dist", cache_policy=NO_CACHE)
def dist_task(staging: str, version: str, options: dict, progress: bool) -> dict:
    return dist_stage(staging, version, ReleaseOptions(**options), progress)


@task(name="release-publish", cache_policy=NO_CACHE)
def publish_task(staging: str) -> str:
    return str(finish_release(staging))


@flow(name="comcoco-release", log_prints=False)
def release(workdir: str, releases: str, version: str, options: dict | None = None,
            validation_hook: str | None = None, progress: bool = False) -> dict[str, Any]:
    """Build ``releases/comcoco-<version>`` from ``workdir``; returns its path, counts and timings."""
    opts = ReleaseOptions(**(options or {})).to_dict()
    seconds: dict[str, float] = {}
    staging = start_task(releases, version)
    try:
        t = time.perf_counter()
        selection = select_task(workdir, staging, opts)
        seconds["select"] = time.perf_counter() - t
        t = time.perf_counter()
        export_task(workdir, staging, opts, progress)
        seconds["export"] = time.perf_counter() - t
        if validation_hook:
            t = time.perf_counter()
            validate_task(staging, validation_hook)
            seconds["validate"] = time.perf_counter() - t
        t = time.perf_counter()
        card_task(staging, version, opts)
        seconds["card"] = time.perf_counter() - t
        t = time.perf_counter()
        manifest = manifest_task(workdir, staging, version, opts, progress)
        seconds["manifest"] = time.perf_counter() - t
        t = time.perf_counter()
        dist = dist_task(staging, version, opts, progress)
        seconds["dist"] = time.perf_counter() - t
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    path = publish_task(staging)
    return {"release": path, "selection": selection["splits"]["splits"], "manifest": manifest, "dist": dist,
            "seconds": {k: round(v, 3) for k, v in seconds.items()}}


def run_release(workdir: str | Path, releases: str | Path, version: str, options: ReleaseOptions | None = None,
                validation_hook: str | None = None, progress: bool = False) -> dict[str, Any]:
    """The Python entry point: run the release flow."""
    return release(workdir=str(Path(workdir).resolve()), releases=str(Path(releases).resolve()), version=version,
                   options=(options or ReleaseOptions()).to_dict(), validation_hook=validation_hook,
                   progress=progress)
