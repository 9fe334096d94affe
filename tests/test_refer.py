"""The REFER-format reader/writer: real COCO fixtures, real REFER records, hostile pickles, round trips."""

from __future__ import annotations

import copy
import json
import os
import pickle
import pickletools
import shlex
import shutil
import struct
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from comcoco.records import Annotation, Category, ImageInfo, Ref, Sentence
from comcoco.sources.images import annotation_mask, read_image
from comcoco.sources.refer import (
    COCO_CATEGORIES,
    DEFAULT_IMAGE_SUBDIR,
    INSTANCES_KEYS,
    KNOWN_SPLITS,
    REF_KEYS,
    SENTENCE_KEYS,
    SourceError,
    UnsafePickleError,
    load_plain_pickle,
    load_source,
    normalize_sentence,
    write_source,
)

# Splits given to the synthetic refs built on the real fixture annotations (COCO val2017 ids).
REAL_SPLITS = {
    442619: "train",
    198196: "train",
    230195: "testA",
    1202706: "testA",
    1108446: "val",
    1110067: "testB",
    1605237: "testB",
    1612051: "train",
    2190839: "val",
    2190842: "train",
}


def _records_from_instances(data: dict[str, Any]) -> tuple[list[ImageInfo], list[Annotation], list[Category]]:
    images = [
        ImageInfo(
            image_id=i["id"],
            file_name=i["file_name"],
            width=i["width"],
            height=i["height"],
            extra={k: v for k, v in i.items() if k not in ("id", "file_name", "width", "height")},
        )
        for i in data["images"]
    ]
    anns = [
        Annotation(
            ann_id=a["id"],
            image_id=a["image_id"],
            category_id=a["category_id"],
            bbox=tuple(a["bbox"]),
            area=a["area"],
            iscrowd=a["iscrowd"],
            segmentation=a["segmentation"],
        )
        for a in data["annotations"]
    ]
    cats = [Category(c["id"], c["name"], c["supercategory"]) for c in data["categories"]]
    return images, anns, cats


@pytest.fixture(scope="module")
def real(coco_real_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A REFER source around the real COCO fixtures.

    The fixtures have real images and polygons but no referring expressions (val2017 is not part of
    RefCOCO+), so the refs and their expressions below are synthetic, written by this test.
    """
    data = json.loads((coco_real_dir / "instances_val2017_subset.json").read_text())
    images, anns, cats = _records_from_instances(data)
    names = {c.id: c.name for c in cats}
    refs = []
    for i, ann in enumerate(anns):
        raws = (f"The {names[ann.category_id]}, number {i}!", f"synthetic {names[ann.category_id]}")
        sentences = tuple(Sentence(1000 + 2 * i + j, raw, *normalize_sentence(raw)) for j, raw in enumerate(raws))
        refs.append(Ref(i, ann.ann_id, ann.image_id, ann.category_id, REAL_SPLITS[ann.ann_id], sentences))
    root = tmp_path_factory.mktemp("real_source")
    write_source(root, refs, images, anns, cats, info=data["info"], licenses=data["licenses"])
    image_dir = root / DEFAULT_IMAGE_SUBDIR
    image_dir.mkdir(parents=True)
    for image in images:
        shutil.copyfile(coco_real_dir / image.file_name, image_dir / image.file_name)  # symlinks out are refused
    return {"root": root, "data": data, "refs": refs, "images": images, "anns": anns, "cats": cats}


@pytest.fixture(scope="module")
def source(real: dict[str, Any]):
    return load_source(real["root"])


@pytest.fixture(scope="module")
def coco(coco_real_dir: Path) -> COCO:
    return COCO(str(coco_real_dir / "instances_val2017_subset.json"))


# --- reader on real COCO fixtures ----------------------------------------------------------------


def test_real_source_typed_records(source, real) -> None:
    assert source.problems == []
    # the writer filled the empty file names the REFER way: <image stem>_<ann_id>.jpg
    assert [r.file_name for r in source.refs()][:2] == ["000000000785_442619.jpg", "000000040083_198196.jpg"]
    assert [replace(r, file_name="") for r in source.refs()] == real["refs"]
    assert source.annotations() == real["anns"]
    assert source.images() == real["images"]
    assert source.categories() == real["cats"]
    assert [i.extra for i in source.images()] == [i.extra for i in real["images"]]
    assert source.ref(3).ann_id == 1202706 and source.ref(3).split == "testA"
    assert source.annotation(2190839).category_id == 17
    assert source.image(39769).file_name == "000000039769.png"
    assert source.image(785).extra["coco_url"].endswith("000000000785.jpg")
    with pytest.raises(KeyError, match="unknown ref id 999"):
        source.ref(999)


def test_real_source_index(source, real) -> None:
    assert set(source.Refs) == set(range(10))
    assert source.Cats == {1: "person", 17: "cat", 63: "couch", 65: "bed", 75: "remote"}
    assert [r["ref_id"] for r in source.imgToRefs[40083]] == [1, 2, 3]
    assert len(source.imgToAnns[39769]) == 6
    assert source.refToAnn[6]["id"] == 1605237
    assert source.annToRef[1605237]["ref_id"] == 6
    assert [r["ref_id"] for r in source.catToRefs[17]] == [8, 9]
    assert len(source.Sents) == 20
    assert source.sentToRef[1001]["ref_id"] == 0
    assert source.sentToTokens[1000] == ["the", "person", "number", "0"]
    assert source.Sents[1000]["raw"] == "The person, number 0!"
    assert source.data["dataset"] == "refcoco+"
    assert Path(source.IMAGE_DIR) == real["root"] / DEFAULT_IMAGE_SUBDIR
    assert source.DATA_DIR == str(real["root"] / "refcoco+")


def test_image_paths_resolve_to_real_files(source) -> None:
    for image in source.images():
        path = source.image_path(image.image_id)
        assert path.is_file()
        assert read_image(path).shape == (image.height, image.width, 3)
    assert source.image_path(39769).suffix == ".png"


def test_get_mask_matches_pycocotools(source, coco) -> None:
    for ref_id in source.getRefIds():
        ref = source.loadRefs(ref_id)[0]
        ann = coco.loadAnns(ref["ann_id"])[0]
        img = coco.loadImgs(ref["image_id"])[0]
        got = source.getMask(ref)
        rles = mask_utils.frPyObjects(ann["segmentation"], img["height"], img["width"])
        summed = np.sum(mask_utils.decode(rles), axis=2).astype(np.uint8)
        assert got["mask"].dtype == np.uint8
        assert np.array_equal(got["mask"], summed)  # REFER: per-polygon masks summed
        assert np.array_equal(got["mask"] > 0, coco.annToMask(ann) > 0)
        assert got["area"] == int(np.sum(mask_utils.area(rles)))
        # ref id, Ref record and ref dict all work
        assert np.array_equal(source.getMask(ref_id)["mask"], got["mask"])
        assert np.array_equal(source.getMask(source.ref(ref_id))["mask"], got["mask"])


def test_get_ref_ids_split_semantics(source) -> None:
    assert source.getRefIds() == list(range(10))
    assert source.getRefIds(split="train") == [0, 1, 7, 9]
    assert source.getRefIds(split="val") == [4, 8]
    assert source.getRefIds(split="testA") == [2, 3]
    assert source.getRefIds(split="testB") == [5, 6]
    assert source.getRefIds(split="test") == [2, 3, 5, 6]
    assert source.getRefIds(split="testC") == []
    with pytest.raises(ValueError, match="no such split 'bogus'.*train.*testB"):
        source.getRefIds(split="bogus")


def test_get_ref_ids_filters(source) -> None:
    assert source.getRefIds(image_ids=[40083]) == [1, 2, 3]
    assert source.getRefIds(image_ids=[39769, 785]) == [4, 5, 6, 7, 8, 9, 0]  # image by image
    assert source.getRefIds(image_ids=np.int64(785)) == [0]
    assert source.getRefIds(image_ids=[40083], split="testA") == [2, 3]
    assert source.getRefIds(cat_ids=1) == [0, 1, 2, 3]
    assert source.getRefIds(cat_ids=[17, 75], split="val") == [4, 8]
    assert source.getRefIds(ref_ids=[9, 0, 5], split="train") == [0, 9]
    assert source.getRefIds(image_ids=[123456]) == []


def test_get_ann_img_cat_ids(source, real) -> None:
    all_ann_ids = [a.ann_id for a in real["anns"]]
    assert source.getAnnIds() == all_ann_ids
    assert source.getAnnIds(image_ids=785) == [442619]
    assert source.getAnnIds(image_ids=[39769], cat_ids=[17]) == [2190839, 2190842]
    assert source.getAnnIds(ref_ids=[1, 6]) == [198196, 1605237]  # REFER computes then ignores this filter
    assert source.getAnnIds(image_ids=[40083], ref_ids=[1, 6]) == [198196]
    assert source.getImgIds() == [785, 40083, 39769]
    assert source.getImgIds([0, 1, 2]) == [785, 40083]
    assert source.getImgIds(np.int32(4)) == [39769]
    assert source.getCatIds() == [1, 17, 63, 65, 75]


def test_load_methods_accept_any_integer_and_sequences(source) -> None:
    ref = source.loadRefs(3)[0]
    assert source.loadRefs(np.int64(3)) == [ref]  # REFER returns None here
    assert source.loadRefs([np.int64(3), 0]) == [ref, source.Refs[0]]
    assert source.loadRefs((3,)) == [ref]
    assert source.loadRefs(np.array([3, 0])) == [ref, source.Refs[0]]
    assert source.loadAnns(np.uint32(442619))[0]["image_id"] == 785
    assert source.loadImgs(ref["image_id"])[0]["file_name"] == "000000040083.jpg"
    assert source.loadCats([1, np.int16(17)]) == ["person", "cat"]
    assert source.getRefBox(np.int64(3)) == source.Anns[1202706]["bbox"]
    assert source.getRefBox(ref) == source.Anns[1202706]["bbox"]
    with pytest.raises(TypeError, match="one integer id"):
        source.getMask("3")
    with pytest.raises(KeyError, match="unknown ann"):
        source.loadAnns(5)
    with pytest.raises(TypeError):
        source.loadRefs("3")


# --- real REFER records ----------------------------------------------------------------------------


def _example_instances(image_ids_and_anns: list[tuple[int, int, int]]) -> dict[str, Any]:
    """Synthetic instances.json entries (made up here) for the ann/image ids of real REFER records."""
    images, anns = [], []
    for image_id, ann_id, cat in image_ids_and_anns:
        images.append({"file_name": f"COCO_train2014_{image_id:012d}.jpg", "height": 480, "width": 640, "id": image_id})
        anns.append(
            {
                "segmentation": [[10.0, 10.0, 100.0, 10.0, 100.0, 200.0, 10.0, 200.0]],
                "area": 17100.0,
                "iscrowd": 0,
                "image_id": image_id,
                "bbox": [10.0, 10.0, 90.0, 190.0],
                "category_id": cat,
                "id": ann_id,
            }
        )
    cats = [{"supercategory": c.supercategory, "id": c.id, "name": c.name} for c in COCO_CATEGORIES]
    return {"info": {}, "images": images, "licenses": [], "annotations": anns, "categories": cats}


def test_real_refer_records_load_and_rewrite_identically(refer_examples_path: Path, tmp_path: Path) -> None:
    examples = json.loads(refer_examples_path.read_text())
    raw_refs = examples["refcoco_unc_refs"]
    root = tmp_path / "src"
    (root / "refcoco").mkdir(parents=True)
    (root / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps(raw_refs, protocol=2))
    instances = _example_instances([(r["image_id"], r["ann_id"], r["category_id"]) for r in raw_refs])
    (root / "refcoco" / "instances.json").write_text(json.dumps(instances))

    src = load_source(root, dataset="refcoco")
    assert src.problems == []
    ref0 = src.ref(0)
    assert (ref0.ann_id, ref0.image_id, ref0.split, ref0.category_id) == (1719310, 581857, "train", 1)
    assert ref0.sentences[0].raw == "THE LADY WITH THE BLUE SHIRT"
    assert ref0.sentences[0].sent == "the lady with the blue shirt"
    assert ref0.sent_ids == (0, 1, 2)
    assert src.getRefIds(split="testA") == [14024]
    assert src.getRefIds(split="testB") == []
    assert src.sentToTokens[39908] == ["top", "left", "corner", "apron", "strings"]
    assert src.getMask(14024)["mask"].sum() == 90 * 190

    out = tmp_path / "out"
    write_source(out, src.refs(), src.images(), src.annotations(), src.categories(), dataset="refcoco")
    with open(out / "refcoco" / "refs(unc).p", "rb") as fh:
        written = pickle.load(fh)
    assert written == raw_refs  # every value of the real records reproduced
    assert list(written[0]) == list(raw_refs[0]) == list(REF_KEYS)  # REFER's printed key order
    assert [list(s) for s in written[0]["sentences"]] == [list(SENTENCE_KEYS)] * 3


def test_refcocog_record_and_json_refs(refer_examples_path: Path, tmp_path: Path) -> None:
    ref = json.loads(refer_examples_path.read_text())["refcocog_google_refs"][0]
    root = tmp_path / "src"
    (root / "refcocog").mkdir(parents=True)
    # the printed record has its own key order; the JSON equivalent of the pickle is accepted
    (root / "refcocog" / "refs(google).json").write_text(json.dumps([ref]))
    (root / "refcocog" / "instances.json").write_text(json.dumps(_example_instances([(388997, 445869, 1)])))
    src = load_source(root, dataset="refcocog", split_by="google")
    assert src.refs_file.name == "refs(google).json"
    assert src.getRefIds(split="val") == [3208]
    assert src.ref(3208).file_name == "COCO_train2014_000000388997_445869.jpg"
    assert src.ref(3208).sentences[1].raw == "A woman with blond hair wearing a blue shirt."


def test_instances_key_order_matches_real_coco(refer_examples_path: Path, tmp_path: Path) -> None:
    ex = json.loads(refer_examples_path.read_text())["refcoco_instances_json_examples"]
    img, ann = ex["images[0]"], ex["annotations[0]"]
    root = tmp_path / "src"
    (root / "refcoco+").mkdir(parents=True)
    (root / "refcoco+" / "refs(unc).p").write_bytes(pickle.dumps([], protocol=2))
    (root / "refcoco+" / "instances.json").write_text(
        json.dumps({"images": [img], "annotations": [ann], "categories": [{"supercategory": "animal", "id": 18, "name": "dog"}]})
    )
    src = load_source(root)
    image = src.image(98304)
    assert (image.width, image.height) == (640, 424) and image.extra["license"] == 1
    out = write_source(tmp_path / "out", [], src.images(), src.annotations(), src.categories())
    written = json.loads((out / "instances.json").read_text())
    assert list(written) == list(ex["top_level_keys"]) == list(INSTANCES_KEYS)
    assert written["images"][0] == img and list(written["images"][0]) == list(img)
    assert written["annotations"][0] == ann and list(written["annotations"][0]) == list(ann)


def test_partial_sentences_are_completed(refer_examples_path: Path, tmp_path: Path) -> None:
    """pyReferDemo prints only sent_id and sent; raw and tokens are derived, the ref's other keys are made up here."""
    partial = json.loads(refer_examples_path.read_text())["refcoco_unc_partial_refs_from_pyReferDemo"][1]
    polygon = partial["ann_segmentation_polygon_printed"]
    raw_ref = {
        "ref_id": partial["ref_id"],
        "ann_id": partial["ann_id"],
        "image_id": 1,
        "split": "val",
        "category_id": 1,
        "sentences": partial["sentences"],
    }
    instances = _example_instances([(1, partial["ann_id"], 1)])
    instances["annotations"][0]["segmentation"] = [polygon]
    root = tmp_path / "src"
    (root / "refcoco").mkdir(parents=True)
    (root / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps([raw_ref], protocol=2))
    (root / "refcoco" / "instances.json").write_text(json.dumps(instances))
    src = load_source(root, dataset="refcoco")
    sent = src.ref(21959).sentences[2]
    assert sent.raw == sent.sent == "mans head center left of blue flag"
    assert sent.tokens == ("mans", "head", "center", "left", "of", "blue", "flag")
    expected = mask_utils.decode(mask_utils.frPyObjects([polygon], 480, 640))[..., 0]
    assert np.array_equal(src.getMask(21959)["mask"], expected)


# --- REFER quirks kept and crash bugs fixed ------------------------------------------------------


def _tiny(tmp_path: Path, segmentation: Any = None, splits: tuple[str, ...] = ("train",), **kw: Any) -> Path:
    seg = segmentation if segmentation is not None else [[0.0, 0.0, 10.0, 0.0, 10.0, 10.0, 0.0, 10.0]]
    image = ImageInfo(1, "COCO_train2014_000000000001.jpg", 20, 20)
    ann = Annotation(5, 1, 1, (0.0, 0.0, 10.0, 10.0), 100.0, 0, seg)
    refs = [
        Ref(i, 5, 1, 1, split, (Sentence(10 + i, "a thing", "a thing", ("a", "thing")),), "x.jpg")
        for i, split in enumerate(splits)
    ]
    root = tmp_path / "tiny"
    write_source(root, refs, [image], [ann], list(COCO_CATEGORIES), **kw)
    return root


def test_overlapping_polygons_sum_to_two_like_refer(tmp_path: Path) -> None:
    seg = [[0.0, 0.0, 10.0, 0.0, 10.0, 10.0, 0.0, 10.0], [5.0, 5.0, 15.0, 5.0, 15.0, 15.0, 5.0, 15.0]]
    src = load_source(_tiny(tmp_path, seg))
    got = src.getMask(0)
    assert got["mask"].max() == 2  # REFER semantics; LAVT keeps only == 1
    assert annotation_mask(seg, 20, 20).max() == 1  # the union helper clips
    assert got["area"] == int(np.sum(got["mask"]))


def test_rle_referred_annotation_gives_a_mask(tmp_path: Path) -> None:
    truth = np.zeros((20, 20), dtype=np.uint8)
    truth[2:9, 3:17] = 1
    rle = mask_utils.encode(np.asfortranarray(truth))
    seg = {"counts": rle["counts"].decode("ascii"), "size": [20, 20]}
    got = load_source(_tiny(tmp_path, seg)).getMask(0)  # REFER raises KeyError: 0 here
    assert np.array_equal(got["mask"], truth)
    assert got["area"] == int(truth.sum())


def test_combined_test_splits_match_like_refer(tmp_path: Path) -> None:
    src = load_source(_tiny(tmp_path, splits=("train", "testAB", "testA", "val", "testB")))
    assert src.getRefIds(split="testA") == [1, 2]
    assert src.getRefIds(split="testB") == [1, 4]
    assert src.getRefIds(split="testAB") == [1]
    assert src.getRefIds(split="test") == [1, 2, 4]
    assert src.getRefIds(split="train") == [0]
    assert set(KNOWN_SPLITS) >= {"train", "val", "test", "testA", "testB"}


def test_dangling_refs_are_problems_not_crashes(tmp_path: Path) -> None:
    image = ImageInfo(1, "a.jpg", 20, 20)
    ann = Annotation(5, 1, 1, (0.0, 0.0, 10.0, 10.0), 100.0, 0, [[0.0, 0.0, 10.0, 0.0, 10.0, 10.0]])
    sent = (Sentence(1, "x", "x", ("x",)),)
    refs = [
        Ref(0, 5, 1, 1, "train", sent, "f.jpg"),
        Ref(1, 77, 1, 1, "train", (Sentence(2, "y", "y", ("y",)),), "f.jpg"),
        Ref(2, 5, 99, 1, "val", (Sentence(3, "z", "z", ("z",)),), "f.jpg"),
    ]
    with pytest.raises(ValueError, match="ref 1: annotation 77"):
        write_source(tmp_path / "strict", refs, [image], [ann], list(COCO_CATEGORIES))
    write_source(tmp_path / "s", refs, [image], [ann], list(COCO_CATEGORIES), strict=False)
    src = load_source(tmp_path / "s")
    kinds = {(p.kind, p.id) for p in src.problems}
    assert ("missing_annotation", 1) in kinds
    assert ("missing_image", 2) in kinds
    assert ("annotation_image_mismatch", 2) in kinds
    assert all(p.file.endswith("refs(unc).p") for p in src.problems)
    assert 1 not in src.refToAnn and 1 in src.Refs
    assert src.annToRef[5]["ref_id"] == 2  # last ref to an annotation wins, as in REFER
    with pytest.raises(KeyError, match="annotation 77"):
        src.getMask(1)
    assert len(src.refs()) == 3


def _kinds(problems: Any) -> set[tuple[str, Any]]:
    return {(p.kind, p.id) for p in problems}


def test_duplicate_ids_are_reported(tmp_path: Path) -> None:
    root = _tiny(tmp_path)
    refs_file = root / "refcoco+" / "refs(unc).p"
    refs = pickle.loads(refs_file.read_bytes())
    dup = copy.deepcopy(refs[0])
    dup["sentences"][0]["raw"] = "changed"
    refs_file.write_bytes(pickle.dumps([*refs, dup], protocol=2))
    inst = root / "refcoco+" / "instances.json"
    data = json.loads(inst.read_text())
    data["images"].append(dict(data["images"][0], width=99))
    data["annotations"].append(dict(data["annotations"][0], area=1.0))
    data["categories"].append(data["categories"][0])
    inst.write_text(json.dumps(data))
    src = load_source(root)
    assert _kinds(src.problems) == {
        ("duplicate_ref_id", 0),
        ("duplicate_sent_id", 10),
        ("duplicate_image_id", 1),
        ("duplicate_annotation_id", 5),
        ("duplicate_category_id", 1),
    }
    # later entries win, as in REFER
    assert src.Refs[0]["sentences"][0]["raw"] == "changed"
    assert src.image(1).width == 99 and src.Anns[5]["area"] == 1.0
    assert len(src.imgToAnns[1]) == 2


# --- safe unpickling ---------------------------------------------------------------------------


class _Payload:
    """Pickles to a call of ``func(*args)`` (what an attacker would ship)."""

    def __init__(self, func: Any, *args: Any):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


class _Plain:
    def __init__(self) -> None:
        self.ref_id = 1


def _source_with_refs_bytes(tmp_path: Path, data: bytes) -> Path:
    root = _tiny(tmp_path)
    (root / "refcoco+" / "refs(unc).p").write_bytes(data)
    return root


def _hostile(marker: Path) -> dict[str, bytes]:
    # GLOBAL-free containers that are still not plain data
    proto5_bytearray = b"\x80\x05\x96\x03\x00\x00\x00\x00\x00\x00\x00abc."
    return {
        "os.system": pickle.dumps([_Payload(os.system, f"touch {shlex.quote(str(marker))}")], protocol=2),
        "builtins.open": pickle.dumps(_Payload(open, str(marker), "w"), protocol=0),
        "class instance": pickle.dumps([_Plain()], protocol=2),
        "set via builtins global": pickle.dumps([{1, 2}], protocol=2),
        "numpy array": pickle.dumps([np.arange(3)], protocol=2),
        "set opcode": pickle.dumps([{1, 2}], protocol=4),
        "frozenset opcode": pickle.dumps([frozenset({1})], protocol=4),
        "bytes": pickle.dumps([b"raw bytes"], protocol=3),
        "bytearray": proto5_bytearray,
        "persistent id": b"\x80\x02X\x01\x00\x00\x00aQ.",
    }


@pytest.mark.parametrize(
    "name",
    [
        "os.system",
        "builtins.open",
        "class instance",
        "set via builtins global",
        "numpy array",
        "set opcode",
        "frozenset opcode",
        "bytes",
        "bytearray",
        "persistent id",
    ],
)
def test_hostile_pickles_are_refused_without_running(tmp_path: Path, name: str) -> None:
    marker = tmp_path / "pwned"
    root = _source_with_refs_bytes(tmp_path, _hostile(marker)[name])
    with pytest.raises(UnsafePickleError, match=r"refs\(unc\)\.p: refused") as info:
        load_source(root)
    assert str(root / "refcoco+" / "refs(unc).p") in str(info.value)
    assert not marker.exists()


def test_extension_registry_opcode_is_refused(tmp_path: Path) -> None:
    import copyreg

    marker = tmp_path / "pwned"
    code = 0x7FFF0001
    copyreg.add_extension("posix", "system", code)
    try:
        cmd = f"touch {shlex.quote(str(marker))}".encode()
        data = b"\x80\x02\x84" + struct.pack("<i", code) + b"X" + struct.pack("<I", len(cmd)) + cmd + b"\x85R."
        with pytest.raises(UnsafePickleError, match="posix.system"):
            load_plain_pickle(_source_with_refs_bytes(tmp_path, data) / "refcoco+" / "refs(unc).p")
    finally:
        copyreg.remove_extension("posix", "system", code)
    assert not marker.exists()


def test_broken_pickles_are_source_errors(tmp_path: Path) -> None:
    good = pickle.dumps([{"ref_id": 1}], protocol=2)
    root = _source_with_refs_bytes(tmp_path, good[: len(good) // 2])
    with pytest.raises(SourceError, match=r"refs\(unc\)\.p: not a readable pickle") as info:
        load_source(root)
    assert not isinstance(info.value, UnsafePickleError)
    (root / "refcoco+" / "refs(unc).p").write_bytes(pickle.dumps({"refs": []}, protocol=2))
    with pytest.raises(SourceError, match="expected a list of refs"):
        load_source(root)


def test_self_referencing_pickle_is_an_error_not_a_hang(tmp_path: Path) -> None:
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    shared = {"tokens": ["a"]}
    path = tmp_path / "cyclic.p"
    path.write_bytes(pickle.dumps([cyclic, shared, shared], protocol=2))
    loaded = load_plain_pickle(path)  # plain data, shared and cyclic containers included
    assert loaded[0][0] is loaded[0] and loaded[1] is loaded[2]
    root = _source_with_refs_bytes(tmp_path, pickle.dumps(cyclic, protocol=2))
    with pytest.raises(SourceError, match=r"refused: a value contains itself; nothing from it was used"):
        load_source(root)


def _py2(obj: Any) -> bytes:
    """Protocol-2 opcodes as Python 2's cPickle writes them: byte strings as SHORT_BINSTRING."""
    out = bytearray()
    if isinstance(obj, dict):
        out += b"}(" + b"".join(_py2(k) + _py2(v) for k, v in obj.items()) + b"u"
    elif isinstance(obj, list):
        out += b"](" + b"".join(_py2(v) for v in obj) + b"e"
    elif isinstance(obj, bytes):  # a Python 2 str
        out += b"U" + bytes([len(obj)]) + obj
    elif isinstance(obj, str):  # a Python 2 unicode
        data = obj.encode("utf-8")
        out += b"X" + struct.pack("<I", len(data)) + data
    elif isinstance(obj, int):
        out += b"J" + struct.pack("<i", obj)
    else:
        raise TypeError(obj)
    return bytes(out)


def test_python2_style_pickles_load(tmp_path: Path) -> None:
    root = _tiny(tmp_path)
    sentences = [
        {b"tokens": [b"caf\xc3\xa9", b"chair"], b"raw": b"Caf\xc3\xa9 chair", b"sent_id": 10, b"sent": b"caf\xc3\xa9 chair"},
        {b"tokens": ["na\u00efve"], b"raw": "Na\u00efve!", b"sent_id": 11, b"sent": "na\u00efve"},
    ]
    ref = {
        b"sent_ids": [10, 11],
        b"file_name": b"COCO_train2014_000000000001_5.jpg",
        b"ann_id": 5,
        b"ref_id": 0,
        b"image_id": 1,
        b"split": b"train",
        b"sentences": sentences,
        b"category_id": 1,
    }
    (root / "refcoco+" / "refs(unc).p").write_bytes(b"\x80\x02" + _py2([ref]) + b".")
    src = load_source(root)
    assert src.problems == []
    assert [s.raw for s in src.ref(0).sentences] == ["Caf\u00e9 chair", "Na\u00efve!"]
    assert src.ref(0).sentences[0].tokens == ("caf\u00e9", "chair")

    # Python 2 byte strings that are not UTF-8 fall back to Latin-1
    latin = root / "latin.p"
    latin.write_bytes(b"\x80\x02" + _py2([{b"raw": b"caf\xe9"}]) + b".")
    assert load_plain_pickle(latin) == [{"raw": "caf\u00e9"}]

    # protocol 0 text opcodes (Python 2's default) with an S'...' byte string
    text = root / "p0.p"
    text.write_bytes(b"(lp0\n(dp1\nS'split'\np2\nS'testB'\np3\nsI7\nI42\nsa.")
    assert load_plain_pickle(text) == [{"split": "testB", 7: 42}]


# --- JSON refs and unusable sources --------------------------------------------------------------


def test_json_refs_equivalent_round_trip(real: dict[str, Any], tmp_path: Path) -> None:
    out = write_source(tmp_path, real["refs"], real["images"], real["anns"], real["cats"], refs_format="json")
    assert (out / "refs(unc).json").is_file() and not (out / "refs(unc).p").exists()
    src = load_source(tmp_path)
    assert [replace(r, file_name="") for r in src.refs()] == real["refs"]
    write_source(tmp_path, real["refs"], real["images"], real["anns"], real["cats"])
    assert (out / "refs(unc).p").is_file() and not (out / "refs(unc).json").exists()  # no stale twin


def test_unusable_sources_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such source directory"):
        load_source(tmp_path / "absent")
    root = _tiny(tmp_path)
    with pytest.raises(SourceError, match=r"refs\(umd\)\.p: refs file not found"):
        load_source(root, split_by="umd")
    inst = root / "refcoco+" / "instances.json"
    good = inst.read_text()
    inst.write_text(good[:-20])
    with pytest.raises(SourceError, match=r"instances\.json: malformed JSON at line 1"):
        load_source(root)
    inst.write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(SourceError, match="instances.json: missing or non-list 'categories'"):
        load_source(root)
    inst.unlink()
    with pytest.raises(SourceError, match="instances file not found"):
        load_source(root)

    root = _tiny(tmp_path / "json", refs_format="json")
    (root / "refcoco+" / "refs(unc).json").write_text("[{")
    with pytest.raises(SourceError, match=r"refs\(unc\)\.json: malformed JSON"):
        load_source(root)


def test_bad_records_name_file_and_record(tmp_path: Path) -> None:
    root = _tiny(tmp_path)
    refs_file = root / "refcoco+" / "refs(unc).p"
    refs = pickle.loads(refs_file.read_bytes())
    del refs[0]["sentences"]
    refs_file.write_bytes(pickle.dumps(refs, protocol=2))
    with pytest.raises(SourceError, match=r"refs\(unc\)\.p: ref #0 \(ref_id 0\): 'sentences' must be a list"):
        load_source(root)

    refs[0]["sentences"] = [{"sent": "x"}]
    refs_file.write_bytes(pickle.dumps(refs, protocol=2))
    with pytest.raises(SourceError, match="sentence #0: missing key 'sent_id'"):
        load_source(root)

    _tiny(tmp_path)
    inst = root / "refcoco+" / "instances.json"
    data = json.loads(inst.read_text())
    data["annotations"][0]["bbox"] = ["a", 0, 1, 1]
    inst.write_text(json.dumps(data))
    with pytest.raises(SourceError, match=r"instances\.json: annotations\[0\] \(id 5\): bad 'bbox'"):
        load_source(root)


# --- writer ------------------------------------------------------------------------------------


def _plain_tree(obj: Any) -> bool:
    if type(obj) is dict:
        return all(type(k) is str and _plain_tree(v) for k, v in obj.items())
    if type(obj) is list:
        return all(_plain_tree(v) for v in obj)
    return type(obj) in (str, int, float)


def test_writer_emits_refer_pickle(real: dict[str, Any], tmp_path: Path) -> None:
    refs = [Ref(np.int64(r.ref_id), np.int32(r.ann_id), r.image_id, np.int64(r.category_id), r.split, r.sentences) for r in real["refs"]]
    out = write_source(tmp_path, refs, real["images"], real["anns"], real["cats"])
    data = (out / "refs(unc).p").read_bytes()
    assert data[:2] == b"\x80\x02"
    assert max(op.proto for op, _, _ in pickletools.genops(data)) <= 2
    loaded = pickle.loads(data)
    assert _plain_tree(loaded)
    assert all(list(r) == list(REF_KEYS) for r in loaded)
    assert all(list(s) == list(SENTENCE_KEYS) for r in loaded for s in r["sentences"])
    assert all(r["sent_ids"] == [s["sent_id"] for s in r["sentences"]] for r in loaded)
    # empty file_name → <image stem>_<ann_id>.jpg (RefCOCOg convention)
    assert loaded[4]["file_name"] == "000000039769_1108446.jpg"
    instances = json.loads((out / "instances.json").read_text())
    assert list(instances) == list(INSTANCES_KEYS)
    assert instances["images"][0]["coco_url"].endswith("000000000785.jpg")


def test_writer_refuses_bad_records(tmp_path: Path) -> None:
    image = ImageInfo(1, "a.jpg", 20, 20)
    ann = Annotation(5, 1, 1, (0.0, 0.0, 10.0, 10.0), 100.0, 0, [[0.0, 0.0, 10.0, 0.0, 10.0, 10.0]])
    ref = Ref(0, 5, 1, 1, "train", (Sentence(1, "x", "x", ("x",)),))
    cats = list(COCO_CATEGORIES)
    with pytest.raises(ValueError, match="duplicate ref id 0"):
        write_source(tmp_path, [ref, ref], [image], [ann], cats)
    with pytest.raises(ValueError, match="duplicate sent id 1"):
        write_source(tmp_path, [ref, Ref(1, 5, 1, 1, "train", ref.sentences)], [image], [ann], cats)
    with pytest.raises(ValueError, match="duplicate image id 1"):
        write_source(tmp_path, [ref], [image, image], [ann], cats)
    bad_ann = Annotation(5, 1, 1, (0.0, 0.0, float("nan"), 10.0), 100.0, 0, [[0.0, 0.0, 10.0, 0.0, 10.0, 10.0]])
    with pytest.raises(ValueError, match="annotation 5: non-finite"):
        write_source(tmp_path, [ref], [image], [bad_ann], cats)
    with pytest.raises(ValueError, match="refs_format"):
        write_source(tmp_path, [ref], [image], [ann], cats, refs_format="yaml")
    assert not (tmp_path / "refcoco+" / "refs(unc).p").exists()  # nothing half-written
    assert not (tmp_path / "refcoco+" / "instances.json").exists()
    assert list((tmp_path / "refcoco+").iterdir()) == []  # no temporary file left either


def test_streamed_instances_are_the_one_shot_dump(tmp_path: Path) -> None:
    """instances.json is written one annotation at a time; its bytes are those of dumping it whole."""
    images = [ImageInfo(i, f"{i}.jpg", 20, 20) for i in (1, 2)]
    anns = [Annotation(a, 1 + a % 2, 1, (0.0, 0.0, 10.0, 10.0), 100.0, 0, [[0.0, 0.0, 10.5, 0.0, 10.0, 9.25]])
            for a in (3, 4, 5)]
    ref = Ref(0, 3, 2, 1, "train", (Sentence(1, "Mann im weißen Hemd", "mann im weißen hemd", ("mann",)),))
    out = write_source(tmp_path, [ref], images, anns, list(COCO_CATEGORIES), info={"description": "süß"},
                       ann_extras={4: {"comcoco": {"role": "target", "effect_area": 7}}})
    data = (out / "instances.json").read_bytes()
    whole = json.loads(data)
    assert [a["id"] for a in whole["annotations"]] == [3, 4, 5] and whole["annotations"][1]["comcoco"]["effect_area"] == 7
    assert data == (json.dumps(whole, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
    empty = write_source(tmp_path / "e", [], images, [], list(COCO_CATEGORIES), strict=False)
    assert json.loads((empty / "instances.json").read_bytes())["annotations"] == []


_floats = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
_json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**40), 2**40), _floats, st.text(max_size=8))


@st.composite
def _sources(draw: Any) -> tuple[list[Ref], list[ImageInfo], list[Annotation], list[Category]]:
    image_ids = draw(st.lists(st.integers(0, 2**40), min_size=1, max_size=4, unique=True))
    images = [
        ImageInfo(
            iid,
            draw(st.text(min_size=1, max_size=12)),
            draw(st.integers(1, 5000)),
            draw(st.integers(1, 5000)),
            extra=draw(st.dictionaries(st.sampled_from(["license", "coco_url", "flickr_url", "note", "zz"]), _json_leaf, max_size=3)),
        )
        for iid in image_ids
    ]
    cats = list(draw(st.lists(st.sampled_from(COCO_CATEGORIES), unique=True, min_size=1, max_size=5)))
    ann_ids = draw(st.lists(st.integers(0, 2**40), min_size=1, max_size=6, unique=True))
    anns = []
    for aid in ann_ids:
        seg = draw(
            st.one_of(
                st.lists(st.lists(_floats, min_size=6, max_size=12), max_size=3),
                st.builds(lambda c, h, w: {"counts": c, "size": [h, w]}, st.text("0123456789:;<=>?@ABC", max_size=10), st.integers(1, 99), st.integers(1, 99)),
            )
        )
        bbox = tuple(draw(st.lists(_floats, min_size=4, max_size=4)))
        category = draw(st.sampled_from(cats)).id
        anns.append(Annotation(aid, draw(st.sampled_from(image_ids)), category, bbox, draw(_floats), draw(st.integers(0, 1)), seg))
    refs = []
    sent_id = draw(st.integers(0, 1000))
    for rid in draw(st.lists(st.integers(0, 2**40), max_size=6, unique=True)):
        ann = draw(st.sampled_from(anns))
        sentences = []
        for raw in draw(st.lists(st.text(max_size=20), max_size=3)):
            sent, tokens = normalize_sentence(raw)
            sentences.append(Sentence(sent_id, raw, sent, tokens))
            sent_id += 1
        split = draw(st.sampled_from(["train", "val", "testA", "testB", "test"]))
        refs.append(Ref(rid, ann.ann_id, ann.image_id, ann.category_id, split, tuple(sentences), draw(st.text(min_size=1, max_size=10))))
    return refs, images, anns, cats


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_sources(), st.sampled_from(["pickle", "json"]))
def test_writer_round_trip_is_exact(src: tuple, refs_format: str) -> None:
    refs, images, anns, cats = src
    with tempfile.TemporaryDirectory() as tmp:
        a, b = Path(tmp) / "a", Path(tmp) / "b"
        info, licenses = {"version": "1.0"}, [{"id": 1, "name": "x"}]
        out_a = write_source(a, refs, images, anns, cats, info=info, licenses=licenses, refs_format=refs_format)
        loaded = load_source(a)
        assert loaded.problems == []
        assert loaded.refs() == refs
        assert loaded.images() == images
        assert [i.extra for i in loaded.images()] == [i.extra for i in images]
        assert loaded.annotations() == anns
        assert loaded.categories() == cats
        assert loaded.info == info and loaded.licenses == licenses
        out_b = write_source(
            b, loaded.refs(), loaded.images(), loaded.annotations(), loaded.categories(),
            info=loaded.info, licenses=loaded.licenses, refs_format=refs_format,
        )
        for name in sorted(p.name for p in out_a.iterdir()):
            assert (out_a / name).read_bytes() == (out_b / name).read_bytes(), name


# --- categories and expressions ------------------------------------------------------------------


def test_coco_categories(real: dict[str, Any]) -> None:
    ids = [c.id for c in COCO_CATEGORIES]
    assert len(COCO_CATEGORIES) == 80 and len(set(ids)) == 80
    assert ids == sorted(ids) and ids[0] == 1 and ids[-1] == 90
    assert set(range(1, 91)) - set(ids) == {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}
    by_id = {c.id: c for c in COCO_CATEGORIES}
    for cat in real["cats"]:  # the real COCO categories in the fixture agree exactly
        assert by_id[cat.id] == cat
    assert by_id[2].name == "bicycle" and by_id[90].name == "toothbrush" and by_id[72].name == "tv"
    assert len({c.supercategory for c in COCO_CATEGORIES}) == 12


def test_normalize_sentence(refer_examples_path: Path) -> None:
    examples = json.loads(refer_examples_path.read_text())
    real = [s for r in examples["refcoco_unc_refs"] + examples["refcocog_google_refs"] for s in r["sentences"]]
    checked = 0
    for s in real:
        if s["raw"] == "lady w back to us":  # the original toolkit also expanded this abbreviation
            continue
        assert normalize_sentence(s["raw"]) == (s["sent"], tuple(s["tokens"]))
        checked += 1
    assert checked == 7
    assert normalize_sentence("Man's  red-shirt, (left)") == ("mans red shirt left", ("mans", "red", "shirt", "left"))
    assert normalize_sentence("¡Árbol grande!") == ("árbol grande", ("árbol", "grande"))
    assert normalize_sentence("...") == ("", ())
