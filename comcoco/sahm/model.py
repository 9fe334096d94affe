"""The SAHM generator: SwinV2 + ALBERT + BiLSTM-CRF, syntax-aware fusion, hybrid mapping decoder."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from comcoco.sahm.config import SAHMConfig, get_config
from comcoco.sahm.decoder import FillingDecoder, SegmentationDecoder
from comcoco.sahm.discriminator import PatchGAN
from comcoco.sahm.encoders import SwinStages, build_albert, build_swin
from comcoco.sahm.fusion import SyntaxAwareAttention, TextProjection
from comcoco.sahm.text import SyntaxTagger
from comcoco.text.syntax import TAG_ATTRIBUTE, TAG_IDENTITY


@dataclass
class SAHMOutput:
    """Generator outputs. Lists run coarse→fine; the last RGB entry and ``mask_logits`` are full size."""

    mask_logits: torch.Tensor  # (B, 1, H, W) full-resolution logits
    mask_levels: list[torch.Tensor]  # logits at strides 32, 16, 8, 4
    rgb_levels: list[torch.Tensor]  # RGB in [0, 1] at strides 32, 16, 8, 4, 1
    tag_emissions: torch.Tensor  # (B, T, 3) BiLSTM emissions for the CRF
    tags: torch.Tensor  # (B, T) tags used by the attention heads

    @property
    def image(self) -> torch.Tensor:
        return self.rgb_levels[-1]


class SAHMGenerator(nn.Module):
    """Image + expression → (mask of the referred object, image with the object removed)."""

    def __init__(self, cfg: SAHMConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        dims = cfg.stage_dims
        self.image_encoder = SwinStages(build_swin(cfg))
        self.text_encoder = build_albert(cfg)
        self.tagger = SyntaxTagger(cfg.text_hidden_size, cfg.lstm_hidden)
        self.text_proj = TextProjection(cfg.text_hidden_size, cfg.fusion_dim)
        self.fusion = nn.ModuleList(
            SyntaxAwareAttention(c, cfg.fusion_dim, min(c, cfg.fusion_dim)) for c in dims
        )
        self.seg_decoder = SegmentationDecoder(dims, cfg.decoder_dim)
        fill_dim = max(cfg.decoder_dim // 2, 16)
        fill_level = {16: 1, 8: 2}[cfg.fill_stride]
        self.fill_decoder = FillingDecoder(
            dims, cfg.decoder_dim, fill_dim, fill_level, cfg.fill_softmax_scale
        )

    def forward(
        self,
        image: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        tags: torch.Tensor | None = None,
    ) -> SAHMOutput:
        """image (B,3,H,W) in [0,1]; tags (B,T) silver tags, or None to use the CRF's Viterbi tags."""
        text = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        emissions = self.tagger(text)
        if tags is None:
            with torch.no_grad():
                tags = self.tagger.decode(emissions, attention_mask)
        lang = self.text_proj(text)
        ident = tags == TAG_IDENTITY
        attr = tags == TAG_ATTRIBUTE

        def fuse(i: int, fmap: torch.Tensor) -> torch.Tensor:
            return self.fusion[i](fmap, lang, attention_mask, ident, attr)

        feats = self.image_encoder(image, fuse)
        seg_maps, mask_levels = self.seg_decoder(feats)
        probs = [torch.sigmoid(m).detach() for m in mask_levels]
        mask_logits = F.interpolate(
            mask_levels[-1], size=image.shape[-2:], mode="bilinear", align_corners=False
        )
        full = torch.sigmoid(mask_logits).detach()
        rgb_levels = self.fill_decoder(feats, seg_maps, probs, image, full)
        return SAHMOutput(mask_logits, mask_levels, rgb_levels, emissions, tags)

    @torch.no_grad()
    def predict(
        self,
        image: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        threshold: float = 0.5,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Hard mask (B,1,H,W) and the removal result: input outside the mask, generated inside."""
        out = self.forward(image, input_ids, attention_mask)
        mask = (torch.sigmoid(out.mask_logits) > threshold).to(image.dtype)
        return mask, image * (1 - mask) + out.image * mask


def _cfg(config: str | SAHMConfig) -> SAHMConfig:
    return get_config(config) if isinstance(config, str) else config


def build_generator(config: str | SAHMConfig = "paper") -> SAHMGenerator:
    """The SAHM generator for a named config (``paper``, ``tiny``) or an explicit ``SAHMConfig``."""
    return SAHMGenerator(_cfg(config))


def build_discriminator(config: str | SAHMConfig = "paper") -> PatchGAN:
    """The PatchGAN discriminator for a config."""
    cfg = _cfg(config)
    return PatchGAN(cfg.disc_ndf, cfg.disc_layers)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def parameter_breakdown(g: SAHMGenerator) -> dict[str, int]:
    """Parameters per generator part (for the benchmark and docs)."""
    return {name: count_parameters(m) for name, m in g.named_children()}
