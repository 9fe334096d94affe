"""Numeric precision of SAHM training: the ``--precision`` choice and the parts that always run in fp32.

``fp32`` trains without autocast; ``bf16`` and ``fp16`` run the step under ``torch.autocast`` (on CUDA and
on the CPU alike, so the mixed-precision path runs in CPU tests); ``fp16`` adds a gradient scaler. The
default is bf16 on CUDA devices that support it, fp16 on older GPUs and fp32 on the CPU.

Autocast's own op lists differ by device: on CUDA softmax, norms and normalisation layers are promoted to
fp32, on the CPU they run in the low precision. The operations where a low precision overflows or loses
what it computes are therefore kept in fp32 explicitly, the same on every device:

- attention logits and softmax of the syntax-aware fusion (head 1 divides a cosine by a learnable
  temperature, head 2 is an unnormalised dot product of Swin features, which exceeds fp16's 65,504);
- the contextual attention of the filling decoder (patch norms over C·9 values, cosine × softmax scale);
- the deformable convolution's sampling positions and bilinear sampling (bf16 holds pixel positions near
  100 only to ½ pixel);
- GroupNorm, LayerNorm and the discriminator's InstanceNorm (mean and variance of unbounded activations);
- every loss, the discriminator's logits and the CRF (already computed on ``.float()``).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

PRECISIONS = ("fp32", "bf16", "fp16")
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class PrecisionError(ValueError):
    """A precision the device cannot run, or an unknown name; the message names both."""


def resolve_precision(device: torch.device, precision: str | None = None) -> str:
    """``None``/``auto``: bf16 on CUDA with bf16 support, fp16 on other GPUs, fp32 on the CPU."""
    if precision in (None, "auto"):
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision not in PRECISIONS:
        raise PrecisionError(f"--precision must be one of auto, {', '.join(PRECISIONS)}; got {precision!r}")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        name = torch.cuda.get_device_name(device)
        raise PrecisionError(f"--precision bf16: {device} ({name}) does not support bfloat16; use fp16 or fp32")
    return precision


def autocast(device: torch.device, precision: str):
    """The step's autocast context (a disabled one for fp32)."""
    dtype = DTYPES[precision]
    if dtype is None:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=dtype)


def fp32(x: torch.Tensor):
    """A region where autocast is off for ``x``'s device: cast inputs with ``.float()`` inside it."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.autocast(x.device.type, enabled=False)
    return contextlib.nullcontext()


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in fp32 and returned in the input's dtype (same parameters as ``nn.GroupNorm``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with fp32(x):
            w = self.weight.float() if self.weight is not None else None
            b = self.bias.float() if self.bias is not None else None
            return F.group_norm(x.float(), self.num_groups, w, b, self.eps).to(x.dtype)


class LayerNorm32(nn.LayerNorm):
    """LayerNorm computed in fp32 and returned in the input's dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with fp32(x):
            w = self.weight.float() if self.weight is not None else None
            b = self.bias.float() if self.bias is not None else None
            return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).to(x.dtype)


class InstanceNorm32(nn.InstanceNorm2d):
    """InstanceNorm2d computed in fp32 and returned in the input's dtype (the PatchGAN's norm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with fp32(x):
            w = self.weight.float() if self.weight is not None else None
            b = self.bias.float() if self.bias is not None else None
            return F.instance_norm(x.float(), None, None, w, b, True, self.momentum or 0.0, self.eps).to(x.dtype)
