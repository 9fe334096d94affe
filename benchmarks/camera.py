"""The camera step's CPU per object against a baseline revision's, in one run, on the same objects.

    python benchmarks/camera.py [--images 120] [--composites 40] [--rounds 3] [--baseline main]

The robust profile composes ``--composites`` composites of a demo source and records every call of
``match_camera`` (the harmonized object, its alpha, the background, the scene's camera and JPEG
estimate). The calls are then replayed, single-threaded, through this checkout's ``match_camera``
and through the baseline revision's (its ``comcoco/compose/camera.py`` and ``camera_estimate.py``
read with ``git show``, everything else shared), alternating, the fastest of ``--rounds`` passes
counting. It prints CPU ms per object of both, the difference and the ratio, the chroma low-pass σ
each chose, and how many objects came out with different bytes.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import subprocess
import sys
import tempfile
import time
import types
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def baseline_camera(rev: str, tmp: Path) -> types.ModuleType:
    """``comcoco.compose.camera`` as it is at ``rev``, importing its own estimators of that revision."""
    pkg = tmp / "camera_baseline"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for name in ("camera", "camera_estimate"):
        text = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:comcoco/compose/{name}.py"],
                              check=True, capture_output=True, text=True).stdout
        (pkg / f"{name}.py").write_text(text.replace("comcoco.compose.camera_estimate", "camera_baseline.camera_estimate"))
    sys.path.insert(0, str(tmp))
    spec = importlib.util.find_spec("camera_baseline.camera")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["camera_baseline.camera"] = mod
    spec.loader.exec_module(mod)
    return mod


def record_calls(images: int, composites: int, tmp: Path) -> list[tuple[tuple, dict]]:
    """Every ``match_camera`` call the robust profile makes composing the first composites of a demo source."""
    from comcoco.compose import (
        ComposeConfig,
        ComposeModels,
        ImageCache,
        SourceIndex,
        compose_group,
        plan_groups,
        robust,
    )
    from comcoco.compose.robust import SceneCache
    from comcoco.matching.scene import match_backgrounds
    from comcoco.sources.demo import generate_demo_source
    from comcoco.sources.refer import load_source

    src = load_source(generate_demo_source(tmp / "source", n_images=images, seed=0))
    index = SourceIndex.from_source(src)
    config = ComposeConfig(profile="robust")
    groups = plan_groups(match_backgrounds(src.refs(), src.annotations(), k=5, seed=0), index, config)[:composites]
    calls: list[tuple[tuple, dict]] = []
    original = robust.match_camera

    def recorded(*a, **k):
        calls.append((a[:4] + (copy.deepcopy(a[4]),) + a[5:], k))  # the generator's state before the call
        return original(*a, **k)

    robust.match_camera = recorded
    try:
        cache, scenes = ImageCache(index.image_path, maxsize=16), SceneCache()
        for g in groups:
            compose_group(g, cache, config, ComposeModels(), scenes=scenes)
    finally:
        robust.match_camera = original
    return calls


def replay(fn, calls: list[tuple[tuple, dict]]) -> tuple[float, list]:
    """(CPU seconds, results) of ``fn`` over the recorded calls, each with a fresh copy of its generator."""
    args = [(a[:4] + (copy.deepcopy(a[4]),) + a[5:], k) for a, k in calls]
    c0 = time.process_time()
    out = [fn(*a, **k) for a, k in args]
    return time.process_time() - c0, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=120)
    ap.add_argument("--composites", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--baseline", default="main", help="git revision of the baseline camera step")
    args = ap.parse_args()
    cv2.setNumThreads(1)
    from comcoco.compose import camera

    with tempfile.TemporaryDirectory(prefix="camera-bench-") as t:
        tmp = Path(t)
        base = baseline_camera(args.baseline, tmp)
        calls = record_calls(args.images, args.composites, tmp)
        best = {"baseline": float("inf"), "this": float("inf")}
        results: dict[str, list] = {}
        for _ in range(args.rounds):
            for label, fn in (("baseline", base.match_camera), ("this", camera.match_camera)):
                cpu, results[label] = replay(fn, calls)
                best[label] = min(best[label], cpu)
    n = len(calls)
    ms = {k: 1000 * v / n for k, v in best.items()}
    print(f"camera step: {n} objects of {args.composites} composites (demo source {args.images} images), "
          f"1 thread, best of {args.rounds}")
    print(f"  baseline {args.baseline}: {ms['baseline']:.2f} ms cpu per object")
    print(f"  this checkout: {ms['this']:.2f} ms cpu per object  (+{ms['this'] - ms['baseline']:.2f} ms, "
          f"{ms['this'] / ms['baseline']:.2f}x)")
    for label in ("baseline", "this"):
        sig = Counter(round(r.info.chroma_smoothing, 2) for r in results[label])
        print(f"  chroma low-pass σ, {label}: " + ", ".join(f"{s:g}: {c}" for s, c in sorted(sig.items())))
    same = sum(np.array_equal(a.rgb, b.rgb) and np.array_equal(a.alpha, b.alpha)
               for a, b in zip(results["baseline"], results["this"], strict=True))
    print(f"  objects with identical bytes: {same} of {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
