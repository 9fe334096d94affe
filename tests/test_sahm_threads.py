"""Torch's CPU threads during a SAHM run: one for small inputs, restored afterwards, overridable."""

from __future__ import annotations

import pytest
import torch

from comcoco.sahm.distributed import SMALL_INPUT, cpu_threads
from comcoco.sahm.runfiles import RunError, Runtime


@pytest.fixture(autouse=True)
def two_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_small_inputs_run_on_one_thread_and_the_setting_is_restored():
    with cpu_threads(Runtime(), "cpu", 64) as n:
        assert n == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2


def test_large_inputs_keep_the_process_setting_and_threads_override():
    with cpu_threads(Runtime(), "cpu", SMALL_INPUT + 32) as n:
        assert n == 2
    with cpu_threads(Runtime(threads=2), "cpu", 64) as n:
        assert n == 2
    with pytest.raises(RunError, match="--threads must be >= 1"), cpu_threads(Runtime(threads=0), "cpu", 64):
        pass
    assert torch.get_num_threads() == 2


def test_omp_num_threads_is_respected(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    with cpu_threads(Runtime(), "cpu", 64) as n:
        assert n == 2
