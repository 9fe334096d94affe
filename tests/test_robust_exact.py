"""The robust profile's fast paths give exactly what their direct definitions give, bit for bit.

Each speed-up of the robust compose path (windowed, gathered or cached forms of a computation) is
checked here against the plain form it replaces, on data that exercises its edge cases: the build's
output must not change by a single byte when the path gets faster.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from comcoco.compose import scene_shadow
from comcoco.compose.scene_shadow import NU, NV, _cell_grid, _cell_means


def _cell_means_direct(lum: np.ndarray, occupied: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """The template cells' free-ground means, one cell at a time (the definition)."""
    H, W = lum.shape
    out = np.full((NV, NU), np.nan, np.float32)
    for i in range(NV):
        r0, r1 = max(0, int(round(ys[i]))), min(H, max(int(round(ys[i + 1])), int(round(ys[i])) + 1))
        if r1 <= r0:
            continue
        band_l, band_f = lum[r0:r1], occupied[r0:r1] == 0
        for j in range(NU):
            c0, c1 = max(0, int(round(xs[j]))), min(W, max(int(round(xs[j + 1])), int(round(xs[j])) + 1))
            if c1 <= c0:
                continue
            free = band_f[:, c0:c1]
            if np.count_nonzero(free) < max(1.0, scene_shadow._MIN_FREE * free.size):
                continue
            out[i, j] = float(band_l[:, c0:c1][free].mean())
    return out


@pytest.mark.parametrize("foot", [
    (200.5, 150.0, 60.0, 90.0),  # inside the frame
    (20.0, 230.0, 50.0, 100.0),  # clipped left and below
    (390.0, 60.0, 140.0, 40.0),  # clipped right, wide
    (100.0, 100.0, 9.0, 11.0),  # a small object: cells under a pixel overlap
    (150.0, 120.0, 3.0, 4.0),  # tinier still
])
def test_cell_means_equal_the_per_cell_means(foot):
    rng = np.random.default_rng(7)
    h, w = 240, 400
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    lum = scene_shadow._luma(rgb)
    occupied = (rng.random((h, w)) < 0.3).astype(np.uint8)  # a third of the ground is taken
    occupied[80:160, 150:260] = 1  # and a block of it entirely
    xs, ys = _cell_grid(*foot)
    fast, direct = _cell_means(lum, occupied, xs, ys), _cell_means_direct(lum, occupied, xs, ys)
    assert np.isfinite(direct).any()
    assert np.array_equal(fast, direct, equal_nan=True)
    assert fast.tobytes() == direct.tobytes()


@pytest.mark.parametrize("size", [(90, 70), (300, 220)])  # one region; tiled
def test_noise_only_measure_equals_the_full_measure(size):
    from comcoco.compose.camera import _measure

    rng = np.random.default_rng(3)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.clip(80 + 60 * np.sin(xx / 9.0)[..., None] + rng.normal(0, 4, (h, w, 3)), 0, 255).astype(np.uint8)
    mask = ((yy - h / 2) ** 2 / (0.4 * h) ** 2 + (xx - w / 2) ** 2 / (0.45 * w) ** 2) < 1
    blur, noise = _measure(rgb, mask)
    assert blur is not None and noise is not None
    assert _measure(rgb, mask, blur=False) == (None, noise)


def test_scene_cache_composes_the_same_bytes_and_measures_each_background_once(demo_source_small, monkeypatch):
    from comcoco.compose import ComposeConfig, ImageCache, SourceIndex, compose_group, plan_groups, robust
    from comcoco.matching.scene import match_backgrounds
    from comcoco.sources.refer import load_source

    src = load_source(demo_source_small)
    index = SourceIndex.from_source(src)
    config = ComposeConfig(seed=1)
    groups = plan_groups(match_backgrounds(src.refs(), src.annotations(), k=5, seed=0), index, config)
    backgrounds = {g.bg_image_id for g in groups if g.bg_image is not None}
    assert len(backgrounds) < len(groups)  # some composites share a background
    measured: list[int] = []
    plain = robust.measure_scene
    monkeypatch.setattr(robust, "measure_scene", lambda bg, *a: measured.append(id(bg)) or plain(bg, *a))
    images, scenes = ImageCache(index.image_path), robust.SceneCache()
    for g in groups:
        a = compose_group(g, images, config)
        b = compose_group(g, images, config, scenes=scenes)
        assert [s.row for s in a.samples] == [s.row for s in b.samples]
        assert (a.composite is None) == (b.composite is None)
        if a.composite is not None:
            assert a.composite.tobytes() == b.composite.tobytes()
        for x, y in zip(a.samples, b.samples, strict=True):
            for name in ("ground_truth", "mask", "effect_mask"):
                u, v = getattr(x, name), getattr(y, name)
                assert (u is None and v is None) or u.tobytes() == v.tobytes()
    assert len(measured) == len(groups) + len(backgrounds)  # every composite without the cache, once each with


@pytest.mark.parametrize("box", [(130, 95, 61, 47), (0, 0, 40, 33), (579, 401, 61, 79), (3, 200, 1, 1), (250, 7, 9, 200)])
def test_object_harmonization_equals_the_full_composites(box):
    """``harmonize_object_between`` on the box gives exactly the pixels ``harmonize_between`` gives the
    object in the full composite (and the frame sizes put the thumbnail grid across the box's edges)."""
    from comcoco.harmonize.scenes import harmonize_between, harmonize_object_between

    rng = np.random.default_rng(box[0] + box[1])
    H, W = 480, 640
    yy, xx = np.mgrid[0:H, 0:W]
    bg = np.clip(np.stack([60 + 0.2 * xx, 90 + 0.15 * yy, 140 - 0.1 * xx], -1) + rng.normal(0, 6, (H, W, 3)),
                 0, 255).astype(np.uint8)
    source = np.clip(rng.normal((150, 110, 70), 35, (300, 420, 3)), 0, 255).astype(np.uint8)
    x, y, w, h = box
    obj = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    oy, ox = np.mgrid[0:h, 0:w]
    sel = ((oy - h / 2) ** 2 / max(h / 2, 1) ** 2 + (ox - w / 2) ** 2 / max(w / 2, 1) ** 2) <= 1.0
    trial = bg.copy()
    trial[y:y + h, x:x + w][sel] = obj[sel]
    full = np.zeros((H, W), np.float32)
    full[y:y + h, x:x + w][sel] = 1.0
    ref, ref_args = harmonize_between(source, trial, full)
    out, args = harmonize_object_between(source, bg, obj, sel, box)
    assert args == ref_args and any(args.as_tuple())
    expected = obj.copy()
    expected[sel] = ref[y:y + h, x:x + w][sel]
    assert out.tobytes() == expected.tobytes()
    assert not np.array_equal(out[sel], obj[sel])  # the filters did change the object


@pytest.mark.parametrize("shape", [(1, 1), (2, 5), (3, 3), (7, 7), (13, 90), (64, 64)])
def test_valid_region_without_a_mask_is_the_eroded_region(shape):
    import cv2

    from comcoco.compose.camera import _valid

    for border in (1, 3):
        k = np.ones((2 * border + 1, 2 * border + 1), np.uint8)
        eroded = cv2.erode(np.ones(shape, np.uint8), k, borderType=cv2.BORDER_CONSTANT, borderValue=0) > 0
        assert np.array_equal(_valid(None, shape + (3,), border), eroded)


def test_keep_out_equals_the_full_frame_dilation():
    import cv2

    from comcoco.compose.robust import FOOTPRINT_MARGIN, keep_out

    rng = np.random.default_rng(5)
    k = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * FOOTPRINT_MARGIN + 1, 2 * FOOTPRINT_MARGIN + 1))
    for x, y, w, h in [(200, 150, 80, 60), (0, 0, 30, 20), (610, 450, 30, 30), (5, 300, 630, 10), (320, 240, 1, 1)]:
        touched = np.zeros((480, 640), bool)
        touched[y:y + h, x:x + w] = rng.random((h, w)) < 0.7
        touched[y, x] = touched[y + h - 1, x + w - 1] = True
        full = cv2.dilate(touched.astype(np.uint8), k) > 0
        assert np.array_equal(keep_out(touched), full)
    assert not keep_out(np.zeros((480, 640), bool)).any()


def _zeroed_where_unchanged(m: np.ndarray, region: np.ndarray) -> np.ndarray:
    """The shadow rule on the whole region: zero wherever shading leaves the pixel's bytes as they are."""
    from comcoco.compose.shadow import shade

    out = m.copy()
    out[np.all(shade(region, m) == region, axis=-1)] = 0.0
    return out


def test_shadow_maps_tested_where_they_darken_equal_the_whole_region_test():
    from comcoco.compose.scene_shadow import ShadowTemplate, template_shadow
    from comcoco.compose.shadow import Light, cast_shadow

    rng = np.random.default_rng(11)
    H, W = 240, 400
    bg = np.clip(rng.normal(150, 40, (H, W, 3)), 0, 255).astype(np.uint8)
    bg[:, :40] = 0  # black ground: no shading changes it
    alpha = np.zeros((70, 30), np.float32)
    alpha[5:, 4:26] = 1.0
    alpha[5:, 3] = alpha[5:, 26] = 0.4
    darkening = np.zeros((24, 30), np.float32)
    darkening[6:14, 8:22] = np.linspace(0.02, 0.5, 14, dtype=np.float32)
    light, template = Light((0.8, 0.6), 0.45, "objects", 1.0, 3, 0.8), ShadowTemplate(darkening, 3)
    for box in [(150, 100, 30, 70), (20, 120, 30, 70), (360, 150, 30, 70)]:
        for scene in (True, False):
            draw = (lambda b, box=box: template_shadow(alpha, box, (W, H), template, background=b)) if scene else \
                (lambda b, box=box: cast_shadow(alpha, box, (W, H), light, background=b))
            loose, tight = draw(None), draw(bg)
            assert loose.kind != "none"
            x, y, w, h = loose.region
            expected = _zeroed_where_unchanged(loose.map, bg[y:y + h, x:x + w])
            if not expected.any():
                assert tight.kind == "none"
                continue
            assert tight.region == loose.region and tight.map.tobytes() == expected.tobytes()
            assert (expected != loose.map).any()  # the test did drop pixels


def test_fixed_normal_is_the_fixed_seed_draw_of_that_shape():
    from comcoco.ids import fixed_normal

    for seed in (0, 5):
        for shape in [(40, 30, 3), (300, 200, 3), (7, 5, 3), (300, 201, 3), (1, 1, 3), (9,)]:
            direct = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
            kept = fixed_normal(shape, seed)
            assert kept.shape == shape and kept.tobytes() == direct.tobytes()
            assert not kept.flags.writeable


def test_light_from_objects_needs_no_warning_filter_and_gives_the_same_light():
    """The probe grid's median skips all-NaN probes itself (a warning filter is not thread-safe) and
    the light is what nanmedian over every probe gives."""
    import warnings

    from comcoco.compose import shadow

    rng = np.random.default_rng(2)
    H, W = 240, 400
    bg = np.clip(rng.normal(160, 8, (H, W, 3)), 0, 255).astype(np.uint8)
    natives = []
    for x, y in [(40, 60), (150, 80), (260, 70), (330, 150)]:
        bg[y + 58:y + 66, x - 6:x + 36] = (bg[y + 58:y + 66, x - 6:x + 36] * 0.6).astype(np.uint8)
        bg[y:y + 60, x:x + 30] = (40, 90, 160)
        natives.append(shadow.NativeObject.from_annotation((x, y, 30, 60), [[x, y, x + 30, y, x + 30, y + 60, x, y + 60]]))
    natives.append(shadow.NativeObject.from_annotation((5, 170, 30, 60), [[5, 170, 35, 170, 35, 230, 5, 230]]))
    occupied = shadow._objects_mask(natives, H, W)
    grid = np.stack([p[0] for p in (shadow._probe_profile(bg, occupied, o) for o in natives) if p is not None])
    assert np.isnan(grid).all(axis=0).any() and not np.isnan(grid).all()  # some probes no object placed
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        light = shadow.estimate_light(bg, natives)
    assert light.source == "objects"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        reference = np.nanmedian(grid, axis=0)
    known = ~np.isnan(grid).all(axis=0)
    agg = np.full(grid.shape[1:], np.nan)
    agg[known] = np.nanmedian(grid[:, known], axis=0)
    assert agg.tobytes() == reference.tobytes()


def _photo(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth shapes, edges and noise: what the camera and decoding steps see in a photo."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 90 + 60 * np.sin(xx / 11.0)[..., None] * np.cos(yy / 7.0)[..., None] + 40 * (xx > w // 2)[..., None]
    return np.clip(base + rng.normal(0, 5, (h, w, 3)) + np.array([10, -5, 20]), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("kind", ["jpeg-420", "jpeg-444", "jpeg-grey", "png"])
def test_rgb_decode_equals_the_bgr_decode_swapped(kind):
    import cv2

    from comcoco.sources.images import imdecode_rgb

    img = _photo(61, 83, 1)
    if kind == "png":
        ok, buf = cv2.imencode(".png", img)
    elif kind == "jpeg-grey":
        ok, buf = cv2.imencode(".jpg", img[..., 0], [cv2.IMWRITE_JPEG_QUALITY, 80])
    else:
        factor = cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420 if kind == "jpeg-420" else cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 87, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, factor])
    assert ok
    direct = cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    fast = imdecode_rgb(buf)
    assert fast.shape == direct.shape == (61, 83, 3) and fast.tobytes() == direct.tobytes()
    assert imdecode_rgb(np.frombuffer(b"not an image", np.uint8)) is None


@pytest.mark.parametrize("grey", [False, True])
def test_pillow_scan_decode_equals_the_converted_decode(grey):
    import io

    from PIL import Image

    from comcoco.sources.images import _pil_rgb

    img = _photo(40, 56, 2)
    buf = io.BytesIO()
    (Image.fromarray(img[..., 1]) if grey else Image.fromarray(img)).save(buf, "JPEG", quality=90)
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        direct = np.asarray(im.convert("RGB"))
    fast = _pil_rgb(buf.getvalue())
    assert fast.shape == direct.shape == (40, 56, 3) and fast.tobytes() == direct.tobytes()


@pytest.mark.parametrize("size", [(70, 90), (200, 260)])  # one region; tiled
def test_noise_samples_equal_the_3x3_kernel_and_plans_change_nothing(size):
    import cv2

    from comcoco.compose import camera

    def direct(ycc, mask):  # the definition: a fresh eroded mask and the 3×3 kernel
        sel = camera._valid(mask, ycc.shape, 1)
        sm = cv2.GaussianBlur(ycc[..., 0], (0, 0), 2.0)
        g = np.abs(cv2.Sobel(sm, cv2.CV_32F, 1, 0, ksize=3)) + np.abs(cv2.Sobel(sm, cv2.CV_32F, 0, 1, ksize=3))
        sel &= g <= camera._q(g[sel], camera._FLAT)
        return np.abs(cv2.filter2D(ycc, cv2.CV_32F, camera._IMMERKAER, borderType=cv2.BORDER_REFLECT)[sel])

    h, w = size
    rgb = _photo(h, w, 3)
    yy, xx = np.mgrid[0:h, 0:w]
    mask = ((yy - h / 2) ** 2 / (0.42 * h) ** 2 + (xx - w / 2) ** 2 / (0.45 * w) ** 2) < 1
    ycc = camera._ycrcb(rgb)
    for m in (mask, None):
        assert camera._noise_samples(ycc, m).tobytes() == direct(ycc, m).tobytes()
        plan = camera._plan(rgb.shape, m)
        fresh = camera._measure(rgb, m)
        assert fresh[0] is not None and fresh[1] is not None
        assert camera._measure(rgb, m, plan=plan) == fresh  # first use fills the plan's masks
        assert camera._measure(rgb, m, plan=plan) == fresh  # later uses read them
        assert camera._measure(rgb, m, blur=False, plan=plan) == (None, fresh[1])
    samples = camera._noise_samples(ycc, mask)  # the per-channel trimmed means on contiguous columns
    expected = []
    for c in range(3):
        a = samples[:, c]
        a = a[a <= camera._q(a, 0.75)]
        expected.append(float(a.mean()) / (camera._TRIM_MEAN * 6.0))
    assert camera._noise_from(samples) == camera.NoiseLevel(*expected)


def test_counted_quantile_is_the_partitioned_one():
    from comcoco.compose import camera_estimate as ce

    rng = np.random.default_rng(5)
    for n in (0, 1, 7, 300, 20000, 45001):  # above 20,000 both read the same strided subsample
        a = np.abs(np.rint(rng.standard_normal(n) * rng.uniform(1, 900))).astype(np.float32)
        for q in (0.0, 0.25, 0.5, 0.75, 0.999, 1.0):
            want, got = ce._q(a, q), ce._q_whole(a, q)
            assert (math.isnan(want) and math.isnan(got)) or want == got, (n, q, want, got)


def test_trial_noise_equals_the_plain_expression():
    from comcoco.compose import camera
    from comcoco.ids import fixed_normal

    rgb = _photo(50, 64, 4)
    rgb[:5] = 0
    rgb[-5:] = 255  # clipped both ways
    unit = fixed_normal(rgb.shape)
    for level in ([0.5, 0.0, 0.0], [3.2, 1.7, 2.9], [40.0, 12.0, 9.0]):
        lv = np.asarray(level, np.float64)
        direct = np.clip(np.rint(rgb.astype(np.float32) + unit * lv.astype(np.float32) @ camera._MIX.T), 0, 255)
        assert camera._with_noise(rgb, unit, lv).tobytes() == direct.astype(np.uint8).tobytes()


def test_channelwise_luma_equals_the_float_copy():
    from comcoco.compose.scene_shadow import _luma

    rgb = np.random.default_rng(5).integers(0, 256, (97, 131, 3), dtype=np.uint8)
    f = rgb.astype(np.float32)
    direct = f[..., 0] * np.float32(0.299) + f[..., 1] * np.float32(0.587) + f[..., 2] * np.float32(0.114)
    for view in (rgb, rgb[3:90, 7:120]):
        d = direct[3:90, 7:120] if view is not rgb else direct
        assert _luma(view).dtype == np.float32 and _luma(view).tobytes() == np.ascontiguousarray(d).tobytes()


def test_light_from_the_scene_fill_equals_its_own_fill():
    """measure_scene hands estimate_light the objects' fill it made for the template: the same light."""
    from comcoco.compose import shadow

    rng = np.random.default_rng(6)
    H, W = 240, 400
    bg = np.clip(rng.normal(150, 8, (H, W, 3)), 0, 255).astype(np.uint8)
    natives = []
    for x, y in [(40, 60), (150, 80), (262.6, 70.4)]:
        x0, y0 = int(x), int(y)
        bg[y0 + 58:y0 + 66, x0 + 4:x0 + 40] = (bg[y0 + 58:y0 + 66, x0 + 4:x0 + 40] * 0.55).astype(np.uint8)
        natives.append(shadow.NativeObject.from_annotation(
            (x, y, 30, 60), [[x, y, x + 30.4, y + 0.6, x + 29.5, y + 60, x - 0.3, y + 59.7]]))
    occupied = shadow._objects_mask(natives, H, W)
    light = shadow.estimate_light(bg, natives, occupied=occupied)
    assert light.source == "objects"
    assert light == shadow.estimate_light(bg, natives)


def test_median_of_known_equals_numpys_nanmedian():
    """The light's and the template's per-cell medians: numpy's nanmedian bit for bit, ties of ±0,
    even and odd counts and columns with one number included."""
    import warnings

    from comcoco.compose.shadow import median_of_known

    rng = np.random.default_rng(8)
    for trial in range(600):
        n, k = int(rng.integers(1, 9)), int(rng.integers(1, 40))
        dt = np.float32 if trial % 2 else np.float64
        g = rng.normal(0, 1, (n, k)).astype(dt)
        if trial % 3 == 0:
            g = np.round(g, 1)  # ties, and -0.0 beside 0.0
        g[rng.random((n, k)) < rng.random()] = np.nan
        g[0, np.isnan(g).all(axis=0)] = dt(0.25)  # every column holds a number
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            direct = np.nanmedian(g, axis=0)
        fast = median_of_known(g)
        assert fast.dtype == direct.dtype and fast.tobytes() == direct.tobytes()


def test_quantile_and_percentile_equal_numpys():
    """The fit's quantiles (``comcoco.quantiles``): numpy's value, dtype and scalar type, bit for bit."""
    from comcoco.quantiles import percentile, quantile

    rng = np.random.default_rng(9)
    for trial in range(300):
        n = int(rng.integers(1, 5000)) if trial % 3 else int(rng.integers(1, 12))
        dt = np.float32 if trial % 2 else np.float64
        a = rng.random(n).astype(dt)
        if trial % 4 == 0:
            a = np.round(a, 2).astype(dt)  # ties
        if trial % 50 == 0:
            a[rng.integers(0, n)] = np.nan  # numpy answers NaN
        for q in (0.3, 0.0, 1.0, 0.75, float(rng.random())):
            direct, fast = np.quantile(a, q), quantile(a, q)
            assert type(fast) is type(direct) and np.asarray(fast).tobytes() == np.asarray(direct).tobytes()
        for p in (95, 5, 0, 100, 37.5):
            direct, fast = np.percentile(a, p), percentile(a, p)
            assert type(fast) is type(direct) and np.asarray(fast).tobytes() == np.asarray(direct).tobytes()
    a = rng.random(101).astype(np.float32)
    before = a.copy()
    quantile(a, 0.3), percentile(a, 95)
    assert a.tobytes() == before.tobytes()  # the input is not reordered


def test_fit_between_photos_equals_its_reference_statistics():
    """The fit reads the reference's saturation and luma once for several steps: the arguments are
    those of the step-by-step reading (numpy's quantiles, statistics recomputed where used)."""
    from comcoco.harmonize import filters as flt
    from comcoco.harmonize import fit
    from comcoco.harmonize.scenes import _fit_pixels, _pixels

    def reference(src, dst):  # the fit as it read before: every statistic computed where it is used
        cfg, r = fit.FitConfig(), fit.FitConfig().ranges
        obj, ref, thumb = fit._cap(src), fit._cap(dst), dst
        theta = np.zeros(6)

        def grey(px):
            s = fit._hsl_s(px)
            return px[s <= np.quantile(s, cfg.grey_frac)].mean(axis=0, dtype=np.float64) + 1e-4

        def chroma(m):
            return np.log(np.array([m[0] / m[1], m[2] / m[1]]))

        means, k = flt.channel_means(thumb), float(cfg.strength)
        mo = grey(obj)
        target = chroma(mo) + k * (chroma(grey(ref)) - chroma(mo))
        xs = np.linspace(-r[0], r[0], cfg.temperature_grid)
        mg = mo[None, :] * fit._temperature_gains_grid(means, xs)
        err = np.full(len(xs), np.inf)
        valid = np.all(mg > 0, axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            ch = np.log(np.stack([mg[:, 0] / mg[:, 1], mg[:, 2] / mg[:, 1]], axis=1))
            err[valid] = np.sum((ch[valid] - target) ** 2, axis=1)
        order = np.lexsort((np.abs(xs), np.round(err, 12)))
        theta[0] = float(xs[order[0]]) if np.isfinite(err[order[0]]) else 0.0
        obj, thumb = flt.temperature(obj, theta[0], means=means), flt.temperature(thumb, theta[0], means=means)
        theta[1] = fit._squash(fit._arg_from_gain(k * fit._log_ratio(float(fit._value(ref).mean()),
                                                                     float(fit._value(obj).mean()))), r[1])
        obj, thumb = flt.brightness(obj, theta[1]), flt.brightness(thumb, theta[1])
        t = float(thumb.mean(dtype=np.float64))
        lg = k * fit._log_ratio(float(fit._luma(ref).std()), float(fit._luma(obj).std()))
        theta[2] = fit._contrast_arg(fit._squash(float(np.expm1(lg)), r[2]))
        obj = flt.contrast(obj, theta[2], mean=t)
        lg = k * fit._log_ratio(float(fit._hsl_s(ref).mean()), float(fit._hsl_s(obj).mean()))
        theta[3] = fit._squash(fit._arg_from_gain(lg), r[3])
        obj = flt.saturation(obj, theta[3])
        p = float(np.clip(np.percentile(fit._luma(obj), 95), 0.02, 0.98))
        q = float(np.clip(np.percentile(fit._luma(ref), 95), 0.02, 0.98))
        theta[4] = fit._squash(float(np.exp(k * np.log(np.log1p(-q) / np.log1p(-p)))) - 1.0, r[4])
        obj = flt.highlight(obj, theta[4])
        p = float(np.clip(np.percentile(fit._luma(obj), 5), 0.02, 0.98))
        q = float(np.clip(np.percentile(fit._luma(ref), 5), 0.02, 0.98))
        theta[5] = fit._squash(1.0 - float(np.exp(k * np.log(np.log(q) / np.log(p)))), r[5])
        return theta, t

    for seed in range(4):
        a, b = _photo(120 + 10 * seed, 160, 10 + seed), _photo(90, 140 - 7 * seed, 20 + seed)
        b = np.clip(b.astype(np.int16) * (1 + 0.2 * seed) - 30 * seed, 0, 255).astype(np.uint8)  # another light
        args, stats = _fit_pixels(_pixels(a), _pixels(b), None)
        theta, t = reference(_pixels(a), _pixels(b))
        assert np.asarray(args.as_tuple()).tobytes() == theta.tobytes() and stats.contrast_mean == t
        assert any(args.as_tuple())


def test_written_files_hold_their_bytes_and_make_their_folder(tmp_path):
    """Files go through a plain descriptor: the bytes land whole under their name, the folder is made
    on the first write into it, and no temporary file is left."""
    from comcoco.compose.writer import _write_file

    data = bytes(range(256)) * 1000
    target = tmp_path / "shard" / "masks" / "a.png"
    _write_file(target, data)
    _write_file(target.with_name("b.png"), b"")
    _write_file(target, data[:10])  # replaced whole, not appended to
    assert target.read_bytes() == data[:10] and target.with_name("b.png").read_bytes() == b""
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.png", "b.png"]
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(OSError):
        _write_file(tmp_path / "file" / "c.png", data)  # a file where the folder should be
