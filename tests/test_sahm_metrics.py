"""Removal metrics: agreement with scikit-image, IoU by hand, FID/LPIPS pluggable and never invented."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from torch import nn

from comcoco.sahm.metrics import (
    LPIPSAlex,
    MetricWeightsError,
    RemovalMetrics,
    frechet_distance,
    load_fid_features,
    load_lpips,
    psnr_per_image,
    ssim_per_image,
    write_metrics,
)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _no_env_weights(monkeypatch, tmp_path):
    monkeypatch.delenv("COMCOCO_FID_WEIGHTS", raising=False)
    monkeypatch.delenv("COMCOCO_LPIPS_ALEXNET", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("TMPDIR", str(tmp_path))


def _pair(seed: int = 0, size: int = 48):
    g = torch.Generator().manual_seed(seed)
    gt = torch.rand(2, 3, size, size, generator=g)
    gt = torch.nn.functional.avg_pool2d(gt, 5, 1, 2)  # smooth, image-like
    pred = (gt + 0.05 * torch.randn(gt.shape, generator=g)).clamp(0, 1)
    return pred, gt


def test_psnr_ssim_match_scikit_image(coco_real_dir):
    from PIL import Image

    path = sorted(coco_real_dir.glob("*.jpg"))[0]
    img = np.asarray(Image.open(path).convert("RGB").resize((96, 64)), dtype=np.float64) / 255.0
    rng = np.random.default_rng(0)
    noisy = np.clip(img + rng.normal(0, 0.04, img.shape), 0, 1)
    t_img = torch.from_numpy(img).permute(2, 0, 1)[None].float()
    t_noisy = torch.from_numpy(noisy).permute(2, 0, 1)[None].float()
    ref_psnr = peak_signal_noise_ratio(img, noisy, data_range=1.0)
    ref_ssim = structural_similarity(
        img,
        noisy,
        channel_axis=2,
        data_range=1.0,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
    )
    assert float(psnr_per_image(t_noisy, t_img)[0]) == pytest.approx(ref_psnr, abs=1e-3)
    assert float(ssim_per_image(t_noisy, t_img)[0]) == pytest.approx(ref_ssim, abs=1e-3)


def test_iou_mean_overall_and_precision_by_hand():
    gt = torch.zeros(3, 1, 4, 4, dtype=torch.bool)
    pred = torch.zeros_like(gt)
    gt[0, 0, :2, :2] = True  # 4 px
    pred[0, 0, :2, :2] = True  # IoU 1
    gt[1, 0, :, :2] = True  # 8 px
    pred[1, 0, :2, :] = True  # 8 px, intersection 4, union 12 → 1/3
    gt[2, 0, :, :] = True  # 16 px
    pred[2, 0, :, :3] = True  # 12 px, IoU 0.75
    m = RemovalMetrics()
    img = torch.rand(3, 3, 16, 16)
    m.update(img, img * 0.9, pred, gt)
    r = m.compute()
    assert r["iou_mean"]["value"] == pytest.approx((1 + 1 / 3 + 0.75) / 3)
    assert r["iou_overall"]["value"] == pytest.approx((4 + 4 + 12) / (4 + 12 + 16))
    assert r["pr@0.7"]["value"] == pytest.approx(2 / 3)
    assert r["psnr"]["n"] == 3


def test_fid_and_lpips_not_computed_without_weights(tmp_path):
    m = RemovalMetrics.from_paths()
    pred, gt = _pair()
    m.update(pred, gt, gt[:, :1] > 0.5, gt[:, :1] > 0.5)
    r = m.compute()
    assert set(r) == {"psnr", "ssim", "iou_mean", "iou_overall", "pr@0.7", "fid", "lpips"}
    for k in ("fid", "lpips"):
        assert r[k]["value"] is None and r[k]["reason"].startswith("not computed")
    assert "alexnet" in r["lpips"]["reason"]
    assert isinstance(r["psnr"]["value"], float) and r["iou_mean"]["value"] == 1.0
    out = write_metrics(tmp_path / "run" / "metrics.json", r)
    assert json.loads(out.read_text())["fid"]["value"] is None
    with pytest.raises(MetricWeightsError, match="not found"):
        RemovalMetrics.from_paths(fid_path=tmp_path / "missing.pt")


class _TinyFeatures(nn.Module):
    """A stand-in feature network: pooled conv features (N, 8)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean(dim=(2, 3))


def test_fid_with_a_torchscript_feature_network(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "feat.pt"
    torch.jit.script(_TinyFeatures()).save(str(path))
    fid = load_fid_features(path, size=32)
    assert fid.input_mode == "tf"
    pred, gt = _pair(1, 32)
    same = RemovalMetrics(fid=fid)
    same.update(gt, gt, gt[:, :1] > 0.5, gt[:, :1] > 0.5)
    same.update(gt.flip(-1), gt.flip(-1), gt[:, :1] > 0.5, gt[:, :1] > 0.5)
    assert abs(same.compute()["fid"]["value"]) < 1e-6
    diff = RemovalMetrics(fid=fid)
    diff.update(pred * 0.5, gt, gt[:, :1] > 0.5, gt[:, :1] > 0.5)
    diff.update(pred.flip(-1) * 0.5, gt.flip(-1), gt[:, :1] > 0.5, gt[:, :1] > 0.5)
    r = diff.compute()["fid"]
    assert r["value"] > 1e-4 and r["feature_dim"] == 8 and r["n"] == 4
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not torchscript")
    with pytest.raises(MetricWeightsError, match="bad.pt"):
        load_fid_features(bad)


def test_frechet_distance_of_shifted_gaussians():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    b = a + np.array([1.0, 2.0, 0.0])  # same covariance, mean shifted: FID = |shift|² = 5
    assert frechet_distance(a, b) == pytest.approx(5.0, abs=1e-6)


def test_lpips_from_alexnet_weights_by_path(tmp_path):
    torch.manual_seed(0)
    trunk = LPIPSAlex().features
    sd = {f"features.{k}": v for k, v in trunk.state_dict().items()}
    sd["classifier.1.weight"] = torch.zeros(4, 4)  # torchvision files also hold the classifier
    torch.save(sd, tmp_path / "alexnet-owt-7be5be79.pth")
    model = load_lpips(tmp_path / "alexnet-owt-7be5be79.pth")
    pred, gt = _pair(2, 64)
    d_same = model(gt, gt)
    d_diff = model(pred, gt)
    assert torch.all(d_same.abs() < 1e-6) and torch.all(d_diff > 0)
    m = RemovalMetrics(lpips=model)
    m.update(pred, gt, gt[:, :1] > 0.5, gt[:, :1] > 0.5)
    r = m.compute()["lpips"]
    assert r["value"] == pytest.approx(float(d_diff.mean()), rel=1e-5) and r["net"] == "alex"
    with pytest.raises(MetricWeightsError):
        load_lpips(tmp_path / "nope.pth")
