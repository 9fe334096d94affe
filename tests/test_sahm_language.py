"""The language-baseline judgment (paper Table 8): ratios, object-level bootstrap intervals and verdicts."""

from __future__ import annotations

import numpy as np
import pytest

from comcoco.sahm.validate import (
    COLLAPSE_RATIO,
    MIN_JUDGE_OBJECTS,
    blind_by_pasted,
    judge_language,
    pasted_note,
)


def _items(n_objects: int, per_object: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    groups = [f"ref{o}" for o in range(n_objects) for _ in range(per_object)]
    orig = rng.uniform(0.5, 0.9, size=len(groups))
    return groups, orig, rng


def test_collapse_is_called_when_both_ratios_fall_below_half_with_confidence():
    groups, orig, rng = _items(60, 3)
    ious = {"original": orig, "random": orig * rng.uniform(0.0, 0.3, len(orig)), "null": orig * 0.1}
    out = judge_language(ious, groups, seed=1)
    assert out["objects"] == 60 and out["items"] == 180
    assert out["verdict"].startswith("IoU collapses")
    assert out["ratio"]["null"] == pytest.approx(0.1)
    lo, hi = out["ratio_ci95"]["random"]
    assert lo < out["ratio"]["random"] < hi < COLLAPSE_RATIO


def test_equal_iou_without_language_is_a_possible_shortcut():
    groups, orig, rng = _items(60, 3)
    shuffled = orig[rng.permutation(len(orig))]  # same distribution, no dependence on the expression
    out = judge_language({"original": orig, "random": shuffled, "null": orig}, groups)
    assert out["verdict"].startswith("IoU does not collapse")
    assert out["ratio_ci95"]["null"][1] >= 1.0


def test_a_significant_but_partial_drop_is_reported_as_such():
    groups, orig, _ = _items(80, 2)
    out = judge_language({"original": orig, "random": orig * 0.7, "null": orig * 0.2}, groups)
    assert out["verdict"].startswith("IoU drops without the expression but keeps 70%")


def test_too_few_objects_or_a_weak_model_is_inconclusive():
    groups, orig, _ = _items(MIN_JUDGE_OBJECTS - 1, 5)  # many items, but few independent objects
    out = judge_language({"original": orig, "random": orig * 0.1, "null": orig * 0.1}, groups)
    assert out["verdict"].startswith("inconclusive") and "referred objects" in out["verdict"]
    groups, orig, _ = _items(50, 2)
    weak = orig * 0.2
    out = judge_language({"original": weak, "random": weak * 0.1, "null": weak * 0.1}, groups)
    assert out["verdict"].startswith("inconclusive") and "too low" in out["verdict"]
    zero = np.zeros(len(groups))
    out = judge_language({"original": zero, "random": zero, "null": zero}, groups)
    assert out["verdict"].startswith("inconclusive") and out["ratio"] == {"random": None, "null": None}


def test_a_model_trained_without_text_that_finds_the_object_reveals_a_shortcut():
    """Table 8 can collapse on a dataset with a shortcut; the blind model is what catches it."""
    groups, orig, rng = _items(60, 3)
    table8 = {"original": orig, "random": orig * 0.2, "null": orig * 0.1}
    out = judge_language({**table8, "blind": orig * rng.uniform(0.8, 1.0, len(orig))}, groups)
    assert out["verdict"].startswith("shortcut: a model trained without expressions finds the object at 9")
    lo, hi = out["ratio_ci95"]["blind"]
    assert lo < out["ratio"]["blind"] < hi
    out = judge_language({**table8, "blind": orig * 0.25}, groups)
    assert out["verdict"].startswith("IoU collapses") and "reaches 25% of its IoU" in out["verdict"]
    assert judge_language(table8, groups)["verdict"] == "IoU collapses without the expression: no language shortcut detected"


def test_the_interval_is_over_objects_not_items():
    """Copies of one object's items add no evidence: the interval must not shrink with them."""
    groups, orig, rng = _items(30, 1)
    noisy = np.clip(orig * rng.uniform(0.3, 1.3, len(orig)), 0, 1)
    once = judge_language({"original": orig, "random": noisy, "null": noisy}, groups, seed=3)
    k = 20
    many = judge_language({"original": np.repeat(orig, k), "random": np.repeat(noisy, k),
                           "null": np.repeat(noisy, k)}, list(np.repeat(groups, k)), seed=3)
    assert many["ratio"]["null"] == pytest.approx(once["ratio"]["null"])
    w_once = np.diff(once["ratio_ci95"]["null"])[0]
    w_many = np.diff(many["ratio_ci95"]["null"])[0]
    assert w_many == pytest.approx(w_once, rel=0.25)  # an item-level bootstrap would shrink it ~√20 = 4.5×


def test_same_inputs_and_seed_give_the_same_interval():
    groups, orig, rng = _items(40, 2)
    ious = {"original": orig, "random": orig * rng.uniform(0, 1, len(orig)), "null": orig * 0.4}
    assert judge_language(ious, groups, seed=5) == judge_language(ious, groups, seed=5)


def test_the_blind_share_is_broken_down_by_pastes_per_composite():
    """A lone paste is found without reading, one of four is not: each row has its own share and interval."""
    groups, orig, rng = _items(60, 3)
    pasted = [1 if int(g[3:]) < 20 else 4 for g in groups]  # objects 0-19 alone in their composites
    blind = np.where(np.array(pasted) == 1, orig * rng.uniform(0.9, 1.0, len(orig)), orig * 0.25)
    ious = {"original": orig, "random": orig * 0.2, "null": orig * 0.1, "blind": blind}
    rows = blind_by_pasted(ious, groups, pasted, seed=2)
    assert [(r["pasted"], r["objects"], r["items"]) for r in rows] == [(1, 20, 60), (4, 40, 120)]
    lone, crowd = rows
    assert lone["ratio"] > 0.9 and lone["ratio_ci95"][0] > 0.85
    assert crowd["ratio"] == pytest.approx(0.25) and crowd["ratio_ci95"][1] < 0.3
    assert lone["original"] == pytest.approx(orig[:60].mean()) and lone["blind"] == pytest.approx(blind[:60].mean())
    assert blind_by_pasted(ious, groups, pasted, seed=2) == rows
    note = pasted_note({"blind_by_pasted": rows})
    assert note.startswith("trained without text, by objects pasted per composite: 1: 0.9") and "4: 0.25 (40 objects)" in note
    assert blind_by_pasted(ious, groups, [3] * len(groups)) == []  # one count (the paper profile): no breakdown
    assert blind_by_pasted({k: v for k, v in ious.items() if k != "blind"}, groups, pasted) == []
    assert pasted_note({}) == ""
    zero = {"original": np.where(np.array(pasted) == 1, 0.0, orig), "blind": blind}
    lone = blind_by_pasted(zero, groups, pasted)[0]
    assert "ratio" not in lone and lone["original"] == 0.0
    assert pasted_note({"blind_by_pasted": [lone]}) == ("trained without text, by objects pasted per composite: "
                                                        "1: n/a (20 objects, full IoU 0)")


@pytest.mark.parametrize("layout", ["fair", "shortcut"])
def test_control_layouts_differ_only_in_the_seam(layout):
    import torch

    from comcoco.sahm.synthetic import COLOURS, SyntheticRemovalDataset

    ds = SyntheticRemovalDataset(12, 64, seed=3, layout=layout, distractors=3)
    assert ds.ref_ids() == list(range(12)) and ds.split == "synthetic"
    for i in range(len(ds)):
        it = ds[i]
        m = it["mask"][0] > 0.5
        changed = (it["image"] - it["ground_truth"]).abs().amax(0) > 1e-6
        assert torch.equal(changed, m)  # removal changes exactly the masked pixels
        colour = it["expression"].split()[1]
        inside = it["image"][:, m]
        target = torch.tensor(COLOURS[colour])[:, None]
        share = ((inside - target).abs().amax(0) < 1e-6).float().mean()
        white = (inside.amin(0) > 0.999).float().mean()
        if layout == "fair":
            assert share == 1.0 and white == 0.0
        else:
            assert 0.5 < share < 1.0 and share + white == pytest.approx(1.0)  # the shape and its white rim
        others = {c for c in COLOURS if c != colour}
        visible = {c for c in others
                   if ((it["ground_truth"] - torch.tensor(COLOURS[c])[:, None, None]).abs().amax(0) < 1e-6).any()}
        assert visible == others  # three same-size distractors, one of each other colour
    assert ds.expression(5) == ds[5]["expression"]
    assert torch.equal(SyntheticRemovalDataset(12, 64, seed=3, layout=layout)[7]["image"], ds[7]["image"])


def test_control_layout_arguments_are_checked():
    from comcoco.sahm.synthetic import SyntheticRemovalDataset

    with pytest.raises(ValueError, match="layout"):
        SyntheticRemovalDataset(4, layout="tidy")
    with pytest.raises(ValueError, match="distractors"):
        SyntheticRemovalDataset(4, layout="fair", distractors=4)
