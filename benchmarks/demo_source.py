"""``comcoco demo-source`` with one process against a pool: wall time, speed-up and the bound.

    python benchmarks/demo_source.py [--images 200] [--workers 2] [--rounds 1] [--root DIR]

Each round runs the verb twice as its own process, ``--workers 1`` then ``--workers W``, into two
folders, and checks the two sources are the same bytes (images, REFER files, marker). It prints each
time, the ratio of the best serial time over the best pooled time, and the bound: W, or the cores
this process may use if fewer (and the load average, since other work on the machine takes cores).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def run(out: Path, images: int, workers: int, env: dict) -> float:
    """Wall seconds of one ``demo-source`` process, the interpreter's start included."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "comcoco", "demo-source", "-o", str(out), "--images", str(images),
           "--seed", "0", "--workers", str(workers), "--no-progress"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, cwd=REPO, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--root", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = ap.parse_args()
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    scratch = Path(tempfile.mkdtemp(prefix="demo-source-bench-", dir=args.root))
    try:
        load = os.getloadavg()[0]
        times: dict[int, list[float]] = {1: [], args.workers: []}
        for r in range(args.rounds):
            for w in (1, args.workers):
                times[w].append(run(scratch / f"w{w}", args.images, w, env))
                print(f"round {r + 1}: --workers {w}: {times[w][-1]:.1f} s", flush=True)
            same = digest(scratch / "w1") == digest(scratch / f"w{args.workers}")
            print(f"round {r + 1}: same bytes: {same}", flush=True)
            if not same:
                raise SystemExit("the sources differ")
        serial, pooled = min(times[1]), min(times[args.workers])
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        bound = min(args.workers, cores)
        print(f"demo-source --images {args.images}: --workers 1 {serial:.1f} s ({1000 * serial / args.images:.0f} ms "
              f"per image), --workers {args.workers} {pooled:.1f} s; speed-up x{serial / pooled:.2f} "
              f"(bound x{bound}: {cores} cores; load average {load:.1f} before, {os.getloadavg()[0]:.1f} after)")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
