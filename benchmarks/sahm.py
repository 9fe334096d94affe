"""SAHM cost benchmark: parameters, MACs/FLOPs and CPU train-step time beside the paper's numbers.

    python benchmarks/sahm.py [--quick]

FLOPs are counted by torch's FlopCounterMode (2 FLOPs per multiply-accumulate for matmul and conv);
MACs = FLOPs / 2. grid_sample (the deformable conv's sampling) and elementwise ops are not counted.
The paper reports 42 M parameters and "10.42 B FLOPs", which matches GMACs at 224² (see docs/sahm.md).
--quick skips the paper-config train step.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from comcoco.sahm import build_discriminator, build_generator, get_config  # noqa: E402
from comcoco.sahm.model import count_parameters, parameter_breakdown  # noqa: E402
from comcoco.sahm.synthetic import SyntheticRemovalDataset  # noqa: E402
from comcoco.sahm.text import train_tokenizer  # noqa: E402
from comcoco.sahm.train import Trainer  # noqa: E402

PAPER_PARAMS_M = 42.0
PAPER_GFLOPS = 10.42


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


def step_times(trainer: Trainer, batch, n: int) -> list[float]:
    trainer.train_step(batch)  # warm-up
    out = []
    for _ in range(n):
        t = time.perf_counter()
        trainer.train_step(batch)
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="skip the paper-config train step")
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

    print(f"== CPU train step (G fwd+bwd, D step, AdamW), {torch.get_num_threads()} threads ==")
    with tempfile.TemporaryDirectory() as tmp:
        ds = SyntheticRemovalDataset(8, 64)
        tok = train_tokenizer(ds.expressions() * 4, Path(tmp) / "tok", vocab_size=200)
        for size in (64, 128):
            dsz = SyntheticRemovalDataset(4, size)
            tr = Trainer(get_config("tiny", image_size=size), tok, seed=0)
            batch = tr.collate([dsz[i] for i in range(4)])
            ts = step_times(tr, batch, 5)
            print(f"  tiny {size}², batch 4: median {statistics.median(ts):.3f} s, min {min(ts):.3f} s")
        print("== CPU train step by precision (tiny 64², batch 4; bf16/fp16 autocast, fp16 with a scaler) ==")
        dsz = SyntheticRemovalDataset(4, 64)
        base = None
        for precision in ("fp32", "bf16", "fp16"):
            tr = Trainer(get_config("tiny"), tok, seed=0, precision=precision)
            ts = step_times(tr, tr.collate([dsz[i] for i in range(4)]), 3)
            base = base or statistics.median(ts)
            print(f"  {precision}: median {statistics.median(ts):.3f} s  (ratio to fp32 "
                  f"{statistics.median(ts) / base:.2f}; CPUs without native bf16/fp16 convolutions emulate them)")
        if not args.quick:
            cfg = get_config("paper", image_size=224, swin_window=7)
            tr = Trainer(cfg, tok, seed=0)
            dsz = SyntheticRemovalDataset(1, 224)
            batch = tr.collate([dsz[0]])
            ts = step_times(tr, batch, 1)
            print(f"  paper 224², batch 1: {ts[0]:.2f} s per step")
        print("  (the paper trained on 4× V100; CPU steps are for smoke runs only)")


if __name__ == "__main__":
    main()
