"""The embedded demo source: a REFER source that loads, validates and has RefCOCO+'s shape."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from typer.testing import CliRunner

from comcoco.cli import app
from comcoco.matching.clusters import cluster_of
from comcoco.sources import demo
from comcoco.sources.format import SourceError
from comcoco.sources.images import read_image
from comcoco.sources.refer import COCO_CATEGORIES, load_source, normalize_sentence
from comcoco.sources.validate import inspect_source
from comcoco.text.syntax import ATTRIBUTE_WORDS

# Location words RefCOCO+ forbade its annotators (appearance-only expressions).
SPATIAL = demo.SPATIAL_WORDS | frozenset(
    "left right middle center centre top bottom front back behind near far closest farthest nearest upper lower "
    "corner edge side above below under beside next between leftmost rightmost first second third last rear".split()
)

# Appearance words: the tagger's attribute lexicon plus the pattern nouns the demo also uses.
APPEARANCE = ATTRIBUTE_WORDS


@pytest.fixture(scope="module")
def demo30(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo") / "source"
    report = demo.generate_demo(root, n_images=30, seed=0)
    return root, report, load_source(root)


def test_loads_and_passes_deep_inspection(demo30):
    root, report, src = demo30
    assert (root / "refcoco+" / "refs(unc).p").is_file()
    assert (root / "refcoco+" / "instances.json").is_file()
    assert len(src.images()) == report.images == 30
    assert len(src.refs()) == report.refs > 30
    result = inspect_source(src, deep=True)
    assert result.problems == []
    assert result.to_dict()["images"] == 30
    for image in src.images():  # instances.json sizes are the JPEG's own
        h, w = read_image(src.image_path(image.image_id)).shape[:2]
        assert (w, h) == (image.width, image.height)
        assert 360 <= min(w, h) and max(w, h) <= 640


def test_scenes_cover_many_clusters_each_image_one(demo30):
    _, _, src = demo30
    per_image: dict[int, set[int]] = defaultdict(set)
    for ann in src.annotations():
        per_image[ann.image_id].add(cluster_of(ann.category_id))
    assert all(len(c) == 1 for c in per_image.values())  # coherent scenes, no fridge among elephants
    referred_clusters = {cluster_of(r.category_id) for r in src.refs()}
    assert len(referred_clusters) >= 8
    # Several annotated objects per image, and some annotations are never referred (as in RefCOCO+).
    assert min(len(src.imgToAnns[i]) for i in per_image) >= 2
    assert len(src.annotations()) > len(src.refs())


def test_expressions_are_refcoco_plus_like(demo30):
    _, _, src = demo30
    sent_ids, ref_ids = [], []
    for ref in src.refs():
        ref_ids.append(ref.ref_id)
        assert 2 <= len(ref.sentences) <= 6
        sents = [s.sent for s in ref.sentences]
        assert len(set(sents)) == len(sents)
        for s in ref.sentences:
            sent_ids.append(s.sent_id)
            assert (s.sent, s.tokens) == normalize_sentence(s.raw)
            assert not SPATIAL & set(s.tokens), s.raw
            # Every expression carries an appearance attribute (colour, size, pattern, clothing).
            assert APPEARANCE & set(s.tokens), s.raw
    assert len(set(sent_ids)) == len(sent_ids)
    assert len(set(ref_ids)) == len(ref_ids)
    vocabulary = {t for ref in src.refs() for s in ref.sentences for t in s.tokens}
    assert len(vocabulary) > 60  # varied words, so Jaccard matching has something to rank


def test_refcoco_plus_splits(demo30):
    _, _, src = demo30
    refs = src.refs()
    assert {r.split for r in refs} == {"train", "val", "testA", "testB"}
    assert all(r.category_id == 1 for r in refs if r.split == "testA")
    assert all(r.category_id != 1 for r in refs if r.split == "testB")
    splits_of_image: dict[int, set[str]] = defaultdict(set)
    for r in refs:
        splits_of_image[r.image_id].add(r.split)
    assert all(len(s) == 1 for s in splits_of_image.values())
    train = sum(r.split == "train" for r in refs)
    assert train > len(refs) / 2


@pytest.mark.parametrize("n", [4, 9, 57, 200])
def test_split_plan_any_size(n):
    themes = demo.plan_themes(n, seed=2)
    splits = demo.plan_splits(themes, seed=2)
    assert set(splits) == {"train", "val", "testA", "testB"}
    assert all(t == demo.PERSON_THEME for t, s in zip(themes, splits, strict=True) if s == "testA")
    assert all(t != demo.PERSON_THEME for t, s in zip(themes, splits, strict=True) if s == "testB")


def test_theme_plan_gives_every_cluster_enough_images():
    themes = demo.plan_themes(200, seed=0)
    counts = {t.name: themes.count(t.name) for t in demo.THEMES}
    assert min(counts.values()) >= 6  # scene matching needs 5 same-cluster backgrounds
    assert counts[demo.PERSON_THEME] == max(counts.values())
    assert set(demo.plan_themes(len(demo.THEMES) + 3, seed=9)) == set(counts)


def test_annotations_match_drawn_pixels_and_rest_on_ground(demo30):
    _, _, src = demo30
    contrasts, sizes = [], set()
    for image in src.images():
        pixels = read_image(src.image_path(image.image_id)).astype(np.float32)
        ground_y = image.extra["demo_ground_y"]
        for ann in src.imgToAnns[image.image_id]:
            rle = mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], image.height, image.width))
            mask = mask_utils.decode(rle)
            assert abs(float(mask_utils.area(rle)) - ann["area"]) < 1e-6
            ys, xs = np.nonzero(mask)
            x, y, w, h = ann["bbox"]
            assert x - 1 <= xs.min() and xs.max() <= x + w + 1 and y - 1 <= ys.min() and ys.max() <= y + h + 1
            assert y + h > ground_y  # standing on the ground region
            ring = cv2.dilate(mask, np.ones((7, 7), np.uint8)) - mask
            inner = cv2.erode(mask, np.ones((3, 3), np.uint8)).astype(bool)
            if inner.sum() < 20:
                continue
            contrasts.append(float(np.linalg.norm(pixels[inner].mean(0) - pixels[ring.astype(bool)].mean(0))))
            sizes.add("small" if ann["area"] < 32**2 else "medium" if ann["area"] < 96**2 else "large")
    contrasts = np.asarray(contrasts)
    assert np.median(contrasts) > 25.0
    assert (contrasts > 8.0).mean() > 0.8
    assert sizes == {"small", "medium", "large"}


def test_colour_words_match_the_drawn_tint(tmp_path):
    categories = {c.name: c.id for c in COCO_CATEGORIES}
    checked = 0
    for index, theme in enumerate(t.name for t in demo.THEMES[1:]):
        image = demo.render_demo_image(index, theme, "train", 0, categories)
        pixels = image.pixels.astype(np.float32)
        for obj in image.objects:
            if obj.pattern != "plain" or obj.colour not in ("red", "green", "blue", "yellow") or obj.category == "potted plant":
                continue
            ann = obj.annotation
            mask = demo.polygon_mask(ann.segmentation[0], image.info.height, image.info.width).astype(bool)
            r, g, b = np.median(pixels[mask], axis=0)
            dominant = {"red": r > 1.3 * g and r > 1.3 * b, "green": g > r and g > b,
                        "blue": b > r and b > g, "yellow": r > b * 1.4 and g > b * 1.4}[obj.colour]
            assert dominant, (obj.category, obj.colour, (r, g, b))
            checked += 1
    assert checked >= 4


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes(tmp_path):
    a = demo.generate_demo_source(tmp_path / "a", n_images=12, seed=5)
    b = demo.generate_demo_source(tmp_path / "b", n_images=12, seed=5)
    da, db = _digest(a), _digest(b)
    assert len(da) == 12 + 3 and da == db
    categories = {c.name: c.id for c in COCO_CATEGORIES}
    first = demo.render_demo_image(0, "street", "train", 5, categories)
    other = demo.render_demo_image(0, "street", "train", 6, categories)
    assert first.objects != other.objects


def test_cli_writes_rewrites_and_refuses(tmp_path):
    runner = CliRunner()
    out = tmp_path / "src"
    result = runner.invoke(app, ["demo-source", "-o", str(out), "--images", "6", "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert "6 images" in result.output
    image_dir = out / "images/mscoco/images/train2014"
    assert len(list(image_dir.glob("*.jpg"))) == 6
    # Rerunning over a demo source replaces it, stale images included.
    result = runner.invoke(app, ["demo-source", "-o", str(out), "--images", "4"])
    assert result.exit_code == 0, result.output
    assert len(list(image_dir.glob("*.jpg"))) == 4 and len(load_source(out).images()) == 4

    result = runner.invoke(app, ["demo-source", "-o", str(tmp_path / "tiny"), "--images", "2"])
    assert result.exit_code == 2 and "error:" in result.output and "at least 4" in result.output

    foreign = tmp_path / "real"
    (foreign / "refcoco+").mkdir(parents=True)
    (foreign / "refcoco+" / "refs(unc).p").write_bytes(b"not ours")
    result = runner.invoke(app, ["demo-source", "-o", str(foreign), "--images", "4"])
    assert result.exit_code == 3 and "not written by demo-source" in result.output
    assert (foreign / "refcoco+" / "refs(unc).p").read_bytes() == b"not ours"


def test_any_number_of_workers_same_bytes(tmp_path, capsys):
    serial = demo.generate_demo_source(tmp_path / "one", n_images=12, seed=5, workers=1)
    report = demo.generate_demo(tmp_path / "two", n_images=12, seed=5, workers=2, progress=True)
    ds, dp = _digest(serial), _digest(report.root)
    assert len(ds) == 12 + 3 and ds == dp  # images, refs(unc).p, instances.json, demo-source.json
    assert report.images == 12 and report.refs == len(load_source(report.root).refs())
    assert "workers" not in (report.root / demo.MARKER).read_text()
    assert not (report.root / demo.PARTIAL_MARKER).exists()
    lines = capsys.readouterr().err.splitlines()
    assert lines[-1] == "demo images: 12/12 images (100 %)" and len(lines) >= 2  # advanced chunk by chunk


def test_chunks_cover_every_image_once_in_order():
    jobs = [demo.ImageJob(i, "street", "train") for i in range(1000)]
    for workers in (1, 2, 8):
        chunks = demo.drawing.chunk_jobs(jobs, workers)
        assert [j for c in chunks for j in c] == jobs
        assert max(len(c) for c in chunks) <= demo.drawing.MAX_CHUNK
        assert len(chunks) >= 4 * workers


@pytest.mark.parametrize("workers", [1, 2])
def test_a_failing_image_is_named(tmp_path, workers):
    categories = {c.name: c.id for c in COCO_CATEGORIES if c.name != "person"}
    jobs = [demo.ImageJob(i, "people" if i == 5 else "street", "train") for i in range(8)]
    with pytest.raises(demo.DemoImageError, match=r"demo image 5 \(COCO_train2014_000000000006\.jpg\): "
                                                  r"KeyError: 'person'") as caught:
        demo.draw_images(tmp_path, 0, categories, jobs, workers=workers)
    assert caught.value.index == 5
    assert not (tmp_path / demo.demo_file_name(6)).exists()


def test_a_run_that_fails_leaves_no_complete_source(tmp_path):
    out = tmp_path / "src"
    demo.generate_demo(out, n_images=8, seed=0)
    image_dir = out / demo.IMAGE_SUBDIR
    blocker = image_dir / demo.demo_file_name(6)
    blocker.unlink()
    blocker.mkdir()  # image 5 of the next run cannot be written
    result = CliRunner().invoke(app, ["demo-source", "-o", str(out), "--images", "8", "--seed", "1",
                                      "--workers", "2"])
    assert result.exit_code == 3 and demo.demo_file_name(6) in result.output, result.output
    assert not (out / demo.MARKER).exists() and (out / demo.PARTIAL_MARKER).is_file()
    assert not (out / "refcoco+" / "refs(unc).p").exists() and not (out / "refcoco+" / "instances.json").exists()
    with pytest.raises(SourceError, match=r"refs\(unc\)\.p"):
        load_source(out)
    # The partial marker keeps the folder ours: once the obstacle is gone, a rerun completes it.
    blocker.rmdir()
    demo.generate_demo(out, n_images=8, seed=1, workers=2)
    assert _digest(out) == _digest(demo.generate_demo_source(tmp_path / "fresh", n_images=8, seed=1))
