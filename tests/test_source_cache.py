"""The source index cache: a cached load gives the records, problems and REFER API of a fresh one.

Sources here are written with write_source (real COCO fixture geometry, RLE and integer polygons,
dangling refs) and loaded with an explicit cache directory, so every one of them is cached.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from comcoco.records import Annotation, Category, ImageInfo, Ref, Sentence
from comcoco.sources import index_cache
from comcoco.sources.format import COCO_CATEGORIES, SourceError
from comcoco.sources.index_cache import SUFFIX
from comcoco.sources.reader import load_source
from comcoco.sources.writer import write_source


def _records(coco_real_dir: Path) -> tuple[list[Ref], list[ImageInfo], list[Annotation]]:
    data = json.loads((coco_real_dir / "instances_val2017_subset.json").read_text())
    images = [ImageInfo(i["id"], i["file_name"], i["width"], i["height"],
                        {k: v for k, v in i.items() if k not in ("id", "file_name", "width", "height")})
              for i in data["images"]]  # fmt: skip
    anns = [Annotation(a["id"], a["image_id"], a["category_id"], tuple(a["bbox"]), a["area"], a["iscrowd"],
                       a["segmentation"]) for a in data["annotations"]]  # fmt: skip
    refs = [
        Ref(i, a.ann_id, a.image_id, a.category_id, ("train", "val", "testA")[i % 3],
            (Sentence(10 * i, "The thing!", "the thing", ("the", "thing")), Sentence(10 * i + 1, "it", "it", ("it",))))
        for i, a in enumerate(anns)
    ]  # fmt: skip
    return refs, images, anns


@pytest.fixture()
def awkward(coco_real_dir: Path, tmp_path: Path) -> Path:
    """Real geometry plus what the columnar layout must not flatten: RLE, integer and empty polygons,
    huge numbers in extra keys, a dangling ref and a non-ASCII expression."""
    refs, images, anns = _records(coco_real_dir)
    anns += [
        Annotation(900001, images[0].image_id, 1, (1.0, 2.0, 3.0, 4.0), 12.0, 1, {"counts": [5, 10, 5], "size": [2, 10]}),
        Annotation(900002, images[0].image_id, 1, (1.0, 2.0, 3.0, 4.0), 12.0, 0, [[1, 2, 30, 2, 30, 40]]),
        Annotation(900003, images[0].image_id, 1, (1.0, 2.0, 3.0, 4.0), 12.0, 0, [[1.5, 2.0, 30.0, 2.0, 30.0, 40.0], []]),
        Annotation(900004, images[0].image_id, 1, (-0.0, 2.0, 3.0, 4.0), 12.0, 0, []),
    ]  # fmt: skip
    images[1] = ImageInfo(images[1].image_id, images[1].file_name, images[1].width, images[1].height,
                          dict(images[1].extra, note=[1.5, 2**70, "caf\u00e9"]))  # fmt: skip
    refs.append(Ref(500, 123456789, images[0].image_id, 1, "val", (Sentence(9999, "Caf\u00e9 au lait", "café au lait", ("café", "au", "lait")),)))
    root = tmp_path / "src"
    write_source(root, refs, images, anns, COCO_CATEGORIES, info={"version": "x", "weird": [None, True, 1e300]},
                 licenses=[{"id": 1, "name": "CC"}], strict=False)  # fmt: skip
    instances = root / "refcoco+" / "instances.json"
    data = json.loads(instances.read_text())
    for ann in data["annotations"]:
        if ann["id"] == 900002:  # integer coordinates, as some COCO tools write them
            ann["segmentation"] = [[1, 2, 30, 2, 30, 40]]
    instances.write_text(json.dumps(data))
    return root


def _same(cold: Any, warm: Any) -> None:
    assert warm.refs() == cold.refs() and repr(warm.refs()) == repr(cold.refs())
    assert warm.annotations() == cold.annotations() and repr(warm.annotations()) == repr(cold.annotations())
    assert warm.images() == cold.images() and [i.extra for i in warm.images()] == [i.extra for i in cold.images()]
    assert warm.categories() == cold.categories()
    assert warm.problems == cold.problems
    assert (warm.info, warm.licenses) == (cold.info, cold.licenses)
    assert (warm.DATA_DIR, warm.IMAGE_DIR, warm.refs_file, warm.instances_file) == (
        cold.DATA_DIR, cold.IMAGE_DIR, cold.refs_file, cold.instances_file)  # fmt: skip


def test_a_cached_load_gives_what_a_fresh_load_gives(awkward: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cold = load_source(awkward, cache_dir=cache)
    files = list(cache.glob(f"*{SUFFIX}"))
    assert len(files) == 1
    assert "missing_annotation" in {p.kind for p in cold.problems}
    warm = load_source(awkward, cache_dir=cache)
    assert "data" not in warm.__dict__  # built from the cache: the raw files are not read yet
    _same(cold, warm)
    seg = warm.annotation(900002).segmentation
    assert seg == [[1, 2, 30, 2, 30, 40]] and type(seg[0][0]) is int
    assert str(warm.annotation(900004).bbox[0]) == "-0.0"
    # The REFER API reads the raw files on first use and answers as the fresh source does.
    assert warm.Refs == cold.Refs and warm.Anns == cold.Anns and warm.Imgs == cold.Imgs
    assert warm.sentToTokens == cold.sentToTokens and warm.refToAnn == cold.refToAnn
    assert warm.data == cold.data
    assert warm.getRefIds(split="testA") == cold.getRefIds(split="testA")
    ref = cold.refs()[0]
    assert np.array_equal(warm.getMask(ref.ref_id)["mask"], cold.getMask(ref.ref_id)["mask"])


def test_a_fresh_load_of_a_json_refs_source_is_cached_too(coco_real_dir: Path, tmp_path: Path) -> None:
    refs, images, anns = _records(coco_real_dir)
    root = tmp_path / "src"
    write_source(root, refs, images, anns, COCO_CATEGORIES, refs_format="json")
    cold = load_source(root, cache_dir=tmp_path / "c")
    _same(cold, load_source(root, cache_dir=tmp_path / "c"))


def test_a_changed_source_is_loaded_again_and_cached_under_its_new_fingerprint(awkward: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    load_source(awkward, cache_dir=cache)
    refs_file = awkward / "refcoco+" / "refs(unc).p"
    refs = pickle.loads(refs_file.read_bytes())
    refs[0]["sentences"][0]["raw"] = "Something else"
    refs_file.write_bytes(pickle.dumps(refs, protocol=2))
    fresh = load_source(awkward, cache_dir=tmp_path / "other")
    again = load_source(awkward, cache_dir=cache)
    assert again.refs()[0].sentences[0].raw == "Something else"
    _same(fresh, again)
    assert len(list(cache.glob(f"*{SUFFIX}"))) == 2


def test_raw_files_changed_after_a_cached_load_are_refused_not_mixed(awkward: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    load_source(awkward, cache_dir=cache)
    warm = load_source(awkward, cache_dir=cache)
    instances = awkward / "refcoco+" / "instances.json"
    instances.write_text(instances.read_text().replace('"CC"', '"CC0"'))
    with pytest.raises(SourceError, match="changed after it was loaded"):
        warm.getAnnIds()


def _corruptions(blob: bytes) -> dict[str, bytes]:
    header_len = int.from_bytes(blob[len(index_cache.MAGIC):len(index_cache.MAGIC) + 8], "little")
    payload_at = len(index_cache.MAGIC) + 8 + header_len
    header = json.loads(blob[len(index_cache.MAGIC) + 8:payload_at])
    forged = dict(header, counts={"annotations": header["counts"]["annotations"] + 1, "refs": header["counts"]["refs"]})
    forged_bytes = json.dumps(forged).encode()
    return {
        "truncated": blob[: len(blob) // 2],
        "flipped payload byte": blob[:-10] + bytes([blob[-10] ^ 1]) + blob[-9:],
        "other format": blob.replace(b'"format":1', b'"format":9', 1),
        "bad magic": b"x" + blob[1:],
        "empty": b"",
        # A header that keeps the checksum but claims another count: caught by the consistency checks.
        "forged counts": index_cache.MAGIC + len(forged_bytes).to_bytes(8, "little") + forged_bytes + blob[payload_at:],
    }


@pytest.mark.parametrize("damage", ["truncated", "flipped payload byte", "other format", "bad magic", "empty", "forged counts"])
def test_a_damaged_cache_file_is_ignored_and_replaced(awkward: Path, tmp_path: Path, damage: str) -> None:
    cache = tmp_path / "cache"
    cold = load_source(awkward, cache_dir=cache)
    (path,) = cache.glob(f"*{SUFFIX}")
    good = path.read_bytes()
    path.write_bytes(_corruptions(good)[damage])
    again = load_source(awkward, cache_dir=cache)
    _same(cold, again)
    assert "data" in again.__dict__  # loaded from the files, not from the damaged cache
    assert path.read_bytes() == good  # and the cache was written anew


def test_values_the_layout_cannot_keep_leave_the_source_uncached(tmp_path: Path) -> None:
    sents = (Sentence(0, "a", "a", ("a",)),)
    root = tmp_path / "src"
    write_source(root, [Ref(0, 2**70, 1, 1, "train", sents)], [ImageInfo(1, "a.jpg", 8, 8)],
                 [Annotation(2**70, 1, 1, (0.0, 0.0, 1.0, 1.0), 1.0, 0, [[0.0, 0.0, 1.0, 0.0, 1.0, 1.0]])],
                 [Category(1, "person", "person")])  # fmt: skip
    source = load_source(root, cache_dir=tmp_path / "cache")
    assert source.annotations()[0].ann_id == 2**70
    assert not list((tmp_path / "cache").glob(f"*{SUFFIX}"))


def test_where_the_cache_lives(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("COMCOCO_SOURCE_CACHE", "off")
    assert index_cache.cache_location(None) == (None, False)
    assert index_cache.cache_location(tmp_path) == (tmp_path, True)
    monkeypatch.setenv("COMCOCO_SOURCE_CACHE", str(tmp_path / "c"))
    assert index_cache.cache_location(None) == (tmp_path / "c", False)
    monkeypatch.delenv("COMCOCO_SOURCE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert index_cache.cache_location(None) == (tmp_path / "xdg" / "comcoco" / "source-index", False)


def test_small_sources_are_cached_only_when_asked(awkward: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMCOCO_SOURCE_CACHE", str(tmp_path / "implicit"))
    load_source(awkward)
    assert not (tmp_path / "implicit").exists()  # below MIN_SOURCE_BYTES: not worth a cache file
    monkeypatch.setattr("comcoco.sources.reader.MIN_SOURCE_BYTES", 1)
    load_source(awkward)
    assert len(list((tmp_path / "implicit").glob(f"*{SUFFIX}"))) == 1


def test_only_the_newest_cache_files_are_kept(awkward: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    instances = awkward / "refcoco+" / "instances.json"
    data = json.loads(instances.read_text())
    for k in range(index_cache.KEEP + 2):
        data["info"]["version"] = str(k)
        instances.write_text(json.dumps(data))
        load_source(awkward, cache_dir=cache)
    assert len(list(cache.glob(f"*{SUFFIX}"))) == index_cache.KEEP
    assert load_source(awkward, cache_dir=cache).info["version"] == str(index_cache.KEEP + 1)


def test_a_cache_file_under_another_sources_name_is_not_used(awkward: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    load_source(awkward, cache_dir=cache)
    (old,) = cache.glob(f"*{SUFFIX}")
    instances = awkward / "refcoco+" / "instances.json"
    data = json.loads(instances.read_text())
    data["annotations"][0]["area"] = 4242.0
    instances.write_text(json.dumps(data))
    fp, _, _ = index_cache.fingerprint(awkward / "refcoco+" / "refs(unc).p", instances)
    old.rename(cache / f"{fp.key()}{SUFFIX}")  # the header still names the old files
    source = load_source(awkward, cache_dir=cache)
    assert source.annotations()[0].area == 4242.0


def test_a_cached_load_shares_equal_coordinates(coco_real_dir: Path, tmp_path: Path) -> None:
    """Equal polygon coordinates of a cached load are one float object (a quarter of the memory); their
    values, and a zero's sign, are the fresh load's."""
    from comcoco.sources.allocation import shared_lists

    refs, images, anns = _records(coco_real_dir)
    write_source(tmp_path / "src", refs, images, anns, COCO_CATEGORIES)
    cold = load_source(tmp_path / "src", cache_dir=tmp_path / "c")
    warm = load_source(tmp_path / "src", cache_dir=tmp_path / "c")
    coords = [v for a in warm.annotations() if isinstance(a.segmentation, list) for p in a.segmentation for v in p]
    assert coords == [v for a in cold.annotations() if isinstance(a.segmentation, list) for p in a.segmentation for v in p]
    floats = [v for v in coords if type(v) is float]
    assert len(floats) > len(set(floats)) and len({id(v) for v in floats}) == len(set(floats))
    values = [0.25, 0.25, -0.0, 0.0, 1 / 3, 1 / 3, 2e9, 2e9]
    odd = shared_lists(np.array(values), [3, 8])
    assert odd == [values[:3], values[3:]] and str(odd[0][2]) == "-0.0"
    assert odd[0][0] is odd[0][1] and odd[1][1] is not odd[1][2] and odd[1][3] is not odd[1][4]  # two decimals: shared
    even = shared_lists(np.array([0.5, 1.25, 0.5, 1.25]), [1, 4])
    assert even == [[0.5], [1.25, 0.5, 1.25]] and even[0][0] is even[1][1] and even[1][0] is even[1][2]
