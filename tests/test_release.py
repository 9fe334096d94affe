"""Releases end to end: a small work directory → release → REFER / COCO / Parquet / torch loading,
leak-free splits, review decisions, determinism, card, diff, and download over HTTP on 127.0.0.1."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import re
import shutil
import tarfile
import threading
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from comcoco.build import build_inline
from comcoco.cli import app
from comcoco.config import ComposeConfig
from comcoco.decisions import merge_decisions
from comcoco.plan import BuildConfig, SourceSpec
from comcoco.records import ReviewDecision
from comcoco.release.builder import ReleaseError, ReleaseOptions, build_release
from comcoco.release.export import RELEASE_ID_BASE, instruction
from comcoco.release.manifest import diff_releases, read_manifest, release_files, verify_release
from comcoco.sources.refer import load_plain_pickle


def read_status(workdir) -> list[dict]:
    """status.parquet's rows as plain dicts, read from the file as any user would."""
    return pq.read_table(Path(workdir) / "status.parquet").to_pylist()

OPTIONS = ReleaseOptions(proportions={"train": 2, "val": 1, "test": 1}, rows_per_parquet=3, shard_bytes=300_000)
runner = CliRunner()


@pytest.fixture(scope="module")
def workdir(demo_source_small, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("release-wd") / "wd"
    config = BuildConfig(limit=14, shard_size=8, seed=0, compose=ComposeConfig(seed=0, objects_per_image=2))
    counts = build_inline(SourceSpec(root=str(demo_source_small)), out, config)
    assert counts["by_status"].get("ok", 0) >= 10
    return out


@pytest.fixture(scope="module")
def release(workdir, tmp_path_factory) -> Path:
    return build_release(workdir, tmp_path_factory.mktemp("releases") / "R", "1.0.0", OPTIONS)


def _refs(release: Path, variant: str = "ComCOCO") -> list[dict]:
    return load_plain_pickle(release / variant / "refs(unc).p")


def test_layout_manifest_and_counts(release):
    for rel in ("manifest.json", "README.md", "card.html", "CHANGELOG.md", "ComCOCO/refs(unc).p",
                "ComCOCO/instances.json", "ComCOCO+/refs(unc).p", "ComCOCO+/instances.json", "dist/index.json"):
        assert (release / rel).is_file(), rel
    for folder in ("images", "gt", "masks", "parquet", "instruct"):
        assert any((release / folder).iterdir()), folder
    assert not (release / "_build").exists() and not release.with_name(release.name + ".incomplete").exists()
    manifest = read_manifest(release)
    assert sorted(manifest["files"]) == release_files(release)
    assert manifest["version"] == "1.0.0" and manifest["source"]["workdir_manifest_sha256"]
    index = json.loads((release / "dist/index.json").read_text())
    assert len(index["shards"]) >= 2  # small shard size: the release spans several tars
    for variant in ("ComCOCO", "ComCOCO+"):
        refs = _refs(release, variant)
        per_split = defaultdict(int)
        for r in refs:
            assert r["split"] in ("train", "val", "test")
            per_split[r["split"]] += 1
        assert dict(per_split) == {s: c["samples"] for s, c in manifest["counts"]["per_split"][variant].items()}
    assert set(manifest["counts"]["per_split"]["ComCOCO"]) == {"train", "val", "test"}
    assert verify_release(release) == []


def test_refer_records_ids_and_provenance(release, workdir):
    import comcoco

    refer = comcoco.load_refer(release, variant="ComCOCO")
    status = {r["sample_id"]: r for r in read_status(workdir)}
    refs = _refs(release)
    assert [r["ref_id"] for r in refs] == list(range(len(refs)))
    for raw in refs:
        assert list(raw)[:8] == ["sent_ids", "file_name", "ann_id", "ref_id", "image_id", "split", "sentences",
                                 "category_id"]
        meta = raw["comcoco"]
        row = status[meta["sample_id"]]
        assert (meta["fg_ref_id"], meta["fg_ann_id"], meta["fg_image_id"], meta["bg_image_id"]) == (
            row["fg_ref_id"], row["fg_ann_id"], row["fg_image_id"], row["bg_image_id"])
        assert raw["image_id"] >= RELEASE_ID_BASE and raw["ann_id"] >= RELEASE_ID_BASE
        assert raw["category_id"] == row["category_id"]
        assert meta["placement"]["score"] == row["plausibility"] and "filter_args" in meta
        image = refer.Imgs[raw["image_id"]]
        assert (release / "images" / image["file_name"]).is_file()
        assert (release / "gt" / image["gt_file_name"]).is_file()
        assert (release / "gt" / meta["gt_file_name"]).is_file()
        for s in raw["sentences"]:
            assert s["tokens"] == s["sent"].split()
    # multi-object composites: one image entry, several refs, one ground truth per object
    by_image = defaultdict(list)
    for raw in refs:
        by_image[raw["image_id"]].append(raw)
    multi = [v for v in by_image.values() if len(v) > 1]
    assert multi, "the fixture build has two objects per composite"
    group = multi[0]
    assert len({r["comcoco"]["gt_file_name"] for r in group}) == len(group)
    assert set(refer.Imgs[group[0]["image_id"]]["gt_file_names"].values()) == {r["comcoco"]["gt_file_name"] for r in group}


def test_masks_equal_pycocotools_and_refer(release):
    from pycocotools.coco import COCO

    import comcoco

    coco = COCO(str(release / "ComCOCO/instances.json"))
    refer = comcoco.load_refer(release, variant="ComCOCO")
    assert len(coco.getCatIds()) == 80
    for raw in _refs(release):
        ann = coco.anns[raw["ann_id"]]
        assert ann["iscrowd"] == 0 and isinstance(ann["segmentation"][0], list)
        path = release / "masks" / raw["comcoco"]["mask_file_name"]
        stored = np.asarray(Image.open(path)) > 127
        assert np.array_equal(cv2.imread(str(path), cv2.IMREAD_UNCHANGED), stored.astype(np.uint8) * 255)
        assert np.array_equal(coco.annToMask(ann).astype(bool), stored)
        assert np.array_equal(refer.getMask(raw["ref_id"])["mask"] > 0, stored)
        assert ann["area"] == stored.sum()


def test_splits_share_no_image(release):
    images_of = defaultdict(set)
    for raw in _refs(release):
        meta = raw["comcoco"]
        images_of[raw["split"]] |= {meta["bg_image_id"], meta["fg_image_id"]}
    splits = list(images_of)
    assert len(splits) == 3
    for i, a in enumerate(splits):
        for b in splits[i + 1:]:
            assert not images_of[a] & images_of[b], (a, b)


def test_parquet_loads_with_hf_datasets(release, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    import datasets

    refs = {r["ref_id"]: r for r in _refs(release)}
    files = sorted(str(p) for p in (release / "parquet/ComCOCO").glob("train-*.parquet"))
    assert len(files) >= 2  # rows_per_parquet=3
    ds = datasets.load_dataset("parquet", data_files={"train": files}, cache_dir=str(tmp_path / "hf"))["train"]
    assert len(ds) == sum(1 for r in refs.values() if r["split"] == "train")
    row = ds[0]
    assert isinstance(row["image"], Image.Image) and isinstance(row["mask"], Image.Image)
    ref = refs[row["ref_id"]]
    assert row["expressions"] == [s["raw"] for s in ref["sentences"]]
    assert row["split"] == "train" and row["bg_image_id"] == ref["comcoco"]["bg_image_id"]
    assert np.array_equal(np.asarray(row["mask"]),
                          np.asarray(Image.open(release / "masks" / ref["comcoco"]["mask_file_name"])))
    assert json.loads(row["provenance"])["fg_ann_id"] == ref["comcoco"]["fg_ann_id"]


def test_parquet_stores_images_uncompressed_and_composites_once(release):
    meta = pq.ParquetFile(next((release / "parquet/ComCOCO").glob("train-*.parquet"))).metadata
    columns = {meta.row_group(0).column(i).path_in_schema: meta.row_group(0).column(i)
               for i in range(meta.num_columns)}
    for name in ("image", "ground_truth", "mask", "effect_mask"):
        col = columns[f"{name}.bytes"]
        assert col.compression == "UNCOMPRESSED" and not col.is_stats_set, name
        assert ("RLE_DICTIONARY" in col.encodings) == (name == "image"), name  # composites repeat
    assert {c.compression for p, c in columns.items() if not p.endswith(".bytes")} == {"ZSTD"}
    # no spatial phrases yet: ComCOCO+ holds the same rows, so its files are ComCOCO's bytes, stored once
    ours = sorted(p.relative_to(release / "parquet/ComCOCO") for p in (release / "parquet/ComCOCO").iterdir())
    assert ours == sorted(p.relative_to(release / "parquet/ComCOCO+") for p in (release / "parquet/ComCOCO+").iterdir())
    for rel in ours:
        assert (release / "parquet/ComCOCO" / rel).stat().st_ino == (release / "parquet/ComCOCO+" / rel).stat().st_ino


def test_parquet_written_row_group_by_row_group(workdir, tmp_path, monkeypatch):
    """A file is written a row group at a time (one group's images in memory); the rows are the same."""
    from comcoco.release import parquet as rp
    from comcoco.release.builder import ENTRIES_FILE, select_stage, start_release
    from comcoco.release.export import read_entries
    from comcoco.release.files import export_files

    staging = start_release(tmp_path / "R", "1.0.0")
    select_stage(workdir, staging, OPTIONS)
    entries = read_entries(staging / ENTRIES_FILE)
    _, exported = export_files(workdir, staging, entries)
    part = max(rp.parquet_parts(entries, exported, "ComCOCO", rows_per_file=len(entries)), key=lambda p: len(p.entries))
    assert len(part.entries) >= 5
    whole = pq.ParquetFile(staging / rp.write_parquet_part(staging, part))
    rows = whole.read().to_pylist()
    assert whole.metadata.num_row_groups == 1
    monkeypatch.setattr(rp, "ROW_GROUP_ROWS", 2)
    grouped = pq.ParquetFile(staging / rp.write_parquet_part(staging, part))
    assert grouped.metadata.num_row_groups == -(-len(part.entries) // 2)
    assert grouped.read().to_pylist() == rows and len(rows) == len(part.entries)


def test_entries_store_each_backgrounds_objects_once(workdir, tmp_path):
    """The build state holds a background's own objects once; read back, its samples share them."""
    from comcoco.release.builder import ENTRIES_FILE, select_stage, start_release
    from comcoco.release.export import read_entries, write_entries

    staging = start_release(tmp_path / "R", "1.0.0")
    select_stage(workdir, staging, OPTIONS)
    lines = (staging / ENTRIES_FILE).read_text().splitlines()
    n_backgrounds = json.loads(lines[0])["backgrounds"]
    entries = read_entries(staging / ENTRIES_FILE)
    by_bg = defaultdict(list)
    for e in entries:
        by_bg[e.provenance["bg_image_id"]].append(e)
    shared = [es for es in by_bg.values() if len(es) > 1 and es[0].background_objects]
    assert shared, "the fixture has backgrounds with several samples and their own objects"
    assert n_backgrounds <= len(by_bg) < len(entries) and len(lines) == 1 + n_backgrounds + len(entries)
    for es in shared:
        assert all(e.background_objects == es[0].background_objects for e in es)
        assert all(e.background_objects[0] is es[0].background_objects[0] for e in es)
    write_entries(tmp_path / "again.json", entries)  # a round trip gives the same file
    assert (tmp_path / "again.json").read_bytes() == (staging / ENTRIES_FILE).read_bytes()


def test_shared_parquet_file_is_copied_where_links_fail(tmp_path, monkeypatch):
    from comcoco.release import parquet as rp

    src = tmp_path / "parquet/ComCOCO/train-00000.parquet"
    src.parent.mkdir(parents=True)
    src.write_bytes(b"PAR1 rows PAR1")

    def no_links(a, b):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(rp.os, "link", no_links)
    dst = tmp_path / "parquet/ComCOCO+/train-00000.parquet"
    rp._link_or_copy(src, dst)
    assert dst.read_bytes() == src.read_bytes() and dst.stat().st_ino != src.stat().st_ino


def test_export_names_a_sample_whose_file_is_missing(workdir, tmp_path):
    from comcoco.pool import worker_pool
    from comcoco.release.builder import ENTRIES_FILE, select_stage, start_release
    from comcoco.release.export import ExportError, read_entries
    from comcoco.release.files import export_files

    wd = tmp_path / "wd"
    shutil.copytree(workdir, wd)
    staging = start_release(tmp_path / "R", "1.0.0")
    select_stage(wd, staging, OPTIONS)
    entries = read_entries(staging / ENTRIES_FILE)
    victim = entries[-1]
    (wd / victim.src_ground_truth).unlink()
    for workers in (1, 2):  # raised in a worker process, it reaches the caller whole
        with worker_pool(workers) as pool, pytest.raises(ExportError) as err:
            export_files(wd, staging, entries, pool=pool, chunk=2)
        assert victim.sample_id in str(err.value) and victim.src_ground_truth in str(err.value)


def test_export_files_runs_meanwhile_and_gives_up_when_it_fails(workdir, tmp_path):
    """``meanwhile`` runs while the workers export; its failure reaches the caller, the jobs dropped."""
    from comcoco.pool import worker_pool
    from comcoco.release.builder import ENTRIES_FILE, select_stage, start_release
    from comcoco.release.export import read_entries
    from comcoco.release.files import export_files
    from comcoco.release.parquet import start_parquet

    staging = start_release(tmp_path / "R", "1.0.0")
    select_stage(workdir, staging, OPTIONS)
    entries = read_entries(staging / ENTRIES_FILE)
    ran = []
    with worker_pool(2) as pool:
        stats, exported = export_files(workdir, staging, entries, pool=pool, chunk=2,
                                       meanwhile=lambda: ran.append(len(entries)))
        assert ran == [len(entries)] and stats["samples"] == len(exported) == len(entries)

        def refuse() -> None:
            raise OSError(28, "No space left on device")

        with pytest.raises(OSError, match="No space left"):
            export_files(workdir, staging, entries, pool=pool, chunk=2, meanwhile=refuse)
        # Parquet files are handed out largest first; every part still gets its file
        writing = start_parquet(staging, entries, exported, rows_per_file=3, pool=pool)
        sizes = [len(writing.parts[i].entries) for i in writing.writers]
        assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) > 1
        assert writing.results() == [p.rel for p in writing.parts]
    assert all((staging / p.rel).is_file() for p in writing.parts)


def test_torch_dataset_one_item_per_expression(release):
    import torch

    import comcoco

    ds = comcoco.load(release, variant="ComCOCO+", split="val")
    refs = [r for r in _refs(release, "ComCOCO+") if r["split"] == "val"]
    assert len(ds) == sum(len(r["sentences"]) for r in refs) > 0
    item = ds[0]
    _, h, w = item["image"].shape
    assert item["image"].dtype == torch.uint8 and item["ground_truth"].shape == (3, h, w)
    assert item["mask"].shape == (1, h, w) and set(item["mask"].unique().tolist()) <= {0, 1}
    assert item["expression"] in {s["raw"] for r in refs for s in r["sentences"]}
    # composite and ground truth differ only where the object was pasted (and a small border)
    diff = (item["image"].int() - item["ground_truth"].int()).abs().sum(0) > 0
    assert diff[item["mask"][0].bool()].float().mean() > 0.5
    f = comcoco.load(release, variant="ComCOCO", split=None, as_float=True, transform=lambda d: d["image"])
    assert f[0].dtype == torch.float32 and float(f[0].max()) <= 1.0
    with pytest.raises(Exception, match="unknown split"):
        comcoco.load(release, split="testA")


def test_instruction_editing_export(release):
    lines = []
    for p in sorted((release / "instruct/ComCOCO").glob("*.jsonl")):
        lines += [json.loads(x) for x in p.read_text().splitlines()]
    assert len(lines) == sum(len(r["sentences"]) for r in _refs(release))
    for rec in lines[:10]:
        assert rec["instruction"].startswith("remove the ") and "remove the the" not in rec["instruction"]
        for key in ("input_image", "output_image", "mask"):
            assert (release / rec[key]).is_file()
    assert instruction("The man's red hat!") == "remove the mans red hat"


def test_same_workdir_gives_same_files_and_versions_differ_only_in_text(release, workdir, tmp_path):
    # the fixture's release was exported in this process (14 samples); this one by two worker processes
    same = build_release(workdir, tmp_path / "A", "1.0.0", OPTIONS, workers=2)
    other = build_release(workdir, tmp_path / "B", "2.0.0", OPTIONS)
    files = read_manifest(release)["files"]
    assert read_manifest(same)["files"] == files
    versioned = {"README.md", "card.html", "CHANGELOG.md"}
    other_files = read_manifest(other)["files"]
    assert set(other_files) == set(files)
    assert {k for k in files if files[k] != other_files[k]} <= versioned
    # dist shards hold manifest.json (with its timestamp) but the same data files
    assert (same / "dist/index.json").is_file()


def test_existing_version_refused_and_failed_build_leaves_nothing(release, workdir):
    with pytest.raises(ReleaseError, match="never overwritten"):
        build_release(workdir, release.parent, "1.0.0", OPTIONS)

    def broken(path: str) -> dict:
        raise RuntimeError("validation crashed")

    with pytest.raises(RuntimeError):
        build_release(workdir, release.parent, "1.0.1", OPTIONS, validate=broken)
    assert not (release.parent / "comcoco-1.0.1").exists()
    assert not (release.parent / "comcoco-1.0.1.incomplete").exists()
    with pytest.raises(ReleaseError, match="X.Y.Z"):
        build_release(workdir, release.parent, "v1", OPTIONS)


def test_card_images_load_and_hf_header(release):
    import yaml

    page = (release / "card.html").read_text()
    sources = re.findall(r'<img src="([^"]+)"', page)
    readme = (release / "README.md").read_text()
    md_sources = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", readme)
    assert len(sources) >= 5 and set(sources) == set(md_sources)
    for src in sources:
        with Image.open(release / src) as im:
            im.load()
            assert im.size[0] > 50 and im.size[1] > 50
    header = yaml.safe_load(readme.split("---")[1])
    configs = {c["config_name"]: c for c in header["configs"]}
    assert set(configs) == {"ComCOCO", "ComCOCO_plus"}
    for c in configs.values():
        for df in c["data_files"]:
            assert list(release.glob(df["path"])), df
    for section in ("Counts", "Object sizes", "Object positions", "Instances per cluster", "Expressions",
                    "Review", "Examples", "Validation"):
        assert f"<h2>{section}</h2>" in page and f"## {section}" in readme
    assert "53 %" in readme  # the paper's medium share beside ours


def _decide(sample_id: str, stage: str, **kw) -> ReviewDecision:
    return ReviewDecision(sample_id=sample_id, stage=stage, reviewer="ann", reviewed_at="2026-01-01T00:00:00Z",
                          decision=kw.pop("decision", "done"), **kw)


@pytest.fixture(scope="module")
def reviewed(workdir, tmp_path_factory):
    """A copy of the work directory with decisions: one reject, one expressions review, one adjust."""
    wd = tmp_path_factory.mktemp("reviewed") / "wd"
    shutil.copytree(workdir, wd)
    ok = [r for r in read_status(wd) if r["status"] == "ok"]
    rejected, edited, adjusted = ok[0], ok[1], ok[2]
    from comcoco.plan import SourceSpec as Spec

    source = Spec(**json.loads((wd / "plan.json").read_text())["source"]).load()
    sents = source.ref(edited["fg_ref_id"]).sentences
    assert len(sents) >= 2
    merge_decisions(wd, [
        _decide(rejected["sample_id"], "placement", decision="reject", reason="floating"),
        _decide(edited["sample_id"], "placement", decision="accept"),
        _decide(edited["sample_id"], "expressions", kept_sent_ids=tuple(s.sent_id for s in sents[1:]),
                dropped_sent_ids=(sents[0].sent_id,), spatial_phrases=("object on the left",)),
        _decide(adjusted["sample_id"], "placement", decision="adjust", box=(1, 1, 10, 10)),
    ])
    return wd, rejected, edited, adjusted, sents


def test_review_decisions_shape_the_release(reviewed, tmp_path):
    wd, rejected, edited, adjusted, sents = reviewed
    rel = build_release(wd, tmp_path / "R", "1.1.0", OPTIONS)
    by_sample = {r["comcoco"]["sample_id"]: r for r in _refs(rel)}
    plus = {r["comcoco"]["sample_id"]: r for r in _refs(rel, "ComCOCO+")}
    assert rejected["sample_id"] not in by_sample and rejected["sample_id"] not in plus
    raws = [s["raw"] for s in by_sample[edited["sample_id"]]["sentences"]]
    assert "object on the left" in raws and sents[0].raw not in raws
    assert [s["raw"] for s in plus[edited["sample_id"]]["sentences"]] == [s.raw for s in sents[1:]]
    meta = by_sample[edited["sample_id"]]["comcoco"]
    assert meta["review"]["reviewer"] == "ann" and len(meta["spatial_sent_ids"]) == 1
    assert by_sample[adjusted["sample_id"]]["comcoco"]["review"]["decision"] == "adjust"
    sel = read_manifest(rel)["selection"]
    assert sel["review"]["reject"] == 1 and sel["review"]["spatial_phrases_added"] == 1
    assert sel["excluded"] == {"rejected_by_review": 1}
    # only reviewed samples with --unreviewed exclude
    only = build_release(wd, tmp_path / "R2", "1.1.0", ReleaseOptions(**{**OPTIONS.to_dict(), "unreviewed": "exclude"}))
    assert {r["comcoco"]["sample_id"] for r in _refs(only)} == {edited["sample_id"], adjusted["sample_id"]}

    # Parquet: the file holding the sample with a spatial phrase differs between the variants (each row has
    # its variant's expressions), the others are one file under two names
    def rows_of(variant: str) -> dict[str, tuple[Path, list[str]]]:
        out = {}
        for path in sorted((rel / "parquet" / variant).glob("*.parquet")):
            for row in pq.read_table(path, columns=["sample_id", "expressions"]).to_pylist():
                out[row["sample_id"]] = (path, row["expressions"])
        return out

    full, appearance = rows_of("ComCOCO"), rows_of("ComCOCO+")
    assert "object on the left" in full[edited["sample_id"]][1]
    assert appearance[edited["sample_id"]][1] == [s.raw for s in sents[1:]]
    shared = {full[k][0].name for k in full if k in appearance and full[k][0].name == appearance[k][0].name}
    for name in shared:
        a, b = rel / "parquet/ComCOCO" / name, rel / "parquet/ComCOCO+" / name
        differs = name == full[edited["sample_id"]][0].name
        assert (a.stat().st_ino == b.stat().st_ino) != differs and (a.read_bytes() == b.read_bytes()) != differs, name
    assert verify_release(rel) == []

    d = diff_releases(tmp_path / "R" / "comcoco-1.1.0", only)
    assert d["added"] == [] and len(d["removed"]) == len(by_sample) - 2


def test_release_diff_cli(release, reviewed, tmp_path):
    wd, rejected, edited, adjusted, sents = reviewed
    newer = build_release(wd, release.parent, "1.2.0", OPTIONS)
    res = runner.invoke(app, ["release", "diff", str(release), str(newer), "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    key = lambda r: (r["fg_ref_id"], r["fg_ann_id"], r["bg_image_id"])  # noqa: E731
    assert [key(r) for r in d["removed"]] == [key(rejected)] and d["added"] == []
    assert d["removed"][0]["reasons"] == ["not in 1.2.0"] and d["removed"][0]["sample_id"] == rejected["sample_id"]
    changed = {key(r): r["reasons"] for r in d["changed"]}
    exprs = next(x for x in changed[key(edited)] if x.startswith("expressions "))
    assert '+"object on the left"' in exprs and f"-{json.dumps(sents[0].raw)}" in exprs
    assert "review unreviewed → accept" in changed[key(edited)]
    assert "review unreviewed → adjust" in changed[key(adjusted)]
    assert d["config_changes"] == [] and d["identical_data"] is False
    assert d["count_deltas"]["ComCOCO"]  # per split deltas are listed
    changelog = (newer / "CHANGELOG.md").read_text()
    assert changelog.index("## 1.2.0") < changelog.index("## 1.0.0") and "1 removed" in changelog

    text = runner.invoke(app, ["release", "diff", str(release), str(newer)])
    assert text.exit_code == 0 and text.output.splitlines()[:2] == ["1.0.0 -> 1.2.0", "configuration: unchanged"]
    for r in d["changed"]:
        assert f"changed  ref {r['fg_ref_id']} ann {r['fg_ann_id']} on background {r['bg_image_id']}: " \
               + "; ".join(r["reasons"]) in text.output
    rows = len(d["added"]) + len(d["removed"]) + len(d["changed"])
    short = runner.invoke(app, ["release", "diff", str(release), str(newer), "--rows", "1"])
    assert f"... {rows - 1} more not shown (--all lists every sample; --json holds all with their reasons)" \
        in short.output
    every = runner.invoke(app, ["release", "diff", str(release), str(newer), "--rows", "1", "--all"])
    assert "more not shown" not in every.output and every.output.count(" ref ") == rows

    res = runner.invoke(app, ["release", "diff", str(release), str(tmp_path)])
    assert res.exit_code == 3 and "error:" in res.output


def test_validation_hook_fills_the_card(workdir, tmp_path):
    def hook(path: str) -> dict:
        assert Path(path, "ComCOCO/refs(unc).p").is_file()
        return {"title": "SAHM smoke", "metrics": {"psnr": 21.5}, "notes": "tiny run"}

    rel = build_release(workdir, tmp_path, "0.1.0", OPTIONS, validate=hook)
    assert json.loads((rel / "validation/validation.json").read_text())["metrics"]["psnr"] == 21.5
    assert "SAHM smoke" in (rel / "card.html").read_text() and "psnr" in (rel / "README.md").read_text()
    assert "validation/validation.json" in read_manifest(rel)["files"]


# --- download over HTTP on 127.0.0.1 ------------------------------------------------------------------


@pytest.fixture()
def served(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_download_verify_load_over_http(release, served, tmp_path):
    import comcoco

    www, url = served
    shutil.copytree(release / "dist", www / "v1")
    out = tmp_path / "got"
    res = runner.invoke(app, ["download", f"{url}/v1/", "-o", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert read_manifest(out)["files"] == read_manifest(release)["files"]
    res = runner.invoke(app, ["verify", str(out), "--no-progress"])
    assert res.exit_code == 0 and "ok" in res.output
    assert len(comcoco.load(out, split="train")) == len(comcoco.load(release, split="train")) > 0

    victim = sorted((out / "gt").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:-1] + b"\0")
    res = runner.invoke(app, ["verify", str(out), "--no-progress"])
    assert res.exit_code == 3 and f"gt/{victim.name}" in res.output


def test_tampered_shard_refused_nothing_extracted(release, served, tmp_path):
    www, url = served
    shutil.copytree(release / "dist", www / "v1")
    shard = sorted((www / "v1").glob("*.tar"))[0]
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF
    shard.write_bytes(bytes(data))
    out = tmp_path / "got"
    res = runner.invoke(app, ["download", f"{url}/v1/index.json", "-o", str(out), "--no-progress"])
    assert res.exit_code == 3 and "checksum mismatch" in res.output
    assert not out.exists() or not any(out.iterdir())
    assert not list(tmp_path.glob(".got.*"))
    res = runner.invoke(app, ["verify", str(tmp_path / "nothing"), "--no-progress"])
    assert res.exit_code == 3 and "not a comcoco release" in res.output


def test_no_dist_release_packed_later_gives_the_same_shards(release, workdir, tmp_path):
    """--no-dist publishes the same files without dist/; `release pack` then writes, beside the untouched
    release, the very shards the build would have; it refuses a release whose files no longer match its
    manifest, an existing output and a release packed when it was built."""
    def cli_release(out: Path, *extra: str) -> str:
        res = runner.invoke(app, ["release", str(workdir), "-o", str(out), "--version", "1.0.0", "--rows-per-parquet",
                                  "3", "--shard-mb", "1", "--split", "train=2,val=1,test=1", "--no-progress", *extra])
        assert res.exit_code == 0, res.output
        return res.output

    assert "no dist/" in cli_release(tmp_path / "R", "--no-dist")
    bare = tmp_path / "R" / "comcoco-1.0.0"
    dist = tmp_path / "R" / "comcoco-1.0.0.dist"
    assert not (bare / "dist").exists()
    assert read_manifest(bare)["files"] == read_manifest(release)["files"] and verify_release(bare) == []

    victim = sorted((bare / "gt").iterdir())[0]
    good = victim.read_bytes()
    victim.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    res = runner.invoke(app, ["release", "pack", str(bare), "--shard-mb", "1", "--no-progress"])
    assert res.exit_code == 3 and f"gt/{victim.name}: sha256 mismatch" in res.output and "not packed" in res.output
    assert not dist.exists() and not dist.with_name(dist.name + ".incomplete").exists()  # checked as packed
    victim.write_bytes(good)
    stray = bare / "images" / "stray.png"
    stray.write_bytes(good)
    res = runner.invoke(app, ["release", "pack", str(bare), "--shard-mb", "1", "--no-progress"])
    assert res.exit_code == 3 and "images/stray.png: not listed in the manifest" in res.output
    stray.unlink()
    victim.unlink()
    res = runner.invoke(app, ["release", "pack", str(bare), "--shard-mb", "1", "--no-progress"])
    assert res.exit_code == 3 and f"gt/{victim.name}: missing" in res.output and not dist.exists()

    victim.write_bytes(good)
    (tmp_path / "R" / "comcoco-1.0.0.dist.incomplete").mkdir()  # left by an interrupted pack: replaced
    before = {str(p.relative_to(bare)): p.stat().st_mtime_ns for p in bare.rglob("*")}
    res = runner.invoke(app, ["release", "pack", str(bare), "--shard-mb", "1", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert {str(p.relative_to(bare)): p.stat().st_mtime_ns for p in bare.rglob("*")} == before
    assert not (tmp_path / "R" / "comcoco-1.0.0.dist.incomplete").exists()
    assert "dist/index.json for download" in cli_release(tmp_path / "P")
    packed = tmp_path / "P" / "comcoco-1.0.0" / "dist"
    names = sorted(p.name for p in packed.glob("*.tar"))
    assert sorted(p.name for p in dist.glob("*.tar")) == names and len(names) >= 2
    for name in names:  # the same files in the same shards; manifest.json differs only by its `created` time
        with tarfile.open(dist / name) as a, tarfile.open(packed / name) as b:
            assert a.getnames() == b.getnames(), name
            for m in a.getmembers():
                got = a.extractfile(m).read()
                if m.name == "manifest.json":
                    assert got == (bare / "manifest.json").read_bytes()
                else:
                    assert got == b.extractfile(m.name).read(), m.name
    index = json.loads((dist / "index.json").read_text())
    for shard in index["shards"]:
        assert hashlib.sha256((dist / shard["name"]).read_bytes()).hexdigest() == shard["sha256"]
    got = runner.invoke(app, ["download", str(dist), "-o", str(tmp_path / "got"), "--no-progress"])
    assert got.exit_code == 0, got.output
    assert read_manifest(tmp_path / "got")["files"] == read_manifest(bare)["files"]
    res = runner.invoke(app, ["release", "pack", str(bare), "--no-progress"])
    assert res.exit_code == 3 and "exists already" in res.output


def test_cli_create_is_the_default_subcommand(release, workdir, tmp_path):
    for args in (["release", "--help"], ["release", "create", "--help"], ["release", "diff", "--help"],
                 ["release", "pack", "--help"]):
        res = runner.invoke(app, args)
        assert res.exit_code == 0 and "Usage" in res.output, args
    res = runner.invoke(app, ["release", str(workdir), "-o", str(release.parent), "--version", "1.0.0", "--no-progress"])
    assert res.exit_code == 3 and "error:" in res.output and "never overwritten" in res.output
    res = runner.invoke(app, ["release", str(workdir), "-o", str(tmp_path), "--version", "1.0.0", "--unreviewed", "maybe"])
    assert res.exit_code == 2 and "--unreviewed" in res.output
    res = runner.invoke(app, ["release", str(workdir), "-o", str(tmp_path), "--version", "1.0.0", "--split", "train"])
    assert res.exit_code == 2 and "--split" in res.output
    res = runner.invoke(app, ["release", str(tmp_path / "none"), "-o", str(tmp_path), "--version", "1.0.0"])
    assert res.exit_code == 3 and "no such work directory" in res.output
    assert not list(tmp_path.glob("comcoco-*"))


def _rewrite_status(wd: Path, change) -> list[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(wd / "status.parquet")
    rows = table.to_pylist()
    change(rows)
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), wd / "status.parquet")
    return rows


def test_bad_geometry_is_left_out_or_named(workdir, tmp_path):
    from comcoco.release.builder import select_entries

    wd = tmp_path / "wd"
    shutil.copytree(workdir, wd)
    ok = [i for i, r in enumerate(read_status(wd)) if r["status"] == "ok"]

    def empty(rows):
        rows[ok[0]]["polygon"] = "[[1, 1, 2, 2]]"  # fewer than 3 points: covers nothing

    rows = _rewrite_status(wd, empty)
    entries, report = select_entries(wd, OPTIONS)
    assert report["excluded"] == {"empty_polygon": 1}
    assert rows[ok[0]]["sample_id"] not in {e.sample_id for e in entries}
    assert [e.ref_id for e in entries] == list(range(len(entries)))  # ids stay sequential
    assert sorted({e.image_id for e in entries}) == [RELEASE_ID_BASE + i for i in range(len({e.image_id for e in entries}))]

    def garbled(rows):
        rows[ok[1]]["polygon"] = "{not json"

    rows = _rewrite_status(wd, garbled)
    with pytest.raises(ReleaseError, match=rows[ok[1]]["sample_id"]):
        select_entries(wd, OPTIONS)


def test_validation_hook_by_import_path(workdir, tmp_path, monkeypatch):
    from comcoco.release.builder import start_release, validation_stage

    (tmp_path / "myhooks.py").write_text("def check(path):\n    return {'title': 'ok', 'metrics': {'n': 1}}\n"
                                         "def bad(path):\n    return 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    staging = start_release(tmp_path / "R", "0.0.1")
    assert validation_stage(staging, "myhooks:check")["metrics"] == {"n": 1}
    assert (staging / "validation/validation.json").is_file()
    with pytest.raises(ReleaseError, match="expected a dict"):
        validation_stage(staging, "myhooks:bad")
    with pytest.raises(ReleaseError, match="module:function"):
        validation_stage(staging, "myhooks")


def test_stale_status_after_interrupted_review_is_refused(workdir, tmp_path):
    from comcoco.release.builder import select_entries

    wd = tmp_path / "wd"
    shutil.copytree(workdir, wd)
    (wd / "review").mkdir(exist_ok=True)
    (wd / "review" / ".status-stale").write_text("")
    with pytest.raises(ReleaseError, match="out of date"):
        select_entries(wd, OPTIONS)


# --- effect masks, the backgrounds' own objects, the artifact audit ---------------------------------------


def test_effect_masks_travel_in_every_format(release, workdir):
    from pycocotools import mask as mask_utils

    import comcoco

    refs = {r["ref_id"]: r for r in _refs(release)}
    instances = json.loads((release / "ComCOCO/instances.json").read_text())
    anns = {a["id"]: a for a in instances["annotations"]}
    images = {i["id"]: i for i in instances["images"]}
    built = {r["sample_id"]: r for r in read_status(workdir)}
    assert any(r["effect_mask"] for r in built.values())  # a robust build: the shadows are recorded
    for r in refs.values():
        meta = r["comcoco"]
        mask = np.array(Image.open(release / "masks" / meta["mask_file_name"])) > 127
        effect = np.array(Image.open(release / "effects" / meta["effect_mask_file_name"])) > 127
        assert not (mask & ~effect).any()  # the effect mask holds the object
        extra = anns[r["ann_id"]]["comcoco"]
        assert extra["role"] == "target" and extra["effect_area"] == int(effect.sum())
        assert np.array_equal(mask_utils.decode(extra["effect_segmentation"]).astype(bool), effect)
        # outside the effect mask the pair is exact: composite == ground truth
        comp = np.array(Image.open(release / "images" / images[r["image_id"]]["file_name"]).convert("RGB"))
        gt = np.array(Image.open(release / "gt" / meta["gt_file_name"]).convert("RGB"))
        assert np.array_equal(comp[~effect], gt[~effect])
        src = built[meta["sample_id"]]
        if src["effect_mask"]:  # the released effect mask holds the build's
            b = np.array(Image.open(workdir / src["effect_mask"])) > 127
            assert not (b & ~effect).any() and "effects" in meta
    natives = [a for a in anns.values() if a["comcoco"]["role"] == "background"]
    assert natives and all(a["id"] not in {r["ann_id"] for r in refs.values()} for a in natives)
    assert all(a["image_id"] in images for a in natives)
    # Parquet, instruction pairs, torch loader
    table = pq.read_table(next((release / "parquet" / "ComCOCO").glob("train-*.parquet")))
    row = table.slice(0, 1).to_pylist()[0]
    assert row["effect_mask"]["path"].startswith("effects/")
    assert row["effect_mask"]["bytes"] == (release / row["effect_mask"]["path"]).read_bytes()
    line = json.loads((release / "instruct" / "ComCOCO" / "train.jsonl").read_text().splitlines()[0])
    assert (release / line["effect_mask"]).is_file()
    item = comcoco.load(release, split="train")[0]
    meta = refs[item["ref_id"]]["comcoco"]
    effect = np.array(Image.open(release / "effects" / meta["effect_mask_file_name"])) > 127
    assert np.array_equal(item["effect_mask"][0].numpy().astype(bool), effect)


def test_audit_ships_with_the_release_and_refuses_small_samples(release, tmp_path):
    audit = json.loads((release / "audit.json").read_text())
    assert audit["n_pasted"] < 30 and audit["auc"] is None  # a 14-sample build: too few to judge
    assert "not judged" in audit["verdict"] and "at least 30" in audit["verdict"]
    manifest = read_manifest(release)
    assert manifest["audit"]["verdict"] == audit["verdict"] and manifest["profile"] == "robust"
    assert "audit.json" in manifest["files"]
    assert "Artifact audit" in (release / "README.md").read_text()
    res = runner.invoke(app, ["audit", str(release), "--json"])
    assert res.exit_code == 0, res.output
    printed = json.loads(res.output)
    assert {"auc", "ci", "n_pasted", "n_native", "cues", "verdict"} <= set(printed)
    assert printed["verdict"] == audit["verdict"]
    res = runner.invoke(app, ["audit", str(tmp_path)])
    assert res.exit_code != 0 and "not a comcoco release" in res.output


def test_release_audit_folds_keep_a_background_together(release):
    from comcoco.audit import grouped_folds
    from comcoco.release.audit import release_records

    records, total = release_records(release)
    assert total == len(_refs(release)) and records
    groups = [r.fold_group for r in records]
    y = np.asarray([r.label == "pasted" for r in records], dtype=int)
    for train, test in grouped_folds(groups, y, 3, 0):
        assert not {groups[i] for i in train} & {groups[i] for i in test}
    # every composite's records share their background's group
    by_comp: dict[str, set] = {}
    for r in records:
        by_comp.setdefault(r.composite_id, set()).add(r.fold_group)
    assert all(len(g) == 1 for g in by_comp.values())


def test_export_and_audit_in_their_own_process_write_the_same_files(workdir, tmp_path, monkeypatch):
    """A large release is exported and audited in child processes (their memory goes with them): the
    same files, byte for byte, and the same results as in this process."""
    import comcoco.release.builder as B

    here, child = B.start_release(tmp_path / "A", "1.0.0"), B.start_release(tmp_path / "B", "1.0.0")
    for staging in (here, child):
        B.select_stage(workdir, staging, OPTIONS, child=False)
    assert not B._large(here)  # 14 samples: inline unless asked
    assert B.export_stage(workdir, here, OPTIONS, workers=2, child=False) == \
        B.export_stage(workdir, child, OPTIONS, workers=2, child=True)
    inline = B._audit_step(str(here), 0)
    monkeypatch.setattr(B, "CHILD_SELECT_SAMPLES", 1)
    assert B._large(child)
    assert B._audit_step(str(child), 0) == inline
    files = sorted(p.relative_to(here) for p in here.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(child) for p in child.rglob("*") if p.is_file()) and len(files) > 20
    assert all((here / f).read_bytes() == (child / f).read_bytes() for f in files)
    with pytest.raises(ReleaseError, match="the export's process died"):
        B.export_stage(workdir, child, OPTIONS, workers=1, child=True, progress=_Dies())


class _Dies:
    """A progress flag whose unpickling kills the process it arrives in (a stage's child dying)."""

    def __reduce__(self):
        return (os._exit, (9,))


def test_selection_in_its_own_process_writes_the_same_entries(workdir, tmp_path):
    """A large work directory is selected from in a child process (its memory goes with it): the same
    entries and report as in this process; the entries read back share their coordinates' floats."""
    from comcoco.release.builder import ENTRIES_FILE, SELECTION_FILE, select_stage, start_release
    from comcoco.release.export import read_entries

    here, child = start_release(tmp_path / "A", "1.0.0"), start_release(tmp_path / "B", "1.0.0")
    assert select_stage(workdir, here, OPTIONS, child=False) == select_stage(workdir, child, OPTIONS, child=True)
    for name in (ENTRIES_FILE, SELECTION_FILE):
        assert (here / name).read_bytes() == (child / name).read_bytes()
    entries = read_entries(here / ENTRIES_FILE)
    coords = [v for e in entries for p in e.polygons for v in p if v]
    coords += [v for e in entries for o in e.background_objects for p in o["segmentation"] for v in p if v]
    assert len(coords) > 3 * len({v for v in coords})  # values repeat ...
    assert len({id(v) for v in coords}) == len({v for v in coords})  # ... as one object each
    keys = [k for e in entries for k in e.provenance]  # equal keys one string, as in one json.loads of it all:
    assert len({id(k) for k in keys}) == len(set(keys)) < len(keys)  # the REFER pickle's bytes depend on it
    with pytest.raises(ReleaseError, match=r"not-a-workdir.*plan.json: not a built work directory"):  # raised there, told here
        select_stage(tmp_path / "not-a-workdir", start_release(tmp_path / "C", "1.0.0"), OPTIONS, child=True)
