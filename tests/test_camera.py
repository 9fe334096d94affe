"""Camera consistency: noise and blur estimates, matching the object only, JPEG quality and regridding."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from comcoco.compose.camera import (
    CameraParams,
    JpegEstimate,
    blockiness,
    blur_sigma,
    estimate_jpeg_quality,
    jpeg_noise_gain,
    jpeg_regrid,
    match_camera,
    noise_level,
    quality_from_table,
)
from comcoco.compose.cutout import cut_object, object_shape, paste
from comcoco.ids import rng_for
from comcoco.sources.images import decode_image


@pytest.fixture(scope="module")
def real(coco_real_dir: Path):
    data = json.loads((coco_real_dir / "instances_val2017_subset.json").read_text())
    images = {i["id"]: decode_image(coco_real_dir / i["file_name"]) for i in data["images"]}
    return data, images


def _jpeg(rgb: np.ndarray, q: int, sampling=cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, q, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, sampling])
    assert ok
    return buf.tobytes()


def _dec(data: bytes) -> np.ndarray:
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _smooth_scene(seed: int = 0, h: int = 160, w: int = 200) -> np.ndarray:
    """A low-noise scene with edges: smooth colour blobs and a few rectangles."""
    rng = np.random.default_rng(seed)
    img = cv2.resize(rng.uniform(40, 220, (6, 8, 3)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    for _ in range(12):
        x, y = int(rng.integers(0, w - 30)), int(rng.integers(0, h - 30))
        img[y:y + int(rng.integers(8, 30)), x:x + int(rng.integers(8, 30))] = rng.uniform(20, 235, 3)
    return np.clip(img, 0, 255).astype(np.uint8)


def test_noise_level_tracks_added_noise():
    base = cv2.GaussianBlur(_smooth_scene(), (0, 0), 1.2)
    rng = np.random.default_rng(1)
    prev = -1.0
    for s in (0.0, 2.0, 4.0, 8.0):
        noisy = np.clip(base + rng.normal(0, s, base.shape), 0, 255).round().astype(np.uint8)
        n = noise_level(noisy)
        assert n is not None
        expect_y = s * 0.668  # RGB iid noise seen in luma (BT.601 weights)
        assert abs(n.y - expect_y) < 0.25 * expect_y + 0.5
        assert n.y > prev
        prev = n.y
    assert noise_level(base[:3, :3]) is None


def test_blur_sigma_difference_of_squares_recovers_the_applied_blur(real):
    _, images = real
    base = cv2.resize(images[40083], None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    s0 = blur_sigma(cv2.GaussianBlur(base, (0, 0), 0.8))
    for s in (1.5, 2.5):
        s1 = blur_sigma(cv2.GaussianBlur(base, (0, 0), np.sqrt(0.8 ** 2 + s ** 2)))
        assert s0 is not None and s1 is not None
        assert abs(np.sqrt(s1 ** 2 - s0 ** 2) - s) < 0.35 * s
    assert blur_sigma(np.full((40, 40, 3), 90, np.uint8)) is None  # no edges: no estimate


def test_match_camera_blurs_and_noises_the_object_only(real):
    data, images = real
    ann = next(a for a in data["annotations"] if a["id"] == 198196)
    src = images[40083]
    cut = cut_object(src, object_shape(ann["segmentation"], src.shape[1], src.shape[0]), (150, 80, 140, 140))
    bg = images[785]
    rng = np.random.default_rng(3)
    soft_noisy = np.clip(cv2.GaussianBlur(bg, (0, 0), 2.0) + rng.normal(0, 6, bg.shape), 0, 255).astype(np.uint8)
    before = soft_noisy.copy()
    res = match_camera(cut.rgb, cut.alpha, soft_noisy, cut.box, rng_for(0, "test", "camera"))
    rgb, info = res.rgb, res.info
    assert np.array_equal(soft_noisy, before)  # the background is never touched
    assert rgb.shape == cut.rgb.shape and rgb.dtype == np.uint8
    assert info.blur_applied > 0.5
    assert info.noise_added.y > 1.0
    inner = cut.alpha >= 0.5
    after_noise = noise_level(rgb, inner)
    assert after_noise is not None and info.noise_background is not None
    assert abs(after_noise.y - info.noise_background.y) < 0.35 * info.noise_background.y
    # same seed, same bytes
    again = match_camera(cut.rgb, cut.alpha, soft_noisy, cut.box, rng_for(0, "test", "camera"))
    assert np.array_equal(rgb, again.rgb) and np.array_equal(res.alpha, again.alpha)
    # the cut edge is softened like the colours, but the mask keeps its meaning and place
    assert res.alpha.dtype == np.float32 and 0.0 <= res.alpha.min() and res.alpha.max() <= 1.0
    grad = lambda a: np.abs(np.diff(a, axis=1)).max()  # noqa: E731
    assert grad(res.alpha) < grad(cut.alpha)
    old_mask, new_mask = cut.alpha >= 0.5, res.alpha >= 0.5
    assert np.count_nonzero(old_mask ^ new_mask) < 0.1 * np.count_nonzero(old_mask)
    # pasting the matched object changes nothing outside its (new) alpha
    comp = soft_noisy.copy()
    paste(comp, type(cut)(rgb=rgb, alpha=res.alpha, box=cut.box, polygons=cut.polygons))
    x, y, w, h = cut.box
    outside = np.ones(comp.shape[:2], bool)
    outside[y:y + h, x:x + w] = res.alpha <= 0
    assert np.array_equal(comp[outside], soft_noisy[outside])


def test_match_camera_does_not_sharpen_and_says_why():
    scene = _smooth_scene(4)
    obj = cv2.GaussianBlur(scene[40:120, 40:120], (0, 0), 3.0)
    alpha = np.ones(obj.shape[:2], np.float32)
    res = match_camera(obj, alpha, scene, (40, 40, 80, 80), np.random.default_rng(0), CameraParams(noise=False))
    assert res.info.blur_applied == 0.0 and "not sharpened" in res.info.reason
    assert np.array_equal(res.rgb, obj) and np.array_equal(res.alpha, alpha)


def test_chroma_noisier_object_is_smoothed_and_jpeg_gain_raises_added_noise():
    rng = np.random.default_rng(0)
    scene = np.full((120, 160, 3), 128, np.uint8)
    scene = np.clip(scene + rng.normal(0, 2.0, scene.shape), 0, 255).astype(np.uint8)
    scene = _dec(_jpeg(scene, 85))  # 4:2:0: little pixel-level chroma noise
    ycc = np.full((60, 60, 3), 128.0, np.float32)
    ycc[..., 1:] += rng.normal(0, 6.0, (60, 60, 2))  # strong chroma noise only
    obj = cv2.cvtColor(np.clip(np.rint(ycc), 0, 255).astype(np.uint8), cv2.COLOR_YCrCb2RGB)
    alpha = np.ones((60, 60), np.float32)
    res = match_camera(obj, alpha, scene, (50, 30, 60, 60), np.random.default_rng(1))
    assert res.info.chroma_smoothing >= 0.5
    after = noise_level(res.rgb)
    before = noise_level(obj)
    assert after.cr < 0.6 * before.cr and after.cb < 0.6 * before.cb
    plain = match_camera(obj, alpha, scene, (50, 30, 60, 60), np.random.default_rng(1))
    with_jpeg = match_camera(obj, alpha, scene, (50, 30, 60, 60), np.random.default_rng(1),
                             jpeg=JpegEstimate(60, 2, "tables"))
    assert with_jpeg.info.noise_added.y >= plain.info.noise_added.y
    gain = jpeg_noise_gain(60)
    assert all(0.05 <= g < 1.0 for g in gain) and jpeg_noise_gain(95)[0] > gain[0]


def test_correlated_chroma_is_low_passed_until_it_measures_like_the_scene(real):
    """A real object with correlated chroma grain (blurred, as a resampled 4:2:0 source has it), its
    chroma amplified as a harmonization that raises saturation does: the low-pass σ is the smallest of
    the ladder after which the object's chroma noise measures within the excess of the scene's (searched
    by halves: the same σ as trying each in turn). The white-noise rule (std falls as 1/(2√π·σ)) would
    have smoothed it flatter than the scene."""
    from comcoco.compose.camera import _CHROMA_EXCESS, _CHROMA_SIGMAS, _chroma_smooth, _measure

    data, images = real
    ann = next(a for a in data["annotations"] if a["id"] == 198196)
    src = images[40083]
    cut = cut_object(src, object_shape(ann["segmentation"], src.shape[1], src.shape[0]), (150, 80, 140, 140))
    ycc = cv2.cvtColor(cut.rgb, cv2.COLOR_RGB2YCrCb).astype(np.float32)
    grain = cv2.GaussianBlur(np.random.default_rng(5).normal(0, 6.0, ycc.shape[:2] + (2,)).astype(np.float32), (0, 0), 0.6)
    ycc[..., 1:] = 128.0 + 1.8 * (ycc[..., 1:] + grain - 128.0)
    obj = cv2.cvtColor(np.clip(np.rint(ycc), 0, 255).astype(np.uint8), cv2.COLOR_YCrCb2RGB)
    grainy = images[785].astype(np.float32) + np.random.default_rng(6).normal(0, 0.4, images[785].shape)
    scene = np.clip(np.rint(grainy), 0, 255).astype(np.uint8)  # a scene with a little chroma grain
    res = match_camera(obj, cut.alpha, scene, cut.box, rng_for(0, "test", "chroma"))
    inner = cut.alpha >= 0.5
    n_bg, n_after = res.info.noise_background, res.info.noise_object
    n_before = _measure(obj, inner, blur=False)[1]
    assert n_bg is not None and n_after is not None and n_before is not None
    excess = lambda n: max(n.cr / n_bg.cr, n.cb / n_bg.cb)  # noqa: E731
    assert excess(n_before) > 4.0  # the case: far noisier chroma than the scene's
    sigma = res.info.chroma_smoothing
    k = _CHROMA_SIGMAS.index(sigma)
    assert k > 0 and excess(n_after) <= _CHROMA_EXCESS  # within the excess ...
    less = _measure(_chroma_smooth(obj, cut.alpha, _CHROMA_SIGMAS[k - 1]), inner, blur=False)[1]
    assert excess(less) > _CHROMA_EXCESS  # ... by the smallest σ that gets there
    in_turn = next(s for s in _CHROMA_SIGMAS
                   if excess(_measure(_chroma_smooth(obj, cut.alpha, s), inner, blur=False)[1]) <= _CHROMA_EXCESS)
    assert in_turn == sigma and res.info.blur_applied == 0.0  # (no blur before the low-pass here)
    ratio = min(n_bg.cr / n_before.cr, n_bg.cb / n_before.cb)
    white = float(np.clip(1.0 / (2.0 * np.sqrt(np.pi) * ratio), 0.5, 2.0))
    rule = _measure(_chroma_smooth(obj, cut.alpha, white), inner, blur=False)[1]
    assert white > sigma and max(rule.cr, rule.cb) < min(n_bg.cr, n_bg.cb)  # the rule: flatter than the scene
    again = match_camera(obj, cut.alpha, scene, cut.box, rng_for(0, "test", "chroma"))
    assert np.array_equal(again.rgb, res.rgb)


def test_quality_from_tables_and_from_pixels():
    scene = cv2.resize(_smooth_scene(5, 120, 160), (256, 192), interpolation=cv2.INTER_CUBIC)
    scene = np.clip(scene + np.random.default_rng(0).normal(0, 3, scene.shape), 0, 255).astype(np.uint8)
    for q in (62, 80, 90):
        data = _jpeg(scene, q)
        est = estimate_jpeg_quality(data)
        assert est == JpegEstimate(q, 2, "tables")
        px = estimate_jpeg_quality(None, _dec(data))
        assert px.method == "pixels" and px.quality is not None and abs(px.quality - q) <= 2
    assert estimate_jpeg_quality(_jpeg(scene, 75, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444)).subsampling == 0
    never = estimate_jpeg_quality(None, scene)  # never compressed: no JPEG history to match
    assert never.quality is None
    assert estimate_jpeg_quality(b"not an image", None) == JpegEstimate(None, 2, "none")


def test_quality_from_table_inverts_the_ijg_scaling():
    from comcoco.compose.jpeg import _ijg_table

    for q in (10, 50, 75, 95, 100):
        assert quality_from_table(_ijg_table(q)) == q


def test_real_fixture_qualities(coco_real_dir: Path):
    est = estimate_jpeg_quality(coco_real_dir / "000000040083.jpg")
    assert est.method == "tables" and 50 <= est.quality <= 100
    png = estimate_jpeg_quality(coco_real_dir / "000000039769.png")
    assert png.method == "none"  # a PNG file has no tables; the caller passes the pixels instead


def test_regrid_gives_the_object_the_scene_grid_and_leaves_the_rest(real):
    data, images = real
    # background: a never-compressed smooth scene compressed once at q 70 (a strong, visible grid)
    scene = cv2.resize(images[39769], (320, 240), interpolation=cv2.INTER_AREA)
    bg = _dec(_jpeg(scene, 70))
    ann = next(a for a in data["annotations"] if a["id"] == 2190839)
    src = images[39769]
    cut = cut_object(src, object_shape(ann["segmentation"], src.shape[1], src.shape[0]), (85, 20, 150, 207))
    comp = bg.copy()
    paste(comp, cut)
    est = estimate_jpeg_quality(None, bg)
    assert est.quality is not None and abs(est.quality - 70) <= 2
    assert blockiness(bg) > 1.1  # the scene has a visible grid ...
    rg = jpeg_regrid(comp, cut.alpha, cut.box, est)
    x0, y0, w, h = rg.region
    assert x0 % 16 == 0 and y0 % 16 == 0  # cut on the image's own MCU grid
    out = comp.copy()
    rg.apply(out)
    changed = np.any(out != comp, axis=-1)
    assert np.array_equal(changed, rg.full_effect(*comp.shape[:2]))
    # everything changed is the object or within the bleed ring of it
    support = np.zeros(comp.shape[:2], np.uint8)
    x, y, bw, bh = cut.box
    support[y:y + bh, x:x + bw] = cut.alpha > 0
    ring = cv2.dilate(support, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))) > 0
    assert not np.any(changed & ~ring)
    # ... which the pasted object lacked and now shows
    inner = (slice(y + bh // 4, y + 3 * bh // 4), slice(x + bw // 4, x + 3 * bw // 4))
    origin = (x + bw // 4, y + bh // 4)
    assert blockiness(comp[inner], origin) < 1.06
    assert blockiness(out[inner], origin) > blockiness(comp[inner], origin) + 0.07


def test_regrid_without_jpeg_history_is_a_no_op():
    comp = np.zeros((64, 64, 3), np.uint8)
    rg = jpeg_regrid(comp, np.ones((10, 10), np.float32), (5, 5, 10, 10), JpegEstimate(None, 2, "pixels"))
    assert rg.quality is None and not rg.effect.any()
    rg.apply(comp)
    assert not comp.any()
