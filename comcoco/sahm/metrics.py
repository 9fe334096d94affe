"""Removal and segmentation metrics for SAHM runs (``RUN/metrics.json``).

PSNR and SSIM come from torchmetrics (Gaussian 11-tap, σ 1.5, data range 1; SSIM map averaged without the
kernel-radius border as scikit-image does), averaged over images; IoU is
reported as the mean over samples and as overall (Σ intersection / Σ union); Pr@0.7 is the share of samples
with IoU > 0.7. FID uses a user-supplied TorchScript Inception feature network and LPIPS (v0.1, AlexNet) a
user-supplied AlexNet state dict — neither ships with the project. A metric that cannot be computed is
``{"value": None, "reason": "not computed: …"}``; no number is ever substituted.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from comcoco.errors import ComcocoError
from comcoco.io import write_text_atomic

METRIC_KEYS: tuple[str, ...] = ("psnr", "ssim", "iou_mean", "iou_overall", "pr@0.7", "fid", "lpips")
FID_ENV = "COMCOCO_FID_WEIGHTS"
LPIPS_ENV = "COMCOCO_LPIPS_ALEXNET"
ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
NVIDIA_INCEPTION_FILE = "inception-2015-12-05.pt"


class MetricWeightsError(ComcocoError):
    """A metric's weight file is unusable; the message names the file."""


def not_computed(reason: str) -> dict[str, Any]:
    return {"value": None, "reason": f"not computed: {reason}"}


def torch_home() -> Path:
    return Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))


# --- per-image quality -------------------------------------------------------------------------


def psnr_per_image(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR (dB) per image of (B,3,H,W) tensors in [0, 1]."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    return peak_signal_noise_ratio(
        pred.float(), target.float(), data_range=1.0, reduction="none", dim=(1, 2, 3)
    ).reshape(-1)


def ssim_per_image(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SSIM per image (Gaussian 11 taps, σ 1.5, data range 1), averaged like scikit-image.

    torchmetrics averages the SSIM map over the reflection-padded border too; scikit-image (and the
    reference MATLAB code) drop a border of the kernel radius. The map is torchmetrics', the crop is ours.
    """
    from torchmetrics.functional.image import structural_similarity_index_measure

    _, full = structural_similarity_index_measure(
        pred.float(),
        target.float(),
        data_range=1.0,
        gaussian_kernel=True,
        sigma=1.5,
        kernel_size=11,
        reduction="none",
        return_full_image=True,
    )
    r = 5  # kernel radius
    if full.shape[-1] <= 2 * r or full.shape[-2] <= 2 * r:
        raise ValueError(f"SSIM needs images larger than {2 * r + 1} px, got {tuple(full.shape[-2:])}")
    return full[..., r:-r, r:-r].mean(dim=(1, 2, 3))


def mask_intersection_union(pred: torch.Tensor, gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample intersection and union of binary masks (B,1,H,W) or (B,H,W)."""
    p = pred.bool().flatten(1)
    g = gt.bool().flatten(1)
    return (p & g).sum(1).double(), (p | g).sum(1).double()


def iou_scores(inter: torch.Tensor, union: torch.Tensor) -> torch.Tensor:
    """Per-sample IoU; two empty masks agree perfectly (IoU 1)."""
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))


# --- FID ---------------------------------------------------------------------------------------


class FIDFeatures(nn.Module):
    """Wraps a TorchScript Inception feature network.

    ``input_mode="tf"``: the module takes float (N,3,299,299) = uint8/128 − 1 (fid-helper's ``default_1.pt``,
    TF "inception-2015-12-05" weights). ``input_mode="nvidia"``: the NVIDIA TorchScript
    ``inception-2015-12-05.pt`` (clean-fid / StyleGAN3) taking uint8 (N,3,H,W) and ``return_features=True``.
    Either way the output is flattened to (N, 2048).
    """

    def __init__(self, module: nn.Module, input_mode: str = "tf", size: int = 299):
        super().__init__()
        if input_mode not in ("tf", "nvidia"):
            raise ValueError(f"unknown FID input mode {input_mode!r}")
        self.module, self.input_mode, self.size = module, input_mode, size

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float().clamp(0, 1) * 255).round()
        if self.input_mode == "nvidia":
            return self.module(x.to(torch.uint8), return_features=True).flatten(1).double()
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self.module(x / 128.0 - 1.0).flatten(1).double()


def load_fid_features(path: str | Path, input_mode: str | None = None, size: int = 299) -> FIDFeatures:
    """Load a TorchScript feature network; the mode defaults to ``nvidia`` for the NVIDIA file name."""
    p = Path(path)
    if not p.is_file():
        raise MetricWeightsError(f"FID feature network not found: {p}")
    try:
        module = torch.jit.load(str(p), map_location="cpu").eval()
    except Exception as exc:
        raise MetricWeightsError(f"{p} is not a loadable TorchScript file: {exc}") from exc
    mode = input_mode or ("nvidia" if p.name == NVIDIA_INCEPTION_FILE else "tf")
    return FIDFeatures(module, mode, size)


def frechet_distance(f1: np.ndarray, f2: np.ndarray) -> float:
    """‖μ₁−μ₂‖² + Tr(Σ₁+Σ₂−2(Σ₁Σ₂)^½) between two feature sets (N, D)."""
    from scipy import linalg

    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    s1, s2 = np.atleast_2d(s1), np.atleast_2d(s2)
    covmean, _ = linalg.sqrtm(s1 @ s2, disp=False)
    if not np.isfinite(covmean).all():
        eps = np.eye(s1.shape[0]) * 1e-6
        covmean = linalg.sqrtm((s1 + eps) @ (s2 + eps))
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


# --- LPIPS (v0.1, AlexNet), torchvision-free ---------------------------------------------------


class LPIPSAlex(nn.Module):
    """LPIPS v0.1 with an AlexNet trunk; trunk keys follow torchvision's ``features.{0,3,6,8,10}``."""

    CHANNELS = (64, 192, 384, 256, 256)

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
        )  # fmt: skip
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in self.CHANNELS)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.taps = (1, 4, 7, 9, 11)  # outputs of relu1..relu5

    def _feats(self, x: torch.Tensor) -> list[torch.Tensor]:
        out, h = [], (x - self.shift) / self.scale
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in self.taps:
                out.append(h)
        return out

    @torch.no_grad()
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Per-image distance for images in [0, 1]."""
        fa, fb = self._feats(a.float() * 2 - 1), self._feats(b.float() * 2 - 1)
        total = a.new_zeros(a.shape[0])
        for lin, x, y in zip(self.lins, fa, fb, strict=True):
            nx = x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            ny = y / (y.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + lin((nx - ny) ** 2).mean(dim=(1, 2, 3))
        return total


def default_lpips_heads() -> Path:
    import torchmetrics

    return Path(torchmetrics.__file__).parent / "functional" / "image" / "lpips_models" / "alex.pth"


def load_lpips(alexnet_path: str | Path, heads_path: str | Path | None = None) -> LPIPSAlex:
    """LPIPS-alex from an AlexNet state dict (torchvision keys) and the v0.1 linear heads."""
    p = Path(alexnet_path)
    hp = Path(heads_path) if heads_path else default_lpips_heads()
    for f in (p, hp):
        if not f.is_file():
            raise MetricWeightsError(f"LPIPS weight file not found: {f}")
    model = LPIPSAlex()
    try:
        trunk = torch.load(p, map_location="cpu", weights_only=True)
        heads = torch.load(hp, map_location="cpu", weights_only=True)
        model.features.load_state_dict(
            {k[len("features.") :]: v for k, v in trunk.items() if k.startswith("features.")}, strict=True
        )
        model.lins.load_state_dict({f"{k[3]}.weight": v for k, v in heads.items()}, strict=True)
    except Exception as exc:
        raise MetricWeightsError(f"cannot load LPIPS weights from {p} / {hp}: {exc}") from exc
    return model.eval()


def resolve_weights(explicit: str | Path | None, env: str, default: Path) -> Path | None:
    """Explicit path, else the environment variable, else the standard location if it exists."""
    if explicit:
        return Path(explicit)
    if os.environ.get(env):
        return Path(os.environ[env])
    return default if default.is_file() else None


# --- accumulation ------------------------------------------------------------------------------


@dataclass
class _Store:
    psnr: list[float]
    ssim: list[float]
    inter: list[float]
    union: list[float]
    lpips: list[float]
    fid_real: list[np.ndarray]
    fid_fake: list[np.ndarray]


class RemovalMetrics:
    """Accumulates per-batch predictions and computes the ``metrics.json`` dictionary."""

    def __init__(
        self,
        fid: FIDFeatures | None = None,
        lpips: LPIPSAlex | None = None,
        fid_reason: str = "no FID feature network given (TorchScript Inception path)",
        lpips_reason: str = f"no AlexNet weights given ({ALEXNET_FILE})",
        pr_threshold: float = 0.7,
    ):
        self.fid, self.lpips = fid, lpips
        self.fid_reason, self.lpips_reason = fid_reason, lpips_reason
        self.pr_threshold = pr_threshold
        self._s = _Store([], [], [], [], [], [], [])

    @classmethod
    def from_paths(
        cls,
        fid_path: str | Path | None = None,
        alexnet_path: str | Path | None = None,
        lpips_heads: str | Path | None = None,
    ) -> RemovalMetrics:
        """Resolve weights (argument, environment, standard location); missing ones become reasons."""
        kw: dict[str, Any] = {}
        fp = resolve_weights(
            fid_path, FID_ENV, Path(os.environ.get("TMPDIR", "/tmp")) / NVIDIA_INCEPTION_FILE
        )
        if fp is not None:
            kw["fid"] = load_fid_features(fp)
        ap = resolve_weights(alexnet_path, LPIPS_ENV, torch_home() / "hub" / "checkpoints" / ALEXNET_FILE)
        if ap is not None:
            kw["lpips"] = load_lpips(ap, lpips_heads)
        return cls(**kw)

    def update(
        self, pred: torch.Tensor, target: torch.Tensor, pred_mask: torch.Tensor, gt_mask: torch.Tensor
    ) -> None:
        """pred/target (B,3,H,W) in [0,1]; masks (B,1,H,W) binary (predicted already thresholded)."""
        if pred.shape != target.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ")
        pred, target = pred.detach().cpu().float().clamp(0, 1), target.detach().cpu().float().clamp(0, 1)
        s = self._s
        s.psnr += psnr_per_image(pred, target).tolist()
        s.ssim += ssim_per_image(pred, target).tolist()
        i, u = mask_intersection_union(pred_mask.detach().cpu(), gt_mask.detach().cpu())
        s.inter += i.tolist()
        s.union += u.tolist()
        if self.lpips is not None:
            s.lpips += self.lpips(pred, target).tolist()
        if self.fid is not None:
            s.fid_real.append(self.fid(target).cpu().numpy())
            s.fid_fake.append(self.fid(pred).cpu().numpy())

    def compute(self) -> dict[str, dict[str, Any]]:
        s = self._s
        n = len(s.psnr)
        if n == 0:
            return {k: not_computed("no samples") for k in METRIC_KEYS}
        inter, union = torch.tensor(s.inter, dtype=torch.float64), torch.tensor(s.union, dtype=torch.float64)
        ious = iou_scores(inter, union)
        finite = [p for p in s.psnr if np.isfinite(p)]
        out: dict[str, dict[str, Any]] = {
            "psnr": {
                "value": float(np.mean(finite)) if finite else None,
                "n": n,
                "identical_images": n - len(finite),
            },
            "ssim": {"value": float(np.mean(s.ssim)), "n": n},
            "iou_mean": {"value": float(ious.mean()), "n": n},
            "iou_overall": {"value": float(inter.sum() / union.sum()) if union.sum() > 0 else 1.0, "n": n},
            f"pr@{self.pr_threshold:g}": {"value": float((ious > self.pr_threshold).double().mean()), "n": n},
        }
        if not finite:
            out["psnr"] = not_computed("every prediction equals its ground truth (infinite PSNR)")
        if self.fid is None:
            out["fid"] = not_computed(self.fid_reason)
        elif n < 2:
            out["fid"] = not_computed("FID needs at least 2 images")
        else:
            real, fake = np.concatenate(s.fid_real), np.concatenate(s.fid_fake)
            out["fid"] = {
                "value": frechet_distance(real, fake),
                "n": n,
                "feature_dim": int(real.shape[1]),
                "input_mode": self.fid.input_mode,
            }
            if n < real.shape[1]:
                out["fid"]["note"] = f"{n} images < feature dim {real.shape[1]}: covariance is rank-deficient"
        out["lpips"] = (
            not_computed(self.lpips_reason)
            if self.lpips is None
            else {"value": float(np.mean(s.lpips)), "n": n, "net": "alex", "version": "0.1"}
        )
        return out


def write_metrics(path: str | Path, metrics: dict[str, Any]) -> Path:
    """Write ``metrics.json`` atomically (sorted keys, stable bytes)."""
    p = Path(path)
    write_text_atomic(p, json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return p
