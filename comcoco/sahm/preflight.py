"""Preflight: build SAHM at its configured size, run real train steps, and say what a device can hold.

Three train steps (G forward and backward, D step, both AdamW updates) run on a synthetic batch of the
configuration's input size and longest expression. The first warms up (lazy initialisation, AdamW
moments) and is measured for the tensors autograd saves for backward (activations) and the FLOPs it
executes; the second for the peak of live tensor memory — every storage the step's operations create is
counted from its allocation to its release (a ``TorchDispatchMode`` with a finalizer per storage), on top
of the weights, gradients, optimiser state and batch already held, so the number does not depend on the
device or its allocator; the third is timed (and on CUDA also gives the allocator's peak).

Memory model (what "largest batch" extrapolates with): peak(B) = fixed + B × per-sample, where fixed is
the batch-independent training state — fp32 weights, gradients and the two AdamW moments of G and D,
16 bytes per parameter, plus 2 for autocast's low-precision weight copies — and per-sample =
(measured peak − fixed) / measured batch. The largest batch is the largest B with peak(B) within 90 % of
the device's memory (CUDA: total memory; CPU: available memory when the preflight starts).

On the CPU the same model gives estimates for reference GPUs: memory from the measured per-sample bytes,
step time as the longer of the counted FLOPs at an assumed share of the GPU's dense tensor-core peak and
the dispatched operations at an assumed host cost each. They are estimates until a GPU run measures them
(``--device cuda:N``).
"""

from __future__ import annotations

import math
import os
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from comcoco.sahm.config import SAHMConfig, get_config
from comcoco.sahm.distributed import resolve_device
from comcoco.sahm.model import count_parameters
from comcoco.sahm.runfiles import DEFAULT_BATCH, RunError
from comcoco.sahm.train import Trainer
from comcoco.text.syntax import TAG_ATTRIBUTE, TAG_IDENTITY

FIXED_BYTES_PER_PARAM = 16  # fp32 weight + gradient + AdamW exp_avg + exp_avg_sq
AUTOCAST_BYTES_PER_PARAM = 2  # bf16/fp16 weight copies autocast makes for one step
HEADROOM = 0.9  # share of device memory a step may plan to use (CUDA context, fragmentation)
# Assumed share of the dense tensor-core peak a train step reaches: an estimate, not a measurement (small
# batches, grid sampling, norms and casts keep this conv/attention mix well below peak).
GPU_UTILISATION = (0.1, 0.3)
# Assumed host time to dispatch one eager operation to a GPU: a step cannot be faster than its operations
# take to launch (PyTorch eager mode: roughly 5–20 µs each).
DISPATCH_SECONDS = 10e-6
# Reference GPUs: (name, memory GiB, dense tensor-core TFLOPS in the precision they would train with).
REFERENCE_GPUS: tuple[tuple[str, float, str, float], ...] = (
    ("T4 16 GB", 16, "fp16", 65),
    ("V100 32 GB", 32, "fp16", 125),
    ("A10 24 GB", 24, "bf16", 125),
    ("A100 80 GB", 80, "bf16", 312),
    ("H100 SXM 80 GB", 80, "bf16", 989),
)
GIB = 2**30


@dataclass(frozen=True)
class GPUEstimate:
    name: str
    memory_bytes: int
    precision: str
    max_batch: int
    batch: int  # the configuration's per-process batch, or max_batch if smaller
    step_seconds: tuple[float, float]  # at ``batch``, for the GPU_UTILISATION range (slowest first)


@dataclass(frozen=True)
class PreflightReport:
    config: str
    image_size: int
    batch: int
    device: str
    device_name: str
    precision: str
    threads: int
    params_g: int
    params_d: int
    fixed_bytes: int  # batch-independent training state (weights, gradients, AdamW moments)
    activation_bytes: int  # tensors saved for backward during one step, at ``batch``
    peak_bytes: int  # measured peak of live tensor memory during one step at ``batch``
    allocator_peak_bytes: int | None  # CUDA: the caching allocator's peak during the timed step
    step_seconds: float
    flops: int  # counted FLOPs of one train step at ``batch`` (matmul and convolution, forward and backward)
    ops: int  # operations one train step dispatches (almost independent of the batch size)
    device_bytes: int  # the memory the largest batch is planned against
    device_source: str
    per_sample_bytes: int
    max_batch: int
    gpus: list[GPUEstimate] = field(default_factory=list)


# --- memory probes -------------------------------------------------------------------------------------


def _available_bytes() -> tuple[int, str]:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024, "available memory (MemAvailable)"
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "free physical memory"


class LiveTensorBytes(TorchDispatchMode):
    """Live and peak bytes of tensor storages on one device while active.

    Storages given as ``initial`` and every storage an operation returns are counted once, until a
    finalizer sees the storage released; views share their base's storage and are not counted again.
    """

    def __init__(self, device: torch.device, initial: Iterable[torch.Tensor] = ()):
        super().__init__()
        self.device = device
        self.ids: set[int] = set()
        self.live = self.peak = 0
        self.ops = 0  # operations dispatched (each is at least one kernel launch on a GPU)
        for t in initial:
            self.add(t)

    def add(self, t: torch.Tensor) -> None:
        if t.device.type != self.device.type or t.is_meta:
            return
        st = t.untyped_storage()
        key = id(st)  # the storage's Python object lives as long as the storage
        if key in self.ids:
            return
        n = st.nbytes()
        self.ids.add(key)
        self.live += n
        self.peak = max(self.peak, self.live)
        weakref.finalize(st, self._release, key, n)

    def _release(self, key: int, n: int) -> None:
        if key in self.ids:
            self.ids.discard(key)
            self.live -= n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.add(t)
        return out


class _SavedTensors:
    """Bytes of the distinct non-parameter storages autograd saves for backward during one step."""

    def __init__(self, params: list[torch.nn.Parameter]):
        self.skip = {id(p.untyped_storage()) for p in params}
        self.held: dict[int, torch.UntypedStorage] = {}  # held until the step ends: no id is reused

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        if id(st) not in self.skip and id(st) not in self.held:
            self.held[id(st)] = st
        return t

    @property
    def nbytes(self) -> int:
        return sum(st.nbytes() for st in self.held.values())


def _state_tensors(trainer: Trainer, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """What a step starts from: weights, buffers, gradients, optimiser state, the batch."""
    out: list[torch.Tensor] = list(batch.values())
    for m in (trainer.G, trainer.D):
        out += [p for p in m.parameters()] + [b for b in m.buffers()]
        out += [p.grad for p in m.parameters() if p.grad is not None]
    for opt in (trainer.opt_g, trainer.opt_d):
        out += [v for st in opt.state.values() for v in st.values() if isinstance(v, torch.Tensor)]
    return out


# --- the measurement -----------------------------------------------------------------------------------


def synthetic_batch(cfg: SAHMConfig, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Images of the configured size, a centred object mask, and full-length expressions with every tag."""
    g = torch.Generator().manual_seed(seed)
    s, t = cfg.image_size, cfg.max_text_len
    mask = torch.zeros(batch, 1, s, s)
    mask[:, :, s // 4 : s // 2, s // 3 : 2 * s // 3] = 1
    tags = torch.zeros(batch, t, dtype=torch.long)
    tags[:, 1::4], tags[:, 2::4] = TAG_IDENTITY, TAG_ATTRIBUTE
    return {
        "image": torch.rand(batch, 3, s, s, generator=g),
        "ground_truth": torch.rand(batch, 3, s, s, generator=g),
        "mask": mask,
        "input_ids": torch.randint(5, cfg.text_vocab_size, (batch, t), generator=g),
        "attention_mask": torch.ones(batch, t, dtype=torch.long),
        "tags": tags,
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _measure(cfg: SAHMConfig, device: torch.device, precision: str | None, batch: int) -> dict:
    """Build the trainer; warm-up step (saved tensors, FLOPs), tracked step (live peak), timed step."""
    trainer = Trainer(cfg, None, device=device, precision=precision, seed=0)
    data = {k: v.to(device) for k, v in synthetic_batch(cfg, batch).items()}
    saved = _SavedTensors(list(trainer.G.parameters()) + list(trainer.D.parameters()))
    counter = FlopCounterMode(display=False)
    with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t), counter:
        trainer.train_step(data)
    activation, flops = saved.nbytes, counter.get_total_flops()
    del saved
    tracker = LiveTensorBytes(device, _state_tensors(trainer, data))
    start = tracker.live
    with tracker:
        trainer.train_step(data)
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    trainer.train_step(data)
    _sync(device)
    seconds = time.perf_counter() - t0
    allocator = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {"trainer": trainer, "activation": activation, "flops": flops, "peak": tracker.peak, "ops": tracker.ops,
            "start": start, "allocator": allocator, "seconds": seconds}


def gpu_estimates(fixed: int, per_sample: int, flops_per_sample: float, ops: int, batch: int) -> list[GPUEstimate]:
    """The memory model, counted FLOPs and dispatched operations applied to ``REFERENCE_GPUS``: a step takes
    the longer of its FLOPs at ``GPU_UTILISATION`` of the peak and its operations' dispatch time."""
    out = []
    for name, gib, prec, tflops in REFERENCE_GPUS:
        mem = int(gib * GIB)
        fit = max(0, math.floor((HEADROOM * mem - fixed) / max(per_sample, 1)))
        b = min(batch, fit)
        secs = tuple(max(b * flops_per_sample / (tflops * 1e12 * u), ops * DISPATCH_SECONDS) for u in GPU_UTILISATION)
        out.append(GPUEstimate(name, mem, prec, fit, b, secs))  # type: ignore[arg-type]
    return out


def preflight(config: str = "paper", device: str = "auto", batch: int | None = None,
              precision: str | None = None, image_size: int | None = None) -> PreflightReport:
    """Measure one configuration on one device (see the module docstring for what and how)."""
    dev = resolve_device(device)
    try:
        cfg = get_config(config, **({"image_size": image_size} if image_size else {}))
    except (ValueError, TypeError) as exc:
        raise RunError(f"--config {config}: {exc}") from None
    if batch is None:
        batch = DEFAULT_BATCH.get(config, 1) if dev.type == "cuda" else 1
    if batch < 1:
        raise RunError(f"--batch must be >= 1, got {batch}")
    if dev.type == "cuda":
        device_bytes, device_source = torch.cuda.get_device_properties(dev).total_memory, "total device memory"
    else:
        device_bytes, device_source = _available_bytes()
    try:
        m = _measure(cfg, dev, precision, batch)
    except torch.OutOfMemoryError:
        raise RunError(f"batch {batch} does not fit on {dev} at {cfg.image_size}²; try --batch 1") from None
    trainer = m["trainer"]
    n_g, n_d = count_parameters(trainer.G), count_parameters(trainer.D)
    fixed = (n_g + n_d) * (FIXED_BYTES_PER_PARAM + (AUTOCAST_BYTES_PER_PARAM if trainer.precision != "fp32" else 0))
    peak = max(m["peak"], m["allocator"] or 0)  # on CUDA the allocator's peak also holds workspaces
    per_sample = max(int((peak - fixed) / batch), 1)
    max_batch = max(0, math.floor((HEADROOM * device_bytes - fixed) / per_sample))
    gpus = []
    if dev.type == "cpu":
        gpus = gpu_estimates(fixed, per_sample, m["flops"] / batch, m["ops"], DEFAULT_BATCH.get(config, 1))
    return PreflightReport(
        config=cfg.name, image_size=cfg.image_size, batch=batch, device=str(dev),
        device_name=torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU",
        precision=trainer.precision, threads=torch.get_num_threads(), params_g=n_g, params_d=n_d,
        fixed_bytes=fixed, activation_bytes=int(m["activation"]), peak_bytes=int(m["peak"]),
        allocator_peak_bytes=m["allocator"], step_seconds=round(m["seconds"], 3), flops=int(m["flops"]),
        ops=int(m["ops"]),
        device_bytes=int(device_bytes), device_source=device_source, per_sample_bytes=per_sample,
        max_batch=max_batch, gpus=gpus,
    )


def _secs(lo: float, hi: float) -> str:
    if hi < 0.1:
        return f"{lo * 1e3:.0f}–{hi * 1e3:.0f} ms/step"
    return f"{lo:.2f}–{hi:.2f} s/step"


def _gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / 2**20:.1f} MiB"


def format_report(r: PreflightReport) -> list[str]:
    """The report as printed by ``comcoco sahm preflight``."""
    where = f"{r.device} ({r.device_name}{f', {r.threads} threads' if r.device == 'cpu' else ''})"
    lines = [
        f"SAHM preflight: {r.config} config, {r.image_size}² input, batch {r.batch}, {r.precision}, {where}",
        f"  parameters     G {r.params_g / 1e6:.2f} M, D {r.params_d / 1e6:.2f} M",
        f"  fixed state    {_gib(r.fixed_bytes)}  (weights, gradients, AdamW moments"
        f"{', autocast weight copies' if r.precision != 'fp32' else ''})",
        f"  activations    {_gib(r.activation_bytes)}  (tensors saved for backward in one step, measured)",
        f"  peak memory    {_gib(r.peak_bytes)}  (live tensors during one step, measured)"
        + (f"; CUDA allocator peak {_gib(r.allocator_peak_bytes)}" if r.allocator_peak_bytes else ""),
        f"  step time      {r.step_seconds:.2f} s  (G and D forward, backward and AdamW; measured, "
        f"second step)",
        f"  compute        {r.flops / 1e9:.1f} GFLOPs per step  (matmul and convolution, counted), "
        f"{r.ops} operations dispatched",
        f"  largest batch  {r.max_batch} on this device: {_gib(HEADROOM * r.device_bytes)} usable "
        f"({HEADROOM:.0%} of {_gib(r.device_bytes)}, {r.device_source})",
        f"                 extrapolated from batch {r.batch}: peak(B) = fixed + B × per-sample, per-sample = "
        f"(peak − fixed) / {r.batch} = {_gib(r.per_sample_bytes)}",
    ]
    if r.gpus:
        lo, hi = GPU_UTILISATION
        lines.append(f"  GPU estimates (until measured): memory from the {r.precision} per-sample bytes above; "
                     f"time: FLOPs at {lo:.0%}–{hi:.0%} of the dense peak, at least "
                     f"{DISPATCH_SECONDS * 1e6:.0f} µs per operation")
        for g in r.gpus:
            step = _secs(g.step_seconds[1], g.step_seconds[0]) if g.batch else "does not fit"
            lines.append(f"    {g.name:<16} {g.precision}  largest batch {g.max_batch:>3}   batch {g.batch}: {step}")
    return lines
