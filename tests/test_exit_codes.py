"""One table of exit codes, used by every verb: each verb is walked through usage errors and refused input.

Every case must end with its documented code and exactly one `error:` line, with no traceback; the
table in docs/cli.md must equal the code's. Paths are real and hostile: missing, a file where a folder
belongs, too long, read-only, corrupt plan.json / samples.parquet / status.parquet.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from comcoco.build import build_inline
from comcoco.cli import app
from comcoco.commands._common import EXIT_CODES, EXIT_PARTIAL, EXIT_REFUSED, EXIT_USAGE
from comcoco.plan import BuildConfig, SourceSpec
from comcoco.release.builder import ReleaseOptions, build_release

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()
DEAD_URL = "http://127.0.0.1:9"  # the discard port: nothing answers there
LONG = "x" * 300  # longer than any file system's name limit (255)


def verbs() -> list[tuple[str, ...]]:
    """Every leaf command path of the app (e.g. ('review', 'push'))."""
    import typer.main

    out: list[tuple[str, ...]] = []

    def walk(cmd, prefix):
        subs = getattr(cmd, "commands", {})
        if not subs:
            out.append(tuple(prefix))
        for name, sub in sorted(subs.items()):
            walk(sub, [*prefix, name])

    walk(typer.main.get_command(app), [])
    return out


def check_one_error(result, code: int, needle: str | None = None) -> None:
    """The verb ended with ``code``, said exactly one ``error:`` line, and raised nothing uncaught."""
    assert isinstance(result.exception, SystemExit) or result.exception is None, repr(result.exception)
    assert result.exit_code == code, (result.exit_code, result.output)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.output
    if needle is not None:
        assert needle in errors[0], errors[0]


def test_docs_table_equals_the_codes():
    text = (REPO / "docs" / "cli.md").read_text()
    rows = re.findall(r"^\| (\d+) \| (\w+) \| (.+?) \|$", text, flags=re.M)
    assert {int(c): (name, meaning) for c, name, meaning in rows} == EXIT_CODES
    readme = (REPO / "README.md").read_text()
    assert "docs/cli.md" in readme and "exit" in readme.lower()


def test_every_verb_refuses_an_unknown_option_as_a_usage_error():
    all_verbs = verbs()
    assert len(all_verbs) >= 14, all_verbs
    for path in all_verbs:
        result = runner.invoke(app, [*path, "--no-such-option"])
        check_one_error(result, EXIT_USAGE, "--no-such-option")
        assert f"comcoco {' '.join(path)} --help" in result.stderr


def test_usage_errors_differ_from_refused_input(tmp_path):
    check_one_error(runner.invoke(app, ["build"]), EXIT_USAGE, "Missing argument")
    check_one_error(runner.invoke(app, ["build", str(tmp_path), "-o", str(tmp_path / "w"), "--workers", "0"]),
                    EXIT_USAGE, "--workers")
    check_one_error(runner.invoke(app, ["build", str(tmp_path), "-o", str(tmp_path / "w"), "--runner", "nope"]),
                    EXIT_USAGE, "unknown runner")
    check_one_error(runner.invoke(app, ["build", str(tmp_path), "-o", str(tmp_path / "w"), "--placement", "nope"]),
                    EXIT_USAGE)
    check_one_error(runner.invoke(app, ["nosuchverb"]), EXIT_USAGE, "nosuchverb")
    # the same verb with a well-formed command line but a source that is not there: refused, not usage
    check_one_error(runner.invoke(app, ["build", str(tmp_path / "missing"), "-o", str(tmp_path / "w")]),
                    EXIT_REFUSED, "missing")


@pytest.fixture(scope="module")
def built(demo_source_small, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exit-wd") / "wd"
    counts = build_inline(SourceSpec(root=str(demo_source_small)), out, BuildConfig(limit=6, shard_size=3, seed=0))
    assert counts["by_status"].get("ok") == 6
    return out


@pytest.fixture(scope="module")
def release(built, tmp_path_factory) -> Path:
    return build_release(built, tmp_path_factory.mktemp("exit-rel"), "1.0.0",
                         ReleaseOptions(proportions={"train": 2, "val": 1, "test": 1}))


@pytest.fixture()
def readonly_dir(tmp_path) -> Path:
    """A folder nothing can be written into: a read-only tmpfs when running as root (root ignores
    permission bits), else a folder without write permission."""
    path = tmp_path / "readonly"
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        yield path
        path.chmod(0o755)
        return
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs: {proc.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


def _copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def test_each_verb_refuses_bad_paths_in_one_line(demo_source_small, built, release, readonly_dir, tmp_path):
    """Missing paths, files where folders belong, names too long, read-only outputs: exit 3, one line."""
    src, missing, a_file = str(demo_source_small), str(tmp_path / "missing"), tmp_path / "a-file"
    a_file.write_text("not a folder")
    long_out = str(tmp_path / LONG)
    ro = str(readonly_dir / "out")
    cases: list[tuple[list[str], str | None]] = [
        (["demo-source", "-o", str(a_file)], "a file stands"),
        (["demo-source", "-o", long_out, "--images", "4"], "File name too long"),
        (["demo-source", "-o", ro, "--images", "4"], "Read-only"),
        (["inspect", missing], "missing"),
        (["inspect", str(a_file)], None),
        (["inspect", src, "--images", str(a_file)], "--images"),
        (["match", missing, "-o", str(tmp_path / "c.parquet")], "missing"),
        (["match", src, "-o", str(readonly_dir / "c.parquet"), "--no-progress"], "Read-only"),
        (["match", src, "-o", str(a_file / "c.parquet"), "--no-progress"], "a file stands where a folder"),
        (["compose", src, "--candidates", missing, "-o", str(tmp_path / "o")], "missing"),
        (["compose", src, "--candidates", str(tmp_path), "-o", str(tmp_path / "o")], "not a file"),
        (["build", missing, "-o", str(tmp_path / "w")], "missing"),
        (["build", str(a_file), "-o", str(tmp_path / "w")], "not a folder"),
        (["build", src, "-o", str(tmp_path / "w"), "--images", str(a_file)], "--images is not a folder"),
        (["build", src, "-o", str(a_file)], "a file stands"),
        (["build", src, "-o", long_out], "File name too long"),
        (["build", src, "-o", ro], "Read-only"),
        (["review", "push", missing, "--stage", "placement"], "no such work directory"),
        (["review", "pull", str(a_file), "--stage", "placement"], "not a folder"),
        (["review", "status", missing, "--offline"], "no such work directory"),
        (["release", missing, "-o", str(tmp_path / "r"), "--version", "1.0.0"], "no such work directory"),
        (["release", str(built), "-o", str(a_file), "--version", "1.0.0"], "a file stands"),
        (["release", str(tmp_path), "-o", str(tmp_path / "r"), "--version", "1.0.0"], "plan.json"),
        (["release", "diff", missing, str(release)], "not found"),
        (["release", "pack", missing], "not found"),
        (["release", "pack", str(release)], "packed when it was built"),
        (["download", missing, "-o", str(tmp_path / "d")], None),
        (["verify", missing], "not found"),
        (["validate", missing, "--no-write"], "not a comcoco release"),
        (["sahm", "train", missing, "-o", str(tmp_path / "run"), "--steps", "1"], None),
        (["sahm", "eval", missing], None),
        (["audit", missing], "not a comcoco release"),
        (["review", "users", "list", "--url", DEAD_URL], "unreachable"),
        (["review", "users", "add", "a@b.c", "--password", "pw", "--url", DEAD_URL], "unreachable"),
        (["review", "users", "remove", "a@b.c", "--url", DEAD_URL], "unreachable"),
    ]
    if torch.cuda.device_count() <= 99:  # the one verb without paths: a device this machine does not have
        cases.append((["sahm", "preflight", "--device", "cuda:99"], "cuda:99"))
    leaves = verbs()
    walked = set()
    for argv, needle in cases:
        result = runner.invoke(app, argv)
        try:
            check_one_error(result, EXIT_REFUSED, needle)
        except AssertionError as exc:
            raise AssertionError(f"{argv}: {exc}") from None
        verb = max((v for v in leaves if tuple(argv[:len(v)]) == v), key=len, default=None)
        if verb is None and argv[0] == "release":
            verb = ("release", "create")  # `release WORKDIR` is short for `release create WORKDIR`
        walked.add(verb)
    assert set(leaves) <= walked, f"verbs never walked: {sorted(set(leaves) - walked)}"


def test_usage_errors_inside_verbs(release, built, tmp_path):
    cases = [
        (["demo-source", "-o", str(tmp_path / "d"), "--images", "2"], "at least 4"),
        (["release", str(built), "-o", str(tmp_path / "r"), "--version", "1.0"], "X.Y.Z"),
        (["release", str(built), "-o", str(tmp_path / "r"), "--version", "1.0.0", "--split", "train"], "--split"),
        (["release", str(built), "-o", str(tmp_path / "r"), "--version", "1.0.0", "--split", "dev=1"], "dev"),
        (["release", str(built), "-o", str(tmp_path / "r"), "--version", "1.0.0", "--unreviewed", "maybe"],
         "--unreviewed"),
        (["review", "push", str(built), "--stage", "nope"], "--stage"),
        (["sahm", "train", str(release), "-o", str(tmp_path / "run"), "--config", "huge"], "--config"),
        (["sahm", "eval", str(tmp_path), "--split", "dev"], "--split"),
        (["validate", str(release), "--config", "huge"], "--config"),
        (["match", str(release), "-o", str(tmp_path / "c.parquet"), "--similarity", "mean"], "--similarity"),
        (["compose", str(release), "--candidates", str(tmp_path), "-o", str(tmp_path / "o"), "--harmonize", "x"],
         None),
    ]
    for argv, needle in cases:
        result = runner.invoke(app, argv)
        try:
            check_one_error(result, EXIT_USAGE, needle)
        except AssertionError as exc:
            raise AssertionError(f"{argv}: {exc}") from None


def test_corrupt_plan_and_tables_are_named(demo_source_small, built, tmp_path):
    wd = _copy(built, tmp_path / "wd")
    (wd / "plan.json").write_text("{not json")
    check_one_error(runner.invoke(app, ["build", str(demo_source_small), "-o", str(wd), "--limit", "6",
                                        "--shard-size", "3"]), EXIT_REFUSED, f"{wd / 'plan.json'}")
    check_one_error(runner.invoke(app, ["release", str(wd), "-o", str(tmp_path / "r"), "--version", "1.0.0"]),
                    EXIT_REFUSED, f"{wd / 'plan.json'}")
    check_one_error(runner.invoke(app, ["review", "status", str(wd), "--offline"]), EXIT_REFUSED, "plan.json")


def test_verify_mismatch_is_refused_with_the_files_listed(release, tmp_path):
    copy = _copy(release, tmp_path / "rel")
    victim = sorted((copy / "masks").iterdir())[0]
    victim.write_bytes(victim.read_bytes() + b"x")
    result = runner.invoke(app, ["verify", str(copy), "--no-progress"])
    check_one_error(result, EXIT_REFUSED, "1 problem")
    assert f"masks/{victim.name}" in result.stderr


def comcoco(args: list[str], env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "comcoco", *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=timeout)


def one_error_line(proc: subprocess.CompletedProcess, code: int, needle: str) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0], proc.stderr
    return errors[0]


def test_corrupt_samples_and_status_inside_the_flows(demo_source_small, built, prefect_api, tmp_path):
    """Failures met inside a Prefect run reach the user as the same one line (named by path)."""
    wd = _copy(built, tmp_path / "wd")
    samples = wd / "shards" / "00001" / "samples.parquet"
    samples.write_bytes(b"PAR1 not really")
    # the marker made to agree (as a hand-edited shard would): otherwise the build finds the file damaged
    # and makes the shard again (tests/test_hostile_integrity.py); here reading it inside the flow must fail
    import hashlib
    import json

    marker = wd / "shards" / "00001" / "_SUCCESS"
    record = json.loads(marker.read_text())
    record["files"]["samples.parquet"] = {"sha256": hashlib.sha256(samples.read_bytes()).hexdigest(),
                                          "size": samples.stat().st_size}
    marker.write_text(json.dumps(record))
    proc = comcoco(["build", str(demo_source_small), "-o", str(wd), "--limit", "6", "--shard-size", "3", "--seed", "0",
                    "--no-progress"], prefect_api)
    one_error_line(proc, EXIT_REFUSED, str(samples))
    wd2 = _copy(built, tmp_path / "wd2")
    (wd2 / "status.parquet").write_bytes(b"garbage")
    proc = comcoco(["release", str(wd2), "-o", str(tmp_path / "rel"), "--version", "1.0.0", "--no-progress"],
                   prefect_api)
    one_error_line(proc, EXIT_REFUSED, str(wd2 / "status.parquet"))
    assert not list((tmp_path / "rel").glob("comcoco-*")), "a failed release left a folder behind"


def test_a_crashed_shard_is_a_partial_result_and_a_rerun_resumes(demo_source_small, built, prefect_api, tmp_path):
    wd = _copy(built, tmp_path / "wd")
    shutil.rmtree(wd / "shards" / "00001")
    (wd / "shards" / "00001").write_text("a file where the shard's folder belongs")
    args = ["build", str(demo_source_small), "-o", str(wd), "--limit", "6", "--shard-size", "3", "--seed", "0",
            "--no-progress"]
    line = one_error_line(comcoco(args, prefect_api), EXIT_PARTIAL, "3 of 6 samples not built")
    assert "run the same command again" in line
    import pyarrow.parquet as pq

    status = pq.read_table(wd / "status.parquet").to_pylist()
    assert sorted(r["status"] for r in status) == ["not_built"] * 3 + ["ok"] * 3
    (wd / "shards" / "00001").unlink()
    proc = comcoco(args, prefect_api)
    assert proc.returncode == 0, proc.stderr
    assert "6 of 6 samples ok" in proc.stdout


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {proc.stderr.decode().strip()}")


@pytest.mark.skipif(os.geteuid() != 0, reason="a small tmpfs for the full-disk case needs root")
def test_a_full_disk_gives_one_line_and_a_resumable_work_directory(demo_source_small, built, prefect_api, tmp_path):
    """The work directory sits on a tmpfs too small for all shards: exit 4, one line, then resume."""
    disk = tmp_path / "disk"
    per_shard = sum(p.stat().st_size for p in (built / "shards" / "00000").rglob("*") if p.is_file())
    other = sum(p.stat().st_size for p in built.iterdir() if p.is_file())
    _mount_tmpfs(disk, str(other + per_shard * 3 // 2 + 64 * 1024))
    try:
        wd = disk / "wd"
        args = ["build", str(demo_source_small), "-o", str(wd), "--limit", "6", "--shard-size", "3", "--seed", "0",
                "--no-progress"]
        line = one_error_line(comcoco(args, prefect_api), EXIT_PARTIAL, "space left on device").lower()
        assert "run the same command again" in line, line
        assert (wd / "plan.json").is_file() and not list((wd / "shards").glob(".*")), "leftovers remain"
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        proc = comcoco(args, prefect_api)
        assert proc.returncode == 0, proc.stderr
        assert "6 of 6 samples ok" in proc.stdout
        import json

        files = json.loads((wd / "manifest.json").read_text())["files"]
        assert files == json.loads((built / "manifest.json").read_text())["files"]
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
