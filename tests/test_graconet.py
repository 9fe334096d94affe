"""GracoNet module: official checkpoint layout, safe loading, seeded inference, 256-px blend geometry."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch

from comcoco.placement.graconet import (
    Discriminator,
    GracoNetConfig,
    GracoNetError,
    GracoNetPlacer,
    SysNet,
    gen_blend,
    gen_composite_image,
    prepare_inputs,
)
from comcoco.placement.sampler import (
    PlacementError,
    PlacementRequest,
    SceneObject,
    evaluate_box,
    placement_box,
)

# --- the official key/shape manifest, written out from the published layout ---------------------
# (network.py / model.py of bcmi/GracoNet-Object-Placement; docs placement-graconet.md section 6)

_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
# VGG16-BN features[:34]: (conv index, in, out); BN sits at conv index + 1
_VGG = [
    (0, 4, 64), (3, 64, 64), (7, 64, 128), (10, 128, 128), (14, 128, 256), (17, 256, 256), (20, 256, 256),
    (24, 256, 512), (27, 512, 512), (30, 512, 512),
]  # fmt: skip


def _bn(prefix: str, n: int) -> list[tuple[str, tuple[int, ...]]]:
    return [(f"{prefix}.{k}", () if k == "num_batches_tracked" else (n,)) for k in _BN]


def _conv(prefix: str, cin: int, cout: int, k: int = 3) -> list[tuple[str, tuple[int, ...]]]:
    return [(f"{prefix}.weight", (cout, cin, k, k)), (f"{prefix}.bias", (cout,))]


def _linear(prefix: str, cin: int, cout: int) -> list[tuple[str, tuple[int, ...]]]:
    return [(f"{prefix}.weight", (cout, cin)), (f"{prefix}.bias", (cout,))]


def _head_layer(prefix: str) -> list[tuple[str, tuple[int, ...]]]:
    out: list[tuple[str, tuple[int, ...]]] = []
    for conv in (0, 3, 6):
        out += _conv(f"{prefix}.features.{conv}", 512, 512) + _bn(f"{prefix}.features.{conv + 1}", 512)
    return out


def expected_generator_manifest() -> list[tuple[str, tuple[int, ...]]]:
    m: list[tuple[str, tuple[int, ...]]] = []
    for idx, cin, cout in _VGG:
        m += _conv(f"shared_net.{idx}", cin, cout) + _bn(f"shared_net.{idx + 1}", cout)
    m += _head_layer("fg_head.layers.0")
    for i in range(3):
        m += _head_layer(f"bg_head.layers.{i}")
    m += _head_layer("latent_head.layers.0")
    for w in ("W_Q", "W_K", "W_V"):
        m += _linear(f"att.att.{w}", 512, 512)
    m += [("att.att.att.pos_k.weight", (672, 64)), ("att.att.att.pos_v.weight", (672, 64))]
    m += _linear("att.att.W_O", 512, 512)
    m += [("att.att.norm.weight", (512,)), ("att.att.norm.bias", (512,))]
    m += (
        _linear("vae_enc.fc1.0", 512, 1024)
        + _linear("vae_enc.fc2", 1024, 1024)
        + _linear("vae_enc.fc3", 1024, 1024)
    )
    m += _linear("regress_net.regressor.0", 1536, 1024)
    m += _linear("regress_net.regressor.3", 1024, 1024)
    m += _linear("regress_net.regressor.6", 1024, 3)
    return m


def expected_discriminator_manifest() -> list[tuple[str, tuple[int, ...]]]:
    m: list[tuple[str, tuple[int, ...]]] = []
    for idx, cin, cout in ((0, 4, 64), (2, 64, 128), (5, 128, 256), (8, 256, 512), (11, 512, 1)):
        m += _conv(f"model.{idx}", cin, cout, k=4)
    return m


def _manifest(module: torch.nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(v.shape)) for k, v in module.state_dict().items()]


def test_generator_state_dict_matches_official_manifest():
    g = SysNet()
    assert _manifest(g) == expected_generator_manifest()
    assert "att.att.att.pos_ids" not in g.state_dict()  # non-persistent, as the official file lacks it
    n_params = sum(p.numel() for p in g.parameters())
    assert n_params == 49_442_435  # ~49.4 M, ~189 MiB fp32


def test_discriminator_state_dict_matches_official_manifest():
    d = Discriminator(input_nc=4)
    assert _manifest(d) == expected_discriminator_manifest()
    assert sum(p.numel() for p in d.parameters()) == 2_765_761


# --- loading -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def official_ckpt(tmp_path_factory) -> tuple[Path, dict]:
    """A file in the official layout: epoch, model (G and D), a pickled argparse.Namespace, optimizer."""
    torch.manual_seed(0)
    g, d = SysNet(init_weight=True), Discriminator()
    opt = argparse.Namespace(
        expid="graconet",
        img_size=256,
        d_noise=1024,
        d_model=512,
        d_k=64,
        d_v=64,
        n_heads=8,
        len_k=84,
        lr=2e-5,
    )
    model = {"generator": g.state_dict(), "discriminator": d.state_dict()}
    path = tmp_path_factory.mktemp("graconet") / "11.pth"
    torch.save(
        {"epoch": 11, "model": model, "opt": opt, "optimizer": {"generator": {}, "discriminator": {}}}, path
    )
    return path, model


@pytest.fixture(scope="module")
def placer(official_ckpt) -> GracoNetPlacer:
    return GracoNetPlacer(official_ckpt[0])


def test_official_layout_checkpoint_loads_strictly(official_ckpt, placer):
    _, model = official_ckpt
    for key in (
        "shared_net.0.weight",
        "bg_head.layers.2.features.7.running_var",
        "regress_net.regressor.6.bias",
    ):
        assert torch.equal(placer.generator.state_dict()[key], model["generator"][key])
    assert placer.discriminator is not None
    assert torch.equal(
        placer.discriminator.state_dict()["model.11.weight"], model["discriminator"]["model.11.weight"]
    )
    assert not placer.generator.training  # eval: dropout off, BN running stats


def test_propose_is_seeded_and_in_unit_interval(placer):
    rng = np.random.default_rng(0)
    fg = rng.integers(0, 256, (90, 40, 3), dtype=np.uint8)
    mask = np.zeros((90, 40), np.uint8)
    mask[10:80, 5:35] = 255
    bg = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    many = placer.propose_many(fg, mask, bg, seed=7, n=3)
    one = placer.propose(fg, mask, bg, seed=7)
    assert len(many) == 3 and all(0.0 < v < 1.0 for t in many for v in t)
    assert one == pytest.approx(many[0], abs=1e-6)  # proposal i depends on (seed, i) only
    assert many[0] != many[1]  # a fresh code per proposal


def test_place_keeps_the_best_valid_proposal(placer, monkeypatch):
    """Selection logic without a forward pass: proposals are scored by the default sampler's terms."""
    referred = SceneObject(2, (0.0, 0.0, 200.0, 300.0), referred=True)
    req = PlacementRequest((0, 0, 40, 90), (100, 100), 1, (400, 300), (referred,))
    proposals = [(0.9, 0.0, 0.0), (0.3, 0.9, 0.9), (0.3, 0.6, 0.1)]  # first hides the referred object
    monkeypatch.setattr(placer, "propose_many", lambda *a, **k: proposals)
    p = placer.place(
        req,
        np.zeros((90, 40, 3), np.uint8),
        np.ones((90, 40)),
        np.zeros((300, 400, 3), np.uint8),
        0,
        "s",
        k=3,
    )
    assert (p.s, p.rx, p.ry) in proposals[1:]
    assert p.box == placement_box(p.s, p.rx, p.ry, 40, 90, 400, 300)
    assert p.components["support"] == max(
        evaluate_box(req, placement_box(*t, 40, 90, 400, 300))[1]["support"] for t in proposals[1:]
    )  # ground contact at 90 % of the source: the low proposal wins
    monkeypatch.setattr(placer, "propose_many", lambda *a, **k: proposals[:1])
    with pytest.raises(PlacementError, match="no valid GracoNet proposal.*hides a referred object"):
        placer.place(
            req, np.zeros((90, 40, 3), np.uint8), np.ones((90, 40)), np.zeros((300, 400, 3), np.uint8), 0, "s"
        )


def test_no_checkpoint_is_an_error_that_says_so(tmp_path):
    with pytest.raises(GracoNetError, match="--graconet-ckpt"):
        GracoNetPlacer(None)
    with pytest.raises(GracoNetError, match="not found: .*missing.pth"):
        GracoNetPlacer(tmp_path / "missing.pth")


class _Payload:
    """Stands for anything a hostile pickle could name; must never be instantiated by the loader."""


def test_arbitrary_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {"generator": {}}, "opt": _Payload()}, path)
    with pytest.raises(GracoNetError, match=r"evil\.pth: refused to load.*_Payload"):
        GracoNetPlacer(path)


def test_incompatible_state_dict_names_the_problem(tmp_path):
    path = tmp_path / "wrong.pth"
    torch.save({"model": {"generator": {"shared_net.0.weight": torch.zeros(64, 3, 3, 3)}}}, path)
    with pytest.raises(GracoNetError, match=r"wrong\.pth: generator does not match.*missing.*wrong shape"):
        GracoNetPlacer(path)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(GracoNetError, match="junk.pth"):
        GracoNetPlacer(junk)


# --- geometry: 256-px blend vs the full-resolution formula ------------------------------------


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)


@pytest.mark.parametrize(
    ("fg_wh", "bg_wh"), [((100, 200), (640, 480)), ((300, 80), (640, 480)), ((50, 50), (480, 640))]
)
@pytest.mark.parametrize("trans", [(0.3, 0.0, 0.0), (0.5, 1.0, 1.0), (0.7, 0.3, 0.8), (0.2, 0.5, 0.5)])
def test_gen_blend_agrees_with_full_resolution_box(fg_wh, bg_wh, trans):
    (fw, fh), (bw, bh) = fg_wh, bg_wh
    fg = np.full((fh, fw, 3), 200, np.uint8)
    x = prepare_inputs(fg, np.full((fh, fw), 255, np.uint8), np.zeros((bh, bw, 3), np.uint8), 256)
    _, msk = gen_blend(x.bg, x.fg, x.fg_mask, x.fg_bbox, torch.tensor([trans], dtype=torch.float32), 256)
    got = _bbox(msk[0, 0].numpy() > 0.5)
    full = placement_box(*trans, fw, fh, bw, bh)  # full resolution, then scaled to the 256 canvas
    expect = (full[0] * 256 / bw, full[1] * 256 / bh, full[2] * 256 / bw, full[3] * 256 / bh)
    assert np.allclose(got, expect, atol=1.5), (got, expect)
    fb = x.fg_bbox[0].tolist()  # and the same formula evaluated directly on a 256x256 background
    assert np.allclose(got, placement_box(*trans, fb[2], fb[3], 256, 256), atol=1.5)


def test_prepare_inputs_stretches_and_pads_like_the_official_loader():
    fg = np.full((200, 100, 3), 255, np.uint8)
    x = prepare_inputs(fg, np.full((200, 100), 1, np.uint8), np.zeros((480, 640, 3), np.uint8), 256)
    # bg 4:3 stretched to a square: the fg (1:2) becomes 256 tall and 256*100*480 // (200*640) = 96 wide
    assert x.fg_bbox.tolist() == [[80.0, 0.0, 96.0, 256.0]]
    assert x.fg.shape == (1, 3, 256, 256) and x.fg_mask.shape == (1, 1, 256, 256)
    assert float(x.fg_mask[0, 0, :, :80].max()) == 0.0 and float(x.fg_mask[0, 0, :, 176:].max()) == 0.0
    assert float(x.fg_mask[0, 0, 128, 128]) == pytest.approx(1.0)  # 0/1 masks read as alpha 0/1


def test_gen_composite_image_pastes_only_inside_the_box():
    rng = np.random.default_rng(1)
    bg = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    fg = np.full((30, 20, 3), 7, np.uint8)
    mask = np.full((30, 20), 255, np.uint8)
    comp, cmask, box = gen_composite_image(bg, fg, mask, (0.5, 0.25, 1.0))
    assert box == placement_box(0.5, 0.25, 1.0, 20, 30, 160, 120) == (30, 60, 40, 60)
    x, y, w, h = box
    outside = np.ones((120, 160), bool)
    outside[y : y + h, x : x + w] = False
    assert np.array_equal(comp[outside], bg[outside]) and not cmask[outside].any()
    assert (comp[y : y + h, x : x + w] == 7).all() and (cmask[y : y + h, x : x + w] == 255).all()


def test_training_path_runs_and_reaches_every_part(placer):
    """Both official paths (random code; VAE code from a real composite) at a tiny size, with grads."""
    g = SysNet(GracoNetConfig(img_size=32))
    g.load_state_dict(placer.generator.state_dict())
    g.train()
    torch.manual_seed(0)
    bg, fg, comp = (torch.rand(1, 3, 32, 32) for _ in range(3))
    msk = torch.zeros(1, 1, 32, 32)
    msk[:, :, 4:28, 8:24] = 1.0
    out = g(bg, fg, msk, torch.tensor([[8.0, 0.0, 16.0, 32.0]]), comp, msk)
    assert len(out) == 8
    blend_1, msk_1, trans_1, blend_2, msk_2, trans_2, mu, logvar = out
    assert blend_1.shape == blend_2.shape == (1, 3, 32, 32) and msk_1.shape == msk_2.shape == (1, 1, 32, 32)
    assert trans_1.shape == trans_2.shape == (1, 3) and mu.shape == logvar.shape == (1, 1024)
    assert bool(((trans_1 > 0) & (trans_1 < 1)).all())
    (trans_2.sum() + blend_1.mean()).backward()
    for name in (
        "shared_net.0.weight",
        "latent_head.layers.0.features.0.weight",
        "regress_net.regressor.0.weight",
    ):
        grad = g.get_parameter(name).grad
        assert grad is not None and float(grad.abs().sum()) > 0, name
    assert Discriminator()(blend_1.detach(), msk_1.detach()).shape == (1,)
