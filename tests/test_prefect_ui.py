"""What a maintainer sees in Prefect, read back from the session's real server through its API.

A build with failed samples: the run ends "Completed with failures" (Failed under --strict, and the
CLI exits 4), one task per shard named after it whose log says which samples it made and which failed
and why, a Markdown summary and a table of failed samples as artifacts. build.json names the runner
that really ran: a two-worker Dask cluster says two workers and its scheduler's address.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest

ARGS = ["--limit", "24", "--shard-size", "4", "--seed", "3", "--no-progress"]


def comcoco(args: list[str], env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "comcoco", *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=timeout)


class Api:
    """The few reads of Prefect's REST API these tests need."""

    def __init__(self, url: str):
        self.client = httpx.Client(base_url=url, timeout=30)

    def flow_run(self, flow: str, **parameters: str) -> dict:
        runs = self.client.post("/flow_runs/filter", json={"flows": {"name": {"any_": [flow]}},
                                                           "sort": "START_TIME_DESC", "limit": 50}).json()
        mine = [r for r in runs if all(r["parameters"].get(k) == v for k, v in parameters.items())]
        assert mine, f"no {flow} run with {parameters}"
        return mine[0]

    def task_runs(self, run: dict) -> list[dict]:
        return self.client.post("/task_runs/filter", json={"flow_runs": {"id": {"any_": [run["id"]]}},
                                                           "limit": 200}).json()

    def logs(self, run: dict) -> list[dict]:
        return self.client.post("/logs/filter", json={"logs": {"flow_run_id": {"any_": [run["id"]]}},
                                                      "sort": "TIMESTAMP_ASC", "limit": 200}).json()

    def artifacts(self, run: dict) -> dict[str, dict]:
        found = self.client.post("/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run["id"]]}}})
        return {a["key"]: a for a in found.json()}


@pytest.fixture(scope="module")
def api(prefect_api) -> Api:
    return Api(prefect_api["PREFECT_API_URL"])


def damaged_source(source: Path, dest: Path) -> tuple[Path, int]:
    """A copy of ``source`` without one background image the build plans to use (found by planning)."""
    from comcoco.build import match_stage, plan_stage, prepare_workdir
    from comcoco.plan import BuildConfig, SourceSpec
    from comcoco.workdir import Workdir

    copy = dest / "source"
    shutil.copytree(source, copy)
    scratch = dest / "scratch"
    spec, cfg = SourceSpec(root=str(copy)), BuildConfig(limit=24, shard_size=4, seed=3)
    prepare_workdir(scratch, cfg, spec)
    match_stage(spec, scratch, cfg)
    plan_stage(spec, scratch, cfg)
    rows = Workdir(scratch).plan_rows()
    victim = rows[len(rows) // 2].bg_image_id
    image = next((copy / "images").rglob(f"*{victim:012d}.jpg"))
    image.unlink()
    return copy, victim


def wait_for_logs(api: Api, run: dict, needle: str, tries: int = 40) -> list[dict]:
    """Logs reach the API in batches: wait until a line with ``needle`` has arrived."""
    import time

    for _ in range(tries):
        logs = api.logs(run)
        if any(needle in entry["message"] for entry in logs):
            return logs
        time.sleep(0.5)
    raise AssertionError(f"no log line with {needle!r}: {[e['message'] for e in api.logs(run)]}")


def test_a_build_with_failed_samples_is_not_plain_green(demo_source_small, prefect_api, api, tmp_path):
    source, victim = damaged_source(demo_source_small, tmp_path)
    wd = tmp_path / "wd"
    proc = comcoco(["build", str(source), "-o", str(wd), *ARGS, "--workers", "2"], prefect_api)
    assert proc.returncode == 0, proc.stderr
    assert "next: fix what the reasons name, then run the same command with --retry-failed" in proc.stdout
    assert proc.stderr == "", proc.stderr  # Prefect's own console output stays quiet
    status = pq.read_table(wd / "status.parquet").to_pylist()
    failed = [r for r in status if r["status"] != "ok"]
    assert failed and all(victim in (r["bg_image_id"], r["fg_image_id"]) for r in failed)
    by_status = {k: sum(1 for r in failed if r["status"] == k) for k in sorted({r["status"] for r in failed})}

    run = api.flow_run("comcoco-build", workdir=str(wd.resolve()))
    assert run["state"]["type"] == "COMPLETED" and run["state"]["name"] == "Completed with failures"
    assert f"{len(failed)} of 24 samples failed" in run["state"]["message"]

    tasks = {t["name"]: t for t in api.task_runs(run)}
    shards = sorted({r["shard"] for r in status})
    assert {f"shard {s:05d}" for s in shards} | {"validate-source", "match", "plan", "collect-status"} == set(tasks)
    bad_shards = {r["shard"] for r in failed}
    for s in shards:
        state = tasks[f"shard {s:05d}"]["state"]
        assert state["name"] == ("Completed with failures" if s in bad_shards else "Completed"), (s, state)

    logs = wait_for_logs(api, run, "build: ")
    by_task = {t["id"]: name for name, t in tasks.items()}
    for s in shards:
        mine = [e["message"] for e in logs if by_task.get(e["task_run_id"]) == f"shard {s:05d}"]
        ok_ids = [r["sample_id"] for r in status if r["shard"] == s and r["status"] == "ok"]
        summary = [m for m in mine if m.startswith(f"shard {s:05d}: ")]
        assert summary and all(i in summary[0] for i in ok_ids), mine
        for r in failed:
            if r["shard"] == s:
                assert any(r["sample_id"] in m and r["reason"] in m for m in mine), mine
    flow_lines = [e["message"] for e in logs if e["task_run_id"] is None]
    assert any(m.startswith("build: ") and "--retry-failed" in m for m in flow_lines), flow_lines
    assert any("matching: " in e["message"] and "found no background" in e["message"] for e in logs)

    artifacts = api.artifacts(run)
    md = artifacts["comcoco-build-summary"]["data"]
    for heading in ("Samples by status", "Worst reasons", "Seconds per stage"):
        assert heading in md, md
    assert all(f"| {k} | {n} |" in md for k, n in by_status.items()) and f"| ok | {24 - len(failed)} |" in md
    for stage in ("validate", "match", "plan", "compose", "collect"):
        assert f"| {stage} | " in md
    table = artifacts["comcoco-build-failed-samples"]
    rows = json.loads(table["data"]) if isinstance(table["data"], str) else table["data"]
    assert sorted(r["sample"] for r in rows) == sorted(r["sample_id"] for r in failed)

    # --strict: the same failures fail the run and the command
    strict = comcoco(["build", str(source), "-o", str(wd), *ARGS, "--strict"], prefect_api)
    assert strict.returncode == 4, (strict.stdout, strict.stderr)
    assert [line for line in strict.stderr.splitlines() if line.startswith("error:")] == [
        f"error: {len(failed)} of 24 samples failed ({', '.join(f'{k} {n}' for k, n in by_status.items())}); "
        f"{24 - len(failed)} ok "
        "(--strict); fix what the reasons name, then run the same command with --retry-failed"]
    runs = api.client.post("/flow_runs/filter", json={"flows": {"name": {"any_": ["comcoco-build"]}},
                                                      "sort": "START_TIME_DESC", "limit": 5}).json()
    latest = next(r for r in runs if r["parameters"]["workdir"] == str(wd.resolve()) and r["parameters"]["strict"])
    assert latest["state"]["type"] == "FAILED" and "--strict" in latest["state"]["message"]
    record = json.loads((wd / "build.json").read_text())
    assert record["outcome"]["verdict"] == "partial" and record["runner"] == "local (1 thread)"


def test_an_existing_dask_cluster_is_recorded_as_it_is(demo_source_small, prefect_api, tmp_path, monkeypatch):
    """--dask-address: build.json holds the cluster's real worker count and addresses, not the default 1."""
    from distributed import LocalCluster

    for key, value in prefect_api.items():  # the workers record into the same server
        monkeypatch.setenv(key, value)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0") as cluster:
        workers = sorted(w.worker_address for w in cluster.workers.values())
        wd = tmp_path / "wd"
        proc = comcoco(["build", str(demo_source_small), "-o", str(wd), "--limit", "8", "--shard-size", "2",
                        "--seed", "3", "--no-progress", "--runner", "dask", "--dask-address",
                        cluster.scheduler_address], prefect_api)
        assert proc.returncode == 0, proc.stderr
        record = json.loads((wd / "build.json").read_text())
    assert record["workers"] == 2 and record["scheduler"] == cluster.scheduler_address
    assert record["worker_addresses"] == workers and record["runner"] == f"dask ({cluster.scheduler_address})"
    assert "2 worker(s)" in proc.stdout


def test_the_release_flow_logs_and_says_when_its_data_is_unchanged(demo_source_small, prefect_api, api, tmp_path):
    """A second release whose options move no sample says so: in its output, changelog, log and summary."""
    from comcoco.build import build_inline
    from comcoco.plan import BuildConfig, SourceSpec
    from comcoco.release.builder import ReleaseOptions, build_release

    wd = tmp_path / "wd"
    build_inline(SourceSpec(root=str(demo_source_small)), wd, BuildConfig(limit=8, shard_size=8, seed=0))
    releases = tmp_path / "releases"
    first = ReleaseOptions(proportions={"train": 2, "val": 1, "test": 1})
    build_release(wd, releases, "1.0.0", first)
    proc = comcoco(["release", str(wd), "-o", str(releases), "--version", "1.1.0", "--split", "train=2,val=1,test=1",
                    "--rows-per-parquet", "3", "--no-progress"], prefect_api)
    assert proc.returncode == 0, proc.stderr
    note = ("the data of 1.1.0 equals 1.0.0's: no sample added, removed or changed; only the configuration differs "
            f"(release_config.rows_per_parquet: {first.rows_per_parquet} → 3)")
    assert f"note: {note}" in proc.stdout and proc.stderr == ""
    assert f"- {note}" in (releases / "comcoco-1.1.0" / "CHANGELOG.md").read_text()
    diff = comcoco(["release", "diff", str(releases / "comcoco-1.0.0"), str(releases / "comcoco-1.1.0")], {})
    assert diff.returncode == 0 and f"note: {note}" in diff.stdout

    run = api.flow_run("comcoco-release", version="1.1.0", releases=str(releases.resolve()))
    assert run["state"]["type"] == "COMPLETED"
    logs = wait_for_logs(api, run, "published")
    messages = [e["message"] for e in logs]
    assert any(m.startswith("select: 8 of 8 built samples") for m in messages), messages
    assert any(m == note and e["level"] == 30 for m, e in zip(messages, logs, strict=True)), messages
    tasks = {t["name"] for t in api.task_runs(run)}
    assert {"release-select", "release-export", "release-manifest", "release-dist", "release-publish"} <= tasks
    summary = api.artifacts(run)["comcoco-release-summary"]["data"]
    assert f"**{note}**" in summary and "| train |" in summary
