"""The build flow: ``comcoco.build.BUILD_STAGES`` walked with Prefect tasks, one task per shard.

A thin face: the stage list, the stages and ``build.json`` all come from ``comcoco.build``; this module
only chooses the Prefect executor and the task runner (threads, or Dask for the shards). Tasks take and
return paths, ids and small dicts; every image is read and written inside the shard task.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from pipelines.runners import PrefectExecutor, RunnerSpec, configure_prefect

configure_prefect()

from prefect import flow  # noqa: E402

from comcoco.build import BuildContext, run_build_stages  # noqa: E402
from comcoco.plan import BuildConfig, SourceSpec  # noqa: E402
from comcoco.workdir import Workdir  # noqa: E402


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
    spec = RunnerSpec(**runner) if runner else RunnerSpec()
    ctx = BuildContext(SourceSpec(**source), Workdir(workdir), BuildConfig.from_dict(config), retry_failed, progress)
    return run_build_stages(ctx, PrefectExecutor(), runner=spec.describe(), workers=spec.workers)


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

