"""Harmonizer-compatible regressor: checkpoint key manifest, strict loading, TF padding, prediction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from comcoco.harmonize.fit import harmonize
from comcoco.harmonize.network import (
    CheckpointError,
    HarmonizerNet,
    SameConv2d,
    _mask_tensor,
    expected_state_shapes,
    load_harmonizer,
    predict_arguments,
)
from comcoco.records import FilterArgs

# EfficientNet-B0 stages as published: (repeats, kernel, stride, expand, in, out); SE ratio 0.25.
B0 = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
      (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)]  # fmt: skip


def _bn(prefix: str, ch: int) -> dict[str, tuple[int, ...]]:
    return {
        f"{prefix}.weight": (ch,),
        f"{prefix}.bias": (ch,),
        f"{prefix}.running_mean": (ch,),
        f"{prefix}.running_var": (ch,),
        f"{prefix}.num_batches_tracked": (),
    }


def official_manifest() -> dict[str, tuple[int, ...]]:
    """The official harmonizer.pth layout, written out from the architecture description."""
    m: dict[str, tuple[int, ...]] = {}
    for side in ("fg", "bg"):
        m[f"backbone._conv_{side}.weight"] = (16, 4, 3, 3)
        m.update(_bn(f"backbone._bn_{side}", 16))
    idx = 0
    for repeats, k, _stride, e, cin, cout in B0:
        for r in range(repeats):
            i = cin if r == 0 else cout
            mid = i * e
            p = f"backbone._blocks.{idx}"
            if e != 1:
                m[f"{p}._expand_conv.weight"] = (mid, i, 1, 1)
                m.update(_bn(f"{p}._bn0", mid))
            m[f"{p}._depthwise_conv.weight"] = (mid, 1, k, k)
            m.update(_bn(f"{p}._bn1", mid))
            sq = max(1, int(i * 0.25))
            m[f"{p}._se_reduce.weight"] = (sq, mid, 1, 1)
            m[f"{p}._se_reduce.bias"] = (sq,)
            m[f"{p}._se_expand.weight"] = (mid, sq, 1, 1)
            m[f"{p}._se_expand.bias"] = (mid,)
            m[f"{p}._project_conv.weight"] = (cout, mid, 1, 1)
            m.update(_bn(f"{p}._bn2", cout))
            idx += 1
    m["backbone._conv_head.weight"] = (1280, 320, 1, 1)
    m.update(_bn("backbone._bn1", 1280))
    for name in ("f", "g"):
        m[f"regressor.{name}.weight"] = (160, 1280)
        m[f"regressor.{name}.bias"] = (160,)
    for h in range(6):
        m[f"regressor.headers.{h}.0.weight"] = (160, 320)
        m[f"regressor.headers.{h}.0.bias"] = (160,)
        m[f"regressor.headers.{h}.1.weight"] = (1, 160)
        m[f"regressor.headers.{h}.1.bias"] = (1,)
    return m


def _random_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for key, shape in official_manifest().items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7, dtype=torch.long)
        elif key.endswith("running_var"):
            state[key] = 0.5 + torch.rand(shape, generator=g)
        elif key.endswith(".weight") and len(shape) == 1:  # batch-norm scale
            state[key] = 0.5 + 0.5 * torch.rand(shape, generator=g)
        else:
            state[key] = 0.05 * torch.randn(shape, generator=g)
    return state


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small forwards are fastest single-threaded on a shared CI core; restore the setting after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "harmonizer.pth"
    state = _random_state()
    torch.save(state, path)
    return path, state


def test_manifest_matches_the_official_layout():
    ours = expected_state_shapes()
    theirs = official_manifest()
    assert sorted(ours) == sorted(theirs)
    assert {k: ours[k] for k in theirs} == theirs
    assert len([k for k in theirs if k.startswith("backbone._blocks.")]) > 0
    assert "backbone._blocks.0._expand_conv.weight" not in ours and ours[
        "backbone._blocks.0._depthwise_conv.weight"
    ] == (32, 1, 3, 3)
    assert max(int(k.split(".")[2]) for k in ours if k.startswith("backbone._blocks.")) == 15
    n_params = sum(p.numel() for p in HarmonizerNet().parameters())
    assert 4_600_000 < n_params < 4_800_000  # "≈4.7 M params"


def test_strict_load_round_trip(checkpoint):
    path, state = checkpoint
    net = load_harmonizer(path)
    assert not net.training
    loaded = net.state_dict()
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key


@pytest.mark.parametrize("wrap", ["model", "state_dict", "module"])
def test_wrapped_checkpoints_load(tmp_path, wrap):
    state = _random_state(1)
    if wrap == "module":
        obj = {f"module.{k}": v for k, v in state.items()}
    else:
        obj = {wrap: state, "epoch": 60}
    path = tmp_path / "wrapped.pth"
    torch.save(obj, path)
    net = load_harmonizer(path)
    assert torch.equal(net.state_dict()["regressor.f.weight"], state["regressor.f.weight"])


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        ("missing", "regressor.headers.5.1.bias"),
        ("extra", "backbone._fc.weight"),
        ("shape", "backbone._blocks.0._depthwise_conv.weight"),
    ],
)
def test_bad_checkpoints_are_refused_naming_the_key(tmp_path, edit, needle):
    state = _random_state(2)
    if edit == "missing":
        del state[needle]
    elif edit == "extra":
        state[needle] = torch.zeros(1000, 1280)
    else:
        state[needle] = torch.zeros(32, 1, 5, 5)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as err:
        load_harmonizer(path)
    assert needle in str(err.value) and str(path) in str(err.value)


class _NotAWeight:
    """A custom object: a weights-only load must refuse to unpickle it."""


def test_unsafe_or_missing_files_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"payload": _NotAWeight()}, path)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_harmonizer(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_harmonizer(tmp_path / "absent.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pth"):
        load_harmonizer(garbage)


def test_same_padding_is_tensorflow_style():
    torch.manual_seed(0)
    x = torch.randn(1, 2, 16, 16)
    conv = SameConv2d(2, 3, 3, stride=2, bias=False)
    ref = F.conv2d(F.pad(x, [0, 1, 0, 1]), conv.weight, None, 2)  # extra pixel right/bottom
    assert torch.allclose(conv(x), ref, atol=1e-6)
    conv5 = SameConv2d(2, 3, 5, stride=2, bias=False)
    ref5 = F.conv2d(F.pad(x, [1, 2, 1, 2]), conv5.weight, None, 2)
    assert torch.allclose(conv5(x), ref5, atol=1e-6)
    conv1 = SameConv2d(2, 3, 5, stride=1, bias=False)
    assert conv1(x).shape[-2:] == (16, 16)
    assert not torch.allclose(conv(x), F.conv2d(x, conv.weight, None, 2, padding=1)[..., :8, :8])


def test_predict_arguments_shapes_masks_and_clamp(checkpoint):
    path, state = checkpoint
    net = load_harmonizer(path)
    rng = np.random.default_rng(0)
    comp = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    mask01 = np.zeros((50, 70), np.uint8)
    mask01[10:30, 20:50] = 1
    a1 = predict_arguments(net, comp, mask01)
    # 0/1, 0/255 and float masks are the same alpha
    m1, m2, m3 = (
        _mask_tensor(m, (50, 70)) for m in (mask01, mask01 * np.uint8(255), mask01.astype(np.float32))
    )
    assert torch.equal(m1, m2) and torch.equal(m1, m3) and float(m1.max()) == 1.0
    assert isinstance(a1, FilterArgs)
    assert all(-1.0 <= v <= 1.0 for v in a1.as_tuple())
    assert predict_arguments(net, comp, np.zeros_like(mask01)) != a1  # the mask matters
    with torch.no_grad():
        for h in range(6):
            net.regressor.headers[h][1].bias.fill_(5.0 if h % 2 else -5.0)
    clamped = predict_arguments(net, comp, mask01).as_tuple()
    assert clamped == (-1.0, 1.0, -1.0, 1.0, -1.0, 1.0)


def test_network_method_changes_only_the_object(checkpoint):
    path, _ = checkpoint
    net = load_harmonizer(path)
    rng = np.random.default_rng(1)
    comp = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    mask = np.zeros((60, 80), np.uint8)
    mask[15:45, 20:60] = 255
    out, args = harmonize(comp, mask, "network", network=net)
    assert args != FilterArgs() and all(-1.0 <= v <= 1.0 for v in args.as_tuple())
    np.testing.assert_array_equal(out[mask == 0], comp[mask == 0])
    assert not np.array_equal(out[mask > 0], comp[mask > 0])


def test_the_network_sees_alpha_at_least_half_while_blending_keeps_the_soft_alpha(checkpoint):
    """As Harmonizer's inference: the regressor gets a binary mask (alpha ≥ 0.5); the filters are blended
    with the soft alpha, so a pixel at alpha 0.3 still changes, by less than one at alpha 1."""
    path, _ = checkpoint
    net = load_harmonizer(path)
    rng = np.random.default_rng(2)
    comp = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    soft = np.zeros((60, 80), np.float32)
    soft[15:45, 20:60] = 1.0
    soft[15:45, 10:20] = 0.3  # a soft edge the network must not see
    soft[15:45, 60:70] = 0.5  # exactly 0.5 belongs to the object
    out, args = harmonize(comp, soft, "network", network=net)
    assert args == predict_arguments(net, comp, (soft >= 0.5).astype(np.float32))
    assert args != predict_arguments(net, comp, soft)  # the soft mask would predict other arguments
    np.testing.assert_array_equal(out[soft == 0], comp[soft == 0])
    edge = out[15:45, 10:20].astype(int) - comp[15:45, 10:20]
    core = out[15:45, 25:55].astype(int) - comp[15:45, 25:55]
    assert np.abs(edge).sum() > 0 and np.abs(edge).mean() < np.abs(core).mean()
    # the robust profile's network mask is given explicitly: the same arguments
    _, args2 = harmonize(comp, (soft > 0).astype(np.float32), "network", network=net, network_mask=soft >= 0.5)
    assert args2 == args
