"""SAHM runs on a real (small) release: paired crop/flip, train with checkpoint and resume, eval's
metrics.json, validation with the language baseline, the release hook, and the CLI."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from comcoco.build import build_inline
from comcoco.cli import app
from comcoco.config import ComposeConfig
from comcoco.ids import rng_for
from comcoco.plan import BuildConfig, SourceSpec
from comcoco.release.builder import ReleaseOptions, build_release
from comcoco.release.manifest import read_manifest
from comcoco.sahm.data import ReleaseSamples, TextSubstitute, apply_crop, sample_crop, working_size
from comcoco.sahm.metrics import METRIC_KEYS
from comcoco.sahm.runs import (
    LAST_CKPT,
    LOG_FILE,
    RunError,
    Runtime,
    TrainOptions,
    eval_run,
    read_log,
    train_run,
)
from comcoco.sahm.validate import ValidationOptions, validate_release, write_validation
from comcoco.sources.refer import load_plain_pickle

OPTIONS = ReleaseOptions(proportions={"train": 2, "val": 1, "test": 1}, rows_per_parquet=50,
                         shard_bytes=5_000_000, card_pairs=2)
runner = CliRunner()


@pytest.fixture(autouse=True)
def _quiet_env(monkeypatch, tmp_path):
    """One thread (CI has 2 cores) and no metric weights found in standard places."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    for var in ("COMCOCO_FID_WEIGHTS", "COMCOCO_LPIPS_ALEXNET", "COMCOCO_VALIDATE_OUT"):
        monkeypatch.delenv(var, raising=False)
    yield
    torch.set_num_threads(n)


def build_workdir(source: Path, out: Path) -> Path:
    """A 14-sample build of the small demo source (also used by the data-parallel tests)."""
    config = BuildConfig(limit=14, shard_size=8, seed=0, compose=ComposeConfig(seed=0, objects_per_image=2))
    build_inline(SourceSpec(root=str(source)), out, config)
    return out


def build_small_release(workdir: Path, out: Path) -> Path:
    """Release 1.0.0 of ``workdir`` with refs dealt to train/train/val/test (see ``_resplit``)."""
    rel = build_release(workdir, out, "1.0.0", OPTIONS)
    _resplit(rel)
    sizes = {s: len(ReleaseSamples(rel, s, 64, False)) for s in ("train", "val", "test")}
    assert sizes["train"] >= 8 and sizes["val"] > 0 and sizes["test"] > 0, sizes
    return rel


@pytest.fixture(scope="module")
def workdir(demo_source_small, tmp_path_factory) -> Path:
    return build_workdir(demo_source_small, tmp_path_factory.mktemp("sahm-wd") / "wd")


def _resplit(release: Path) -> None:
    """Deal refs to train/train/val/test by ref id, so the test does not hang on how a tiny build splits
    (small builds may land wholly in train); a test-only edit of the REFER files."""
    cycle = ("train", "train", "val", "test")
    for variant in ("ComCOCO", "ComCOCO+"):
        path = release / variant / "refs(unc).p"
        refs = load_plain_pickle(path)
        for r in refs:
            r["split"] = cycle[int(r["ref_id"]) % 4]
        with open(path, "wb") as fh:
            pickle.dump(refs, fh, protocol=2)


@pytest.fixture(scope="module")
def release(workdir, tmp_path_factory) -> Path:
    return build_small_release(workdir, tmp_path_factory.mktemp("sahm-releases") / "R")


@pytest.fixture(scope="module")
def trained(release, tmp_path_factory) -> dict:
    """Run A: stopped inside epoch 0, then resumed past the epoch end; run B: the same steps at once."""
    base = tmp_path_factory.mktemp("sahm-runs")
    n_train = len(ReleaseSamples(release, "train", 64, False))
    batch = min(8, n_train // 2)
    spe = n_train // batch
    first_steps, total = spe - 1, spe + 1
    opts = TrainOptions(release=str(release), config="tiny", epochs=5, max_steps=first_steps, batch_size=batch,
                        seed=1, checkpoint_every=1)
    a, b = base / "a", base / "b"
    first = train_run(a, opts)
    log_after_first = read_log(a)
    with open(a / LOG_FILE, "a") as fh:  # as if the process had died after logging a later step
        fh.write(json.dumps({"kind": "step", "step": 99, "total": 0.0}) + "\n")
    resumed = train_run(a, TrainOptions(release=str(release), epochs=5, max_steps=total), resume=True)
    whole = train_run(b, TrainOptions(release=str(release), config="tiny", epochs=5, max_steps=total,
                                      batch_size=batch, seed=1))
    return {"a": a, "b": b, "first": first, "log_first": log_after_first, "resumed": resumed, "whole": whole,
            "spe": spe, "batch": batch, "first_steps": first_steps, "total": total}


# --- data ----------------------------------------------------------------------------------------------


def test_paired_crop_flip_moves_image_ground_truth_and_mask_together():
    h, w = 60, 90
    yy, xx = torch.meshgrid(torch.arange(h) / h, torch.arange(w) / w, indexing="ij")
    mask = torch.zeros(1, h, w)
    mask[0, 10:25, 5:20] = 1  # an object near the left edge: a flip moves it to the right
    image = torch.stack([xx, mask[0], yy])
    gt = torch.stack([xx, torch.zeros(h, w), yy])
    flips = set()
    for seed in range(24):
        box = sample_crop(mask, rng_for(seed, "t"), min_scale=0.5)
        assert box.left <= 5 and box.left + box.width >= 20 and box.top <= 10 and box.top + box.height >= 25
        img, g, m = apply_crop(image, gt, mask, box, 32)
        assert img.shape == g.shape == (3, 32, 32) and m.shape == (1, 32, 32)
        assert set(m.unique().tolist()) <= {0.0, 1.0} and m.sum() > 0
        assert torch.equal(img[1] >= 0.5, m[0] > 0)  # the mask lands on the object's pixels
        assert torch.allclose(img[[0, 2]], g[[0, 2]])  # ground truth has the same geometry
        cols = m[0].nonzero()[:, 1].float().mean()
        assert (cols > 16) == box.flip  # flipped crops put the object on the right
        assert (img[0, :, -1].mean() < img[0, :, 0].mean()) == box.flip
        flips.add(box.flip)
    assert flips == {True, False}


def test_release_samples_keep_real_objects_aligned(release):
    ds = ReleaseSamples(release, "train", 64, True, seed=0)
    checked = 0
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        for i in range(0, len(ds), 4):
            it = ds[i]
            assert it["image"].shape == (3, 64, 64) and it["mask"].shape == (1, 64, 64)
            changed = (it["image"] - it["ground_truth"]).abs().amax(0) > 0.08  # the pasted object
            near = F.max_pool2d(it["mask"][None], 5, 1, 2)[0, 0] > 0
            assert changed.sum() > 0 and int((changed & ~near).sum()) == 0, (epoch, i)
            flipped = F.max_pool2d(it["mask"].flip(-1)[None], 5, 1, 2)[0, 0] > 0
            checked += int((changed & ~flipped).sum()) > 0  # a misaligned mask would be caught
    assert checked > 0
    again = ReleaseSamples(release, "train", 64, True, seed=0)
    again.set_epoch(1)
    assert torch.equal(again[0]["image"], ds[0]["image"])  # crops depend on (seed, epoch, index) only
    again.set_epoch(0)
    assert not torch.equal(again[0]["image"], ds[0]["image"])


def test_working_size_covers_the_smallest_crop_and_never_upscales():
    assert working_size(480, 640, 64, 0.6) == (107, 143)  # ceil(64 / 0.6) = 107 on the shorter side
    assert working_size(640, 427, 64, 0.5) == (192, 128)
    assert working_size(480, 640, 480, 0.6) == (480, 640)  # the paper's 480² keeps full resolution
    assert working_size(375, 500, 224, 0.6) == (374, 499)  # ceil(224 / 0.6) = 374
    assert working_size(375, 500, 256, 0.6) == (375, 500)
    for hh, ww in ((480, 640), (612, 612), (333, 500)):
        sh, sw = working_size(hh, ww, 64, 0.6)
        assert min(round(0.6 * sh), round(0.6 * sw)) >= 64 - 1  # the smallest crop still covers 64²


def test_cached_items_are_the_same_bytes_and_the_cache_is_bounded(release):
    plain = ReleaseSamples(release, "train", 64, True, seed=0, cache_mb=0)
    cached = ReleaseSamples(release, "train", 64, True, seed=0, cache_mb=64)
    for epoch in (0, 1):
        plain.set_epoch(epoch)
        cached.set_epoch(epoch)
        for i in range(len(plain)):
            a, b = plain[i], cached[i]
            for key in ("image", "ground_truth", "mask"):
                assert torch.equal(a[key], b[key]), (epoch, i, key)
            assert a["expression"] == b["expression"] and a["sample_id"] == b["sample_id"]
    samples = {plain[i]["sample_id"] for i in range(len(plain))}
    assert plain._cached_bytes == 0 and len(cached._cache) == len(samples)
    assert 0 < cached._cached_bytes <= 64 * 2**20
    one = next(iter(cached._cache.values()))
    tight = ReleaseSamples(release, "train", 64, True, seed=0, cache_mb=1.5 * sum(t.numel() for t in one) / 2**20)
    for i in range(len(tight)):
        tight[i]
    assert len(tight._cache) == 1  # the budget holds one sample; the rest are decoded on demand


# --- train / resume / eval -----------------------------------------------------------------------------


def test_resume_continues_from_the_saved_step(trained):
    a, spe, first, total = trained["a"], trained["spe"], trained["first_steps"], trained["total"]
    assert trained["first"].step == first and [r["step"] for r in trained["log_first"]] == list(range(1, first + 1))
    assert trained["resumed"].step == total and trained["first"].steps_per_epoch == spe
    log = read_log(a)
    # appended after the checkpoint's step; the stale step 99 was dropped
    assert [r["step"] for r in log if r["kind"] == "step"] == list(range(1, total + 1))
    epochs = [r for r in log if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1] and epochs[0]["step"] == spe
    assert 0.0 <= epochs[0]["val"]["iou_mean"] <= 1.0
    assert epochs[0]["lr"] == pytest.approx(6e-4 * 0.97)
    best = json.loads((a / "checkpoints/best.json").read_text())
    assert (a / "checkpoints/best.pt").is_file() and best["step"] == spe
    config = json.loads((a / "config.json").read_text())
    assert config["options"]["batch_size"] == trained["batch"] and config["sahm"]["name"] == "tiny"
    assert (a / "tokenizer/spiece.model").is_file()
    # the resumed run equals an uninterrupted one
    ga = torch.load(a / LAST_CKPT, weights_only=True)["generator"]
    gb = torch.load(trained["b"] / LAST_CKPT, weights_only=True)["generator"]
    assert max(float((ga[k].float() - gb[k].float()).abs().max()) for k in ga) < 1e-5
    la = [r["total"] for r in log if r["kind"] == "step"]
    lb = [r["total"] for r in read_log(trained["b"]) if r["kind"] == "step"]
    assert la == pytest.approx(lb, rel=1e-5)


def test_existing_run_needs_resume_and_matching_options(trained, release):
    with pytest.raises(RunError, match="--resume"):
        train_run(trained["a"], TrainOptions(release=str(release), max_steps=5))
    with pytest.raises(RunError, match="seed"):
        train_run(trained["a"], TrainOptions(release=str(release), seed=7, max_steps=5), resume=True)


def test_eval_writes_exactly_the_seven_metrics(trained):
    run = trained["a"]
    seven = eval_run(run, split="test", checkpoint="last", runtime=Runtime(device="cpu"))
    written = json.loads((run / "metrics.json").read_text())
    assert list(written) == sorted(METRIC_KEYS) and set(seven) == set(METRIC_KEYS)
    for key in ("fid", "lpips"):
        assert written[key]["value"] is None and written[key]["reason"].startswith("not computed: no ")
    n_test = len(ReleaseSamples(json.loads((run / "config.json").read_text())["options"]["release"], "test",
                                64, False))
    for key in ("psnr", "ssim", "iou_mean", "iou_overall", "pr@0.7"):
        assert isinstance(written[key]["value"], float) and written[key]["n"] == n_test
    assert 0.0 <= written["iou_mean"]["value"] <= 1.0 and 0.0 < written["ssim"]["value"] <= 1.0
    detail = json.loads((run / "eval-test.json").read_text())
    assert detail["step"] == trained["total"] and detail["items"] == n_test and "tagging_accuracy" in detail["metrics"]
    with pytest.raises(RunError, match="missing.pt"):
        eval_run(run, fid_net=run / "missing.pt")


# --- validation ----------------------------------------------------------------------------------------


def test_text_substitutes(release):
    test = ReleaseSamples(release, "test", 64, False)
    vocab = ["apple", "blue", "left", "zebra"]
    rnd, null = TextSubstitute(test, "random", vocab, seed=0), TextSubstitute(test, "null", vocab)
    for i in range(len(test)):
        words = rnd.text(i).split()
        assert set(words) <= set(vocab) and len(words) == max(1, len(test.expression(i).split()))
        assert null.text(i) == ""
    assert rnd.text(0) == TextSubstitute(test, "random", vocab, seed=0).text(0)
    assert null[0]["expression"] == "" and torch.equal(null[0]["mask"], test[0]["mask"])


@pytest.fixture(scope="module")
def validated(release, tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("sahm-validate") / "run"
    return validate_release(release, out, ValidationOptions(config="auto", steps=2, batch_size=4)), out


def test_blind_twin_side_by_side_gives_the_bytes_of_a_run_alone(validated, release, tmp_path):
    """On two free cores the blind twin trains in its own process while the full model trains; its
    weights are those of the same training run alone."""
    from comcoco.sahm.runs import TrainOptions, train_run
    from comcoco.sahm.validate import _twins_side_by_side

    _, out = validated
    opts = TrainOptions(**json.loads((out / "blind" / "config.json").read_text())["options"])
    if not _twins_side_by_side(ValidationOptions().runtime, opts):
        pytest.skip("fewer than two free cores: the twins train one after the other")
    train_run(tmp_path / "alone", opts)
    side = torch.load(out / "blind" / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)["generator"]
    alone = torch.load(tmp_path / "alone" / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)["generator"]
    assert side.keys() == alone.keys()
    assert all(torch.equal(side[k], alone[k]) for k in side)
    full = torch.load(out / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)["generator"]
    assert not all(torch.equal(side[k], full[k]) for k in side)  # the twin is not the full model


def test_validate_reports_metrics_and_language_baseline(validated, release):
    result, out = validated
    assert {"title", "metrics", "notes", "language_baseline", "sahm", "run"} <= set(result)
    assert result["run"]["config"] == "tiny" and result["run"]["steps"] == 2 and result["run"]["device"] == "cpu"
    assert result["run"]["precision"] == "fp32" and result["run"]["world_size"] == 1
    assert "(batch 4) on the ComCOCO train split" in result["notes"] and "on cpu (fp32)" in result["notes"]
    n_test = result["run"]["test_items"]
    lb = result["language_baseline"]
    for mode in ("original", "random", "null"):
        assert lb[mode]["n"] == n_test
        for key in ("iou_mean", "iou_overall", "pr@0.7"):
            assert isinstance(lb[mode][key], float) and 0.0 <= lb[mode][key] <= 1.0
    run_metrics = json.loads((out / "metrics.json").read_text())
    assert lb["original"]["iou_mean"] == run_metrics["iou_mean"]["value"]
    assert result["metrics"]["iou_mean, random text"] == round(lb["random"]["iou_mean"], 4)
    assert str(result["metrics"]["fid"]).startswith("not computed")
    assert lb["verdict"].startswith("inconclusive")  # 2 steps on a handful of objects cannot be judged
    assert lb["blind"]["n"] == n_test and (out / "blind" / "checkpoints" / "last.pt").is_file()
    blind_cfg = json.loads((out / "blind" / "config.json").read_text())["options"]
    assert blind_cfg["text"] == "null" and blind_cfg["max_steps"] == 2
    assert result["metrics"]["iou_mean, trained without text"] == round(lb["blind"]["iou_mean"], 4)
    test = ReleaseSamples(release, "test", 64, False)
    assert lb["objects"] == len(set(test.ref_ids()))
    # Pastes per composite, read from the REFER file itself: the item's target, its other targets, its decoys.
    refs = {r["ref_id"]: r["comcoco"] for r in load_plain_pickle(release / "ComCOCO" / "refs(unc).p")}
    counts = [1 + len(refs[r]["other_objects_ann_ids"]) + len(refs[r].get("decoy_ann_ids", [])) for r in test.ref_ids()]
    assert test.pasted_counts() == counts
    rows = lb["blind_by_pasted"]
    assert len(set(counts)) > 1  # the robust build: lone targets, pairs and decoys
    assert [r["pasted"] for r in rows] == sorted(set(counts))
    assert sum(r["items"] for r in rows) == n_test
    assert "Trained without text, by objects pasted per composite: " in result["notes"]
    assert [r["objects"] for r in rows] == [len({g for g, c in zip(test.ref_ids(), counts, strict=True) if c == n})
                                            for n in sorted(set(counts))]
    assert out.is_dir() and not (release / "sahm-runs").exists()
    # A published release never changes: the report goes beside it, every byte of the release stays.
    before = {p: p.read_bytes() for p in sorted(release.rglob("*")) if p.is_file()}
    path = write_validation(release, result)
    assert path == release.with_name(release.name + ".validation") / "validation.json"
    assert json.loads(path.read_text())["language_baseline"]["null"] == lb["null"]
    assert result["title"] in (path.parent / "README.md").read_text()
    assert {p: p.read_bytes() for p in sorted(release.rglob("*")) if p.is_file()} == before


def test_validation_while_building_fills_the_card(workdir, tmp_path):
    options = ValidationOptions(steps=1, runtime=Runtime(device="cpu"))
    rel = build_release(workdir, tmp_path / "R", "2.0.0", OPTIONS, validate=options)
    shipped = json.loads((rel / "validation/validation.json").read_text())
    assert shipped["run"]["steps"] == 1 and shipped["language_baseline"]["verdict"]
    assert set(shipped["sahm"]) == set(METRIC_KEYS)
    assert "validation/validation.json" in read_manifest(rel)["files"]
    assert not any("sahm-runs" in f or f.endswith(".pt") for f in read_manifest(rel)["files"])
    readme = (rel / "README.md").read_text()
    assert "SAHM validation (tiny, 1 step)" in readme and "iou_mean" in readme
    assert (tmp_path / "R" / "sahm-runs" / "comcoco-2.0.0" / LAST_CKPT).is_file()


# --- CLI -----------------------------------------------------------------------------------------------


def _feature_net(path: Path) -> Path:
    """A small TorchScript stand-in for an Inception feature network (tf input convention)."""

    class Pool(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.adaptive_avg_pool2d(x, 2).flatten(1)

    torch.jit.script(Pool()).save(str(path))
    return path


def test_cli_train_eval_validate(trained, validated, release, tmp_path):
    res = runner.invoke(app, ["sahm", "train", str(tmp_path / "nope"), "--out", str(tmp_path / "r")])
    assert res.exit_code == 3 and "error:" in res.output and "release not found" in res.output
    res = runner.invoke(app, ["sahm", "train", str(release), "--out", str(trained["a"]), "--steps", "5",
                              "--no-progress"])
    assert res.exit_code == 3 and "--resume" in res.output
    res = runner.invoke(app, ["sahm", "eval", str(tmp_path)])
    assert res.exit_code == 3 and "not a SAHM run folder" in res.output

    res = runner.invoke(app, ["sahm", "train", str(release), "--out", str(tmp_path / "cli"), "--steps", "1",
                              "--batch-size", "8", "--eval-split", "none", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "step 1" in res.output and [r["step"] for r in read_log(tmp_path / "cli")] == [1]

    net = _feature_net(tmp_path / "features.pt")
    res = runner.invoke(app, ["sahm", "eval", str(tmp_path / "cli"), "--split", "test", "--fid-net", str(net)])
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert set(metrics) == set(METRIC_KEYS)
    assert isinstance(metrics["fid"]["value"], float) and np.isfinite(metrics["fid"]["value"])
    assert metrics["fid"]["feature_dim"] == 12 and metrics["lpips"]["value"] is None
    detail = json.loads((tmp_path / "cli" / "eval-test.json").read_text())
    assert detail["fid_network"] == str(net) and detail["lpips_alexnet"] is None

    _, out = validated  # already trained to 2 steps: validate continues the run (no new steps) and evaluates
    before = {p: p.read_bytes() for p in sorted(release.rglob("*")) if p.is_file()}
    res = runner.invoke(app, ["validate", str(release), "--out", str(out), "--steps", "2", "--batch-size", "4",
                              "--device", "cpu", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "language baseline:" in res.output and "iou_mean, null text" in res.output
    report = release.with_name(release.name + ".validation") / "validation.json"
    assert json.loads(report.read_text())["run"]["steps"] == 2 and f"written  {report}" in res.output
    assert {p: p.read_bytes() for p in sorted(release.rglob("*")) if p.is_file()} == before  # never changed
