"""Recomposing from a corrected box: the compose engine's ``boxes`` hook and the in-place update."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from comcoco.build import refresh_status
from comcoco.compose.engine import compose_group
from comcoco.compose.samples import read_samples
from comcoco.plan import BuildConfig, SourceSpec, plan_groups, read_plan
from comcoco.review.pull import recompose_sample
from comcoco.shards import shard_dir, source_index
from comcoco.sources.images import ImageCache


def read_status(workdir) -> list[dict]:
    """status.parquet's rows as plain dicts, read from the file as any user would."""
    return pq.read_table(Path(workdir) / "status.parquet").to_pylist()


@pytest.fixture(scope="module")
def base(demo_source_small, tmp_path_factory) -> Path:
    from comcoco.build import build_inline

    out = tmp_path_factory.mktemp("recompose") / "wd"
    build_inline(SourceSpec(root=str(demo_source_small)), out, BuildConfig(limit=4, shard_size=4, seed=0))
    return out


@pytest.fixture()
def wd(base, tmp_path) -> Path:
    dest = tmp_path / "wd"
    shutil.copytree(base, dest)
    return dest


def _group(wd: Path, sample_id: str):
    meta = json.loads((wd / "plan.json").read_text())
    config = BuildConfig.from_dict(meta["config"])
    index = source_index(SourceSpec(**meta["source"]))
    plan = read_plan(wd)
    composite = next(r.composite_id for r in plan if r.sample_id == sample_id)
    members = [r for r in plan if r.composite_id == composite]  # the whole composite, as the build made it
    (group,) = plan_groups([r.candidate() for r in members], index, config.compose)
    return group, index, config


def _row_of(result, sample_id: str):
    return next(s.row for s in result.samples if s.row.sample_id == sample_id)


def test_boxes_hook_places_at_the_given_box_and_harmonizes(wd):
    first = {r.composite_id: r.sample_id for r in sorted(read_plan(wd), key=lambda r: -r.member)}
    # a composite's first target: the others are placed after it, so any box of its own is applicable
    row = next(r for r in read_status(wd) if first[r["composite_id"]] == r["sample_id"])
    sid = row["sample_id"]
    group, index, config = _group(wd, sid)
    cache = ImageCache(index.image_path)
    plain = compose_group(group, cache, config.compose)
    assert _row_of(plain, sid).box == (row["box_x"], row["box_y"], row["box_w"], row["box_h"])
    x, y, w, h = _row_of(plain, sid).box
    target = (x + 10 if x < 100 else x - 10, y, w, h)
    moved = compose_group(group, cache, config.compose, boxes={sid: target})
    r = _row_of(moved, sid)
    assert r.ok and r.box == target and r.sample_id == row["sample_id"]
    assert r.plausibility is not None and 0 <= r.plausibility <= 1
    assert r.temperature is not None  # harmonized again
    assert not (moved.composite == plain.composite).all()
    # a box of another aspect ratio keeps the object's aspect: scale from the limiting side
    wide = _row_of(compose_group(group, cache, config.compose, boxes={sid: (x, y, w * 2, h)}), sid)
    assert abs(wide.box_w / wide.box_h - w / h) < 0.1


def test_recompose_in_place_updates_files_rows_and_is_idempotent(wd):
    row = read_status(wd)[0]
    sid = row["sample_id"]
    x, y, w, h = row["box_x"], row["box_y"], row["box_w"], row["box_h"]
    target = (x + 12 if x < 100 else x - 12, y, w, h)
    before = (wd / row["composite"]).read_bytes()
    res = recompose_sample(wd, sid, target)
    assert res.changed and res.box == target
    shard_rows = {r.sample_id: r for r in read_samples(shard_dir(wd, row["shard"]) / "samples.parquet")}
    assert shard_rows[sid].box == target and shard_rows[sid].composite == row["composite"].split("/", 2)[2]
    assert (wd / row["composite"]).read_bytes() != before
    assert not list((wd / "shards").glob(".*"))  # no temporary folder left behind
    snapshot = {p: p.read_bytes() for p in (wd / "shards").rglob("*") if p.is_file()}
    again = recompose_sample(wd, sid, target)
    assert not again.changed
    assert {p: p.read_bytes() for p in (wd / "shards").rglob("*") if p.is_file()} == snapshot
    refresh_status(wd)
    status = {r["sample_id"]: r for r in read_status(wd)}
    assert (status[sid]["box_x"], status[sid]["box_y"]) == target[:2]
    manifest = json.loads((wd / "manifest.json").read_text())
    assert manifest["counts"]["by_status"] == {"ok": 4}


def test_unknown_sample_is_a_clear_error(wd):
    from comcoco.review.push import ReviewError

    with pytest.raises(ReviewError, match="not in the plan"):
        recompose_sample(wd, "0000000000000000", (0, 0, 10, 10))


@pytest.fixture(scope="module")
def pairs(demo_source_small, tmp_path_factory) -> Path:
    """A work directory with two objects per composite."""
    from comcoco.build import build_inline
    from comcoco.config import ComposeConfig

    out = tmp_path_factory.mktemp("recompose-pairs") / "wd"
    config = BuildConfig(limit=8, shard_size=8, seed=0, compose=ComposeConfig(seed=0, objects_per_image=2))
    build_inline(SourceSpec(root=str(demo_source_small)), out, config)
    return out


def test_multi_object_composite_keeps_the_other_box_and_refuses_overlaps(pairs, tmp_path):
    from comcoco.review.pull import RecomposeError

    wd = tmp_path / "wd"
    shutil.copytree(pairs, wd)
    status = read_status(wd)
    by_comp: dict[str, list[dict]] = {}
    for r in status:
        if r["status"] == "ok":
            by_comp.setdefault(r["composite_id"], []).append(r)
    a, b = next(v for v in by_comp.values() if len(v) == 2)
    box_b = (b["box_x"], b["box_y"], b["box_w"], b["box_h"])
    onto_b = (b["box_x"], b["box_y"], a["box_w"], a["box_h"])
    before = {p: p.read_bytes() for p in (wd / "shards").rglob("*") if p.is_file()}
    with pytest.raises(RecomposeError, match="cannot be composed"):
        recompose_sample(wd, a["sample_id"], onto_b)
    assert {p: p.read_bytes() for p in (wd / "shards").rglob("*") if p.is_file()} == before
    gt_b = (wd / b["ground_truth"]).read_bytes()
    for dx in (-40, 40, -80, 80):
        target = (a["box_x"] + dx, a["box_y"], a["box_w"], a["box_h"])
        if target[0] < 0:
            continue
        try:
            res = recompose_sample(wd, a["sample_id"], target)
        except RecomposeError:
            continue
        break
    else:
        pytest.fail("no free spot for the moved object")
    assert res.changed
    rows = {r.sample_id: r for r in read_samples(shard_dir(wd, a["shard"]) / "samples.parquet")}
    assert rows[b["sample_id"]].box == box_b and rows[a["sample_id"]].box == res.box
    assert rows[a["sample_id"]].objects == (b["sample_id"],)
    assert (wd / b["ground_truth"]).read_bytes() != gt_b  # b's ground truth shows a at its new place
