"""SAHM runs on a release: train into a RUN folder (``runfiles.py`` lists its files), resume, evaluate.

Resuming continues from ``last.pt`` at the saved step: the batches of a half-finished epoch that were
already trained are skipped, data order and crops depend only on (seed, epoch, index), and the trainer's
checkpoint restores every RNG, so a resumed run reproduces an uninterrupted one. Lines of the metrics
log written after the checkpoint (by a run that died later) are dropped on resume.

Data parallelism (``torchrun``, or ``launch`` behind ``--nproc``): the Trainer wraps both networks in DDP.
An epoch's order is one seeded permutation of the items; rank r of W takes every W-th item from position r,
so the W per-process batches of a step together hold exactly the items of one process's batch of W×B —
a data-parallel run trains on what a single process with the global batch would. Only rank 0 writes
files or evaluates; the others wait at barriers.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from comcoco.progress import Progress
from comcoco.sahm.config import SAHMConfig
from comcoco.sahm.data import DataError, ReleaseSamples, TextSubstitute, make_collate
from comcoco.sahm.distributed import barrier, cpu_threads, resolve_device, resolve_workers
from comcoco.sahm.metrics import (
    ALEXNET_FILE,
    FID_ENV,
    LPIPS_ENV,
    METRIC_KEYS,
    NVIDIA_INCEPTION_FILE,
    MetricWeightsError,
    RemovalMetrics,
    not_computed,
    resolve_weights,
    torch_home,
    write_metrics,
)
from comcoco.sahm.runfiles import (  # re-exported: the run's names are imported from here
    BEST_CKPT,
    BEST_INFO,
    CONFIG_FILE,
    DEFAULT_BATCH,
    DEFAULT_EPOCHS,
    LAST_CKPT,
    LOG_FILE,
    METRICS_FILE,
    RUN_FORMAT,
    TOKENIZER_DIR,
    RunError,
    Runtime,
    TrainOptions,
    append_log,
    check_resume,
    checkpoint_path,
    metrics_file,
    options_from,
    read_log,
    read_run_config,
    release_info,
    truncate_log,
    write_json,
)
from comcoco.sahm.text import TokenizerError, load_tokenizer, train_tokenizer
from comcoco.sahm.train import Trainer, TrainError, setup_distributed

__all__ = [
    "BEST_CKPT", "BEST_INFO", "CONFIG_FILE", "DEFAULT_BATCH", "DEFAULT_EPOCHS", "LAST_CKPT", "LOG_FILE",
    "METRICS_FILE", "RUN_FORMAT", "TOKENIZER_DIR", "RunError", "Runtime", "TrainOptions", "TrainSummary",
    "checkpoint_path", "epoch_loader", "eval_run", "evaluate_dataset", "evaluate_split", "flat_metrics",
    "load_run", "metrics_file", "read_log", "read_run_config", "steps_per_epoch", "train_run",
]

BEST_METRIC = "iou_mean"


@dataclass(frozen=True)
class TrainSummary:
    run: str
    step: int
    epoch: int
    steps_per_epoch: int
    last_checkpoint: str
    best_checkpoint: str | None
    best_value: float | None
    device: str
    world_size: int
    rank: int
    seconds: float
    precision: str = "fp32"
    digest: str = ""  # weights_digest of G and D on this process at the end (equal on every rank)


# --- data loading --------------------------------------------------------------------------------------


def steps_per_epoch(n_items: int, batch_size: int, world: int = 1) -> int:
    """Full batches per epoch and process (the last incomplete batch is dropped, as DDP needs)."""
    return (n_items // max(world, 1)) // batch_size


def epoch_loader(
    trainer: Trainer, dataset: Dataset, batch_size: int, epoch: int, skip: int = 0, num_workers: int = 0
) -> DataLoader:
    """The shuffled batches of one epoch (seed, epoch), minus the first ``skip`` already trained.

    The DataLoader gets its own generator, so building one does not move the global torch RNG that the
    checkpoint restores.
    """
    n = len(dataset)  # type: ignore[arg-type]
    gen = torch.Generator().manual_seed(trainer.seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=gen).tolist()
    if trainer.world > 1:  # rank r takes positions r, r + W, …: step k's W batches are one batch of W×B
        order = order[: n - n % trainer.world][trainer.rank :: trainer.world]
    batches = [order[i * batch_size : (i + 1) * batch_size] for i in range(len(order) // batch_size)]
    return _loader(trainer, dataset, batches[skip:], num_workers, seed=trainer.seed + epoch)


def _loader(trainer: Trainer, dataset: Dataset, batches: list[list[int]], num_workers: int, seed: int) -> DataLoader:
    return DataLoader(
        dataset,
        batch_sampler=batches,
        collate_fn=trainer.collate,
        num_workers=num_workers,
        pin_memory=trainer.device.type == "cuda",
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=False,
    )


@torch.no_grad()
def evaluate_dataset(
    trainer: Trainer,
    dataset: Dataset,
    batch_size: int = 4,
    metrics: RemovalMetrics | None = None,
    num_workers: int = 0,
) -> tuple[dict[str, dict[str, Any]], list[float]]:
    """Predict every item (one process, fixed order, CRF tags) → (metrics dictionary, per-item mask IoU).

    The removal output pastes generated pixels into the predicted hole only, as ``SAHMGenerator.predict``.
    """
    n = len(dataset)  # type: ignore[arg-type]
    batches = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
    return trainer.evaluate_batches(_loader(trainer, dataset, batches, num_workers, seed=trainer.seed), metrics)


def flat_metrics(result: dict[str, dict[str, Any]], keys: tuple[str, ...] = METRIC_KEYS) -> dict[str, Any]:
    """``{name: value}`` for logs and cards: the number, or the not-computed reason."""
    return {k: (result[k]["value"] if result[k].get("value") is not None else result[k].get("reason"))
            for k in keys if k in result}


# --- tokenizer -----------------------------------------------------------------------------------------


def _prepare_tokenizer(run: Path, options: TrainOptions, cfg: SAHMConfig, train: ReleaseSamples,
                       rank: int, world: int) -> Any:
    """RUN/tokenizer: kept when present, else a copy of ``options.tokenizer``, else trained (rank 0)."""
    folder = run / TOKENIZER_DIR
    try:
        if rank == 0 and not folder.is_dir():
            tmp = run / (TOKENIZER_DIR + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            if options.tokenizer:
                load_tokenizer(options.tokenizer).save_pretrained(str(tmp))
            else:
                train_tokenizer(train.expressions(), tmp, vocab_size=cfg.text_vocab_size)
            os.rename(tmp, folder)
        barrier(world)
        tok = load_tokenizer(folder)
    except TokenizerError as exc:
        raise RunError(str(exc)) from None
    if len(tok) > cfg.text_vocab_size:
        raise RunError(f"{folder}: tokenizer has {len(tok)} tokens but the {cfg.name} config's text "
                       f"vocabulary is {cfg.text_vocab_size}")
    return tok


# --- training ------------------------------------------------------------------------------------------


def _run_options(run: Path, options: TrainOptions, resume: bool) -> TrainOptions:
    """The options a (new or resumed) run trains with, checked; the release path made absolute."""
    cfg_path = run / CONFIG_FILE
    if cfg_path.is_file():
        if not resume:
            raise RunError(f"{run}: a run already exists here; pass --resume to continue it or choose a new --out")
        stored = read_run_config(run)
        options = check_resume(options_from(stored["options"], cfg_path), options, cfg_path)
    elif resume and run.exists() and any(run.iterdir()):
        raise RunError(f"{run}: nothing to resume (no {CONFIG_FILE})")
    release = Path(options.release).resolve()
    options = replace(options, release=str(release))
    if not release.is_dir():
        raise RunError(f"release not found: {release}")
    if options.max_steps is not None and options.max_steps < 0:
        raise RunError(f"--steps must be >= 0, got {options.max_steps}")
    if options.resolved_epochs() < 1:
        raise RunError(f"--epochs must be >= 1, got {options.resolved_epochs()}")
    if options.resolved_batch() < 1:
        raise RunError(f"--batch-size must be >= 1, got {options.resolved_batch()}")
    if options.text not in ("original", "null"):
        raise RunError(f"text must be 'original' or 'null', got {options.text!r}")
    return options


def _datasets(options: TrainOptions, cfg: SAHMConfig, runtime: Runtime) -> tuple[ReleaseSamples, ReleaseSamples | None]:
    try:
        train = ReleaseSamples(options.release, "train", cfg.image_size, True, options.variant, options.seed,
                               options.min_scale, options.flip_prob, cache_mb=runtime.cache_mb)
        val = None
        if options.eval_split:
            val = ReleaseSamples(options.release, options.eval_split, cfg.image_size, False, options.variant,
                                 cache_mb=runtime.cache_mb)
    except DataError as exc:
        raise RunError(str(exc)) from None
    return train, val


def _trainer(run: Path, cfg: SAHMConfig, options: TrainOptions, runtime: Runtime, tok: Any,
             device: torch.device, resume: bool) -> Trainer:
    last = run / LAST_CKPT
    try:
        if resume and last.is_file():
            trainer = Trainer.resume(last, tok, device=device, precision=runtime.precision)
        else:
            trainer = Trainer(cfg, tok, device=device, precision=runtime.precision, seed=options.seed)
    except TrainError as exc:
        raise RunError(str(exc)) from None
    if trainer.cfg != cfg:
        raise RunError(f"{last}: written with a different SAHM config than {run / CONFIG_FILE}")
    return trainer


def train_run(
    run: str | os.PathLike[str],
    options: TrainOptions,
    runtime: Runtime | None = None,
    resume: bool = False,
    on_step: Callable[[dict[str, Any], Trainer], None] | None = None,
) -> TrainSummary:
    """Train SAHM on ``options.release`` into ``run`` (or continue it with ``resume``).

    ``on_step(record, trainer)`` is called after every step on every rank; the record is the step's log line
    plus ``rank`` and ``items`` (the dataset indices of that rank's batch). Torch's CPU threads are set for
    the run's input size while it trains (``distributed.cpu_threads``).
    """
    runtime = runtime or Runtime()
    run = Path(run)
    options = _run_options(run, options, resume)
    device = resolve_device(runtime.device)
    with cpu_threads(runtime, device, options.sahm_config().image_size):
        return _train(run, options, runtime, resume, on_step, device)


def _train(run: Path, options: TrainOptions, runtime: Runtime, resume: bool,
           on_step: Callable[[dict[str, Any], Trainer], None] | None, device: torch.device) -> TrainSummary:
    """``train_run`` once its options, device and threads are settled."""
    started = time.perf_counter()
    cfg, batch = options.sahm_config(), options.resolved_batch()
    rank, world = setup_distributed(device)
    train, val = _datasets(options, cfg, runtime)
    items = train if options.text == "original" else TextSubstitute(train, "null")
    spe = steps_per_epoch(len(train), batch, world)
    if spe == 0:
        raise RunError(f"{options.release}: {options.variant} train split has {len(train)} items, fewer than one "
                       f"batch of {batch} per process ({world}); lower --batch-size")

    if rank == 0:
        run.mkdir(parents=True, exist_ok=True)
    barrier(world)
    tok = _prepare_tokenizer(run, options, cfg, train, rank, world)
    trainer = _trainer(run, cfg, options, runtime, tok, device, resume)
    trainer.collate = make_collate(tok, cfg.max_text_len, train.category_names())
    if rank == 0:
        write_json(run / CONFIG_FILE, {
            "format": RUN_FORMAT, "options": asdict(options), "sahm": cfg.to_dict(),
            "release": release_info(Path(options.release)),
            "runtime": {"device": str(trainer.device), "precision": trainer.precision, "world_size": world}})
        truncate_log(run, trainer.step)
    best_value: float | None = None
    if (run / BEST_INFO).is_file():
        best_value = json.loads((run / BEST_INFO).read_text()).get("value")

    workers = resolve_workers(runtime, trainer.device)
    limit = spe * options.resolved_epochs()
    if options.max_steps is not None:
        limit = min(limit, options.max_steps)
    bar = None
    if runtime.progress and rank == 0:
        bar = Progress(f"sahm train {run.name}", limit, unit="step", initial=min(trainer.step, limit))
    try:
        while trainer.step < limit:
            epoch = trainer.epoch
            done = trainer.step - epoch * spe
            if done >= spe:  # a checkpoint taken exactly at an epoch's last step, before end_epoch
                best_value = _end_epoch(trainer, run, val, batch, workers, best_value, rank, world)
                continue
            train.set_epoch(epoch)
            loader = epoch_loader(trainer, items, batch, epoch, skip=done, num_workers=workers)
            _train_batches(trainer, loader, run, options.checkpoint_every, limit, on_step, bar)
            if trainer.step - epoch * spe >= spe:
                best_value = _end_epoch(trainer, run, val, batch, workers, best_value, rank, world)
    finally:
        if bar is not None:
            bar.close()
    trainer.save(run / LAST_CKPT)
    barrier(world)
    best = run / BEST_CKPT
    return TrainSummary(
        run=str(run), step=trainer.step, epoch=trainer.epoch, steps_per_epoch=spe,
        last_checkpoint=str(run / LAST_CKPT), best_checkpoint=str(best) if best.is_file() else None,
        best_value=best_value, device=str(trainer.device), world_size=world, rank=rank,
        seconds=round(time.perf_counter() - started, 3), precision=trainer.precision,
        digest=trainer.replica_digest(),
    )


def _train_batches(trainer: Trainer, loader: DataLoader, run: Path, checkpoint_every: int, limit: int,
                   on_step: Callable[[dict[str, Any], Trainer], None] | None, bar: Any) -> None:
    """Train on an epoch's (remaining) batches until the loader ends or the step limit is reached."""
    for indices, b in zip(loader.batch_sampler, loader, strict=True):
        t0 = time.perf_counter()
        rec = trainer.train_step(b)
        rec = {"kind": "step", **rec, "epoch": trainer.epoch, "lr": trainer.opt_g.param_groups[0]["lr"],
               "seconds": round(time.perf_counter() - t0, 4)}
        if trainer.rank == 0:
            append_log(run, rec)
        if on_step is not None:
            on_step({**rec, "rank": trainer.rank, "items": list(indices)}, trainer)
        if bar is not None:
            bar.advance()
            bar.set_postfix(total=f"{rec['total']:.3f}", seg=f"{rec['seg']:.3f}")
        if checkpoint_every and trainer.step % checkpoint_every == 0:
            trainer.save(run / LAST_CKPT)
        if trainer.step >= limit:
            break


def _end_epoch(trainer: Trainer, run: Path, val: ReleaseSamples | None, batch: int, workers: int,
               best_value: float | None, rank: int, world: int) -> float | None:
    """Decay the learning rate, evaluate on the validation split (rank 0), log, checkpoint, keep the best."""
    trainer.end_epoch()
    record: dict[str, Any] = {"kind": "epoch", "epoch": trainer.epoch, "step": trainer.step,
                              "lr": trainer.opt_g.param_groups[0]["lr"]}
    last = run / LAST_CKPT
    trainer.save(last)
    if rank == 0:
        if val is not None and len(val):
            result, _ = evaluate_dataset(trainer, val, batch, num_workers=workers)
            record["val"] = flat_metrics(result, ("psnr", "ssim", "iou_mean", "iou_overall", "pr@0.7"))
            value = result[BEST_METRIC]["value"]
            if value is not None and (best_value is None or value > best_value):
                best_value = float(value)
                shutil.copyfile(last, run / (BEST_CKPT + ".tmp"))
                os.replace(run / (BEST_CKPT + ".tmp"), run / BEST_CKPT)
                write_json(run / BEST_INFO, {"epoch": trainer.epoch, "step": trainer.step,
                                              "metric": f"{val.split} {BEST_METRIC}", "value": best_value})
        elif val is not None:
            record["val"] = f"not computed: the {val.split} split is empty"
        append_log(run, record)
    barrier(world)
    return best_value


# --- evaluation ----------------------------------------------------------------------------------------


def load_run(run: str | os.PathLike[str], checkpoint: str = "best", runtime: Runtime | None = None) -> tuple[Trainer, dict[str, Any], Path]:
    """A trainer restored from a run's checkpoint, the run config, and the checkpoint used."""
    runtime = runtime or Runtime()
    run = Path(run)
    data = read_run_config(run)
    ckpt = checkpoint_path(run, checkpoint)
    if not ckpt.is_file():
        raise RunError(f"checkpoint not found: {ckpt} (train the run first)")
    world = os.environ.get("WORLD_SIZE")
    os.environ["WORLD_SIZE"] = "1"  # evaluation is one process: no DDP wrapping even under torchrun
    try:
        tok = load_tokenizer(run / TOKENIZER_DIR)
        trainer = Trainer.resume(ckpt, tok, device=resolve_device(runtime.device), precision=runtime.precision)
    except (TokenizerError, TrainError) as exc:
        raise RunError(str(exc)) from None
    finally:
        if world is None:
            os.environ.pop("WORLD_SIZE", None)
        else:
            os.environ["WORLD_SIZE"] = world
    return trainer, data, ckpt


def _weights(explicit: Any, env: str, default: Path) -> str | None:
    """The weight file a metric used (as ``RemovalMetrics.from_paths`` resolves it), for the record."""
    p = resolve_weights(explicit, env, default)
    return str(p) if p is not None else None


def evaluate_split(
    run: str | os.PathLike[str],
    split: str = "test",
    checkpoint: str = "best",
    fid_net: str | os.PathLike[str] | None = None,
    alexnet: str | os.PathLike[str] | None = None,
    runtime: Runtime | None = None,
    batch_size: int | None = None,
    release: str | os.PathLike[str] | None = None,
) -> tuple[dict[str, dict[str, Any]], list[float]]:
    """Evaluate a run on a split; writes ``metrics.json`` (test; ``metrics-<split>.json`` otherwise) holding
    exactly the seven metric keys, and ``eval-<split>.json`` with the context. Returns the seven metrics
    and the per-item mask IoU (dataset order), which the language baseline reuses."""
    runtime = runtime or Runtime()
    run = Path(run)
    trainer, data, ckpt = load_run(run, checkpoint, runtime)
    options = options_from(data["options"], run / CONFIG_FILE)
    rel = Path(release) if release else Path(options.release)
    try:
        ds = ReleaseSamples(rel, split, trainer.cfg.image_size, False, options.variant, cache_mb=runtime.cache_mb)
        metrics = RemovalMetrics.from_paths(fid_path=fid_net, alexnet_path=alexnet)
    except (DataError, MetricWeightsError) as exc:
        raise RunError(str(exc)) from None
    trainer.collate = make_collate(trainer.tokenizer, trainer.cfg.max_text_len, ds.category_names())
    bs = batch_size or options.resolved_batch()
    with cpu_threads(runtime, trainer.device, trainer.cfg.image_size):
        result, ious = evaluate_dataset(trainer, ds, bs, metrics, resolve_workers(runtime, trainer.device))
    seven = {k: result[k] for k in METRIC_KEYS}
    if len(ds) == 0:
        seven = {k: not_computed(f"the {options.variant} {split} split of {rel} is empty") for k in METRIC_KEYS}
    write_metrics(run / metrics_file(split), seven)
    write_json(run / f"eval-{split}.json", {
        "split": split, "variant": options.variant, "release": str(rel), "items": len(ds),
        "checkpoint": str(ckpt), "step": trainer.step, "epoch": trainer.epoch, "config": trainer.cfg.name,
        "image_size": trainer.cfg.image_size, "metrics": result,
        "fid_network": _weights(fid_net, FID_ENV, Path(os.environ.get("TMPDIR", "/tmp")) / NVIDIA_INCEPTION_FILE),
        "lpips_alexnet": _weights(alexnet, LPIPS_ENV, torch_home() / "hub" / "checkpoints" / ALEXNET_FILE),
    })
    return seven, ious


def eval_run(run: str | os.PathLike[str], split: str = "test", **kwargs: Any) -> dict[str, dict[str, Any]]:
    """``evaluate_split`` without the per-item IoU: the seven metrics (what ``sahm eval`` reports)."""
    return evaluate_split(run, split, **kwargs)[0]
