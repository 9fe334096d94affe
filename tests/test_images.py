"""Image decoding and masks, checked against real COCO val2017 fixtures and pycocotools."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from comcoco.sources.images import (
    ImageReadError,
    ImageTooLarge,
    annotation_mask,
    image_size,
    polygon_area,
    read_image,
    segmentation_rles,
    usable_polygons,
)


@pytest.fixture(scope="module")
def coco(coco_real_dir: Path) -> COCO:
    return COCO(str(coco_real_dir / "instances_val2017_subset.json"))


def _jpeg_bytes(arr: np.ndarray, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def test_read_image_real_files_match_instances_sizes(coco_real_dir: Path) -> None:
    data = json.loads((coco_real_dir / "instances_val2017_subset.json").read_text())
    for entry in data["images"]:
        path = coco_real_dir / entry["file_name"]  # 000000039769 is a PNG despite COCO naming
        arr = read_image(path)
        assert arr.shape == (entry["height"], entry["width"], 3)
        assert arr.dtype == np.uint8
        assert arr.flags.writeable
        assert image_size(path) == (entry["width"], entry["height"])
        assert arr.std() > 10  # real photo content, not a blank decode


def test_read_image_converts_grey_and_rgba_to_rgb(tmp_path: Path) -> None:
    grey = (np.arange(12 * 10) % 256).astype(np.uint8).reshape(10, 12)
    Image.fromarray(grey, mode="L").save(tmp_path / "grey.png")
    out = read_image(tmp_path / "grey.png")
    assert out.shape == (10, 12, 3)
    assert np.array_equal(out[..., 0], grey) and np.array_equal(out[..., 2], grey)

    rgba = np.zeros((4, 5, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    out = read_image(tmp_path / "rgba.png")
    assert out.shape == (4, 5, 3) and int(out[0, 0, 0]) == 200


def test_read_image_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jpg"
    with pytest.raises(ImageReadError, match="nope.jpg"):
        read_image(missing)
    with pytest.raises(ImageReadError, match="nope.jpg"):
        image_size(missing)

    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(ImageReadError, match="garbage.jpg"):
        read_image(garbage)
    with pytest.raises(ImageReadError, match="garbage.jpg"):
        image_size(garbage)


def test_truncated_jpeg_header_readable_but_full_decode_fails(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = _jpeg_bytes(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8))
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    assert image_size(path) == (80, 64)  # the cheap check cannot see the damage
    with pytest.raises(ImageReadError, match="cut.jpg"):
        read_image(path)


def test_annotation_mask_equals_pycocotools_on_real_polygons(coco: COCO) -> None:
    assert len(coco.getAnnIds()) == 10
    for ann in coco.loadAnns(coco.getAnnIds()):
        img = coco.loadImgs(ann["image_id"])[0]
        ours = annotation_mask(ann["segmentation"], img["height"], img["width"])
        ref = coco.annToMask(ann)
        assert ours.shape == (img["height"], img["width"])
        assert ours.dtype == np.uint8
        assert np.array_equal(ours, ref), ann["id"]
        assert ours.sum() > 0
        # area close to the annotation's stored area (COCO areas come from the same polygons)
        assert abs(int(ours.sum()) - ann["area"]) / ann["area"] < 0.05


def test_annotation_mask_is_a_clipped_union_of_polygons() -> None:
    a = [0, 0, 10, 0, 10, 10, 0, 10]
    b = [5, 5, 15, 5, 15, 15, 5, 15]
    m = annotation_mask([a, b], 20, 20)
    assert m.max() == 1
    single_a = annotation_mask([a], 20, 20)
    single_b = annotation_mask([b], 20, 20)
    assert np.array_equal(m, np.maximum(single_a, single_b))
    assert m.sum() < single_a.sum() + single_b.sum()  # overlap counted once


def test_annotation_mask_reads_compressed_and_uncompressed_rle() -> None:
    truth = np.zeros((30, 40), dtype=np.uint8)
    truth[5:20, 10:33] = 1
    truth[22:25, 0:3] = 1
    compressed = mask_utils.encode(np.asfortranarray(truth))
    as_json = {"size": compressed["size"], "counts": compressed["counts"].decode("ascii")}
    assert np.array_equal(annotation_mask(as_json, 30, 40), truth)

    # uncompressed counts: runs of 0s and 1s in column-major order, as COCO crowd annotations store them
    flat = truth.flatten(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:
        counts = [0, *counts]
    assert np.array_equal(annotation_mask({"size": [30, 40], "counts": counts}, 30, 40), truth)

    with pytest.raises(ValueError, match="RLE size"):
        annotation_mask(as_json, 40, 30)


def test_short_polygons_are_never_read_as_boxes() -> None:
    # pycocotools would rasterise a 4-number polygon as a bounding box; it must give nothing instead
    assert annotation_mask([[0, 0, 10, 10]], 20, 20).sum() == 0
    assert annotation_mask([], 20, 20).sum() == 0
    assert annotation_mask([[]], 20, 20).sum() == 0
    assert usable_polygons([[1, 2, 3, 4], [0, 0, 5, 0, 5, 5, 9]]) == [[0.0, 0.0, 5.0, 0.0, 5.0, 5.0]]
    assert len(segmentation_rles([[0, 0, 4, 0, 4, 4], [1, 1, 2]], 8, 8)) == 1
    with pytest.raises(ValueError):
        annotation_mask("not a segmentation", 5, 5)


def test_polygon_area_shoelace() -> None:
    assert polygon_area([0, 0, 4, 0, 4, 3, 0, 3]) == pytest.approx(12.0)
    assert polygon_area([0, 0, 4, 0, 4, 3, 0, 3][::-1]) == pytest.approx(12.0)  # orientation-free
    assert polygon_area([0, 0, 5, 5, 10, 10]) == 0.0  # collinear
    assert polygon_area([0, 0, 1, 1]) == 0.0


def test_image_size_reads_the_head_and_falls_back_to_the_whole_file(tmp_path: Path, monkeypatch) -> None:
    """PNG sizes come from the IHDR chunk; a header past the head (JPEG after long metadata) is found in
    the whole file; a bomb's header is refused either way."""
    from comcoco.sources import images as im

    rng = np.random.default_rng(1)
    png = tmp_path / "a.png"
    Image.fromarray(rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)).save(png)
    assert image_size(png) == (90, 70)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (50, 60, 3), dtype=np.uint8)).save(
        buf, format="JPEG", exif=b"Exif\x00\x00" + bytes(3 * im.HEADER_BYTES // 2))  # SOF beyond the head
    late = tmp_path / "late.jpg"
    late.write_bytes(buf.getvalue())
    assert len(buf.getvalue()) > im.HEADER_BYTES and image_size(late) == (60, 50)

    reads = []
    real = im.read_image_bytes
    monkeypatch.setattr(im, "read_image_bytes", lambda p, m=im.MAX_IMAGE_BYTES, head=None: reads.append(head) or real(p, m, head))
    image_size(png)
    assert reads == [im.HEADER_BYTES]  # the PNG: its head only
    bomb = tmp_path / "bomb.png"
    data = bytearray(png.read_bytes())
    data[16:24] = (100_000).to_bytes(4, "big") * 2
    bomb.write_bytes(bytes(data))
    with pytest.raises(ImageTooLarge, match="bomb.png"):
        image_size(bomb)
    data[16:20] = (0).to_bytes(4, "big")
    bomb.write_bytes(bytes(data))
    with pytest.raises(ImageReadError, match="0x100000"):
        image_size(bomb)
