"""Scene matching: agreement with the per-pair reference, clusters, ties, the usage cap, files, CLI."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import comcoco.matching.ranking as ranking
import comcoco.matching.scene as scene
from comcoco.cli import app
from comcoco.ids import seeded_keys
from comcoco.matching.scene import (
    CandidatesFileError,
    MatchingError,
    image_clusters,
    match_backgrounds,
    read_candidates,
    read_candidates_params,
    reference_match,
    write_candidates,
)
from comcoco.records import Annotation, ImageInfo, Ref, Sentence
from comcoco.sources.refer import COCO_CATEGORIES, write_source

PERSON, CAR, BUS, DOG, CAT = 1, 3, 6, 18, 17
WORDS = ["man", "Man,", "red", "left", "the", "hat", "dog"]


def ann(ann_id: int, image_id: int, cat: int) -> Annotation:
    poly = [[10.0, 10.0, 50.0, 10.0, 50.0, 40.0, 10.0, 40.0]]
    return Annotation(ann_id, image_id, cat, (10.0, 10.0, 40.0, 30.0), 1200.0, 0, poly)


def ref(ref_id: int, a: Annotation, *sentences: str, first_sent_id: int | None = None) -> Ref:
    base = ref_id * 10 if first_sent_id is None else first_sent_id
    sents = tuple(Sentence(base + i, s, s.lower(), tuple(s.split())) for i, s in enumerate(sentences))
    return Ref(ref_id, a.ann_id, a.image_id, a.category_id, "train", sents)


# --- property test against the per-pair reference --------------------------------------------------


@st.composite
def sources(draw):
    n_images = draw(st.integers(1, 9))
    anns: list[Annotation] = []
    refs: list[Ref] = []
    sent_id = 1
    for image in range(1, n_images + 1):
        for _ in range(draw(st.integers(0, 4))):
            a = ann(len(anns) + 1, 100 + image, draw(st.sampled_from([PERSON, CAR, BUS, DOG])))
            anns.append(a)
            if draw(st.booleans()):
                sentences = []
                for _ in range(draw(st.integers(0, 3))):
                    toks = draw(st.lists(st.sampled_from(WORDS), max_size=4))
                    sentences.append(Sentence(sent_id, " ".join(toks), " ".join(toks).lower(), tuple(toks)))
                    sent_id += 1
                refs.append(
                    Ref(1000 - 3 * len(refs), a.ann_id, a.image_id, a.category_id, "val", tuple(sentences))
                )
    return refs, anns


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    src=sources(),
    k=st.integers(1, 4),
    seed=st.integers(0, 3),
    similarity=st.sampled_from(["max", "union"]),
    max_uses=st.sampled_from([None, 1, 2]),
    stops=st.sampled_from([(), ("the", "Man")]),
)
def test_fast_equals_reference(src, k, seed, similarity, max_uses, stops):
    refs, anns = src
    args = dict(k=k, seed=seed, similarity=similarity, max_uses=max_uses, stop_words=stops)
    assert match_backgrounds(refs, anns, **args) == reference_match(refs, anns, **args)


def _larger_source(seed: int, n_images: int = 120, vocab: int = 12):
    """Enough images per cluster to exercise thresholds, block splitting and the cap's fallback."""
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(vocab)]
    anns, refs = [], []
    for image in range(n_images):
        for _ in range(int(rng.integers(1, 4))):
            a = ann(len(anns) + 1, 5000 + 3 * image, int(rng.choice([PERSON, PERSON, CAR, DOG])))
            anns.append(a)
            if rng.random() < 0.7:
                sents = [
                    " ".join(rng.choice(words, size=int(rng.integers(1, 4))))
                    for _ in range(int(rng.integers(1, 4)))
                ]
                refs.append(ref(len(refs) + 1, a, *sents))
    return refs, anns


@pytest.mark.parametrize("block", [1 << 16, 7])
@pytest.mark.parametrize("slack", [(4.0, 8.0), (-2.0, -4.0)])
def test_fast_equals_reference_on_larger_sources(monkeypatch, block, slack):
    # slack (-2, -4) makes the tie-break threshold too tight on purpose: the exact fallback must cover it
    monkeypatch.setattr(ranking, "BLOCK_ELEMS", block)
    monkeypatch.setattr(ranking, "_EXACT_ELEMS", block)
    monkeypatch.setattr(ranking, "_KEY_SLACK", slack)
    monkeypatch.setattr(ranking, "_CAP_CHUNK", 3 if block == 7 else 256)  # small chunks refresh stale rankings
    for seed, vocab in ((0, 4), (1, 40)):
        refs, anns = _larger_source(seed, vocab=vocab)
        for similarity in ("max", "union"):
            for max_uses in (None, 2):
                args = dict(k=5, seed=seed, similarity=similarity, max_uses=max_uses)
                assert match_backgrounds(refs, anns, **args) == reference_match(refs, anns, **args)


# --- definitions on hand-built sources -------------------------------------------------------------


def test_hand_computed_similarities():
    a_fg, a1, a2, a3, a4 = (
        ann(1, 10, PERSON),
        ann(2, 20, PERSON),
        ann(3, 30, PERSON),
        ann(4, 40, DOG),
        ann(5, 50, CAR),
    )
    a_p4 = ann(6, 40, PERSON)  # makes image 40 a person-cluster image although its ref is a dog
    refs = [
        ref(1, a_fg, "man in red", "the hat"),
        ref(2, a1, "man in blue", "tall woman"),  # best pair: {man,in,red} vs {man,in,blue} = 2/4
        ref(3, a2, "the red hat"),  # best pair: {the,hat} vs {the,red,hat} = 2/3
        ref(4, a3, "brown dog"),  # image 40: dog ref, no shared words → 0
    ]
    anns = [a_fg, a1, a2, a3, a4, a_p4]
    got = match_backgrounds(refs, anns, k=5, similarity="max")
    mine = [(c.bg_image_id, c.similarity, c.rank, c.cluster) for c in got if c.ref_id == 1]
    assert mine == [(40, 0.0, 1, 0), (20, 0.5, 2, 0), (30, 2 / 3, 3, 0)]  # image 50 is a car-only image
    union = {
        c.bg_image_id: c.similarity
        for c in match_backgrounds(refs, anns, similarity="union")
        if c.ref_id == 1
    }
    # fg union {man,in,red,the,hat}; image 20 {man,in,blue,tall,woman} → 2/8; image 30 {the,red,hat} → 3/5
    assert union == {40: 0.0, 20: 2 / 8, 30: 3 / 5}


def test_cluster_membership_uses_all_annotations():
    anns = [
        ann(1, 10, CAT),
        ann(2, 20, PERSON),
        ann(3, 20, DOG),
        ann(4, 30, BUS),
        ann(5, 40, CAR),
        ann(6, 40, DOG),
    ]
    clusters = image_clusters(anns)
    assert clusters[6].tolist() == [10, 20, 40]  # animal: the unreferred dogs count
    assert clusters[0].tolist() == [20]
    assert clusters[1].tolist() == [30, 40]  # bus and car share traffic_p
    refs = [ref(1, anns[0], "white cat")]  # only the cat is referred
    got = match_backgrounds(refs, anns, k=5)
    assert sorted(c.bg_image_id for c in got) == [20, 40]  # own image 10 excluded, images without text = 0
    assert all(c.similarity == 0.0 and c.cluster == 6 for c in got)


def test_fewer_than_k_and_empty_pools():
    anns = [ann(1, 10, PERSON), ann(2, 20, PERSON), ann(3, 30, DOG)]
    refs = [ref(1, anns[0], "man"), ref(2, anns[2], "dog")]
    got = match_backgrounds(refs, anns, k=5)
    assert [(c.ref_id, c.rank, c.bg_image_id) for c in got] == [
        (1, 1, 20)
    ]  # the dog's cluster is only its image
    assert scene.match_summary(refs, got, 5) == {
        "refs": 2, "candidates": 1, "refs_short": 1, "refs_without": 1, "backgrounds": 1, "above_distinct": 0
    }  # fmt: skip


def test_ties_follow_the_seeded_hash():
    anns = [ann(i, 100 + i, PERSON) for i in range(1, 41)]
    refs = [ref(7, anns[0], "red hat")] + [ref(100 + i, a, "blue shirt") for i, a in enumerate(anns[1:])]
    pool = np.array([a.image_id for a in anns[1:]], dtype=np.int64)
    for seed in (0, 1, 2):
        got = [c.bg_image_id for c in match_backgrounds(refs, anns, k=5, seed=seed) if c.ref_id == 7]
        expected = pool[np.argsort(seeded_keys(seed, 7, pool))[:5]].tolist()
        assert got == expected  # all 39 backgrounds tie at 0: the 5 smallest keys win, in key order
    runs = {
        s: [c.bg_image_id for c in match_backgrounds(refs, anns, k=5, seed=s) if c.ref_id == 7]
        for s in (0, 1)
    }
    assert runs[0] == [
        c.bg_image_id
        for c in match_backgrounds(list(reversed(refs)), anns[::-1], k=5, seed=0)
        if c.ref_id == 7
    ]
    assert runs[0] != runs[1]


def test_usage_cap():
    anns = [ann(i, 100 + i, PERSON) for i in range(1, 9)]
    refs = [ref(i, a, "person") for i, a in enumerate(anns, start=1)]
    free = match_backgrounds(refs, anns, k=3)
    capped = match_backgrounds(refs, anns, k=3, max_uses=2)
    free_uses = Counter(c.bg_image_id for c in free)
    uses = Counter(c.bg_image_id for c in capped)
    assert len(free) == 24 and max(free_uses.values()) >= 3  # uncapped, some image is used 3+ times
    assert max(uses.values()) == 2  # capped: never more than twice
    assert len(capped) == 16  # 8 images × 2 uses, all taken on this data; later refs fall short
    order = np.argsort(seeded_keys(0, scene.USAGE_ORDER_SALT, np.arange(1, 9)))
    first = int(order[0]) + 1  # the first ref visited gets its uncapped choice
    assert [c for c in capped if c.ref_id == first] == [c for c in free if c.ref_id == first]
    ranks = {}
    for c in capped:
        ranks.setdefault(c.ref_id, []).append(c.rank)
    assert all(r == list(range(1, len(r) + 1)) for r in ranks.values())
    assert capped == match_backgrounds(refs, anns, k=3, max_uses=2)  # deterministic
    assert match_backgrounds(refs, anns, k=3, max_uses=len(refs)) == free  # a loose cap changes nothing
    tight = match_backgrounds(refs, anns, k=3, max_uses=1)
    assert len(tight) <= len(anns)  # 8 backgrounds, each used once: some refs fall short
    assert len({c.bg_image_id for c in tight}) == len(tight)


def test_bad_input_names_the_record():
    anns = [ann(1, 10, PERSON), ann(2, 20, 999)]
    with pytest.raises(MatchingError, match="annotation 2 \\(image 20\\): category_id 999"):
        match_backgrounds([ref(1, anns[0], "man")], anns)
    with pytest.raises(MatchingError, match="ref 5 .*category_id 999"):
        match_backgrounds([Ref(5, 2, 20, 999, "train", ())], anns[:1])
    with pytest.raises(MatchingError, match="ref_id 1 appears more than once"):
        match_backgrounds([ref(1, anns[0], "a"), ref(1, anns[0], "b", first_sent_id=50)], anns[:1])
    with pytest.raises(ValueError, match="similarity must be one of max, union"):
        match_backgrounds([], [], similarity="mean")
    with pytest.raises(ValueError, match="k must be at least 1"):
        match_backgrounds([], [], k=0)


# --- candidates files ----------------------------------------------------------------------------


def test_parquet_is_byte_identical_and_round_trips(tmp_path):
    refs, anns = _larger_source(3, n_images=40)
    cands = match_backgrounds(refs, anns, k=5, seed=3)
    params = {"k": 5, "seed": 3, "similarity": "max", "max_uses": None}
    a, b = tmp_path / "a.parquet", tmp_path / "sub" / "b.parquet"
    write_candidates(a, cands, params)
    write_candidates(b, list(reversed(cands)), dict(reversed(params.items())))
    assert a.read_bytes() == b.read_bytes()
    assert read_candidates(a) == cands
    assert read_candidates_params(a) == params
    schema = pq.read_schema(a)
    assert [f.name for f in schema] == list(scene.CANDIDATE_COLUMNS)
    assert [str(f.type) for f in schema] == ["int64"] * 7 + ["double"]
    table = pq.read_table(a)
    keys = list(zip(table.column("ref_id").to_pylist(), table.column("rank").to_pylist(), strict=True))
    assert keys == sorted(keys) and not list(tmp_path.glob("**/*.tmp"))


def test_read_candidates_errors_name_the_file(tmp_path):
    import pyarrow as pa

    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"ref_id": [1]}), bad)
    with pytest.raises(CandidatesFileError, match="bad.parquet: missing candidate columns ann_id"):
        read_candidates(bad)
    junk = tmp_path / "junk.parquet"
    junk.write_text("not parquet")
    with pytest.raises(CandidatesFileError, match="junk.parquet: not a readable parquet"):
        read_candidates(junk)


# --- real fixtures -------------------------------------------------------------------------------


def test_real_coco_annotations_with_synthetic_refs(coco_real_dir):
    """Real val2017 annotations (person, cat, couch, remote); the refs over them are synthetic."""
    data = json.loads((coco_real_dir / "instances_val2017_subset.json").read_text())
    anns = [
        Annotation(
            a["id"],
            a["image_id"],
            a["category_id"],
            tuple(a["bbox"]),
            a["area"],
            a["iscrowd"],
            a["segmentation"],
        )
        for a in data["annotations"]
    ]
    by_id = {a.ann_id: a for a in anns}
    refs = [
        ref(1, by_id[442619], "skier in red jacket"),  # image 785, person
        ref(2, by_id[198196], "man on left", "batter"),  # image 40083, person
        ref(3, by_id[1108446], "remote on the left"),  # image 39769, remote
        ref(4, by_id[2190839], "cat on the left"),  # image 39769, cat
    ]
    clusters = image_clusters(anns)
    assert clusters[0].tolist() == [785, 40083]
    assert (
        clusters[6].tolist() == [39769]
        and clusters[14].tolist() == [39769]
        and clusters[16].tolist() == [39769]
    )
    for similarity in ("max", "union"):
        got = match_backgrounds(refs, anns, k=5, similarity=similarity)
        assert got == reference_match(refs, anns, k=5, similarity=similarity)
        assert [(c.ref_id, c.bg_image_id, c.similarity) for c in got] == [(1, 40083, 0.0), (2, 785, 0.0)]


# --- command line ---------------------------------------------------------------------------------


def _write_small_source(root: Path) -> tuple[list[Ref], list[Annotation]]:
    refs, anns = _larger_source(5, n_images=30)
    used = sorted({a.image_id for a in anns})
    images = [ImageInfo(i, f"COCO_train2014_{i:012d}.jpg", 64, 48) for i in used]
    write_source(root, refs, images, anns, COCO_CATEGORIES)
    return refs, anns


def test_cli_match(tmp_path):
    refs, anns = _write_small_source(tmp_path / "src")
    runner = CliRunner()
    out1, out2 = tmp_path / "c1.parquet", tmp_path / "c2.parquet"
    r1 = runner.invoke(app, ["match", str(tmp_path / "src"), "-o", str(out1), "--k", "3", "--seed", "4"])
    assert r1.exit_code == 0, r1.output
    assert "candidates for" in r1.output
    assert not (tmp_path / "src" / "images").exists()  # matching needs no image files
    args = ["match", str(tmp_path / "src"), "-o", str(out2), "--k", "3", "--seed", "4"]
    r2 = runner.invoke(app, [*args, "--json", "--progress"])
    assert r2.exit_code == 0, r2.output
    summary = json.loads(r2.stdout)  # the progress bar goes to stderr, stdout stays one JSON object
    assert "matching" in r2.stderr
    assert out1.read_bytes() == out2.read_bytes()
    assert read_candidates(out1) == match_backgrounds(refs, anns, k=3, seed=4)
    assert summary["refs"] == len(refs) and summary["candidates"] == len(read_candidates(out1))
    assert read_candidates_params(out1)["k"] == 3

    capped = tmp_path / "capped.parquet"
    args = ["match", str(tmp_path / "src"), "-o", str(capped), "--similarity", "union", "--max-uses", "1"]
    r3 = runner.invoke(app, [*args, "--stop-words", "english"])
    assert r3.exit_code == 0, r3.output
    bgs = [c.bg_image_id for c in read_candidates(capped)]
    assert len(bgs) == len(set(bgs))


def test_cli_match_errors(tmp_path):
    _write_small_source(tmp_path / "src")
    runner = CliRunner()
    out = tmp_path / "c.parquet"
    bad = runner.invoke(app, ["match", str(tmp_path / "src"), "-o", str(out), "--similarity", "mean"])
    assert bad.exit_code == 2 and "error: --similarity must be one of max, union" in bad.output
    missing = runner.invoke(app, ["match", str(tmp_path / "nope"), "-o", str(out)])
    assert missing.exit_code == 3 and "error:" in missing.output and "Traceback" not in missing.output
    stops = runner.invoke(app, ["match", str(tmp_path / "src"), "-o", str(out), "--stop-words", "klingon"])
    assert stops.exit_code == 2 and "--stop-words" in stops.output
    assert not out.exists()
