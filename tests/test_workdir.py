"""Build stages without Prefect: split-aware matching, plan freezing, resume checks."""

from __future__ import annotations

import pytest

from comcoco.build import build_inline, match_stage, prepare_workdir
from comcoco.matching.scene import read_candidates
from comcoco.matching.source import image_split_groups
from comcoco.plan import BuildConfig, PlanMismatchError, SourceSpec, check_resume, read_plan
from comcoco.release.splits import release_split_of


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
    from comcoco.config import ComposeConfig

    with pytest.raises(ValueError, match="compose seed"):
        BuildConfig(seed=1, compose=ComposeConfig(seed=0))


# --- one entry point for matching; the work directory's owner ----------------------------------------


def test_match_then_compose_equals_build(demo_source_small, tmp_path):
    """The stage-by-stage path the README offers gives the build's samples, row for row and byte for byte."""
    from typer.testing import CliRunner

    from comcoco.cli import app
    from comcoco.compose.samples import read_samples
    from comcoco.workdir import Workdir

    spec = SourceSpec(root=str(demo_source_small))
    build_inline(spec, tmp_path / "wd", BuildConfig(seed=3, shard_size=16))
    wd = Workdir(tmp_path / "wd")
    runner = CliRunner()
    cands = tmp_path / "candidates.parquet"
    m = runner.invoke(app, ["match", str(demo_source_small), "-o", str(cands), "--seed", "3"])
    assert m.exit_code == 0, m.output
    assert read_candidates(cands) == read_candidates(wd.path("candidates.parquet"))
    c = runner.invoke(app, ["compose", str(demo_source_small), "--candidates", str(cands), "-o",
                            str(tmp_path / "out"), "--seed", "3"])
    assert c.exit_code == 0, c.output
    composed = {r.sample_id: r for r in read_samples(tmp_path / "out" / "samples.parquet")}
    built = {r.sample_id: (r, s) for s in sorted({p.shard for p in wd.plan_rows()}) for r in wd.shard_samples(s)}
    assert composed and composed.keys() == built.keys()
    for sid, row in composed.items():
        b, shard = built[sid]
        assert row == b
        for rel in (row.composite, row.ground_truth, row.mask):
            if rel:
                assert (tmp_path / "out" / rel).read_bytes() == (wd.shard_dir(shard) / rel).read_bytes()
    # and across splits, `match` agrees with a build that matches across splits
    across = runner.invoke(app, ["match", str(demo_source_small), "-o", str(tmp_path / "x.parquet"), "--seed", "3",
                                 "--match-across-splits"])
    assert across.exit_code == 0
    assert read_candidates(tmp_path / "x.parquet") != read_candidates(cands)


def test_workdir_hands_out_typed_rows_and_the_stale_flag(demo_source_small, tmp_path):
    from comcoco.records import STATUS_NOT_BUILT
    from comcoco.workdir import StatusRow, Workdir, WorkdirError

    wd = Workdir(tmp_path / "wd")
    with pytest.raises(WorkdirError, match="no plan"):
        wd.config()
    spec = SourceSpec(root=str(demo_source_small))
    build_inline(spec, wd.root, BuildConfig(seed=0, limit=6, shard_size=3))
    rows = wd.status()
    assert len(rows) == 6 and all(isinstance(r, StatusRow) for r in rows)
    assert all(r.composite.startswith(f"shards/{r.shard:05d}/images/") for r in rows if r.ok)
    assert [r.sample_id for r in rows] == sorted(r.sample_id for r in rows)
    assert wd.config() == BuildConfig(seed=0, limit=6, shard_size=3) and wd.source_spec() == spec
    # the status file written back from typed rows is byte-identical
    before = wd.path("status.parquet").read_bytes()
    wd.write_status(rows)
    assert wd.path("status.parquet").read_bytes() == before
    # a shard that is not complete lists its samples as not built, with the reason
    from comcoco.build import collect_status

    shard = rows[0].shard
    (wd.shard_dir(shard) / "_SUCCESS").unlink()
    counts = collect_status(wd, {shard: "RuntimeError: boom"})
    assert counts["by_status"][STATUS_NOT_BUILT] == sum(r.shard == shard for r in rows)
    gone = [r for r in wd.status() if r.status == STATUS_NOT_BUILT]
    assert all("boom" in r.reason and r.composite is None for r in gone)
    assert not wd.stale
    wd.mark_stale()
    assert wd.stale and wd.stale_marker().is_file()
    wd.clear_stale()
    assert not wd.stale
