"""Stage lists and the executors that walk them: each pipeline's order is written once.

A pipeline (the build, a release) is a tuple of ``Stage``: a name and a function of a context and an
executor. ``walk`` runs them in order and times each. The executor decides how a step runs: ``Inline``
calls it in this process (tests, benchmarks' baseline, plain Python use); the Prefect executor in
``pipelines/`` runs each step as a Prefect task and fans shards out on a task runner. Stage functions
pass only paths, ids and small dicts to the executor, so images never travel through an orchestrator.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from comcoco.progress import progress_bar


class Executor(Protocol):
    """How the steps of a stage run."""

    def call(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Run one step and return its result (exceptions propagate)."""

    def map(self, name: str, fn: Callable[..., Any], items: Sequence[Any], *args: Any,
            label: Callable[[Any], str] = str, progress: bool = False,
            verdict: Callable[[Any], str | None] | None = None) -> list[tuple[Any, Any, BaseException | None]]:
        """Run ``fn(item, *args)`` for every item; returns (item, result, error) in completion order.

        One item's exception is its error, never the others': the rest go on. ``label(item)`` names the
        item's step (a shard's task is "shard 00012"); ``verdict(result)``, when it returns words, marks
        the step as done with failures where the executor can show that.
        """

    def describe(self) -> dict[str, Any]:
        """What ran the steps: ``runner`` (a description), ``workers`` and, for a cluster, its addresses."""


class Inline:
    """Every step in this process, in order."""

    def call(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(*args)

    def map(self, name: str, fn: Callable[..., Any], items: Sequence[Any], *args: Any,
            label: Callable[[Any], str] = str, progress: bool = False,
            verdict: Callable[[Any], str | None] | None = None) -> list[tuple[Any, Any, BaseException | None]]:
        out: list[tuple[Any, Any, BaseException | None]] = []
        bar = progress_bar(len(items), name, progress)
        for item in items:
            try:
                out.append((item, fn(item, *args), None))
            except Exception as exc:  # one item's failure is reported with it; the others go on
                out.append((item, None, exc))
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        return out

    def describe(self) -> dict[str, Any]:
        return {"runner": "inline", "workers": 1, "scheduler": None, "worker_addresses": [], "dashboard": None}


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[Any, Executor], Any]


def walk(stages: Iterable[Stage], context: Any, executor: Executor) -> dict[str, float]:
    """Run ``stages`` in order on ``context``; returns seconds per stage (in order)."""
    seconds: dict[str, float] = {}
    for stage in stages:
        t = time.perf_counter()
        stage.run(context, executor)
        seconds[stage.name] = time.perf_counter() - t
    return seconds
