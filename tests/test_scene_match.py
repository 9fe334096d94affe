"""The robust profile's scene matching: the scene's own shadow, outline blur, photo-level harmonization
and noise matched after the regrid."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from comcoco.compose.camera import (
    JpegEstimate,
    _roundtrip,
    cut_edge_sigma,
    match_camera,
    noise_level,
    outline_band,
    outline_blur,
    scene_camera,
)
from comcoco.compose.cutout import rasterize_alpha
from comcoco.compose.scene_shadow import MIN_OBJECTS, learn_template, template_shadow
from comcoco.compose.shadow import NativeObject, apply_shadow
from comcoco.harmonize.scenes import fit_between, harmonize_between


def _ground_with_shadows(strength: float, seed: int = 0, shifts: tuple[int, ...] = (0, 0, 0, 0)):
    """Textured ground, four box objects, each with a flat elliptic shadow at its base (moved sideways
    by ``shifts`` px)."""
    rng = np.random.default_rng(seed)
    h, w = 240, 400
    img = np.full((h, w, 3), 170.0, np.float32) + rng.normal(0, 3, (h, w, 3))
    dark = np.zeros((h, w), np.float32)
    boxes = [(40, 60, 30, 60), (140, 90, 30, 65), (250, 70, 30, 70), (330, 120, 30, 75)]
    for (x, y, ow, oh), dx in zip(boxes, shifts, strict=True):
        cv2.ellipse(dark, (x + ow // 2 + dx, y + oh), (int(0.6 * ow), 6), 0, 0, 360, 1.0, -1)
    img *= (1 - strength * cv2.GaussianBlur(dark, (0, 0), 1.5))[..., None]
    natives = []
    for x, y, ow, oh in boxes:
        img[y:y + oh, x:x + ow] = (40, 90, 160)
        natives.append(NativeObject.from_annotation((x, y, ow, oh), [[x, y, x + ow, y, x + ow, y + oh, x, y + oh]]))
    return np.clip(img, 0, 255).astype(np.uint8), natives


def test_template_learns_the_scenes_shadow_and_draws_it_under_a_new_object():
    img, natives = _ground_with_shadows(0.4)
    t = learn_template(img, natives)
    assert t is not None and t.n_objects == 4
    assert 0.25 < float(t.darkening.max()) <= 0.45  # the drawn core darkening is 0.4
    # a new 24×50 object on the ground: its shadow sits at its base, as wide as the natives' relatively
    alpha = np.zeros((50, 24), np.float32)
    alpha[:, :] = 1.0
    box = (190, 170, 24, 50)
    sh = template_shadow(alpha, box, (img.shape[1], img.shape[0]), t, background=img)
    assert sh.kind == "scene"
    canvas = img.copy()
    apply_shadow(canvas, sh)
    changed = np.any(canvas != img, axis=-1)
    assert np.array_equal(changed, sh.full_effect(*img.shape[:2]))  # the footprint is exactly what changed
    assert np.all(canvas.astype(int) <= img.astype(int))  # darkening only
    ys, xs = np.nonzero(changed)
    base = box[1] + box[3]
    assert abs(np.median(ys) - base) <= 6 and abs(np.median(xs) - (box[0] + 12)) <= 3
    assert xs.max() - xs.min() < 2.2 * box[2]  # its width follows the natives' (1.2 object widths)


def test_template_keeps_the_core_darkness_of_shadows_that_do_not_line_up():
    aligned = learn_template(*_ground_with_shadows(0.4))
    shifted = learn_template(*_ground_with_shadows(0.4, shifts=(-14, 14, -14, 14)))
    assert aligned is not None and shifted is not None
    # each shifted shadow is as dark as an aligned one; their median, cell for cell, would not be
    assert float(shifted.darkening.max()) >= 0.85 * float(aligned.darkening.max())


def test_template_reads_each_row_against_its_own_ground():
    """A ground whose light changes with depth (a receding ground, vignetting) is not read as shadow or
    its absence: each row is compared with the reference ground of its own row."""
    img, natives = _ground_with_shadows(0.4)
    h = img.shape[0]
    ramp = (1.0 + 0.8 * (0.5 - np.arange(h, dtype=np.float32) / h))[:, None, None]  # 40 % brighter at the top
    graded = np.clip(img.astype(np.float32) * ramp, 0, 255).astype(np.uint8)
    flat, tilted = learn_template(img, natives), learn_template(graded, natives)
    assert flat is not None and tilted is not None
    # against one reference for rows from above the base to far below it, the core read 0.335
    assert abs(float(tilted.darkening.max()) - float(flat.darkening.max())) < 0.02
    assert abs(float(tilted.darkening.max()) - 0.4) < 0.03


def test_no_template_without_shadows_or_objects():
    rng = np.random.default_rng(1)
    flat = np.clip(170 + rng.normal(0, 3, (240, 400, 3)), 0, 255).astype(np.uint8)
    _, natives = _ground_with_shadows(0.4)
    assert learn_template(flat, natives) is None  # objects without shadows: no template
    assert learn_template(flat, natives[:MIN_OBJECTS - 1]) is None
    assert learn_template(flat, []) is None
    img, natives = _ground_with_shadows(0.4)
    t = learn_template(img, natives)
    empty = template_shadow(np.zeros((10, 10), np.float32), (5, 5, 10, 10), (400, 240), t)
    assert empty.kind == "none" and empty.reason == "empty mask"


def _discs(sigma: float, seed: int = 0, size: int = 160) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    acc = np.zeros((size, size), np.float32)
    t = np.linspace(0, 2 * np.pi, 60, endpoint=False)
    for _ in range(6):
        cx, cy, r = rng.uniform(30, size - 30), rng.uniform(30, size - 30), rng.uniform(10, 20)
        acc = np.maximum(acc, rasterize_alpha([np.column_stack([cx + r * np.cos(t), cy + r * np.sin(t)])], size, size))
    mask = acc >= 0.5
    if sigma > 0:
        acc = cv2.GaussianBlur(acc, (0, 0), sigma)
    img = np.clip(np.rint(60 + 140 * acc), 0, 255).astype(np.uint8)
    return np.repeat(img[..., None], 3, axis=2), mask


def test_outline_blur_orders_outlines_by_their_blur():
    readings = []
    for s in (0.0, 0.7, 1.4):
        img, mask = _discs(s)
        readings.append(outline_blur(img, outline_band(mask)))
    assert readings[0] < readings[1] < readings[2]
    assert abs(readings[0] - cut_edge_sigma()) < 0.3  # a sharp cut reads like the reference cut
    assert outline_blur(img, np.zeros(mask.shape, bool)) is None


def test_silhouette_gets_the_scenes_outline_blur_even_when_colours_need_none():
    scene_img, scene_mask = _discs(1.2, seed=3)
    scene = scene_camera(scene_img, outlines=outline_band(scene_mask))
    assert scene.outline is not None
    # a flat object with a perfectly sharp cut outline, pasted into the middle
    t = np.linspace(0, 2 * np.pi, 60, endpoint=False)
    alpha = rasterize_alpha([np.column_stack([30 + 18 * np.cos(t), 30 + 18 * np.sin(t)])], 60, 60)
    obj = np.full((60, 60, 3), 220, np.uint8)
    box = (50, 50, 60, 60)
    res = match_camera(obj, alpha, scene_img, box, np.random.default_rng(0), scene=scene)
    assert res.info.blur_edge > 0.5
    assert np.count_nonzero(res.alpha > 0) > np.count_nonzero(alpha > 0)  # the edge now reaches out
    region = scene_img[50:110, 50:110].astype(np.float32)
    after = np.rint(region + res.alpha[..., None] * (res.rgb.astype(np.float32) - region)).astype(np.uint8)
    before = np.rint(region + alpha[..., None] * (obj.astype(np.float32) - region)).astype(np.uint8)
    band = outline_band(alpha >= 0.5)
    assert abs(outline_blur(after, band) - scene.outline) < abs(outline_blur(before, band) - scene.outline)
    assert np.all(res.rgb[res.alpha > 0] == 220)  # the colours carried out are the object's own


@pytest.mark.parametrize("quality", [75, 90])
def test_noise_is_matched_after_the_regrid(quality):
    rng = np.random.default_rng(0)
    base = cv2.resize(rng.uniform(60, 200, (4, 4, 3)).astype(np.float32), (160, 160), interpolation=cv2.INTER_CUBIC)
    scene = _roundtrip(np.clip(np.rint(base + rng.normal(0, 4.0, base.shape)), 0, 255).astype(np.uint8), quality)
    target = noise_level(scene)
    obj = np.clip(np.rint(base[40:120, 40:120]), 0, 255).astype(np.uint8)  # the same colours, noiseless
    alpha = np.ones((80, 80), np.float32)
    res = match_camera(obj, alpha, scene, (40, 40, 80, 80), np.random.default_rng(1),
                       jpeg=JpegEstimate(quality=quality, subsampling=2, method="tables"))
    got = noise_level(_roundtrip(res.rgb, quality))
    assert abs(got.y - target.y) < 0.2 * target.y


def test_photo_harmonization_moves_the_object_by_the_photos_difference():
    rng = np.random.default_rng(2)
    target = np.clip(rng.normal(120, 30, (120, 160, 3)), 0, 255).astype(np.uint8)
    same, _ = fit_between(target, target)
    assert all(abs(v) < 1e-6 for v in same.as_tuple())  # the same photo: nothing to correct
    darker = (target.astype(np.float32) * 0.6).astype(np.uint8)
    args, _ = fit_between(darker, target)
    assert args.brightness > 0.05  # a darker source photo: the object is brightened
    mask = np.zeros(target.shape[:2], np.float32)
    mask[40:80, 50:100] = 1.0
    comp = target.copy()
    comp[40:80, 50:100] = darker[40:80, 50:100]
    out, _ = harmonize_between(darker, comp, mask)
    assert np.array_equal(out[mask == 0], comp[mask == 0])  # nothing outside the object changes
    assert out[40:80, 50:100].mean() > comp[40:80, 50:100].mean()
