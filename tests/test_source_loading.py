"""The fast loading paths give what the one-record-at-a-time paths give: records, errors, problems.

Each fast path (bulk records, the level-wise plain-data check, orjson, set-based problem finding)
is compared here with the straightforward function it stands in for, on generated inputs that mix
well-formed entries with every kind of wrong type, missing key, duplicate and dangling id.
"""

from __future__ import annotations

import gc
import json
import math
import pickle
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from comcoco.records import Annotation, Category, ImageInfo, Ref, Sentence
from comcoco.sources.format import SourceError, UnsafePickleError
from comcoco.sources.index import build_index, find_problems
from comcoco.sources.parse import (
    _has_long_digit_run,
    annotation_record,
    annotation_records,
    image_record,
    image_records,
    loads_json,
    prepare_ref_records,
    ref_record,
    ref_records,
)
from comcoco.sources.raw import read_refs
from comcoco.sources.refer import load_plain_pickle, load_source, write_source
from comcoco.sources.safe_pickle import _first_not_plain, all_plain, check_plain

FILE = Path("src/refcoco+/instances.json")

# Values of every type a REFER pickle or a COCO JSON file can hold, right and wrong for each field.
SCALARS = st.one_of(
    st.integers(-3, 3), st.sampled_from([True, False, None, 2.0, 2.5, -0.0, math.inf, 10**20]),
    st.sampled_from(["", "a", "man's hat", "x y"]),
)  # fmt: skip
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner), max_leaves=6)
NUMBER = st.one_of(st.integers(-5, 700), st.floats(-5, 700, allow_nan=False), st.sampled_from([True, "3", None]))


def _outcome(fn: Any, *args: Any) -> tuple[str, str]:
    """A comparable result: the records' repr (types included), or the error message."""
    try:
        return ("ok", repr(fn(*args)))
    except SourceError as exc:
        return ("error", str(exc))


def _one_by_one(record: Any, raws: list[Any], file: Path) -> list[Any]:
    return [record(raw, index, file) for index, raw in enumerate(raws)]


def _maybe(draw: Any, good: Any, key: str, out: dict[str, Any]) -> None:
    """Set ``out[key]`` mostly to a well-formed value, sometimes to anything, rarely not at all."""
    r = draw(st.integers(0, 39))
    if r < 35:
        out[key] = draw(good)
    elif r < 39:
        out[key] = draw(VALUES)


@st.composite
def raw_annotation(draw: Any) -> Any:
    if draw(st.integers(0, 19)) == 0:
        return draw(VALUES)
    out: dict[str, Any] = {}
    _maybe(draw, st.lists(st.lists(NUMBER, max_size=8), max_size=2) | st.just({"counts": "ab", "size": [4, 4]}),
           "segmentation", out)  # fmt: skip
    _maybe(draw, NUMBER, "area", out)
    _maybe(draw, st.sampled_from([0, 1]), "iscrowd", out)
    _maybe(draw, st.integers(1, 4), "image_id", out)
    _maybe(draw, st.lists(NUMBER, min_size=4, max_size=4) | st.tuples(NUMBER, NUMBER, NUMBER, NUMBER), "bbox", out)
    _maybe(draw, st.integers(1, 90), "category_id", out)
    _maybe(draw, st.integers(1, 50), "id", out)
    if draw(st.booleans()):
        out["extra"] = draw(VALUES)
    return out


@st.composite
def raw_image(draw: Any) -> Any:
    out: dict[str, Any] = {}
    _maybe(draw, st.integers(1, 9), "id", out)
    _maybe(draw, st.sampled_from(["a.jpg", "b.jpg"]), "file_name", out)
    _maybe(draw, st.integers(1, 640), "width", out)
    _maybe(draw, st.integers(1, 640), "height", out)
    if draw(st.booleans()):
        out["coco_url"] = draw(VALUES)
    return out


WORDS = st.lists(st.sampled_from(["red", "man", "hat", "left"]), max_size=4)


@st.composite
def raw_sentence(draw: Any) -> Any:
    if draw(st.integers(0, 19)) == 0:
        return draw(VALUES)
    out: dict[str, Any] = {}
    _maybe(draw, WORDS | st.tuples(st.just("a")) | st.lists(SCALARS, max_size=2), "tokens", out)
    _maybe(draw, st.sampled_from(["The red hat!", "man's coat", ""]), "raw", out)
    _maybe(draw, st.integers(0, 30), "sent_id", out)
    _maybe(draw, st.sampled_from(["red hat", "mans coat"]), "sent", out)
    if draw(st.integers(0, 5)) == 0:
        out[draw(st.sampled_from(["note", 7]))] = draw(VALUES)
    return out


@st.composite
def raw_ref(draw: Any) -> Any:
    if draw(st.integers(0, 19)) == 0:
        return draw(VALUES)
    out: dict[str, Any] = {}
    sentences = draw(st.lists(raw_sentence(), max_size=3))
    ids = [s.get("sent_id") if isinstance(s, dict) else None for s in sentences]
    _maybe(draw, st.just(ids) | st.just(list(reversed(ids))) | st.just(tuple(ids)), "sent_ids", out)
    _maybe(draw, st.sampled_from(["a_1.jpg", ""]), "file_name", out)
    _maybe(draw, st.integers(1, 50), "ann_id", out)
    _maybe(draw, st.integers(0, 20), "ref_id", out)
    _maybe(draw, st.integers(1, 4), "image_id", out)
    _maybe(draw, st.sampled_from(["train", "testA"]), "split", out)
    _maybe(draw, st.just(sentences) | st.just(tuple(sentences)), "sentences", out)
    _maybe(draw, st.integers(1, 90), "category_id", out)
    if draw(st.integers(0, 5)) == 0:
        out[draw(st.sampled_from(["comcoco", 3, (1, 2)]))] = draw(VALUES)
    return out


FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(st.lists(raw_annotation(), max_size=6))
def test_bulk_annotations_match_one_at_a_time(raws: list[Any]) -> None:
    for raw in raws:  # each entry alone, so an early error hides no later entry
        assert _outcome(annotation_records, [raw], FILE) == _outcome(_one_by_one, annotation_record, [raw], FILE)
    assert _outcome(annotation_records, raws, FILE) == _outcome(_one_by_one, annotation_record, raws, FILE)


@FAST
@given(st.lists(raw_image(), max_size=6))
def test_bulk_images_match_one_at_a_time(raws: list[Any]) -> None:
    for raw in raws:
        assert _outcome(image_records, [raw], FILE) == _outcome(_one_by_one, image_record, [raw], FILE)
    assert _outcome(image_records, raws, FILE) == _outcome(_one_by_one, image_record, raws, FILE)


@FAST
@given(st.lists(raw_ref(), max_size=6))
def test_prepared_refs_match_one_at_a_time(raws: list[Any]) -> None:
    for raw in raws:
        assert _outcome(ref_records, [raw], FILE) == _outcome(_one_by_one, ref_record, [raw], FILE)
    prepared, loose = prepare_ref_records(raws)
    assert _outcome(ref_records, raws, FILE, prepared) == _outcome(_one_by_one, ref_record, raws, FILE)
    # What the prepared records vouch for is plain, so their refs are plain iff the loose values are.
    vouched = [raw for raw, rec in zip(raws, prepared, strict=True) if rec is not None]
    assert all_plain(vouched) == all_plain(loose)


# Every single-field defect of an otherwise well-formed entry, for each record kind.
WRONG = [True, False, None, "3", 3.0, 3.5, -0.0, [], [1], (1, 2), {}, {"counts": "x", "size": [1, 1]}, ["a", 1]]
GOOD_ANNOTATION = {"segmentation": [[1.0, 2.0, 3.0, 4.0, 5.0, 7.0]], "area": 3.0, "iscrowd": 0, "image_id": 1,
                   "bbox": [1.0, 2, 4.0, 5.0], "category_id": 1, "id": 9}  # fmt: skip
GOOD_IMAGE = {"license": 1, "file_name": "a.jpg", "height": 4, "width": 5, "id": 1}
GOOD_SENTENCE = {"tokens": ["red", "hat"], "raw": "Red hat", "sent_id": 3, "sent": "red hat"}
GOOD_REF = {"sent_ids": [3], "file_name": "a_9.jpg", "ann_id": 9, "ref_id": 0, "image_id": 1, "split": "train",
            "sentences": [GOOD_SENTENCE], "category_id": 1}  # fmt: skip


def _single_defects(good: dict[str, Any]) -> list[Any]:
    out: list[Any] = [dict(good)]
    for key in good:
        out.append({k: v for k, v in good.items() if k != key})
        out += [dict(good, **{key: value}) for value in WRONG]
    return out


@pytest.mark.parametrize(
    ("bulk", "record", "good"),
    [
        (annotation_records, annotation_record, GOOD_ANNOTATION),
        (image_records, image_record, GOOD_IMAGE),
        (ref_records, ref_record, GOOD_REF),
    ],
    ids=["annotation", "image", "ref"],
)
def test_every_single_field_defect_gives_the_one_at_a_time_result(bulk: Any, record: Any, good: dict[str, Any]) -> None:
    cases = _single_defects(good)
    if good is GOOD_REF:  # and every defect of its sentence
        cases += [dict(GOOD_REF, sentences=[s]) for s in _single_defects(GOOD_SENTENCE)]
        cases += [dict(GOOD_REF, sentences=[GOOD_SENTENCE, s], sent_ids=[3, 4]) for s in _single_defects(GOOD_SENTENCE)]
    for raw in cases:
        assert _outcome(bulk, [raw], FILE) == _outcome(_one_by_one, record, [raw], FILE), raw


# --- the plain-data check -------------------------------------------------------------------------

NOT_PLAIN = st.sampled_from([b"x", bytearray(b"y"), frozenset({1}), {2}])
TREE_LEAVES = st.one_of(SCALARS, NOT_PLAIN)
TREES = st.recursive(
    TREE_LEAVES,
    lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner)
    | st.dictionaries(st.sampled_from(["a", "b", 1, (1, 2)]), inner, max_size=3),
    max_leaves=12,
)  # fmt: skip


def _walk_outcome(obj: Any) -> str:
    try:
        _first_not_plain(obj, Path("refs.p"))
    except UnsafePickleError as exc:
        return str(exc)
    return "plain"


def _check_outcome(obj: Any) -> str:
    try:
        check_plain(obj, Path("refs.p"))
    except UnsafePickleError as exc:
        return str(exc)
    return "plain"


@FAST
@given(TREES, st.booleans())
def test_level_wise_check_refuses_exactly_what_the_walk_refuses(tree: Any, cyclic: bool) -> None:
    root: list[Any] = [tree, tree]
    if cyclic:
        root.append(root)
    assert _check_outcome(root) == _walk_outcome(root)
    assert all_plain(root) == (_walk_outcome(root) == "plain")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(raw_ref(), max_size=4), st.lists(TREES, max_size=2), st.integers(0, 11))
def test_refs_pickle_refusals_match_load_plain_pickle(tmp_path: Path, refs: list[Any], bad: list[Any], at: int) -> None:
    """Bad objects hidden in extra keys, sent_ids or sentences are refused as by load_plain_pickle."""
    if refs and bad:
        target = refs[at % len(refs)]
        if isinstance(target, dict):
            where = at % 3
            if where == 0:
                target["hidden"] = bad
            elif where == 1:
                ids = target.get("sent_ids")
                target["sent_ids"] = [*bad, *ids] if isinstance(ids, list | tuple) else [*bad, ids]
            sentences = target.get("sentences")
            if where == 2 and isinstance(sentences, list) and sentences and isinstance(sentences[0], dict):
                sentences[0]["hidden"] = bad[::-1]
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps(refs, protocol=4))
    try:
        expected: Any = ("ok", load_plain_pickle(path))
    except UnsafePickleError as exc:
        expected = ("refused", str(exc))
    try:
        got: Any = ("ok", read_refs(path)[0])
    except UnsafePickleError as exc:
        got = ("refused", str(exc))
    assert got == expected


def _hidden(bad: Any) -> list[list[Any]]:
    """Well-formed REFER refs with ``bad`` tucked where the record fields do not look."""
    sentence = dict(GOOD_SENTENCE)
    return [
        [GOOD_REF, dict(GOOD_REF, ref_id=1, extra=[1, {"deep": bad}])],
        [dict(GOOD_REF, sent_ids=[3, bad])],
        [dict(GOOD_REF, sent_ids=(3,)), dict(GOOD_REF, ref_id=2, sentences=[dict(sentence, note=(bad,))])],
        [{**GOOD_REF, (1, "k"): bad}],
        [dict(GOOD_REF, sentences=[{**sentence, "x": 1, 5: [bad]}])],
    ]


@pytest.mark.parametrize("bad", [b"x", bytearray(b"y"), {1}, frozenset({2}), "plain", [1.5]], ids=repr)
def test_objects_hidden_outside_the_record_fields_are_refused_as_by_load_plain_pickle(tmp_path: Path, bad: Any) -> None:
    for n, refs in enumerate(_hidden(bad)):
        path = tmp_path / f"refs{n}.p"
        path.write_bytes(pickle.dumps(refs, protocol=4))
        try:
            expected: Any = ("ok", load_plain_pickle(path))
        except UnsafePickleError as exc:
            expected = ("refused", str(exc))
        try:
            got: Any = ("ok", read_refs(path)[0])
        except UnsafePickleError as exc:
            got = ("refused", str(exc))
        assert got == expected, (n, refs)
        assert (got[0] == "refused") == (not isinstance(bad, str | list)), n


def test_a_set_hidden_in_an_extra_key_of_a_well_formed_ref_is_refused(tmp_path: Path) -> None:
    sentence = {"tokens": ["red", "hat"], "raw": "Red hat", "sent_id": 0, "sent": "red hat"}
    refs = [
        {"sent_ids": [0], "file_name": "a_1.jpg", "ann_id": 1, "ref_id": 0, "image_id": 1, "split": "train",
         "sentences": [sentence], "category_id": 1, "comcoco": {"ok": [1, 2]}},
        {"sent_ids": [1], "file_name": "a_2.jpg", "ann_id": 2, "ref_id": 1, "image_id": 1, "split": "train",
         "sentences": [dict(sentence, sent_id=1, note={"deep": [frozenset({3})]})], "category_id": 1},
    ]  # fmt: skip
    root = tmp_path / "src"
    (root / "refcoco+").mkdir(parents=True)
    (root / "refcoco+" / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=4))
    (root / "refcoco+" / "instances.json").write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    with pytest.raises(UnsafePickleError, match="holds a frozenset") as info:
        load_source(root)
    with pytest.raises(UnsafePickleError) as reference:
        load_plain_pickle(root / "refcoco+" / "refs(unc).p")
    assert str(info.value) == str(reference.value)


# --- JSON --------------------------------------------------------------------------------------------

TRICKY_JSON = [
    b'{"a": 1, "b": [1.5, -0.0, 5e-324, 1.7976931348623157e308], "a": 2}',
    b"[NaN, Infinity, -Infinity]",
    b"[18446744073709551616, -9223372036854775809, 9223372036854775807]",
    b'["\\ud83d\\ude00", "\\ud83d", "caf\\u00e9", "\xc3\xa9"]',
    b"[1e400, 1E-400]",
    b"\xef\xbb\xbf[1]",
    b"[1,]",
    b'{"a" 1}',
    b"[\"\xff\"]",
    b"\r\n[1,\r\n 2]\r\n",
    b"[" * 3000 + b"]" * 3000,
    b"",
]


def _json_outcome(fn: Any, data: bytes) -> Any:
    try:
        value = fn(data)
    except json.JSONDecodeError as exc:
        return ("json", exc.msg, exc.lineno, exc.colno)
    except UnicodeDecodeError as exc:
        return ("unicode", exc.reason, exc.start)
    except RecursionError:
        return ("recursion",)
    return ("ok", repr(value), json.dumps(value, allow_nan=True) if not isinstance(value, list) or len(value) < 9 else "")


@pytest.mark.parametrize("data", TRICKY_JSON, ids=range(len(TRICKY_JSON)))
def test_loads_json_gives_the_standard_library_result(data: bytes, tmp_path: Path) -> None:
    path = tmp_path / "f.json"
    path.write_bytes(data)

    def stdlib(_: bytes) -> Any:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)

    assert _json_outcome(loads_json, data) == _json_outcome(stdlib, data)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=80), st.integers(0, 40), st.integers(0, 80))
def test_long_digit_runs_are_found_exactly(noise: bytes, run: int, at: int) -> None:
    data = noise[:at] + b"7" * run + noise[at:]
    assert _has_long_digit_run(data) == bool(re.search(rb"[0-9]{19}", data))


def test_long_digit_runs_across_chunk_boundaries() -> None:
    for offset in (0, 7, (1 << 22) - 19, (1 << 22) - 9, (1 << 22) - 1, 1 << 22):
        for run, expected in ((19, True), (18, False)):
            data = b"a" * offset + b"9" * run + b"a" * (offset % 5)
            assert _has_long_digit_run(data) == expected, (offset, run)


# --- problems ----------------------------------------------------------------------------------------


@st.composite
def small_source(draw: Any) -> tuple[list[ImageInfo], list[Annotation], list[Category], list[Ref], list[Any]]:
    """A consistent source (every id unique, every reference resolving), then a few random defects."""
    n = draw(st.integers(1, 5))
    images = [ImageInfo(i, f"{i}.jpg", 64, 48) for i in range(1, n + 1)]
    categories = [Category(c, f"c{c}") for c in (1, 2, 3)]
    anns = [Annotation(10 + i, 1 + i % n, 1 + i % 3, (0.0, 0.0, 1.0, 1.0), 1.0, 0, []) for i in range(2 * n)]
    refs = [
        Ref(i, a.ann_id, a.image_id, a.category_id, "train", (Sentence(2 * i, "a", "a", ("a",)), Sentence(2 * i + 1, "b", "b", ("b",))))
        for i, a in enumerate(anns[: n + 1])
    ]  # fmt: skip
    raws: list[Any] = [{"ref_id": r.ref_id, "sent_ids": [s.sent_id for s in r.sentences],
                        "sentences": [{"tokens": list(s.tokens)} for s in r.sentences]} for r in refs]  # fmt: skip
    for _ in range(draw(st.integers(0, 2))):
        kind = draw(st.integers(0, 9))
        k = draw(st.integers(0, 100))
        if kind == 0:
            images.append(images[k % len(images)])
        elif kind == 1:
            categories.append(categories[k % 3])
        elif kind == 2:
            anns.append(Annotation(anns[k % len(anns)].ann_id, 1, 1, (0.0, 0.0, 1.0, 1.0), 1.0, 0, []))
        elif kind == 3:
            anns.append(Annotation(99, 77, 1, (0.0, 0.0, 1.0, 1.0), 1.0, 0, []))
        else:
            i = k % len(refs)
            ref, field = refs[i], ("ref_id", "ann_id", "image_id", "category_id", "sent_ids", "sent_id")[kind - 4]
            if field == "sent_ids":
                raws[i]["sent_ids"] = raws[i]["sent_ids"][::-1]
            elif field == "sent_id":
                refs[i] = replace(ref, sentences=(replace(ref.sentences[0], sent_id=0), ref.sentences[1]))
            else:
                refs[i] = replace(ref, **{field: draw(st.sampled_from([0, 1, 2, 10, 77]))})
    return images, anns, categories, refs, raws


@settings(max_examples=400, deadline=None)
@given(small_source())
def test_problems_found_without_the_tables_are_the_tables_problems(source: Any) -> None:
    images, anns, categories, refs, raws = source
    data = {"refs": raws, "images": [{} for _ in images], "annotations": [{} for _ in anns], "categories": []}
    kw = {"refs_file": Path("r.p"), "instances_file": Path("i.json")}
    full = build_index(data, images, anns, categories, refs, **kw).problems
    assert find_problems(data, images, anns, categories, refs, **kw) == full


# --- the collector -----------------------------------------------------------------------------------


def test_loading_freezes_the_source_and_leaves_the_collector_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMCOCO_SOURCE_CACHE", "off")
    monkeypatch.setattr("comcoco.sources.reader.MIN_SOURCE_BYTES", 1)  # treat this source as a large one
    sents = (Sentence(0, "Red hat", "red hat", ("red", "hat")),)
    root = write_source(tmp_path / "src", [Ref(0, 1, 1, 1, "train", sents)], [ImageInfo(1, "a.jpg", 8, 8)],
                        [Annotation(1, 1, 1, (0.0, 0.0, 4.0, 4.0), 16.0, 0, [[0.0, 0.0, 4.0, 0.0, 4.0, 4.0]])],
                        [Category(1, "person", "person")]).parent  # fmt: skip
    frozen = gc.get_freeze_count()
    try:
        source = load_source(root)
        assert gc.isenabled()
        assert gc.get_freeze_count() > frozen
        assert source.Refs[0]["sentences"][0]["raw"] == "Red hat"  # tables built on first use
        (root / "refcoco+" / "instances.json").write_text("{")
        before = gc.get_freeze_count()
        with pytest.raises(SourceError, match="malformed JSON"):
            load_source(root)
        assert gc.isenabled() and gc.get_freeze_count() <= before  # a failed load freezes nothing (frozen objects may die)
        (root / "refcoco+" / "instances.json").unlink()
        write_source(root, [], [], [], [])
        gc.disable()  # a caller that turned the collector off keeps it off, and nothing is frozen
        load_source(root)
        assert not gc.isenabled() and gc.get_freeze_count() <= before
    finally:
        gc.enable()
        gc.unfreeze()


def test_small_sources_are_not_frozen(tmp_path: Path) -> None:
    """Freezing is for large sources: a test session loading many small ones must not pin garbage."""
    root = write_source(tmp_path / "src", [], [], [], []).parent
    frozen = gc.get_freeze_count()
    load_source(root)
    assert gc.isenabled() and gc.get_freeze_count() <= frozen


# --- inspect's geometry checks in bulk ----------------------------------------------------------------

COORD = st.one_of(
    st.floats(-10, 700, allow_nan=False), st.integers(-10, 700),
    st.sampled_from([math.nan, math.inf, -math.inf, True, "3", None, 1e308, 2**80]),
)  # fmt: skip


@st.composite
def polygon(draw: Any) -> Any:
    kind = draw(st.integers(0, 9))
    if kind == 0:  # collinear: zero area in exact arithmetic, rounding noise in floating point
        a, b = draw(st.floats(0, 50)), draw(st.floats(0.1, 3))
        xs = draw(st.lists(st.floats(0, 600), min_size=3, max_size=6))
        return [v for x in xs for v in (x, a + b * x)]
    if kind == 1:
        return draw(st.tuples(COORD, COORD)) if draw(st.booleans()) else draw(VALUES)
    return draw(st.lists(COORD if kind == 2 else st.floats(0, 640, allow_nan=False), max_size=14))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(polygon(), max_size=3) | st.just({"counts": "ab", "size": [4, 4]}), max_size=6),
       st.lists(st.tuples(NUMBER, NUMBER, NUMBER, NUMBER), min_size=6, max_size=6))
def test_bulk_geometry_checks_report_what_one_by_one_checks_report(segs: list[Any], boxes: list[Any]) -> None:
    from comcoco.sources.validate import _bbox_suspects, _bulk_polygon_problems, annotation_problems

    anns = [Annotation(i, 1 + i % 2, 1, tuple(float(v) if not isinstance(v, str | None) else 1.0 for v in box), 1.0, 0, seg)
            for i, (seg, box) in enumerate(zip(segs, boxes, strict=False))]  # fmt: skip
    images = {1: ImageInfo(1, "a.jpg", 640, 480)}
    bulk = _bulk_polygon_problems(anns, "i.json")
    suspects = _bbox_suspects(anns, images)
    for ann, found, suspect in zip(anns, bulk, suspects, strict=True):
        reference = annotation_problems(ann, images.get(ann.image_id), "i.json")
        assert annotation_problems(ann, images.get(ann.image_id), "i.json", polygon_problems=found) == reference
        if found == [] and not suspect:
            assert reference == []


EDGE_SEGMENTATIONS = [
    [[0.0, 0.0, 10.0, 0.0, math.nan, 5.0]],
    [[0.0, 0.0, 10.0, 0.0, 10.0, math.inf]],
    [[0.0, 0.0, 10.0, 0.0, 10.0, 5.0], [1.0, 1.0, 2.0, 2.0, 3.0, 3.0]],  # second one collinear
    [[0, 0, 1, 1, 2, 2]],
    [[0.1, 0.2, 0.2, 0.4, 0.3, 0.6, 0.7, 1.4]],
    [[1e308, 1e308, -1e308, 1e308, 0.0, -1e308]],  # terms overflow to inf
    [[5.0, 5.0, 5.0, 5.0, 5.0, 5.0]],
    [[0.0, 0.0, 4.0, 0.0, 4.0, 4.0, 0.0, 4.0]],
    [[0.0, 0.0, 4.0]],
    [[]],
    [],
    [[2**80, 0, 0, 0, 0, 2**80]],
]
EDGE_BOXES = [(0.0, 0.0, 641.0, 10.0), (0.0, 0.0, 641.0000000001, 10.0), (-1.0, -1.0, 5.0, 5.0),
              (-1.0000001, 0.0, 5.0, 5.0), (639.0, 479.0, 2.0, 2.0), (0.0, 0.0, 0.0, 5.0), (0.0, 0.0, math.inf, 1.0),
              (math.nan, 0.0, 1.0, 1.0), (1.0, 470.0, 5.0, 11.0), (1.0, 470.0, 5.0, 11.0000001)]  # fmt: skip


@pytest.mark.parametrize("batch", [3, 8192])
def test_bulk_geometry_checks_on_edge_cases(batch: int, monkeypatch: pytest.MonkeyPatch) -> None:
    from comcoco.sources.validate import _bbox_suspects, _bulk_polygon_problems, annotation_problems

    monkeypatch.setattr("comcoco.sources.validate._BATCH", batch)

    images = {1: ImageInfo(1, "a.jpg", 640, 480)}
    anns = [Annotation(i * 100 + j, 1 if j % 3 else 2, 1, box, 1.0, 0, seg)
            for i, seg in enumerate(EDGE_SEGMENTATIONS) for j, box in enumerate(EDGE_BOXES)]  # fmt: skip
    bulk = _bulk_polygon_problems(anns, "i.json")
    suspects = _bbox_suspects(anns, images)
    kinds = set()
    for ann, found, suspect in zip(anns, bulk, suspects, strict=True):
        reference = annotation_problems(ann, images.get(ann.image_id), "i.json")
        assert annotation_problems(ann, images.get(ann.image_id), "i.json", polygon_problems=found) == reference, ann
        assert suspect or found is None or found or reference == [], ann
        kinds |= {p.kind for p in reference}
    assert kinds == {"invalid_segmentation", "degenerate_polygon", "empty_polygon", "degenerate_bbox", "bbox_outside_image"}
