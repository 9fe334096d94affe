"""Syntax-aware visual attention (paper §4): three language heads per Swin stage, merged and fused.

Head 1 attends over all words with cosine similarity and a learnable temperature γ (spreads attention over
the sentence); head 2 uses scaled dot-product over attribute words only (a peaked, truncated distribution);
head 3 is hard attention with weight 1 on every identity word. Each head yields a language map Gⱼ and
headⱼ = V ⊙ Gⱼ; P = Σ wⱼ headⱼ with softmax-normalised learnable wⱼ, and the stage output is
V + W_o P (no norm, so a pretrained Swin's residual stream keeps its scale). Attention runs at ``min(Cᵢ, fusion_dim)`` channels to keep the paper's budget.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from comcoco.sahm.precision import LayerNorm32, fp32

NEG = -1e4  # masked logit; finite so a row with nothing to attend never turns into NaN


class SyntaxAwareAttention(nn.Module):
    """One fusion block for a visual map (B, C, H, W) and projected text (B, T, D)."""

    def __init__(self, vis_dim: int, text_dim: int, dim: int):
        super().__init__()
        self.dim = dim
        self.q = nn.Conv2d(vis_dim, dim, 1)
        self.v_vis = nn.Conv2d(vis_dim, dim, 1)
        self.k1 = nn.Linear(text_dim, dim)
        self.v1 = nn.Linear(text_dim, dim)
        self.k2 = nn.Linear(text_dim, dim)
        self.v2 = nn.Linear(text_dim, dim)
        self.v3 = nn.Linear(text_dim, dim)
        self.log_gamma = nn.Parameter(torch.tensor(math.log(0.1)))  # cosine / γ with γ learnable per stage
        self.head_logits = nn.Parameter(torch.zeros(3))
        self.out = nn.Conv2d(dim, vis_dim, 1)
        # small output init: a pretrained Swin sees (almost) its own features at the start of training
        nn.init.normal_(self.out.weight, std=0.02)
        nn.init.zeros_(self.out.bias)

    def head_weights(self) -> torch.Tensor:
        return torch.softmax(self.head_logits, dim=0)

    def forward(
        self,
        vis: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        identity_mask: torch.Tensor,
        attribute_mask: torch.Tensor,
    ) -> torch.Tensor:
        b, _, h, w = vis.shape
        q = self.q(vis).flatten(2).transpose(1, 2)  # (B, HW, d)
        vv = self.v_vis(vis)  # (B, d, H, W)
        valid = text_mask.bool()
        attr = attribute_mask.bool() & valid
        ident = identity_mask.bool() & valid

        k1, v1, k2, v2 = self.k1(text), self.v1(text), self.k2(text), self.v2(text)
        with fp32(q):  # logits and softmax in fp32: q·k of Swin features overflows fp16, 1/γ is unbounded
            qf = q.float()
            # head 1: cosine over all words, learnable temperature
            s1 = torch.einsum("bnd,btd->bnt", F.normalize(qf, dim=-1), F.normalize(k1.float(), dim=-1))
            s1 = (s1 / self.log_gamma.float().exp()).masked_fill(~valid[:, None, :], NEG)
            g1 = torch.softmax(s1, dim=-1) @ v1.float()

            # head 2: scaled dot-product over attribute words; zero when a sentence has none
            s2 = torch.einsum("bnd,btd->bnt", qf, k2.float()) / math.sqrt(self.dim)
            s2 = s2.masked_fill(~attr[:, None, :], NEG)
            has_attr = attr.any(dim=1).float().view(b, 1, 1)
            g2 = (torch.softmax(s2, dim=-1) @ v2.float()) * has_attr

        # head 3: hard attention, weight 1 on each identity word (same language vector at every position)
        v3 = self.v3(text)
        g3 = torch.einsum("bt,btd->bd", ident.to(v3.dtype), v3)[:, None, :].expand(b, h * w, self.dim)

        wts = self.head_weights()
        lang = (wts[0] * g1 + wts[1] * g2 + wts[2] * g3.float()).to(vv.dtype)  # (B, HW, d)
        p = vv * lang.transpose(1, 2).reshape(b, self.dim, h, w)  # Σ wⱼ (V ⊙ Gⱼ)
        return vis + self.out(p)


class TextProjection(nn.Module):
    """Shared projection of ALBERT features to the fusion width (keeps per-stage heads small)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(in_dim, out_dim), LayerNorm32(out_dim))

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        return self.proj(text)
