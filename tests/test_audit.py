"""The artifact audit: grouping by composite, refusal below the minimum, and that it finds real cues."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

import comcoco.audit.detector as detector
from comcoco.audit import (
    FAMILIES,
    FEATURE_NAMES,
    MIN_PER_CLASS,
    AuditRecord,
    audit,
    extract_features,
    grouped_folds,
    match_by_size,
    object_features,
)
from comcoco.ids import rng_for


def _ellipse_mask(h, w, cx, cy, ax, ay):
    m = np.zeros((h, w), np.uint8)
    cv2.ellipse(m, (int(cx), int(cy)), (int(ax), int(ay)), 0, 0, 360, 1, -1)
    return m > 0


def _scene(i: int, cue: str, seed: int = 0):
    """One composite: two native objects and one 'pasted' object on a noisy, slightly soft ground.

    Natives are drawn into the scene before the camera (shadow, global blur, noise). The pasted
    object either goes through the same process (``cue="none"``) or is drawn afterwards, sharp,
    noise-free, shadowless and with a bright rim (``cue="paste"``).
    """
    rng = rng_for(seed, "audit-test-scene", i)
    h, w = 150, 220
    img = np.empty((h, w, 3), np.float32)
    img[:] = rng.uniform(90, 170, 3)
    img *= 1.0 + 0.1 * cv2.resize(rng.standard_normal((4, 6)).astype(np.float32), (w, h))[..., None]
    slots = [(40, 70), (110, 90), (180, 75)]
    order = rng.permutation(3)
    masks, labels = [], []
    for k, slot in enumerate(order):
        cx, cy = slots[slot]
        ax, ay = rng.uniform(10, 18), rng.uniform(16, 26)
        m = _ellipse_mask(h, w, cx, cy, ax, ay)
        colour = rng.uniform(20, 235, 3)
        pasted = k == 0
        masks.append((m, colour, cy + ay, cx, ax))
        labels.append("pasted" if pasted else "native")

    def draw(dst, m, colour, base, cx, ax, shadow=True):
        if shadow:
            sh = np.zeros(dst.shape[:2], np.float32)
            cv2.ellipse(sh, (int(cx), int(base)), (int(ax * 1.2), 4), 0, 0, 360, 1.0, -1)
            dst *= (1 - 0.45 * cv2.GaussianBlur(sh, (0, 0), 1.5))[..., None]
        dst[m] = colour

    for (m, colour, base, cx, ax), lab in zip(masks, labels, strict=True):
        if lab == "native" or cue == "none":
            draw(img, m, colour, base, cx, ax)
    img = cv2.GaussianBlur(img, (0, 0), 0.9)
    img += rng.normal(0, 3.0, img.shape).astype(np.float32)
    if cue == "paste":
        m, colour, *_ = masks[0]
        img[m] = colour
        rim = (cv2.dilate(m.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0) & ~m
        img[rim] = 250.0
    out = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    comp = f"c{i:03d}"
    return [AuditRecord.from_full_mask(comp, out, m, lab, f"{comp}-{k}")
            for k, ((m, *_), lab) in enumerate(zip(masks, labels, strict=True))]


def _dataset(cue: str, n: int = 45, seed: int = 0):
    return [r for i in range(n) for r in _scene(i, cue, seed)]


def test_obvious_paste_cues_are_found():
    res = audit(_dataset("paste"), seed=0, bootstrap=300)
    assert res.auc is not None and res.auc > 0.95
    assert res.ci is not None and res.ci[0] > 0.85
    assert res.n_pasted == res.n_native >= MIN_PER_CLASS
    assert set(res.cues) == set(FAMILIES)
    assert res.cues["shadow"] > 0.8 and res.cues["boundary"] > 0.8
    assert res.verdict.startswith("detectable")
    d = res.to_dict()
    assert {"auc", "ci", "n_pasted", "n_native", "cues", "verdict"} <= set(d)
    assert isinstance(d["ci"], list) and len(d["ci"]) == 2
    json.dumps(d)  # the CLI prints it as JSON


def test_same_process_is_not_detectable():
    res = audit(_dataset("none"), seed=0, bootstrap=300)
    assert res.auc is not None and 0.3 < res.auc < 0.7
    assert res.ci[0] <= 0.5 <= res.ci[1]
    assert "not detectable" in res.verdict or "hard to detect" in res.verdict


def test_folds_never_split_a_composite(monkeypatch):
    seen = []
    real = detector.grouped_folds

    def spy(groups, y, folds, seed):
        out = real(groups, y, folds, seed)
        seen.append((list(groups), out))
        return out

    monkeypatch.setattr(detector, "grouped_folds", spy)
    records = _dataset("paste", n=40)
    res = audit(records, seed=3, bootstrap=50)
    assert res.auc is not None and len(seen) == 1
    groups, splits = seen[0]
    assert len(splits) == res.folds == 5
    covered = np.zeros(len(groups), int)
    for tr, te in splits:
        train_groups = {groups[i] for i in tr}
        test_groups = {groups[i] for i in te}
        assert not train_groups & test_groups  # a composite is never in both
        covered[te] += 1
    assert np.all(covered == 1)  # every crop is held out exactly once


def test_grouped_folds_on_uneven_groups():
    groups = [f"g{i // 3}" for i in range(30)] + [f"h{i}" for i in range(12)]
    y = np.asarray([i % 2 for i in range(42)])
    for seed in (0, 1):
        for tr, te in grouped_folds(groups, y, 5, seed):
            assert not {groups[i] for i in tr} & {groups[i] for i in te}
    assert [te.tolist() for _, te in grouped_folds(groups, y, 5, 7)] == \
        [te.tolist() for _, te in grouped_folds(groups, y, 5, 7)]


def test_refuses_below_the_minimum():
    records = _dataset("paste", n=12)
    res = audit(records, bootstrap=10)
    assert res.auc is None and res.ci is None
    assert all(v is None for v in res.cues.values())
    assert "not judged" in res.verdict and "12 pasted" in res.verdict and str(MIN_PER_CLASS) in res.verdict
    # natives only: nothing to match, still a verdict, never an exception
    natives = [r for r in _dataset("paste", n=40) if r.label == "native"]
    res = audit(natives, bootstrap=10)
    assert res.auc is None and res.n_pasted == 0 and "0 pasted" in res.verdict


def test_deterministic():
    records = _dataset("paste", n=36)
    a = audit(records, seed=5, bootstrap=100).to_dict()
    b = audit(records, seed=5, bootstrap=100).to_dict()
    assert a == b


def test_size_matching_rule():
    def rec(comp, label, side, oid, x=0):
        m = np.ones((side, side), bool)
        return AuditRecord(comp, np.zeros((1, 1, 3), np.uint8), m, label, oid, (x, 0))

    records = [
        rec("a", "pasted", 20, "p1"),
        rec("a", "native", 19, "n-close-but-touching", x=22),  # within 8 px of the paste: unusable
        rec("b", "native", 21, "n1", x=100),
        rec("b", "native", 40, "n2", x=200),  # area ratio 4: too different
        rec("c", "pasted", 10, "p2"),
        rec("c", "native", 11, "n3", x=100),
    ]
    pairs = match_by_size(records)
    assert [(records[p].object_id, records[n].object_id) for p, n in pairs] == [("p1", "n1"), ("p2", "n3")]


def test_features_on_real_fixture_objects(coco_real_dir: Path):
    data = json.loads((coco_real_dir / "instances_val2017_subset.json").read_text())
    files = {i["id"]: coco_real_dir / i["file_name"] for i in data["images"]}
    records = [AuditRecord.from_polygons(str(a["image_id"]), files[a["image_id"]], a["segmentation"], "native",
                                         str(a["id"])) for a in data["annotations"]]
    records.append(AuditRecord("x", coco_real_dir / "missing.jpg", np.ones((20, 20), bool), "native", "gone"))
    X, used, problems = extract_features(records)
    assert X.shape == (len(used), len(FEATURE_NAMES)) and len(used) >= 8
    assert len(problems) == 1 and "gone" in problems[0]
    assert np.isfinite(X).mean() > 0.8  # frame-filling objects (bed, couch) have no outside band
    tiny = object_features(np.zeros((50, 50, 3), np.uint8), np.ones((5, 5), bool), (10, 10))
    assert tiny is None  # below MIN_AREA
