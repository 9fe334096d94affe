"""SAHM losses (Eqs. 11–14): multi-scale BCE on masks, multi-scale L1 on RGB, PatchGAN adversarial term.

L = λ_seg·L_seg + λ_rec·L_rec + λ_adv·L_adv (+ λ_crf·CRF NLL, which trains the tagger with silver tags;
+ λ_dice·soft Dice per level, 0 in the paper configuration).
Each level's mask logits are upsampled to the mask size (h₁); each level's RGB is compared with the
ground truth area-downsampled to that level (h₂ is the 1×1 RGB head inside the decoder). Full BCE is used
(Eq. 11 prints only the positive term). The GAN form is ``bce`` (Eq. 13, non-saturating generator) or
``hinge``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from comcoco.sahm.config import SAHMConfig


def seg_loss(mask_levels: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """Σ over levels of BCE(upsampled logits, mask); mask (B,1,H,W) in {0,1}."""
    total = mask.new_zeros(())
    for logits in mask_levels:
        up = F.interpolate(logits, size=mask.shape[-2:], mode="bilinear", align_corners=False)
        total = total + F.binary_cross_entropy_with_logits(up.float(), mask.float())
    return total


def dice_loss(mask_levels: list[torch.Tensor], mask: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Σ over levels of the soft Dice loss 1 − (2|P∩M| + ε)/(|P| + |M| + ε), per image then averaged.

    Unlike BCE it does not let the ~98 % background pixels of a small object outvote the object.
    """
    total = mask.new_zeros(())
    m = mask.float().flatten(1)
    for logits in mask_levels:
        up = F.interpolate(logits, size=mask.shape[-2:], mode="bilinear", align_corners=False)
        p = torch.sigmoid(up.float()).flatten(1)
        total = total + (1 - (2 * (p * m).sum(1) + eps) / (p.sum(1) + m.sum(1) + eps)).mean()
    return total


def rec_loss(rgb_levels: list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """Σ over levels of mean L1 between the level's RGB and the area-downsampled ground truth."""
    total = target.new_zeros(())
    for rgb in rgb_levels:
        gt = target if rgb.shape[-2:] == target.shape[-2:] else F.adaptive_avg_pool2d(target, rgb.shape[-2:])
        total = total + (rgb.float() - gt.float()).abs().mean()
    return total


def generator_adv_loss(fake_logits: torch.Tensor, form: str) -> torch.Tensor:
    if form == "bce":
        return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))
    if form == "hinge":
        return -fake_logits.mean()
    raise ValueError(f"unknown GAN loss form {form!r}")


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, form: str) -> torch.Tensor:
    """Eq. 13 for D: −E[log D(I)] − E[log(1 − D(Î))] (or the hinge equivalent)."""
    if form == "bce":
        return F.binary_cross_entropy_with_logits(
            real_logits, torch.ones_like(real_logits)
        ) + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    if form == "hinge":
        return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()
    raise ValueError(f"unknown GAN loss form {form!r}")


@dataclass
class GeneratorLosses:
    total: torch.Tensor
    seg: torch.Tensor
    dice: torch.Tensor
    rec: torch.Tensor
    adv: torch.Tensor
    crf: torch.Tensor

    def as_floats(self) -> dict[str, float]:
        return {k: float(getattr(self, k).detach()) for k in ("total", "seg", "dice", "rec", "adv", "crf")}


def adversarial_weight(cfg: SAHMConfig, step: int) -> float:
    """λ_adv, ramped linearly over ``adv_warmup_steps`` when set."""
    if cfg.adv_warmup_steps <= 0:
        return cfg.lambda_adv
    return cfg.lambda_adv * min(1.0, step / cfg.adv_warmup_steps)


def generator_losses(
    cfg: SAHMConfig,
    out,
    mask: torch.Tensor,
    target: torch.Tensor,
    fake_logits: torch.Tensor,
    crf_nll: torch.Tensor,
    step: int = 0,
) -> GeneratorLosses:
    """The weighted generator objective for one batch."""
    seg = seg_loss(out.mask_levels, mask)
    dice = dice_loss(out.mask_levels, mask) if cfg.lambda_dice else mask.new_zeros(())
    rec = rec_loss(out.rgb_levels, target)
    adv = generator_adv_loss(fake_logits.float(), cfg.gan_loss)
    total = cfg.lambda_seg * seg + cfg.lambda_dice * dice + cfg.lambda_rec * rec
    total = total + adversarial_weight(cfg, step) * adv
    total = total + cfg.lambda_crf * crf_nll
    return GeneratorLosses(total=total, seg=seg, dice=dice, rec=rec, adv=adv, crf=crf_nll)
