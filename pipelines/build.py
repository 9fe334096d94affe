"""The build flow: ``comcoco.build.BUILD_STAGES`` walked with Prefect tasks, one task per shard.

A thin face: the stage list, the stages, the verdict and ``build.json`` all come from ``comcoco``; this
module chooses the Prefect executor and the task runner (threads, or Dask for the shards), publishes
the build's summary and its failed samples as artifacts, and ends the run in the state the verdict
calls for: Completed, "Completed with failures" (samples failed with a reason), or Failed (a partial
result, or failed samples under ``--strict``), each with the verdict as its message. Tasks take and
return paths, ids and small dicts; every image is read and written inside the shard task.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from pipelines.api_server import with_prefect_api
from pipelines.runners import WITH_FAILURES, PrefectExecutor, RunnerSpec, configure_prefect

configure_prefect()

from prefect import flow, get_run_logger  # noqa: E402
from prefect.artifacts import create_markdown_artifact, create_table_artifact  # noqa: E402
from prefect.states import Completed, Failed, State  # noqa: E402

from comcoco.build import BuildContext, outcome_of, run_build_stages  # noqa: E402
from comcoco.outcome import FAILURES, OK, failed_table, summary_markdown  # noqa: E402
from comcoco.plan import BuildConfig, SourceSpec  # noqa: E402
from comcoco.workdir import Workdir  # noqa: E402

SUMMARY_KEY = "comcoco-build-summary"
FAILED_KEY = "comcoco-build-failed-samples"


def publish(workdir: str, summary: dict[str, Any]) -> None:
    """The build's Markdown summary and its table of failed samples, as artifacts of this flow run."""
    wd = Workdir(workdir)
    rows = wd.status() if wd.has_status else []
    outcome = outcome_of(summary)
    create_markdown_artifact(summary_markdown(workdir, summary, outcome, rows), key=SUMMARY_KEY,
                             description=f"comcoco build of {workdir}: {outcome.message}")
    table, left_out = failed_table(rows)
    note = f"; {left_out} more in status.parquet" if left_out else ""
    create_table_artifact(table, key=FAILED_KEY,
                          description=f"{len(table) + left_out} failed sample(s) of {workdir}{note}")


def final_state(summary: dict[str, Any]) -> State:
    """Completed, Completed with failures, or Failed: the verdict, visible on the flow run."""
    outcome = outcome_of(summary)
    if outcome.verdict == OK:
        return Completed(message=outcome.line(), data=summary)
    if outcome.verdict == FAILURES:
        return Completed(name=WITH_FAILURES, message=outcome.line(), data=summary)
    return Failed(message=outcome.line(), data=summary)


@flow(name="comcoco-build", log_prints=False)
def build(
    source: dict,
    workdir: str,
    config: dict,
    retry_failed: bool = False,
    runner: dict | None = None,
    progress: bool = False,
    strict: bool = False,
) -> State:
    """Build ``workdir`` from ``source`` with ``config`` (a BuildConfig as dict); the state holds a summary."""
    logger = get_run_logger()
    spec = RunnerSpec(**runner) if runner else RunnerSpec()
    logger.info("building %s from %s (%s)", workdir, source["root"], spec.describe())
    ctx = BuildContext(SourceSpec(**source), Workdir(workdir), BuildConfig.from_dict(config), retry_failed,
                       progress, strict)
    summary = run_build_stages(ctx, PrefectExecutor(spec))
    record = summary["record"]
    logger.info("ran on %s: %d worker(s)%s", record["runner"], record["workers"],
                f", scheduler {record['scheduler']}" if record["scheduler"] else "")
    publish(workdir, summary)
    return final_state(summary)


@with_prefect_api
def run_build(
    source: SourceSpec,
    workdir: str | Path,
    config: BuildConfig,
    runner: RunnerSpec | None = None,
    retry_failed: bool = False,
    progress: bool = False,
    strict: bool = False,
) -> dict[str, Any]:
    """Run the build flow with the chosen task runner (the Python entry point behind ``comcoco build``).

    Returns the summary (``outcome`` holds the verdict) also when the run ends Failed because of it; an
    exception that stopped the run is raised again.
    """
    runner = runner or RunnerSpec()
    flow_fn = build.with_options(task_runner=runner.task_runner())
    state = flow_fn(
        source=asdict(source),
        workdir=str(Path(workdir).resolve()),
        config=config.to_dict(),
        retry_failed=retry_failed,
        runner=asdict(runner),
        progress=progress,
        strict=strict,
        return_state=True,
    )
    result = state.result(raise_on_failure=False)
    if isinstance(result, BaseException):
        raise result
    if not isinstance(result, dict) or "outcome" not in result:
        state.result()  # a state without a summary: raises what ended the run
        raise RuntimeError(f"the build flow ended {state.name} without a summary: {state.message}")
    return result
