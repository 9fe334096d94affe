"""Deformable convolution (DCNv1/v2) written on one ``F.grid_sample``, so it runs without torchvision.

All kernel taps are sampled in a single bilinear ``grid_sample`` call (zero padding, ``align_corners=True``)
and contracted with the weight in one matmul. Positions and sampling are computed in fp32 under autocast
(bf16 would round sampling positions to ½ pixel); the contraction follows the autocast dtype. Offsets
use the ``torchvision.ops.deform_conv2d`` layout: channel ``2k`` is the y offset and ``2k+1`` the x offset
of tap ``k`` (taps in row-major kernel order).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from comcoco.sahm.precision import fp32


def deform_conv2d(
    x: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    padding: int = 1,
    dilation: int = 1,
) -> torch.Tensor:
    """Stride-1 deformable convolution.

    x (B,C,H,W); offset (B,2K,Ho,Wo); weight (Cout,C,kh,kw); mask (B,K,Ho,Wo) modulation or None.
    With zero offsets and no mask this equals ``F.conv2d(x, weight, bias, padding=padding, dilation=dilation)``.
    """
    b, c, h, w = x.shape
    cout, cin, kh, kw = weight.shape
    if cin != c:
        raise ValueError(f"weight expects {cin} input channels, input has {c}")
    k = kh * kw
    ho = h + 2 * padding - dilation * (kh - 1)
    wo = w + 2 * padding - dilation * (kw - 1)
    if offset.shape != (b, 2 * k, ho, wo):
        raise ValueError(f"offset must have shape {(b, 2 * k, ho, wo)}, got {tuple(offset.shape)}")
    dev, ft = x.device, torch.promote_types(x.dtype, torch.float32)  # fp32, or fp64 for gradcheck
    with fp32(x):  # positions near 100 px are held to ½ px in bf16: sample in fp32, contract under autocast
        ky, kx = torch.meshgrid(
            torch.arange(kh, device=dev, dtype=ft) * dilation - padding,
            torch.arange(kw, device=dev, dtype=ft) * dilation - padding,
            indexing="ij",
        )
        oy, ox = torch.meshgrid(
            torch.arange(ho, device=dev, dtype=ft),
            torch.arange(wo, device=dev, dtype=ft),
            indexing="ij",
        )
        off = offset.to(ft).view(b, k, 2, ho, wo)
        py = oy.view(1, 1, ho, wo) + ky.reshape(1, k, 1, 1) + off[:, :, 0]  # (B,K,Ho,Wo)
        px = ox.view(1, 1, ho, wo) + kx.reshape(1, k, 1, 1) + off[:, :, 1]
        gy = py * (2.0 / max(h - 1, 1)) - 1.0
        gx = px * (2.0 / max(w - 1, 1)) - 1.0
        grid = torch.stack((gx, gy), dim=-1).view(b, k * ho, wo, 2)
        cols = F.grid_sample(x.to(ft), grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    cols = cols.view(b, c, k, ho, wo)
    if mask is not None:
        cols = cols * mask.view(b, 1, k, ho, wo)
    out = torch.matmul(weight.reshape(cout, c * k), cols.reshape(b, c * k, ho * wo))  # (B,Cout,Ho*Wo)
    out = out.view(b, cout, ho, wo)
    if bias is not None:
        out = out + bias.view(1, cout, 1, 1)
    return out


class DeformConv2d(nn.Module):
    """A 3×3 (by default) modulated deformable conv whose offsets and mask are given by the caller."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, padding: int = 1, bias: bool = True):
        super().__init__()
        self.padding = padding
        self.weight = nn.Parameter(torch.empty(out_ch, in_ch, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_ch)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    @property
    def taps(self) -> int:
        return self.weight.shape[2] * self.weight.shape[3]

    def forward(
        self, x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return deform_conv2d(x, offset, self.weight, self.bias, mask, padding=self.padding)


class AlignedDeformConv(nn.Module):
    """FaPN-style alignment: offsets and modulation predicted from [skip, 2·upsampled], then deformable 3×3.

    f₁ is the 3×3 conv producing 2K offsets and K modulation logits; f₂ the deformable conv. f₁ starts at
    zero so training begins from a plain 3×3 conv on the upsampled map.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.dcn = DeformConv2d(channels, channels)
        k = self.dcn.taps
        self.offset_conv = nn.Conv2d(2 * channels, 3 * k, 3, padding=1)
        nn.init.zeros_(self.offset_conv.weight)
        nn.init.zeros_(self.offset_conv.bias)

    def forward(self, upsampled: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        k = self.dcn.taps
        om = self.offset_conv(torch.cat([skip, 2.0 * upsampled], dim=1))
        offset, mod = om[:, : 2 * k], torch.sigmoid(om[:, 2 * k :])
        return self.dcn(upsampled, offset, mod)
