"""Task runners for the flows (threads in this process, or a Dask cluster) and the Prefect executor.

Also sets Prefect's environment before Prefect is imported: quiet logs, no analytics, and a generous
start-up timeout for the temporary local API that Prefect starts when no server is configured.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from comcoco.errors import ComcocoError

RUNNERS: tuple[str, ...] = ("local", "dask")


class RunnerError(ComcocoError, ValueError):
    """An unusable runner choice (unknown kind, no workers, an address without Dask)."""

_PREFECT_DEFAULTS = {
    "PREFECT_LOGGING_LEVEL": "WARNING",
    # The CLI reports outcomes and expected failures itself, in one line each; Prefect's own console
    # output (task failures with tracebacks) would repeat them. Logs still reach a Prefect server.
    "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "CRITICAL",
    "PREFECT_SERVER_LOGGING_LEVEL": "CRITICAL",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    "PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "0.5",
    "DO_NOT_TRACK": "1",
}


def configure_prefect() -> None:
    """Quiet, offline defaults; anything the user set in the environment wins."""
    for key, value in _PREFECT_DEFAULTS.items():
        os.environ.setdefault(key, value)


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


class PrefectExecutor:
    """Runs each step as a Prefect task inside the current flow; ``map`` submits one task per item.

    Used by the flows in ``pipelines/`` to walk the stage lists of ``comcoco.build`` and
    ``comcoco.release``, so the plain loop and the flow run the same stages in the same order.
    """

    def call(self, name: str, fn, *args):
        from prefect import task
        from prefect.cache_policies import NO_CACHE

        return task(fn, name=name, cache_policy=NO_CACHE)(*args)

    def map(self, name: str, fn, items, *args, label=str, progress: bool = False):
        from prefect import task
        from prefect.cache_policies import NO_CACHE
        from prefect.futures import as_completed

        from comcoco.stages import progress_bar

        step = task(fn, name=name, cache_policy=NO_CACHE)
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
