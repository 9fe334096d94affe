"""A build stopped by a signal, as a user or a scheduler stops it, leaves no process behind.

`comcoco build` runs without PREFECT_API_URL here, so it starts its own temporary Prefect API
(`pipelines.api_server`). Each case signals a real build in the middle of its run and then looks for
every process it started: the API server (in its own session, so found by its command line, which
names the build's pid) and any other descendant.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[1]
# `python -m comcoco` with the signal dispositions a launcher gives it, whatever started this test (a
# shell's background job, as `make test &` or nohup, ignores SIGINT; a build keeps ignoring what its
# parent chose to ignore, tested below).
_RUN = "sys.argv[0] = 'comcoco'; runpy.run_module('comcoco', run_name='__main__', alter_sys=True)"
FROM_A_TERMINAL = f"import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); {_RUN}"
UNDER_NOHUP = ("import runpy, signal, sys; signal.signal(signal.SIGHUP, signal.SIG_IGN); "
               f"signal.signal(signal.SIGINT, signal.SIG_IGN); {_RUN}")


def _procs() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every live, non-zombie process."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if state != "Z":
            out[int(d.name)] = (int(ppid), cmd)
    return out


def _started_by(pid: int) -> set[int]:
    """Descendants of ``pid``, and the API server it started in another session."""
    procs = _procs()
    found = {p for p, (_, cmd) in procs.items() if f"pipelines.api_server {pid} " in cmd}
    grew = True
    while grew:
        more = {p for p, (pp, _) in procs.items() if (pp == pid or pp in found) and p not in found}
        found |= more
        grew = bool(more)
    return found


def _build_until_planned(source: Path, tmp_path: Path, launcher: str) -> subprocess.Popen:
    """A real two-worker build in a session of its own, returned once its plan is written (its
    Prefect API is up and its stages begin: seconds of composing are left)."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PYTHONPATH=str(REPO))
    work = tmp_path / "work"
    proc = subprocess.Popen([sys.executable, "-c", launcher, "build", str(source), "-o", str(work), "--workers", "2"],
                            env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 240
    try:
        while not (work / "plan.json").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the build never reached its plan"
            time.sleep(0.05)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    return proc


def _none_left(started: set[int]) -> None:
    deadline = time.monotonic() + 20
    while (left := started & set(_procs())) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, {p: _procs().get(p) for p in left}


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
@pytest.mark.parametrize(("how", "sig", "code"), [
    ("process", signal.SIGTERM, 143),  # `kill PID`
    ("group", signal.SIGTERM, 143),  # a scheduler or service manager stopping the whole group
    ("group", signal.SIGINT, 130),  # Ctrl-C in a terminal reaches the whole foreground group
    ("process", signal.SIGKILL, -9),  # nothing runs in the build: the kernel stops its server
])
def test_a_signalled_build_stops_promptly_and_leaves_no_process(demo_source_small: Path, tmp_path: Path,
                                                                 how: str, sig: int, code: int) -> None:
    proc = _build_until_planned(demo_source_small, tmp_path, FROM_A_TERMINAL)
    try:
        started = _started_by(proc.pid)
        assert any("pipelines.api_server" in _procs().get(p, (0, ""))[1] for p in started), started
        t0 = time.monotonic()
        (os.killpg if how == "group" else os.kill)(proc.pid, sig)
        out, err = proc.communicate(timeout=120)
        stopped_in = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # the build has seconds of work left after its plan: an exit code 0 means the signal was lost
    assert proc.returncode == code, err.decode()[-2000:]
    if sig != signal.SIGKILL:
        text = err.decode()
        assert f"error: stopped by {signal.Signals(sig).name}; what was finished is kept" in text
        assert "Traceback" not in text and "Error logging to API" not in text, text[-2000:]
        assert stopped_in < 60, f"took {stopped_in:.1f}s to stop"
    _none_left(started)


@pytest.mark.skipif(not hasattr(signal, "SIGHUP") or not Path("/proc/self/stat").exists(), reason="POSIX, reads /proc")
def test_a_build_under_nohup_outlives_its_terminal(demo_source_small: Path, tmp_path: Path) -> None:
    """`nohup comcoco build ... &` then closing the terminal: the group gets SIGHUP, which nohup made
    ignored (and a shell's background job ignores SIGINT, so a SIGINT to the group does nothing either):
    the build, its workers and its Prefect API go on, and the build completes."""
    proc = _build_until_planned(demo_source_small, tmp_path, UNDER_NOHUP)
    try:
        started = _started_by(proc.pid)
        os.killpg(proc.pid, signal.SIGHUP)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, err.decode()[-2000:]
    assert "stopped by" not in err.decode()
    work = tmp_path / "work"
    status = pq.read_table(work / "status.parquet", columns=["status"]).column("status").to_pylist()
    assert len(status) == pq.read_table(work / "plan.parquet").num_rows  # every planned sample has its row
    assert status.count("ok") > 0
    _none_left(started)


def test_a_stop_takes_only_prefect_api_log_handlers_off() -> None:
    """The stop's own step, without the race it prevents: Prefect's API handlers leave every logger
    (a task thread finishing during shutdown would print a traceback through them); others stay."""
    import logging

    from prefect.logging.handlers import APILogHandler

    from comcoco.commands._common import _quiet_prefect_api_logs

    loggers = [logging.getLogger(), *(x for x in logging.Logger.manager.loggerDict.values()
                                      if isinstance(x, logging.Logger))]
    kept = {lg: list(lg.handlers) for lg in loggers}
    mine = logging.getLogger("prefect.task_runs.comcoco-stop-test")
    api, other = APILogHandler(), logging.NullHandler()
    mine.addHandler(api)
    mine.addHandler(other)
    try:
        _quiet_prefect_api_logs()
        assert mine.handlers == [other]
        assert not any(isinstance(h, APILogHandler) for lg in loggers for h in lg.handlers)
    finally:
        mine.removeHandler(other)
        for lg, handlers in kept.items():
            lg.handlers[:] = handlers
