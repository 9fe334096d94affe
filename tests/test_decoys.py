"""Look-alike decoys: chosen from each target's own photo, never readable as a target, pasted after them."""

from __future__ import annotations

import json

import pytest

from comcoco.build import build_inline
from comcoco.config import BuildConfig, ComposeConfig, ComposeConfigError, SourceSpec
from comcoco.matching.decoys import choose_decoys
from comcoco.matching.source import MatchOptions, match_source
from comcoco.matching.targets import why_not_distinguishable
from comcoco.plan import PlanMismatchError, SourceIndex, check_resume, groups_from_rows, plan_groups
from comcoco.records import Annotation, Ref, Sentence
from comcoco.workdir import Workdir

PERSON, DOG, CAR = 1, 18, 3


def ann(ann_id: int, image_id: int, cat: int, area: float = 900.0, side: float = 30.0, crowd: int = 0) -> Annotation:
    return Annotation(ann_id, image_id, cat, (0.0, 0.0, side, side), area, crowd, [[0, 0, side, 0, side, side]])


def ref(ref_id: int, a: Annotation, *texts: str) -> Ref:
    sents = tuple(Sentence(ref_id * 10 + i, t, t, tuple(t.split())) for i, t in enumerate(texts))
    return Ref(ref_id, a.ann_id, a.image_id, a.category_id, "train", sents)


def test_decoys_come_from_the_targets_own_photo_look_alikes_first():
    man, dog = ann(1, 10, PERSON), ann(2, 20, DOG)
    photo10 = [man, ann(11, 10, CAR), ann(12, 10, PERSON), ann(13, 10, PERSON, area=100),  # 13: too small
               ann(14, 10, PERSON, crowd=1), ann(15, 10, PERSON, side=5)]  # a crowd; too thin
    photo20 = [dog, ann(21, 20, PERSON), ann(22, 20, DOG)]
    by_image = {10: photo10, 20: photo20}
    targets = [(ref(1, man, "man in red"), man), (ref(2, dog, "brown dog"), dog)]
    got = choose_decoys(targets, by_image, {}, n=1, seed=0, key="c")
    # the man's look-alike is the other (unreferred) man of his photo; the dog's the other dog
    assert got == [(0, photo10[2]), (1, photo20[2])]
    two = choose_decoys(targets, by_image, {}, n=2, seed=0, key="c")
    assert [(i, a.ann_id) for i, a in two] == [(0, 12), (0, 11), (1, 22)]  # then another category
    # 21 (a person) is not a decoy of the dog: unreferred, it could be read as the man's target
    assert all(a.ann_id != 21 for _, a in choose_decoys(targets, by_image, {}, n=5, seed=0, key="c"))
    assert choose_decoys(targets, by_image, {}, n=0, seed=0, key="c") == []
    # never a target, never twice: two targets of one photo do not take each other or the same decoy
    other_man = photo10[2]
    pair = [(ref(1, man, "man in red"), man), (ref(3, other_man, "dog walker"), other_man)]
    chosen = choose_decoys(pair, {10: photo10}, {}, n=3, seed=0, key="c")
    ids = [a.ann_id for _, a in chosen]
    assert len(ids) == len(set(ids)) and not {1, 12} & set(ids)
    # the order among equals is seeded, and stable
    many = [man] + [ann(100 + i, 10, PERSON) for i in range(6)]
    pick = {s: choose_decoys(targets[:1], {10: many}, {}, n=1, seed=s, key="c")[0][1].ann_id for s in range(6)}
    assert len(set(pick.values())) > 1
    assert pick[3] == choose_decoys(targets[:1], {10: many}, {}, n=1, seed=3, key="c")[0][1].ann_id


def test_a_referred_decoy_must_be_told_apart_from_every_target():
    man, twin, other = ann(1, 10, PERSON), ann(2, 10, PERSON), ann(3, 10, PERSON)
    target = ref(1, man, "man in red shirt")
    twin_ref, other_ref = ref(2, twin, "man in red shirt"), ref(3, other, "boy in blue cap")
    assert why_not_distinguishable(twin_ref, target) is not None
    refs_by_ann = {2: (twin_ref,), 3: (other_ref,)}
    got = choose_decoys([(target, man)], {10: [man, twin, other]}, refs_by_ann, n=2, seed=0, key="c")
    assert [a.ann_id for _, a in got] == [3]  # the twin's expression would also name the target
    # a sibling whose expression is contrastive shares most words with the target's: that is how RefCOCO+
    # siblings read, and it is kept; beside another target of its category it would be refused
    blue = ann(5, 10, PERSON)
    blue_ref = ref(5, blue, "man in blue shirt")
    assert why_not_distinguishable(blue_ref, target) is not None  # Jaccard 0.6: two targets could not pair
    sib = {5: (blue_ref,)}
    assert [a.ann_id for _, a in choose_decoys([(target, man)], {10: [man, blue]}, sib, n=1, seed=0, key="c")] == [5]
    jacket = ann(6, 30, PERSON)
    beside = [(target, man), (ref(6, jacket, "man in blue jacket"), jacket)]
    got = choose_decoys(beside, {10: [man, blue], 30: [jacket]}, sib, n=1, seed=0, key="c")
    assert 5 not in [a.ann_id for _, a in got]
    # a referred decoy of another target's category is fine when the expressions tell them apart
    car = ann(4, 20, CAR)
    mixed = [(ref(4, car, "red car"), car), (target, man)]
    got = choose_decoys(mixed, {10: [man, twin, other], 20: [car]}, refs_by_ann, n=1, seed=0, key="c")
    assert [a.ann_id for _, a in got] == [3]


def test_decoys_are_a_robust_option_and_change_ids_only_when_used():
    assert ComposeConfig().decoys == 1 and ComposeConfig(profile="paper").decoys == 0
    with pytest.raises(ComposeConfigError, match="--decoys needs --profile robust"):
        ComposeConfig(profile="paper", decoys=1).validate()
    with pytest.raises(ComposeConfigError, match="at least 0"):
        ComposeConfig(decoys=-1).validate()
    none = ComposeConfig(decoys=0)
    assert none.fingerprint() != ComposeConfig().fingerprint() != ComposeConfig(decoys=2).fingerprint()
    # a plan from before decoys existed had none; its configuration reads so
    legacy = BuildConfig.from_dict({"seed": 0, "compose": {"seed": 0, "profile": "robust", "encoder": "fpng"}})
    assert legacy.compose.decoys == 0 and legacy.compose.fingerprint() == none.fingerprint()


def test_planned_decoys_on_the_demo_and_the_resume_rule(demo_source_small, tmp_path):
    spec = SourceSpec(root=str(demo_source_small))
    src = spec.load()
    index = SourceIndex.from_source(src)
    cands = match_source(src.refs(), src.annotations(), MatchOptions())
    groups = plan_groups(cands, index, ComposeConfig())
    decoys = [(g, d) for g in groups for d in g.decoys]
    assert len(decoys) > len(groups) // 2
    for g, d in decoys:
        target = next(m for m in g.members if m.sample_id == d.target)
        assert d.annotation.image_id == target.annotation.image_id == d.fg_image.image_id  # no new leak edge
        assert d.annotation.ann_id not in {m.annotation.ann_id for m in g.members}
    assert plan_groups(cands, index, ComposeConfig()) == groups  # deterministic
    assert all(not g.decoys for g in plan_groups(cands, index, ComposeConfig(decoys=0)))

    cfg = BuildConfig(seed=0, limit=8, shard_size=8)
    build_inline(spec, tmp_path, cfg)
    wd = Workdir(tmp_path)
    rows = [r for r in wd.status() if r.ok]
    assert rows and any(r.decoy_ann_ids for r in rows)
    built = groups_from_rows(wd.plan_rows(), wd.index(), cfg.compose)
    assert wd.plan_meta()["decoys_planned"] == sum(len(g.decoys) for g in built) > 0
    planned = {g.composite_id: {d.annotation.ann_id for d in g.decoys} for g in built}
    for r in rows:  # a decoy that found no room is left out, and said so; none appears that was not planned
        skipped = {int(s.split(": ")[0]) for s in r.decoys_skipped}
        assert set(r.decoy_ann_ids) | skipped == planned[r.composite_id] and not skipped & set(r.decoy_ann_ids)
    from comcoco.compose.samples import decoy_counts

    got = decoy_counts(wd.status())
    assert got["pasted"] == sum(len(r.decoy_ann_ids) for r in {r.composite_id: r for r in rows}.values()) > 0
    assert got["pasted"] + got["skipped"] == wd.plan_meta()["decoys_planned"]
    assert json.loads((tmp_path / "manifest.json").read_text())["counts"]["decoys"] == got
    with pytest.raises(PlanMismatchError, match="compose.decoys: 1 \\(planned\\) vs 0 \\(now\\)"):
        check_resume(tmp_path, BuildConfig(seed=0, limit=8, shard_size=8, compose=ComposeConfig(decoys=0)), spec)

    # the release carries them: each entry's provenance, the selection report and the card's audit section
    from comcoco.release.card import audit_section
    from comcoco.release.options import ReleaseOptions
    from comcoco.release.select import select_entries

    entries, report = select_entries(tmp_path, ReleaseOptions())
    n = sum(len(set(r.decoy_ann_ids)) for r in {r.composite_id: r for r in rows}.values())
    assert report["decoys"]["decoys"] == n > 0
    md, _ = audit_section(None, "robust", report["decoys"])
    assert f"hold {n} decoys" in md
    by_sample = {r.sample_id: r for r in rows}
    assert all(e.provenance.get("decoy_ann_ids", []) == list(by_sample[e.sample_id].decoy_ann_ids) for e in entries)


def test_a_decoy_that_cannot_be_cut_is_left_out_and_the_targets_are_untouched(demo_source_small):
    from dataclasses import replace

    from comcoco.compose import ImageCache, compose_group

    spec = SourceSpec(root=str(demo_source_small))
    src = spec.load()
    index = SourceIndex.from_source(src)
    cands = match_source(src.refs(), src.annotations(), MatchOptions())
    group = next(g for g in plan_groups(cands, index, ComposeConfig()) if len(g.decoys) >= 2)
    images = ImageCache(index.image_path)
    good = compose_group(group, images, ComposeConfig())
    assert all(s.row.ok for s in good.samples)
    placed = good.samples[0].row.decoy_ann_ids
    assert placed  # (this composite has room for at least one)
    # one decoy's outline is garbage (a polygon outside its photo): the composite is made without it
    broken = replace(group.decoys[0], annotation=replace(group.decoys[0].annotation,
                                                        segmentation=[[9000.0, 9000.0, 9001.0, 9000.0, 9001.0, 9001.0]]))
    bad = compose_group(replace(group, decoys=(broken, *group.decoys[1:])), images, ComposeConfig())
    assert all(s.row.ok for s in bad.samples)
    assert broken.annotation.ann_id not in bad.samples[0].row.decoy_ann_ids
    assert all(s.row.decoy_ann_ids == bad.samples[0].row.decoy_ann_ids for s in bad.samples)
    # and every target's row says which planned decoy was left out, and why
    assert all(len(s.row.decoys_skipped) == 1 for s in bad.samples)
    assert bad.samples[0].row.decoys_skipped[0].startswith(f"{broken.annotation.ann_id}: ")
    assert not good.samples[0].row.decoys_skipped or all(
        int(x.split(": ")[0]) != broken.annotation.ann_id for x in good.samples[0].row.decoys_skipped)
    # no decoys at all: the targets' rows are those of the same composite made without them
    none = compose_group(replace(group, decoys=()), images, ComposeConfig())
    assert [s.row.box for s in none.samples] == [s.row.box for s in good.samples]  # targets are placed first
    assert all(not s.row.decoy_ann_ids for s in none.samples)
