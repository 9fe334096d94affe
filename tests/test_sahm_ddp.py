"""Data parallelism really run: two CPU processes (gloo, chosen because there is no CUDA device) train the
tiny model on a small release.

1. ``torchrun --nproc_per_node 2 -m comcoco sahm train`` starts the run; both ranks are killed (SIGKILL)
   once it has written a checkpoint.
2. The run is resumed in two processes by ``comcoco.sahm.distributed.launch`` (what ``--nproc`` runs), with
   each rank recording its batches' items, its weight digest after every step, its evaluations and every
   file it writes under the run folder (an audit hook).
3. One process trains the same run with the global batch (2 × 2) as the reference.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from comcoco.sahm.config import get_config
from comcoco.sahm.data import ReleaseSamples
from comcoco.sahm.distributed import check_nproc, launch
from comcoco.sahm.runs import LAST_CKPT, RunError, Runtime, TrainOptions, read_log, train_run
from comcoco.sahm.train import Trainer, distributed_backend, weights_digest

REPO = Path(__file__).resolve().parents[1]
BATCH = 2  # per process
SEED = 5
KILL_AFTER = 3  # steps logged before both ranks are killed (checkpoints every 2 steps)
# Stated tolerance, DDP (2 × 2) against one process (batch 4) after the whole run: the same data and the
# same mean loss, so only the order of floating-point sums differs (gloo's all-reduce, batched kernels),
# which AdamW's normalised steps carry on (a near-zero gradient's sign decides a full-size step, so the
# gap depends on the data). Measured: 7e-4 (G) and 2.3e-3 (D) after 7 steps on an earlier demo release,
# 2.3e-2 (G) and 6.7e-3 (D) after 8 steps on today's (max |Δw| 1.7e-3), the logged losses within 1e-3 at
# every step; ranks that trained on overlapping or unsynchronised data land at a sizeable fraction of
# the distance trained.
WEIGHT_RTOL = 5e-2  # ‖w_ddp − w_one‖ / ‖w_one − w_init‖, for G and for D
LOSS_RTOL = 1e-3  # per-step logged total loss


def _descendants(pid: int) -> list[int]:
    """Processes whose parent chain reaches ``pid`` (torchrun's workers run in sessions of their own)."""
    parents: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parents[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    out, frontier = [], [pid]
    while frontier:
        kids = [p for p, pp in parents.items() if pp in frontier]
        out += kids
        frontier = kids
    return out


def _last_logged_step(run: Path) -> int:
    """The last step in the metrics log, read while rank 0 may be appending to it."""
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return 0
    steps = [0]
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line being written
        if rec.get("kind") == "step":
            steps.append(int(rec["step"]))
    return max(steps)


def _torchrun_then_kill(release: Path, run: Path, log_path: Path) -> tuple[int, int]:
    """Start the 2-process CLI run; SIGKILL the launcher and both ranks after KILL_AFTER steps.
    Returns (exit status, last logged step at the kill)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "comcoco", "sahm", "train", str(release), "--out", str(run), "--config", "tiny",
           "--device", "cpu", "--batch-size", str(BATCH), "--seed", str(SEED), "--steps", "1000",
           "--checkpoint-every", "2", "--eval-split", "val", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    with open(log_path, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                                start_new_session=True)
    deadline, logged = time.monotonic() + 300, 0
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            logged = _last_logged_step(run)
            if logged >= KILL_AFTER and (run / LAST_CKPT).is_file():
                break
            time.sleep(0.05)
    finally:
        for pid in [*_descendants(proc.pid), proc.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        status = proc.wait()
    assert logged >= KILL_AFTER, log_path.read_text()[-3000:]
    return status, logged


def _instrumented_train(run: str, options: TrainOptions, runtime: Runtime, trace: str):
    """One rank of the resumed run (spawned by ``launch``): trains and records what the tests check."""
    import comcoco.sahm.runs as runs

    rank, run_dir = int(os.environ["RANK"]), os.path.realpath(run)
    writes: list[list[str]] = []
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def audit(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            is_write = any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & write_flags)
            paths = [path] if is_write else []
        elif event in ("os.rename", "shutil.copyfile", "os.remove", "os.mkdir", "os.rmdir", "shutil.rmtree",
                       "os.truncate", "os.link", "os.symlink", "os.chmod"):
            paths = list(args[:2])
        else:
            return
        for p in paths:
            if isinstance(p, (str, bytes, os.PathLike)):
                full = os.path.realpath(os.fsdecode(p))
                if full == run_dir or full.startswith(run_dir + os.sep):
                    writes.append([event, os.path.relpath(full, run_dir)])

    sys.addaudithook(audit)  # lives as long as this spawned process
    evaluations: list[int] = []
    real_evaluate = runs.evaluate_dataset

    def counting_evaluate(*a, **k):
        evaluations.append(1)
        return real_evaluate(*a, **k)

    runs.evaluate_dataset = counting_evaluate
    steps: list[dict] = []

    def on_step(rec: dict, trainer) -> None:
        steps.append({"step": rec["step"], "epoch": rec["epoch"], "items": rec["items"], "total": rec["total"],
                      "digest": trainer.replica_digest()})

    summary = train_run(run, options, runtime, resume=True, on_step=on_step)
    Path(trace, f"rank{rank}.json").write_text(json.dumps({
        "steps": steps, "evaluations": len(evaluations), "writes": writes, "digest": summary.digest,
        "world": summary.world_size, "first_step": steps[0]["step"] if steps else None}))
    return summary


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def release(demo_source_small, tmp_path_factory) -> Path:
    """The runs tests' small release (imported here, not at the top: spawned ranks import this module)."""
    from test_sahm_runs import build_small_release, build_workdir

    base = tmp_path_factory.mktemp("sahm-ddp-release")
    return build_small_release(build_workdir(demo_source_small, base / "wd"), base / "R")


@pytest.fixture(scope="module")
def ddp(release, tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("sahm-ddp")
    n_train = len(ReleaseSamples(release, "train", 64, False))
    spe = n_train // (2 * BATCH)
    total = spe + 2  # through one epoch end (validation on rank 0) and into the next epoch
    run, ref, trace = base / "ddp", base / "ref", base / "trace"
    trace.mkdir()
    started = time.perf_counter()
    status, killed_at = _torchrun_then_kill(release, run, base / "torchrun.log")
    killed_log = read_log(run)
    ckpt_step = int(torch.load(run / LAST_CKPT, weights_only=True)["step"])
    t_kill = time.perf_counter() - started
    summary = launch(_instrumented_train, (str(run), TrainOptions(release=str(release), max_steps=total),
                                           Runtime(device="cpu"), str(trace)), 2)
    t_resume = time.perf_counter() - started - t_kill
    ref_steps: list[dict] = []
    train_run(ref, TrainOptions(release=str(release), config="tiny", batch_size=2 * BATCH, seed=SEED,
                                max_steps=total, tokenizer=str(run / "tokenizer")),
              Runtime(device="cpu"), on_step=lambda rec, tr: ref_steps.append(rec))
    ranks = [json.loads((trace / f"rank{r}.json").read_text()) for r in (0, 1)]
    print(f"\nDDP test: torchrun + kill {t_kill:.1f} s, resume via launch {t_resume:.1f} s, "
          f"one process {time.perf_counter() - started - t_kill - t_resume:.1f} s; {n_train} train items")
    return {"run": run, "ref": ref, "status": status, "killed_at": killed_at, "killed_log": killed_log,
            "ckpt_step": ckpt_step, "summary": summary, "ranks": ranks, "ref_steps": ref_steps,
            "total": total, "spe": spe, "release": release}


def test_backend_follows_the_device():
    assert distributed_backend(torch.device("cpu")) == "gloo"
    assert distributed_backend(torch.device("cuda", 1)) == "nccl"


def test_torchrun_run_killed_then_resumed_from_its_last_checkpoint(ddp):
    assert ddp["status"] != 0  # both ranks died by SIGKILL
    c = ddp["ckpt_step"]
    assert c >= 2 and c % 2 == 0 and c <= ddp["killed_at"] < ddp["total"] and c < ddp["spe"], (c, ddp["spe"])
    assert all(r["first_step"] == c + 1 for r in ddp["ranks"])  # continued at the checkpoint, not from 0
    log = read_log(ddp["run"])
    steps = [r["step"] for r in log if r["kind"] == "step"]
    assert steps == list(range(1, ddp["total"] + 1))  # steps the dead run logged after c were replaced
    assert [r["step"] for r in ddp["killed_log"] if r["kind"] == "step"][:c] == steps[:c]
    summary = ddp["summary"]
    assert summary.rank == 0 and summary.world_size == 2 and summary.step == ddp["total"]
    config = json.loads((ddp["run"] / "config.json").read_text())
    assert config["runtime"] == {"device": "cpu", "precision": "fp32", "world_size": 2}


def test_each_rank_sees_a_disjoint_half_of_every_global_batch(ddp):
    r0, r1 = (r["steps"] for r in ddp["ranks"])
    ref = {r["step"]: r["items"] for r in ddp["ref_steps"]}
    assert [s["step"] for s in r0] == [s["step"] for s in r1] == list(range(ddp["ckpt_step"] + 1, ddp["total"] + 1))
    for a, b in zip(r0, r1, strict=True):
        assert len(a["items"]) == len(b["items"]) == BATCH and not set(a["items"]) & set(b["items"])
        assert sorted(a["items"] + b["items"]) == sorted(ref[a["step"]])  # the one-process batch of 4
    for epoch in {s["epoch"] for s in r0}:
        seen0 = [i for s in r0 if s["epoch"] == epoch for i in s["items"]]
        seen1 = [i for s in r1 if s["epoch"] == epoch for i in s["items"]]
        assert not set(seen0) & set(seen1) and len(set(seen0)) == len(seen0)


def test_replicas_stay_identical_and_match_one_process(ddp):
    r0, r1 = ddp["ranks"]
    assert [s["digest"] for s in r0["steps"]] == [s["digest"] for s in r1["steps"]]
    assert len({s["digest"] for s in r0["steps"]}) == len(r0["steps"])  # the weights did change every step
    ckpt = torch.load(ddp["run"] / LAST_CKPT, weights_only=True)
    assert r0["digest"] == r1["digest"] == weights_digest(ckpt["generator"], ckpt["discriminator"])
    ref = torch.load(ddp["ref"] / LAST_CKPT, weights_only=True)
    assert ref["step"] == ckpt["step"] == ddp["total"]
    init = Trainer(get_config("tiny"), None, device="cpu", seed=SEED)  # the weights both runs started from
    start = {"generator": init.G.state_dict(), "discriminator": init.D.state_dict()}
    for net in ("generator", "discriminator"):
        diff = sum(float((ckpt[net][k].float() - ref[net][k].float()).pow(2).sum()) for k in ref[net]) ** 0.5
        moved = sum(float((ref[net][k].float() - start[net][k].float()).pow(2).sum()) for k in ref[net]) ** 0.5
        worst = max(float((ckpt[net][k].float() - ref[net][k].float()).abs().max()) for k in ref[net])
        print(f"\nDDP 2×{BATCH} vs one process ×{2 * BATCH}, {net} after {ddp['total']} steps: "
              f"‖Δw‖ / ‖w − w0‖ = {diff / moved:.1e}, max |Δw| = {worst:.1e}")
        assert moved > 0.1 and diff / moved < WEIGHT_RTOL
    ddp_loss = [r["total"] for r in read_log(ddp["run"]) if r["kind"] == "step"]
    ref_loss = [r["total"] for r in ddp["ref_steps"]]
    assert ddp_loss == pytest.approx(ref_loss, rel=LOSS_RTOL)  # logged losses are the global batch's mean


def test_only_rank0_writes_and_validation_runs_once(ddp):
    r0, r1 = ddp["ranks"]
    assert r1["writes"] == []
    written = {path for _, path in r0["writes"]}
    assert {"config.json", "metrics.jsonl", "checkpoints/best.json"} <= written
    assert any(p.startswith("checkpoints/last.pt") for p in written)
    assert (r0["evaluations"], r1["evaluations"]) == (1, 0)
    epochs = [r for r in read_log(ddp["run"]) if r["kind"] == "epoch"]
    assert len(epochs) == 1 and epochs[0]["step"] == ddp["spe"] and 0.0 <= epochs[0]["val"]["iou_mean"] <= 1.0


def test_nproc_is_refused_where_it_cannot_run(monkeypatch, tmp_path, release):
    from comcoco.cli import app

    with pytest.raises(RunError, match="each process takes cuda:LOCAL_RANK"):
        check_nproc(2, "cuda:1")
    if not torch.cuda.is_available():
        with pytest.raises(RunError, match="no CUDA device"):
            check_nproc(2, "cuda")
    res = CliRunner().invoke(app, ["sahm", "train", str(release), "--out", str(tmp_path / "r"), "--nproc", "2",
                                   "--device", "cuda:1", "--no-progress"])
    assert res.exit_code == 2 and res.output.count("error:") == 1 and "cuda:LOCAL_RANK" in res.output
    res = CliRunner().invoke(app, ["sahm", "train", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r"),
                                   "--nproc", "2", "--device", "cpu", "--no-progress"])
    assert res.exit_code == 3 and res.output.strip().startswith("error: rank 0: release not found"), res.output
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RunError, match="already running under torchrun"):
        check_nproc(2, "cpu")
