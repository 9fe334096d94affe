"""SAHM cost benchmark: parameters, FLOPs, and the CPU train step split into data loading and model step.

    python benchmarks/sahm.py [--quick] [--release RELEASE]

1. Parameters and generator-forward FLOPs beside the paper's numbers (torch's FlopCounterMode: 2 FLOPs
   per multiply-accumulate for matmul and conv; grid_sample and elementwise ops are not counted).
2. The bound: a large fp32 ``torch.matmul`` (2048³) on this machine, in this run, in FLOP/s, measured again
   at each row's thread count.
3. For tiny 64² (batch 4; with the one thread a run uses, and with every core) and paper 224² and 480²
   (batch 1): data loading per step — reading a batch of
   real release items (decode, downscale, crop, flip, resize) uncached and cached, and the collate
   (tokenizing) — then the model step (G forward and backward, D step, both AdamW updates) on that
   batch: time, counted FLOPs, achieved FLOP/s as a share of the matmul bound, operations dispatched
   and the share of the step spent outside them (Python, module calls, autograd bookkeeping), from
   torch's profiler; for paper 480² also the peak of live tensor memory.

Without ``--release`` a small release is built first from a generated demo source (about a minute).
``--quick`` skips the paper configuration's train steps (480² takes minutes on two cores).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from comcoco.sahm import build_discriminator, build_generator, get_config  # noqa: E402
from comcoco.sahm.data import ReleaseSamples, make_collate  # noqa: E402
from comcoco.sahm.distributed import cpu_threads  # noqa: E402
from comcoco.sahm.model import count_parameters, parameter_breakdown  # noqa: E402
from comcoco.sahm.preflight import LiveTensorBytes, _state_tensors  # noqa: E402
from comcoco.sahm.runfiles import Runtime  # noqa: E402
from comcoco.sahm.text import train_tokenizer  # noqa: E402
from comcoco.sahm.train import Trainer  # noqa: E402

PAPER_PARAMS_M = 42.0
PAPER_GFLOPS = 10.42
GIB = 2**30


def count_flops(cfg, size: int, text_len: int = 20) -> int:
    g = build_generator(cfg).eval()
    x = torch.rand(1, 3, size, size)
    ids = torch.randint(5, 1000, (1, text_len))
    am = torch.ones(1, text_len, dtype=torch.long)
    tags = torch.zeros(1, text_len, dtype=torch.long)
    tags[0, 2], tags[0, 4] = 1, 2
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        g(x, ids, am, tags)
    return counter.get_total_flops()


def matmul_bound(n: int = 2048, reps: int = 5) -> float:
    """FLOP/s of an n×n fp32 matmul on this machine now (best of ``reps``: contention only slows it)."""
    a, b = torch.rand(n, n), torch.rand(n, n)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def demo_release(root: Path) -> Path:
    """A small release of the demo source (24 images), built inline: real PNGs, real expressions."""
    from comcoco.build import build_inline
    from comcoco.plan import BuildConfig, SourceSpec
    from comcoco.release.builder import ReleaseOptions, build_release
    from comcoco.sources.demo import generate_demo_source

    src = generate_demo_source(root / "source", n_images=24, seed=0)
    build_inline(SourceSpec(root=str(src)), root / "work", BuildConfig(limit=24, shard_size=12, seed=0))
    return build_release(root / "work", root / "releases", "1.0.0",
                         ReleaseOptions(proportions={"train": 8, "val": 1, "test": 1}))


def loading(release: Path, size: int, batch: int, collate, n: int) -> dict[str, float]:
    """Seconds per batch: items read uncached (first epoch), items from the cache, and the collate."""
    cold = ReleaseSamples(release, "train", size, True, cache_mb=0)
    warm = ReleaseSamples(release, "train", size, True, cache_mb=1024)
    idx = [list(range(i * batch, (i + 1) * batch)) for i in range(n)]
    for b in idx:
        [warm[i] for i in b]  # fill the cache
    out = {}
    for name, ds in (("uncached", cold), ("cached", warm)):
        t = time.perf_counter()
        for b in idx:
            items = [ds[i] for i in b]
        out[name] = (time.perf_counter() - t) / n
    t = time.perf_counter()
    for b in idx:
        collate([warm[i] for i in b])
    out["collate"] = (time.perf_counter() - t) / n - out["cached"]
    out["batch"] = collate(items)
    return out


def model_step(trainer: Trainer, batch: dict, timed: int, peak: bool) -> dict[str, float]:
    """One warm-up step counts FLOPs; the next counts the operations dispatched (and the peak of live tensor
    memory); then ``timed`` clean steps and one under torch's profiler, which gives the share of a step
    spent outside operators. The step time is the median of the clean and the profiled steps."""
    counter = FlopCounterMode(display=False)
    with counter:
        trainer.train_step(batch)
    out: dict[str, float] = {"flops": counter.get_total_flops()}
    tracker = LiveTensorBytes(torch.device("cpu"), _state_tensors(trainer, batch))
    with tracker:
        trainer.train_step(batch)
    out["ops"], out["peak"] = tracker.ops, tracker.peak
    del tracker
    times = []
    for _ in range(timed):
        t = time.perf_counter()
        trainer.train_step(batch)
        times.append(time.perf_counter() - t)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t = time.perf_counter()
        trainer.train_step(batch)
        wall = time.perf_counter() - t
    # top-level events only: an operator's own dispatches are inside its time
    inside = sum(e.time_range.elapsed_us() for e in prof.events() if e.cpu_parent is None)
    out["outside_share"] = max(0.0, 1 - inside / 1e6 / wall)
    out["seconds"] = statistics.median(times + [wall])
    return out


def step_table(release: Path, quick: bool) -> None:
    """One row per configuration, run with the threads a training run would use (``cpu_threads``); the
    tiny model once more with every core, for the ratio. Each row's bound is the matmul rate at its threads."""
    cores = torch.get_num_threads()
    rows = [("tiny", 64, 4, 5, None), ("tiny", 64, 4, 3, cores)]
    rows += [] if quick else [("paper", 224, 1, 2, None), ("paper", 480, 1, 0, None)]
    emit(f"  {'config':<12} {'threads':>7} {'batch':>5} {'load uncached':>14} {'cached':>8} {'collate':>8} "
             f"{'model step':>11} {'GFLOPs':>8} {'GFLOP/s':>8} {'matmul':>7} {'share':>6} {'ops':>7} {'outside ops':>11}")
    with tempfile.TemporaryDirectory() as tmp:
        probe = ReleaseSamples(release, "train", 64, False)
        tok = train_tokenizer(probe.expressions(), Path(tmp) / "tok", vocab_size=400)
        for name, size, batch, timed, threads in rows:
            window = {224: 7, 480: 8}.get(size)
            cfg = get_config(name, image_size=size, **({"swin_window": window} if window else {}))
            collate = make_collate(tok, cfg.max_text_len, probe.category_names())
            with cpu_threads(Runtime(threads=threads), "cpu", size) as n_threads:
                bound = matmul_bound()
                load = loading(release, size, batch, collate, n=4 if size < 256 else 2)
                tr = Trainer(cfg, tok, device="cpu", seed=0)
                m = model_step(tr, load["batch"], timed, peak=size == 480)
            rate = m["flops"] / m["seconds"]
            emit(
                f"  {f'{name} {size}²':<12} {n_threads:>7} {batch:>5} {load['uncached']:>12.3f} s "
                f"{load['cached']:>6.3f} s {load['collate']:>6.3f} s {m['seconds']:>9.3f} s {m['flops'] / 1e9:>8.1f} "
                f"{rate / 1e9:>8.1f} {bound / 1e9:>7.1f} {rate / bound:>6.3f} {int(m['ops']):>7} "
                f"{m['outside_share']:>10.0%}")
            if size == 480:
                emit(f"  {'':<12} paper 480² batch 1: peak of live tensor memory {m['peak'] / GIB:.2f} GiB "
                             f"(weights, gradients, AdamW moments, batch and the step's tensors)")
            if name == "tiny" and threads is None:
                with cpu_threads(Runtime(), "cpu", size):
                    for line in precision_lines(cfg, tok, load["batch"], m["seconds"]):
                        emit(line)
            del tr


def emit(line: str) -> None:
    print(line, flush=True)


def precision_lines(cfg, tok, batch: dict, fp32_seconds: float) -> list[str]:
    """The tiny model's step in bf16 and fp16 autocast against fp32 (CPUs without native 16-bit
    convolutions emulate them)."""
    out = []
    for precision in ("bf16", "fp16"):
        tr = Trainer(cfg, tok, device="cpu", seed=0, precision=precision)
        tr.train_step(batch)
        times = []
        for _ in range(3):
            t = time.perf_counter()
            tr.train_step(batch)
            times.append(time.perf_counter() - t)
        out.append(f"  {'':<12} tiny 64² {precision} autocast: {statistics.median(times):.3f} s per step "
                   f"(ratio to fp32 {statistics.median(times) / fp32_seconds:.2f})")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="skip the paper configuration's train steps")
    ap.add_argument("--release", type=Path, help="a built release to read items from (default: build a small one)")
    args = ap.parse_args()
    torch.manual_seed(0)

    paper = get_config("paper")
    g = build_generator(paper)
    n_g, n_d = count_parameters(g), count_parameters(build_discriminator(paper))
    print("== parameters (paper config) ==")
    for part, n in parameter_breakdown(g).items():
        print(f"  {part:<14} {n / 1e6:7.2f} M")
    print(f"  generator      {n_g / 1e6:7.2f} M   (paper 42 M; ratio {n_g / 1e6 / PAPER_PARAMS_M:.3f})")
    print(f"  PatchGAN D     {n_d / 1e6:7.2f} M")
    del g

    print("== compute, generator forward, batch 1, 20 text tokens (grid_sample not counted) ==")
    for size, window in ((224, 7), (480, 8)):
        cfg = get_config("paper", image_size=size, swin_window=window)
        flops = count_flops(cfg, size)
        gmacs = flops / 2e9
        print(
            f"  {size}² window {window}: {flops / 1e9:7.2f} GFLOPs = {gmacs:6.2f} GMACs"
            f"   (paper 10.42 'B FLOPs'; GMACs ratio {gmacs / PAPER_GFLOPS:.3f}, GFLOPs ratio"
            f" {flops / 1e9 / PAPER_GFLOPS:.3f})"
        )

    bound = matmul_bound()
    load = os.getloadavg()[0]
    print(f"== bound: fp32 torch.matmul 2048³, {torch.get_num_threads()} threads: {bound / 1e9:.1f} GFLOP/s "
          f"(load average {load:.1f} on {os.cpu_count()} CPUs) ==")
    with tempfile.TemporaryDirectory() as tmp:
        if args.release is None:
            t = time.perf_counter()
            release = demo_release(Path(tmp))
            print(f"  (built a {len(ReleaseSamples(release, 'train', 64, False))}-item demo release in "
                  f"{time.perf_counter() - t:.0f} s to read items from)")
        else:
            release = args.release
        print("== CPU train step: data loading per batch, then the model step (fp32) ==")
        step_table(release, args.quick)
    print("  load: reading the batch's items (uncached: decode PNGs; cached: crop, flip, resize); collate:"
          " tokenizing and stacking. model step: G fwd+bwd, D step, AdamW; GFLOP/s counted FLOPs per second,"
          " 'of matmul' its share of the bound above; 'outside ops' the share of a step not inside any"
          " operator (Python, module calls, autograd bookkeeping; profiled step); matmul: the bound at the"
          " row's threads, share: GFLOP/s / matmul")
    print(f"  matmul bound re-measured at the end: {matmul_bound() / 1e9:.1f} GFLOP/s "
          f"(load average {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
