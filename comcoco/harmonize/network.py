"""Harmonizer-compatible argument regressor: loads an official ``harmonizer.pth`` by path, strictly.

Architecture (module names and shapes as the official checkpoint): an EfficientNet-B0 backbone in the
lukemelas *EfficientNet-PyTorch* layout whose stem is replaced by two 3×3 stride-2 convolutions
(``_conv_fg`` on [composite, mask], ``_conv_bg`` on [composite, 1 − mask], 16 channels each,
concatenated to 32), the 16 standard MBConv blocks, ``_conv_head`` (320 → 1280) and ``_bn1``; then a
cascade regressor (pooled 1280 → f, g of 160; per filter g ← Linear(320, 160)([f ‖ g]),
arg ← Linear(160, 1)(g)). Convolutions use TensorFlow-style "same" padding (asymmetric for stride 2),
batch norms eps 1e-3, activations swish. Weights are never bundled: the user supplies the file.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from comcoco.errors import ComcocoError
from comcoco.records import FILTER_NAMES, FilterArgs

INPUT_SIZE = 256
BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # PyTorch convention for TensorFlow's 0.99


class CheckpointError(ComcocoError):
    """A Harmonizer checkpoint that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class BlockSpec:
    """One MBConv stage of EfficientNet-B0: repeats, kernel, first stride, expansion, channels."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    in_ch: int
    out_ch: int
    se_ratio: float = 0.25


B0_STAGES: tuple[BlockSpec, ...] = (
    BlockSpec(1, 3, 1, 1, 32, 16),
    BlockSpec(2, 3, 2, 6, 16, 24),
    BlockSpec(2, 5, 2, 6, 24, 40),
    BlockSpec(3, 3, 2, 6, 40, 80),
    BlockSpec(3, 5, 1, 6, 80, 112),
    BlockSpec(4, 5, 2, 6, 112, 192),
    BlockSpec(1, 3, 1, 6, 192, 320),
)


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "same" padding computed from the input size (extra pixel right/bottom)."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1, bias: bool = True
    ):
        super().__init__(in_ch, out_ch, kernel, stride=stride, padding=0, groups=groups, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        pad_h = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pad_w = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if pad_h or pad_w:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(ch: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(ch, momentum=BN_MOMENTUM, eps=BN_EPS)


class MBConvBlock(nn.Module):
    """Mobile inverted bottleneck with squeeze-and-excitation (lukemelas key names)."""

    def __init__(
        self, in_ch: int, out_ch: int, expand: int, kernel: int, stride: int, se_ratio: float = 0.25
    ):
        super().__init__()
        mid = in_ch * expand
        self.expand = expand
        self.use_skip = stride == 1 and in_ch == out_ch
        if expand != 1:
            self._expand_conv = SameConv2d(in_ch, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        squeezed = max(1, int(in_ch * se_ratio))
        self._se_reduce = SameConv2d(mid, squeezed, 1)
        self._se_expand = SameConv2d(squeezed, mid, 1)
        self._project_conv = SameConv2d(mid, out_ch, 1, bias=False)
        self._bn2 = _bn(out_ch)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs
        if self.expand != 1:
            x = F.silu(self._bn0(self._expand_conv(x)))
        x = F.silu(self._bn1(self._depthwise_conv(x)))
        s = F.adaptive_avg_pool2d(x, 1)
        s = self._se_expand(F.silu(self._se_reduce(s)))
        x = torch.sigmoid(s) * x
        x = self._bn2(self._project_conv(x))
        return x + inputs if self.use_skip else x


class EfficientBackbone(nn.Module):
    """EfficientNet-B0 with Harmonizer's two-branch stem; returns the 1/32, 1280-channel feature."""

    def __init__(self, stages: tuple[BlockSpec, ...] = B0_STAGES):
        super().__init__()
        self._conv_fg = SameConv2d(4, 16, 3, stride=2, bias=False)
        self._bn_fg = _bn(16)
        self._conv_bg = SameConv2d(4, 16, 3, stride=2, bias=False)
        self._bn_bg = _bn(16)
        blocks = []
        for st in stages:
            for i in range(st.repeats):
                in_ch = st.in_ch if i == 0 else st.out_ch
                stride = st.stride if i == 0 else 1
                blocks.append(MBConvBlock(in_ch, st.out_ch, st.expand, st.kernel, stride, st.se_ratio))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(stages[-1].out_ch, 1280, 1, bias=False)
        self._bn1 = _bn(1280)

    def forward(self, fg: torch.Tensor, bg: torch.Tensor) -> torch.Tensor:
        xf = F.silu(self._bn_fg(self._conv_fg(fg)))
        xb = F.silu(self._bn_bg(self._conv_bg(bg)))
        x = torch.cat((xf, xb), dim=1)
        for block in self._blocks:
            x = block(x)
        return F.silu(self._bn1(self._conv_head(x)))


class CascadeArgumentRegressor(nn.Module):
    """Pooled feature → six arguments; each head sees the previous head's hidden state (linear)."""

    def __init__(self, in_ch: int = 1280, base: int = 160, heads: int = len(FILTER_NAMES)):
        super().__init__()
        self.f = nn.Linear(in_ch, 160)
        self.g = nn.Linear(in_ch, base)
        self.headers = nn.ModuleList(
            nn.ModuleList([nn.Linear(160 + base, base), nn.Linear(base, 1)]) for _ in range(heads)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        f = self.f(x)
        g = self.g(x)
        outs = []
        for hidden, out in self.headers:  # type: ignore[misc]
            g = hidden(torch.cat((f, g), dim=1))
            outs.append(out(g))
        return torch.cat(outs, dim=1)


class HarmonizerNet(nn.Module):
    """Harmonizer's argument predictor (backbone + regressor); the filters live in ``filters.py``."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = EfficientBackbone()
        self.regressor = CascadeArgumentRegressor()

    def forward(self, comp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Raw arguments (B, 6) for composites (B, 3, H, W) in [0, 1] and masks (B, 1, H, W)."""
        comp = F.interpolate(comp, (INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        mask = F.interpolate(mask, (INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        fg = torch.cat((comp, mask), dim=1)
        bg = torch.cat((comp, 1.0 - mask), dim=1)
        return self.regressor(self.backbone(fg, bg))


def expected_state_shapes() -> dict[str, tuple[int, ...]]:
    """Every key of an official checkpoint with its shape (the manifest a strict load checks)."""
    return {k: tuple(v.shape) for k, v in HarmonizerNet().state_dict().items()}


def _unwrap(obj: object, path: Path) -> Mapping[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(k, str) for k in inner):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) for k in obj):
        raise CheckpointError(f"{path}: not a state_dict (expected a mapping of parameter names to tensors)")
    keys = list(obj)
    if keys and all(k.startswith("module.") for k in keys):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def check_state_dict(state: Mapping[str, object], source: str = "checkpoint") -> None:
    """Refuse missing, unexpected or mis-shaped keys, naming the first offending key of each kind."""
    expected = expected_state_shapes()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    problems = []
    if missing:
        problems.append(
            f"missing key {missing[0]!r}" + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    if extra:
        problems.append(
            f"unexpected key {extra[0]!r}" + (f" (+{len(extra) - 1} more)" if len(extra) > 1 else "")
        )
    for key in sorted(set(expected) & set(state)):
        value = state[key]
        if not isinstance(value, torch.Tensor):
            problems.append(f"key {key!r} is not a tensor")
        elif tuple(value.shape) != expected[key]:
            problems.append(f"key {key!r} has shape {tuple(value.shape)}, expected {expected[key]}")
    if problems:
        raise CheckpointError(f"{source}: not a Harmonizer checkpoint: " + "; ".join(problems))


def load_harmonizer(path: str | os.PathLike[str], device: str = "cpu") -> HarmonizerNet:
    """Load an official Harmonizer ``harmonizer.pth`` (plain state_dict, or wrapped in 'model'/'state_dict').

    Uses ``weights_only=True`` (no code runs from the file) and a strict key/shape match.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: Harmonizer checkpoint not found")
    try:
        raw = torch.load(p, map_location=device, weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or unsafe files
        raise CheckpointError(f"{p}: cannot read checkpoint ({type(exc).__name__}: {exc})") from None
    state = _unwrap(raw, p)
    check_state_dict(state, str(p))
    net = HarmonizerNet()
    net.load_state_dict(state, strict=True)
    return net.to(device).eval()


def _mask_tensor(mask: np.ndarray, shape: tuple[int, int]) -> torch.Tensor:
    m = np.asarray(mask)
    if m.ndim == 3 and m.shape[2] == 1:
        m = m[..., 0]
    if m.shape != shape:
        raise ValueError(f"mask shape {np.asarray(mask).shape} does not match composite size {shape}")
    if m.dtype == np.uint8 and int(m.max(initial=0)) > 1:
        a = m.astype(np.float32) / 255.0
    else:
        a = np.clip(m.astype(np.float32), 0.0, 1.0)
    return torch.from_numpy(np.ascontiguousarray(a))[None, None]


@torch.no_grad()
def predict_arguments(net: HarmonizerNet, composite_uint8: np.ndarray, mask: np.ndarray) -> FilterArgs:
    """The six filter arguments for one composite, clamped to [−1, 1] as Harmonizer's inference does."""
    comp = np.asarray(composite_uint8)
    if comp.ndim != 3 or comp.shape[2] != 3 or comp.dtype != np.uint8:
        raise ValueError(f"composite must be uint8 HxWx3, got {comp.dtype} {comp.shape}")
    device = next(net.parameters()).device
    c = torch.from_numpy(np.ascontiguousarray(comp)).permute(2, 0, 1)[None].float().div(255.0)
    m = _mask_tensor(mask, comp.shape[:2])
    was_training = net.training
    net.eval()
    try:
        out = net(c.to(device), m.to(device))
    finally:
        net.train(was_training)
    vals = torch.clamp(out[0].float(), -1.0, 1.0).cpu().numpy().astype(np.float64)
    return FilterArgs.from_sequence(vals)
