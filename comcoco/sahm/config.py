"""SAHM configurations: the paper's model (480²) and a tiny CPU model for tests and smoke runs.

Every number the paper gives lives here, so a run records exactly what it trained with; values the paper
leaves open (decoder widths, GAN form, decay rate) are explicit choices documented in ``docs/sahm.md``.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from typing import Any


@dataclass(frozen=True)
class SAHMConfig:
    """All hyper-parameters of the generator, discriminator, losses and optimiser."""

    name: str
    image_size: int
    # SwinV2 image encoder (patch 4, four stages)
    swin_embed_dim: int
    swin_depths: tuple[int, ...]
    swin_heads: tuple[int, ...]
    swin_window: int
    swin_drop_path: float
    # ALBERT text encoder (explicit; AlbertConfig() defaults to xxlarge)
    text_vocab_size: int
    text_embedding_size: int
    text_hidden_size: int
    text_layers: int
    text_heads: int
    text_intermediate_size: int
    max_text_len: int
    # BiLSTM-CRF tagger (identity / attribute / other)
    lstm_hidden: int
    # fusion and decoders
    fusion_dim: int
    decoder_dim: int
    fill_stride: int  # the decoder level (16 or 8) that runs the contextual attention and HDC
    fill_softmax_scale: float
    # PatchGAN discriminator
    disc_ndf: int
    disc_layers: int
    # losses
    lambda_seg: float
    lambda_dice: float  # soft Dice per mask level beside the BCE; 0 in the paper (docs/sahm.md)
    lambda_rec: float
    lambda_adv: float
    lambda_crf: float
    gan_loss: str  # "bce" (Eq. 13, non-saturating generator term) or "hinge"
    adv_warmup_steps: int  # adversarial weight ramps linearly from 0 over these steps
    # optimiser (AdamW, Sec. 5.1)
    lr: float
    betas: tuple[float, float]
    weight_decay: float
    lr_decay: float  # exponential decay per epoch (the paper gives no rate)
    # optional local weights (Hugging Face folders); None = random init
    swin_weights: str | None = None
    albert_weights: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def stage_dims(self) -> tuple[int, ...]:
        return tuple(self.swin_embed_dim * 2**i for i in range(len(self.swin_depths)))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SAHMConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown SAHM config keys: {unknown}")
        required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
        missing = sorted(required - set(d))
        if missing:
            raise ValueError(f"SAHM config lacks {missing} (written by an older comcoco?)")
        vals = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()}
        return cls(**vals)

    def validate(self) -> None:
        """Reject combinations the model cannot run with, naming the field."""
        if self.image_size % 32:
            raise ValueError(f"image_size must be a multiple of 32, got {self.image_size}")
        if len(self.swin_depths) != 4 or len(self.swin_heads) != 4:
            raise ValueError("SwinV2 needs exactly four stages (swin_depths, swin_heads)")
        if self.fill_stride not in (8, 16):
            raise ValueError(f"fill_stride must be 8 or 16, got {self.fill_stride}")
        if self.gan_loss not in ("bce", "hinge"):
            raise ValueError(f"gan_loss must be 'bce' or 'hinge', got {self.gan_loss!r}")


PAPER = SAHMConfig(
    name="paper",
    image_size=480,
    swin_embed_dim=96,
    swin_depths=(2, 2, 6, 2),
    swin_heads=(3, 6, 12, 24),
    swin_window=8,
    swin_drop_path=0.1,
    text_vocab_size=30000,
    text_embedding_size=128,
    text_hidden_size=768,
    text_layers=12,
    text_heads=12,
    text_intermediate_size=3072,
    max_text_len=20,
    lstm_hidden=128,
    fusion_dim=128,
    decoder_dim=128,
    fill_stride=16,
    fill_softmax_scale=10.0,
    disc_ndf=64,
    disc_layers=3,
    lambda_seg=1.0,
    lambda_dice=0.0,
    lambda_rec=5.0,
    lambda_adv=20.0,
    lambda_crf=1.0,
    gan_loss="bce",
    adv_warmup_steps=0,
    lr=6e-4,
    betas=(0.85, 0.91),
    weight_decay=0.005,
    lr_decay=0.97,
)

# The CPU configuration: same architecture, small widths. λ_adv is 0.1 because at the paper's 20 the
# adversarial term dominates a short single-batch run and the mask never fits. A Dice term joins the BCE
# because objects cover ~2 % of a 64² input: with BCE alone a few thousand CPU steps end at "all
# background" (docs/sahm.md has the measurements).
TINY = replace(
    PAPER,
    name="tiny",
    image_size=64,
    swin_embed_dim=32,
    swin_depths=(1, 1, 2, 1),
    swin_heads=(1, 2, 4, 8),
    swin_window=4,
    swin_drop_path=0.0,
    text_vocab_size=1000,
    text_embedding_size=64,
    text_hidden_size=128,
    text_layers=2,
    text_heads=2,
    text_intermediate_size=256,
    max_text_len=12,
    lstm_hidden=32,
    fusion_dim=64,
    decoder_dim=32,
    fill_stride=16,
    disc_ndf=16,
    lambda_dice=1.0,
    lambda_adv=0.1,
)

CONFIGS: dict[str, SAHMConfig] = {"paper": PAPER, "tiny": TINY}


def get_config(name: str, **overrides: Any) -> SAHMConfig:
    """A named configuration with optional field overrides (e.g. ``image_size=224, swin_window=7``)."""
    if name not in CONFIGS:
        raise ValueError(f"unknown SAHM config {name!r}; known: {sorted(CONFIGS)}")
    cfg = replace(CONFIGS[name], **overrides) if overrides else CONFIGS[name]
    cfg.validate()
    return cfg
