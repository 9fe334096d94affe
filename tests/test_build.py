"""The build flow end to end, as a maintainer runs it: `comcoco build` in a subprocess.

Runs record into the session's real Prefect server. Proves that a straight run, a Dask run and a run
killed with SIGKILL then resumed give identical manifests; that bad input is reported, not fatal;
that resume refuses another configuration; and that --retry-failed redoes only failed samples.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

BUILD_ARGS = ["--limit", "24", "--shard-size", "4", "--seed", "3", "--no-progress"]


def comcoco(args: list[str], env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "comcoco", *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=timeout)


def manifest_files(workdir: Path) -> dict[str, str]:
    return json.loads((workdir / "manifest.json").read_text())["files"]


@pytest.fixture(scope="module")
def straight(demo_source_small, prefect_api, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("build") / "straight"
    proc = comcoco(["build", str(demo_source_small), "-o", str(out), *BUILD_ARGS], prefect_api)
    assert proc.returncode == 0, proc.stderr
    assert "24 of 24 samples ok" in proc.stdout, proc.stdout
    (out.parent / "stdout.txt").write_text(proc.stdout)
    return out


def test_summary_counts_the_decoys(straight):
    counts = json.loads((straight / "manifest.json").read_text())["counts"]["decoys"]
    rows = pq.read_table(straight / "status.parquet").to_pylist()
    per_composite = {r["composite_id"]: r for r in rows}.values()
    assert counts["pasted"] == sum(len(r["decoy_ann_ids"]) for r in per_composite) > 0
    assert counts["skipped"] == sum(len(r["decoys_skipped"]) for r in per_composite)
    line = next(x for x in (straight.parent / "stdout.txt").read_text().splitlines() if x.startswith("decoys: "))
    assert line.startswith(f"decoys: {counts['pasted']} pasted in {counts['composites']} composites")


def test_work_directory_layout(straight):
    files = manifest_files(straight)
    for name in ("plan.parquet", "plan.json", "candidates.parquet", "status.parquet", "source-report.json"):
        assert name in files
    shards = sorted(p.name for p in (straight / "shards").iterdir())
    assert shards == [f"{i:05d}" for i in range(len(shards))] and len(shards) >= 6
    for s in shards:
        assert (straight / "shards" / s / "_SUCCESS").is_file()
        assert f"shards/{s}/samples.parquet" in files
    assert not [f for f in files if f.endswith("_SUCCESS")]
    status = pq.read_table(straight / "status.parquet").to_pylist()
    assert len(status) == 24 and all(r["status"] == "ok" for r in status)
    for r in status:  # every path in the status table is a file listed in the manifest
        for key in ("composite", "ground_truth", "mask"):
            assert r[key] in files
    record = json.loads((straight / "build.json").read_text())
    assert set(record["seconds"]) == {"validate", "match", "plan", "compose", "collect"}
    assert record["runner"] == "local (1 thread)" and record["workers"] == 1 and record["code_version"]
    assert record["outcome"] == {"verdict": "ok", "message": "24 of 24 samples ok", "next_step": None}
    assert "build.json" not in files and "manifest.json" not in files


def test_rerun_skips_everything(straight, demo_source_small, prefect_api):
    before = manifest_files(straight)
    proc = comcoco(["build", str(demo_source_small), "-o", str(straight), *BUILD_ARGS], prefect_api)
    assert proc.returncode == 0, proc.stderr
    record = json.loads((straight / "build.json").read_text())
    assert record["shards_run"] == 0 and record["shards_skipped"] >= 6
    assert manifest_files(straight) == before


def test_dask_runner_gives_identical_files(straight, demo_source_small, prefect_api, tmp_path):
    out = tmp_path / "dask"
    proc = comcoco(["build", str(demo_source_small), "-o", str(out), *BUILD_ARGS,
                    "--runner", "dask", "--workers", "2"], prefect_api)
    assert proc.returncode == 0, proc.stderr
    record = json.loads((out / "build.json").read_text())
    assert record["runner"] == "dask (local cluster, 2 processes)" and record["workers"] == 2
    assert record["scheduler"].startswith("tcp://127.0.0.1:") and len(record["worker_addresses"]) == 2
    assert manifest_files(out) == manifest_files(straight)


def test_sigkill_then_resume_gives_identical_files(straight, demo_source_small, prefect_api, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "comcoco", "build", str(demo_source_small), "-o", str(out), *BUILD_ARGS]
    proc = subprocess.Popen(cmd, env={**os.environ, **prefect_api}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    total = len(list((straight / "shards").iterdir()))
    deadline = time.monotonic() + 300
    done = 0
    while time.monotonic() < deadline and proc.poll() is None:
        done = len(list(out.glob("shards/*/_SUCCESS")))
        if done >= 2:
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 2 <= done < total, f"kill landed at {done} of {total} shards"
    assert not (out / "manifest.json").exists()
    resumed = comcoco(["build", str(demo_source_small), "-o", str(out), *BUILD_ARGS], prefect_api)
    assert resumed.returncode == 0, resumed.stderr
    record = json.loads((out / "build.json").read_text())
    assert record["shards_skipped"] >= done and record["shards_run"] <= total - done
    assert not list((out / "shards").glob(".*")), "leftovers of the killed run remain"
    assert manifest_files(out) == manifest_files(straight)


def test_resume_with_other_config_is_refused(straight, demo_source_small, prefect_api):
    proc = comcoco(["build", str(demo_source_small), "-o", str(straight), "--limit", "24", "--shard-size", "5",
                    "--seed", "3", "--harmonize", "reinhard"], prefect_api)
    assert proc.returncode == 3
    assert "shard_size: 4 (planned) vs 5 (now)" in proc.stderr
    assert "compose.harmonize: 'fit' (planned) vs 'reinhard' (now)" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unreadable_source_is_refused_in_one_line(tmp_path, prefect_api):
    (tmp_path / "src" / "refcoco+").mkdir(parents=True)
    (tmp_path / "src" / "refcoco+" / "refs(unc).p").write_bytes(b"not a pickle")
    (tmp_path / "src" / "refcoco+" / "instances.json").write_text('{"images": [], "annotations": [], "categories": []}')
    proc = comcoco(["build", str(tmp_path / "src"), "-o", str(tmp_path / "wd")], prefect_api)
    assert proc.returncode == 3
    assert proc.stderr.startswith("error: ") and "refs(unc).p" in proc.stderr
    assert "Traceback" not in proc.stderr


def _damage(source: Path, scratch: Path) -> dict[str, int]:
    """Truncate one image, delete another, and point one ref at an annotation that does not exist.

    The images are chosen among those the build will use (its matching, run here first).
    """
    from comcoco.build import match_stage, prepare_workdir
    from comcoco.matching.scene import read_candidates
    from comcoco.plan import BuildConfig, SourceSpec
    from comcoco.sources.refer import load_source

    spec, cfg = SourceSpec(root=str(source)), BuildConfig(seed=1)
    prepare_workdir(scratch, cfg, spec)
    cands = sorted(read_candidates(match_stage(spec, scratch, cfg)), key=lambda c: (c.ref_id, c.rank))
    top = [c for c in cands if c.rank == 1]
    truncated = top[0].fg_image_id
    missing = next(c.fg_image_id for c in top if c.fg_image_id != truncated)
    src = load_source(source)
    img_dir = Path(src.IMAGE_DIR)
    p = img_dir / src.image(truncated).file_name
    p.write_bytes(p.read_bytes()[:600])
    (img_dir / src.image(missing).file_name).unlink()
    used = {c.ref_id for c in top if c.fg_image_id not in (truncated, missing)
            and c.bg_image_id not in (truncated, missing)}
    refs_file = source / "refcoco+" / "refs(unc).p"
    raw = pickle.loads(refs_file.read_bytes())
    dangling_ref = next(r for r in raw if r["ref_id"] in used)
    dangling_ref["ann_id"] = 999_999_999
    refs_file.write_bytes(pickle.dumps(raw, protocol=2))
    return {"truncated": truncated, "missing": missing, "dangling_ref": dangling_ref["ref_id"]}


def test_bad_input_is_reported_and_retry_failed_redoes_only_failures(demo_source_copy, prefect_api, tmp_path):
    original = {p: p.read_bytes() for p in (demo_source_copy / "images").rglob("*.jpg")}
    damage = _damage(demo_source_copy, tmp_path / "scratch")
    out = tmp_path / "wd"
    args = ["build", str(demo_source_copy), "-o", str(out), "--shard-size", "8", "--seed", "1", "--no-progress"]
    proc = comcoco(args, prefect_api)
    assert proc.returncode == 0, proc.stderr
    assert "failed:" in proc.stdout and "bad_source" in proc.stdout
    status = pq.read_table(out / "status.parquet").to_pylist()
    bad = [r for r in status if r["status"] != "ok"]
    assert bad and len(bad) < len(status)
    reasons = " | ".join(r["reason"] for r in bad)
    assert f"annotation 999999999 of ref {damage['dangling_ref']}" in reasons
    assert any(r["fg_image_id"] == damage["missing"] or r["bg_image_id"] == damage["missing"] for r in bad)
    assert any(r["fg_image_id"] == damage["truncated"] or r["bg_image_id"] == damage["truncated"] for r in bad)
    for r in bad:  # provenance is kept for failures too
        assert r["fg_ref_id"] is not None and r["bg_image_id"] is not None and r["reason"]

    # Repair the images (not the dangling ref) and retry only what failed.
    for p, data in original.items():
        p.write_bytes(data)
    before = manifest_files(out)
    ok_before = {r["sample_id"]: r for r in status if r["status"] == "ok"}
    retry = comcoco([*args, "--retry-failed"], prefect_api)
    assert retry.returncode == 0, retry.stderr
    after_status = {r["sample_id"]: r for r in pq.read_table(out / "status.parquet").to_pylist()}
    still_bad = [r for r in after_status.values() if r["status"] != "ok"]
    assert len(still_bad) == 1 and "999999999" in still_bad[0]["reason"]
    after = manifest_files(out)
    redone = {r["composite_id"] for r in bad}  # a composite holding a failure is recomposed whole
    untouched = {sid: r for sid, r in ok_before.items() if r["composite_id"] not in redone}
    assert untouched
    for sid, r in untouched.items():  # samples of composites that were fine keep their exact files
        for key in ("composite", "ground_truth", "mask"):
            assert after_status[sid][key] == r[key]
            assert after[r[key]] == before[r[key]]

