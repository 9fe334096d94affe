"""Hostile concurrency: two writers on one work directory or one release version, as real processes.

Every case starts real `python -m comcoco` processes at the same moment (or while another one is
working) and checks that exactly one runs, that the others are refused at once with exit 3 and
"in use by pid N since T", and that what the runner leaves is whole: every shard marked complete
holds every file its marker lists, with the recorded hashes, and the result equals a build that ran
alone. A build killed with SIGKILL and resumed is `tests/test_build.py::
test_sigkill_then_resume_gives_identical_files` (it is not repeated here).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from comcoco.commands._common import EXIT_REFUSED
from comcoco.release.manifest import verify_release

ARGS = ["--limit", "16", "--shard-size", "2", "--seed", "1", "--no-progress"]
BUSY = re.compile(r"in use by pid (\d+) since (\S+) \(([^)]+)\)")


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    """A `python -m comcoco` process whose output goes to files (a pipe left unread could block it)."""
    logs = Path(os.environ.get("TMPDIR", "/tmp"))
    out = tempfile.TemporaryFile(dir=logs)
    err = tempfile.TemporaryFile(dir=logs)
    proc = subprocess.Popen([sys.executable, "-m", "comcoco", *args], env={**os.environ, **env},
                            stdout=out, stderr=err, start_new_session=True)
    proc.logs = (out, err)  # type: ignore[attr-defined]
    return proc


def wait_all(procs: list[subprocess.Popen], timeout: float = 600) -> dict[int, tuple[int, str, str, float]]:
    """Wait for every process; {pid: (exit code, stdout, stderr, when it ended (monotonic))}."""
    ended: dict[int, float] = {}
    deadline = time.monotonic() + timeout
    while len(ended) < len(procs):
        for p in procs:
            if p.pid not in ended and p.poll() is not None:
                ended[p.pid] = time.monotonic()
        if time.monotonic() > deadline:
            for p in procs:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
            raise AssertionError("a command did not end in time")
        time.sleep(0.02)
    out = {}
    for p in procs:
        texts = []
        for fh in p.logs:  # type: ignore[attr-defined]
            fh.seek(0)
            texts.append(fh.read().decode(errors="replace"))
            fh.close()
        out[p.pid] = (p.returncode, texts[0], texts[1], ended[p.pid])
    return out


def check_refused(err: str, holder: subprocess.Popen, operation: str, t0: datetime) -> None:
    """One `error:` line naming the holder's pid, a time within the test and what the holder does."""
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    m = BUSY.search(lines[0])
    assert m, lines[0]
    assert int(m.group(1)) == holder.pid, (lines[0], holder.pid)
    since = datetime.fromisoformat(m.group(2))
    assert t0 - timedelta(seconds=2) <= since <= datetime.now(UTC), (since, t0)
    assert m.group(3) == operation, lines[0]


def check_marked_shards(workdir: Path) -> int:
    """Every shard folder is marked, and holds exactly the files its marker lists, with their hashes."""
    shards = sorted(p for p in (workdir / "shards").iterdir())
    assert shards and all(re.fullmatch(r"\d{5}", p.name) for p in shards), [p.name for p in shards]
    for d in shards:
        record = json.loads((d / "_SUCCESS").read_text())["files"]
        on_disk = sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file() and p.name != "_SUCCESS")
        assert on_disk == sorted(record), d
        for rel, stamp in record.items():
            data = (d / rel).read_bytes()
            assert len(data) == stamp["size"] and hashlib.sha256(data).hexdigest() == stamp["sha256"], (d, rel)
    assert len(shards) == json.loads((workdir / "plan.json").read_text())["shards"], "a planned shard is missing"
    return len(shards)


def manifest_files(workdir: Path) -> dict[str, str]:
    return json.loads((workdir / "manifest.json").read_text())["files"]


@pytest.fixture(scope="module")
def alone(demo_source_small, prefect_api, tmp_path_factory) -> Path:
    """Two builds of one work directory started at the same moment: one runs, one is refused."""
    out = tmp_path_factory.mktemp("concurrent") / "wd"
    t0 = datetime.now(UTC)
    args = ["build", str(demo_source_small), "-o", str(out), *ARGS]
    a, b = start(args, prefect_api), start(args, prefect_api)
    ends = wait_all([a, b])
    codes = sorted(e[0] for e in ends.values())
    assert codes == [0, EXIT_REFUSED], {pid: (e[0], e[2][-2000:]) for pid, e in ends.items()}
    winner, loser = (a, b) if ends[a.pid][0] == 0 else (b, a)
    check_refused(ends[loser.pid][2], winner, "build", t0)
    assert ends[loser.pid][3] < ends[winner.pid][3], "the second build waited instead of being refused at once"
    assert "16 of 16 samples ok" in ends[winner.pid][1], ends[winner.pid][1]
    return out


def test_two_builds_at_once_one_runs_and_its_shards_are_whole(alone):
    assert check_marked_shards(alone) >= 4
    assert not list((alone / "shards").glob(".*")), "a temporary folder of the refused build remains"
    assert not (alone / ".comcoco.lock").exists(), "the winner left its lock file behind"


def test_a_build_at_work_refuses_a_build_a_pull_and_a_release(alone, demo_source_small, prefect_api, tmp_path):
    """While a build composes, a second build, a `review pull`, a `review push` and a `release` of the same
    work directory are all refused with the build's pid; the build then ends exactly as one run alone."""
    out = tmp_path / "wd"
    t0 = datetime.now(UTC)
    build = start(["build", str(demo_source_small), "-o", str(out), *ARGS], prefect_api)
    deadline = time.monotonic() + 300
    while not (out / "plan.json").exists() and build.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert build.poll() is None, "the build ended before the others could be started"
    review = ["--stage", "placement", "--url", "http://127.0.0.1:9", "--token", "0" * 40,
              "--document-root", str(tmp_path)]
    others = {
        "build": start(["build", str(demo_source_small), "-o", str(out), *ARGS], prefect_api),
        "review pull": start(["review", "pull", str(out), *review], prefect_api),
        "review push": start(["review", "push", str(out), *review], prefect_api),
        "release": start(["release", str(out), "-o", str(tmp_path / "rel"), "--version", "1.0.0", "--no-progress"],
                         prefect_api),
    }
    ends = wait_all([build, *others.values()])
    code, _, stderr, build_end = ends[build.pid]
    assert code == 0, stderr[-3000:]
    for name, p in others.items():
        rc, _, err, end = ends[p.pid]  # each named the build's pid: it met the build's lock
        assert rc == EXIT_REFUSED, (name, rc, err[-2000:])
        check_refused(err, build, "build", t0)
        assert end < build_end, f"{name} was not refused at once"
    assert not (tmp_path / "rel").exists() or not list((tmp_path / "rel").iterdir()), "a refused release left files"
    assert check_marked_shards(out) >= 4
    assert manifest_files(out) == manifest_files(alone)


def test_two_releases_of_one_version_one_publishes_and_it_verifies(alone, prefect_api, tmp_path):
    rel = tmp_path / "releases"
    t0 = datetime.now(UTC)
    args = ["release", str(alone), "-o", str(rel), "--version", "1.0.0", "--split", "train=2,val=1,test=1",
            "--no-progress"]
    a, b = start(args, prefect_api), start(args, prefect_api)
    ends = wait_all([a, b])
    assert sorted(e[0] for e in ends.values()) == [0, EXIT_REFUSED], {pid: e[2][-2000:] for pid, e in ends.items()}
    winner, loser = (a, b) if ends[a.pid][0] == 0 else (b, a)
    check_refused(ends[loser.pid][2], winner, "release 1.0.0", t0)
    assert [p.name for p in rel.glob("comcoco-*")] == ["comcoco-1.0.0"]
    assert not list(rel.glob(".*")), "a staging folder or a lock file remains"
    assert verify_release(rel / "comcoco-1.0.0") == []


def test_a_killed_holder_never_leaves_a_stale_lock(alone, demo_source_small, prefect_api, tmp_path):
    """SIGKILL while holding the work directory: the kernel drops the lock, the next build runs."""
    out = tmp_path / "wd"
    build = start(["build", str(demo_source_small), "-o", str(out), *ARGS], prefect_api)
    deadline = time.monotonic() + 300
    while build.poll() is None and time.monotonic() < deadline:  # until the lock names its holder
        try:
            if json.loads((out / ".comcoco.lock").read_text()).get("pid") == build.pid:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    assert build.poll() is None, "the build ended before it could be killed"
    os.killpg(build.pid, signal.SIGKILL)
    build.wait()
    assert json.loads((out / ".comcoco.lock").read_text())["pid"] == build.pid, "the lock file names its holder"
    again = subprocess.run([sys.executable, "-m", "comcoco", "build", str(demo_source_small), "-o", str(out), *ARGS],
                           env={**os.environ, **prefect_api}, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert manifest_files(out) == manifest_files(alone)
