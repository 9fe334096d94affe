"""SAHM runs on a release: a RUN folder with its config, tokenizer, checkpoints, metrics log and metrics.

```
RUN/config.json             the run's options, the SAHM configuration and the release it trains on
RUN/tokenizer/              the tokenizer (trained on the release's training expressions, or a copy)
RUN/checkpoints/last.pt     written every --checkpoint-every steps and at each epoch end
RUN/checkpoints/best.pt     the epoch with the best validation mask IoU (best.json says which)
RUN/metrics.jsonl           one JSON line per step ("kind": "step") and per epoch ("kind": "epoch")
RUN/metrics.json            `eval --split test`: exactly psnr, ssim, iou_mean, iou_overall, pr@0.7, fid, lpips
RUN/eval-<split>.json       the same evaluation with its context (checkpoint, step, tagging accuracy, nets)
```

Resuming continues from ``last.pt`` at the saved step: the batches of a half-finished epoch that were
already trained are skipped, data order and crops depend only on (seed, epoch, index), and the trainer's
checkpoint restores every RNG, so a resumed run reproduces an uninterrupted one. Lines of the metrics
log written after the checkpoint (by a run that died later) are dropped on resume. Under ``torchrun``
(``WORLD_SIZE`` > 1) the Trainer wraps both networks in DDP; this module splits the data with a
``DistributedSampler`` and lets only rank 0 write or evaluate.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from comcoco.io import write_text_atomic
from comcoco.sahm.config import SAHMConfig, get_config
from comcoco.sahm.data import DataError, ReleaseSamples, TextSubstitute, make_collate
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
from comcoco.sahm.text import TokenizerError, load_tokenizer, train_tokenizer
from comcoco.sahm.train import Trainer, TrainError, setup_distributed

RUN_FORMAT = 1
CONFIG_FILE = "config.json"
TOKENIZER_DIR = "tokenizer"
LAST_CKPT = "checkpoints/last.pt"
BEST_CKPT = "checkpoints/best.pt"
BEST_INFO = "checkpoints/best.json"
LOG_FILE = "metrics.jsonl"
METRICS_FILE = "metrics.json"
DEVICES = ("auto", "cpu", "cuda")
# Paper: 76 epochs, batch 32 on 4 GPUs (8 per process). Tiny: a CPU smoke budget.
DEFAULT_EPOCHS = {"paper": 76, "tiny": 10}
DEFAULT_BATCH = {"paper": 8, "tiny": 4}
BEST_METRIC = "iou_mean"


class RunError(Exception):
    """A run cannot be started, resumed or evaluated as asked; the message names the file or option."""


@dataclass(frozen=True)
class TrainOptions:
    """What decides a run's result; stored in ``RUN/config.json`` and reused on resume."""

    release: str
    config: str = "tiny"
    variant: str = "ComCOCO"
    epochs: int | None = None  # None: 76 for paper, 10 for tiny
    max_steps: int | None = None  # stop after this many optimiser steps in total (None: epochs decide)
    batch_size: int | None = None  # per process; None: 8 for paper, 4 for tiny
    seed: int = 0
    image_size: int | None = None  # None: the configuration's
    min_scale: float = 0.6
    flip_prob: float = 0.5
    checkpoint_every: int = 0  # steps; 0: at epoch ends only
    eval_split: str | None = "val"  # evaluated after each epoch to pick best.pt; None: never
    tokenizer: str | None = None  # a local ALBERT tokenizer folder; None: train one on the release
    text: str = "original"  # "null": train on empty expressions (the blind baseline of `validate`)
    overrides: dict[str, Any] = field(default_factory=dict)  # SAHM config fields

    def resolved_epochs(self) -> int:
        return int(self.epochs if self.epochs is not None else DEFAULT_EPOCHS.get(self.config, 10))

    def resolved_batch(self) -> int:
        return int(self.batch_size if self.batch_size is not None else DEFAULT_BATCH.get(self.config, 4))

    def sahm_config(self) -> SAHMConfig:
        over = dict(self.overrides)
        if self.image_size is not None:
            over["image_size"] = self.image_size
        try:
            return get_config(self.config, **over)
        except (ValueError, TypeError) as exc:
            raise RunError(f"SAHM config {self.config!r}: {exc}") from None


@dataclass(frozen=True)
class Runtime:
    """How a run executes (not part of its identity): device, AMP, loader workers, progress output."""

    device: str = "auto"
    amp: bool | None = None  # None: on for CUDA (bf16 where supported, else fp16), off on CPU
    num_workers: int | None = None  # None: 4 on CUDA, 0 on CPU
    progress: bool = False
    cache_mb: float = 1024  # decoded working-size samples kept in memory per dataset and process (0: none)


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


# --- device, distribution ------------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    """``auto``: the local CUDA device when present, else CPU; ``cuda`` is refused without a GPU."""
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if name == "auto":
        return torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RunError(f"--device {name}: no CUDA device is available (use --device cpu or auto)")
        return torch.device(name) if ":" in name else torch.device("cuda", local)
    raise RunError(f"--device must be one of {', '.join(DEVICES)} (or cuda:N), got {name!r}")


def resolve_workers(runtime: Runtime, device: torch.device) -> int:
    if runtime.num_workers is not None:
        if runtime.num_workers < 0:
            raise RunError(f"--workers must be >= 0, got {runtime.num_workers}")
        return runtime.num_workers
    return min(4, os.cpu_count() or 1) if device.type == "cuda" else 0


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


# --- files ---------------------------------------------------------------------------------------------


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_run_config(run: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(run) / CONFIG_FILE
    if not path.is_file():
        raise RunError(f"{path}: not found; {run} is not a SAHM run folder")
    try:
        data = json.loads(path.read_text())
        data["options"], data["sahm"]
    except (ValueError, KeyError, TypeError) as exc:
        raise RunError(f"{path}: not a SAHM run config ({exc})") from None
    return data


def _options_from(data: dict[str, Any], path: Path) -> TrainOptions:
    names = {f.name for f in fields(TrainOptions)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise RunError(f"{path}: unknown run options {unknown}")
    return TrainOptions(**data)


def _release_info(release: Path) -> dict[str, Any]:
    info: dict[str, Any] = {"path": str(release)}
    manifest = release / "manifest.json"
    if manifest.is_file():
        try:
            info["version"] = json.loads(manifest.read_text()).get("version")
        except ValueError:
            raise RunError(f"{manifest}: unreadable release manifest") from None
    return info


def read_log(run: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The metrics log's records, oldest first."""
    path = Path(run) / LOG_FILE
    if not path.is_file():
        return []
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError:
                raise RunError(f"{path}: line {n} is not JSON") from None
    return out


def _truncate_log(run: Path, step: int) -> None:
    """Keep only records up to ``step`` (a run that died after its last checkpoint logged more)."""
    path = run / LOG_FILE
    if not path.is_file():
        return
    keep = [r for r in read_log(run) if int(r.get("step", 0)) <= step]
    write_text_atomic(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in keep))


def _append_log(run: Path, record: dict[str, Any]) -> None:
    with open(run / LOG_FILE, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, sort_keys=True) + "\n")


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
    if trainer.world > 1:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(dataset, num_replicas=trainer.world, rank=trainer.rank, shuffle=True,
                                     seed=trainer.seed, drop_last=True)
        sampler.set_epoch(epoch)
        order = list(sampler)
    else:
        gen = torch.Generator().manual_seed(trainer.seed * 1_000_003 + epoch)
        order = torch.randperm(n, generator=gen).tolist()
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
        _barrier(world)
        tok = load_tokenizer(folder)
    except TokenizerError as exc:
        raise RunError(str(exc)) from None
    if len(tok) > cfg.text_vocab_size:
        raise RunError(f"{folder}: tokenizer has {len(tok)} tokens but the {cfg.name} config's text "
                       f"vocabulary is {cfg.text_vocab_size}")
    return tok


# --- training ------------------------------------------------------------------------------------------


def _check_resume(stored: TrainOptions, given: TrainOptions, path: Path) -> TrainOptions:
    """The stored options with the budget taken from ``given`` (epochs, or the stored ones when not given;
    ``max_steps`` as given, None meaning no step limit). Config, variant, seed, batch size and image size
    given explicitly (not at their defaults) must agree with the run's, and so must the release."""
    default = TrainOptions(release="")
    for name in ("config", "variant", "seed", "text"):  # left at its default: taken from the run
        if getattr(given, name) != getattr(default, name) and getattr(given, name) != getattr(stored, name):
            raise RunError(f"{path}: the run was started with {name}={getattr(stored, name)!r}, "
                           f"not {getattr(given, name)!r}; start a new run folder instead")
    for name in ("batch_size", "image_size"):
        if getattr(given, name) is not None and getattr(given, name) != getattr(stored, name):
            raise RunError(f"{path}: the run was started with {name}={getattr(stored, name)!r}, "
                           f"not {getattr(given, name)!r}")
    if Path(given.release).resolve() != Path(stored.release).resolve():
        raise RunError(f"{path}: the run trains on {stored.release}, not {given.release}")
    return replace(stored,
                   epochs=given.epochs if given.epochs is not None else stored.epochs,
                   max_steps=given.max_steps)


def train_run(
    run: str | os.PathLike[str],
    options: TrainOptions,
    runtime: Runtime | None = None,
    resume: bool = False,
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> TrainSummary:
    """Train SAHM on ``options.release`` into ``run`` (or continue it with ``resume``)."""
    runtime = runtime or Runtime()
    started = time.perf_counter()
    run = Path(run)
    cfg_path = run / CONFIG_FILE
    if cfg_path.is_file():
        if not resume:
            raise RunError(f"{run}: a run already exists here; pass --resume to continue it or choose a new --out")
        stored = read_run_config(run)
        options = _check_resume(_options_from(stored["options"], cfg_path), options, cfg_path)
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
    cfg = options.sahm_config()
    batch = options.resolved_batch()
    if batch < 1:
        raise RunError(f"--batch-size must be >= 1, got {batch}")

    device = resolve_device(runtime.device)
    rank, world = setup_distributed()
    try:
        train = ReleaseSamples(release, "train", cfg.image_size, True, options.variant, options.seed,
                               options.min_scale, options.flip_prob, cache_mb=runtime.cache_mb)
        val = None
        if options.eval_split:
            val = ReleaseSamples(release, options.eval_split, cfg.image_size, False, options.variant,
                                 cache_mb=runtime.cache_mb)
    except DataError as exc:
        raise RunError(str(exc)) from None
    if options.text not in ("original", "null"):
        raise RunError(f"text must be 'original' or 'null', got {options.text!r}")
    items = train if options.text == "original" else TextSubstitute(train, "null")
    spe = steps_per_epoch(len(train), batch, world)
    if spe == 0:
        raise RunError(f"{release}: {options.variant} train split has {len(train)} items, fewer than one "
                       f"batch of {batch} per process ({world}); lower --batch-size")

    if rank == 0:
        run.mkdir(parents=True, exist_ok=True)
    _barrier(world)
    tok = _prepare_tokenizer(run, options, cfg, train, rank, world)
    if rank == 0:
        _write_json(cfg_path, {"format": RUN_FORMAT, "options": asdict(options), "sahm": cfg.to_dict(),
                               "release": _release_info(release)})

    last, best = run / LAST_CKPT, run / BEST_CKPT
    try:
        if resume and last.is_file():
            trainer = Trainer.resume(last, tok, device=device, amp=runtime.amp)
        else:
            trainer = Trainer(cfg, tok, device=device, amp=runtime.amp, seed=options.seed)
    except TrainError as exc:
        raise RunError(str(exc)) from None
    if trainer.cfg != cfg:
        raise RunError(f"{last}: written with a different SAHM config than {cfg_path}")
    trainer.collate = make_collate(tok, cfg.max_text_len, train.category_names())
    if rank == 0:
        _truncate_log(run, trainer.step)
    best_value: float | None = None
    if (run / BEST_INFO).is_file():
        best_value = json.loads((run / BEST_INFO).read_text()).get("value")

    workers = resolve_workers(runtime, trainer.device)
    limit = spe * options.resolved_epochs()
    if options.max_steps is not None:
        limit = min(limit, options.max_steps)
    bar = None
    if runtime.progress and rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=limit, initial=min(trainer.step, limit), desc="sahm train", unit="step")
    try:
        while trainer.step < limit:
            epoch = trainer.epoch
            done = trainer.step - epoch * spe
            if done >= spe:  # a checkpoint taken exactly at an epoch's last step, before end_epoch
                best_value = _end_epoch(trainer, run, val, batch, workers, best_value, rank, world)
                continue
            train.set_epoch(epoch)
            for b in epoch_loader(trainer, items, batch, epoch, skip=done, num_workers=workers):
                t0 = time.perf_counter()
                rec = trainer.train_step(b)
                rec = {"kind": "step", **rec, "epoch": epoch, "lr": trainer.opt_g.param_groups[0]["lr"],
                       "seconds": round(time.perf_counter() - t0, 4)}
                if rank == 0:
                    _append_log(run, rec)
                if on_step is not None:
                    on_step(rec)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(total=f"{rec['total']:.3f}", seg=f"{rec['seg']:.3f}")
                if options.checkpoint_every and trainer.step % options.checkpoint_every == 0:
                    trainer.save(last)
                if trainer.step >= limit:
                    break
            if trainer.step - epoch * spe >= spe:
                best_value = _end_epoch(trainer, run, val, batch, workers, best_value, rank, world)
    finally:
        if bar is not None:
            bar.close()
    trainer.save(last)
    _barrier(world)
    return TrainSummary(
        run=str(run), step=trainer.step, epoch=trainer.epoch, steps_per_epoch=spe, last_checkpoint=str(last),
        best_checkpoint=str(best) if best.is_file() else None, best_value=best_value,
        device=str(trainer.device), world_size=world, rank=rank, seconds=round(time.perf_counter() - started, 3),
    )


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
                _write_json(run / BEST_INFO, {"epoch": trainer.epoch, "step": trainer.step,
                                              "metric": f"{val.split} {BEST_METRIC}", "value": best_value})
        elif val is not None:
            record["val"] = f"not computed: the {val.split} split is empty"
        _append_log(run, record)
    _barrier(world)
    return best_value


# --- evaluation ----------------------------------------------------------------------------------------


def checkpoint_path(run: Path, checkpoint: str) -> Path:
    """``best`` (falling back to ``last`` when no epoch was validated), ``last``, or a file path."""
    if checkpoint == "best":
        return run / BEST_CKPT if (run / BEST_CKPT).is_file() else run / LAST_CKPT
    if checkpoint == "last":
        return run / LAST_CKPT
    return Path(checkpoint)


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
        trainer = Trainer.resume(ckpt, tok, device=resolve_device(runtime.device), amp=runtime.amp)
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


def metrics_file(split: str) -> str:
    return METRICS_FILE if split == "test" else f"metrics-{split}.json"


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
    options = _options_from(data["options"], run / CONFIG_FILE)
    rel = Path(release) if release else Path(options.release)
    try:
        ds = ReleaseSamples(rel, split, trainer.cfg.image_size, False, options.variant, cache_mb=runtime.cache_mb)
        metrics = RemovalMetrics.from_paths(fid_path=fid_net, alexnet_path=alexnet)
    except (DataError, MetricWeightsError) as exc:
        raise RunError(str(exc)) from None
    trainer.collate = make_collate(trainer.tokenizer, trainer.cfg.max_text_len, ds.category_names())
    bs = batch_size or options.resolved_batch()
    result, ious = evaluate_dataset(trainer, ds, bs, metrics, resolve_workers(runtime, trainer.device))
    seven = {k: result[k] for k in METRIC_KEYS}
    if len(ds) == 0:
        seven = {k: not_computed(f"the {options.variant} {split} split of {rel} is empty") for k in METRIC_KEYS}
    write_metrics(run / metrics_file(split), seven)
    _write_json(run / f"eval-{split}.json", {
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
