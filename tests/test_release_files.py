"""comcoco.release.files: a sample's masks and file writes give what the plain numpy and Python forms give."""

from __future__ import annotations

import os
import stat

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from comcoco.release import files as rf
from comcoco.release.export import ExportError, ReleaseEntry


def _random_masks(seed: int = 0) -> list[np.ndarray]:
    """0/255 masks of odd and even sizes: blobs, empty, full, single pixels and stripes."""
    rng = np.random.default_rng(seed)
    out = []
    for h, w in ((1, 1), (7, 3), (480, 640), (333, 517), (64, 1), (1, 64)):
        blob = np.zeros((h, w), np.uint8)
        cv2.circle(blob, (w // 2, h // 3), max(1, min(h, w) // 3), 255, -1)
        out += [blob, np.zeros((h, w), np.uint8), np.full((h, w), 255, np.uint8),
                (rng.random((h, w)) > 0.7).astype(np.uint8) * 255]
    return out


def test_released_mask_is_the_decoded_rle_in_c_order():
    for mask in _random_masks():
        rle = mask_utils.encode(np.asfortranarray(mask // 255))
        got = rf.released_mask(rle)
        want = np.ascontiguousarray(mask_utils.decode(rle) * np.uint8(255))
        assert got.flags.c_contiguous and got.dtype == np.uint8 and got.shape == mask.shape
        assert np.array_equal(got, want)


def test_effect_rle_is_cocos_rle_of_the_mask():
    for mask in _random_masks(1):
        rle = mask_utils.encode(np.asfortranarray(mask))
        assert rf._rle(mask) == {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _entry(tmp_path, built: np.ndarray | None, effect: np.ndarray | None) -> ReleaseEntry:
    prov = {}
    if built is not None:
        cv2.imwrite(str(tmp_path / "built.png"), built)
        prov["build_mask"] = "built.png"
    if effect is not None:
        cv2.imwrite(str(tmp_path / "effect.png"), effect)
    h, w = (built if built is not None else effect).shape
    return ReleaseEntry(sample_id="s1", composite_id="c1", split="train", ref_id=1, ann_id=2, image_id=3,
                        category_id=1, cluster=0, width=w, height=h, src_composite="c.png", src_ground_truth="g.png",
                        polygons=((0.0, 0.0, 1.0, 0.0, 1.0, 1.0),), expressions=(), provenance=prov,
                        src_effect_mask="effect.png" if effect is not None else None)


def test_effect_mask_and_build_iou_cut_the_build_masks_above_127(tmp_path):
    """Grey levels on both sides of the cut (127 is out, 128 in), as the numpy forms count them."""
    rng = np.random.default_rng(2)
    h, w = 120, 170
    mask = np.zeros((h, w), np.uint8)
    mask[20:80, 30:120] = 255
    built = rng.integers(0, 256, (h, w), dtype=np.uint8)
    built[0, :4] = (126, 127, 128, 129)
    effect = rng.integers(0, 256, (h, w), dtype=np.uint8)
    e = _entry(tmp_path, built, effect)
    got = rf._effect(tmp_path, e, mask)
    assert np.array_equal(got, np.where((mask > 0) | (effect > 127), 255, 0).astype(np.uint8))
    b = built > 127
    inter = np.count_nonzero(b & (mask > 0))
    union = np.count_nonzero(b) + np.count_nonzero(mask) - inter
    assert rf._build_mask_iou(tmp_path, e, mask, int(np.count_nonzero(mask))) == float(inter / union)
    empty = np.zeros((h, w), np.uint8)
    assert rf._build_mask_iou(tmp_path, _entry(tmp_path, empty, None), empty, 0) == 1.0


def test_effect_mask_of_another_size_is_refused_by_name(tmp_path):
    e = _entry(tmp_path, None, np.zeros((10, 12), np.uint8))
    with pytest.raises(ExportError, match="effect.png"):
        rf._effect(tmp_path, e, np.zeros((12, 10), np.uint8))


def test_copy_file_copies_into_a_new_inode_and_never_writes_through_a_link(tmp_path):
    src = tmp_path / "src.bin"
    data = os.urandom(3 * 1024 * 1024 + 17)  # more than one copy_file_range call may move
    src.write_bytes(data)
    dst = tmp_path / "a" / "b" / "dst.bin"  # folders made on the way
    rf.copy_file(src, dst)
    assert dst.read_bytes() == data and dst.stat().st_ino != src.stat().st_ino

    other = tmp_path / "other.bin"
    other.write_bytes(b"someone else's bytes")
    os.unlink(dst)
    os.link(other, dst)  # a hard link where the copy goes: replaced, not written through
    rf.copy_file(src, dst)
    assert dst.read_bytes() == data and other.read_bytes() == b"someone else's bytes"

    with pytest.raises(FileNotFoundError, match="missing.bin"):
        rf.copy_file(tmp_path / "missing.bin", tmp_path / "x.bin")
    assert not (tmp_path / "x.bin").exists()


def test_write_new_replaces_whole_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "masks" / "m.png"
    rf.write_new(path, b"first")
    rf.write_new(path, b"second, longer")
    assert path.read_bytes() == b"second, longer"
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.png"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # as the release's other atomic writes


@pytest.mark.parametrize("rel", ["shards/00000/images/ab.png", "a/b.jpg", "x", ".hidden", "a/.hidden", "a.",
                                 "a/b.tar.gz", "a.b/c", "a/b.png/", "..", "a/..b", "a/b..", "a//b.png"])
def test_release_names_keep_the_files_suffix_as_pathlib_reads_it(rel):
    from pathlib import PurePosixPath

    from comcoco.release.export import _suffix

    assert _suffix(rel) == PurePosixPath(rel).suffix


def test_copy_file_falls_back_to_sendfile_where_copy_file_range_is_refused(tmp_path, monkeypatch):
    src = tmp_path / "src.bin"
    data = os.urandom(2 * 1024 * 1024 + 5)
    src.write_bytes(data)
    calls = []

    def refused(*args):
        calls.append(args)
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(rf.os, "copy_file_range", refused)
    rf.copy_file(src, tmp_path / "dst.bin")
    assert calls and (tmp_path / "dst.bin").read_bytes() == data
