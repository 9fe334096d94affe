"""The release's export stage, one process against a pool, and the bound: copying the bytes it writes.

    python benchmarks/release_export.py [--work WORKDIR] [--images 200] [--workers W] [--rounds 1] [--root DIR]

Without ``--work`` a demo work directory is made first (``comcoco demo-source --images N --seed 0``,
then ``comcoco build --workers 2``). The release's select stage runs once; each round then runs the
export stage (``comcoco.release.builder.export_stage``: sample files, REFER, Parquet, instruction pairs)
as its own process with 1 and with W workers, checks that both wrote the same bytes, and copies every
file the export wrote into a fresh folder (``copy_file``, what the release uses for composites): reading
and writing the same bytes, which no export can beat. It prints samples/s, CPU milliseconds per sample
(the process and its pool's workers: more stable than wall time on a shared machine) and each export's
time as a multiple of the copy's, best round of each.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

_PR_SET_CHILD_SUBREAPER = 36


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _reap() -> None:
    """Wait for every process left to this one: a pool's forkserver outlives the child that started it,
    and its workers' CPU reaches this process's children total only once the forkserver is reaped."""
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def _child(what: str, *args: str) -> dict:
    """Run ``what`` as a child process; its report, with the CPU seconds of it and all it started."""
    before = _children_cpu()
    out = subprocess.run([sys.executable, __file__, "--child", what, *args], check=True, capture_output=True,
                         text=True, cwd=REPO).stdout
    _reap()
    report = json.loads(out.splitlines()[-1])
    report["cpu"] = _children_cpu() - before - report.pop("cpu_before")  # the interpreter's start left out
    return report


def _run_export(staging: str, workdir: str, workers: str) -> dict:
    from comcoco.release.builder import ReleaseOptions, export_stage

    cpu_before = time.process_time()
    t0 = time.perf_counter()
    out = export_stage(workdir, staging, ReleaseOptions(), workers=int(workers))
    return {"wall": time.perf_counter() - t0, "cpu_before": cpu_before, "samples": out["files"]["samples"]}


def _run_copy(src: str, dst: str) -> dict:
    from comcoco.release.files import copy_file

    cpu_before = time.process_time()
    t0 = time.perf_counter()
    n = size = 0
    for p in sorted(Path(src).rglob("*")):
        if p.is_file() and "_build" not in p.relative_to(src).parts:
            copy_file(p, Path(dst) / p.relative_to(src))
            n, size = n + 1, size + p.stat().st_size
    return {"wall": time.perf_counter() - t0, "cpu_before": cpu_before, "files": n, "bytes": size}


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and "_build" not in p.relative_to(root).parts}


def _demo_workdir(scratch: Path, images: int) -> Path:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for cmd in (["demo-source", "-o", str(scratch / "src"), "--images", str(images), "--seed", "0", "--no-progress"],
                ["build", str(scratch / "src"), "-o", str(scratch / "work"), "--workers", "2"]):
        subprocess.run([sys.executable, "-m", "comcoco", *cmd], check=True, env=env, cwd=REPO,
                       stdout=subprocess.DEVNULL)
    return scratch / "work"


def _fresh_staging(selected: Path, dst: Path) -> Path:
    shutil.rmtree(dst, ignore_errors=True)
    (dst / "_build").mkdir(parents=True)
    for p in (selected / "_build").iterdir():
        shutil.copyfile(p, dst / "_build" / p.name)
    return dst


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        what, args = sys.argv[2], sys.argv[3:]
        print(json.dumps(_run_export(*args) if what == "export" else _run_copy(*args)))
        return 0
    from comcoco.pool import available_cores

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=None, help="a built work directory (default: build a demo one)")
    ap.add_argument("--images", type=int, default=200, help="demo images when no --work is given")
    ap.add_argument("--workers", type=int, default=available_cores())
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--root", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = ap.parse_args()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # orphans of the children (forkservers) come here
    scratch = Path(tempfile.mkdtemp(prefix="release-export-bench-", dir=args.root))
    try:
        return _measure(args, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _measure(args: argparse.Namespace, scratch: Path) -> int:
    from comcoco.release.builder import ReleaseOptions, select_stage

    work = args.work.resolve() if args.work else _demo_workdir(scratch, args.images)
    selected = scratch / "selected"
    (selected / "_build").mkdir(parents=True)
    select_stage(work, selected, ReleaseOptions())
    ways = ("export, 1 worker", f"export, {args.workers} workers", "copy of its files")
    best: dict[str, dict] = {}
    for r in range(args.rounds):
        runs = {}
        for way, w in zip(ways[:2], (1, args.workers), strict=True):
            staging = _fresh_staging(selected, scratch / f"w{w}")
            runs[way] = _child("export", str(staging), str(work), str(w))
        same = _digest(scratch / "w1") == _digest(scratch / f"w{args.workers}")
        shutil.rmtree(scratch / "copy", ignore_errors=True)
        runs[ways[2]] = _child("copy", str(scratch / f"w{args.workers}"), str(scratch / "copy"))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v['wall']:.1f} s" for k, v in runs.items())
              + f"; same bytes for 1 and {args.workers} workers: {same}", flush=True)
        if not same:
            raise SystemExit("the exports differ")
        for way, v in runs.items():
            if way not in best or v["wall"] < best[way]["wall"]:
                best[way] = v
    n = best[ways[0]]["samples"]
    copy = best[ways[2]]
    for way in ways:
        v = best[way]
        print(f"{way:<22} {v['wall']:7.2f} s {n / v['wall']:8.1f} samples/s {1000 * v['cpu'] / n:8.1f} CPU ms/sample"
              f" {v['wall'] / copy['wall']:6.1f}x the copy")
    print(f"{n} samples; the export writes {copy['files']} files, {copy['bytes'] / 1e6:.0f} MB; "
          f"{args.workers} workers / 1: {best[ways[0]]['wall'] / best[ways[1]]['wall']:.2f}x faster; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
