"""The files of a SAHM run folder and the options stored in them; ``runs.py`` trains and evaluates on them.

```
RUN/config.json             the run's options, the SAHM configuration, the release, the latest runtime
RUN/tokenizer/              the tokenizer (trained on the release's training expressions, or a copy)
RUN/checkpoints/last.pt     written every --checkpoint-every steps and at each epoch end
RUN/checkpoints/best.pt     the epoch with the best validation mask IoU (best.json says which)
RUN/metrics.jsonl           one JSON line per step ("kind": "step") and per epoch ("kind": "epoch")
RUN/metrics.json            `eval --split test`: exactly psnr, ssim, iou_mean, iou_overall, pr@0.7, fid, lpips
RUN/eval-<split>.json       the same evaluation with its context (checkpoint, step, tagging accuracy, nets)
```

Under data parallelism only rank 0 writes any of them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from comcoco.errors import ComcocoError
from comcoco.io import write_text_atomic
from comcoco.sahm.config import SAHMConfig, get_config

RUN_FORMAT = 1
CONFIG_FILE = "config.json"
TOKENIZER_DIR = "tokenizer"
LAST_CKPT = "checkpoints/last.pt"
BEST_CKPT = "checkpoints/best.pt"
BEST_INFO = "checkpoints/best.json"
LOG_FILE = "metrics.jsonl"
METRICS_FILE = "metrics.json"
# Paper: 76 epochs, batch 32 on 4 GPUs (8 per process). Tiny: a CPU smoke budget.
DEFAULT_EPOCHS = {"paper": 76, "tiny": 10}
DEFAULT_BATCH = {"paper": 8, "tiny": 4}


class RunError(ComcocoError):
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
    """How a run executes (not part of its identity): device, precision, loader workers, progress output."""

    device: str = "auto"
    precision: str | None = None  # fp32, bf16 or fp16; None: bf16 on CUDA that supports it (else fp16), fp32 on CPU
    num_workers: int | None = None  # None: 4 on CUDA, 0 on CPU
    progress: bool = False
    cache_mb: float = 1024  # decoded working-size samples kept in memory per dataset and process (0: none)
    threads: int | None = None  # torch CPU threads; None: 1 for inputs up to 128², else torch's default


def write_json(path: Path, data: Any) -> None:
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


def options_from(data: dict[str, Any], path: Path) -> TrainOptions:
    names = {f.name for f in fields(TrainOptions)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise RunError(f"{path}: unknown run options {unknown}")
    return TrainOptions(**data)


def release_info(release: Path) -> dict[str, Any]:
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


def truncate_log(run: Path, step: int) -> None:
    """Keep only records up to ``step`` (a run that died after its last checkpoint logged more)."""
    path = run / LOG_FILE
    if not path.is_file():
        return
    keep = [r for r in read_log(run) if int(r.get("step", 0)) <= step]
    write_text_atomic(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in keep))


def append_log(run: Path, record: dict[str, Any]) -> None:
    with open(run / LOG_FILE, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, sort_keys=True) + "\n")


def check_resume(stored: TrainOptions, given: TrainOptions, path: Path) -> TrainOptions:
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


def checkpoint_path(run: Path, checkpoint: str) -> Path:
    """``best`` (falling back to ``last`` when no epoch was validated), ``last``, or a file path."""
    if checkpoint == "best":
        return run / BEST_CKPT if (run / BEST_CKPT).is_file() else run / LAST_CKPT
    if checkpoint == "last":
        return run / LAST_CKPT
    return Path(checkpoint)


def metrics_file(split: str) -> str:
    return METRICS_FILE if split == "test" else f"metrics-{split}.json"
