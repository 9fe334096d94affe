"""SwinV2 and ALBERT encoders built from explicit configs (random init) or local Hugging Face folders.

The Swin model is run stage by stage so the text fusion can act between the blocks of a stage and its
patch merging. That uses transformers internals (``embeddings``, ``encoder.layers[i].blocks`` and
``.downsample``) pinned to transformers 5.23 and covered by tests.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from comcoco.errors import ComcocoError
from comcoco.sahm.config import SAHMConfig

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class WeightsError(ComcocoError):
    """A weights folder is missing or does not match the configuration; names the folder."""


def swin_config(cfg: SAHMConfig):
    from transformers import Swinv2Config

    return Swinv2Config(
        image_size=cfg.image_size,
        patch_size=4,
        num_channels=3,
        embed_dim=cfg.swin_embed_dim,
        depths=list(cfg.swin_depths),
        num_heads=list(cfg.swin_heads),
        window_size=cfg.swin_window,
        drop_path_rate=cfg.swin_drop_path,
    )


def albert_config(cfg: SAHMConfig):
    """ALBERT base v2 shape by default; ``AlbertConfig()`` alone would be xxlarge (222 M params)."""
    from transformers import AlbertConfig

    return AlbertConfig(
        vocab_size=cfg.text_vocab_size,
        embedding_size=cfg.text_embedding_size,
        hidden_size=cfg.text_hidden_size,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads,
        intermediate_size=cfg.text_intermediate_size,
        hidden_act="gelu_new",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        max_position_embeddings=512,
        pad_token_id=0,
    )


def _load_local(model_cls, folder: str, what: str, **overrides):
    p = Path(folder)
    if not (p / "config.json").is_file():
        raise WeightsError(f"{what} weights folder has no config.json: {p}")
    try:
        return model_cls.from_pretrained(str(p), local_files_only=True, **overrides)
    except Exception as exc:
        raise WeightsError(f"cannot load {what} weights from {p}: {exc}") from exc


def build_swin(cfg: SAHMConfig) -> nn.Module:
    """A ``Swinv2Model`` without pooler: random init, or weights from ``cfg.swin_weights``."""
    from transformers import Swinv2Model

    if cfg.swin_weights:
        m = _load_local(
            Swinv2Model,
            cfg.swin_weights,
            "SwinV2",
            add_pooling_layer=False,
            image_size=cfg.image_size,
            window_size=cfg.swin_window,
        )
        if tuple(m.config.depths) != tuple(cfg.swin_depths) or m.config.embed_dim != cfg.swin_embed_dim:
            raise WeightsError(f"SwinV2 weights in {cfg.swin_weights} do not match config {cfg.name!r}")
        return m
    return Swinv2Model(swin_config(cfg), add_pooling_layer=False)


def build_albert(cfg: SAHMConfig) -> nn.Module:
    """An ``AlbertModel`` without pooler: random init, or weights from ``cfg.albert_weights``."""
    from transformers import AlbertModel

    if cfg.albert_weights:
        m = _load_local(AlbertModel, cfg.albert_weights, "ALBERT", add_pooling_layer=False)
        if m.config.hidden_size != cfg.text_hidden_size:
            raise WeightsError(f"ALBERT weights in {cfg.albert_weights} do not match config {cfg.name!r}")
        return m
    return AlbertModel(albert_config(cfg), add_pooling_layer=False)


class SwinStages(nn.Module):
    """Runs a ``Swinv2Model`` stage by stage, calling ``fuse(i, feature_map)`` after each stage's blocks.

    Returns the four fused stage maps (B, Cᵢ, H/4·2⁻ⁱ, W/4·2⁻ⁱ).
    """

    def __init__(self, swin: nn.Module):
        super().__init__()
        self.swin = swin
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(
        self, image: torch.Tensor, fuse: Callable[[int, torch.Tensor], torch.Tensor]
    ) -> list[torch.Tensor]:
        x = (image - self.mean) / self.std
        h, dims = self.swin.embeddings(x)
        feats: list[torch.Tensor] = []
        last = len(self.swin.encoder.layers) - 1
        for i, stage in enumerate(self.swin.encoder.layers):
            for blk in stage.blocks:
                h = blk(h, dims)[0]
            if i == last:
                h = self.swin.layernorm(h)
            b, n, c = h.shape
            fmap = h.transpose(1, 2).reshape(b, c, dims[0], dims[1])
            fmap = fuse(i, fmap)
            feats.append(fmap)
            h = fmap.flatten(2).transpose(1, 2)
            if stage.downsample is not None:
                h = stage.downsample(h, dims)
                dims = ((dims[0] + 1) // 2, (dims[1] + 1) // 2)
        return feats
