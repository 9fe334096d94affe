"""The object's rim given back on the composite (comcoco.compose.rim), on a real COCO object and scene."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from comcoco.compose.cutout import MASK_THRESHOLD, cut_object, object_shape
from comcoco.compose.matte import refine_cutout
from comcoco.compose.rim import _FADE, MAX_GAIN, RIM, _depth, luma, match_rim, rim_ratio, source_rim
from comcoco.sources.images import decode_image


@pytest.fixture(scope="module")
def pasted(coco_real_dir: Path):
    """A real object cut from its photo (val2017 198196 of image 40083) and refined, and a real scene."""
    data = json.loads((coco_real_dir / "instances_val2017_subset.json").read_text())
    images = {i["id"]: decode_image(coco_real_dir / i["file_name"]) for i in data["images"]}
    ann = next(a for a in data["annotations"] if a["id"] == 198196)
    src = images[40083]
    cut = cut_object(src, object_shape(ann["segmentation"], src.shape[1], src.shape[0]), (150, 80, 140, 140))
    refined, _ = refine_cutout(cut)
    return cut, refined, images[785]


def _composite_ratio(rgb: np.ndarray, alpha: np.ndarray, scene: np.ndarray, box) -> float:
    x, y, w, h = box
    region = scene[y:y + h, x:x + w].astype(np.float32)
    blend = np.clip(np.rint(region + alpha[..., None] * (rgb.astype(np.float32) - region)), 0, 255).astype(np.uint8)
    r = rim_ratio(luma(blend), alpha >= MASK_THRESHOLD)
    assert r is not None
    return r


def test_rim_ratio_reads_a_darker_rim_and_needs_pixels():
    mask = np.zeros((40, 40), bool)
    mask[5:35, 5:35] = True
    lum = np.full((40, 40), 100.0, np.float32)
    depth = _depth(mask)
    lum[(depth > 0) & (depth <= RIM)] = 80.0  # the outermost 3 px darker
    assert rim_ratio(lum, mask) == pytest.approx(np.log(0.8), abs=1e-6)
    edge = np.zeros((40, 40), bool)
    edge[:, :12] = True  # a box edge counts as outline: the rim runs along it too
    lum2 = np.where(_depth(edge) <= RIM, 60.0, 120.0).astype(np.float32)
    assert rim_ratio(lum2, edge) == pytest.approx(np.log(0.5), abs=1e-6)
    tiny = np.zeros((40, 40), bool)
    tiny[10:16, 10:16] = True
    assert rim_ratio(lum, tiny) is None  # no band inside a 6-px object


def test_the_rim_is_brought_to_a_target_on_the_composite(pasted):
    """The refined object pasted into another photo: ``match_rim`` brings the composite's reading to the
    target (here 4 % darker than it reads), changes only the rim and its fade, only pixels the object
    shows, and the same call gives the same bytes."""
    cut, refined, scene = pasted
    assert source_rim(cut.rgb, cut.alpha) == rim_ratio(luma(cut.rgb), cut.alpha >= MASK_THRESHOLD)
    box = refined.box
    before = _composite_ratio(refined.rgb, refined.alpha, scene, box)
    target = before + float(np.log(0.96))
    out, gain = match_rim(refined.rgb, refined.alpha, scene, box, target)
    assert -MAX_GAIN < gain < 0
    assert _composite_ratio(out, refined.alpha, scene, box) == pytest.approx(target, abs=0.01)
    depth = _depth(refined.alpha >= MASK_THRESHOLD)
    changed = np.any(out != refined.rgb, axis=-1)
    assert changed.any() and not changed[depth >= RIM + _FADE].any() and not changed[refined.alpha <= 0].any()
    again, gain2 = match_rim(refined.rgb, refined.alpha, scene, box, target)
    assert gain2 == gain and np.array_equal(again, out)


def test_the_gain_is_capped_and_small_objects_are_left_alone(pasted):
    cut, refined, scene = pasted
    out, gain = match_rim(refined.rgb, refined.alpha, scene, refined.box, -2.0)  # a rim 7x darker: out of reach
    assert gain == -MAX_GAIN
    ring = (refined.alpha > 0) & (_depth(refined.alpha >= MASK_THRESHOLD) <= RIM)
    ratio = out[ring].astype(np.float32).sum() / max(1.0, refined.rgb[ring].astype(np.float32).sum())
    assert ratio == pytest.approx(1.0 - MAX_GAIN, abs=0.02)
    small = np.zeros((10, 10), np.float32)
    small[3:7, 3:7] = 1.0
    rgb = np.full((10, 10, 3), 90, np.uint8)
    same, g = match_rim(rgb, small, scene, (0, 0, 10, 10), -0.3)
    assert g == 0.0 and same is rgb
    assert match_rim(rgb, small, scene, (scene.shape[1] - 5, 0, 10, 10), -0.3)[1] == 0.0  # box off the frame
