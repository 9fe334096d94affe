"""Jobs run in a process pool, their results in job order whatever the number of workers.

A stage that spends its time on independent per-item work (encodes, copies, Parquet files) hands
that work out in jobs: plain arguments in (paths, small records), small results out, never pixels.
``workers`` 1 runs every job in this process, in order; more use a ``forkserver`` pool (workers start
from a clean process, so threads this one may run, a progress bar's or a server's, are never forked),
one OpenCV thread each: the parallelism is the pool's.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any


def available_cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no affinity call on this platform
        return max(1, os.cpu_count() or 1)


def _init_worker() -> None:
    import cv2

    cv2.setNumThreads(1)


@dataclass(frozen=True)
class WorkerPool:
    """``workers`` processes (``executor``), or this process alone (``executor`` None, one worker)."""

    workers: int = 1
    executor: ProcessPoolExecutor | None = None


INLINE = WorkerPool()


@contextmanager
def worker_pool(workers: int) -> Iterator[WorkerPool]:
    """A pool of ``workers`` processes, shut down on leaving; one worker runs jobs in this process."""
    if workers <= 1:
        yield INLINE
        return
    executor = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("forkserver"),
                                   initializer=_init_worker)
    try:
        yield WorkerPool(workers, executor)
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


class Jobs:
    """Jobs handed to a pool (started at once) or kept to run in this process when their results are
    asked for; ``results`` gives them in job order either way."""

    def __init__(self, pool: WorkerPool, fn: Callable[..., Any], jobs: Sequence[tuple],
                 lost: Callable[[int], Exception]):
        self.fn, self.jobs, self.lost = fn, list(jobs), lost
        self.pending: dict[Future, int] = {}
        if pool.executor is not None and len(self.jobs) > 1:
            self.pending = {pool.executor.submit(fn, *args): k for k, args in enumerate(self.jobs)}

    def results(self, done: Callable[[int], None] | None = None) -> list[Any]:
        """Every job's result in job order; ``done(k)`` after job ``k`` finished (progress).

        The first failure is raised here: jobs not started are cancelled, running ones finish. A worker
        that died (killed, out of memory) raises ``lost(k)`` for its job.
        """
        if not self.pending:
            out = []
            for k, args in enumerate(self.jobs):
                out.append(self.fn(*args))
                if done is not None:
                    done(k)
            return out
        results: dict[int, Any] = {}
        try:
            while self.pending:
                finished, _ = wait(self.pending, return_when=FIRST_COMPLETED)
                for future in sorted(finished, key=self.pending.__getitem__):
                    k = self.pending.pop(future)
                    try:
                        results[k] = future.result()
                    except BrokenProcessPool as exc:
                        raise self.lost(k) from exc
                    if done is not None:
                        done(k)
        except BaseException:
            self.cancel()
            raise
        return [results[k] for k in range(len(self.jobs))]

    def cancel(self) -> None:
        """Give up on the jobs: those not started are cancelled (or, without a pool, never run), running
        ones are waited for; ``results`` then has none to give."""
        for future in self.pending:
            future.cancel()
        wait(self.pending)
        self.pending, self.jobs = {}, []


def in_child(fn: Callable[..., Any], *args: Any, lost: Callable[[], Exception]) -> Any:
    """``fn(*args)`` in a fresh process (``forkserver``), its result returned here; ``lost()`` is raised
    when that process dies. For a step that needs much memory once (a release's selection loads the
    whole source): what it allocated is given back when the process ends, whatever Python's allocator
    would have kept. A daemonic process (a Dask worker) may not start children: it runs ``fn`` itself."""
    if multiprocessing.current_process().daemon:
        return fn(*args)
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("forkserver"),
                             initializer=_init_worker) as executor:
        try:
            return executor.submit(fn, *args).result()
        except BrokenProcessPool as exc:
            raise lost() from exc
