"""Compositing: alpha raster, paste, pair fidelity, multi-object pairs, determinism, failures, CLI.

The real-image source is built here from the COCO val2017 fixtures with *synthetic* refs and
expressions (val2017 is not part of RefCOCO+); the demo source comes from comcoco.sources.demo.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
from pycocotools import mask as mask_utils
from typer.testing import CliRunner

from comcoco.compose import (
    SAMPLES_SCHEMA,
    ComposeConfig,
    ComposeConfigError,
    ComposeModels,
    CutoutError,
    ObjectShape,
    SampleRow,
    cut_object,
    decode_image,
    dilated,
    object_shape,
    paste,
    rasterize_alpha,
    read_samples,
    run_compose,
    write_samples,
)
from comcoco.records import (
    STATUS_BAD_BACKGROUND,
    STATUS_BAD_SOURCE,
    STATUS_HARMONIZE_FAILED,
    STATUS_OK,
    Annotation,
    Candidate,
    ImageInfo,
    Ref,
    Sentence,
)

IMAGE_SUBDIR = Path("images/mscoco/images/train2014")


# --- fixtures --------------------------------------------------------------------------------------


def _real_records(coco_real_dir: Path) -> tuple[list[ImageInfo], list[Annotation], list[Ref]]:
    data = json.loads((coco_real_dir / "instances_val2017_subset.json").read_text())
    images = [ImageInfo(i["id"], i["file_name"], i["width"], i["height"]) for i in data["images"]]
    anns = [
        Annotation(a["id"], a["image_id"], a["category_id"], tuple(a["bbox"]), a["area"], a["iscrowd"], a["segmentation"])
        for a in data["annotations"]
    ]
    refs = [
        Ref(
            ref_id=n + 1,
            ann_id=a.ann_id,
            image_id=a.image_id,
            category_id=a.category_id,
            split="train",
            sentences=(Sentence(1000 + n, f"synthetic object {n}", f"synthetic object {n}", ("synthetic", "object", str(n))),),
        )
        for n, a in enumerate(anns)
    ]
    return images, anns, refs


def _write_real_source(root: Path, coco_real_dir: Path, images, anns, refs) -> Path:
    from comcoco.sources.refer import COCO_CATEGORIES, write_source

    img_dir = root / IMAGE_SUBDIR
    img_dir.mkdir(parents=True, exist_ok=True)
    for info in images:
        src = coco_real_dir / info.file_name
        if src.exists():
            shutil.copy(src, img_dir / info.file_name)
    write_source(root, refs, images, anns, COCO_CATEGORIES)
    return root


def _all_pairs(refs, images) -> list[Candidate]:
    """Every ref against every other image, ranked by image id (hand-made candidates)."""
    out = []
    for r in refs:
        bgs = sorted(i.image_id for i in images if i.image_id != r.image_id)
        out += [Candidate(r.ref_id, r.ann_id, r.image_id, r.category_id, 0, k + 1, b, 0.0) for k, b in enumerate(bgs)]
    return out


@pytest.fixture(scope="module")
def real_source(tmp_path_factory, coco_real_dir):
    """A REFER source over the 3 real val2017 images; refs and expressions are synthetic."""
    from comcoco.sources.refer import load_source

    images, anns, refs = _real_records(coco_real_dir)
    root = _write_real_source(tmp_path_factory.mktemp("real_src"), coco_real_dir, images, anns, refs)
    return load_source(root), _all_pairs(refs, images)


@pytest.fixture(scope="module")
def real_run(tmp_path_factory, real_source):
    src, cands = real_source
    out = tmp_path_factory.mktemp("real_out")
    rows = run_compose(src, cands, out, ComposeConfig(profile="paper", seed=3, harmonize="fit"))
    return src, out, rows


@pytest.fixture(scope="module")
def demo_source(tmp_path_factory):
    from comcoco.sources.demo import generate_demo_source
    from comcoco.sources.refer import load_source

    root = generate_demo_source(tmp_path_factory.mktemp("demo_src"), n_images=16, seed=0)
    return load_source(root)


def _load(out: Path, rel: str, gray: bool = False) -> np.ndarray:
    img = cv2.imread(str(out / rel), cv2.IMREAD_GRAYSCALE if gray else cv2.IMREAD_COLOR)
    assert img is not None, rel
    return img


def _grow1(mask: np.ndarray) -> np.ndarray:
    """The mask grown by one pixel, diagonals included."""
    return cv2.dilate((mask > 0).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0


def _boundary(mask: np.ndarray) -> int:
    return int(np.count_nonzero(_grow1(mask) & ~(mask > 0)))


# --- cutting and pasting ---------------------------------------------------------------------------


def test_rasterized_alpha_covers_polygon_area():
    square = np.array([[2.25, 3.5], [12.75, 3.5], [12.75, 9.0], [2.25, 9.0]])
    alpha = rasterize_alpha([square], 16, 12)
    assert alpha.dtype == np.float32 and alpha.min() >= 0 and alpha.max() <= 1
    assert abs(float(alpha.sum()) - 10.5 * 5.5) < 0.5
    assert alpha[5, 6] == 1.0 and alpha[0, 0] == 0.0 and alpha[11, 15] == 0.0
    assert 0.2 < alpha[3, 6] < 0.8  # a half-covered edge row is partial, not binary
    # the binary mask (alpha >= 0.5) has the polygon's area to within its boundary
    assert abs(int((alpha >= 0.5).sum()) - 10.5 * 5.5) <= 12


def test_object_shape_rejects_degenerate_polygons():
    with pytest.raises(CutoutError, match="degenerate"):
        object_shape([[10, 10, 20, 20, 30, 30]], 100, 100)  # collinear: zero area
    with pytest.raises(CutoutError, match="degenerate"):
        object_shape([[10, 10, 20, 20]], 100, 100)  # two points only
    with pytest.raises(CutoutError, match="empty"):
        object_shape([], 100, 100)
    with pytest.raises(CutoutError, match="non-finite"):
        object_shape([[0, 0, 10, float("nan"), 10, 10]], 100, 100)
    with pytest.raises(CutoutError, match="outside"):
        object_shape([[200, 200, 210, 200, 210, 210]], 100, 100)
    shape = object_shape([[1, 1, 2, 2], [10.5, 20.2, 30.9, 20.2, 30.9, 40.1]], 100, 100)
    assert shape.rect == (10, 20, 21, 21) and len(shape.polygons) == 1


def test_cut_object_scales_polygon_by_the_box_formula():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    shape = ObjectShape(polygons=(np.array([[10.0, 10.0], [30.0, 10.0], [30.0, 40.0], [10.0, 40.0]]),), rect=(10, 10, 20, 30))
    cut = cut_object(image, shape, (5, 7, 40, 60))  # 2x enlargement (bilinear)
    assert cut.rgb.shape == (60, 40, 3) and cut.alpha.shape == (60, 40)
    assert cut.polygons == ((5.0, 7.0, 45.0, 7.0, 45.0, 67.0, 5.0, 67.0),)
    assert int(cut.mask.sum()) == 40 * 60
    small = cut_object(image, shape, (0, 0, 10, 15))  # 0.5x: area interpolation averages 2x2 blocks
    crop = image[10:40, 10:30].astype(np.float64)
    expect = crop.reshape(15, 2, 10, 2, 3).mean(axis=(1, 3))
    assert np.abs(small.rgb.astype(np.float64) - expect).max() <= 1.0


def test_paste_changes_only_pixels_with_alpha():
    rng = np.random.default_rng(1)
    bg = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    src = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    tri = np.array([[5.3, 4.1], [35.2, 9.7], [12.4, 33.3]])
    shape = ObjectShape(polygons=(tri,), rect=(5, 4, 31, 30))
    cut = cut_object(src, shape, (20, 10, 31, 30))
    canvas = bg.copy()
    paste(canvas, cut)
    x, y, w, h = cut.box
    outside = np.ones(bg.shape[:2], bool)
    outside[y : y + h, x : x + w] = cut.alpha == 0
    assert np.array_equal(canvas[outside], bg[outside])
    full = cut.alpha == 1
    assert np.array_equal(canvas[y : y + h, x : x + w][full], cut.rgb[full])
    assert (canvas != bg).any(axis=2).sum() > 0.9 * cut.mask.sum()


def test_rle_segmentation_is_cut_from_its_mask():
    m = np.zeros((40, 50), np.uint8)
    m[10:30, 5:25] = 1
    rle = mask_utils.encode(np.asfortranarray(m))
    rle["counts"] = rle["counts"].decode()
    shape = object_shape(rle, 50, 40)
    assert shape.rect == (5, 10, 20, 20) and shape.mask is not None and not shape.polygons
    cut = cut_object(np.full((40, 50, 3), 200, np.uint8), shape, (0, 0, 10, 10))
    assert int(cut.mask.sum()) == 100 and len(cut.polygons) == 1
    with pytest.raises(CutoutError, match="empty"):
        object_shape({"size": [40, 50], "counts": mask_utils.encode(np.asfortranarray(m * 0))["counts"].decode()}, 50, 40)


def test_select_candidates_takes_best_ranks_per_ref_with_distinct_backgrounds():
    from comcoco.compose import select_candidates

    def c(ref, rank, bg):
        return Candidate(ref, ref * 10, ref, 1, 0, rank, bg, 0.0)

    cands = [c(2, 2, 7), c(1, 3, 9), c(1, 1, 8), c(2, 1, 7), c(1, 2, 8), c(2, 3, 6)]
    assert [(x.ref_id, x.bg_image_id) for x in select_candidates(cands)] == [(1, 8), (2, 7)]
    assert [(x.ref_id, x.rank) for x in select_candidates(cands, 2)] == [(1, 1), (1, 3), (2, 1), (2, 3)]
    assert len(select_candidates(cands, 2, limit=3)) == 3


# --- pair fidelity and masks on real images ---------------------------------------------------------


def test_real_pairs_are_exact_outside_the_dilated_mask(real_run):
    src, out, rows = real_run
    ok = [r for r in rows if r.ok]
    assert len(ok) >= 6, [(r.status, r.reason) for r in rows]
    for r in ok:
        comp, gt = _load(out, r.composite), _load(out, r.ground_truth)
        mask = _load(out, r.mask, gray=True)
        assert set(np.unique(mask)) <= {0, 255}
        assert np.array_equal(comp[~dilated(mask, 8)], gt[~dilated(mask, 8)])
        # the ground truth is the background exactly as decoded
        bg = cv2.cvtColor(decode_image(src.image_path(r.bg_image_id)), cv2.COLOR_RGB2BGR)
        assert np.array_equal(gt, bg)
        changed = (comp != gt).any(axis=2)
        area = int(np.count_nonzero(mask))
        assert area == r.mask_area
        assert not (changed & ~_grow1(mask)).any()  # changes stay within 1 px of the mask
        assert 0.9 * area <= changed.sum() <= area + _boundary(mask)
        x, y, w, h = r.box
        assert (mask[y : y + h, x : x + w] > 0).sum() == area  # mask lies inside the box


def test_real_rows_carry_placed_polygon_and_provenance(real_run):
    src, out, rows = real_run
    for r in (r for r in rows if r.ok):
        mask = _load(out, r.mask, gray=True) > 0
        h, w = mask.shape
        polys = json.loads(r.polygon)
        rle = mask_utils.merge(mask_utils.frPyObjects(polys, h, w))
        poly_mask = mask_utils.decode(rle).astype(bool)
        iou = (poly_mask & mask).sum() / (poly_mask | mask).sum()
        assert iou > 0.85, (r.sample_id, iou)
        ann = src.annotation(r.fg_ann_id)
        assert r.fg_image_id == ann.image_id and r.category_id == ann.category_id
        assert 0 < r.s <= 1 and 0 <= r.rx <= 1 and 0 <= r.ry <= 1
        assert r.plausibility is not None and 0 <= r.plausibility <= 1
        assert r.filter_args is not None and r.outside_error == 0.0
        assert r.composite == f"images/{r.composite_id}.png" and r.mask == f"masks/{r.sample_id}.png"


def test_harmonize_none_is_the_plain_alpha_paste(real_source, tmp_path):
    src, cands = real_source
    rows = run_compose(src, cands[:3], tmp_path, ComposeConfig(profile="paper", harmonize="none"))
    for r in (r for r in rows if r.ok):
        assert r.filter_args.as_tuple() == (0.0,) * 6
        fg = decode_image(src.image_path(r.fg_image_id))
        shape = object_shape(src.annotation(r.fg_ann_id).segmentation, fg.shape[1], fg.shape[0])
        expect = decode_image(src.image_path(r.bg_image_id)).copy()
        paste(expect, cut_object(fg, shape, r.box))
        assert np.array_equal(cv2.cvtColor(_load(tmp_path, r.composite), cv2.COLOR_BGR2RGB), expect)


def test_jpeg_option_reports_outside_error(real_source, tmp_path):
    src, cands = real_source
    rows = run_compose(src, cands[:4], tmp_path, ComposeConfig(profile="paper", image_format="jpeg", jpeg_quality=90, harmonize="none"))
    ok = [r for r in rows if r.ok]
    assert ok
    for r in ok:
        assert r.composite.endswith(".jpg") and r.ground_truth.endswith(".jpg") and r.mask.endswith(".png")
        assert 0.0 < r.outside_error < 3.0  # lossy, but small
        comp, gt = _load(tmp_path, r.composite), _load(tmp_path, r.ground_truth)
        keep = ~dilated(_load(tmp_path, r.mask, gray=True), 8)
        assert abs(np.abs(comp[keep].astype(int) - gt[keep]).mean() - r.outside_error) < 1e-9


# --- several objects per composite ------------------------------------------------------------------


def _shared_background_candidates(source, n: int) -> tuple[int, list[Candidate]]:
    """n refs from other images, all matched to the first image: one composite's worth."""
    bg = sorted(i.image_id for i in source.images())[0]
    refs = [r for r in source.refs() if r.image_id != bg][: n]
    return bg, [Candidate(r.ref_id, r.ann_id, r.image_id, r.category_id, 0, 1, bg, 0.0) for r in refs]


def test_multi_object_composite_has_exact_pair_per_object(demo_source, tmp_path):
    bg_id, cands = _shared_background_candidates(demo_source, 3)
    rows = run_compose(demo_source, cands, tmp_path, ComposeConfig(profile="paper", objects_per_image=3, seed=1))
    ok = [r for r in rows if r.ok]
    assert len(ok) >= 2, [(r.status, r.reason) for r in rows]
    assert len({r.composite for r in ok}) == 1 and len({r.ground_truth for r in ok}) == len(ok)
    bg = cv2.cvtColor(decode_image(demo_source.image_path(bg_id)), cv2.COLOR_RGB2BGR)
    comp = _load(tmp_path, ok[0].composite)
    masks = {r.sample_id: _load(tmp_path, r.mask, gray=True) > 0 for r in ok}
    for i, a in enumerate(ok):
        assert set(a.objects) == {r.sample_id for r in ok} - {a.sample_id}
        assert sorted(a.object_ann_ids) == sorted(r.fg_ann_id for r in ok if r is not a)
        for b in ok[i + 1 :]:
            ax, ay, aw, ah = a.box
            bx, by, bw, bh = b.box
            assert min(ax + aw, bx + bw) <= max(ax, bx) or min(ay + ah, by + bh) <= max(ay, by), "boxes overlap"
        gt = _load(tmp_path, a.ground_truth)
        far = ~dilated(masks[a.sample_id], 8)
        assert np.array_equal(comp[far], gt[far])  # every other object is in this ground truth
        near = _grow1(masks[a.sample_id])
        assert np.array_equal(gt[near], bg[near])  # and this object is not
        assert (comp[masks[a.sample_id]] != bg[masks[a.sample_id]]).any(axis=1).mean() > 0.9
    # outside all objects the composite is the untouched background
    anywhere = np.zeros(bg.shape[:2], bool)
    for m in masks.values():
        anywhere |= _grow1(m)
    assert np.array_equal(comp[~anywhere], bg[~anywhere])


def test_same_seed_gives_identical_bytes(demo_source, tmp_path):
    from comcoco.matching.scene import match_backgrounds

    cands = match_backgrounds(demo_source.refs(), demo_source.annotations(), k=3, seed=0)
    cfg = ComposeConfig(profile="paper", objects_per_image=2, candidates_per_ref=2, seed=7)
    a = run_compose(demo_source, cands, tmp_path / "a", cfg, limit=6)
    b = run_compose(demo_source, cands, tmp_path / "b", cfg, limit=6)
    assert a == b and sum(r.ok for r in a) >= 3 and any(r.objects for r in a)
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b and Path("samples.parquet") in files_a
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    other = run_compose(demo_source, cands, tmp_path / "c", replace(cfg, seed=8, harmonize="none"), limit=4)
    assert {r.sample_id for r in other}.isdisjoint(r.sample_id for r in a)


# --- failures ----------------------------------------------------------------------------------------


def test_bad_inputs_become_failure_rows_and_the_run_goes_on(tmp_path, coco_real_dir):
    from comcoco.sources.refer import load_source

    images, anns, refs = _real_records(coco_real_dir)
    by_id = {i.image_id: i for i in images}
    # extra image entries: a copy to truncate, a copy that stays good, one whose file is missing
    images += [
        ImageInfo(9001, "truncated.jpg", by_id[785].width, by_id[785].height),
        ImageInfo(9002, "good_copy.jpg", by_id[40083].width, by_id[40083].height),
        ImageInfo(9003, "missing.jpg", 640, 480),
    ]
    degenerate = Annotation(77, 9002, 1, (10.0, 10.0, 20.0, 20.0), 0.0, 0, [[10, 10, 20, 20, 30, 30]])
    on_missing = Annotation(78, 9003, 1, (10.0, 10.0, 50.0, 50.0), 2500.0, 0, [[10, 10, 60, 10, 60, 60, 10, 60]])
    anns += [degenerate, on_missing]
    refs += [
        Ref(901, 77, 9002, 1, "train", (Sentence(5001, "flat", "flat", ("flat",)),)),
        Ref(902, 78, 9003, 1, "train", (Sentence(5002, "lost", "lost", ("lost",)),)),
    ]
    root = _write_real_source(tmp_path / "src", coco_real_dir, images, anns, refs)
    img_dir = root / IMAGE_SUBDIR
    data = (coco_real_dir / "000000000785.jpg").read_bytes()
    (img_dir / "truncated.jpg").write_bytes(data[: len(data) // 2])
    shutil.copy(coco_real_dir / "000000040083.jpg", img_dir / "good_copy.jpg")
    src = load_source(root)

    person = next(r for r in refs if r.ann_id == 442619)  # a real person on image 785
    cat = next(r for r in refs if r.ann_id == 1108446)  # a real remote on image 39769

    def cand(r, bg):
        return Candidate(r.ref_id, r.ann_id, r.image_id, r.category_id, 0, 1, bg, 0.0)

    cands = [
        cand(person, 9002),  # ok
        cand(cat, 9001),  # truncated background
        cand(refs[-2], 785),  # degenerate polygon
        cand(refs[-1], 785),  # source image file missing
        Candidate(999, 1, 1, 1, 0, 1, 785, 0.0),  # ref not in the source
        Candidate(cat.ref_id, cat.ann_id, cat.image_id, cat.category_id, 0, 1, 9003, 0.0),  # bg file missing
    ]
    rows = run_compose(src, cands, tmp_path / "out", ComposeConfig(profile="paper", candidates_per_ref=2))
    got = {(r.fg_ref_id, r.bg_image_id): r for r in rows}
    assert len(rows) == 6
    assert got[(person.ref_id, 9002)].status == STATUS_OK
    r = got[(cat.ref_id, 9001)]
    assert r.status == STATUS_BAD_BACKGROUND and "truncated.jpg" in r.reason and "truncated" in r.reason
    r = got[(901, 785)]
    assert r.status == STATUS_BAD_SOURCE and "degenerate" in r.reason and "ann 77" in r.reason
    r = got[(902, 785)]
    assert r.status == STATUS_BAD_SOURCE and "missing.jpg" in r.reason and "missing file" in r.reason
    assert got[(999, 785)].status == STATUS_BAD_SOURCE and "ref 999" in got[(999, 785)].reason
    r = got[(cat.ref_id, 9003)]
    assert r.status == STATUS_BAD_BACKGROUND and "missing.jpg" in r.reason
    for r in rows:
        if not r.ok:
            assert r.composite is None and r.mask is None and r.box is None and r.reason
    assert read_samples(tmp_path / "out" / "samples.parquet") == rows


def test_harmonizer_failure_is_a_row_not_a_crash(real_source, tmp_path):
    src, cands = real_source
    ckpt = tmp_path / "harmonizer.pth"
    ckpt.write_bytes(b"not used: the model below is injected")

    class Broken:
        def __call__(self, *args, **kwargs):
            raise RuntimeError("broken network")

    cfg = ComposeConfig(profile="paper", harmonize="network", harmonizer_ckpt=str(ckpt))
    firsts = [c for c in cands if c.rank == 1][:2]
    rows = run_compose(src, firsts, tmp_path / "out", cfg, models=ComposeModels(harmonizer=Broken()))
    assert [r.status for r in rows] == [STATUS_HARMONIZE_FAILED] * 2
    assert all("network" in r.reason for r in rows)
    assert not any((tmp_path / "out" / "images").glob("*"))


def test_graconet_proposals_go_through_the_box_formula(real_source, tmp_path):
    from comcoco.placement.sampler import placement_box

    src, cands = real_source
    ckpt = tmp_path / "graconet.pth"
    ckpt.write_bytes(b"not used: the placer below is injected")
    calls = []

    class FixedPlacer:
        def propose(self, fg_rgb, fg_mask, bg_rgb, seed):
            calls.append((fg_rgb.shape, fg_mask.shape, fg_mask.max(), seed))
            return 0.3, 0.25, 0.75

    cfg = ComposeConfig(profile="paper", placement="graconet", graconet_ckpt=str(ckpt), harmonize="none")
    rows = run_compose(src, cands[:1], tmp_path / "out", cfg, models=ComposeModels(placer=FixedPlacer()))
    (r,) = rows
    assert r.ok and (r.s, r.rx, r.ry) == (0.3, 0.25, 0.75)
    fg_shape, mask_shape, mask_max, _ = calls[0]
    assert fg_shape[:2] == mask_shape and mask_max == 255
    bg = src.image(r.bg_image_id)
    assert r.box == placement_box(0.3, 0.25, 0.75, fg_shape[1], fg_shape[0], bg.width, bg.height)


# --- samples table and config ------------------------------------------------------------------------


def test_samples_table_is_sorted_typed_and_byte_stable(real_run, tmp_path):
    import pyarrow.parquet as pq

    _, out, rows = real_run
    assert [r.sample_id for r in rows] == sorted(r.sample_id for r in rows)
    assert pq.read_schema(out / "samples.parquet").equals(SAMPLES_SCHEMA)
    assert read_samples(out / "samples.parquet") == rows
    write_samples(tmp_path / "x.parquet", list(reversed(rows)))
    assert (tmp_path / "x.parquet").read_bytes() == (out / "samples.parquet").read_bytes()
    with pytest.raises(ValueError, match="unknown status"):
        write_samples(tmp_path / "y.parquet", [replace(rows[0], status="weird")])


def test_config_fingerprint_and_validation(tmp_path):
    a, b = ComposeConfig(seed=1), ComposeConfig(seed=1)
    assert a.fingerprint() == b.fingerprint() != ComposeConfig(seed=2).fingerprint()
    assert a.fingerprint() != replace(a, objects_per_image=2).fingerprint()
    with pytest.raises(ComposeConfigError, match="needs --graconet-ckpt PATH"):
        ComposeConfig(placement="graconet").validate()
    with pytest.raises(ComposeConfigError, match="needs --harmonizer-ckpt PATH"):
        ComposeConfig(harmonize="network").validate()
    with pytest.raises(ComposeConfigError, match="not found"):
        ComposeConfig(placement="graconet", graconet_ckpt=str(tmp_path / "nope.pth")).validate()
    with pytest.raises(ComposeConfigError, match="unknown harmonize"):
        ComposeConfig(harmonize="magic").validate()
    assert isinstance(SampleRow.__dataclass_fields__["objects"].default, tuple)


# --- CLI ------------------------------------------------------------------------------------------------


def test_cli_compose_writes_samples(real_source, tmp_path):
    from comcoco.cli import app
    from comcoco.matching.scene import write_candidates

    src, cands = real_source
    cpath = write_candidates(tmp_path / "candidates.parquet", cands)
    out = tmp_path / "out"
    res = CliRunner().invoke(
        app, ["compose", str(src.ROOT_DIR), "--candidates", str(cpath), "-o", str(out), "--limit", "3", "--harmonize", "none"]
    )
    assert res.exit_code == 0, res.output
    rows = read_samples(out / "samples.parquet")
    assert len(rows) == 3 and "composed 3 samples" in res.output
    assert all((out / r.composite).is_file() for r in rows if r.ok)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--placement", "graconet"], "needs --graconet-ckpt PATH"),
        (["--harmonize", "network"], "needs --harmonizer-ckpt PATH"),
        (["--image-format", "tiff"], "unknown image format"),
    ],
)
def test_cli_refuses_unusable_config_before_work(real_source, tmp_path, extra, message):
    from comcoco.cli import app

    src, _ = real_source
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["compose", str(src.ROOT_DIR), "--candidates", str(tmp_path / "c.parquet"), "-o", str(out), *extra])
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert "Traceback" not in res.output and not out.exists()


def test_cli_missing_candidates_file(real_source, tmp_path):
    from comcoco.cli import app

    src, _ = real_source
    res = CliRunner().invoke(app, ["compose", str(src.ROOT_DIR), "--candidates", str(tmp_path / "none.parquet"), "-o", str(tmp_path / "o")])
    assert res.exit_code == 3 and "none.parquet" in res.output and "Traceback" not in res.output


def test_graconet_place_gets_the_boxes_already_pasted(demo_source, tmp_path):
    from comcoco.placement.sampler import sample_placement

    ckpt = tmp_path / "graconet.pth"
    ckpt.write_bytes(b"not used: the placer below is injected")
    requests = []

    class ScoringPlacer:
        def place(self, req, fg_rgb, fg_mask, bg_rgb, seed, key, k):
            requests.append((req, fg_rgb.shape[:2] == fg_mask.shape, bg_rgb.shape))
            return sample_placement(req, seed, key=key, k=k)

    _, cands = _shared_background_candidates(demo_source, 2)
    cfg = ComposeConfig(profile="paper", placement="graconet", graconet_ckpt=str(ckpt), harmonize="none", objects_per_image=2)
    rows = run_compose(demo_source, cands, tmp_path / "out", cfg, models=ComposeModels(placer=ScoringPlacer()))
    ok = [r for r in rows if r.ok]
    assert len(requests) == 2 and all(same for _, same, _ in requests)
    assert requests[0][0].avoid == ()
    first = next(r for r in ok if r.fg_ref_id == cands[0].ref_id)
    assert requests[1][0].avoid == (tuple(float(v) for v in first.box),)
    assert all(r.plausibility is not None for r in ok)


# --- the robust profile: effects travel with the object ---------------------------------------------


@pytest.fixture(scope="module")
def robust_run(tmp_path_factory, real_source):
    src, cands = real_source
    out = tmp_path_factory.mktemp("robust_out")
    rows = run_compose(src, cands, out, ComposeConfig(seed=3))
    return src, out, rows


def test_robust_pairs_are_exact_outside_the_effect_mask_on_real_images(robust_run):
    """Real COCO photos: each target's ground truth is the composite with exactly the pixels it changed
    (object, shadow, JPEG step) restored; the pair is byte-identical outside its effect mask."""
    src, out, rows = robust_run
    ok = [r for r in rows if r.ok]
    assert len(ok) >= 6, [(r.status, r.reason) for r in rows]
    by_comp: dict[str, list] = {}
    for r in ok:
        by_comp.setdefault(r.composite_id, []).append(r)
    assert any(len(v) > 1 for v in by_comp.values())  # several targets share a composite
    assert any(r.decoy_ann_ids for r in ok)  # and some have look-alikes no sample refers to
    for r in ok:
        comp, gt = _load(out, r.composite), _load(out, r.ground_truth)
        mask, effect = _load(out, r.mask, gray=True), _load(out, r.effect_mask, gray=True)
        assert set(np.unique(effect)) <= {0, 255} and int((effect > 0).sum()) == r.effect_area
        assert not ((mask > 0) & (effect == 0)).any()  # the effect mask holds the object
        assert np.array_equal(comp[effect == 0], gt[effect == 0])  # exact outside the effect mask itself
        assert np.array_equal(comp[~dilated(effect, 8)], gt[~dilated(effect, 8)])
        changed = (comp != gt).any(axis=2)
        assert changed.sum() > 0.5 * (mask > 0).sum()
        assert r.light in ("objects", "gradient", "default") and r.matte and r.shadow_kind
        bg = cv2.cvtColor(decode_image(src.image_path(r.bg_image_id)), cv2.COLOR_RGB2BGR)
        others = [o for o in by_comp[r.composite_id] if o is not r]
        if not others and not r.decoy_ann_ids:  # alone: the ground truth is the background
            assert np.array_equal(gt, bg)
        targets = effect > 0
        for o in others:  # the other targets stay in this target's ground truth, untouched
            oe = _load(out, o.effect_mask, gray=True) > 0
            assert not (oe & (effect > 0)).any()  # footprints never overlap
            assert np.array_equal(gt[oe], comp[oe])
            targets |= oe
        assert all(o.decoy_ann_ids == r.decoy_ann_ids for o in others)  # one composite, one set of decoys
        # the decoys: pasted where no target is, and visible in the ground truth as in the composite
        decoys = (comp != bg).any(axis=2) & ~dilated(targets.astype(np.uint8) * 255, 8)
        assert (decoys.sum() > 200) == bool(r.decoy_ann_ids), (r.decoy_ann_ids, int(decoys.sum()))
        assert np.array_equal(gt[decoys], comp[decoys])
    # the shadow darkens only: outside the object, the composite is never brighter than the background
    for r in ok:
        comp = _load(out, r.composite).astype(int)
        bg = cv2.cvtColor(decode_image(src.image_path(r.bg_image_id)), cv2.COLOR_RGB2BGR).astype(int)
        effect, mask = _load(out, r.effect_mask, gray=True) > 0, _grow1(_load(out, r.mask, gray=True))
        ring = effect & ~mask & ~dilated(_load(out, r.mask, gray=True), 2)
        if ring.any():
            assert (comp[ring].sum(axis=1) <= bg[ring].sum(axis=1) + 3).mean() > 0.95


def test_robust_output_is_deterministic_and_its_table_has_the_effect_columns(robust_run, real_source, tmp_path):
    from comcoco.compose.samples import ROBUST_COLUMNS, SAMPLES_SCHEMA

    src, out, rows = robust_run
    src2, cands = real_source
    again = run_compose(src2, cands, tmp_path / "again", ComposeConfig(seed=3))
    assert again == rows
    for r in (x for x in rows if x.ok):
        for rel in r.files:
            assert (out / rel).read_bytes() == (tmp_path / "again" / rel).read_bytes()
    names = pq.read_schema(out / "samples.parquet").names
    assert names == SAMPLES_SCHEMA.names + list(ROBUST_COLUMNS)
    paper = run_compose(src2, cands[:4], tmp_path / "paper", ComposeConfig(profile="paper", seed=3))
    assert pq.read_schema(tmp_path / "paper" / "samples.parquet").names == SAMPLES_SCHEMA.names
    assert all(r.effect_mask is None for r in paper) and not (tmp_path / "paper" / "effects").exists()
