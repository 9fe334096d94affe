"""Validating a release with SAHM: train briefly, evaluate on test, and run the language baseline.

The language baseline (paper Table 8) evaluates the same model on the test split three times: with the
original expressions, with random text (the same number of words drawn, seeded, from the release's
training vocabulary) and with null text (the empty expression). On a dataset without shortcuts mask IoU
collapses without the expression; if it stays high the referred object can be found without language,
e.g. from compositing artefacts. The verdict is only drawn when the original-text IoU is high enough
to judge (``JUDGE_MIN_IOU``); a short CPU run is a smoke test, not a measurement.

One ``ValidationOptions`` object configures validation from the CLI (``comcoco validate``, ``comcoco
release --validate``), the release builder and Python. A release validated while it is built ships the
result (``validation/validation.json`` and the card's section); an existing release is never changed:
``write_validation`` puts the report beside it, in ``RELEASES/comcoco-X.Y.Z.validation/``.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from comcoco.ids import rng_for
from comcoco.io import write_text_atomic
from comcoco.pool import available_cores
from comcoco.sahm.data import TEXT_MODES, DataError, ReleaseSamples, TextSubstitute, make_collate
from comcoco.sahm.distributed import SMALL_INPUT, cpu_threads, resolve_device
from comcoco.sahm.metrics import METRIC_KEYS, not_computed
from comcoco.sahm.runs import (
    CONFIG_FILE,
    RunError,
    Runtime,
    TrainOptions,
    TrainSummary,
    evaluate_dataset,
    evaluate_split,
    flat_metrics,
    load_run,
    train_run,
)
from comcoco.text.syntax import split_words

VALIDATION_FILE = "validation/validation.json"  # inside a release being built (comcoco.release.builder)
REPORT_SUFFIX = ".validation"  # beside a published release: RELEASES/comcoco-X.Y.Z.validation/
DEFAULT_STEPS = {"tiny": 300, "paper": 3000}
JUDGE_MIN_IOU = 0.3  # below this the original-text model is too weak for a shortcut verdict
COLLAPSE_RATIO = 0.5  # "collapse": IoU without language at most this share of the original's
MIN_JUDGE_OBJECTS = 20  # fewer referred objects in the split than this: too few to judge
BOOTSTRAP_RESAMPLES = 2000
RUNS_DIR = "sahm-runs"
BLIND_DIR = "blind"  # RUN/blind: the model trained on empty expressions


@dataclass(frozen=True)
class ValidationOptions:
    """How a release is validated; ``config="auto"`` means paper on CUDA, tiny on CPU."""

    config: str = "auto"
    steps: int | None = None  # None: 300 for tiny, 3000 for paper
    batch_size: int | None = None
    variant: str = "ComCOCO"
    split: str = "test"
    seed: int = 0
    fid_net: str | None = None
    alexnet: str | None = None
    blind: bool = True  # also train a model on empty expressions (RUN/blind), the direct shortcut test
    runtime: Runtime = Runtime()
    run_dir: str | None = None  # None: <releases>/sahm-runs/comcoco-X.Y.Z (a fresh name when validating a release)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ValidationOptions:
        data = dict(data)
        return cls(runtime=Runtime(**data.pop("runtime", {})), **data)


def resolve_config(name: str, device: str) -> str:
    if name == "auto":
        cuda = device != "cpu" and torch.cuda.is_available()
        return "paper" if cuda else "tiny"
    if name not in ("tiny", "paper"):
        raise RunError(f"--config must be auto, tiny or paper, got {name!r}")
    return name


def default_run_dir(release: str | os.PathLike[str]) -> Path:
    """``<releases>/sahm-runs/comcoco-X.Y.Z``: beside the release, never inside it (it is not shipped)."""
    p = Path(release).resolve()
    return p.parent / RUNS_DIR / p.name.removesuffix(".incomplete")


def judge_language(ious: dict[str, Sequence[float]], groups: Sequence[Any], seed: int = 0,
                   resamples: int = BOOTSTRAP_RESAMPLES) -> dict[str, Any]:
    """Compare per-item IoU with original text to random and null text; returns ratios, intervals, verdict.

    ``ious`` maps each text mode to per-item IoU (same items, same order); ``groups`` names each item's
    referred object. Items of one object share an image and are not independent, so the 95 % interval of
    each ratio mean(mode) / mean(original) comes from a bootstrap over objects, not items. Verdicts:

    - *inconclusive*: fewer than ``MIN_JUDGE_OBJECTS`` objects, or original iou_mean below
      ``JUDGE_MIN_IOU`` (the model is too weak to say what it relies on);
    - *collapses*: both ratios at most ``COLLAPSE_RATIO`` and both intervals below 1;
    - *drops*: both intervals below 1 but a ratio above ``COLLAPSE_RATIO`` (language helps, yet much of the
      object is found without it);
    - *does not collapse*: an interval reaches 1 (no evidence that the expression is needed).

    With ``ious["blind"]`` (a second model trained on empty expressions, evaluated with null text), a
    blind ratio above ``COLLAPSE_RATIO`` is reported as a *shortcut* first: the Table 8 check alone cannot
    see one, because a model that learned to read breaks without text even where the object could be
    found by other means (benchmarks/sahm_language.py measures both on controlled data).
    """
    g, n_obj = _object_index(groups)
    out: dict[str, Any] = {"objects": n_obj, "items": len(g)}
    orig = np.asarray(ious["original"], dtype=np.float64)
    if len(g) == 0 or orig.mean() <= 0:
        out["ratio"] = {m: None for m in ("random", "null", "blind") if m in ious}
        out["verdict"] = "inconclusive: the model finds no object with the original text; train longer"
        return out
    out["ratio"], out["ratio_ci95"] = _ratios(ious, [m for m in ("random", "null", "blind") if m in ious], g,
                                              n_obj, seed, resamples)
    below = {mode: ci[1] < 1.0 for mode, ci in out["ratio_ci95"].items()}
    worst = max(out["ratio"]["random"], out["ratio"]["null"])
    blind = out["ratio"].get("blind")
    blind_note = f" (a model trained without expressions reaches {blind:.0%} of its IoU)" if blind is not None else ""
    below.pop("blind", None)
    if n_obj < MIN_JUDGE_OBJECTS:
        out["verdict"] = (f"inconclusive: the split has {n_obj} referred objects, fewer than "
                          f"{MIN_JUDGE_OBJECTS} needed to judge")
    elif orig.mean() < JUDGE_MIN_IOU:
        out["verdict"] = (f"inconclusive: original-text IoU {orig.mean():.3f} < {JUDGE_MIN_IOU} is too low to "
                          "judge a shortcut; train longer")
    elif blind is not None and blind > COLLAPSE_RATIO:
        out["verdict"] = (f"shortcut: a model trained without expressions finds the object at {blind:.0%} of the "
                          "full model's IoU (it can be found without language, e.g. from compositing artefacts)")
    elif all(below.values()) and worst <= COLLAPSE_RATIO:
        out["verdict"] = "IoU collapses without the expression: no language shortcut detected" + blind_note
    elif all(below.values()):
        out["verdict"] = (f"IoU drops without the expression but keeps {worst:.0%} of the original: the object "
                          "is partly found without language (possible shortcut, e.g. compositing artefacts)"
                          + blind_note)
    else:
        out["verdict"] = ("IoU does not collapse without the expression: the object may be found without "
                          "language (possible shortcut, e.g. compositing artefacts)" + blind_note)
    return out


def _object_index(groups: Sequence[Any]) -> tuple[np.ndarray, int]:
    """Each item's object as an index into the distinct objects (sorted), and how many there are."""
    keys = sorted({g: None for g in groups}, key=str)
    index = {k: i for i, k in enumerate(keys)}
    return np.array([index[x] for x in groups], dtype=np.int64), len(keys)


def _ratios(ious: dict[str, Sequence[float]], modes: Sequence[str], g: np.ndarray, n_obj: int, seed: int,
            resamples: int) -> tuple[dict[str, float], dict[str, list[float]]]:
    """mean(mode) / mean(original) for each mode, and its 95 % interval from a bootstrap over objects
    (``g``: each item's object index in ``range(n_obj)``); the original's mean must be positive."""
    orig = np.asarray(ious["original"], dtype=np.float64)
    counts = np.bincount(g, minlength=n_obj).astype(np.float64)
    rng = rng_for(seed, "sahm-language-bootstrap")
    draws = np.stack([np.bincount(rng.integers(n_obj, size=n_obj), minlength=n_obj)
                      for _ in range(resamples)]).astype(np.float64)  # (B, objects) resampling weights
    boot_orig = (draws @ np.bincount(g, weights=orig, minlength=n_obj)) / np.maximum(draws @ counts, 1)
    ratio, ci95 = {}, {}
    for mode in modes:
        vals = np.asarray(ious[mode], dtype=np.float64)
        ratio[mode] = float(vals.mean() / orig.mean())
        boot = ((draws @ np.bincount(g, weights=vals, minlength=n_obj)) / np.maximum(draws @ counts, 1)
                / np.maximum(boot_orig, 1e-12))
        lo, hi = np.quantile(boot, [0.025, 0.975])
        ci95[mode] = [float(lo), float(hi)]
    return ratio, ci95


def blind_by_pasted(ious: dict[str, Sequence[float]], groups: Sequence[Any], pasted: Sequence[int], seed: int = 0,
                    resamples: int = BOOTSTRAP_RESAMPLES) -> list[dict[str, Any]]:
    """Where a model that never read finds the target: the blind share by how many objects were pasted
    into each item's composite (its targets and decoys), one row per count, with the bootstrap interval
    over that row's objects. A lone paste is found without reading; the share should fall as pastes
    (more targets, decoys) are added, and a row that stays high shows where the shortcut lives.
    Empty when every item's composite holds the same number of pastes (the paper profile: one)."""
    pasted_arr = np.asarray(pasted, dtype=np.int64)
    sizes = sorted(set(pasted_arr.tolist()))
    if "blind" not in ious or len(sizes) < 2:
        return []
    orig, blind = np.asarray(ious["original"], dtype=np.float64), np.asarray(ious["blind"], dtype=np.float64)
    rows = []
    for n in sizes:
        sel = np.flatnonzero(pasted_arr == n)
        g, n_obj = _object_index([groups[i] for i in sel])
        row: dict[str, Any] = {"pasted": int(n), "objects": n_obj, "items": len(sel),
                               "original": float(orig[sel].mean()), "blind": float(blind[sel].mean())}
        if row["original"] > 0:
            ratio, ci95 = _ratios({"original": orig[sel], "blind": blind[sel]}, ["blind"], g, n_obj, seed, resamples)
            row["ratio"], row["ratio_ci95"] = ratio["blind"], ci95["blind"]
        rows.append(row)
    return rows


def language_baseline(trainer: Any, test: Any, vocabulary: list[str], batch_size: int,
                      num_workers: int = 0, seed: int = 0, blind: Any = None,
                      original: tuple[dict[str, Any], list[float]] | None = None) -> dict[str, Any]:
    """Mask IoU of one model on ``test`` with original, random and null text — and of ``blind`` (a trainer
    whose model never saw an expression) with null text — and the verdict of ``judge_language``
    (bootstrap over the split's referred objects). ``test`` is a ``ReleaseSamples`` or any dataset with
    ``expression(i)``, ``ref_ids()`` and ``split``. ``original`` (metrics and per-item IoU of the same
    model on the same items with their expressions, from ``evaluate_split``) saves that pass."""
    out: dict[str, Any] = {
        "split": test.split,
        "random_text": "as many words as the original, drawn uniformly (seeded) from the training vocabulary",
        "null_text": "the empty expression",
    }
    if len(test) == 0:
        out["verdict"] = not_computed(f"the {test.split} split is empty")["reason"]
        return out
    per_item: dict[str, list[float]] = {}
    for mode in TEXT_MODES:
        if mode == "original" and original is not None:
            result, ious = original
        else:
            result, ious = evaluate_dataset(trainer, TextSubstitute(test, mode, vocabulary, seed), batch_size,
                                            num_workers=num_workers)
        out[mode] = {k: result[k]["value"] for k in ("iou_mean", "iou_overall", "pr@0.7")}
        out[mode]["n"] = len(ious)
        per_item[mode] = ious
    if blind is not None:
        result, ious = evaluate_dataset(blind, TextSubstitute(test, "null", vocabulary, seed), batch_size,
                                        num_workers=num_workers)
        out["blind"] = {k: result[k]["value"] for k in ("iou_mean", "iou_overall", "pr@0.7")}
        out["blind"]["n"] = len(ious)
        out["blind_model"] = "the same configuration and budget, trained on empty expressions; null text"
        per_item["blind"] = ious
    out.update(judge_language(per_item, test.ref_ids(), seed))
    if blind is not None and hasattr(test, "pasted_counts"):
        out["blind_by_pasted"] = blind_by_pasted(per_item, test.ref_ids(), test.pasted_counts(), seed)
    return out


def _ratio_note(baseline: dict[str, Any]) -> str:
    """The share of IoU kept without language, with its interval, e.g. ``(IoU kept: random text 0.21
    [0.15, 0.28], null text …, trained without text …; 95 % intervals over 160 objects)``."""
    cis = baseline.get("ratio_ci95")
    if not cis:
        return ""
    names = {"random": "random text", "null": "null text", "blind": "trained without text"}
    parts = [f"{names[m]} {baseline['ratio'][m]:.2f} [{cis[m][0]:.2f}, {cis[m][1]:.2f}]" for m in names if m in cis]
    return f" (IoU kept: {', '.join(parts)}; 95 % intervals over {baseline['objects']} objects)"


def pasted_note(baseline: dict[str, Any]) -> str:
    """``blind_by_pasted`` in one line, e.g. ``trained without text, by objects pasted per composite:
    1: 0.81 (6 objects), 2: 0.57 (8 objects), …``; empty when there is no breakdown."""
    rows = baseline.get("blind_by_pasted") or []
    parts = []
    for r in rows:
        objects = f"{r['objects']} object{'' if r['objects'] == 1 else 's'}"
        parts.append(f"{r['pasted']}: {r['ratio']:.2f} ({objects})" if r.get("ratio") is not None
                     else f"{r['pasted']}: n/a ({objects}, full IoU 0)")
    return f"trained without text, by objects pasted per composite: {', '.join(parts)}" if parts else ""


def _round(v: Any) -> Any:
    return round(v, 4) if isinstance(v, float) else v


def _run_folder(release: Path, out: str | os.PathLike[str] | None, fresh: bool) -> Path:
    """Where the run goes: ``out``, else beside the release; with ``fresh`` a new ``-2``, ``-3``… name."""
    run = Path(out) if out else default_run_dir(release)
    if fresh:
        base, n = run, 1
        while run.exists():
            n += 1
            run = base.with_name(f"{base.name}-{n}")
    return run


def _card_metrics(seven: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any]:
    """The flat metrics the card shows: the seven, and IoU with random / null text and without text."""
    metrics = {k: _round(v) for k, v in flat_metrics(seven).items()}
    for mode in ("random", "null"):
        if mode in baseline:
            metrics[f"iou_mean, {mode} text"] = _round(baseline[mode]["iou_mean"])
    if "blind" in baseline:
        metrics["iou_mean, trained without text"] = _round(baseline["blind"]["iou_mean"])
    return metrics


def _twins_side_by_side(runtime: Runtime, options: TrainOptions) -> bool:
    """Whether the blind twin may train in a second process while the full model trains: on the CPU,
    outside torchrun, one torch thread per model (``cpu_threads``) and at least two cores free."""
    device = resolve_device(runtime.device)
    omp = os.environ.get("OMP_NUM_THREADS")
    small = options.sahm_config().image_size <= SMALL_INPUT
    one_thread = runtime.threads == 1 or (runtime.threads is None and (omp == "1" or (omp is None and small)))
    return (device.type == "cpu" and "WORLD_SIZE" not in os.environ and one_thread
            and available_cores() >= 2)


def _train_blind(run: Path, options: TrainOptions, runtime: Runtime) -> None:
    train_run(run, options, runtime, resume=(run / CONFIG_FILE).is_file())


def _train_twins(run: Path, blind_run: Path | None, options: TrainOptions, runtime: Runtime) -> TrainSummary:
    """The full model, and its blind twin (empty expressions) when ``blind_run`` is given.

    The twins share nothing but their inputs, so on a CPU with two free cores the twin trains in a second
    process at the same time (each model on one thread): the same bytes as one after the other
    (tests/test_sahm_runs.py), in half the wall time.
    """
    resume = (run / CONFIG_FILE).is_file()
    if blind_run is None:
        return train_run(run, options, runtime, resume=resume)
    blind_opts = replace(options, text="null")
    if not _twins_side_by_side(runtime, options):
        summary = train_run(run, options, runtime, resume=resume)
        _train_blind(blind_run, blind_opts, runtime)
        return summary
    proc = multiprocessing.get_context("spawn").Process(target=_train_blind, args=(blind_run, blind_opts, runtime),
                                                         name="sahm-blind-twin")
    proc.start()
    try:
        summary = train_run(run, options, runtime, resume=resume)
    except BaseException:
        proc.terminate()
        proc.join()
        raise
    proc.join()
    if proc.exitcode != 0:
        raise RunError(f"{blind_run}: the blind twin's training failed (exit code {proc.exitcode}; its error is "
                       "printed above); the same command continues both runs")
    return summary


def validate_release(
    release: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    options: ValidationOptions | None = None,
    fresh: bool = False,
) -> dict[str, Any]:
    """Train (or continue) a run on ``release``, evaluate it, run the language baseline; returns the
    validation dictionary (``title``, ``metrics``, ``notes``, plus details). Writes nothing into the release.

    An existing run folder is continued (its config must match) unless ``fresh``, which picks a new
    folder name instead.
    """
    o = options or ValidationOptions()
    out = out if out is not None else o.run_dir
    started = time.perf_counter()
    release = Path(release).resolve()
    config = resolve_config(o.config, o.runtime.device)
    steps = o.steps if o.steps is not None else DEFAULT_STEPS[config]
    if steps < 1:
        raise RunError(f"--steps must be >= 1, got {steps}")
    run = _run_folder(release, out, fresh)
    train_opts = TrainOptions(release=str(release), config=config, variant=o.variant, epochs=10**6,
                              max_steps=steps, batch_size=o.batch_size, seed=o.seed, eval_split=None)
    blind_run = run / BLIND_DIR
    summary = _train_twins(run, blind_run if o.blind else None, train_opts, o.runtime)
    if summary.rank != 0:  # under torchrun rank 0 evaluates alone
        return {}
    runtime = replace(o.runtime, progress=False)
    seven, original_ious = evaluate_split(run, split=o.split, checkpoint="last", fid_net=o.fid_net,
                                          alexnet=o.alexnet, runtime=runtime, batch_size=o.batch_size)

    trainer, data, _ = load_run(run, "last", runtime)
    try:
        train = ReleaseSamples(release, "train", trainer.cfg.image_size, False, o.variant)
        test = ReleaseSamples(release, o.split, trainer.cfg.image_size, False, o.variant,
                              cache_mb=o.runtime.cache_mb)
    except DataError as exc:
        raise RunError(str(exc)) from None
    trainer.collate = make_collate(trainer.tokenizer, trainer.cfg.max_text_len, test.category_names())
    vocabulary = sorted({w for e in train.expressions() for w in split_words(e)})
    batch = TrainOptions(**data["options"]).resolved_batch()
    blind = load_run(blind_run, "last", runtime)[0] if o.blind else None
    if blind is not None:
        blind.collate = make_collate(blind.tokenizer, blind.cfg.max_text_len, test.category_names())
    with cpu_threads(runtime, trainer.device, trainer.cfg.image_size):
        baseline = language_baseline(trainer, test, vocabulary, batch, seed=o.seed, blind=blind,
                                     original=(seven, original_ious))

    metrics = _card_metrics(seven, baseline)
    seconds = round(time.perf_counter() - started, 1)
    notes = (
        f"SAHM ({config} configuration, {trainer.cfg.image_size}² input) trained for {summary.step} steps "
        f"(batch {batch}{f' × {summary.world_size} data-parallel processes' if summary.world_size > 1 else ''}) "
        f"on the {o.variant} train split ({len(train)} items) on {summary.device} ({summary.precision})"
        f"{', with a twin trained on empty expressions' if blind is not None else ''}, evaluated "
        f"on {o.split} ({len(test)} items) in {seconds} s. Language baseline (paper Table 8): {baseline['verdict']}"
        f"{_ratio_note(baseline)}. "
        + (f"{note[0].upper()}{note[1:]}. " if (note := pasted_note(baseline)) else "")
        + "Metrics that need weight files report 'not computed' with the reason. "
        + ("A short CPU run of the tiny model is a smoke test of the release, not a result comparable "
           "with the paper's." if config == "tiny" else "")
    ).strip()
    return {
        "title": f"SAHM validation ({config}, {summary.step} step{'' if summary.step == 1 else 's'})",
        "metrics": metrics,
        "notes": notes,
        "sahm": {k: seven[k] for k in METRIC_KEYS},
        "language_baseline": baseline,
        "run": {"path": str(run), "config": config, "steps": summary.step, "epochs": summary.epoch,
                "batch_size": batch, "device": summary.device, "world_size": summary.world_size,
                "precision": summary.precision,
                "variant": o.variant, "split": o.split, "train_items": len(train), "test_items": len(test),
                "seconds": seconds},
    }


def report_dir(release: str | os.PathLike[str]) -> Path:
    """``RELEASES/comcoco-X.Y.Z.validation``: where an existing release's validation goes (beside it)."""
    p = Path(release).resolve()
    return p.with_name(p.name + REPORT_SUFFIX)


def write_validation(release: str | os.PathLike[str], result: dict[str, Any]) -> Path:
    """Record ``result`` beside ``release``: ``validation.json`` and a ``README.md`` with the card's
    validation section. The release itself is never touched, so its manifest, its ``dist/`` and every
    earlier download keep matching (a release validated while it is built ships its validation instead:
    ``comcoco release --validate``). Returns the JSON file.
    """
    from comcoco.release.card import validation_section

    out = report_dir(release)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "validation.json"
    write_text_atomic(path, json.dumps(result, indent=2, sort_keys=True) + "\n")
    markdown, _html = validation_section(result)
    write_text_atomic(out / "README.md", f"# Validation of {Path(release).resolve().name}\n\n{markdown}\n")
    return path
