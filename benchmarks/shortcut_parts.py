"""Evidence for the shortcut parts: how each one changes what gives a pasted object away, and its cost.

Objects are cut from real images and pasted into other real images (the COCO fixtures, or with
``--demo N`` the demo source's images), placed by the project's prior sampler, without
harmonization. Six variants of the same composites are audited (``comcoco.audit``: size-matched
native objects of the backgrounds, folds grouped so no background/composite is on both sides):

    plain   cut + paste (what compose does today, minus harmonization)
    matte   + alpha refinement and fringe decontamination   (comcoco.compose.matte)
    shadow  + light estimate and contact/cast shadow        (comcoco.compose.shadow)
    camera  + blur and noise matching                       (comcoco.compose.camera.match_camera)
    jpeg    + JPEG regrid on the background's grid          (comcoco.compose.camera.jpeg_regrid)
    full    all of the above

It prints the audit AUC with its interval and the AUC of each cue family per variant, the fringe
measurements of the matte (plain vs refined), and CPU ms per object of each part next to the plain
paste and to the codec bound of a sample (decode source and background, encode composite, ground
truth and mask as PNG level 1), all measured in this run, single-threaded.

With the fixtures (three backgrounds) the folds are grouped by background, since composites of one
background share its native objects; expect wide intervals. ``--demo N`` groups by composite.

    python benchmarks/shortcut_parts.py [--demo N] [--placements P] [--seed S] [--bootstrap B] [--matte-table]

``--matte-table`` instead compares the alpha-refinement and decontamination variants on the same
pastes (the measurement that chose the defaults).
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
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from comcoco.audit import AuditRecord, audit  # noqa: E402
from comcoco.compose.camera import estimate_jpeg_quality, jpeg_regrid, match_camera  # noqa: E402
from comcoco.compose.cutout import MASK_THRESHOLD, Cutout, cut_object, object_shape, paste  # noqa: E402
from comcoco.compose.matte import refine_cutout  # noqa: E402
from comcoco.compose.shadow import NativeObject, apply_shadow, cast_shadow, estimate_light  # noqa: E402
from comcoco.ids import rng_for  # noqa: E402
from comcoco.sources.images import decode_image  # noqa: E402

VARIANTS = ("plain", "matte", "shadow", "camera", "jpeg", "full")
PARTS = {"plain": (), "matte": ("matte",), "shadow": ("shadow",), "camera": ("camera",), "jpeg": ("jpeg",),
         "full": ("matte", "camera", "shadow", "jpeg")}
FIXTURES = REPO.parent / "shared" / "fixtures" / "coco_real"


@dataclass
class Scene:
    image_id: int
    path: Path
    pixels: np.ndarray
    anns: list[dict]  # COCO annotation dicts (polygons)
    natives: list[NativeObject] = field(default_factory=list)


@dataclass
class Job:
    comp_id: str
    group: str
    fg: Scene
    ann: dict
    bg: Scene
    box: tuple[int, int, int, int]


def _scene(image_id: int, path: Path, anns: list[dict]) -> Scene:
    px = decode_image(path)
    natives = [n for n in (NativeObject.from_annotation(a["bbox"], a["segmentation"]) for a in anns) if n is not None]
    return Scene(image_id, path, px, anns, natives)


def load_fixtures() -> list[Scene]:
    data = json.loads((FIXTURES / "instances_val2017_subset.json").read_text())
    return [_scene(i["id"], FIXTURES / i["file_name"], [a for a in data["annotations"] if a["image_id"] == i["id"]])
            for i in data["images"]]


def load_demo(n: int, seed: int, tmp: Path) -> list[Scene]:
    from comcoco.sources.demo import generate_demo_source
    from comcoco.sources.refer import load_source

    src = load_source(generate_demo_source(tmp / "demo", n_images=n, seed=seed))
    by_image: dict[int, list[dict]] = {}
    for a in src.annotations():
        by_image.setdefault(a.image_id, []).append(
            {"id": a.ann_id, "bbox": list(a.bbox), "segmentation": a.segmentation, "area": a.area,
             "category_id": a.category_id})
    return [_scene(i.image_id, Path(src.image_path(i.image_id)), by_image.get(i.image_id, [])) for i in src.images()]


def _place(fg: Scene, ann: dict, bg: Scene, seed: int, key: str) -> tuple[int, int, int, int] | None:
    from comcoco.placement.sampler import PlacementError, PlacementRequest, SceneObject, sample_placement

    shape = object_shape(ann["segmentation"], fg.pixels.shape[1], fg.pixels.shape[0])
    req = PlacementRequest(
        fg_box=tuple(float(v) for v in shape.rect), fg_image_size=(fg.pixels.shape[1], fg.pixels.shape[0]),
        fg_category_id=int(ann.get("category_id", 1)), bg_size=(bg.pixels.shape[1], bg.pixels.shape[0]),
        bg_objects=tuple(SceneObject(int(a.get("category_id", 1)), tuple(float(v) for v in a["bbox"])) for a in bg.anns))
    try:
        return tuple(int(v) for v in sample_placement(req, seed, key=key).box)  # type: ignore[return-value]
    except PlacementError:
        return None


def make_jobs(scenes: list[Scene], demo: bool, placements: int, seed: int) -> list[Job]:
    jobs = []
    if demo:  # object k of image i goes into image i+1: every background once
        for i, fg in enumerate(scenes):
            bg = scenes[(i + 1) % len(scenes)]
            anns = sorted(fg.anns, key=lambda a: a["id"])
            if not anns:
                continue
            ann = anns[int(rng_for(seed, "bench-object", i).integers(len(anns)))]
            box = _place(fg, ann, bg, seed, f"demo-{i}")
            if box is not None:
                jobs.append(Job(f"c{i:04d}", f"c{i:04d}", fg, ann, bg, box))
        return jobs
    for fg in scenes:
        frame = fg.pixels.shape[0] * fg.pixels.shape[1]
        for ann in fg.anns:
            if not 500 <= ann["area"] <= 0.3 * frame:
                continue
            for bg in scenes:
                if bg is fg:
                    continue
                for p in range(placements):
                    key = f"{ann['id']}-{bg.image_id}-{p}"
                    box = _place(fg, ann, bg, seed, key)
                    if box is not None:
                        jobs.append(Job(key, f"bg{bg.image_id}", fg, ann, bg, box))
    return jobs


class Timer:
    def __init__(self) -> None:
        self.ms: dict[str, float] = {}

    def add(self, part: str, t0: float) -> float:
        t = time.process_time()
        self.ms[part] = self.ms.get(part, 0.0) + (t - t0) * 1000.0
        return t


_LIGHT: dict[int, object] = {}
_JPEG: dict[int, object] = {}


def compose(job: Job, parts: tuple[str, ...], seed: int, timer: Timer | None = None) -> tuple[np.ndarray, Cutout, Cutout]:
    """One composite with the given parts; returns (composite, final cutout, plain cutout)."""
    t = time.process_time()
    fg, bg = job.fg.pixels, job.bg.pixels
    shape = object_shape(job.ann["segmentation"], fg.shape[1], fg.shape[0])
    plain = cut_object(fg, shape, job.box)
    canvas = bg.copy()
    cut = plain
    if timer:
        t = timer.add("cut", t)
    if "matte" in parts:
        cut, _ = refine_cutout(cut)
        if timer:
            t = timer.add("matte", t)
    if "camera" in parts:
        est = None
        if "jpeg" in parts:  # the regrid follows: match the noise as it will be after it
            est = _JPEG.get(job.bg.image_id)
            if est is None:
                est = _JPEG[job.bg.image_id] = estimate_jpeg_quality(job.bg.path, bg)
                if timer:
                    t = timer.add("jpeg quality (per background)", t)
        res = match_camera(cut.rgb, cut.alpha, bg, cut.box, rng_for(seed, "camera", job.comp_id), jpeg=est)  # type: ignore[arg-type]
        cut = Cutout(rgb=res.rgb, alpha=res.alpha, box=cut.box, polygons=cut.polygons)
        if timer:
            t = timer.add("camera", t)
    if "shadow" in parts:
        light = _LIGHT.get(job.bg.image_id)
        if light is None:
            light = _LIGHT[job.bg.image_id] = estimate_light(bg, job.bg.natives)
            if timer:
                t = timer.add("light (per background)", t)
        sh = cast_shadow(cut.alpha, cut.box, (bg.shape[1], bg.shape[0]), light, background=bg)  # type: ignore[arg-type]
        apply_shadow(canvas, sh)
        if timer:
            t = timer.add("shadow", t)
    paste(canvas, cut)
    if timer:
        t = timer.add("paste", t)
    if "jpeg" in parts:
        est = _JPEG.get(job.bg.image_id)
        if est is None:
            est = _JPEG[job.bg.image_id] = estimate_jpeg_quality(job.bg.path, bg)
            if timer:
                t = timer.add("jpeg quality (per background)", t)
        jpeg_regrid(canvas, cut.alpha, cut.box, est).apply(canvas)  # type: ignore[arg-type]
        if timer:
            timer.add("jpeg", t)
    return canvas, cut, plain


def records_for(job: Job, canvas: np.ndarray, cut: Cutout) -> list[AuditRecord]:
    recs = [AuditRecord(job.comp_id, canvas, cut.alpha >= MASK_THRESHOLD, "pasted", job.comp_id,
                        (cut.box[0], cut.box[1]), job.group)]
    for a in job.bg.anns:
        if isinstance(a["segmentation"], list):
            recs.append(AuditRecord.from_polygons(job.comp_id, canvas, a["segmentation"], "native",
                                                  f"{job.comp_id}/{a['id']}", job.group))
    return recs


def fringe(comp: np.ndarray, cut: Cutout, plain: Cutout) -> tuple[float, float, float]:
    """(spill towards the source background, fringe colour error, interior reference), RGB units."""
    a = cut.alpha
    m = a >= MASK_THRESHOLD
    x, y, w, h = cut.box
    C = comp[y:y + h, x:x + w].astype(np.float32)
    src = plain.rgb.astype(np.float32)

    def local(img, wgt, r):
        k = (2 * r + 1, 2 * r + 1)
        s = cv2.boxFilter(img * wgt[..., None], -1, k, normalize=True)
        n = cv2.boxFilter(wgt.astype(np.float32), -1, k, normalize=True)
        return s / np.maximum(n, 1e-6)[..., None], n

    inner = cv2.erode(m.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))) > 0
    F, wf = local(src, inner.astype(np.float32), 6)
    Bn, wb = local(C, (a <= 0).astype(np.float32), 6)
    Bs, ws = local(src, (plain.alpha <= 0).astype(np.float32), 8)
    d_in = cv2.distanceTransform(m.astype(np.uint8), cv2.DIST_L2, 3)
    ok = (wf > 1e-3) & (wb > 1e-3)
    fr, ref = (a > 0) & (d_in <= 2) & ok, m & (d_in > 3) & (d_in <= 6) & ok

    def seg(sel):
        P, A, B = C[sel], F[sel], Bn[sel]
        v = B - A
        t = np.clip(((P - A) * v).sum(1) / np.maximum((v * v).sum(1), 1e-6), 0, 1)
        return float(np.linalg.norm(P - (A + t[:, None] * v), axis=1).mean()) if sel.any() else float("nan")

    sel = fr & (ws > 1e-3)
    u = Bs[sel] - F[sel]
    nu = np.linalg.norm(u, axis=1)
    pred = a[sel][:, None] * F[sel] + (1 - a[sel][:, None]) * Bn[sel]
    sp = (((C[sel] - pred) * u).sum(1) / np.maximum(nu, 1e-6))[nu > 20]
    return (float(sp.mean()) if sp.size else float("nan")), seg(fr), seg(ref)


MATTE_VARIANTS = (("none", "none"), ("feather", "none"), ("feather", "extend"), ("guided", "none"),
                  ("guided", "solve"), ("guided", "extend"), ("guided-colour", "extend"))


def matte_table(jobs: list[Job]) -> None:
    """Fringe measurements of each (alpha refinement, decontamination) pair on the same pastes."""
    from comcoco.compose.matte import MatteParams

    print("\nmatte variants (RGB units; spill: lean of the fringe towards the source background's colour)")
    print(f"{'alpha':>14s} {'colour':>8s} {'spill':>8s} {'fringe err':>11s} {'interior ref':>13s} {'ms/object':>10s}")
    for method, deco in MATTE_VARIANTS:
        rows, t = [], 0.0
        for j in jobs:
            fg = j.fg.pixels
            plain = cut_object(fg, object_shape(j.ann["segmentation"], fg.shape[1], fg.shape[0]), j.box)
            t0 = time.process_time()
            cut = plain if method == "none" and deco == "none" else \
                refine_cutout(plain, MatteParams(method=method, decontaminate=deco))[0]
            t += time.process_time() - t0
            comp = j.bg.pixels.copy()
            paste(comp, cut)
            rows.append(fringe(comp, cut, plain))
        a = np.asarray(rows, np.float64)
        print(f"{method:>14s} {deco:>8s} {np.nanmean(a[:, 0]):8.2f} {np.nanmean(a[:, 1]):11.2f} "
              f"{np.nanmean(a[:, 2]):13.2f} {1000 * t / len(jobs):10.2f}")


def codec_bound_ms(jobs: list[Job]) -> float:
    """CPU ms per sample of decoding the two source files and encoding composite, ground truth and mask."""
    t0 = time.process_time()
    for j in jobs:
        decode_image(j.fg.path)
        bg = decode_image(j.bg.path)
        for img in (bg, bg):
            cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        cv2.imencode(".png", np.zeros(bg.shape[:2], np.uint8), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    return (time.process_time() - t0) * 1000.0 / max(1, len(jobs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--demo", type=int, default=0, help="use N demo images instead of the COCO fixtures")
    ap.add_argument("--placements", type=int, default=12, help="placements per (object, background), fixtures")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--min-per-class", type=int, default=None)
    ap.add_argument("--matte-table", action="store_true", help="only compare the matte variants' fringes")
    args = ap.parse_args()
    cv2.setNumThreads(1)
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)
    with tempfile.TemporaryDirectory() as tmp:
        scenes = load_demo(args.demo, args.seed, Path(tmp)) if args.demo else load_fixtures()
        jobs = make_jobs(scenes, bool(args.demo), args.placements, args.seed)
        what = f"demo, {args.demo} images" if args.demo else "COCO fixtures, 3 images"
        print(f"source: {what}; "
              f"{len(jobs)} composites in {len({j.group for j in jobs})} groups")
        if args.matte_table:
            matte_table(jobs)
        else:
            run(jobs, args)


def run(jobs: list[Job], args: argparse.Namespace) -> None:
    kw = {} if args.min_per_class is None else {"min_per_class": args.min_per_class}
    results = {}
    fr = {"plain": [], "matte": []}
    for v in VARIANTS:
        recs = []
        for j in jobs:
            canvas, cut, plain = compose(j, PARTS[v], args.seed)
            recs.extend(records_for(j, canvas, cut))
            if v in fr:
                fr[v].append(fringe(canvas, cut, plain))
        t0 = time.process_time()
        results[v] = audit(recs, seed=args.seed, bootstrap=args.bootstrap, **kw)
        results[v] = (results[v], time.process_time() - t0)
    families = list(results["plain"][0].cues)
    print("\naudit (held-out ROC AUC, 95 % interval; 0.5 = undetectable)")
    print(f"{'':12s}" + "".join(f"{v:>16s}" for v in VARIANTS))
    def cell(r):
        return "refused" if r.auc is None else f"{r.auc:.2f} [{r.ci[0]:.2f},{r.ci[1]:.2f}]"
    print(f"{'overall':12s}" + "".join(f"{cell(results[v][0]):>16s}" for v in VARIANTS))
    for f in families:
        print(f"{f:12s}" + "".join(f"{'-' if results[v][0].cues[f] is None else format(results[v][0].cues[f], '.2f'):>16s}"
                                   for v in VARIANTS))
    counts = [f"{results[v][0].n_pasted}/{results[v][0].n_native}" for v in VARIANTS]
    print(f"{'n pasted/nat':12s}" + "".join(f"{c:>16s}" for c in counts))
    print(f"{'audit cpu s':12s}" + "".join(f"{results[v][1]:>16.1f}" for v in VARIANTS))
    print(f"\nverdict plain: {results['plain'][0].verdict}\nverdict full:  {results['full'][0].verdict}")
    for v in ("plain", "matte"):
        a = np.asarray(fr[v], np.float64)
        print(f"fringe {v:5s}: spill towards source background {np.nanmean(a[:, 0]):6.2f}, "
              f"fringe colour error {np.nanmean(a[:, 1]):6.2f} (interior reference {np.nanmean(a[:, 2]):6.2f})")
    _LIGHT.clear()
    _JPEG.clear()
    timer = Timer()
    for j in jobs:
        compose(j, PARTS["full"], args.seed, timer)
    bound = codec_bound_ms(jobs)
    n = len(jobs)
    plain_ms = (timer.ms.get("cut", 0.0) + timer.ms.get("paste", 0.0)) / n
    print(f"\nCPU ms per object (single thread, {n} objects): codec bound of a sample {bound:.1f}; plain cut+paste {plain_ms:.2f}")
    extra = 0.0
    for part in ("matte", "camera", "light (per background)", "shadow", "jpeg quality (per background)", "jpeg"):
        ms = timer.ms.get(part, 0.0) / n
        extra += ms
        print(f"  {part:32s} {ms:7.2f} ms  = {ms / plain_ms:5.2f}x plain paste, {100 * ms / bound:5.1f} % of the codec bound")
    print(f"  {'all parts':32s} {extra:7.2f} ms  = {100 * extra / bound:5.1f} % of the codec bound "
          f"(amortised per-background estimates included)")


if __name__ == "__main__":
    main()
