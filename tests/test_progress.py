"""Progress output: a bar on a terminal, at most one line per 10 % in a log (a real non-TTY run included)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

from comcoco.build import build_inline
from comcoco.plan import BuildConfig, SourceSpec
from comcoco.progress import Progress, progress_bar, track
from comcoco.release.builder import ReleaseOptions, build_release

REPO = Path(__file__).resolve().parents[1]


def test_a_log_gets_a_line_per_tenth_however_many_updates():
    out = io.StringIO()
    with Progress("hashing", 1003, unit="file", stream=out, tty=False) as p:
        for _ in range(1003):
            p.advance()
    lines = out.getvalue().splitlines()
    assert len(lines) == 10 and "\r" not in out.getvalue()
    assert lines[0] == "hashing: 101/1003 files (10 %)" and lines[-1] == "hashing: 1003/1003 files (100 %)"


def test_a_jump_prints_one_line_and_a_resumed_count_starts_where_it_was():
    out = io.StringIO()
    with Progress("sahm train", 300, unit="step", stream=out, tty=False, initial=150) as p:
        p.advance(150)  # 50 % → 100 % at once: one line, not five
    assert out.getvalue().splitlines() == ["sahm train: 300/300 steps (100 %)"]


def test_bytes_are_scaled_and_a_terminal_gets_a_bar():
    out = io.StringIO()
    with Progress("downloading", 10 * 2**20, unit="B", stream=out, tty=False, scale=True) as p:
        p.advance(10 * 2**20)
    assert out.getvalue() == "downloading: 10.0M/10.0M B (100 %)\n"
    term = io.StringIO()
    with Progress("packing", 50, unit="file", stream=term, tty=True) as p:
        for _ in range(50):
            p.advance()
        p.set_postfix(loss="0.1")
    assert "\r" in term.getvalue() and "packing" in term.getvalue()


def test_off_means_silent():
    out = io.StringIO()
    with Progress("matching", 100, stream=out, tty=False, enabled=False) as p:
        p.advance(100)
    assert out.getvalue() == "" and p.done == 100
    assert progress_bar(10, "x", enabled=False) is None
    assert list(track([3, 1, 2], "x", enabled=False)) == [3, 1, 2]


def test_a_real_verify_into_a_pipe_writes_at_most_ten_lines_per_step(demo_source_small, tmp_path):
    """``comcoco verify`` (progress on by default) with stderr a pipe, as in CI: no carriage returns."""
    wd = tmp_path / "wd"
    build_inline(SourceSpec(root=str(demo_source_small)), wd, BuildConfig(limit=6, shard_size=3, seed=0))
    release = build_release(wd, tmp_path / "rel", "1.0.0", ReleaseOptions(proportions={"train": 2, "val": 1, "test": 1}))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "comcoco", "verify", str(release)], capture_output=True, text=True,
                          env=env, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("verifying:")]
    assert 1 <= len(lines) <= 10 and lines[-1].endswith("(100 %)")
    n_files = int(lines[-1].split("/")[1].split()[0])
    assert n_files > 10  # more updates than lines: the log was thinned, not just short
