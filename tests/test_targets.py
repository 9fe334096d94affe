"""Several targets per composite: distinguishable by their expressions; profiles and the resume rule."""

from __future__ import annotations

import itertools

import pytest

from comcoco.build import build_inline
from comcoco.config import BuildConfig, ComposeConfig, ComposeConfigError, SourceSpec
from comcoco.matching.rules import DISTINCT_JACCARD
from comcoco.matching.source import MatchOptions, match_source
from comcoco.matching.targets import group_sizes, group_targets, why_not_distinguishable
from comcoco.plan import PlanMismatchError, SourceIndex, check_resume, plan_groups
from comcoco.records import Candidate, Ref, Sentence

PERSON, CAR = 1, 3


def ref(ref_id: int, cat: int, *texts: str) -> Ref:
    sents = tuple(Sentence(ref_id * 10 + i, t, t, tuple(t.split())) for i, t in enumerate(texts))
    return Ref(ref_id, ref_id, ref_id, cat, "train", sents)


def test_distinguishable_needs_low_similarity_and_an_own_attribute():
    red = ref(1, PERSON, "man in red shirt")
    blue = ref(2, PERSON, "man in blue jacket")
    assert why_not_distinguishable(red, blue) is None
    same = ref(3, PERSON, "man in red shirt")
    assert "similarity 1.00" in why_not_distinguishable(red, same)
    # same category, low word overlap, but one's attributes are a subset of the other's: ambiguous
    shirt = ref(4, PERSON, "guy wearing red")
    red_left = ref(5, PERSON, "red person on the left")
    assert "no attribute word" in why_not_distinguishable(shirt, red_left)
    # different categories need only the similarity rule
    car = ref(6, CAR, "red car")
    assert why_not_distinguishable(ref(7, PERSON, "red man"), car) is None
    assert DISTINCT_JACCARD == 0.5


def _candidates(refs: list[Ref], backgrounds: list[int]) -> list[Candidate]:
    return [Candidate(r.ref_id, r.ann_id, r.image_id, r.category_id, 0, rank, bg, 0.0)
            for r in refs for rank, bg in enumerate(backgrounds, start=1)]


def test_groups_hold_each_ref_once_at_most_k_and_only_distinguishable_targets():
    colours = ["red", "blue", "green", "white", "black", "pink", "yellow"]
    refs = [ref(i + 1, PERSON if i % 2 else CAR, f"{c} {'man' if i % 2 else 'car'} {w}")
            for i, (c, w) in enumerate(itertools.product(colours, ["left", "near"]))]
    refs += [ref(100, PERSON, "red man left")]  # a near twin of ref 2: may never share its composite
    by_id = {r.ref_id: r for r in refs}
    cands = _candidates(refs, [500, 501, 502])
    groups = group_targets(cands, by_id, k=3, seed=4)
    members = [c.ref_id for g in groups for c in g]
    assert sorted(members) == sorted(by_id)  # every ref exactly once
    assert all(1 <= len(g) <= 3 and len({c.bg_image_id for c in g}) == 1 for g in groups)
    for g in groups:
        for a, b in itertools.combinations(g, 2):
            assert why_not_distinguishable(by_id[a.ref_id], by_id[b.ref_id]) is None
    assert sum(n * c for n, c in group_sizes(groups).items()) == len(refs)
    assert group_sizes(groups).get(3, 0) >= 3
    assert group_targets(cands, by_id, k=3, seed=4) == groups  # deterministic
    assert group_targets(list(reversed(cands)), by_id, k=3, seed=4) == groups  # whatever the input order
    assert group_targets(cands, by_id, k=3, seed=5) != groups


def test_profiles_fingerprint_and_resume(demo_source_small, tmp_path):
    paper = ComposeConfig(profile="paper")
    assert paper.objects_per_image == 1 and ComposeConfig().objects_per_image == 3
    legacy = BuildConfig.from_dict({"seed": 0, "compose": {"seed": 0}})  # a plan from before profiles
    assert legacy.compose.profile == "paper" and legacy.compose.fingerprint() == paper.fingerprint()
    assert ComposeConfig().fingerprint() != paper.fingerprint()
    with pytest.raises(ComposeConfigError, match="unknown profile"):
        ComposeConfig(profile="shiny").validate()
    with pytest.raises(ComposeConfigError, match="needs --profile paper"):
        ComposeConfig(candidates_per_ref=2).validate()

    spec = SourceSpec(root=str(demo_source_small))
    src = spec.load()
    index = SourceIndex.from_source(src)
    cands = match_source(src.refs(), src.annotations(), MatchOptions())
    robust = plan_groups(cands, index, ComposeConfig())
    assert any(len(g.members) > 1 for g in robust)
    assert sorted(m.candidate.ref_id for g in robust for m in g.members) == sorted({c.ref_id for c in cands})

    cfg = BuildConfig(seed=0, limit=6, shard_size=4, compose=ComposeConfig(profile="paper"))
    build_inline(spec, tmp_path, cfg)
    with pytest.raises(PlanMismatchError, match="compose.profile: 'paper' \\(planned\\) vs 'robust' \\(now\\)"):
        check_resume(tmp_path, BuildConfig(seed=0, limit=6, shard_size=4), spec)
