"""Integrity records that cannot lie: bit rot, a changed source, a damaged work directory, shared inodes.

Each case damages real files the way a disk, an editor or an unlucky maintainer would, then runs the
real command: resume and `--retry-failed` check finished shards against the hashes recorded when they
were made (not against what is on disk now) and make a damaged shard again; a source changed after
planning refuses the resume, naming the file; `release` refuses a work directory whose files differ
from its manifest.json; a published release shares no inode with the work directory. A disk that
fills up mid-build is `tests/test_exit_codes.py::test_a_full_disk_gives_one_line_and_a_resumable_work_directory`
(resumed in place); here the same work directory is moved to a roomy disk and resumed there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from comcoco.build import build_inline
from comcoco.commands._common import EXIT_REFUSED
from comcoco.plan import BuildConfig, PlanMismatchError, SourceSpec
from comcoco.release.builder import ReleaseOptions, build_release
from comcoco.release.manifest import verify_release
from comcoco.release.options import ReleaseError
from comcoco.workdir import Workdir

CONFIG = BuildConfig(limit=6, shard_size=3, seed=0)
CLI_ARGS = ["--limit", "6", "--shard-size", "3", "--seed", "0", "--no-progress"]
OPTIONS = ReleaseOptions(proportions={"train": 2, "val": 1, "test": 1}, audit=False)


def comcoco(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "comcoco", *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=600)


def manifest_files(workdir: Path) -> dict[str, str]:
    return json.loads((workdir / "manifest.json").read_text())["files"]


def flip_byte(path: Path, at: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if at is None else at
    data[i] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def source(demo_source_small, tmp_path_factory) -> Path:
    """A private copy of the demo source (the changed-source test edits it, then puts it back)."""
    return Path(shutil.copytree(demo_source_small, tmp_path_factory.mktemp("integrity") / "source"))


@pytest.fixture(scope="module")
def built(source, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("integrity-wd") / "wd"
    counts = build_inline(SourceSpec(root=str(source)), out, CONFIG)
    assert counts["by_status"] == {"ok": 6}
    return out


def copy_wd(built: Path, dest: Path) -> Path:
    shutil.copytree(built, dest, symlinks=True)
    return dest


def shard_file(wd: Path, shard: str, folder: str) -> Path:
    return sorted((wd / "shards" / shard / folder).iterdir())[0]


# --- bit rot ---------------------------------------------------------------------------------------


def test_bit_rot_is_reported_and_the_shard_made_again(built, source, prefect_api, tmp_path):
    """A flipped byte, a lost file and a mangled marker: `build --retry-failed` names each damaged shard,
    makes it again, and the work directory ends byte for byte as it was built."""
    wd = copy_wd(built, tmp_path / "wd")
    rotten = shard_file(wd, "00001", "images")
    flip_byte(rotten)
    lost = shard_file(wd, "00000", "gt")
    lost.unlink()
    assert Workdir(wd).check_shard(1) == [f"images/{rotten.name}: content differs from the recorded sha256"]
    assert Workdir(wd).check_shard(0) == [f"gt/{lost.name}: missing"]
    proc = comcoco(["build", str(source), "-o", str(wd), *CLI_ARGS, "--retry-failed"], prefect_api)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"shard 00001 was made again: its files differed from the hashes recorded when it was made " \
           f"(images/{rotten.name}: content differs from the recorded sha256)" in proc.stdout, proc.stdout
    assert "shard 00000 was made again" in proc.stdout and f"gt/{lost.name}: missing" in proc.stdout
    assert rotten.read_bytes() == (built / rotten.relative_to(wd)).read_bytes()
    assert lost.read_bytes() == (built / lost.relative_to(wd)).read_bytes()
    assert manifest_files(wd) == manifest_files(built)
    assert not list((wd / "shards").glob(".*")), "the damaged shard's folder was left behind"


def test_a_plain_resume_checks_hashes_too_and_a_garbled_marker_is_damage(built, source, tmp_path):
    wd = copy_wd(built, tmp_path / "wd")
    samples = wd / "shards" / "00001" / "samples.parquet"
    flip_byte(samples, at=len(samples.read_bytes()) - 20)  # inside the footer: still the same size
    (wd / "shards" / "00000" / "_SUCCESS").write_text("{not json")
    build_inline(SourceSpec(root=str(source)), wd, CONFIG)
    record = json.loads((wd / "build.json").read_text())
    assert sorted(record["shards_redone"]) == ["0", "1"], record["shards_redone"]
    assert "unreadable shard marker" in record["shards_redone"]["0"]
    assert "samples.parquet: content differs" in record["shards_redone"]["1"]
    assert record["shards_run"] == 2
    assert manifest_files(wd) == manifest_files(built)
    assert all(Workdir(wd).check_shard(s) == [] for s in Workdir(wd).complete_shards())


def test_an_edit_that_keeps_size_and_mtime_is_still_found(built, source, tmp_path):
    """The check compares content hashes, not sizes or times: an edit that restores both is found."""
    wd = copy_wd(built, tmp_path / "wd")
    mask = shard_file(wd, "00001", "masks")
    st = mask.stat()
    flip_byte(mask)
    os.utime(mask, ns=(st.st_atime_ns, st.st_mtime_ns))
    build_inline(SourceSpec(root=str(source)), wd, CONFIG)
    assert list(json.loads((wd / "build.json").read_text())["shards_redone"]) == ["1"]
    assert mask.read_bytes() == (built / mask.relative_to(wd)).read_bytes()


# --- a source that changed since planning -----------------------------------------------------------


def test_a_source_changed_after_planning_refuses_the_resume_naming_the_file(built, source, prefect_api, tmp_path):
    wd = copy_wd(built, tmp_path / "wd")
    recorded = json.loads((wd / "plan.json").read_text())["source_fingerprint"]
    image_name = sorted(recorded["images"])[0]
    image = source / "images" / "mscoco" / "images" / "train2014" / image_name
    original = image.read_bytes()
    st = image.stat()
    spec = SourceSpec(root=str(source))
    try:
        os.utime(image)  # touched, content unchanged: not a change
        build_inline(spec, wd, CONFIG)
        flip_byte(image)  # same size, mtime put back: only the hash can tell
        os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns))
        with pytest.raises(PlanMismatchError, match="the source changed") as info:
            build_inline(spec, wd, CONFIG)
        assert image_name in str(info.value) and "1 file(s)" in str(info.value)
        proc = comcoco(["build", str(source), "-o", str(wd), *CLI_ARGS], prefect_api)
        assert proc.returncode == EXIT_REFUSED, proc.stderr[-3000:]
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and image_name in errors[0] and "Traceback" not in proc.stderr, proc.stderr
        with pytest.raises(PlanMismatchError, match=image_name):  # its composites are ok: a retry would not
            build_inline(spec, wd, CONFIG, retry_failed=True)     # redo them, so a retry is refused too
    finally:
        image.write_bytes(original)
    instances = source / "refcoco+" / "instances.json"
    text = instances.read_text()
    try:
        instances.write_text(text + "\n")
        with pytest.raises(PlanMismatchError, match="instances.json"):
            build_inline(spec, wd, CONFIG)
    finally:
        instances.write_text(text)
    build_inline(spec, wd, CONFIG)  # restored: the resume goes through, and nothing was redone
    assert json.loads((wd / "build.json").read_text())["shards_run"] == 0
    assert manifest_files(wd) == manifest_files(built)


# --- releases -----------------------------------------------------------------------------------------


def test_release_refuses_a_work_directory_that_differs_from_its_manifest(built, source, tmp_path):
    wd = copy_wd(built, tmp_path / "wd")
    composite = shard_file(wd, "00001", "images")
    flip_byte(composite)
    releases = tmp_path / "releases"
    with pytest.raises(ReleaseError, match="does not match its manifest.json") as info:
        build_release(wd, releases, "1.0.0", OPTIONS)
    assert f"shards/00001/images/{composite.name}: content differs from manifest.json" in str(info.value)
    assert not releases.exists() or not list(releases.iterdir()), "a refused release left something behind"
    status = wd / "status.parquet"
    flip_byte(composite)  # the composite back as built; now the status table is edited (still readable)
    table = pq.read_table(status)
    reasons = table.column("reason").to_pylist()
    reasons[0] = "edited after the build"
    pq.write_table(table.set_column(table.schema.get_field_index("reason"), "reason", pa.array(reasons)), status)
    with pytest.raises(ReleaseError, match="status.parquet: content differs"):
        build_release(wd, releases, "1.0.0", OPTIONS)
    shutil.copy2(built / "status.parquet", status)
    build_release(wd, releases, "1.0.0", OPTIONS)  # whole again: published
    assert verify_release(releases / "comcoco-1.0.0") == []


def test_a_release_shares_no_inode_with_the_work_directory(built, tmp_path):
    wd = copy_wd(built, tmp_path / "wd")
    release = build_release(wd, tmp_path / "releases", "1.0.0", OPTIONS)
    wd_inodes = {(p.stat().st_dev, p.stat().st_ino) for p in wd.rglob("*") if p.is_file()}
    released = [p for p in release.rglob("*") if p.is_file()]
    assert len(released) > 20
    names: dict[tuple[int, int], list[Path]] = {}
    for p in released:
        st = p.stat()
        assert (st.st_dev, st.st_ino) not in wd_inodes, p
        names.setdefault((st.st_dev, st.st_ino), []).append(p)
    for ps in names.values():  # every name of a released file is in the release: ComCOCO+ Parquet files
        assert ps[0].stat().st_nlink == len(ps), ps  # with ComCOCO's rows are ComCOCO's file, nothing else
        if len(ps) > 1:
            assert sorted(p.relative_to(release).parts[:2] for p in ps) == [("parquet", "ComCOCO"),
                                                                           ("parquet", "ComCOCO+")], ps
    # edit every composite and ground truth of the work directory in place: the release stays as published
    for p in sorted((wd / "shards").glob("*/images/*")) + sorted((wd / "shards").glob("*/gt/*")):
        with open(p, "r+b") as fh:
            fh.seek(100)
            fh.write(b"edited in the work directory")
    assert verify_release(release) == []


# --- a full disk, then the work directory moved to a roomy one ----------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="a small tmpfs for the full-disk case needs root")
def test_a_work_directory_left_by_a_full_disk_resumes_elsewhere(built, source, tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    per_shard = sum(p.stat().st_size for p in (built / "shards" / "00000").rglob("*") if p.is_file())
    other = sum(p.stat().st_size for p in built.iterdir() if p.is_file())
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={other + per_shard * 3 // 2 + 64 * 1024}", "tmpfs",
                           str(disk)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {proc.stderr.decode().strip()}")
    try:
        wd = disk / "wd"
        counts = build_inline(SourceSpec(root=str(source)), wd, CONFIG)
        assert counts["by_status"].get("not_built", 0) >= 3, counts  # the disk filled up
        record = json.loads((wd / "build.json").read_text())
        assert any("No space left on device" in e for e in record["shard_errors"].values()), record["shard_errors"]
        moved = Path(shutil.copytree(wd, tmp_path / "roomy" / "wd", symlinks=True))
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
    counts = build_inline(SourceSpec(root=str(source)), moved, CONFIG)
    assert counts["by_status"] == {"ok": 6}
    assert manifest_files(moved) == manifest_files(built)


def test_the_reliability_table_names_only_tests_that_exist():
    """docs/reliability.md cites tests by file::name; a renamed or removed test must not stay cited."""
    import ast
    import re

    repo = Path(__file__).resolve().parents[1]
    text = (repo / "docs" / "reliability.md").read_text()
    cited: list[tuple[str, str]] = []
    for row in text.splitlines():
        current = None
        for m in re.finditer(r"`(tests/[\w/]+\.py)?::(\w+)`", row):
            current = m.group(1) or current
            assert current, f"a test cited without its file: {row}"
            cited.append((current, m.group(2)))
    assert len(cited) >= 40
    for file, name in cited:
        tree = ast.parse((repo / file).read_text())
        names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        assert name in names, f"docs/reliability.md cites {file}::{name}, which does not exist"
    readme = (repo / "README.md").read_text()
    assert "docs/reliability.md" in readme
