"""SAHM generator: size of the paper config, stage-wise Swin, fusion heads, shapes and gradients."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from comcoco.sahm import build_discriminator, build_generator, get_config
from comcoco.sahm.encoders import SwinStages, WeightsError, albert_config, build_albert, build_swin
from comcoco.sahm.fusion import SyntaxAwareAttention
from comcoco.sahm.losses import dice_loss, generator_adv_loss, generator_losses, seg_loss
from comcoco.sahm.model import count_parameters
from comcoco.text.syntax import TAG_ATTRIBUTE, TAG_IDENTITY


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _text(b: int, t: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 900, (b, t), generator=g)
    am = torch.ones(b, t, dtype=torch.long)
    am[1:, t - 3 :] = 0
    tags = torch.randint(0, 3, (b, t), generator=g) * am
    return ids, am, tags


def test_paper_generator_has_42m_parameters():
    g = build_generator("paper")
    n = count_parameters(g)
    assert 40e6 <= n <= 44e6, n
    assert 27.0e6 < count_parameters(g.image_encoder) < 28.0e6  # SwinV2-T
    assert 10.9e6 < count_parameters(g.text_encoder) < 11.3e6  # ALBERT base v2 without pooler
    assert 2.5e6 < count_parameters(build_discriminator("paper")) < 3.0e6


def test_albert_config_is_base_not_xxlarge():
    c = albert_config(get_config("paper"))
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.embedding_size) == (768, 12, 12, 128)
    assert (c.vocab_size, c.intermediate_size, c.hidden_act) == (30000, 3072, "gelu_new")


def test_stagewise_swin_matches_the_library_forward():
    cfg = get_config("tiny")
    swin = build_swin(cfg).eval()
    x = torch.rand(2, 3, cfg.image_size, cfg.image_size)
    feats = SwinStages(swin)(x, lambda i, f: f)
    assert [f.shape[1] for f in feats] == list(cfg.stage_dims)
    assert [f.shape[-1] for f in feats] == [cfg.image_size // s for s in (4, 8, 16, 32)]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    ref = swin(pixel_values=(x - mean) / std).last_hidden_state  # (B, HW, C) after the final LayerNorm
    torch.testing.assert_close(feats[-1].flatten(2).transpose(1, 2), ref, atol=1e-5, rtol=1e-5)


def test_local_weights_folders_load(tmp_path):
    cfg = get_config("tiny")
    torch.manual_seed(1)
    swin, albert = build_swin(cfg), build_albert(cfg)
    swin.save_pretrained(tmp_path / "swin")
    albert.save_pretrained(tmp_path / "albert")
    wcfg = dataclasses.replace(
        cfg, swin_weights=str(tmp_path / "swin"), albert_weights=str(tmp_path / "albert")
    )
    torch.manual_seed(2)
    s2, a2 = build_swin(wcfg), build_albert(wcfg)
    for m1, m2 in ((swin, s2), (albert, a2)):
        sd1, sd2 = m1.state_dict(), m2.state_dict()
        assert sd1.keys() == sd2.keys()
        assert all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    with pytest.raises(WeightsError, match="config.json"):
        build_swin(dataclasses.replace(cfg, swin_weights=str(tmp_path / "nothing")))


def test_fusion_heads_follow_the_tags():
    torch.manual_seed(0)
    fa = SyntaxAwareAttention(vis_dim=8, text_dim=6, dim=8)
    vis, text = torch.randn(1, 8, 3, 3), torch.randn(1, 4, 6)
    valid = torch.ones(1, 4, dtype=torch.long)
    none = torch.zeros(1, 4, dtype=torch.bool)
    ident = torch.tensor([[False, True, False, False]])
    attr = torch.tensor([[False, False, True, False]])
    assert float(fa.head_weights().detach().sum()) == pytest.approx(1.0)
    base = fa(vis, text, valid, none, none)
    # identity and attribute words change the output; changing a non-tagged word's text does not
    # change heads 2 and 3, so with head 1 disabled the output must stay the same
    assert not torch.allclose(base, fa(vis, text, valid, ident, none))
    assert not torch.allclose(base, fa(vis, text, valid, none, attr))
    with torch.no_grad():
        fa.head_logits.copy_(torch.tensor([-30.0, 0.0, 0.0]))
    text2 = text.clone()
    text2[0, 3] += 5.0
    torch.testing.assert_close(fa(vis, text, valid, ident, attr), fa(vis, text2, valid, ident, attr))
    # a padded word is ignored by head 1
    with torch.no_grad():
        fa.head_logits.copy_(torch.tensor([0.0, -30.0, -30.0]))
    pad = torch.tensor([[1, 1, 1, 0]])
    torch.testing.assert_close(fa(vis, text, pad, none, none), fa(vis, text2, pad, none, none))


def test_tiny_forward_shapes_and_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    cfg = get_config("tiny")
    g, d = build_generator(cfg), build_discriminator(cfg)
    s = cfg.image_size
    x, gt = torch.rand(2, 3, s, s), torch.rand(2, 3, s, s)
    mask = (torch.rand(2, 1, s, s) > 0.7).float()
    ids, am, tags = _text(2, cfg.max_text_len)
    out = g(x, ids, am, tags)
    assert out.mask_logits.shape == (2, 1, s, s)
    assert [m.shape[-1] for m in out.mask_levels] == [s // 32, s // 16, s // 8, s // 4]
    assert [r.shape[-1] for r in out.rgb_levels] == [s // 32, s // 16, s // 8, s // 4, s]
    assert out.tag_emissions.shape == (2, cfg.max_text_len, 3)
    assert 0.0 <= float(out.image.detach().min()) and float(out.image.detach().max()) <= 1.0
    crf = g.tagger.loss(out.tag_emissions, tags, am)
    losses = generator_losses(cfg, out, mask, gt, d(out.image), crf)
    losses.total.backward()
    missing = [n for n, p in g.named_parameters() if p.grad is None or float(p.grad.abs().sum()) == 0.0]
    assert missing == []
    # without tags the CRF's Viterbi tags drive the heads
    with torch.no_grad():
        out2 = g(x, ids, am)
    assert out2.tags.shape == ids.shape and set(out2.tags.unique().tolist()) <= {
        0,
        TAG_IDENTITY,
        TAG_ATTRIBUTE,
    }


def test_predict_keeps_pixels_outside_the_mask():
    torch.manual_seed(0)
    g = build_generator("tiny").eval()
    x = torch.rand(1, 3, 64, 64)
    ids, am, _ = _text(1, 12)
    mask, removed = g.predict(x, ids, am)
    keep = mask == 0
    assert torch.equal(removed.expand_as(x)[keep.expand_as(x)], x[keep.expand_as(x)])


def test_gan_forms():
    logits = torch.tensor([[2.0, -1.0]])
    assert float(generator_adv_loss(logits, "hinge")) == pytest.approx(-0.5)
    with pytest.raises(ValueError):
        generator_adv_loss(logits, "wgan")
    with pytest.raises(ValueError, match="unknown SAHM config"):
        get_config("huge")
    with pytest.raises(ValueError, match="multiple of 32"):
        get_config("tiny", image_size=100)


def test_dice_counts_a_small_object_that_bce_lets_background_outvote():
    mask = torch.zeros(2, 1, 64, 64)
    mask[:, :, 30:38, 30:38] = 1  # 1.6 % of the pixels, like an object in a 64² input
    background = [torch.full((2, 1, s, s), -4.0) for s in (2, 4, 8, 16)]  # "no object anywhere"
    perfect = mask * 40 - 20
    assert float(seg_loss(background, mask)) < 0.5  # BCE: all background already looks good
    assert float(dice_loss(background, mask)) > 3.5  # Dice: close to 1 per level
    assert float(dice_loss([perfect], mask)) < 0.02
    assert get_config("paper").lambda_dice == 0.0 and get_config("tiny").lambda_dice > 0
