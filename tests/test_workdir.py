"""Build stages without Prefect: split-aware matching, plan freezing, resume checks."""

from __future__ import annotations

import pytest

from comcoco.matching.scene import read_candidates
from comcoco.plan import BuildConfig, PlanMismatchError, SourceSpec, check_resume, read_plan
from comcoco.release.splits import release_split_of
from comcoco.workdir import build_inline, image_split_groups, match_stage, prepare_workdir


def _groups(source_root):
    src = SourceSpec(root=str(source_root)).load()
    return src, image_split_groups(src.refs(), [a.image_id for a in src.annotations()], seed=0)


def test_backgrounds_stay_in_the_objects_split_group(demo_source_small, tmp_path):
    spec = SourceSpec(root=str(demo_source_small))
    src, group_of = _groups(demo_source_small)
    assert set(group_of.values()) == {"train", "val", "test"}
    for r in src.refs():
        assert group_of[r.image_id] == release_split_of(r.split)

    within = BuildConfig(seed=0)
    prepare_workdir(tmp_path / "a", within, spec)
    cands = read_candidates(match_stage(spec, tmp_path / "a", within))
    assert cands
    assert all(group_of[c.bg_image_id] == group_of[c.fg_image_id] for c in cands)

    across = BuildConfig(seed=0, match_within_splits=False)
    prepare_workdir(tmp_path / "b", across, spec)
    cands_b = read_candidates(match_stage(spec, tmp_path / "b", across))
    assert any(group_of[c.bg_image_id] != group_of[c.fg_image_id] for c in cands_b)


def test_images_without_refs_get_a_seeded_group():
    from comcoco.records import Ref

    refs = [Ref(ref_id=i, ann_id=i, image_id=i, category_id=1, split=s, sentences=())
            for i, s in enumerate(["train"] * 8 + ["val", "testB"])]
    a = image_split_groups(refs, list(range(200)), seed=1)
    assert a == image_split_groups(refs, list(reversed(range(200))), seed=1)
    assert a != image_split_groups(refs, list(range(200)), seed=2)
    extra = [a[i] for i in range(10, 200)]
    assert extra.count("train") > extra.count("val") and set(extra) <= {"train", "val", "test"}


def test_plan_is_frozen_and_resume_checks_config(demo_source_small, tmp_path):
    spec = SourceSpec(root=str(demo_source_small))
    cfg = BuildConfig(seed=2, limit=10, shard_size=3)
    counts = build_inline(spec, tmp_path, cfg)
    assert counts["samples"] == 10
    rows = read_plan(tmp_path)
    shards = sorted({r.shard for r in rows})
    assert shards == list(range(len(shards)))
    per = [sum(r.shard == s for r in rows) for s in shards]
    assert max(per) <= 3 and sum(per) == 10
    assert check_resume(tmp_path, cfg, spec)["samples"] == 10
    with pytest.raises(PlanMismatchError, match="limit: 10 \\(planned\\) vs 11 \\(now\\)"):
        check_resume(tmp_path, BuildConfig(seed=2, limit=11, shard_size=3), spec)
    with pytest.raises(PlanMismatchError, match="source.root"):
        check_resume(tmp_path, cfg, SourceSpec(root=str(tmp_path)))
    assert BuildConfig(seed=5).compose.seed == 5
    from comcoco.compose.engine import ComposeConfig

    with pytest.raises(ValueError, match="compose seed"):
        BuildConfig(seed=1, compose=ComposeConfig(seed=0))
