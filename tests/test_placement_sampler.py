"""Default placement: GracoNet geometry, priors, hard constraints, scoring and determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from comcoco.placement.sampler import (
    Footprint,
    PlacementError,
    PlacementRequest,
    SamplerConfig,
    SceneObject,
    evaluate_box,
    params_from_box,
    placement_box,
    placement_from_params,
    sample_placement,
)

unit = st.floats(0.0, 1.0, allow_nan=False)
dims = st.integers(16, 1200)


def _inter(a, b) -> float:
    ix = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    iy = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return max(ix, 0.0) * max(iy, 0.0)


# --- geometry ----------------------------------------------------------------------------------


def test_placement_box_follows_gen_composite_image():
    # bg 640x480 is wider than a 1:2 object: s scales the height
    assert placement_box(0.5, 0.0, 1.0, 100, 200, 640, 480) == (0, 240, 120, 240)
    assert placement_box(0.5, 1.0, 0.0, 100, 200, 640, 480) == (520, 0, 120, 240)
    # a 4:1 object is wider than the scene: s scales the width
    assert placement_box(0.5, 0.5, 0.5, 400, 100, 640, 480) == (160, 200, 320, 80)


def test_params_from_box_is_get_trans_label():
    s, rx, ry = params_from_box((100, 60, 120, 240), 100, 200, 640, 480)
    assert (s, rx, ry) == pytest.approx((240 / 480, 100 / (640 - 120), 60 / (480 - 240)))
    # a box spanning the whole width: the x fraction is undefined, any value gives x = 0
    s, rx, ry = params_from_box((0, 10, 640, 160), 400, 100, 640, 480)
    assert s == 1.0 and rx == 0.5 and ry == pytest.approx(10 / 320)
    assert placement_box(s, rx, ry, 400, 100, 640, 480) == (0, 10, 640, 160)
    with pytest.raises(ValueError, match="positive size"):
        params_from_box((0, 0, 0, 10), 1, 1, 10, 10)


@settings(max_examples=150, deadline=None)
@given(st.floats(1e-3, 1.0), unit, unit, dims, dims, dims, dims)
def test_box_is_always_in_frame(s, rx, ry, fw, fh, bw, bh):
    x, y, w, h = placement_box(s, rx, ry, fw, fh, bw, bh)
    assert w >= 1 and h >= 1
    assert 0 <= x and x + w <= bw and 0 <= y and y + h <= bh


@settings(max_examples=150, deadline=None)
@given(
    st.floats(0.05, 1.0), unit, unit, st.integers(40, 400), st.floats(1 / 3, 3.0), dims, st.floats(0.5, 2.0)
)
def test_params_box_round_trip(s, rx, ry, fh, aspect, bw, bg_aspect):
    fw = max(1, round(fh * aspect))
    bh = max(16, round(bw / bg_aspect))
    box = placement_box(s, rx, ry, fw, fh, bw, bh)
    s2, rx2, ry2 = params_from_box(box, fw, fh, bw, bh)
    assert all(0.0 <= v <= 1.0 for v in (s2, rx2, ry2))
    again = placement_box(s2, rx2, ry2, fw, fh, bw, bh)
    # the limiting side is exact; the other side carries the rounding of the aspect (<= 3 px here)
    assert max(abs(a - b) for a, b in zip(again, box, strict=True)) <= 3, (box, again)
    tall = bw / bh > fw / fh
    assert (again[3] == box[3]) if tall else (again[2] == box[2])


# --- sampling ----------------------------------------------------------------------------------


def _request(avoid=(), objects=None) -> PlacementRequest:
    if objects is None:
        objects = (
            SceneObject(1, (40.0, 150.0, 40.0, 110.0)),
            SceneObject(3, (200.0, 120.0, 200.0, 150.0), referred=True),
            SceneObject(62, (420.0, 200.0, 60.0, 80.0)),
        )
    return PlacementRequest(
        fg_box=(300.0, 180.0, 60.0, 150.0),
        fg_image_size=(640, 480),
        fg_category_id=1,
        bg_size=(500, 375),
        bg_objects=tuple(objects),
        avoid=tuple(avoid),
    )


def test_same_inputs_same_placement_other_key_other_placement():
    req = _request()
    a = sample_placement(req, seed=3, key="sample-1")
    b = sample_placement(req, seed=3, key="sample-1")
    assert a == b and a.components == b.components and a.score == b.score
    assert sample_placement(req, seed=3, key="sample-2") != a
    assert sample_placement(req, seed=4, key="sample-1") != a
    assert a.box == placement_box(a.s, a.rx, a.ry, 60.0, 150.0, 500, 375)
    assert set(a.components) == {"scale", "overlap", "support", "truncation", "avoid"}
    assert all(0.0 <= v <= 1.0 for v in a.components.values()) and 0.0 <= a.score <= 1.0


def test_more_candidates_never_lower_the_score():
    # no hard limit can bite, so every candidate is valid and candidate 0 is the same draw for any k
    req = _request(objects=(SceneObject(1, (40.0, 150.0, 40.0, 110.0)),))
    cfg = SamplerConfig(max_cover_other=1.0)
    gains = []
    for key in range(20):
        one = sample_placement(req, seed=0, key=key, k=1, config=cfg)
        eight = sample_placement(req, seed=0, key=key, k=8, config=cfg)
        assert eight.score >= one.score
        gains.append(eight.score - one.score)
    assert max(gains) > 0.01  # choosing among candidates matters


boxes = st.tuples(st.floats(0, 400), st.floats(0, 300), st.floats(1, 300), st.floats(1, 300))
# background objects about the placed object's size (~47x117 px here), where partial cover is likely
object_boxes = st.tuples(st.floats(0, 450), st.floats(0, 300), st.floats(20, 120), st.floats(40, 200))


@settings(max_examples=100, deadline=None)
@given(
    st.lists(boxes, max_size=3),
    st.lists(st.tuples(object_boxes, st.booleans()), max_size=4),
    st.integers(0, 10**6),
    st.sampled_from([1, 8]),  # k = 1: the constraint alone, without scoring steering away
)
def test_hard_constraints_hold(avoid, objects, key, k):
    req = _request(avoid=avoid, objects=[SceneObject(5, b, referred=r) for b, r in objects])
    try:
        p = sample_placement(req, seed=1, key=key, k=k)
    except PlacementError as exc:
        assert "no valid placement" in str(exc)
        return
    x, y, w, h = p.box
    assert 0 <= x and x + w <= 500 and 0 <= y and y + h <= 375
    for a in avoid:
        assert _inter(p.box, a) == 0.0
    for b, referred in objects:
        ioa = _inter(p.box, b) / (b[2] * b[3])
        assert ioa <= (0.5 if referred else 0.8) + 1e-9


def test_referred_objects_stay_mostly_visible_over_many_scenes():
    # a referred object about the placed object's size, anywhere: candidates often overlap it
    rng = np.random.default_rng(0)
    covered = 0
    for key in range(300):
        b = (rng.uniform(0, 450), rng.uniform(0, 300), rng.uniform(20, 120), rng.uniform(40, 200))
        req = _request(objects=[SceneObject(5, b, referred=True)])
        p = sample_placement(req, seed=1, key=key, k=1)
        ioa = _inter(p.box, b) / (b[2] * b[3])
        assert ioa <= 0.5, (key, b, p.box)
        covered += ioa > 0
    assert covered > 20  # overlaps do happen; they are bounded, not avoided altogether


def test_no_room_raises_with_reasons():
    req = _request(avoid=[(0.0, 0.0, 500.0, 375.0)])
    with pytest.raises(PlacementError, match=r"after 32 candidates \(32 overlaps an already placed object\)"):
        sample_placement(req, seed=0, key="full")


def test_footprint_touches_is_the_pixel_test():
    rng = np.random.default_rng(3)
    taken = rng.random((60, 80)) < 0.002
    fp = Footprint.of(taken)
    assert fp.size == (80, 60)
    seen = set()
    for _ in range(2000):
        x, y = rng.uniform(-10, 85, 2)
        w, h = rng.uniform(0.5, 30, 2)
        x0, y0 = max(math.floor(x), 0), max(math.floor(y), 0)
        x1, y1 = min(math.ceil(x + w), 80), min(math.ceil(y + h), 60)
        expect = bool(x1 > x0 and y1 > y0 and taken[y0:y1, x0:x1].any())
        assert fp.touches((x, y, w, h)) == expect, (x, y, w, h)
        seen.add(expect)
    assert seen == {True, False}
    with pytest.raises(ValueError, match="H×W"):
        Footprint.of(np.zeros((4, 4, 3), bool))


def _band() -> np.ndarray:
    """Another target's long shadow: a 9-px diagonal band whose bounding box is the whole frame."""
    taken = np.zeros((375, 500), bool)
    for x in range(500):
        y = round(x * 374 / 499)
        taken[max(y - 4, 0):y + 5, x] = True
    return taken


def test_a_long_shadow_blocks_its_pixels_not_its_bounding_box():
    import cv2

    taken = _band()
    with pytest.raises(PlacementError, match="overlaps an already placed object"):
        sample_placement(_request(avoid=[cv2.boundingRect(taken.view(np.uint8))], objects=()), seed=0, key="band")
    req = PlacementRequest(**{**_request(objects=()).__dict__, "footprint": Footprint.of(taken)})
    p = sample_placement(req, seed=0, key="band")
    x, y, w, h = p.box
    assert not taken[y:y + h, x:x + w].any()


def test_a_scan_finds_the_free_slot_every_draw_misses():
    taken = np.ones((375, 500), bool)
    taken[:, 300:350] = False  # one free column, a little wider than the object
    base = _request(objects=())
    with pytest.raises(PlacementError, match=r"after 32 candidates \(32 overlaps"):  # the draws alone
        sample_placement(PlacementRequest(**{**base.__dict__, "avoid": ((0, 0, 300, 375), (350, 0, 150, 375))}),
                         seed=0, key="slot")
    req = PlacementRequest(**{**base.__dict__, "footprint": Footprint.of(taken)})
    p = sample_placement(req, seed=0, key="slot")
    x, y, w, h = p.box
    assert 300 <= x and x + w <= 350 and not taken[y:y + h, x:x + w].any()
    assert sample_placement(req, seed=0, key="slot") == p  # no draws: the same spot every time
    taken[:, 300:350] = True
    full = PlacementRequest(**{**base.__dict__, "footprint": Footprint.of(taken)})
    with pytest.raises(PlacementError, match=r"after 32 candidates and a scan of every position"):
        sample_placement(full, seed=0, key="slot")
    wrong = PlacementRequest(**{**base.__dict__, "footprint": Footprint.of(np.zeros((10, 10), bool))})
    with pytest.raises(PlacementError, match="footprint is 10x10, the background 500x375"):
        sample_placement(wrong, seed=0, key="slot")


def test_crowded_scene_extends_to_relaxed_candidates():
    # everything below y=150 is taken: the ground-line prior (bottom at ~70%) cannot be met
    req = _request(avoid=[(0.0, 150.0, 500.0, 225.0)], objects=())
    p = sample_placement(req, seed=0, key="crowded", k=4)
    assert p.box[1] + p.box[3] <= 150
    assert p.components["support"] < 0.9  # the relaxed ground line is scored down, not hidden


def test_malformed_request_is_a_placement_error_naming_the_field():
    bad = PlacementRequest((0.0, 0.0, 0.0, 10.0), (640, 480), 1, (500, 375), ())
    with pytest.raises(PlacementError, match="fg_box"):
        sample_placement(bad, seed=0, key=0)
    bad_bg = PlacementRequest((0.0, 0.0, 5.0, 10.0), (640, 480), 1, (0, 375), ())
    with pytest.raises(PlacementError, match="bg_size"):
        sample_placement(bad_bg, seed=0, key=0)


def test_scale_prior_keeps_relative_size_and_ground_contact():
    req = _request(objects=())  # no same-category evidence: the source image is the only prior
    src_rel = math.sqrt(60 * 150 / (640 * 480))
    src_bottom = (180 + 150) / 480
    logs, bottoms = [], []
    for key in range(200):
        p = sample_placement(req, seed=0, key=key)
        logs.append(math.log(math.sqrt(p.box[2] * p.box[3] / (500 * 375)) / src_rel))
        bottoms.append((p.box[1] + p.box[3]) / 375)
    assert abs(float(np.median(logs))) < 0.05  # same apparent size, up to pixel rounding
    assert 0.03 < float(np.std(logs)) < 0.3  # jittered, not frozen
    assert abs(float(np.mean(bottoms)) - src_bottom) < 0.03


def test_scale_term_prefers_the_size_of_same_category_objects():
    req = _request(objects=(SceneObject(1, (50.0, 100.0, 50.0, 150.0)),))
    same_size = evaluate_box(req, (300, 100, 50, 150))
    double = evaluate_box(req, (250, 0, 100, 300))
    assert same_size[2] is None and double[2] is None
    assert same_size[1]["scale"] == pytest.approx(1.0)
    tol = SamplerConfig().scale_tolerance  # Gaussian in the log size ratio: twice the size is ln 2 away
    assert double[1]["scale"] == pytest.approx(math.exp(-0.5 * (math.log(2) / tol) ** 2))
    assert double[0] < same_size[0]
    # the same sizes without evidence in the scene: judged against the source-implied size instead
    alone = evaluate_box(_request(objects=()), (300, 100, 50, 150))
    assert alone[1]["scale"] < same_size[1]["scale"]


def test_covering_most_of_a_referred_object_is_rejected():
    req = _request()
    referred = (200.0, 120.0, 200.0, 150.0)
    _, comps, reason = evaluate_box(req, (200, 120, 150, 150))  # 75 % of it
    assert reason == "hides a referred object" and comps["overlap"] == pytest.approx(0.25)
    _, comps, reason = evaluate_box(req, (200, 120, 80, 150))  # 40 % of it
    assert reason is None and comps["overlap"] == pytest.approx(1 - 80 * 150 / (referred[2] * referred[3]))
    with pytest.raises(PlacementError, match="hides a referred object"):
        placement_from_params(req, *params_from_box((200, 120, 150, 375), 60, 150, 500, 375))


def test_config_is_validated_and_changes_the_result():
    with pytest.raises(ValueError):
        SamplerConfig(w_scale=-1)
    req = _request(objects=())
    wide = SamplerConfig(scale_jitter=0.6)
    spread = [sample_placement(req, 0, k, k=1, config=wide).box[2] for k in range(30)]
    narrow = [sample_placement(req, 0, k, k=1).box[2] for k in range(30)]
    assert np.std(spread) > np.std(narrow)


def test_a_given_box_is_checked_against_the_footprint_pixels():
    from comcoco.placement.place import place

    taken = _band()
    req = PlacementRequest(**{**_request(objects=()).__dict__, "footprint": Footprint.of(taken)})
    clear = (300, 20, 40, 100)  # above the band, inside its bounding box
    assert not taken[20:120, 300:340].any()
    assert place(req, seed=0, key="k", given_box=clear).box == clear
    with pytest.raises(PlacementError, match=r"overlaps an object already pasted into this composite \(or its shadow\)"):
        place(req, seed=0, key="k", given_box=(100, 50, 40, 100))
