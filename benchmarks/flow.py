"""Build-flow benchmark: orchestration overhead, Dask scale-out and memory against sample count.

Measured in one run on one demo source (generated here), each build into a fresh work directory:

1. overhead  — the Prefect flow (local runner, 1 worker) against the same shard function called in a
   plain loop (`comcoco.workdir.build_inline`); goal ≤ 10 % extra.
2. scale-out — `--runner dask --workers 2` against `--workers 1`; goal ≥ 1.6× (2 cores); and one Dask
   worker's compose stage against the local runner's single thread; goal ≈ 1.
3. memory    — peak RSS of a build at 1×, 4× and 16× the samples; goal: flat (shards are streamed).

Each build runs in its own subprocess so its peak RSS and start-up are its own. Prefect runs without a
server (its temporary local API, as `comcoco build` does for a user); the flow timings reported are
the build's own stage seconds from build.json, so the API's start-up is shown separately.

    python benchmarks/flow.py                 # full size (each build ≥ 60 s on a 2-core machine)
    python benchmarks/flow.py --quick         # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from comcoco.plan import BuildConfig, SourceSpec
mode, source, workdir, limit, shard_size, workers = sys.argv[1:7]
cfg = BuildConfig(limit=int(limit), shard_size=int(shard_size))
spec = SourceSpec(root=source)
t = time.perf_counter()
if mode == "inline":
    from comcoco.build import build_inline
    build_inline(spec, workdir, cfg)
    record = {}
else:
    from pipelines.build import run_build
    from pipelines.runners import RunnerSpec
    out = run_build(spec, workdir, cfg, RunnerSpec(kind=mode, workers=int(workers)))
    record = out["record"]
wall = time.perf_counter() - t
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"wall": wall, "rss_mib": rss, "record": record}))
"""


def run(mode: str, source: Path, workdir: Path, limit: int, shard_size: int, workers: int = 1) -> dict:
    env = dict(os.environ)
    env.setdefault("PREFECT_HOME", str(workdir.parent / "prefect-home"))
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(source), str(workdir), str(limit), str(shard_size), str(workers)],
        capture_output=True, text=True, env=env,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{mode} build failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke run, ratios not meaningful)")
    ap.add_argument("--images", type=int, default=None, help="demo source images")
    ap.add_argument("--samples", type=int, default=None, help="samples of the overhead and scale-out builds")
    ap.add_argument("--shard-size", type=int, default=64)
    args = ap.parse_args()
    images = args.images or (40 if args.quick else 900)
    samples = args.samples or (40 if args.quick else 1500)
    base_mem = max(8, samples // 16)

    from comcoco.sources.demo import generate_demo_source

    with tempfile.TemporaryDirectory(prefix="comcoco-bench-flow-") as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        source = generate_demo_source(tmp / "source", n_images=images, seed=0)
        print(f"demo source: {images} images in {time.perf_counter() - t:.1f} s")

        inline = run("inline", source, tmp / "inline", samples, args.shard_size)
        flow = run("local", source, tmp / "flow", samples, args.shard_size)
        rec = flow["record"]["seconds"]
        flow_work = sum(rec.values())
        print("\n1. orchestration overhead (same samples, same shard function)")
        print(f"   plain loop:        {inline['wall']:8.1f} s")
        print(f"   Prefect flow:      {flow_work:8.1f} s in its stages ({flow['wall']:.1f} s with the temporary API start-up)")
        print(f"   overhead:          {100 * (flow_work / inline['wall'] - 1):+8.1f} %   (goal ≤ +10 %)")

        d1 = run("dask", source, tmp / "dask1", samples, args.shard_size, workers=1)
        d2 = run("dask", source, tmp / "dask2", samples, args.shard_size, workers=2)
        c1, c2 = d1["record"]["seconds"]["compose"], d2["record"]["seconds"]["compose"]
        print("\n2. Dask scale-out (compose stage)")
        print(f"   1 worker:          {c1:8.1f} s   ({d1['record']['samples_per_second']:.1f} samples/s)")
        print(f"   2 workers:         {c2:8.1f} s   ({d2['record']['samples_per_second']:.1f} samples/s)")
        print(f"   speed-up:          {c1 / c2:8.2f} ×   (goal ≥ 1.6 ×)")
        print(f"   1 worker / 1 local thread (compose): {c1 / rec['compose']:.2f}   (goal ≈ 1: a worker process "
              "is no slower than a thread)")

        print("\n3. peak RSS against samples (local runner)")
        rss = []
        for mult in (1, 4, 16):
            n = base_mem * mult
            r = run("local", source, tmp / f"mem{mult}", n, args.shard_size)
            rss.append(r["rss_mib"])
            print(f"   {mult:2d}× ({n:5d} samples): {r['rss_mib']:8.0f} MiB")
        print(f"   16× / 1×:          {rss[2] / rss[0]:8.2f}     (goal: flat, ≈ 1)")


if __name__ == "__main__":
    main()
