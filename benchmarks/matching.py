"""Loading and matching a RefCOCO+-size source: each against its straightforward baseline.

Generates a RefCOCO+-shaped REFER source (no image files): 19,992 images, 49,856 refs, 141,564
expressions, a Zipf vocabulary of about 10k words, a RefCOCO+-like category mix (about half
persons), about 10 annotations per image with COCO-like polygons (about 25 points; 1 % crowd RLE),
written with ``write_source`` as ``refs(unc).p`` + ``instances.json``.

Load: ``load_source`` in fresh child processes, each reporting wall and CPU seconds and its peak
RSS: from the files with the index cache off, from the files while writing the cache, and from the
cache. The baseline is the one-record-at-a-time loader the fast paths stand in for (restricted
unpickling and a depth-first plain-data walk, stdlib json, per-record parsing, REFER's index
built eagerly, collector on), run in a child on the same files.

Match: the vectorised matcher on the loaded records (in the cached-load child); the per-pair Python
Jaccard (``reference_match``) runs on a random subsample of refs against their full clusters, its
per-ref time extrapolated to the whole dataset, and the two must agree exactly on the subsample.

    python benchmarks/matching.py                 # full scale
    python benchmarks/matching.py --quick         # a tenth of the data
    python benchmarks/matching.py --source DIR    # reuse (or first write) the source in DIR

Targets on a 2-core machine: load <= 4 s CPU, match <= 30 s, peak RSS <= 2 GiB, matching speed
ratio >= 200x.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from comcoco.ids import stable_hash64  # noqa: E402
from comcoco.matching.clusters import CLUSTERS  # noqa: E402
from comcoco.matching.scene import (  # noqa: E402
    match_backgrounds,
    read_candidates,
    reference_match,
    write_candidates,
)
from comcoco.records import Annotation, ImageInfo, Ref, Sentence  # noqa: E402
from comcoco.sources.images import polygon_area  # noqa: E402
from comcoco.sources.refer import COCO_CATEGORIES, write_source  # noqa: E402

FULL = {"images": 19_992, "refs": 49_856, "sentences": 141_564, "vocab": 10_000}

# Approximate share of RefCOCO+ refs per cluster (persons dominate; the rest follows COCO frequency).
CLUSTER_SHARE = {
    0: 0.47, 1: 0.08, 2: 0.01, 3: 0.005, 4: 0.01, 5: 0.02, 6: 0.12, 7: 0.02, 8: 0.02,
    9: 0.005, 10: 0.005, 11: 0.04, 12: 0.04, 13: 0.03, 14: 0.07, 15: 0.02, 16: 0.03,
}  # fmt: skip


def generate(
    scale: float = 1.0, seed: int = 0, vocab: int = FULL["vocab"]
) -> tuple[list[Ref], list[Annotation]]:
    """RefCOCO+-shaped refs and annotations (synthetic words, real category ids and cluster mix)."""
    rng = np.random.default_rng(seed)
    n_img = max(20, round(FULL["images"] * scale))
    n_ref = max(n_img, round(FULL["refs"] * scale))
    n_sent = max(n_ref, round(FULL["sentences"] * scale))
    n_vocab = vocab

    share = np.array([CLUSTER_SHARE[c.index] for c in CLUSTERS])
    share = share / share.sum()
    # Within a cluster, categories get Zipf-ish weights (a few common ones, a long tail).
    cat_choices = [np.array(c.category_ids) for c in CLUSTERS]
    cat_weights = [1.0 / np.arange(1, len(c) + 1) ** 1.2 for c in cat_choices]
    cat_weights = [w / w.sum() for w in cat_weights]

    def draw_categories(n: int) -> np.ndarray:
        cl = rng.choice(len(CLUSTERS), size=n, p=share)
        return np.array([rng.choice(cat_choices[c], p=cat_weights[c]) for c in cl], dtype=np.int64)

    # Words: a global Zipf vocabulary plus a few head words per category ("man", "woman", "guy"...).
    ranks = np.arange(1, n_vocab + 1, dtype=np.float64)
    zipf = 1.0 / ranks**1.05
    zipf /= zipf.sum()
    words = np.array([f"w{i}" for i in range(n_vocab)], dtype=object)
    heads = {cid: [f"c{cid}h{j}" for j in range(6)] for c in CLUSTERS for cid in c.category_ids}

    refs_per_img = 1 + rng.multinomial(n_ref - n_img, rng.dirichlet(np.full(n_img, 2.0)))
    sents_per_ref = 1 + rng.multinomial(n_sent - n_ref, np.full(n_ref, 1.0 / n_ref))
    main_cat = draw_categories(n_img)
    extra_anns = rng.poisson(7.3, size=n_img)

    refs: list[Ref] = []
    anns: list[Annotation] = []
    ann_id, sent_id, ref_id = 1, 1, 0
    sent_iter = iter(sents_per_ref.tolist())
    for i in range(n_img):
        image_id = 100_000 + 7 * i
        own = [
            int(main_cat[i]) if rng.random() < 0.9 else int(draw_categories(1)[0])
            for _ in range(refs_per_img[i])
        ]
        others = [1 if rng.random() < 0.35 else int(draw_categories(1)[0]) for _ in range(extra_anns[i])]
        for j, cid in enumerate(own + others):
            anns.append(Annotation(ann_id, image_id, cid, (0.0, 0.0, 10.0, 10.0), 100.0, 0, []))
            if j < len(own):
                sentences = []
                for _ in range(next(sent_iter)):
                    n_tok = 1 + rng.poisson(2.5)
                    toks = list(words[rng.choice(n_vocab, size=n_tok, p=zipf)])
                    if rng.random() < 0.6:
                        toks[0] = heads[cid][int(rng.integers(6))]
                    sentences.append(Sentence(sent_id, " ".join(toks), " ".join(toks), tuple(toks)))
                    sent_id += 1
                refs.append(Ref(ref_id, ann_id, image_id, cid, "train", tuple(sentences)))
                ref_id += 1
            ann_id += 1
    return refs, anns


COCO_SIZES = ((640, 480), (640, 427), (480, 640), (640, 426), (500, 375), (640, 360), (612, 612), (427, 640))


def _polygon(rng: np.random.Generator, w: int, h: int) -> list[float]:
    """A star-shaped COCO-like polygon: about 25 points (log-normal), two decimals, inside the image."""
    n = int(np.clip(rng.lognormal(3.1, 0.55), 4, 200))
    cx, cy = rng.uniform(0.1 * w, 0.9 * w), rng.uniform(0.1 * h, 0.9 * h)
    radius = min(w, h) * float(np.exp(rng.uniform(np.log(0.02), np.log(0.4))))
    theta = np.sort(rng.uniform(0.0, 2.0 * np.pi, n))
    r = radius * rng.uniform(0.5, 1.0, n)
    xs = np.clip(cx + r * np.cos(theta), 0.0, w - 0.01)
    ys = np.clip(cy + r * np.sin(theta), 0.0, h - 0.01)
    return np.round(np.stack([xs, ys], axis=1).reshape(-1), 2).tolist()


def _crowd_rle(rng: np.random.Generator, w: int, h: int) -> dict:
    """An uncompressed RLE of a crowd region, as COCO stores iscrowd annotations."""
    cuts = np.sort(rng.choice(h * w, size=2 * int(rng.integers(20, 400)), replace=False))
    counts = np.diff(np.concatenate([[0], cuts, [h * w]]))
    return {"counts": counts.tolist(), "size": [h, w]}


def with_geometry(
    refs: list[Ref], anns: list[Annotation], seed: int
) -> tuple[list[ImageInfo], list[Annotation]]:
    """COCO-like images and real geometry for ``generate``'s annotations (matching never reads it).

    Polygons of about 25 points (one in ten annotations has two parts); about 1 % of the
    annotations nobody refers to are crowd regions stored as uncompressed RLE, as in COCO.
    """
    rng = np.random.default_rng([seed, 1])
    sizes: dict[int, tuple[int, int]] = {}
    for a in anns:
        if a.image_id not in sizes:
            sizes[a.image_id] = COCO_SIZES[int(rng.integers(len(COCO_SIZES)))]
    images = [
        ImageInfo(i, f"COCO_train2014_{i:012d}.jpg", w, h,
                  extra={"license": int(rng.integers(1, 9)), "coco_url": f"http://images.cocodataset.org/train2014/COCO_train2014_{i:012d}.jpg",
                         "date_captured": "2013-11-14 16:28:13", "flickr_url": f"http://farm4.staticflickr.com/{i}.jpg"})
        for i, (w, h) in sorted(sizes.items())
    ]  # fmt: skip
    referred = {r.ann_id for r in refs}
    out: list[Annotation] = []
    for a in anns:
        w, h = sizes[a.image_id]
        if a.ann_id not in referred and rng.random() < 0.01:
            seg: object = _crowd_rle(rng, w, h)
            box = (0.0, 0.0, float(w), float(h))
            area, crowd = float(w * h) / 3.0, 1
        else:
            seg = [_polygon(rng, w, h) for _ in range(2 if rng.random() < 0.1 else 1)]
            xs = [v for poly in seg for v in poly[0::2]]
            ys = [v for poly in seg for v in poly[1::2]]
            box = (min(xs), min(ys), round(max(xs) - min(xs), 2), round(max(ys) - min(ys), 2))
            area, crowd = float(polygon_area(seg[0])), 0
        out.append(Annotation(a.ann_id, a.image_id, a.category_id, box, area, crowd, seg))
    return images, out


def write_refer_source(root: Path, scale: float, seed: int, vocab: int) -> Path:
    """A REFER-format source (refs pickle + instances.json, no image files) from ``generate``."""
    refs, anns = generate(scale, seed, vocab)
    images, anns = with_geometry(refs, anns, seed)
    splits = ("train",) * 17 + ("val",) * 2 + ("testA", "testB")
    refs = [replace(r, split=splits[stable_hash64(seed, "bench-split", r.image_id) % len(splits)]) for r in refs]
    write_source(root, refs, images, anns, COCO_CATEGORIES)
    return root


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _timed(fn):
    c0, w0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - c0, time.perf_counter() - w0


def reference_load(root: Path) -> tuple[list[Ref], list[Annotation]]:
    """The loader's algorithm one record at a time: what the fast paths of ``load_source`` replace."""
    import io

    from comcoco.sources.index import build_index
    from comcoco.sources.parse import annotation_record, category_record, image_record, ref_record
    from comcoco.sources.safe_pickle import _first_not_plain, _PlainUnpickler

    refs_file, inst_file = root / "refcoco+" / "refs(unc).p", root / "refcoco+" / "instances.json"
    refs = _PlainUnpickler(io.BytesIO(refs_file.read_bytes()), fix_imports=True, encoding="utf-8").load()
    _first_not_plain(refs, refs_file)
    with open(inst_file, encoding="utf-8") as fh:
        inst = json.load(fh)
    images = [image_record(r, i, inst_file) for i, r in enumerate(inst["images"])]
    anns = [annotation_record(r, i, inst_file) for i, r in enumerate(inst["annotations"])]
    cats = [category_record(r, i, inst_file) for i, r in enumerate(inst["categories"])]
    recs = [ref_record(r, i, refs_file) for i, r in enumerate(refs)]
    data = {"refs": refs, "images": inst["images"], "annotations": inst["annotations"], "categories": inst["categories"]}
    build_index(data, images, anns, cats, recs, refs_file=refs_file, instances_file=inst_file)
    return recs, anns


def child(root: Path, mode: str, seed: int, out: Path | None) -> None:
    """Load the source once (``mode``: ``reference``, ``off`` for no cache, or a cache directory)
    and, with ``out``, match it; print one JSON line."""
    from comcoco.sources.refer import load_source

    if mode == "reference":
        (refs, anns), load_cpu, load_wall = _timed(lambda: reference_load(root))
    else:
        cache_dir = None if mode == "off" else mode  # "off": COMCOCO_SOURCE_CACHE=off in the environment
        src, load_cpu, load_wall = _timed(lambda: load_source(root, cache_dir=cache_dir))
        refs, anns = src.refs(), src.annotations()
    report = {"load_s": load_wall, "load_cpu_s": load_cpu, "peak_rss_after_load_mib": _peak_rss_mib(),
              "refs": len(refs), "annotations": len(anns), "sentences": sum(len(r.sentences) for r in refs),
              "images": len({a.image_id for a in anns})}  # fmt: skip
    if out is not None:
        cands, match_cpu, match_wall = _timed(lambda: match_backgrounds(refs, anns, k=5, seed=seed))
        write_candidates(out, cands)
        report |= {"match_s": match_wall, "match_cpu_s": match_cpu, "candidates": len(cands),
                   "zero_similarity_share": float(np.mean([c.similarity == 0.0 for c in cands])) if cands else 0.0}
    report["peak_rss_mib"] = _peak_rss_mib()
    print(json.dumps(report))


def _run_child(root: Path, mode: str, seed: int, out: Path | None = None) -> dict:
    cmd = [sys.executable, __file__, "--child-source", str(root), "--child-mode", mode, "--seed", str(seed)]
    if out is not None:
        cmd += ["--child-out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, COMCOCO_SOURCE_CACHE="off"))
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(1)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _load_line(name: str, r: dict) -> str:
    return (f"  {name:<34} {r['load_s']:6.2f} s wall {r['load_cpu_s']:6.2f} s CPU, "
            f"peak RSS {r['peak_rss_after_load_mib']:5.0f} MiB")  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a tenth of the full scale")
    ap.add_argument(
        "--scale", type=float, default=None, help="fraction of RefCOCO+ size (default 1, or 0.1 with --quick)"
    )
    ap.add_argument("--subsample", type=int, default=30, help="refs timed with the per-pair Python baseline")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--vocab", type=int, default=FULL["vocab"], help="vocabulary size; small values stress the exact path"
    )
    ap.add_argument("--source", type=Path, default=None, help="REFER source to use; written there first if missing")
    ap.add_argument("--child-source", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-mode", default="off", help=argparse.SUPPRESS)
    ap.add_argument("--child-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    scale = args.scale if args.scale is not None else (0.1 if args.quick else 1.0)
    if args.child_source is not None:
        child(args.child_source, args.child_mode, args.seed, args.child_out)
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        root = args.source if args.source is not None else Path(tmp) / "source"
        if not (root / "refcoco+" / "instances.json").is_file():
            _, _, t_write = _timed(lambda: write_refer_source(root, scale, args.seed, args.vocab))
            print(f"wrote the source in {t_write:.0f} s: {root}")
        sizes = sum(p.stat().st_size for p in (root / "refcoco+").iterdir()) / 2**20
        cache, out = str(Path(tmp) / "cache"), Path(tmp) / "candidates.parquet"
        fresh = _run_child(root, "off", args.seed)
        first = _run_child(root, cache, args.seed)
        cached = _run_child(root, cache, args.seed, out)
        baseline = _run_child(root, "reference", args.seed)
        fast_cands = read_candidates(out)

    refs, anns = generate(scale, args.seed, args.vocab)
    rng = np.random.default_rng(args.seed + 1)
    sub = sorted(
        rng.choice([r.ref_id for r in refs], size=min(args.subsample, len(refs)), replace=False).tolist()
    )
    t0 = time.perf_counter()
    reference_match(refs, anns, k=5, seed=args.seed, only_ref_ids=[])
    t_setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    naive = reference_match(refs, anns, k=5, seed=args.seed, only_ref_ids=sub)
    t_sub = time.perf_counter() - t0
    per_ref = max(t_sub - t_setup, 1e-9) / len(sub)
    naive_total = t_setup + per_ref * len(refs)

    wanted = set(sub)
    fast_sub = [c for c in fast_cands if c.ref_id in wanted]
    assert fast_sub == naive, "fast and per-pair Python matching disagree on the subsample"

    ratio = naive_total / cached["match_s"]
    print(
        f"scale {scale:g}: {cached['refs']} refs, {cached['images']} images, {cached['sentences']} expressions, "
        f"{cached['annotations']} annotations ({sizes:.0f} MiB of refs pickle and instances.json); "
        f"{cached['candidates']} candidates ({cached['zero_similarity_share']:.1%} with similarity 0)"
    )
    print("load (load_source in a fresh process; imports not included):")
    print(_load_line("one record at a time (baseline)", baseline))
    print(_load_line("from the files, cache off", fresh))
    print(_load_line("from the files, writing the cache", first))
    print(_load_line("from the index cache", cached))
    print(
        f"load speed-up against the baseline: {baseline['load_cpu_s'] / fresh['load_cpu_s']:.1f}x from the files, "
        f"{baseline['load_cpu_s'] / cached['load_cpu_s']:.1f}x from the cache (CPU; target <= 4 s CPU)"
    )
    print(
        f"match: {cached['match_s']:.2f} s wall {cached['match_cpu_s']:.2f} s CPU at scale {scale:g}, vocabulary "
        f"{args.vocab} (target at full scale <= 30 s); peak RSS of the load+match process "
        f"{cached['peak_rss_mib']:.0f} MiB (target <= 2048 MiB)"
    )
    print(
        f"per-pair Python Jaccard: {per_ref * 1000:.1f} ms/ref on {len(sub)} refs + {t_setup:.2f} s setup "
        f"-> {naive_total:.0f} s extrapolated"
    )
    print(f"matching speed ratio: {ratio:.0f}x (target >= 200x); subsample agreement: exact ({len(naive)} rows)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
