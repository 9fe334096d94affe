"""Alpha refinement and fringe decontamination: on real COCO objects and on constructed edge cases."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from comcoco.compose.cutout import MASK_THRESHOLD, cut_object, object_shape, paste
from comcoco.compose.matte import (
    MatteParams,
    default_band,
    guided_filter,
    refine_cutout,
    refine_matte,
)
from comcoco.sources.images import decode_image


def _fixture_objects(coco_real_dir: Path):
    data = json.loads((coco_real_dir / "instances_val2017_subset.json").read_text())
    images = {i["id"]: decode_image(coco_real_dir / i["file_name"]) for i in data["images"]}
    return data, images


def _spill(comp: np.ndarray, cut, src_box_rgb: np.ndarray, src_alpha: np.ndarray) -> float:
    """How far the pasted fringe leans towards the *source* background's colour (RGB units)."""
    a = cut.alpha
    m = a >= MASK_THRESHOLD
    x, y, w, h = cut.box
    C = comp[y:y + h, x:x + w].astype(np.float32)
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))

    def local(img, wgt, r):
        s = cv2.boxFilter(img * wgt[..., None], -1, (2 * r + 1, 2 * r + 1), normalize=True)
        n = cv2.boxFilter(wgt.astype(np.float32), -1, (2 * r + 1, 2 * r + 1), normalize=True)
        return s / np.maximum(n, 1e-6)[..., None], n

    F, wf = local(src_box_rgb.astype(np.float32), (cv2.erode(m.astype(np.uint8), k) > 0).astype(np.float32), 6)
    Bn, wb = local(C, (a <= 0).astype(np.float32), 6)
    Bs, ws = local(src_box_rgb.astype(np.float32), (src_alpha <= 0).astype(np.float32), 8)
    d_in = cv2.distanceTransform(m.astype(np.uint8), cv2.DIST_L2, 3)
    sel = (a > 0) & (d_in <= 2) & (wf > 1e-3) & (wb > 1e-3) & (ws > 1e-3)
    u = Bs[sel] - F[sel]
    nu = np.linalg.norm(u, axis=1)
    ok = nu > 20
    pred = a[sel][:, None] * F[sel] + (1 - a[sel][:, None]) * Bn[sel]
    return float((((C[sel] - pred) * u).sum(1) / np.maximum(nu, 1e-6))[ok].mean())


def test_refinement_removes_source_spill_on_real_objects(coco_real_dir: Path):
    data, images = _fixture_objects(coco_real_dir)
    bg = images[785]
    before, after = [], []
    for ann in data["annotations"]:
        if ann["image_id"] == 785 or ann["area"] > 100_000 or ann["area"] < 1000:
            continue
        src = images[ann["image_id"]]
        shape = object_shape(ann["segmentation"], src.shape[1], src.shape[0])
        rx, ry, rw, rh = shape.rect
        s = min(1.0, 300 / rh)
        box = (20, 40, max(4, int(rw * s)), max(4, int(rh * s)))
        cut = cut_object(src, shape, box)
        refined, info = refine_cutout(cut)
        assert info.refined and info.fallback == ""
        for c, acc in ((cut, before), (refined, after)):
            comp = bg.copy()
            paste(comp, c)
            acc.append(_spill(comp, c, cut.rgb, cut.alpha))
    assert len(before) >= 5
    # the fringe leans far less towards the source background after refinement
    assert np.mean(after) < 0.5 * np.mean(before)


def test_background_outside_stays_exact_and_mask_rule_holds(coco_real_dir: Path):
    data, images = _fixture_objects(coco_real_dir)
    ann = next(a for a in data["annotations"] if a["id"] == 198196)
    src, bg = images[40083], images[785]
    shape = object_shape(ann["segmentation"], src.shape[1], src.shape[0])
    cut = cut_object(src, shape, (100, 60, 150, 150))
    refined, info = refine_cutout(cut)
    m = refined.alpha >= MASK_THRESHOLD
    near = cv2.dilate(m.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    assert np.all(refined.alpha[~near] == 0.0)  # alpha is exactly 0 beyond one pixel of the mask
    assert refined.alpha.dtype == np.float32 and refined.alpha.min() >= 0 and refined.alpha.max() <= 1
    comp = bg.copy()
    paste(comp, refined)
    full_near = np.zeros(bg.shape[:2], bool)
    full_near[60:210, 100:250] = refined.alpha > 0
    assert np.array_equal(comp[~full_near], bg[~full_near])
    assert info.area_after > 0.8 * info.area_before  # a refinement, not a different object
    # the placed polygons describe the new mask (their raster covers it)
    assert refined.polygons and all(len(p) >= 6 for p in refined.polygons)


def test_refinement_that_would_empty_the_object_falls_back():
    rgb = np.full((9, 40, 3), 120, np.uint8)
    alpha = np.zeros((9, 40), np.float32)
    alpha[4, 2:38] = 1.0  # a one-pixel strand: erode-then-feather removes it
    res = refine_matte(rgb, alpha, MatteParams(method="feather", band=3))
    assert not res.info.refined
    assert "mask" in res.info.fallback
    assert np.array_equal(res.alpha, alpha) and np.array_equal(res.rgb, rgb)


def test_empty_alpha_is_a_flagged_no_op():
    rgb = np.zeros((5, 5, 3), np.uint8)
    res = refine_matte(rgb, np.zeros((5, 5), np.float32))
    assert not res.info.refined and res.info.fallback == "empty mask"


def test_guided_filter_snaps_to_the_colour_edge():
    # a red disc on green; the given alpha is a disc 3 px too large: the guide pulls it back
    h = w = 64
    yy, xx = np.mgrid[0:h, 0:w]
    true = ((yy - 32) ** 2 + (xx - 32) ** 2) <= 15 ** 2
    coarse = (((yy - 32) ** 2 + (xx - 32) ** 2) <= 18 ** 2).astype(np.float32)
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[true] = (220, 30, 30)
    rgb[~true] = (30, 200, 40)
    res = refine_matte(rgb, coarse, MatteParams(band=4, decontaminate="none"))
    new = res.alpha >= MASK_THRESHOLD
    err_before = np.count_nonzero(coarse.astype(bool) ^ true)
    err_after = np.count_nonzero(new ^ true)
    assert err_after < 0.7 * err_before


def test_guided_filter_of_constant_guide_is_a_box_blur():
    g = np.full((20, 20, 3), 0.5, np.float32)
    p = np.zeros((20, 20), np.float32)
    p[:, 10:] = 1.0
    q = guided_filter(g, p, 2, 1e-3)
    ref = cv2.boxFilter(cv2.boxFilter(p, -1, (5, 5), borderType=cv2.BORDER_REFLECT), -1, (5, 5),
                        borderType=cv2.BORDER_REFLECT)
    np.testing.assert_allclose(q, ref, atol=1e-4)


def test_extend_decontamination_pulls_fringe_to_interior_colour():
    rgb = np.zeros((40, 40, 3), np.uint8)
    rgb[...] = (0, 0, 255)  # source background: blue
    rgb[8:32, 8:32] = (200, 200, 0)  # object: yellow
    alpha = np.zeros((40, 40), np.float32)
    alpha[6:34, 6:34] = 1.0  # polygon 2 px too big: a blue rim inside the mask
    alpha[5, 6:34] = alpha[34, 6:34] = alpha[6:34, 5] = alpha[6:34, 34] = 0.4
    res = refine_matte(rgb, alpha, MatteParams(method="none", decontaminate="extend", band=2))
    fringe = (res.alpha > 0) & (res.alpha < 1)
    assert fringe.any()
    assert np.all(res.rgb[fringe][:, 2] < 60)  # no blue left where the object is partly transparent
    assert res.info.fringe_pixels == int(np.count_nonzero(np.any(res.rgb != rgb, axis=-1)))
    assert not np.any(res.rgb[res.alpha >= 1.0] != rgb[res.alpha >= 1.0])  # opaque pixels keep their bytes


def test_default_band_grows_with_size_and_is_bounded():
    assert default_band(0) == 1
    assert default_band(100) <= default_band(10_000) <= default_band(1_000_000) == 4


@pytest.mark.parametrize("bad", [dict(method="x"), dict(decontaminate="y"), dict(band=0), dict(min_keep=0)])
def test_bad_params_are_rejected(bad):
    with pytest.raises(ValueError):
        MatteParams(**bad)
