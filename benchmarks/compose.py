"""Compose throughput against the codec bound, measured in one run on the same samples.

Codec bound: per sample, decode the source and background files and encode the composite, ground
truth and mask with the output settings (PNG level 1 by default) - the work no compositor can skip.
Full path: ``compose_group`` + ``write_group`` per sample (decode, placement, cut, paste, harmonize,
encode, write). Both run single-threaded in this process (cv2 and torch limited to one thread), so
CPU seconds per sample give samples/s per core; rounds alternate bound and full path and the best
round of each counts, which keeps the ratio meaningful on a busy machine.

"no cache" disables the decoded-image LRU and the shared ground-truth encode (apples to apples with
the bound); "run cache" is what ``run_compose`` does (backgrounds reused across samples).

    python benchmarks/compose.py [--quick] [--images 48] [--samples 60] [--rounds 3]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from comcoco.compose import (  # noqa: E402
    ComposeConfig,
    ComposeModels,
    ImageCache,
    SourceIndex,
    compose_group,
    decode_image,
    encode_image,
    plan_groups,
    write_group,
)
from comcoco.compose.writer import BytesLRU as _BytesLRU  # noqa: E402

TARGET = 0.5


def _timed(fn) -> tuple[float, float]:
    """(cpu seconds, wall seconds) of fn()."""
    c0, w0 = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - c0, time.perf_counter() - w0


def codec_bound(groups, index: SourceIndex, config: ComposeConfig, masks: dict[str, np.ndarray]) -> None:
    for g in groups:
        m = g.members[0]
        fg = decode_image(index.image_path(m.fg_image.image_id))
        bg = decode_image(index.image_path(g.bg_image_id))
        del fg
        encode_image(bg, config)  # the composite (same size and content class)
        encode_image(bg, config)  # the ground truth
        encode_image(masks[m.sample_id], config)


def full_path(groups, index: SourceIndex, config: ComposeConfig, out: Path, cached: bool) -> list:
    cache = ImageCache(index.image_path, maxsize=16 if cached else 0)
    encoded = _BytesLRU() if cached else None
    models = ComposeModels()
    rows = []
    for g in groups:
        rows += write_group(out, compose_group(g, cache, config, models), config, encoded)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small run (16 images, 12 samples, 1 round)")
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--samples", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--harmonize", nargs="+", default=["fit", "none"])
    args = ap.parse_args()
    if args.quick:
        args.images, args.samples, args.rounds = 16, 12, 1

    cv2.setNumThreads(1)
    import torch

    torch.set_num_threads(1)
    from comcoco.matching.scene import match_backgrounds
    from comcoco.sources.demo import generate_demo_source
    from comcoco.sources.refer import load_source

    tmp = Path(tempfile.mkdtemp(prefix="compose-bench-"))
    try:
        src = load_source(generate_demo_source(tmp / "source", n_images=args.images, seed=0))
        index = SourceIndex.from_source(src)
        cands = match_backgrounds(src.refs(), src.annotations(), k=5, seed=0)
        base = ComposeConfig()
        # One sample list for everything: the ok samples of a first (warm-up) pass, best candidates first.
        groups = plan_groups(cands, index, base)
        warm = full_path(groups, index, base, tmp / "warm", cached=True)
        ok_ids = {r.sample_id for r in warm if r.ok}
        groups = [g for g in groups if g.members[0].sample_id in ok_ids][: args.samples]
        if not groups:
            print("no composable samples in the demo source", file=sys.stderr)
            return 1
        n = len(groups)
        masks = {
            r.sample_id: cv2.imread(str(tmp / "warm" / r.mask), cv2.IMREAD_GRAYSCALE) for r in warm if r.ok
        }
        bgs = len({g.bg_image_id for g in groups})
        print(
            f"compose benchmark: demo source {args.images} images, {n} samples on {bgs} backgrounds, "
            f"PNG level {base.png_compression}, 1 thread, best of {args.rounds} round(s)"
        )
        bound_cpu = bound_wall = float("inf")
        best: dict[tuple[str, bool], tuple[float, float]] = {}
        for _ in range(args.rounds):
            c, w = _timed(lambda: codec_bound(groups, index, base, masks))
            bound_cpu, bound_wall = min(bound_cpu, c), min(bound_wall, w)
            for method in args.harmonize:
                cfg = ComposeConfig(harmonize=method)
                for cached in (False, True):
                    out = tmp / f"out-{method}-{cached}"
                    c, w = _timed(lambda cfg=cfg, out=out, cached=cached: full_path(groups, index, cfg, out, cached))
                    shutil.rmtree(out, ignore_errors=True)
                    prev = best.get((method, cached), (float("inf"), float("inf")))
                    best[(method, cached)] = (min(prev[0], c), min(prev[1], w))
        rate_bound = n / bound_cpu
        print(f"{'codec bound':<36}{rate_bound:8.1f} samples/s/core   ({1000 * bound_cpu / n:6.1f} ms cpu, "
              f"{1000 * bound_wall / n:6.1f} ms wall per sample)")
        for method in args.harmonize:
            for cached in (False, True):
                c, w = best[(method, cached)]
                rate = n / c
                ratio = rate / rate_bound
                label = f"--harmonize {method} ({'run cache' if cached else 'no cache'})"
                flag = ""
                if method == "fit" and not cached:
                    flag = f"  (target >= {TARGET:.2f}: {'met' if ratio >= TARGET else 'NOT met'})"
                print(f"{label:<36}{rate:8.1f} samples/s/core   ratio to bound {ratio:5.2f}   "
                      f"({1000 * c / n:6.1f} ms cpu, {1000 * w / n:6.1f} ms wall){flag}")
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
