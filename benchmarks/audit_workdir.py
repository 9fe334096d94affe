"""The artifact audit of a work directory, without a release, and the single features behind its cues.

    python benchmarks/audit_workdir.py SOURCE WORK [--families boundary,noise,shadow] [--json]
    python benchmarks/audit_workdir.py SOURCE WORK --against OTHER_WORK

With ``--against`` (two builds of the same source and seed, e.g. before and after a change to
compose: the same samples and masks) it prints the paired difference instead: both audits on the
same size-matched crops and folds, and a 95 % interval for AUC(WORK) − AUC(OTHER_WORK) from the
same 1,000 resamples of whole backgrounds for both — much narrower than either audit's own interval,
because what the two builds share cancels.

Records are taken straight from the build: each ok sample's mask (pasted) and the background's own
annotated objects from SOURCE's instances (native), on the sample's composite, folds grouped by
background image — the protocol of ``comcoco audit`` with the build's masks instead of the released
ones (docs/compose.md, "The robust profile against the audit"). Besides the audit it prints, for the
size-matched crops, each feature's median per class and its AUC alone (all families, or those named by
``--families``), and where
the edge transition sits against the mask: the median |ΔY| from the local interior luminance 1 px
outside and 1 px inside the mask, and the step's level there (0 = the outside, 1 = the inside; objects
of 500–5,000 px whose two sides differ by more than 20 levels).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq

from comcoco.audit import AuditRecord, audit
from comcoco.audit.detector import match_by_size
from comcoco.audit.features import FEATURE_NAMES, MIN_AREA, extract_features
from comcoco.sources.images import annotation_mask, decode_image


def workdir_records(source: Path, work: Path, dataset: str = "refcoco+") -> list[AuditRecord]:
    inst = json.loads((source / dataset / "instances.json").read_text())
    images = {int(i["id"]): i for i in inst["images"]}
    natives: dict[int, list[dict]] = {}
    for a in inst["annotations"]:
        if not a.get("iscrowd"):
            natives.setdefault(int(a["image_id"]), []).append(a)
    rows = [dict(r, _dir=f.parent) for f in sorted(work.glob("shards/*/samples.parquet"))
            for r in pq.read_table(f).to_pylist() if r["status"] == "ok"]
    records, seen = [], set()
    for r in sorted(rows, key=lambda r: r["sample_id"]):
        comp, group = r["_dir"] / r["composite"], str(r["bg_image_id"])
        mask = cv2.imread(str(r["_dir"] / r["mask"]), cv2.IMREAD_GRAYSCALE) > 0
        records.append(AuditRecord.from_full_mask(r["composite_id"], comp, mask, "pasted", r["sample_id"], group))
        if r["composite_id"] in seen:
            continue
        seen.add(r["composite_id"])
        info = images[int(r["bg_image_id"])]
        for a in natives.get(int(r["bg_image_id"]), []):
            m = annotation_mask(a["segmentation"], info["height"], info["width"]) > 0
            records.append(AuditRecord.from_full_mask(r["composite_id"], comp, m, "native", str(a["id"]), group))
    return records


def paired(source: Path, work: Path, other: Path, seed: int = 0, n: int = 1000) -> dict:
    """AUC of both builds on the same matched crops and folds, and the bootstrap interval of the difference."""
    from comcoco.audit.detector import _auc, _oof_scores, grouped_folds
    from comcoco.ids import rng_for

    recs = {"work": workdir_records(source, work), "other": workdir_records(source, other)}
    key = {k: [(r.label, r.object_id, r.composite_id) for r in v] for k, v in recs.items()}
    if key["work"] != key["other"]:
        raise SystemExit("the two work directories hold different samples: not a paired comparison")
    a, b = recs["work"], recs["other"]
    pairs = match_by_size(a, [r.area if r.area >= MIN_AREA else 0 for r in a])
    needed = sorted({i for p in pairs for i in p})
    Xa, ua, _ = extract_features([a[i] for i in needed])
    Xb, ub, _ = extract_features([b[i] for i in needed])
    both = sorted(set(int(k) for k in ua) & set(int(k) for k in ub))
    ok_pairs = [(p, q) for p, q in pairs if needed.index(p) in both and needed.index(q) in both]
    keep = sorted({needed.index(i) for pq in ok_pairs for i in pq})
    ra = {int(k): j for j, k in enumerate(ua)}
    rb = {int(k): j for j, k in enumerate(ub)}
    Xa, Xb = Xa[[ra[k] for k in keep]], Xb[[rb[k] for k in keep]]
    y = np.asarray([1 if a[needed[k]].label == "pasted" else 0 for k in keep])
    groups = [a[needed[k]].fold_group for k in keep]
    splits = grouped_folds(groups, y, 5, seed)
    sa, sb = _oof_scores(Xa, y, splits), _oof_scores(Xb, y, splits)
    names = sorted(set(groups))
    idx = [np.asarray([i for i, g in enumerate(groups) if g == name]) for name in names]
    rng = rng_for(seed, "audit-paired")
    diffs = []
    for _ in range(n):
        sel = np.concatenate([idx[k] for k in rng.integers(0, len(names), len(names))])
        diffs.append(_auc(y[sel], sa[sel]) - _auc(y[sel], sb[sel]))
    lo, hi = np.nanpercentile(diffs, [2.5, 97.5])
    return {"n_pasted": int(y.sum()), "n_native": int(len(y) - y.sum()), "auc_work": round(_auc(y, sa), 4),
            "auc_other": round(_auc(y, sb), 4), "difference": round(_auc(y, sa) - _auc(y, sb), 4),
            "ci": [round(float(lo), 4), round(float(hi), 4)]}


def transition(img: np.ndarray, rec: AuditRecord) -> tuple[float, float, float, float] | None:
    """(|ΔY| 1 px out, |ΔY| 1 px in, level 1 px out, level 1 px in) against the local 3–6 px references."""
    x, y, w, h = rec.box
    x0, y0 = max(0, x - 8), max(0, y - 8)
    x1, y1 = min(img.shape[1], x + w + 8), min(img.shape[0], y + h + 8)
    lum = cv2.cvtColor(img[y0:y1, x0:x1], cv2.COLOR_RGB2YCrCb)[..., 0].astype(np.float32)
    obj = np.zeros(lum.shape, np.uint8)
    obj[y - y0:y - y0 + h, x - x0:x - x0 + w] = rec.mask
    d_in, d_out = cv2.distanceTransform(obj, cv2.DIST_L2, 3), cv2.distanceTransform(1 - obj, cv2.DIST_L2, 3)

    def local(sel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        w8 = sel.astype(np.float32)
        n = cv2.boxFilter(w8, -1, (9, 9), normalize=False)
        return cv2.boxFilter(lum * w8, -1, (9, 9), normalize=False) / np.maximum(n, 1e-3), n > 2

    y_in, ok_in = local((d_in > 3) & (d_in <= 6))
    y_out, ok_out = local((d_out > 3) & (d_out <= 6))
    ok = ok_in & ok_out
    out1, in1 = (d_out > 0) & (d_out <= 1) & ok, (d_in > 0) & (d_in <= 1) & ok
    if np.count_nonzero(out1) < 8 or np.count_nonzero(in1) < 8:
        return None
    step = y_in - y_out
    strong = np.abs(step) > 20
    level = (lum - y_out) / np.where(strong, step, 1.0)
    lv = [float(np.median(level[s & strong])) if np.count_nonzero(s & strong) > 4 else np.nan for s in (out1, in1)]
    return float(np.median(np.abs(lum - y_in)[out1])), float(np.median(np.abs(lum - y_in)[in1])), lv[0], lv[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("source", type=Path)
    ap.add_argument("work", type=Path)
    ap.add_argument("--families", default="", help="comma-separated feature families to print (default: all)")
    ap.add_argument("--against", type=Path, help="a second build of the same source: the paired difference")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.against is not None:
        d = paired(args.source, args.work, args.against)
        print(json.dumps(d, indent=2) if args.json else
              f"paired ({d['n_pasted']} pasted / {d['n_native']} native crops, the same folds): AUC {d['auc_work']} "
              f"against {d['auc_other']}, difference {d['difference']:+.4f} [{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}]")
        return
    from sklearn.metrics import roc_auc_score

    families = {f for f in args.families.split(",") if f}
    records = workdir_records(args.source, args.work)
    res = audit(records, seed=0).to_dict()
    pairs = match_by_size(records, [r.area if r.area >= MIN_AREA else 0 for r in records])
    needed = sorted({i for p in pairs for i in p})
    X, used, _ = extract_features([records[i] for i in needed])
    recs = [records[needed[int(k)]] for k in used]
    pasted = np.asarray([r.label == "pasted" for r in recs])
    out = {"auc": res["auc"], "ci": res["ci"], "cues": res["cues"], "n_pasted": res["n_pasted"],
           "n_native": res["n_native"], "features": {}, "transition": {}}
    for j, name in enumerate(FEATURE_NAMES):
        if not families or name.split(".")[0] in families:
            ok = np.isfinite(X[:, j])
            out["features"][name] = {"pasted": round(float(np.median(X[ok & pasted, j])), 3),
                                     "native": round(float(np.median(X[ok & ~pasted, j])), 3),
                                     "auc": round(float(roc_auc_score(pasted[ok], X[ok, j])), 3)}
    values: dict[str, list] = {"pasted": [], "native": []}
    last: tuple[str, np.ndarray] | None = None
    for rec in sorted((r for r in recs if 500 <= r.area <= 5000), key=lambda r: str(r.image)):
        if last is None or last[0] != str(rec.image):  # sorted by image: each decoded once
            last = (str(rec.image), decode_image(Path(rec.image)))  # type: ignore[arg-type]
        v = transition(last[1], rec)
        if v is not None:
            values[rec.label].append(v)
    for label, v in values.items():
        a = np.asarray(v)
        out["transition"][label] = {"n": len(a), **{k: round(float(np.nanmedian(a[:, i])), 3) for i, k in
                                                     enumerate(("dY_out1", "dY_in1", "level_out1", "level_in1"))}}
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"audit AUC {out['auc']} {out['ci']}  ({out['n_pasted']} pasted / {out['n_native']} native)")
    print("  " + "  ".join(f"{k} {v}" for k, v in out["cues"].items()))
    print(f"{'feature':<28}{'pasted':>9}{'native':>9}{'AUC':>7}")
    for name, f in out["features"].items():
        print(f"{name:<28}{f['pasted']:>9}{f['native']:>9}{f['auc']:>7}")
    for label, t in out["transition"].items():
        print(f"transition {label}: " + ", ".join(f"{k} {v}" for k, v in t.items()))


if __name__ == "__main__":
    main()
