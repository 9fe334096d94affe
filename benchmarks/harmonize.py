"""Perturb-then-restore benchmark for the harmonization methods (no dataset or checkpoint needed).

Each real object (COCO val2017 fixtures, optionally objects of a generated demo source) is perturbed
with Harmonizer's training synthesis — random filter arguments U(−1, 1)·range, filters in reverse
order, applied to the object only — and then restored by each method from the composite and its
mask alone. Errors are measured against the unperturbed image on 0–255 values: fMSE (MSE over the
object's pixels) and PSNR over the whole image (data range 255). Seeded: the same options print the
same error numbers.

    python benchmarks/harmonize.py [--quick] [--trials T] [--demo N] [--seed S]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from comcoco.harmonize.filters import sample_synthesis_args, synthesize  # noqa: E402
from comcoco.harmonize.fit import harmonize  # noqa: E402
from comcoco.sources.images import annotation_mask, read_image  # noqa: E402

COCO_REAL = REPO.parent / "shared" / "fixtures" / "coco_real"
METHODS = ("none", "reinhard", "fit")
MIN_AREA = 400


@dataclass
class Scores:
    fmse: list[float] = field(default_factory=list)
    psnr: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)


def real_objects() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, image uint8, mask uint8 0/1) for every fixture annotation of usable size."""
    data = json.loads((COCO_REAL / "instances_val2017_subset.json").read_text())
    images = {im["id"]: im for im in data["images"]}
    cache: dict[int, np.ndarray] = {}
    out = []
    for ann in sorted(data["annotations"], key=lambda a: a["id"]):
        im = images[ann["image_id"]]
        if ann["image_id"] not in cache:
            cache[ann["image_id"]] = read_image(COCO_REAL / im["file_name"])
        mask = annotation_mask(ann["segmentation"], im["height"], im["width"])
        if int(mask.sum()) >= MIN_AREA:
            out.append((f"coco:{ann['id']}", cache[ann["image_id"]], mask))
    return out


def demo_objects(n_images: int, seed: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Referred objects of a generated demo source (one per ref, usable size only)."""
    try:
        from comcoco.sources.demo import generate_demo_source
        from comcoco.sources.refer import load_source
    except ImportError as exc:
        print(f"demo source unavailable ({exc}); skipping --demo", file=sys.stderr)
        return []
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        root = generate_demo_source(Path(tmp) / "demo", n_images=n_images, seed=seed)
        src = load_source(root)
        seen: set[int] = set()
        for ref in sorted(src.refs(), key=lambda r: r.ref_id):
            if ref.ann_id in seen:
                continue
            seen.add(ref.ann_id)
            ann = src.annotation(ref.ann_id)
            info = src.image(ref.image_id)
            mask = annotation_mask(ann.segmentation, info.height, info.width)
            if int(mask.sum()) >= MIN_AREA:
                out.append((f"demo:{ann.ann_id}", read_image(src.image_path(ref.image_id)), mask))
    return out


def run(objects, trials: int, seed: int) -> tuple[dict[str, Scores], list[float]]:
    """Scores per method, and the time of a JPEG q90 encode of each composite (the cost baseline)."""
    scores = {m: Scores() for m in METHODS}
    encode: list[float] = []
    rng = np.random.default_rng(seed)
    for _name, image, mask in objects:
        base = image.astype(np.float32) / 255.0
        fg = mask.astype(bool)
        for _ in range(trials):
            args = sample_synthesis_args(rng)
            comp = np.clip(np.rint(synthesize(base, mask, args) * 255.0), 0, 255).astype(np.uint8)
            t0 = time.perf_counter()
            cv2.imencode(".jpg", comp, [cv2.IMWRITE_JPEG_QUALITY, 90])
            encode.append(time.perf_counter() - t0)
            for method in METHODS:
                t0 = time.perf_counter()
                restored, _ = harmonize(comp, mask, method)
                scores[method].seconds.append(time.perf_counter() - t0)
                diff = restored.astype(np.float64) - image.astype(np.float64)
                mse = float(np.mean(diff**2))
                scores[method].fmse.append(float(np.mean(diff[fg] ** 2)))
                scores[method].psnr.append(10.0 * np.log10(255.0**2 / max(mse, 1e-10)))
    return scores, encode


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 perturbations per object")
    ap.add_argument("--trials", type=int, default=8, help="perturbations per object")
    ap.add_argument(
        "--demo", type=int, default=0, metavar="N", help="also use objects of an N-image demo source"
    )
    ap.add_argument("--seed", type=int, default=0)
    ns = ap.parse_args(argv)
    trials = 2 if ns.quick else ns.trials
    objects = real_objects()
    n_real = len(objects)
    if ns.demo > 0:
        objects += demo_objects(ns.demo, ns.seed)
    print(
        f"objects: {n_real} real COCO + {len(objects) - n_real} demo; {trials} perturbations each; seed {ns.seed}"
    )
    cv2.setNumThreads(1)
    scores, encode = run(objects, trials, ns.seed)
    enc = float(np.median(encode))
    print(
        f"{'method':<10} {'mean fMSE':>10} {'mean PSNR':>10} {'ms/object':>10} {'p90 ms':>8} {'x JPEG enc':>10}"
    )
    for m in METHODS:
        s = scores[m]
        med, p90 = np.median(s.seconds), np.percentile(s.seconds, 90)
        print(
            f"{m:<10} {np.mean(s.fmse):>10.1f} {np.mean(s.psnr):>10.2f} {1e3 * med:>10.2f} {1e3 * p90:>8.2f}"
            f" {med / enc:>10.2f}"
        )
    print(f"baseline: JPEG q90 encode of the composite, median {1e3 * enc:.2f} ms")
    fit, none, rein = scores["fit"], scores["none"], scores["reinhard"]
    f = np.asarray(fit.fmse)
    print(f"fMSE ratio fit/none     = {np.mean(fit.fmse) / np.mean(none.fmse):.3f}")
    print(f"fMSE ratio fit/reinhard = {np.mean(fit.fmse) / np.mean(rein.fmse):.3f}")
    print(f"PSNR gain fit-none      = {np.mean(fit.psnr) - np.mean(none.psnr):+.2f} dB")
    print(f"PSNR gain fit-reinhard  = {np.mean(fit.psnr) - np.mean(rein.psnr):+.2f} dB")
    print(f"fit better than none on {np.mean(f < np.asarray(none.fmse)):.0%} of samples (fMSE)")
    print(f"fit better than reinhard on {np.mean(f < np.asarray(rein.fmse)):.0%} of samples (fMSE)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
