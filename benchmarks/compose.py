"""Compose throughput against the codec bound, for the old and the new lossless writer, in one run.

Codec bound: per composite, decode the background and each object's source file and encode what the
writer writes — the composite, and per sample its ground truth, mask and (robust) effect mask — with
the encoder's settings: the work no compositor can skip. Full path: ``compose_group`` + ``write_group``
(decode, placement, cut, paste, harmonize, the robust steps, encode, write). Everything runs
single-threaded in this process (cv2 and torch limited to one thread), so CPU seconds per sample give
samples/s per core; rounds alternate every measurement and the best round of each counts, which keeps
the ratios meaningful on a busy machine.

The old writer is ``--encoder opencv`` (libpng at zlib level 1, what every build wrote before encoders
could be chosen, and still the paper profile's default, which writes those bytes), the new one
``fpng`` (the robust profile's default); each full path is printed against both bounds, and the fpng
full path against the opencv full path on the same samples (goal: 2.5x, set on the paper recipe's
path, the only one when the writer was chosen). A third
writer that costs nothing (``encode_image`` replaced by one returning no bytes; the files are still
written, empty) gives the most any writer can give a profile: the full path without encoding, against
the opencv path (Amdahl's limit of the goal's ratio).

"no cache" disables the decoded-image LRU, the shared ground-truth encode and the robust profile's
per-background scene cache (apples to apples with the bound); "run cache" is what ``run_compose`` and
the shards do (backgrounds reused across samples). For the robust profile a last line gives the CPU ms per
sample of each robust step (scene measurement, matte, harmonize, camera, shadow, JPEG regrid) and of the
rest of the path, from extra no-cache passes over the same samples with those steps timed.

    python benchmarks/compose.py [--quick] [--images 48] [--composites 40] [--rounds 3]
                                 [--profile robust paper] [--decoys N]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import cv2

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
from comcoco.compose.robust import SceneCache  # noqa: E402
from comcoco.compose.writer import BytesLRU as _BytesLRU  # noqa: E402
from comcoco.config import default_encoder  # noqa: E402

GOAL = 2.5  # the new writer's full path against the old writer's, samples/s/core


def _timed(fn) -> tuple[float, float]:
    """(cpu seconds, wall seconds) of fn()."""
    c0, w0 = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - c0, time.perf_counter() - w0


def codec_bound(groups, index: SourceIndex, config: ComposeConfig, masks: dict[str, tuple]) -> None:
    """Decode what a composite reads and encode what it writes (the background stands in for the images)."""
    for g in groups:
        bg = decode_image(index.image_path(g.bg_image_id))
        encode_image(bg, config)  # the composite (same size and content class)
        for m in g.members:
            decode_image(index.image_path(m.fg_image.image_id))
            encode_image(bg, config)  # its ground truth
            for mask in masks[m.sample_id]:  # its mask and effect mask
                encode_image(mask, config)


@contextmanager
def free_writer():
    """The writer's encoding made free for the block: ``write_group`` writes empty files."""
    from comcoco.compose import writer

    real = writer.encode_image
    writer.encode_image = lambda rgb, config: b""
    try:
        yield
    finally:
        writer.encode_image = real


def full_path(groups, index: SourceIndex, config: ComposeConfig, out: Path, cached: bool) -> list:
    cache = ImageCache(index.image_path, maxsize=16 if cached else 0)
    encoded = _BytesLRU() if cached else None
    models = ComposeModels()
    scenes = SceneCache() if cached else None
    rows = []
    for g in groups:
        rows += write_group(out, compose_group(g, cache, config, models, scenes=scenes), config, encoded)
    return rows


# the robust profile's per-target steps, by the names ``comcoco.compose.robust`` calls them through
ROBUST_STEPS = {"scene (per composite)": ("measure_scene",), "matte": ("refine_cutout",),
                "harmonize": ("harmonized_colours",), "camera": ("match_camera",), "rim": ("source_rim", "match_rim"),
                "shadow": ("template_shadow", "cast_shadow", "apply_shadow"), "jpeg regrid": ("jpeg_regrid",)}


def robust_steps(groups, index: SourceIndex, config: ComposeConfig, out: Path, rounds: int) -> tuple[float, dict]:
    """CPU seconds of the full path (no cache) and of each robust step in it, from the fastest of ``rounds``
    passes: each step's functions are wrapped with a CPU timer for these passes only."""
    from comcoco.compose import robust

    spent: dict[str, float] = {}

    def timed(label: str, fn):
        def run(*a, **k):
            c0 = time.process_time()
            try:
                return fn(*a, **k)
            finally:
                spent[label] = spent.get(label, 0.0) + time.process_time() - c0
        return run

    originals = {name: getattr(robust, name) for names in ROBUST_STEPS.values() for name in names}
    best: tuple[float, dict] = (float("inf"), {})
    try:
        for label, names in ROBUST_STEPS.items():
            for name in names:
                setattr(robust, name, timed(label, originals[name]))
        for _ in range(rounds):
            spent.clear()
            cpu, _ = _timed(lambda: full_path(groups, index, config, out, cached=False))
            shutil.rmtree(out, ignore_errors=True)
            if cpu < best[0]:
                best = (cpu, dict(spent))
    finally:
        for name, fn in originals.items():
            setattr(robust, name, fn)
    return best


def _print_steps(total: float, steps: dict, n: int) -> None:
    parts = "  ".join(f"{k} {1000 * steps.get(k, 0.0) / n:.1f}" for k in ROBUST_STEPS)
    rest = total - sum(steps.values())
    print(f"robust steps, ms cpu per sample (no cache, fpng): {parts}  | rest of the path {1000 * rest / n:.1f}"
          f"  | total {1000 * total / n:.1f}")


def _best(best: dict, key, cpu: float, wall: float) -> None:
    prev = best.get(key, (float("inf"), float("inf")))
    best[key] = (min(prev[0], cpu), min(prev[1], wall))


def measure_profile(index: SourceIndex, cands, profile: str, args, tmp: Path) -> int:
    """Bounds and full paths of one profile, every writer, best of ``args.rounds`` alternating rounds."""
    encoders = ("opencv", "fpng")  # old, new
    base = ComposeConfig(profile=profile, decoys=args.decoys)
    # One list for everything: composites whose samples were all ok in a first (warm-up) pass.
    groups = plan_groups(cands, index, base)
    warm = full_path(groups, index, base, tmp / "warm", cached=True)
    ok_ids = {r.sample_id for r in warm if r.ok}
    groups = [g for g in groups if all(m.sample_id in ok_ids for m in g.members)][: args.composites]
    if not groups:
        print("no composable samples in the demo source", file=sys.stderr)
        return 1
    n = sum(len(g.members) for g in groups)
    masks = {r.sample_id: tuple(cv2.imread(str(tmp / "warm" / p), cv2.IMREAD_GRAYSCALE)
                                for p in (r.mask, r.effect_mask) if p) for r in warm if r.ok}
    shutil.rmtree(tmp / "warm", ignore_errors=True)
    bgs = len({g.bg_image_id for g in groups})
    decoys = sum(len(g.decoys) for g in groups)
    print(f"compose benchmark: demo source {args.images} images, profile {profile}, {n} samples in "
          f"{len(groups)} composites on {bgs} backgrounds ({decoys} decoys planned), 1 thread, best of "
          f"{args.rounds} round(s)")
    best: dict = {}
    for _ in range(args.rounds):
        for enc in encoders:
            cfg = replace(base, encoder=enc)
            _best(best, ("bound", enc), *_timed(lambda cfg=cfg: codec_bound(groups, index, cfg, masks)))
            for method in args.harmonize:
                for cached in (False, True):
                    cfg = replace(base, encoder=enc, harmonize=method)
                    out = tmp / f"out-{enc}-{method}-{cached}"
                    _best(best, (enc, method, cached), *_timed(
                        lambda cfg=cfg, out=out, cached=cached: full_path(groups, index, cfg, out, cached)))
                    sizes = [f.stat().st_size for f in out.rglob("*.png")]
                    best[("size", enc)] = sum(sizes) / n
                    shutil.rmtree(out, ignore_errors=True)
        free = tmp / "out-free"
        with free_writer():  # the default path (fit, no cache) with encoding free
            _best(best, "free", *_timed(lambda free=free: full_path(groups, index, replace(base, encoder="fpng"), free, False)))
        shutil.rmtree(free, ignore_errors=True)
    bound = {enc: n / best[("bound", enc)][0] for enc in encoders}
    default = default_encoder(profile)
    names = {enc: f"{enc}{' L1' if enc == 'opencv' else ''} ({'old' if enc == 'opencv' else 'new'}"
                  f"{', default' if enc == default else ''})" for enc in encoders}
    for enc in encoders:
        c, w = best[("bound", enc)]
        print(f"codec bound, {names[enc]:<22}{bound[enc]:8.1f} samples/s/core   ({1000 * c / n:6.1f} ms cpu, "
              f"{1000 * w / n:6.1f} ms wall per sample; {best[('size', enc)] / 1024:6.0f} KiB of PNG per sample)")
    print(f"codec bound, new/old: {bound['fpng'] / bound['opencv']:.2f}x")
    for method in args.harmonize:
        for cached in (False, True):
            rates = {}
            for enc in encoders:
                c, w = best[(enc, method, cached)]
                rates[enc] = n / c
                label = f"--harmonize {method} --encoder {enc} ({'run cache' if cached else 'no cache'})"
                print(f"{label:<46}{rates[enc]:7.1f} samples/s/core   of old bound {rates[enc] / bound['opencv']:5.2f}"
                      f"   of new bound {rates[enc] / bound['fpng']:5.2f}   ({1000 * c / n:6.1f} ms cpu, "
                      f"{1000 * w / n:6.1f} ms wall)")
            gain = rates["fpng"] / rates["opencv"]
            goal = method == "fit" and not cached
            flag = f"  (goal >= {GOAL:.1f}x: {'met' if gain >= GOAL else 'NOT met'})" if goal else ""
            print(f"  fpng full path / opencv full path: {gain:.2f}x{flag}")
            if goal:
                c, w = best["free"]
                limit = (n / c) / rates["opencv"]
                share = (gain - 1.0) / (limit - 1.0) if limit > 1.0 else float("nan")
                print(f"  a writer that cost nothing: {n / c:.1f} samples/s/core ({1000 * c / n:.1f} ms cpu): the most any "
                      f"writer gives this path is {limit:.2f}x; fpng gives {share:.0%} of that gain")
    if base.robust:
        _print_steps(*robust_steps(groups, index, replace(base, encoder="fpng"), tmp / "steps", args.rounds), n)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small run (16 images, 8 composites, 1 round)")
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--composites", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--profile", nargs="+", default=["robust", "paper"], choices=["robust", "paper"],
                    help="profiles to measure, one after the other (default: both)")
    ap.add_argument("--harmonize", nargs="+", default=["fit"])
    ap.add_argument("--decoys", type=int, default=None, help="look-alikes per target (default: the profile's)")
    args = ap.parse_args()
    if args.quick:
        args.images, args.composites, args.rounds = 16, 8, 1

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
        status = 0
        for k, profile in enumerate(args.profile):
            if k:
                print()
            status = max(status, measure_profile(index, cands, profile, args, tmp))
        return status
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
