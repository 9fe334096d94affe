"""Review at paper scale: push and pull 24,000 placement tasks against a real Label Studio server.

Measured in one run, on a server started here (own port, data directory and document root):

1. push          — every sample of a 24,000-sample work directory as a stage-1 task; tasks/s, against
                   the server's own import rate for the same tasks without the client (a bare import of
                   1,000 of them into a scratch project): the ratio is the client's overhead.
2. pull, 1,000 new — after the benchmark posted 1,000 annotations (accept, or reject with a reason)
                   through the API, as annotators would.
3. pull, nothing new — again, with nothing changed; against one full JSON export of the project, which
                   is what every pull read before pulls asked only for changed tasks.

Each step runs in its own subprocess, so its peak RSS (``VmHWM``) is the client's own. Goals (2 cores): push under
10 minutes, pull with nothing new under 1 minute, peak RSS under 500 MiB.

The 24,000-sample work directory is synthetic, made cheaply from a real one: a 12-image demo source is
built (a few composites), then ``status.parquet`` is rewritten with 24,000 rows cycled from the real
ones under new sample ids, each composite a hard link of a real composite. Everything review reads —
the source, the plan's configuration, the status rows, the image files — is real; only the pixels
repeat. Recomposition is not exercised (the annotations accept or reject; an adjust's cost is the
compose engine's, see benchmarks/compose.py).

    python benchmarks/review.py                    # 24,000 tasks, 1,000 annotations
    python benchmarks/review.py --samples 2000 --annotations 100     # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CHILD = r"""
import json, sys, time
from comcoco.review.server import ReviewServer
step, workdir, url, token, root = sys.argv[1:6]
server = ReviewServer(url, token, timeout=600)
t = time.perf_counter()
if step == "push":
    from comcoco.review.push import push
    rep = push(workdir, "placement", server, root)
    n = rep.imported
elif step == "pull":
    from comcoco.review.pull import pull
    rep = pull(workdir, "placement", server, root)
    n = rep.tasks
    assert not rep.errors, rep.errors[:3]
elif step == "export":
    from comcoco.review.bookkeeping import read_projects
    pid = int(read_projects(workdir)["placement"]["id"])
    chunks = server.sdk.projects.exports.download_sync(id=pid, export_type="JSON", download_all_tasks=True)
    n = len(json.loads(b"".join(chunks)))
    rep = None
seconds = time.perf_counter() - t
extra = {} if rep is None else {"recorded": getattr(rep, "recorded", 0), "applied": getattr(rep, "applied", {})}
# VmHWM: this process's own peak (ru_maxrss would start from the parent's RSS at fork)
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"seconds": seconds, "n": n, "rss_mib": hwm / 1024, **extra}))
"""


def run_child(step: str, workdir: Path, url: str, token: str, root: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "COMCOCO_LS_RETRIES": "6"}
    proc = subprocess.run([sys.executable, "-c", CHILD, step, str(workdir), url, token, str(root)], env=env,
                          capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"{step} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def synthetic_workdir(base: Path, samples: int) -> Path:
    """A real 12-image demo build, then ``samples`` status rows cycled from it (hard-linked composites)."""
    from comcoco.build import build_inline
    from comcoco.ids import stable_id
    from comcoco.plan import BuildConfig, SourceSpec
    from comcoco.sources.demo import generate_demo_source
    from comcoco.workdir import Workdir

    source = generate_demo_source(base / "source", n_images=12, seed=0)
    real = base / "real"
    build_inline(SourceSpec(root=str(source)), real, BuildConfig(limit=6, shard_size=6, seed=0))
    rows = [r for r in Workdir(real).status() if r.status == "ok"]
    wd = base / "work"
    images = wd / "shards" / "00000" / "images"
    images.mkdir(parents=True)
    for name in ("plan.json", "plan.parquet"):
        (wd / name).write_bytes((real / name).read_bytes())
    out = []
    for i in range(samples):
        row = rows[i % len(rows)]
        sid = stable_id("review-benchmark", i)
        link = images / f"{sid}.png"
        os.link(real / row.composite, link)
        out.append(replace(row, sample_id=sid, composite_id=sid, composite=str(link.relative_to(wd)), objects=()))
    Workdir(wd).write_status(out)
    return wd


def bare_import_rate(server, workdir: Path, root: Path, n: int = 1000) -> float:
    """Tasks/s of the server importing ``n`` ready-made stage-1 tasks (no client work), in the same pages."""
    from comcoco.review.bookkeeping import task_key
    from comcoco.review.push import LABEL_CONFIGS
    from comcoco.review.tasks import WorkdirView, build_task

    view = WorkdirView.load(workdir)
    tasks = [build_task(view, "placement", row, 0, 0, "", root) for row in view.reviewable()[:n]]
    pid = server.create_project("benchmark bare import", LABEL_CONFIGS["placement"].read_text())
    try:
        t = time.perf_counter()
        server.import_tasks(pid, tasks, key=task_key)
        return len(tasks) / (time.perf_counter() - t)
    finally:
        server.delete_project(pid)


def annotate(server, pid: int, count: int, threads: int = 4) -> float:
    """Post ``count`` annotations (every 5th a reject with a reason), as annotators would; seconds taken."""
    tasks = server.list_tasks(pid, include="id,data")[:count]

    def one(i_task: tuple[int, dict]) -> int:
        i, t = i_task
        res = [{"from_name": "decision", "to_name": "image", "type": "choices",
                "value": {"choices": ["reject" if i % 5 == 0 else "accept"]}}]
        if i % 5 == 0:
            res.append({"from_name": "reason", "to_name": "image", "type": "textarea", "value": {"text": ["wrong scale"]}})
        return server.annotate(t["id"], res)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as ex:
        list(ex.map(one, enumerate(tasks)))
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=24_000)
    ap.add_argument("--annotations", type=int, default=1_000)
    args = ap.parse_args()

    from comcoco.review import process
    from comcoco.review.bookkeeping import read_projects
    from comcoco.review.server import RetryPolicy, ReviewServer
    from comcoco.review.settings import ServerSettings

    with tempfile.TemporaryDirectory(prefix="review-bench-") as tmp:
        base = Path(tmp)
        settings = ServerSettings.from_env(port=process.free_port(), data_dir=base / "ls-data",
                                           document_root=base / "docs", url_override=None)
        settings.document_root.mkdir(parents=True)
        process.install(settings)
        t = time.perf_counter()
        process.start(settings)
        print(f"server started in {time.perf_counter() - t:.0f} s at {settings.url}", flush=True)
        try:
            t = time.perf_counter()
            wd = synthetic_workdir(settings.document_root, args.samples)
            print(f"synthetic work directory: {args.samples} samples in {time.perf_counter() - t:.0f} s", flush=True)
            server = ReviewServer(settings.url, settings.token, RetryPolicy(attempts=6), timeout=600)
            root = settings.document_root
            bare = bare_import_rate(server, wd, root)
            push_r = run_child("push", wd, settings.url, settings.token, root)
            pid = int(read_projects(wd)["placement"]["id"])
            first = run_child("pull", wd, settings.url, settings.token, root)
            posted = annotate(server, pid, args.annotations)
            print(f"posted {args.annotations} annotations in {posted:.0f} s", flush=True)
            new = run_child("pull", wd, settings.url, settings.token, root)
            same = run_child("pull", wd, settings.url, settings.token, root)
            export = run_child("export", wd, settings.url, settings.token, root)
        finally:
            process.stop(settings)

    n = args.samples
    rows = [
        ("push", n, push_r),
        ("pull, nothing annotated yet", n, first),
        (f"pull, {args.annotations} new annotations", args.annotations, new),
        ("pull, nothing new", n, same),
        ("one full JSON export (what every pull read before)", n, export),
    ]
    print(f"\n{'step':<52} {'tasks':>7} {'seconds':>8} {'tasks/s':>8} {'peak RSS MiB':>13}")
    for name, count, r in rows:
        print(f"{name:<52} {count:>7} {r['seconds']:>8.1f} {count / r['seconds']:>8.0f} {r['rss_mib']:>13.0f}")
    assert new.get("recorded") == args.annotations, new
    print(f"\nserver's bare import rate: {bare:.0f} tasks/s; push reaches {n / push_r['seconds'] / bare:.2f}× of it")
    print(f"pull with nothing new: {export['seconds'] / same['seconds']:.0f}× faster than one full export")
    peak = max(r["rss_mib"] for _, _, r in rows[:4])
    goals = [("push < 10 min", push_r["seconds"] < 600), ("pull, nothing new < 1 min", same["seconds"] < 60),
             ("client peak RSS < 500 MiB", peak < 500)]
    print("goals: " + "; ".join(f"{g}: {'met' if ok else 'MISSED'}" for g, ok in goals))


if __name__ == "__main__":
    main()
