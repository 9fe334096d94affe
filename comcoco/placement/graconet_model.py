"""GracoNet's network (Zhou et al., ECCV 2022), in the official checkpoint's layout.

Module and attribute names, ``Sequential`` indices and shapes follow the official code, so the
``model`` entry of an official ``.pth`` loads with ``strict=True`` (``comcoco.placement.graconet``
reads checkpoints and places objects with it). The backbone is VGG16-BN ``features[:34]`` with a
4-channel first convolution, built by hand (no torchvision, no ImageNet download, no device
hard-coding).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

BN_MOMENTUM = 0.1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# VGG16-BN up to pool4: conv widths, "M" = 2x2 max-pool (34 modules: conv, BN, ReLU per conv)
_VGG_POOL4 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M")



@dataclass(frozen=True)
class GracoNetConfig:
    """Hyper-parameters of the official ``opt`` namespace that shape the network."""

    d_model: int = 512
    d_noise: int = 1024
    d_k: int = 64
    d_v: int = 64
    n_heads: int = 8
    len_k: int = 84
    img_size: int = 256

    @classmethod
    def from_namespace(cls, opt: object) -> GracoNetConfig:
        """Take the shape-defining fields from a checkpoint's ``opt``; missing ones keep defaults."""
        values = {f.name: int(getattr(opt, f.name)) for f in fields(cls) if hasattr(opt, f.name)}
        return cls(**values)


# --- network -----------------------------------------------------------------------------------


def make_shared_net(in_channels: int = 4) -> nn.Sequential:
    """VGG16-BN ``features[:34]`` (stride 16, 512 channels) with a 4-channel first conv."""
    layers: list[nn.Module] = []
    c = in_channels
    for v in _VGG_POOL4:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [
                nn.Conv2d(c, int(v), kernel_size=3, padding=1),
                nn.BatchNorm2d(int(v)),
                nn.ReLU(inplace=True),
            ]
            c = int(v)
    return nn.Sequential(*layers)


class FgBgLayer(nn.Module):
    """Three 3x3 conv-BN-ReLU blocks, then average-pooled to an n x n grid of graph nodes."""

    def __init__(self, cfg: GracoNetConfig, n_mesh: int):
        super().__init__()
        d = cfg.d_model
        self.features = nn.Sequential(
            nn.Conv2d(d, 512, kernel_size=3, padding=1),
            nn.BatchNorm2d(512, momentum=BN_MOMENTUM),
            nn.ReLU(inplace=True),
            nn.Conv2d(512, 512, kernel_size=3, padding=1),
            nn.BatchNorm2d(512, momentum=BN_MOMENTUM),
            nn.ReLU(inplace=True),
            nn.Conv2d(512, d, kernel_size=3, padding=1),
            nn.BatchNorm2d(d, momentum=BN_MOMENTUM),
            nn.ReLU(inplace=True),
        )
        self.pool = nn.AdaptiveAvgPool2d((n_mesh, n_mesh))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(self.features(x))
        return pooled.flatten(2).transpose(1, 2).contiguous()  # (B, n*n, d)


class FgBgHead(nn.Module):
    """Nodes at several grid sizes, concatenated (bg: 2x2 + 4x4 + 8x8 = 84 nodes)."""

    def __init__(self, cfg: GracoNetConfig, n_mesh_list: Sequence[int]):
        super().__init__()
        self.layers = nn.ModuleList([FgBgLayer(cfg, n) for n in n_mesh_list])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([layer(x) for layer in self.layers], dim=1)


class ScaledDotProductAttention(nn.Module):
    """Attention with a learned positional embedding per head and background node on K and V."""

    def __init__(self, cfg: GracoNetConfig):
        super().__init__()
        self.d_k = cfg.d_k
        self.pos_k = nn.Embedding(cfg.n_heads * cfg.len_k, cfg.d_k)
        self.pos_v = nn.Embedding(cfg.n_heads * cfg.len_k, cfg.d_v)
        ids = torch.arange(cfg.n_heads * cfg.len_k, dtype=torch.long).view(1, cfg.n_heads, cfg.len_k)
        self.register_buffer("pos_ids", ids, persistent=False)  # not in the official checkpoint

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k_pos = self.pos_k(self.pos_ids)
        v_pos = self.pos_v(self.pos_ids)
        scores = torch.matmul(q, (k + k_pos).transpose(-1, -2)) / math.sqrt(self.d_k)
        attn = torch.softmax(scores, dim=-1)
        return torch.matmul(attn, v + v_pos), attn


class MultiHeadAttention(nn.Module):
    """Foreground node attends to the background nodes; residual + LayerNorm."""

    def __init__(self, cfg: GracoNetConfig):
        super().__init__()
        self.cfg = cfg
        self.W_Q = nn.Linear(cfg.d_model, cfg.d_k * cfg.n_heads)
        self.W_K = nn.Linear(cfg.d_model, cfg.d_k * cfg.n_heads)
        self.W_V = nn.Linear(cfg.d_model, cfg.d_v * cfg.n_heads)
        self.att = ScaledDotProductAttention(cfg)
        self.W_O = nn.Linear(cfg.n_heads * cfg.d_v, cfg.d_model)
        self.norm = nn.LayerNorm(cfg.d_model)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, h = q.size(0), self.cfg.n_heads
        q_s = self.W_Q(q).view(b, -1, h, self.cfg.d_k).transpose(1, 2)
        k_s = self.W_K(k).view(b, -1, h, self.cfg.d_k).transpose(1, 2)
        v_s = self.W_V(v).view(b, -1, h, self.cfg.d_v).transpose(1, 2)
        context, attn = self.att(q_s, k_s, v_s)
        context = context.transpose(1, 2).contiguous().view(b, -1, h * self.cfg.d_v)
        return self.norm(self.W_O(context) + q), attn


class FgBgAttention(nn.Module):
    def __init__(self, cfg: GracoNetConfig):
        super().__init__()
        self.att = MultiHeadAttention(cfg)

    def forward(self, fg: torch.Tensor, bg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.att(fg, bg, bg)


class VAEEncoder(nn.Module):
    """Training path 2: real composite features -> (mu, log sigma^2) of the placement code."""

    def __init__(self, cfg: GracoNetConfig):
        super().__init__()
        self.fc1 = nn.Sequential(nn.Linear(cfg.d_model, 1024), nn.ReLU(inplace=True))
        self.fc2 = nn.Linear(1024, cfg.d_noise)
        self.fc3 = nn.Linear(1024, cfg.d_noise)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.fc1(x)
        mu, logvar = self.fc2(h), self.fc3(h)
        code = mu + torch.randn_like(mu) * torch.exp(logvar / 2) if self.training else mu
        return code, mu, logvar


class FgBgRegression(nn.Module):
    """[attended fg node | code] -> three raw placement parameters."""

    def __init__(self, cfg: GracoNetConfig):
        super().__init__()
        self.regressor = nn.Sequential(
            nn.Linear(cfg.d_model + cfg.d_noise, 1024),
            nn.ReLU(True),
            nn.Dropout(0.5),
            nn.Linear(1024, 1024),
            nn.ReLU(True),
            nn.Dropout(0.5),
            nn.Linear(1024, 3),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.regressor(x)


def blend_theta(trans: torch.Tensor, fg_bbox: torch.Tensor, img_size: int) -> torch.Tensor:
    """The (B, 2, 3) affine matrix of GracoNet's differentiable blend for trans = (s, rx, ry)."""
    inv_s = 1.0 / (trans[:, 0] + 1e-6)
    zero = torch.zeros_like(inv_s)
    tx = (1 - 2 * trans[:, 1]) * (inv_s - fg_bbox[:, 2] / img_size)
    ty = (1 - 2 * trans[:, 2]) * (inv_s - fg_bbox[:, 3] / img_size)
    return torch.stack((torch.stack((inv_s, zero, tx), 1), torch.stack((zero, inv_s, ty), 1)), 1)


def gen_blend(
    bg_img: torch.Tensor,
    fg_img: torch.Tensor,
    fg_msk: torch.Tensor,
    fg_bbox: torch.Tensor,
    trans: torch.Tensor,
    img_size: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp the padded fg and mask by (s, rx, ry) and alpha-blend onto the bg, differentiably."""
    theta = blend_theta(trans, fg_bbox.to(trans.dtype), img_size)
    grid = F.affine_grid(theta, list(fg_img.shape), align_corners=True)
    fg_out = F.grid_sample(fg_img, grid, align_corners=True)
    msk_out = F.grid_sample(fg_msk, grid, align_corners=True)
    return msk_out * fg_out + (1 - msk_out) * bg_img, msk_out


def _init_normal(m: nn.Module) -> None:
    if isinstance(m, (nn.Conv2d, nn.Linear)):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def _normalize(img: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN, dtype=img.dtype, device=img.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=img.dtype, device=img.device).view(1, 3, 1, 1)
    return (img - mean) / std


class SysNet(nn.Module):
    """The GracoNet generator: shared backbone, graph nodes, attention, VAE encoder, regressor."""

    def __init__(self, cfg: GracoNetConfig | None = None, init_weight: bool = False):
        super().__init__()
        self.cfg = cfg or GracoNetConfig()
        self.img_size = self.cfg.img_size
        self.shared_net = make_shared_net(4)
        self.fg_head = FgBgHead(self.cfg, [1])
        self.bg_head = FgBgHead(self.cfg, [2, 4, 8])
        self.latent_head = FgBgHead(self.cfg, [1])
        self.att = FgBgAttention(self.cfg)
        self.vae_enc = VAEEncoder(self.cfg)
        self.regress_net = FgBgRegression(self.cfg)
        if init_weight:
            self.initialize_weight()

    def gen_blend(
        self,
        bg_img: torch.Tensor,
        fg_img: torch.Tensor,
        fg_msk: torch.Tensor,
        fg_bbox: torch.Tensor,
        trans: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return gen_blend(bg_img, fg_img, fg_msk, fg_bbox, trans, self.img_size)

    def initialize_weight(self) -> None:
        """The official training init, N(0, 0.02) outside the backbone (checkpoints overwrite it)."""
        for m in (self.fg_head, self.bg_head, self.latent_head, self.att, self.vae_enc, self.regress_net):
            m.apply(_init_normal)

    def attend(self, bg_img: torch.Tensor, fg_img: torch.Tensor, fg_msk: torch.Tensor) -> torch.Tensor:
        """The fg node after attending to the 84 bg nodes: (B, d_model). Inputs in [0, 1]."""
        fg_feats = self.shared_net(torch.cat((_normalize(fg_img), fg_msk), dim=1))
        bg_feats = self.shared_net(torch.cat((_normalize(bg_img), torch.zeros_like(fg_msk)), dim=1))
        attended, _ = self.att(self.fg_head(fg_feats), self.bg_head(bg_feats))
        return attended.squeeze(1)

    def regress(self, attended: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        """(s, rx, ry) in (0, 1) from the attended fg node and a code."""
        return torch.tanh(self.regress_net(torch.cat((attended, code), dim=1))) / 2.0 + 0.5

    def forward(
        self,
        bg_img: torch.Tensor,
        fg_img: torch.Tensor,
        fg_msk: torch.Tensor,
        fg_bbox: torch.Tensor,
        comp_img: torch.Tensor | None = None,
        comp_msk: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """Path 1 (code ``noise``, drawn if None); with a real composite also path 2 (VAE code)."""
        if (comp_img is None) != (comp_msk is None):
            raise ValueError("comp_img and comp_msk must be given together")
        attended = self.attend(bg_img, fg_img, fg_msk)
        if noise is None:
            noise = torch.randn(attended.shape[0], self.cfg.d_noise, device=attended.device)
        trans_1 = self.regress(attended, noise)
        blend_1, msk_1 = self.gen_blend(bg_img, fg_img, fg_msk, fg_bbox, trans_1)
        if comp_img is None or comp_msk is None:
            return blend_1, msk_1, trans_1
        comp_feats = self.shared_net(torch.cat((_normalize(comp_img), comp_msk), dim=1))
        code, mu, logvar = self.vae_enc(self.latent_head(comp_feats).squeeze(1))
        trans_2 = self.regress(attended, code)
        blend_2, msk_2 = self.gen_blend(bg_img, fg_img, fg_msk, fg_bbox, trans_2)
        return blend_1, msk_1, trans_1, blend_2, msk_2, trans_2, mu, logvar


class Discriminator(nn.Module):
    """PatchGAN on the normalised composite + mask; patch scores averaged to one per image."""

    def __init__(self, input_nc: int = 4, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        seq: list[nn.Module] = [nn.Conv2d(input_nc, ndf, 4, stride=2, padding=2), nn.LeakyReLU(0.2, True)]
        nf = ndf
        for _ in range(1, n_layers):
            prev, nf = nf, min(nf * 2, 512)
            seq += [
                nn.Conv2d(prev, nf, 4, stride=2, padding=2),
                nn.InstanceNorm2d(nf),
                nn.LeakyReLU(0.2, True),
            ]
        prev, nf = nf, min(nf * 2, 512)
        seq += [nn.Conv2d(prev, nf, 4, stride=1, padding=2), nn.InstanceNorm2d(nf), nn.LeakyReLU(0.2, True)]
        seq += [nn.Conv2d(nf, 1, 4, stride=1, padding=2), nn.Sigmoid()]
        self.model = nn.Sequential(*seq)

    def forward(self, img: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = self.model(torch.cat((_normalize(img), mask), dim=1))
        return F.adaptive_avg_pool2d(out, (1, 1)).flatten()
