"""Task runners for the flows (threads in this process, or a Dask cluster) and the Prefect executor.

Also sets Prefect's environment before Prefect is imported: quiet logs, no analytics, and a generous
start-up timeout for the temporary local API that Prefect starts when no server is configured.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from comcoco.errors import ComcocoError

RUNNERS: tuple[str, ...] = ("local", "dask")


class RunnerError(ComcocoError, ValueError):
    """An unusable runner choice (unknown kind, no workers, an address without Dask)."""

_PREFECT_DEFAULTS = {
    # INFO reaches the API, so the UI shows each run's stage and shard summaries; the console handler
    # stays at CRITICAL: the CLI reports outcomes and expected failures itself, in one line each, and
    # Prefect's own console output (task failures with tracebacks) would repeat them.
    "PREFECT_LOGGING_LEVEL": "INFO",
    "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "CRITICAL",
    # comcoco's own loggers (``comcoco.*``) get Prefect's API handler: a stage's lines land in the log
    # of the task or flow run they were written in, on threads and on Dask workers alike.
    "PREFECT_LOGGING_EXTRA_LOGGERS": "comcoco",
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
    "PREFECT_SERVER_LOGGING_LEVEL": "CRITICAL",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    "PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "0.5",
    "DO_NOT_TRACK": "1",
}


def configure_prefect() -> None:
    """Quiet, offline defaults; anything the user set in the environment wins (``comcoco`` is added to
    the extra loggers the user names)."""
    for key, value in _PREFECT_DEFAULTS.items():
        os.environ.setdefault(key, value)
    extra = [n.strip() for n in os.environ["PREFECT_LOGGING_EXTRA_LOGGERS"].split(",") if n.strip()]
    if "comcoco" not in extra:
        os.environ["PREFECT_LOGGING_EXTRA_LOGGERS"] = ",".join([*extra, "comcoco"])
    _comcoco_logs()


def _comcoco_logs() -> None:
    """comcoco's loggers speak at INFO inside runs (a Dask worker sets this before its first task)."""
    logger = logging.getLogger("comcoco")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)


@dataclass(frozen=True)
class RunnerSpec:
    """Where a flow's fanned-out steps run: ``local`` threads or ``dask`` (a local cluster or an address)."""

    kind: str = "local"
    workers: int = 1
    address: str | None = None  # tcp://HOST:PORT of an existing Dask scheduler

    def __post_init__(self) -> None:
        if self.kind not in RUNNERS:
            raise RunnerError(f"unknown runner {self.kind!r} (choose {'|'.join(RUNNERS)})")
        if self.workers < 1:
            raise RunnerError(f"workers must be at least 1, got {self.workers}")
        if self.address and self.kind != "dask":
            raise RunnerError("--dask-address needs --runner dask")

    def describe(self) -> str:
        if self.kind == "local":
            return f"local ({self.workers} thread{'s' if self.workers != 1 else ''})"
        if self.address:
            return f"dask ({self.address})"
        return f"dask (local cluster, {self.workers} process{'es' if self.workers != 1 else ''})"

    def task_runner(self):
        """A Prefect task runner for this spec."""
        configure_prefect()
        if self.kind == "local":
            from prefect.task_runners import ThreadPoolTaskRunner

            return ThreadPoolTaskRunner(max_workers=self.workers)
        from prefect_dask import DaskTaskRunner

        if self.address:
            return DaskTaskRunner(address=self.address)
        return DaskTaskRunner(
            cluster_class="distributed.LocalCluster",
            cluster_kwargs={
                "n_workers": self.workers,
                "processes": True,
                "threads_per_worker": 1,
                "host": "127.0.0.1",
                "dashboard_address": "127.0.0.1:0",
                "silence_logs": logging.ERROR,
            },
        )


WITH_FAILURES = "Completed with failures"


def _as_task_body(fn: Callable[..., Any], verdict: Callable[[Any], str | None] | None) -> Callable[..., Any]:
    """``fn`` as a task runs it: comcoco's logs at INFO, and a result the ``verdict`` has words for ends
    in a Completed state named "Completed with failures" that carries them (seen in the UI's task list)."""

    @functools.wraps(fn)
    def body(*args: Any, **kwargs: Any) -> Any:
        _comcoco_logs()
        result = fn(*args, **kwargs)
        message = verdict(result) if verdict is not None else None
        if message:
            from prefect.states import Completed

            return Completed(name=WITH_FAILURES, message=message, data=result)
        return result

    return body


class PrefectExecutor:
    """Runs each step as a Prefect task inside the current flow; ``map`` submits one task per item.

    Used by the flows in ``pipelines/`` to walk the stage lists of ``comcoco.build`` and
    ``comcoco.release``, so the plain loop and the flow run the same stages in the same order.
    """

    def __init__(self, spec: RunnerSpec | None = None):
        self.spec = spec or RunnerSpec()

    def call(self, name: str, fn, *args):
        from prefect import task
        from prefect.cache_policies import NO_CACHE

        return task(_as_task_body(fn, None), name=name, task_run_name=name, cache_policy=NO_CACHE)(*args)

    def map(self, name: str, fn, items, *args, label=str, progress: bool = False, verdict=None):
        from prefect import task
        from prefect.cache_policies import NO_CACHE
        from prefect.futures import as_completed

        from comcoco.progress import progress_bar

        step = task(_as_task_body(fn, verdict), name=name, cache_policy=NO_CACHE)
        futures = {step.with_options(task_run_name=label(item)).submit(item, *args): item for item in items}
        out = []
        bar = progress_bar(len(futures), name, progress)
        for fut in as_completed(list(futures)):
            try:
                out.append((futures[fut], fut.result(), None))
            except Exception as exc:  # one item's failure is reported with it; the others go on
                out.append((futures[fut], None, exc))
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        return out

    def describe(self) -> dict[str, Any]:
        """What really ran the fanned-out steps: the runner, its worker count and addresses.

        Asked of the flow's task runner at the end of a run, so a Dask cluster reports the workers it
        had (an existing cluster may have any number) and its scheduler's address.
        """
        from prefect.context import FlowRunContext

        out: dict[str, Any] = {"runner": self.spec.describe(), "workers": self.spec.workers,
                               "scheduler": None, "worker_addresses": [], "dashboard": None}
        ctx = FlowRunContext.get()
        runner = getattr(ctx, "task_runner", None)
        if self.spec.kind == "local":
            out["workers"] = int(getattr(runner, "_max_workers", self.spec.workers))
            return out
        client = getattr(runner, "_client", None)
        if client is None:  # no shard was submitted, so no cluster was started or joined
            return out | {"workers": 0, "runner": self.spec.describe() + ", not started: nothing to run"}
        info = client.scheduler_info(n_workers=-1)
        workers = info.get("workers", {})
        return out | {"workers": len(workers), "threads": sum(int(w.get("nthreads", 1)) for w in workers.values()),
                      "scheduler": client.scheduler.address, "worker_addresses": sorted(workers),
                      "dashboard": client.dashboard_link}
