"""comcoco.pool: job results in job order for any number of workers; failures reach the caller."""

from __future__ import annotations

import os
import signal

import pytest

from comcoco.pool import Jobs, available_cores, worker_pool


def square_after(delay_ms: int, x: int) -> int:
    import time

    time.sleep(delay_ms / 1000)
    return x * x


def fail_on(bad: int, x: int) -> int:
    if x == bad:
        raise ValueError(f"job {x} refused")
    return x


def die(x: int) -> int:
    os.kill(os.getpid(), signal.SIGKILL)
    return x


def _lost(k: int) -> Exception:
    return RuntimeError(f"job {k} lost")


@pytest.mark.parametrize("workers", [1, 2])
def test_results_come_in_job_order(workers):
    jobs = [(40 if x % 2 == 0 else 0, x) for x in range(6)]  # even jobs finish last
    done: list[int] = []
    with worker_pool(workers) as pool:
        assert pool.workers == workers and (pool.executor is None) == (workers == 1)
        assert Jobs(pool, square_after, jobs, _lost).results(done.append) == [x * x for x in range(6)]
    assert sorted(done) == list(range(6))


@pytest.mark.parametrize("workers", [1, 2])
def test_the_first_failure_is_raised(workers):
    with worker_pool(workers) as pool, pytest.raises(ValueError, match="job 3 refused"):
        Jobs(pool, fail_on, [(3, x) for x in range(6)], _lost).results()


def test_a_killed_worker_is_named_by_its_job():
    with worker_pool(2) as pool, pytest.raises(RuntimeError, match=r"job \d lost"):
        Jobs(pool, die, [(x,) for x in range(2)], _lost).results()


def test_available_cores_is_this_process_affinity():
    assert available_cores() == len(os.sched_getaffinity(0))


def test_cancel_drops_jobs_not_started_and_waits_for_running_ones():
    with worker_pool(2) as pool:
        jobs = Jobs(pool, square_after, [(300, x) for x in range(8)], _lost)
        jobs.cancel()
        assert jobs.pending == {}
        assert jobs.results() == []  # nothing left to wait for (a cancelled set gives no results)
