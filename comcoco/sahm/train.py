"""SAHM trainer core: one G/D train step, checkpoints with exact resume, device, precision and data-parallel setup.

Works on any ``torch.utils.data.Dataset`` whose items are dicts with ``image`` and ``ground_truth``
(3,H,W float in [0,1]), ``mask`` (1,H,W in {0,1}) and ``expression`` (str). H and W must be multiples of 32.
The step runs in the chosen precision (``precision.py``: fp32, or bf16 / fp16 autocast on CUDA or the CPU,
fp16 with a gradient scaler). Under ``torchrun`` (``WORLD_SIZE`` > 1) both networks are wrapped in
DistributedDataParallel over NCCL (CUDA) or gloo (CPU), and every checkpoint first checks that all replicas
hold the same weights. Randomness is seeded; checkpoints carry optimiser, scheduler, scaler and RNG state.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from comcoco.errors import ComcocoError
from comcoco.io import atomic_write
from comcoco.sahm.config import SAHMConfig, get_config
from comcoco.sahm.losses import discriminator_loss, generator_losses
from comcoco.sahm.metrics import RemovalMetrics
from comcoco.sahm.model import SAHMGenerator, build_discriminator, build_generator
from comcoco.sahm.precision import PrecisionError, autocast, resolve_precision
from comcoco.sahm.text import encode_expressions, tagging_accuracy
from comcoco.text.syntax import IDENTITY_WORDS

CHECKPOINT_FORMAT = 1
# Ranks wait at barriers while rank 0 trains the tokenizer or evaluates the validation split; NCCL's default
# of 10 minutes is shorter than a large split's evaluation at 480².
DIST_TIMEOUT = timedelta(hours=3)


class TrainError(ComcocoError):
    """Unusable training input or checkpoint; the message names the file or sample."""


def select_device(device: str | torch.device | None = None) -> torch.device:
    """The requested device, else the local CUDA device under torchrun, else CUDA if present, else CPU."""
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def distributed_backend(device: torch.device) -> str:
    """NCCL for CUDA devices, gloo otherwise (the CPU, and tests)."""
    return "nccl" if device.type == "cuda" else "gloo"


def setup_distributed(device: torch.device | None = None) -> tuple[int, int]:
    """Initialise the process group under torchrun; returns (rank, world_size), (0, 1) when not distributed.

    The backend follows the device (``distributed_backend``); without one, CUDA when present.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if device is None:
        device = select_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)  # before the process group, so NCCL's barriers use this rank's GPU
    if not dist.is_initialized():
        dist.init_process_group(distributed_backend(device), timeout=DIST_TIMEOUT)
    return dist.get_rank(), dist.get_world_size()


def weights_digest(*state_dicts: dict[str, torch.Tensor]) -> str:
    """blake2b of the state dicts' names, dtypes, shapes and bytes: equal digests mean identical weights."""
    h = hashlib.blake2b(digest_size=16)
    for sd in state_dicts:
        for name in sorted(sd):
            t = sd[name].detach().cpu().contiguous()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass(frozen=True)
class Collator:
    """Stacks dataset items and tokenizes expressions (picklable, for DataLoader workers)."""

    tokenizer: Any
    max_len: int
    identity: frozenset[str] = IDENTITY_WORDS

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        for i, it in enumerate(items):
            missing = {"image", "ground_truth", "mask", "expression"} - set(it)
            if missing:
                raise TrainError(f"sample {i} of the batch lacks {sorted(missing)}")
            h, w = it["image"].shape[-2:]
            if h % 32 or w % 32:
                raise TrainError(f"sample {i}: image size {h}x{w} is not a multiple of 32")
        enc = encode_expressions(
            self.tokenizer, [str(it["expression"]) for it in items], self.max_len, self.identity
        )
        return {
            "image": torch.stack([torch.as_tensor(it["image"], dtype=torch.float32) for it in items]),
            "ground_truth": torch.stack(
                [torch.as_tensor(it["ground_truth"], dtype=torch.float32) for it in items]
            ),
            "mask": torch.stack([torch.as_tensor(it["mask"], dtype=torch.float32) for it in items]),
            "input_ids": enc.input_ids,
            "attention_mask": enc.attention_mask,
            "tags": enc.tags,
        }


def _numpy_state() -> tuple:
    """numpy's global RNG state with plain types only, so checkpoints load with ``weights_only=True``."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))


def _stored_config(state: dict[str, Any], path: Path) -> SAHMConfig:
    """The SAHM configuration a checkpoint was written with; TrainError naming the file if unusable."""
    try:
        return SAHMConfig.from_dict(state["config"])
    except (ValueError, TypeError) as exc:
        raise TrainError(f"{path}: {exc}; start a new run folder") from None


def _unwrap(m: nn.Module) -> nn.Module:
    return m.module if hasattr(m, "module") else m


class Trainer:
    """Owns G, D, their AdamW optimisers and schedulers; runs train steps, checkpoints and evaluation."""

    def __init__(
        self,
        config: str | SAHMConfig,
        tokenizer: Any,
        device: str | torch.device | None = None,
        precision: str | None = None,
        seed: int = 0,
    ):
        self.cfg = get_config(config) if isinstance(config, str) else config
        self.cfg.validate()
        self.tokenizer = tokenizer
        self.seed = seed
        self.device = select_device(device)
        try:
            self.precision = resolve_precision(self.device, precision)
        except PrecisionError as exc:
            raise TrainError(str(exc)) from None
        self.rank, self.world = setup_distributed(self.device)
        seed_everything(seed)
        g: nn.Module = build_generator(self.cfg).to(self.device)
        d: nn.Module = build_discriminator(self.cfg).to(self.device)
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            g, d = DDP(g, device_ids=ids), DDP(d, device_ids=ids)
        self.G, self.D = g, d
        c = self.cfg
        self.opt_g = torch.optim.AdamW(
            self.G.parameters(), lr=c.lr, betas=c.betas, weight_decay=c.weight_decay
        )
        self.opt_d = torch.optim.AdamW(
            self.D.parameters(), lr=c.lr, betas=c.betas, weight_decay=c.weight_decay
        )
        self.sched_g = torch.optim.lr_scheduler.ExponentialLR(self.opt_g, gamma=c.lr_decay)
        self.sched_d = torch.optim.lr_scheduler.ExponentialLR(self.opt_d, gamma=c.lr_decay)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.collate = Collator(tokenizer, c.max_text_len)
        self.step = 0
        self.epoch = 0

    @property
    def generator(self) -> SAHMGenerator:
        return _unwrap(self.G)  # type: ignore[return-value]

    def _autocast(self):
        return autocast(self.device, self.precision)

    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One D update on detached fakes, then one G update on the full objective; returns losses."""
        b = self.to_device(batch)
        self.G.train()
        self.D.train()
        gen = self.generator
        with self._autocast():
            out = self.G(b["image"], b["input_ids"], b["attention_mask"], b["tags"])
            fake = out.image
            d_loss = discriminator_loss(
                self.D(b["ground_truth"]).float(), self.D(fake.detach()).float(), self.cfg.gan_loss
            )
        self.opt_d.zero_grad(set_to_none=True)
        self.scaler.scale(d_loss).backward()
        self.scaler.step(self.opt_d)

        with self._autocast():
            crf = gen.tagger.loss(out.tag_emissions, b["tags"], b["attention_mask"])
            fake_logits = self.D(fake).float()
            losses = generator_losses(
                self.cfg, out, b["mask"], b["ground_truth"], fake_logits, crf, self.step
            )
        self.opt_g.zero_grad(set_to_none=True)
        self.scaler.scale(losses.total).backward()
        self.scaler.step(self.opt_g)
        self.scaler.update()
        self.opt_d.zero_grad(set_to_none=True)  # D grads from the G pass are discarded
        self.step += 1
        return {**self._mean_over_ranks({**losses.as_floats(), "d": float(d_loss.detach())}), "step": self.step}

    def _mean_over_ranks(self, values: dict[str, float]) -> dict[str, float]:
        """Losses averaged over the data-parallel ranks (the global batch's, as one process would log)."""
        if self.world <= 1:
            return values
        import torch.distributed as dist

        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return dict(zip(keys, (t / self.world).tolist(), strict=True))

    def end_epoch(self) -> None:
        """Apply the per-epoch exponential learning-rate decay."""
        self.sched_g.step()
        self.sched_d.step()
        self.epoch += 1

    # --- checkpoints --------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.cfg.to_dict(),
            "seed": self.seed,
            "step": self.step,
            "epoch": self.epoch,
            "generator": _unwrap(self.G).state_dict(),
            "discriminator": _unwrap(self.D).state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "sched_g": self.sched_g.state_dict(),
            "sched_d": self.sched_d.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "numpy": _numpy_state(),
                "python": random.getstate(),
            },
        }

    def replica_digest(self) -> str:
        """``weights_digest`` of G and D on this process."""
        return weights_digest(_unwrap(self.G).state_dict(), _unwrap(self.D).state_dict())

    def check_replicas(self) -> str:
        """All ranks compare weight digests (a collective); TrainError if any replica diverged."""
        mine = self.replica_digest()
        if self.world > 1:
            import torch.distributed as dist

            every: list[str | None] = [None] * self.world
            dist.all_gather_object(every, mine)
            if len(set(every)) > 1:
                raise TrainError(f"data-parallel replicas diverged at step {self.step}: weight digests {every}")
        return mine

    def save(self, path: str | Path) -> Path:
        """Write a checkpoint atomically (rank 0 only under data parallelism, after ``check_replicas``)."""
        p = Path(path)
        if self.world > 1:
            self.check_replicas()
        if self.rank == 0:
            p.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(p, "wb") as fh:
                torch.save(self.state_dict(), fh)
        return p

    def load(self, path: str | Path) -> None:
        """Restore every piece of training state from a checkpoint written by ``save``."""
        p = Path(path)
        if not p.is_file():
            raise TrainError(f"checkpoint not found: {p}")
        try:
            st = torch.load(p, map_location=self.device, weights_only=True)
        except Exception as exc:
            raise TrainError(f"cannot read checkpoint {p}: {exc}") from exc
        if not isinstance(st, dict) or st.get("format") != CHECKPOINT_FORMAT:
            raise TrainError(f"{p} is not a SAHM checkpoint (format {CHECKPOINT_FORMAT})")
        if _stored_config(st, p) != self.cfg:
            raise TrainError(f"{p} was written with a different SAHM config ({st['config'].get('name')})")
        _unwrap(self.G).load_state_dict(st["generator"], strict=True)
        _unwrap(self.D).load_state_dict(st["discriminator"], strict=True)
        self.opt_g.load_state_dict(st["opt_g"])
        self.opt_d.load_state_dict(st["opt_d"])
        self.sched_g.load_state_dict(st["sched_g"])
        self.sched_d.load_state_dict(st["sched_d"])
        if st["scaler"] or not self.scaler.is_enabled():  # an fp16 run resumed from fp32 starts a fresh scale
            self.scaler.load_state_dict(st["scaler"])
        self.step, self.epoch, self.seed = int(st["step"]), int(st["epoch"]), int(st["seed"])
        rng = st["rng"]
        torch.set_rng_state(rng["torch"].cpu())
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])
        name, keys, pos, has_gauss, cached = rng["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        random.setstate(rng["python"])

    @classmethod
    def resume(
        cls,
        path: str | Path,
        tokenizer: Any,
        device: str | torch.device | None = None,
        precision: str | None = None,
    ) -> Trainer:
        """A trainer rebuilt from a checkpoint's config and state."""
        p = Path(path)
        if not p.is_file():
            raise TrainError(f"checkpoint not found: {p}")
        try:
            st = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise TrainError(f"cannot read checkpoint {p}: {exc}") from exc
        if not isinstance(st, dict) or "config" not in st:
            raise TrainError(f"{p} is not a SAHM checkpoint")
        t = cls(_stored_config(st, p), tokenizer, device=device, precision=precision, seed=int(st["seed"]))
        t.load(p)
        return t

    # --- loops --------------------------------------------------------------------------------

    def loader(
        self, dataset: Dataset, batch_size: int, shuffle: bool = True, num_workers: int = 0
    ) -> DataLoader:
        """A seeded DataLoader; reshuffles per epoch. Training batches (``shuffle``) are split over the
        data-parallel ranks by a distributed sampler; evaluation (no shuffle) sees the whole dataset."""
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        sampler = None
        if self.world > 1 and shuffle:
            from torch.utils.data.distributed import DistributedSampler

            sampler = DistributedSampler(dataset, shuffle=shuffle, seed=self.seed)
            sampler.set_epoch(self.epoch)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle and sampler is None,
            sampler=sampler,
            num_workers=num_workers,
            collate_fn=self.collate,
            generator=gen,
            drop_last=shuffle,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )

    def fit(
        self,
        dataset: Dataset,
        max_steps: int,
        batch_size: int,
        out_dir: str | Path | None = None,
        num_workers: int = 0,
        checkpoint_every: int = 0,
        log_every: int = 1,
    ) -> list[dict[str, float]]:
        """Train until ``max_steps`` (resuming from ``self.step``); logs JSON lines and checkpoints to out_dir."""
        out = Path(out_dir) if out_dir else None
        if out:
            out.mkdir(parents=True, exist_ok=True)
        log: list[dict[str, float]] = []
        while self.step < max_steps:
            for batch in self.loader(dataset, batch_size, num_workers=num_workers):
                rec = self.train_step(batch)
                log.append(rec)
                if out and self.rank == 0 and self.step % max(log_every, 1) == 0:
                    with open(out / "train_log.jsonl", "a", encoding="utf-8") as fh:
                        fh.write(json.dumps(rec, sort_keys=True) + "\n")
                if out and checkpoint_every and self.step % checkpoint_every == 0:
                    self.save(out / "checkpoint.pt")
                if self.step >= max_steps:
                    break
            else:
                self.end_epoch()
        if out:
            self.save(out / "checkpoint.pt")
        return log

    @torch.no_grad()
    def evaluate_batches(
        self, batches: Any, metrics: RemovalMetrics | None = None
    ) -> tuple[dict[str, dict[str, Any]], list[float]]:
        """Predict every batch → (the ``metrics.json`` dictionary, per-item mask IoU).

        The removal output pastes generated pixels into the predicted hole only, as
        ``SAHMGenerator.predict``; tags come from the CRF.
        """
        from comcoco.sahm.metrics import iou_scores, mask_intersection_union

        m = metrics or RemovalMetrics()
        g = self.generator
        g.eval()
        ious: list[float] = []
        pred_tags, gold_tags, masks = [], [], []
        for batch in batches:
            b = self.to_device(batch)
            with self._autocast():
                out = g(b["image"], b["input_ids"], b["attention_mask"])
            mask = (out.mask_logits.float() > 0).float()
            removed = b["image"] * (1 - mask) + out.image.float() * mask
            m.update(removed, b["ground_truth"], mask > 0.5, b["mask"] > 0.5)
            inter, union = mask_intersection_union((mask > 0.5).cpu(), (b["mask"] > 0.5).cpu())
            ious += iou_scores(inter, union).tolist()
            pred_tags.append(out.tags.cpu())
            gold_tags.append(b["tags"].cpu())
            masks.append(b["attention_mask"].cpu())
        result = m.compute()
        if pred_tags:
            rep = tagging_accuracy(torch.cat(pred_tags), torch.cat(gold_tags), torch.cat(masks))
            result["tagging_accuracy"] = {
                "value": rep.accuracy,
                "per_tag": rep.per_tag,
                "n": rep.tokens,
                "reference": "lexicon silver tags",
            }
        return result, ious

    def evaluate(
        self,
        dataset: Dataset,
        batch_size: int = 4,
        metrics: RemovalMetrics | None = None,
        num_workers: int = 0,
    ) -> dict[str, dict[str, Any]]:
        """Predict masks and removals for a dataset and compute the ``metrics.json`` dictionary."""
        loader = self.loader(dataset, batch_size, shuffle=False, num_workers=num_workers)
        return self.evaluate_batches(loader, metrics)[0]
