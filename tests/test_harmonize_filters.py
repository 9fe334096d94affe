"""The six Harmonizer filters: identities, directions, guards, numpy/torch agreement, synthesis order."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from comcoco.harmonize import filters as flt
from comcoco.harmonize import filters_torch as tflt
from comcoco.records import FILTER_NAMES


def _to_t(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None]


def _to_np(t: torch.Tensor) -> np.ndarray:
    return t[0].permute(1, 2, 0).detach().numpy()


def _images(rng: np.random.Generator) -> list[np.ndarray]:
    smooth = rng.random((29, 41, 3), dtype=np.float32)
    binary = (rng.random((29, 41, 3)) > 0.5).astype(np.float32)
    grey = np.repeat(rng.random((29, 41, 1), dtype=np.float32), 3, axis=2)
    return [
        smooth,
        binary,
        grey,
        np.zeros((29, 41, 3), np.float32),
        np.ones((29, 41, 3), np.float32),
    ]


def test_zero_arguments_are_the_identity():
    rng = np.random.default_rng(0)
    for img in _images(rng):
        assert np.array_equal(flt.apply_filters(img, np.zeros(6)), img)
        for name in FILTER_NAMES:
            assert np.array_equal(flt.apply_filter(name, img, 0.0), img)
        t = tflt.apply_filters_torch(_to_t(img), torch.zeros(1, 6))
        assert np.abs(_to_np(t) - img).max() <= 1e-6


def test_temperature_on_neutral_grey_matches_documented_gains():
    grey = np.full((8, 8, 3), 0.5, np.float32)
    warm = flt.temperature(grey, 0.3)[0, 0] / 0.5
    np.testing.assert_allclose(warm, [1.30, 1.00, 0.8125], atol=1e-4)
    cool = flt.temperature(grey, -0.3)[0, 0] / 0.5
    assert cool[2] > 1.25 and cool[0] < 0.85  # x < 0 cools: blue up, red down


def test_filter_directions():
    rng = np.random.default_rng(1)
    img = (0.2 + 0.6 * rng.random((32, 32, 3))).astype(np.float32)
    assert flt.brightness(img, 0.3).mean() > img.mean() > flt.brightness(img, -0.3).mean()
    np.testing.assert_allclose(flt.brightness(img, -0.5), img * 0.5, atol=1e-7)
    assert flt.contrast(img, 0.4).std() > img.std() > flt.contrast(img, -0.4).std()

    def mean_sat(x: np.ndarray) -> float:
        return float((x.max(-1) - x.min(-1)).mean())

    assert mean_sat(flt.saturation(img, 0.4)) > mean_sat(img) > mean_sat(flt.saturation(img, -0.4))
    np.testing.assert_allclose(
        flt.saturation(img, -1.0), np.repeat(((img.max(-1) + img.min(-1)) / 2)[..., None], 3, -1), atol=1e-6
    )
    assert flt.highlight(img, 0.3).mean() > img.mean() > flt.highlight(img, -0.3).mean()
    assert flt.shadow(img, 0.3).mean() > img.mean() > flt.shadow(img, -0.3).mean()
    # highlight barely moves dark tones, shadow barely moves bright ones
    dark, bright = np.full((2, 2, 3), 0.05, np.float32), np.full((2, 2, 3), 0.95, np.float32)
    assert abs(flt.highlight(dark, 0.3) - dark).max() < 0.02 < abs(flt.highlight(bright, 0.3) - bright).max()
    assert abs(flt.shadow(bright, 0.3) - bright).max() < 0.02 < abs(flt.shadow(dark, 0.3) - dark).max()


def test_global_means_are_whole_image():
    rng = np.random.default_rng(2)
    img = rng.random((16, 16, 3), dtype=np.float32)
    other = img.copy()
    other[:8] = 0.0  # same bottom half, different whole-image statistics
    for name in ("temperature", "contrast"):
        a = flt.apply_filter(name, img, 0.4)[8:]
        b = flt.apply_filter(name, other, 0.4)[8:]
        assert np.abs(a - b).max() > 1e-3, name
    # per-pixel filters do not depend on the rest of the image
    for name in ("brightness", "saturation", "highlight", "shadow"):
        np.testing.assert_array_equal(
            flt.apply_filter(name, img, 0.4)[8:], flt.apply_filter(name, other, 0.4)[8:]
        )


@pytest.mark.parametrize("x", [-1.0, 1.0, 0.999, -0.999])
def test_guards_at_extremes(x):
    rng = np.random.default_rng(3)
    for img in _images(rng):
        for name in FILTER_NAMES:
            out = flt.apply_filter(name, img, x)
            assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0, name
            t = tflt.apply_filter_torch(name, _to_t(img), torch.tensor([x]))
            assert torch.isfinite(t).all(), name
    pure_red = np.zeros((4, 4, 3), np.float32)
    pure_red[..., 0] = 1.0  # a zero channel mean must not produce NaN in temperature
    assert np.isfinite(flt.temperature(pure_red, 0.5)).all()


def test_numpy_and_torch_agree_per_filter_including_extremes():
    rng = np.random.default_rng(4)
    xs = [-1.0, -0.5, 0.0, 0.37, 1.0, *rng.uniform(-1, 1, 5).tolist()]
    for img in _images(rng)[:3]:
        for name in FILTER_NAMES:
            for x in xs:
                a = flt.apply_filter(name, img, x)
                b = _to_np(tflt.apply_filter_torch(name, _to_t(img), torch.tensor([x], dtype=torch.float32)))
                assert np.abs(a - b).max() <= 1e-5, (name, x)


def test_numpy_and_torch_agree_on_chains_with_masks():
    rng = np.random.default_rng(5)
    for trial in range(12):
        img = rng.random((23, 31, 3), dtype=np.float32)
        args = rng.uniform(-1, 1, 6) if trial % 3 else rng.choice([-1.0, 0.0, 1.0], 6)
        mask = rng.random((23, 31)).astype(np.float32)
        a = flt.apply_filters(img, args, mask)
        b = tflt.apply_filters_torch(
            _to_t(img), torch.tensor(args, dtype=torch.float32)[None], torch.from_numpy(mask)[None]
        )
        assert np.abs(a - _to_np(b)).max() <= 1e-5, args
        s = flt.synthesize(img, mask, args)
        st = tflt.synthesize_torch(
            _to_t(img), torch.from_numpy(mask)[None], torch.tensor(args, dtype=torch.float32)[None]
        )
        assert np.abs(s - _to_np(st)).max() <= 1e-5, args


def test_torch_batch_is_per_image():
    rng = np.random.default_rng(6)
    imgs = [rng.random((9, 11, 3), dtype=np.float32) for _ in range(3)]
    args = rng.uniform(-0.5, 0.5, (3, 6))
    batch = tflt.apply_filters_torch(
        torch.cat([_to_t(i) for i in imgs]), torch.tensor(args, dtype=torch.float32)
    )
    for i in range(3):
        np.testing.assert_allclose(_to_np(batch[i : i + 1]), flt.apply_filters(imgs[i], args[i]), atol=1e-5)


def test_torch_chain_is_differentiable():
    rng = np.random.default_rng(7)
    img = _to_t(rng.random((12, 12, 3), dtype=np.float32)).requires_grad_(True)
    args = torch.tensor([[0.1, -0.2, -0.1, 0.2, 0.1, -0.1]], requires_grad=True)
    tflt.apply_filters_torch(img, args).sum().backward()
    assert torch.isfinite(args.grad).all() and (args.grad.abs() > 0).sum() >= 5  # contrast x<0 has a gradient
    assert torch.isfinite(img.grad).all()


def test_mask_blends_once_and_outside_is_untouched():
    rng = np.random.default_rng(8)
    img = rng.random((20, 20, 3), dtype=np.float32)
    mask = np.zeros((20, 20), np.float32)
    mask[5:15, 5:15] = 1.0
    mask[5, 5:15] = 0.5
    args = [0.2, 0.3, -0.2, 0.4, 0.1, 0.2]
    out = flt.apply_filters(img, args, mask)
    full = flt.apply_filters(img, args)
    np.testing.assert_array_equal(out[mask == 0], img[mask == 0])
    np.testing.assert_allclose(out[mask == 1], full[mask == 1], atol=1e-7)
    np.testing.assert_allclose(out[5, 5:15], 0.5 * full[5, 5:15] + 0.5 * img[5, 5:15], atol=1e-6)


def test_synthesis_runs_in_reverse_order():
    rng = np.random.default_rng(9)
    img = rng.random((16, 16, 3), dtype=np.float32)
    args = np.array([0.25, -0.4, 0.3, 0.5, -0.3, 0.35])
    expected = img
    for i in reversed(range(6)):
        expected = flt.apply_filter(FILTER_NAMES[i], expected, args[i])
    np.testing.assert_array_equal(flt.synthesize(img, None, args), expected)
    assert (
        np.abs(flt.synthesize(img, None, args) - flt.apply_filters(img, args)).max() > 1e-3
    )  # not commutative


def test_synthesis_arguments_respect_ranges():
    rng = np.random.default_rng(10)
    draws = np.stack([flt.sample_synthesis_args(rng) for _ in range(400)])
    ranges = np.asarray(flt.FILTER_RANGES)
    assert np.all(np.abs(draws) <= ranges)
    assert np.all(np.abs(draws).max(axis=0) > 0.9 * ranges)
    assert flt.FILTER_RANGES == (0.3, 0.5, 0.5, 0.6, 0.4, 0.4)


def test_bad_inputs_are_refused():
    img = np.zeros((4, 4, 3), np.float32)
    with pytest.raises(ValueError, match="6 filter arguments"):
        flt.apply_filters(img, [0.1, 0.2])
    with pytest.raises(ValueError, match="unknown filter"):
        flt.apply_filter("vibrance", img, 0.1)
    with pytest.raises(ValueError, match="mask shape"):
        flt.apply_filters(img, np.zeros(6), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="finite"):
        flt.apply_filters(img, [0, 0, float("nan"), 0, 0, 0])


def test_a_robust_build_never_imports_torch(demo_source_small, tmp_path):
    """Composing uses the numpy filters only: torch would cost every build worker about 190 MB."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from comcoco.build import build_inline\n"
        "from comcoco.plan import BuildConfig, SourceSpec\n"
        f"r = build_inline(SourceSpec(root={str(demo_source_small)!r}), {str(tmp_path / 'wd')!r}, "
        "BuildConfig(limit=6, shard_size=3, seed=0))\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == "[]"
    assert len(list((tmp_path / "wd").glob("shards/*/images/*.png"))) >= 2  # it did compose
