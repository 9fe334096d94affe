"""Light estimation and the pasted object's shadow: exactness of the effect footprint, fallbacks."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from comcoco.compose.cutout import cut_object, full_mask, object_shape, paste
from comcoco.compose.shadow import (
    DEFAULT_LIGHT,
    MAX_STRENGTH,
    Light,
    NativeObject,
    apply_shadow,
    cast_shadow,
    estimate_light,
)
from comcoco.sources.images import decode_image

SIDE = Light(direction=(0.8, 0.6), strength=0.45, source="objects", confidence=0.9, n_objects=3)


@pytest.fixture(scope="module")
def real(coco_real_dir: Path):
    data = json.loads((coco_real_dir / "instances_val2017_subset.json").read_text())
    images = {i["id"]: decode_image(coco_real_dir / i["file_name"]) for i in data["images"]}
    return data, images


def _cut(real, ann_id: int, box):
    data, images = real
    ann = next(a for a in data["annotations"] if a["id"] == ann_id)
    src = images[ann["image_id"]]
    return cut_object(src, object_shape(ann["segmentation"], src.shape[1], src.shape[0]), box)


@pytest.mark.parametrize("light", [SIDE, DEFAULT_LIGHT, Light((-1.0, 0.0), 0.3, "gradient", 0.4)])
def test_effect_footprint_is_exactly_the_changed_pixels_on_real_images(real, light):
    _, images = real
    bg = images[785]
    cut = _cut(real, 198196, (200, 180, 120, 120))
    H, W = bg.shape[:2]
    sh = cast_shadow(cut.alpha, cut.box, (W, H), light, background=bg)
    assert sh.kind in ("cast", "contact") and sh.map.dtype == np.float32
    assert float(sh.map.max()) <= MAX_STRENGTH + 1e-6 and float(sh.map.min()) >= 0.0
    out = bg.copy()
    apply_shadow(out, sh)
    changed = np.any(out != bg, axis=-1)
    assert np.array_equal(changed, sh.full_effect(H, W))  # map > 0 exactly where a byte changed
    assert np.all(out <= bg)  # darkening only
    # with the object pasted on top, the union of mask and effect holds every changed pixel
    paste(out, cut)
    union = sh.full_effect(H, W) | (full_mask(cut, H, W) > 0) | _touched(cut, H, W)
    assert np.array_equal(out[~union], bg[~union])
    if light.source != "default":
        assert sh.kind == "cast"
    else:
        assert sh.kind == "contact" and "contact" in sh.reason


def _touched(cut, H, W):
    t = np.zeros((H, W), bool)
    x, y, w, h = cut.box
    t[y:y + h, x:x + w] = cut.alpha > 0
    return t


def test_without_background_the_footprint_is_a_superset(real):
    _, images = real
    bg = images[40083]
    cut = _cut(real, 442619, (150, 20, 100, 158))
    H, W = bg.shape[:2]
    loose = cast_shadow(cut.alpha, cut.box, (W, H), SIDE)
    tight = cast_shadow(cut.alpha, cut.box, (W, H), SIDE, background=bg)
    assert loose.region == tight.region
    assert np.all(loose.effect[tight.effect])
    out = bg.copy()
    apply_shadow(out, loose)
    assert np.all(loose.full_effect(H, W)[np.any(out != bg, axis=-1)])
    assert np.all(loose.map[loose.effect] >= 0.5 / 255)


def test_shadow_darkens_below_the_object_in_the_light_direction():
    bg = np.full((200, 300, 3), 200, np.uint8)
    alpha = np.zeros((60, 20), np.float32)
    alpha[:, 5:15] = 1.0
    sh = cast_shadow(alpha, (100, 80, 20, 60), (300, 200), Light((1.0, 0.0), 0.5, "objects", 1.0), background=bg)
    out = bg.copy()
    apply_shadow(out, sh)
    base_row = 80 + 60
    right = out[base_row - 3:base_row + 3, 125:150, 0].astype(int).mean()
    left = out[base_row - 3:base_row + 3, 70:95, 0].astype(int).mean()
    assert right < left - 5  # the cast shadow falls to the right, away from the light
    assert out[base_row, 110, 0] < 200 * (1 - 0.5) + 25  # the contact shadow's core is near full strength
    assert np.array_equal(out[:60], bg[:60])  # nothing above the object changes


def test_object_on_the_bottom_border_gets_a_contact_shadow_only():
    alpha = np.ones((40, 20), np.float32)
    sh = cast_shadow(alpha, (50, 60, 20, 40), (200, 100), SIDE)
    assert sh.kind in ("contact", "none")
    assert "bottom border" in sh.reason
    x, y, w, h = sh.region
    assert y + h <= 100 and x + w <= 200


def test_shadow_leaving_the_frame_is_clipped():
    alpha = np.ones((80, 30), np.float32)
    sh = cast_shadow(alpha, (165, 10, 30, 80), (200, 120), Light((1.0, 0.2), 0.5, "objects", 1.0))
    x, y, w, h = sh.region
    assert x >= 0 and y >= 0 and x + w <= 200 and y + h <= 120
    assert sh.kind == "cast" and "clipped" in sh.reason
    assert sh.map.shape == (h, w)


def test_empty_mask_and_no_shadow_scenes_give_no_map():
    sh = cast_shadow(np.zeros((10, 10), np.float32), (5, 5, 10, 10), (50, 50), SIDE)
    assert sh.kind == "none" and sh.reason == "empty mask" and not sh.effect.any()
    dark = Light((0.0, 1.0), 0.0, "objects", 0.8, 2)
    sh = cast_shadow(np.ones((10, 10), np.float32), (5, 5, 10, 10), (50, 50), dark)
    assert sh.kind == "none" and "no shadows" in sh.reason
    out = np.full((50, 50, 3), 100, np.uint8)
    apply_shadow(out, sh)
    assert np.all(out == 100)


def _scene_with_shadows(direction: float, strength: float, seed: int = 0):
    """Ground with noise and four box objects each casting a contact shadow offset along ``direction``."""
    rng = np.random.default_rng(seed)
    h, w = 240, 400
    img = np.full((h, w, 3), 170.0, np.float32)
    img += rng.normal(0, 3, img.shape)
    objs = []
    shade = np.zeros((h, w), np.float32)
    for i, (x, y) in enumerate([(40, 60), (140, 90), (250, 70), (330, 120)]):
        ow, oh = 30, 60 + 5 * i
        cv2.ellipse(shade, (int(x + ow / 2 + direction * 0.45 * ow), y + oh), (int(0.6 * ow), 6), 0, 0, 360, 1.0, -1)
        objs.append((x, y, ow, oh))
    shade = cv2.GaussianBlur(shade, (0, 0), 1.5)
    img *= (1 - strength * shade)[..., None]
    natives = []
    for x, y, ow, oh in objs:
        img[y:y + oh, x:x + ow] = (40, 90, 160)
        poly = [x, y, x + ow, y, x + ow, y + oh, x, y + oh]
        natives.append(NativeObject.from_annotation((x, y, ow, oh), [poly]))
    return np.clip(img, 0, 255).astype(np.uint8), natives


@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_light_from_the_objects_own_shadows(direction):
    img, natives = _scene_with_shadows(direction, 0.4)
    light = estimate_light(img, natives)
    assert light.source == "objects" and light.n_objects == 4
    assert np.sign(light.direction[0]) == np.sign(direction)
    assert 0.2 < light.strength <= 0.45
    assert light.confidence > 0.3


def test_light_from_the_gradient_and_the_default():
    h, w = 120, 200
    ramp = np.linspace(230, 90, w, dtype=np.float32)[None, :, None]  # bright on the left
    img = np.broadcast_to(ramp, (h, w, 3)).astype(np.uint8)
    light = estimate_light(img, [])
    assert light.source == "gradient" and light.direction[0] > 0 and light.direction[1] > 0
    flat = np.full((h, w, 3), 128, np.uint8)
    assert estimate_light(flat, []) == DEFAULT_LIGHT
    assert estimate_light(np.zeros((2, 2, 3), np.uint8), []) == DEFAULT_LIGHT


def test_unusable_objects_fall_back_instead_of_failing():
    img = np.full((100, 100, 3), 128, np.uint8)
    assert NativeObject.from_annotation((0, 0, 5, 5), {"counts": "x", "size": [1, 1]}) is None
    assert NativeObject.from_annotation((0, 0, 5, 5), [[1, 2, 3]]) is None
    # an object whose base is the bottom border, and one covering the whole frame
    at_border = NativeObject.from_annotation((10, 50, 20, 50), [[10, 50, 30, 50, 30, 100, 10, 100]])
    whole = NativeObject.from_annotation((0, 0, 100, 100), [[0, 0, 99, 0, 99, 99, 0, 99]])
    assert estimate_light(img, [at_border, whole]) == DEFAULT_LIGHT


def test_demo_scenes_read_as_lit_by_objects(demo_source_small: Path):
    from comcoco.sources.refer import load_source

    src = load_source(demo_source_small)
    by_image: dict[int, list] = {}
    for a in src.annotations():
        by_image.setdefault(a.image_id, []).append(a)
    sources = []
    for info in src.images()[:8]:
        img = decode_image(src.image_path(info.image_id))
        natives = [NativeObject.from_annotation(a.bbox, a.segmentation) for a in by_image.get(info.image_id, [])]
        light = estimate_light(img, natives)
        sources.append(light.source)
        if light.source == "objects":
            assert light.strength > 0.1  # the demo draws a 45 % contact shadow under every object
    assert sources.count("objects") >= 6
