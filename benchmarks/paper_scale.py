"""The paper's size end to end: a RefCOCO+-size demo source → build → release → verify → load.

Generates (``comcoco demo-source --workers W``, its time printed) or reuses a demo source of 19,992
images (about 47,500 objects, RefCOCO+'s size), then runs what a maintainer runs, each verb as its
own process tree, and prints per stage: wall time, CPU time (the whole process tree), samples/s,
peak RSS of the whole process tree (sampled every 0.2 s, summed over its processes) and the disk
the stage added:

    comcoco build SOURCE -o WORK --workers 2 --limit 24000    (the paper's ~24,000 pairs)
    comcoco release WORK -o RELEASES --version 1.0.0           (export, audit, card, manifest, dist)
    comcoco verify RELEASES/comcoco-1.0.0
    python -c "comcoco.load(RELEASE, split='train')[0]"

The release's own stages (select, export, audit, card, manifest, dist) are listed from its output.
Goals on a 2-core machine: the whole run under 60 minutes after the source exists, peak RSS under
1.5 GiB in every stage, the release's export at >= 100 samples/s.

Linearity: first the same pipeline runs on a tenth of the samples (``--small``; same source, so
loading and matching cost the same); each stage's cost per sample at full size over its cost at a
tenth is printed, and a ratio above 1.5 is flagged as growing worse than linearly.

    python benchmarks/paper_scale.py --root runs/paper-scale [--images 19992] [--samples 24000]
        [--workers 2] [--runner local|dask] [--small 2400 | --no-small] [--keep] [--no-dist]

The small run's folders are deleted before the full run starts; its disk per sample, scaled up, must
fit in the free disk or the full run is not started. A release with ``dist/`` takes about 3.6 MB per
sample here (its files 0.6, Parquet of both variants 1.2, the tar shards of all of it 1.8), plus 0.6
for the work directory: about 100 GB at the paper's size. ``--no-dist`` (``comcoco release
--no-dist``) leaves the shards out.

The data stays under ROOT (tens of GB at full size): source/, work/, releases/, and paper-scale.json
and paper-scale.md with the table. ``--keep`` keeps the work directory and release of a finished run
(by default they are deleted at the end; the source is always kept for the next run).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
GiB = 1024**3
GOAL_MINUTES, GOAL_RSS, GOAL_EXPORT = 60.0, 1.5 * GiB, 100.0
SUPERLINEAR = 1.5  # cost per sample at full size over a tenth's, above which a stage is flagged


@dataclass
class StageResult:
    name: str
    wall: float
    cpu: float
    peak_rss: int
    disk: int
    samples: int | None
    output: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def rate(self) -> float | None:
        return self.samples / self.wall if self.samples and self.wall > 0 else None


class TreeMonitor(threading.Thread):
    """Peak summed RSS and CPU time of a process and all its descendants, sampled every ``period`` s."""

    def __init__(self, pid: int, period: float = 0.2):
        super().__init__(daemon=True)
        self.root, self.period = pid, period
        self.peak = 0
        self.cpu: dict[int, float] = {}  # last CPU seconds seen per process (those that ended keep theirs)
        self.done = threading.Event()

    def _sample(self) -> None:
        try:
            procs = [psutil.Process(self.root)]
            procs += procs[0].children(recursive=True)
        except psutil.Error:
            return
        rss = 0
        for p in procs:
            try:
                with p.oneshot():
                    rss += p.memory_info().rss
                    t = p.cpu_times()
                    self.cpu[p.pid] = t.user + t.system
            except psutil.Error:
                continue
        self.peak = max(self.peak, rss)

    def run(self) -> None:
        while not self.done.is_set():
            self._sample()
            self.done.wait(self.period)


def disk_used(*roots: Path) -> int:
    """Bytes of blocks under ``roots``, each inode once (hard links share their blocks)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for root in roots:
        if not root.exists():
            continue
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                try:
                    st = os.lstat(os.path.join(dirpath, name))
                except OSError:
                    continue
                key = (st.st_dev, st.st_ino)
                if key not in seen:
                    seen.add(key)
                    total += st.st_blocks * 512
    return total


def run_stage(name: str, cmd: list[str], disk_roots: list[Path], samples: int | None, env: dict) -> StageResult:
    """Run one verb as a child process tree; its wall, CPU, peak RSS, the disk it added."""
    before = disk_used(*disk_roots)
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(cmd)}", flush=True)
    usage0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
    mon = TreeMonitor(proc.pid)
    mon.start()
    out, _ = proc.communicate()
    wall = time.perf_counter() - t0
    mon.done.set()
    mon.join()
    usage1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    reaped = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
    cpu = max(reaped, sum(mon.cpu.values()))  # processes reaped by others are only in the samples
    if proc.returncode not in (0,):
        print(out[-4000:], file=sys.stderr)
        raise SystemExit(f"{name} failed with exit code {proc.returncode}")
    tail = "\n".join(out.strip().splitlines()[-12:])
    print("    " + tail.replace("\n", "\n    "), flush=True)
    return StageResult(name, wall, cpu, mon.peak, disk_used(*disk_roots) - before, samples, out)


def ensure_source(root: Path, images: int, seed: int, workers: int, env: dict) -> tuple[Path, float | None]:
    """The demo source under ROOT/source, generated once by ``workers`` processes (its time is
    reported, outside the clock). A source is reused only when its marker, written last, records the
    same size and seed; a run that did not finish leaves no marker."""
    src = root / "source"
    meta = src / "demo-source.json"
    if meta.is_file():
        info = json.loads(meta.read_text())
        if info.get("images") == images and info.get("seed") == seed:
            print(f"demo source {src}: reused ({images} images, seed {seed})", flush=True)
            return src, None
    cmd = [sys.executable, "-m", "comcoco", "demo-source", "-o", str(src), "--images", str(images),
           "--seed", str(seed), "--workers", str(workers), "--progress"]
    print(f"[{time.strftime('%H:%M:%S')}] demo source: {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, cwd=REPO)
    seconds = time.perf_counter() - t0
    print(f"demo source: {images} images in {seconds / 60:.1f} min with {workers} workers "
          f"({1000 * seconds / images:.0f} ms per image)", flush=True)
    return src, seconds


def release_seconds(output: str) -> dict[str, float]:
    """The release's own stage timings, from its ``seconds`` line."""
    for line in output.splitlines():
        if line.startswith("seconds "):
            parts = [p.strip().rsplit(" ", 1) for p in line[len("seconds "):].split(",")]
            return {k.strip(): float(v) for k, v in parts}
    return {}


def pipeline(tag: str, root: Path, src: Path, limit: int, args: argparse.Namespace, env: dict) -> list[StageResult]:
    """build → release → verify → load for ``limit`` samples into ROOT/<tag>-*; the stages' results."""
    work, releases = root / f"{tag}-work", root / f"{tag}-releases"
    for p in (work, releases):
        shutil.rmtree(p, ignore_errors=True)
    py = [sys.executable, "-m", "comcoco"]
    build = [*py, "build", str(src), "-o", str(work), "--seed", "0", "--workers", str(args.workers),
             "--runner", args.runner, "--limit", str(limit), "--no-progress"]
    res = [run_stage("build", build, [work], None, env)]
    status = json.loads((work / "build.json").read_text())
    ok = int(status.get("counts", {}).get("ok", 0)) or _ok_samples(work)
    res[0].samples = ok
    res[0].extra = {"seconds": status.get("seconds", {}), "outcome": status.get("outcome", {}).get("message")}
    release = [*py, "release", str(work), "-o", str(releases), "--version", "1.0.0", "--no-progress",
               "--dist" if args.dist else "--no-dist"]
    r = run_stage("release", release, [work, releases], None, env)
    rel = releases / "comcoco-1.0.0"
    manifest = json.loads((rel / "manifest.json").read_text())
    r.samples = int(manifest["selection"]["selected"])
    r.extra = {"seconds": release_seconds(r.output)}
    res.append(r)
    res.append(run_stage("verify", [*py, "verify", str(rel)], [work, releases], r.samples, env))
    load = "\n".join([
        "import sys, time, comcoco",
        "t = time.perf_counter()",
        "ds = comcoco.load(sys.argv[1], split='train')",
        "item = ds[0]",
        "print(f'loaded {len(ds)} train samples; first item {sorted(item)} in {time.perf_counter() - t:.2f} s')",
    ])
    res.append(run_stage("load", [sys.executable, "-c", load, str(rel)], [work, releases], None, env))
    return res


def _ok_samples(work: Path) -> int:
    import pyarrow.parquet as pq

    t = pq.read_table(work / "status.parquet", columns=["status"]).column("status").to_pylist()
    return sum(1 for s in t if s == "ok")


def _gib(n: int) -> str:
    return f"{n / GiB:.2f}"


def table(results: list[StageResult]) -> list[str]:
    lines = ["| stage | wall s | CPU s | samples/s | peak RSS GiB | disk added GiB |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in results:
        rate = f"{r.rate:.1f}" if r.rate else "–"
        lines.append(f"| {r.name} | {r.wall:.1f} | {r.cpu:.1f} | {rate} | {_gib(r.peak_rss)} | {_gib(r.disk)} |")
        for k, v in r.extra.get("seconds", {}).items():
            per = f"{r.samples / v:.1f}" if r.samples and v > 0 and k in ("compose", "export", "dist", "manifest") else "–"
            lines.append(f"| &nbsp;&nbsp;{r.name}: {k} | {v:.1f} | | {per} | | |")
    total_wall = sum(r.wall for r in results)
    lines.append(f"| **total** | {total_wall:.1f} | {sum(r.cpu for r in results):.1f} | | "
                 f"{_gib(max(r.peak_rss for r in results))} | {_gib(sum(r.disk for r in results))} |")
    return lines


def linearity(small: list[StageResult], full: list[StageResult]) -> list[str]:
    """Cost per sample at full size over a tenth's, for each stage and the stages inside build and release."""
    out = []
    for a, b in zip(small, full, strict=True):
        pairs = [(a.name, a.wall, b.wall)]
        sa, sb = a.extra.get("seconds", {}), b.extra.get("seconds", {})
        pairs += [(f"{a.name}: {k}", sa[k], sb[k]) for k in sb if k in sa]
        na, nb = a.samples or small[0].samples, b.samples or full[0].samples
        for name, wa, wb in pairs:
            if not na or not nb or wa <= 0:
                continue
            ratio = (wb / nb) / (wa / na)
            flag = "  <- grows worse than linearly" if ratio > SUPERLINEAR else ""
            out.append(f"{name:<22} {1000 * wa / na:8.2f} -> {1000 * wb / nb:8.2f} ms per sample  x{ratio:5.2f}{flag}")
    return out


def check_disk(root: Path, small: list[StageResult], samples: int, dist: bool) -> None:
    """Stop before the full run when the small run's disk per sample, scaled up, does not fit (with a
    tenth to spare): better than a full disk an hour in."""
    per_sample = sum(r.disk for r in small) / max(1, small[0].samples or 1)
    need, free = per_sample * samples, shutil.disk_usage(root).free
    print(f"disk: the full run needs about {need / GiB:.1f} GiB ({per_sample / 2**20:.2f} MiB per sample), "
          f"{free / GiB:.1f} GiB free", flush=True)
    if need > 0.9 * free:
        hint = "; --no-dist leaves out the dist/ tar shards (about half of a release)" if dist else ""
        raise SystemExit(f"not enough disk under {root} for {samples} samples{hint}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=REPO / "runs" / "paper-scale")
    ap.add_argument("--images", type=int, default=19992)
    ap.add_argument("--samples", type=int, default=24000, help="build --limit (the paper: about 24,000 pairs)")
    ap.add_argument("--small", type=int, default=None, help="samples of the linearity run (default: a tenth)")
    ap.add_argument("--no-small", action="store_true", help="skip the linearity run")
    ap.add_argument("--workers", type=int, default=2, help="processes of demo-source and of build")
    ap.add_argument("--runner", default="local")
    ap.add_argument("--keep", action="store_true", help="keep the work directories and releases")
    ap.add_argument("--dist", action=argparse.BooleanOptionalAction, default=True,
                    help="pack the release's dist/ tar shards (--no-dist: as many bytes fewer again)")
    args = ap.parse_args()
    root = args.root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               PREFECT_HOME=os.environ.get("PREFECT_HOME", str(root / ".prefect")))
    src, gen_seconds = ensure_source(root, args.images, 0, args.workers, env)
    counts = json.loads((src / "refcoco+" / "instances.json").read_text())
    n_images, n_anns = len(counts["images"]), len(counts["annotations"])
    load_avg = os.getloadavg()
    small: list[StageResult] = []
    if not args.no_small:
        small = pipeline("small", root, src, args.small or args.samples // 10, args, env)
        (root / "paper-scale-small.json").write_text(json.dumps([_row(r) for r in small], indent=2) + "\n")
        for part in ("work", "releases"):  # the full run needs the disk
            shutil.rmtree(root / f"small-{part}", ignore_errors=True)
        check_disk(root, small, args.samples, args.dist)
    t0 = time.perf_counter()
    full = pipeline("full", root, src, args.samples, args, env)
    whole = time.perf_counter() - t0
    load_after = os.getloadavg()

    lines = [f"paper scale: demo source {n_images} images, {n_anns} annotations"
             + (f" (generated in {gen_seconds / 60:.1f} min, --workers {args.workers})" if gen_seconds else " (reused)")
             + f"; build --limit {args.samples} --workers {args.workers} --runner {args.runner}; "
             + ("" if args.dist else "release --no-dist; ")
             + f"{os.cpu_count()} cores; load average {load_avg[0]:.1f} before, {load_after[0]:.1f} after", ""]
    lines += table(full)
    export = full[1].extra["seconds"].get("export")
    export_rate = full[1].samples / export if export else 0.0
    peak = max(r.peak_rss for r in full)
    lines += ["", f"whole run {whole / 60:.1f} min (goal < {GOAL_MINUTES:.0f}: {'met' if whole / 60 < GOAL_MINUTES else 'NOT met'}); "
              f"peak RSS {_gib(peak)} GiB (goal < 1.5 in every stage: {'met' if peak < GOAL_RSS else 'NOT met'}); "
              f"release export {export_rate:.0f} samples/s (goal >= {GOAL_EXPORT:.0f}: "
              f"{'met' if export_rate >= GOAL_EXPORT else 'NOT met'})"]
    if small:
        lines += ["", f"linearity: cost per sample at {full[0].samples} samples over {small[0].samples} samples"]
        lines += linearity(small, full)
    text = "\n".join(lines)
    print("\n" + text)
    (root / "paper-scale.md").write_text(text + "\n")
    (root / "paper-scale.json").write_text(json.dumps(
        {"small": [_row(r) for r in small], "full": [_row(r) for r in full], "whole_seconds": whole,
         "load_average": [load_avg, load_after], "source_seconds": gen_seconds}, indent=2) + "\n")
    if not args.keep:
        for part in ("work", "releases"):
            shutil.rmtree(root / f"full-{part}", ignore_errors=True)
    return 0


def _row(r: StageResult) -> dict:
    d = asdict(r)
    d.pop("output")
    return d


if __name__ == "__main__":
    sys.exit(main())
