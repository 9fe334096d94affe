"""SAHM's hybrid mapping decoder: aligned segmentation path and attention-based filling path.

Levels run coarse to fine over the four Swin stages (strides 32, 16, 8, 4). The segmentation map Sᵢ is
FaPN-style: Sᵢ = DCN(up(Sᵢ₊₁), offsets from [Ṽᵢ, 2·up(Sᵢ₊₁)]) + Ṽᵢ. The inpainting map Iᵢ clears features
predicted as foreground, and at ``fill_stride`` fills the hole by contextual attention — 3×3 patches of
up(Iᵢ₊₁) inside the predicted mask attend (cosine, softmax scale) to patches outside it and take values
from Sᵢ (Eq. 10) — then refines with hybrid dilated convolutions (rates 1, 2, 5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from comcoco.sahm.dcn import AlignedDeformConv
from comcoco.sahm.precision import GroupNorm32, fp32

NEG = -1e4


def _up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


class ResBlock(nn.Module):
    """Two 3×3 convs with a residual connection (GroupNorm, GELU)."""

    def __init__(self, ch: int, dilation: int = 1):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(ch, ch, 3, padding=dilation, dilation=dilation),
            GroupNorm32(min(8, ch), ch),
            nn.GELU(),
            nn.Conv2d(ch, ch, 3, padding=1),
            GroupNorm32(min(8, ch), ch),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x + self.body(x))


class HDC(nn.Module):
    """Hybrid dilated convolution: three sets of 3×3 convs with rates 1, 2, 5, each set residual."""

    def __init__(self, ch: int, sets: int = 3, rates: tuple[int, ...] = (1, 2, 5)):
        super().__init__()
        self.sets = nn.ModuleList(
            nn.Sequential(
                *[
                    m
                    for r in rates
                    for m in (
                        nn.Conv2d(ch, ch, 3, padding=r, dilation=r),
                        GroupNorm32(min(8, ch), ch),
                        nn.GELU(),
                    )
                ]
            )
            for _ in range(sets)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for s in self.sets:
            x = x + s(x)
        return x


def contextual_attention(
    keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, scale: float = 10.0
) -> torch.Tensor:
    """Fill every position from positions outside the mask.

    keys (B, C, H, W) give 3×3 patches compared by cosine similarity; values (B, Cv, H, W); mask (B, 1, H, W)
    in [0, 1]. A key patch touching the mask (3×3 max > 0.5) is suppressed. Returns (B, Cv, H, W) in fp32,
    computed in fp32 under autocast too.
    """
    b, c, h, w = keys.shape
    with fp32(keys):  # patch norms over C·9 values and the scaled softmax overflow or flatten in fp16/bf16
        patches = F.normalize(F.unfold(keys.float(), 3, padding=1), dim=1)  # (B, C·9, HW)
        sim = torch.bmm(patches.transpose(1, 2), patches) * scale  # (B, HW query, HW key)
        inside = F.max_pool2d(mask.float(), 3, stride=1, padding=1).flatten(1) > 0.5  # (B, HW)
        sim = sim.masked_fill(inside[:, None, :], NEG)
        attn = torch.softmax(sim, dim=-1)
        out = torch.bmm(attn, values.float().flatten(2).transpose(1, 2))  # (B, HW, Cv)
    return out.transpose(1, 2).reshape(b, values.shape[1], h, w)


class SegmentationDecoder(nn.Module):
    """Aligned multi-scale segmentation path; returns features and mask logits per level (coarse→fine)."""

    def __init__(self, stage_dims: tuple[int, ...], dim: int):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in stage_dims)
        self.top = ResBlock(dim)
        self.align = nn.ModuleList(AlignedDeformConv(dim) for _ in stage_dims[:-1])
        self.heads = nn.ModuleList(nn.Conv2d(dim, 1, 1) for _ in stage_dims)

    def forward(self, feats: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        n = len(feats)
        s = self.top(self.lateral[-1](feats[-1]))
        maps, logits = [s], [self.heads[-1](s)]
        for i in range(n - 2, -1, -1):
            skip = self.lateral[i](feats[i])
            s = self.align[i](_up(s, skip), skip) + skip
            maps.append(s)
            logits.append(self.heads[i](s))
        return maps, logits  # strides 32, 16, 8, 4


class FillingDecoder(nn.Module):
    """Inpainting path: mask-cleared skips, contextual attention and HDC at ``fill_level``, RGB per level."""

    def __init__(self, stage_dims: tuple[int, ...], seg_dim: int, dim: int, fill_level: int, scale: float):
        super().__init__()
        n = len(stage_dims)
        self.fill_level = fill_level  # index into the coarse→fine list of levels
        self.scale = scale
        self.lateral = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in stage_dims)
        self.top = nn.Sequential(*[ResBlock(dim) for _ in range(4)])
        self.merge = nn.ModuleList(nn.Conv2d(2 * dim, dim, 3, padding=1) for _ in range(n - 1))
        self.values = nn.Conv2d(seg_dim, dim, 1)
        self.hdc = HDC(dim)
        self.rgb = nn.ModuleList(nn.Conv2d(dim, 3, 1) for _ in range(n))
        half = max(dim // 2, 8)
        self.full = nn.Sequential(
            nn.Conv2d(dim + 4, half, 3, padding=1), nn.GELU(), nn.Conv2d(half, 3, 3, padding=1)
        )

    def forward(
        self,
        feats: list[torch.Tensor],
        seg_maps: list[torch.Tensor],
        masks: list[torch.Tensor],
        image: torch.Tensor,
        full_mask: torch.Tensor,
    ) -> list[torch.Tensor]:
        """feats fine→coarse (Swin order); seg_maps and masks coarse→fine; returns RGB coarse→fine + full."""
        n = len(feats)
        x = self.top(self.lateral[-1](feats[-1]) * (1 - masks[0]))
        rgbs = [torch.sigmoid(self.rgb[-1](x))]
        for lvl, i in enumerate(range(n - 2, -1, -1), start=1):
            m = masks[lvl]
            skip = self.lateral[i](feats[i]) * (1 - m)
            up = _up(x, skip)
            x = F.gelu(self.merge[i](torch.cat([up, skip], dim=1)))
            if lvl == self.fill_level:
                att = contextual_attention(up, self.values(seg_maps[lvl]), m, self.scale)
                x = x * (1 - m) + att * m
                x = self.hdc(x)
            rgbs.append(torch.sigmoid(self.rgb[i](x)))
        hole = image * (1 - full_mask)
        y = self.full(torch.cat([_up(x, image), hole, full_mask], dim=1))
        rgbs.append(torch.sigmoid(y))
        return rgbs
