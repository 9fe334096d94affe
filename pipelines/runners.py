"""Task runners for the flows: threads in this process (default) or a Dask cluster.

Also sets Prefect's environment before Prefect is imported: quiet logs, no analytics, and a generous
start-up timeout for the temporary local API that Prefect starts when no server is configured.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

RUNNERS: tuple[str, ...] = ("local", "dask")

_PREFECT_DEFAULTS = {
    "PREFECT_LOGGING_LEVEL": "WARNING",
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
    kind: str = "local"
    workers: int = 1
    address: str | None = None  # tcp://HOST:PORT of an existing Dask scheduler

    def __post_init__(self) -> None:
        if self.kind not in RUNNERS:
            raise ValueError(f"unknown runner {self.kind!r} (choose {'|'.join(RUNNERS)})")
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        if self.address and self.kind != "dask":
            raise ValueError("--dask-address needs --runner dask")

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
