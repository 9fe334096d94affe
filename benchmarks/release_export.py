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

``--parts`` then runs the export once more in one process and prints its CPU milliseconds per sample
by part (the functions below, each counted without the parts it calls): where the time goes.
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


# (module, function, label) of each part --parts counts; a part's time leaves out the parts it calls
PARTS = (
    ("comcoco.release.files", "copy_file", "copy composite, ground truth"),
    ("comcoco.release.files", "placed_rle", "rasterise polygon (RLE)"),
    ("comcoco.release.files", "rle_geometry", "box and area from RLE"),
    ("comcoco.release.files", "released_mask", "decode RLE to mask"),
    ("comcoco.release.files", "_effect", "read build effect mask, union"),
    ("comcoco.release.files", "_build_mask_iou", "read build mask, IoU"),
    ("comcoco.release.files", "encode_mask", "encode mask PNGs"),
    ("comcoco.release.files", "write_new", "write mask files"),
    ("comcoco.release.files", "_rle", "effect mask RLE"),
    ("comcoco.release.files", "export_sample", "rest of a sample"),
    ("comcoco.release.parquet", "_image_column", "Parquet: read images"),
    ("comcoco.release.parquet", "parquet_table", "Parquet: other columns"),
    ("comcoco.release.parquet", "write_parquet_part", "Parquet: encode and write"),
    ("comcoco.release.builder", "write_refer", "REFER / COCO (both variants)"),
    ("comcoco.release.builder", "write_instruct", "instruction pairs (both variants)"),
)


def _run_parts(staging: str, workdir: str) -> dict:
    """The export in this process, each part's thread CPU time summed (its callees' parts left out)."""
    import functools
    import importlib

    from comcoco.release.builder import ReleaseOptions, export_stage

    spent: dict[str, float] = dict.fromkeys([label for _, _, label in PARTS], 0.0)
    stack: list[str] = []

    def timed(fn, label):
        @functools.wraps(fn)
        def run(*a, **k):
            t0 = time.thread_time()
            stack.append(label)
            try:
                return fn(*a, **k)
            finally:
                stack.pop()
                dt = time.thread_time() - t0
                spent[label] += dt
                if stack:
                    spent[stack[-1]] -= dt
        return run

    for module, name, label in PARTS:
        mod = importlib.import_module(module)
        setattr(mod, name, timed(getattr(mod, name), label))
    cpu_before = time.process_time()
    out = export_stage(workdir, staging, ReleaseOptions(), workers=1)
    total = time.process_time() - cpu_before
    spent["everything else (entries, records, progress)"] = total - sum(spent.values())
    return {"cpu_before": cpu_before, "samples": out["files"]["samples"], "parts": spent, "total": total}


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
        run = {"export": _run_export, "copy": _run_copy, "parts": _run_parts}[what]
        print(json.dumps(run(*args)))
        return 0
    from comcoco.pool import available_cores

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=None, help="a built work directory (default: build a demo one)")
    ap.add_argument("--images", type=int, default=200, help="demo images when no --work is given")
    ap.add_argument("--workers", type=int, default=available_cores())
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--root", type=Path, default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--parts", action="store_true", help="also print CPU ms per sample by part (one process)")
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
    if args.parts:
        staging = _fresh_staging(selected, scratch / "parts")
        parts = _child("parts", str(staging), str(work))
        print(f"CPU ms per sample by part (one process, {parts['samples']} samples, "
              f"{1000 * parts['total'] / parts['samples']:.1f} in all):")
        for label, sec in sorted(parts["parts"].items(), key=lambda kv: -kv[1]):
            print(f"  {label:<46} {1000 * sec / parts['samples']:6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
