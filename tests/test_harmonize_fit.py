"""Harmonization entry point: fit / reinhard / none / network on real COCO objects."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from comcoco.harmonize import filters as flt
from comcoco.harmonize.fit import (
    HARMONIZE_METHODS,
    FitConfig,
    apply_arguments,
    chain_stats,
    fit_arguments,
    harmonize,
)
from comcoco.records import FilterArgs
from comcoco.sources.images import annotation_mask, read_image


@pytest.fixture(scope="module")
def real_objects(coco_real_dir):
    """(image, 0/1 mask) for the fixture annotations with at least 2,000 pixels."""
    data = json.loads((coco_real_dir / "instances_val2017_subset.json").read_text())
    images = {im["id"]: im for im in data["images"]}
    out = []
    for ann in sorted(data["annotations"], key=lambda a: a["id"]):
        im = images[ann["image_id"]]
        mask = annotation_mask(ann["segmentation"], im["height"], im["width"])
        if 2000 <= mask.sum() <= 100_000:
            # crop to the object plus a margin: the surroundings the fit sees, at a fraction of the cost
            ys, xs = np.nonzero(mask)
            y0, y1 = max(0, ys.min() - 48), ys.max() + 49
            x0, x1 = max(0, xs.min() - 48), xs.max() + 49
            image = read_image(coco_real_dir / im["file_name"])
            out.append((np.ascontiguousarray(image[y0:y1, x0:x1]), np.ascontiguousarray(mask[y0:y1, x0:x1])))
    assert len(out) >= 4
    return out


def _perturb(image: np.ndarray, mask: np.ndarray, args: np.ndarray) -> np.ndarray:
    out = flt.synthesize(image.astype(np.float32) / 255.0, mask, args)
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


def _fmse(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    d = a.astype(np.float64) - b.astype(np.float64)
    return float(np.mean(d[mask.astype(bool)] ** 2))


@pytest.mark.parametrize("method", ["fit", "reinhard", "none"])
@pytest.mark.parametrize("mask_kind", ["binary01", "uint8_255", "float_soft", "bool"])
def test_pixels_outside_the_mask_are_bit_exact(real_objects, method, mask_kind):
    image, mask01 = real_objects[0]
    comp = _perturb(image, mask01, np.array([0.2, -0.4, 0.3, -0.5, 0.3, -0.3]))
    if mask_kind == "binary01":
        mask = mask01
    elif mask_kind == "uint8_255":
        mask = mask01 * np.uint8(255)
    elif mask_kind == "bool":
        mask = mask01.astype(bool)
    else:
        mask = cv2.GaussianBlur(mask01.astype(np.float32), (9, 9), 3)
    out, args = harmonize(comp, mask, method)
    assert out.dtype == np.uint8 and out.shape == comp.shape
    outside = np.asarray(mask, dtype=np.float32) == 0
    np.testing.assert_array_equal(out[outside], comp[outside])
    assert isinstance(args, FilterArgs)
    if method == "fit":
        assert not np.array_equal(out, comp)  # it did change the object
    else:
        assert args == FilterArgs()


def test_fit_stays_in_the_prior_box_and_is_deterministic(real_objects):
    rng = np.random.default_rng(0)
    for image, mask in real_objects:
        comp = _perturb(image, mask, flt.sample_synthesis_args(rng))
        a1, _ = fit_arguments(comp, mask)
        out1, a2 = harmonize(comp, mask)
        out2, a3 = harmonize(comp.copy(), mask.copy())
        assert a1 == a2 == a3
        assert out1.tobytes() == out2.tobytes()
        vals = np.abs(np.asarray(a1.as_tuple()))
        assert np.all(vals <= np.asarray(flt.FILTER_RANGES) + 2 / 255)  # contrast is quantized by 1/255


def test_fit_restores_random_synthesis_better_than_none_and_reinhard(real_objects):
    rng = np.random.default_rng(0)
    errs = {m: [] for m in ("none", "reinhard", "fit")}
    for image, mask in real_objects:
        for _ in range(3):
            comp = _perturb(image, mask, flt.sample_synthesis_args(rng))
            for m in errs:
                errs[m].append(_fmse(harmonize(comp, mask, m)[0], image, mask))
    assert np.mean(errs["fit"]) < 0.85 * np.mean(errs["none"])
    assert np.mean(errs["fit"]) < np.mean(errs["reinhard"])


@pytest.mark.parametrize(
    "args",
    [
        [0.0, -0.45, 0.0, 0.0, 0.0, 0.0],  # strong darkening
        [0.0, 0.45, 0.0, 0.0, 0.0, 0.0],  # strong brightening
        [0.2, -0.4, 0.3, -0.5, 0.3, -0.3],  # all six filters
    ],
)
def test_fit_restores_strong_perturbations_better_than_none_and_reinhard(real_objects, args):
    errs = {m: [] for m in ("none", "reinhard", "fit")}
    for image, mask in real_objects:
        comp = _perturb(image, mask, np.asarray(args))
        for m in errs:
            errs[m].append(_fmse(harmonize(comp, mask, m)[0], image, mask))
    assert np.mean(errs["fit"]) < 0.9 * np.mean(errs["none"])
    assert np.mean(errs["fit"]) < np.mean(errs["reinhard"])


def test_a_strong_darkening_is_largely_undone(real_objects):
    image, mask = real_objects[1]
    comp = _perturb(image, mask, np.array([0.0, -0.45, 0.0, 0.0, 0.0, 0.0]))
    args, _ = fit_arguments(comp, mask)
    assert args.brightness > 0.05  # brightens the object back
    out, _ = harmonize(comp, mask)
    assert _fmse(out, image, mask) < 0.8 * _fmse(comp, image, mask)


def test_fast_application_matches_the_float_chain(real_objects):
    image, mask = real_objects[2]
    for args in (
        [0.2, -0.3, 0.25, 0.0, 0.3, -0.2],
        [-0.25, 0.3, -0.3, 0.45, -0.3, 0.3],
        [0.1, 0.4, 0.6, -0.5, 0.0, 0.0],
    ):
        fast = apply_arguments(image, mask, args)
        ref = flt.apply_filters(image.astype(np.float32) / 255.0, args, mask)
        ref8 = np.clip(np.rint(ref * 255.0), 0, 255).astype(np.uint8)
        diff = np.abs(fast.astype(int) - ref8.astype(int))
        assert diff.max() <= 1, args
        assert (diff > 0).mean() < 0.01
    # statistics from a thumbnail are close to the exact ones
    st = chain_stats(image, [0.2, -0.3, 0.25, 0.0, 0.3, -0.2])
    assert 0 < st.contrast_mean < 1 and all(0 < m < 1 for m in st.channel_means)


def test_reinhard_moves_object_colour_towards_its_surroundings(real_objects):
    image, mask = real_objects[0]
    comp = _perturb(image, mask, np.array([0.3, 0.4, 0.0, 0.0, 0.0, 0.0]))
    out = harmonize(comp, mask, "reinhard")[0]
    obj = mask.astype(bool)
    ring = (cv2.dilate(mask, np.ones((15, 15), np.uint8)) > 0) & ~obj

    def lab_mean(img, sel):
        return cv2.cvtColor(img, cv2.COLOR_RGB2Lab)[sel].astype(float).mean(axis=0)

    assert np.linalg.norm(lab_mean(out, obj) - lab_mean(comp, ring)) < np.linalg.norm(
        lab_mean(comp, obj) - lab_mean(comp, ring)
    )


def test_degenerate_masks():
    rng = np.random.default_rng(1)
    comp = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    empty = np.zeros((40, 50), np.uint8)
    for m in ("fit", "reinhard", "none"):
        out, args = harmonize(comp, empty, m)
        assert np.array_equal(out, comp) and args == FilterArgs()
    tiny = empty.copy()
    tiny[3:5, 3:5] = 1  # too few pixels to fit: identity
    out, args = harmonize(comp, tiny)
    assert np.array_equal(out, comp) and args == FilterArgs()
    full = np.ones((40, 50), np.uint8)  # no surroundings to match: identity
    out, args = harmonize(comp, full)
    assert np.array_equal(out, comp) and args == FilterArgs()


def test_strength_zero_is_the_identity(real_objects):
    image, mask = real_objects[0]
    comp = _perturb(image, mask, np.array([0.2, -0.4, 0.3, -0.5, 0.3, -0.3]))
    args, _ = fit_arguments(comp, mask, FitConfig(strength=0.0))
    assert np.allclose(args.as_tuple(), 0.0, atol=1e-12)


def test_bad_inputs():
    comp = np.zeros((10, 10, 3), np.uint8)
    assert HARMONIZE_METHODS == ("fit", "reinhard", "none", "network")
    with pytest.raises(ValueError, match="unknown harmonize method"):
        harmonize(comp, np.zeros((10, 10)), "poisson")
    with pytest.raises(ValueError, match="network"):
        harmonize(comp, np.zeros((10, 10)), "network")
    with pytest.raises(ValueError, match="mask shape"):
        harmonize(comp, np.zeros((9, 10)))
    with pytest.raises(ValueError, match="uint8"):
        harmonize(comp.astype(np.float32), np.zeros((10, 10)))
    with pytest.raises(ValueError, match="strength"):
        FitConfig(strength=1.5)
    with pytest.raises(ValueError, match="ranges"):
        FitConfig(ranges=(0.3, 0.5))
