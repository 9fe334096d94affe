"""Deformable conv on grid_sample: equals conv2d at zero offsets, shifts correctly, has exact gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from comcoco.sahm.dcn import AlignedDeformConv, DeformConv2d, deform_conv2d


@pytest.fixture(autouse=True)
def _one_thread():
    """Small ops run fastest single-threaded, especially on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_zero_offsets_equal_conv2d():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 9, 11, generator=g)
    w = torch.randn(4, 5, 3, 3, generator=g)
    b = torch.randn(4, generator=g)
    off = torch.zeros(2, 18, 9, 11)
    torch.testing.assert_close(deform_conv2d(x, off, w, b), F.conv2d(x, w, b, padding=1), atol=1e-4, rtol=0)


def test_unit_mask_equals_no_mask_and_half_mask_halves():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 3, 6, 6, generator=g)
    w = torch.randn(2, 3, 3, 3, generator=g)
    off = torch.zeros(1, 18, 6, 6)
    full = deform_conv2d(x, off, w, None, torch.ones(1, 9, 6, 6))
    half = deform_conv2d(x, off, w, None, torch.full((1, 9, 6, 6), 0.5))
    torch.testing.assert_close(full, F.conv2d(x, w, padding=1), atol=1e-4, rtol=0)
    torch.testing.assert_close(half, 0.5 * full, atol=1e-5, rtol=0)


def test_constant_x_offset_equals_conv_on_shifted_input():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4, 8, 10, generator=g)
    w = torch.randn(3, 4, 3, 3, generator=g)
    off = torch.zeros(2, 18, 8, 10)
    off[:, 1::2] = 1.0  # every tap samples one pixel to the right
    shifted = F.pad(x, (0, 1))[..., 1:]
    ref = F.conv2d(shifted, w, padding=1)
    out = deform_conv2d(x, off, w)
    # column 0 differs: the deformable tap at x=-1+1 reads real data where the reference reads padding
    torch.testing.assert_close(out[..., 1:], ref[..., 1:], atol=1e-4, rtol=0)
    assert (out[..., 0] - ref[..., 0]).abs().max() > 1e-3


def test_gradcheck_float64_all_inputs():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 1, 3, 4, dtype=torch.float64, generator=g, requires_grad=True)
    # fractional offsets keep bilinear sampling away from its kinks at integer positions
    off = (torch.rand(1, 18, 3, 4, dtype=torch.float64, generator=g) * 0.6 + 0.2).requires_grad_()
    w = torch.randn(2, 1, 3, 3, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, generator=g, requires_grad=True)
    m = torch.rand(1, 9, 3, 4, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: deform_conv2d(*a), (x, off, w, b, m), eps=1e-6, atol=1e-5)


def test_aligned_deform_conv_starts_as_half_modulated_conv():
    torch.manual_seed(0)
    mod = AlignedDeformConv(6)
    up, skip = torch.randn(2, 6, 7, 7), torch.randn(2, 6, 7, 7)
    ref = F.conv2d(up, mod.dcn.weight, None, padding=1) * 0.5 + mod.dcn.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(mod(up, skip), ref, atol=1e-4, rtol=0)
    out = mod(up, skip).sum()
    out.backward()
    assert mod.offset_conv.weight.grad is not None and mod.offset_conv.weight.grad.abs().sum() > 0


def test_module_rejects_bad_offset_shape():
    conv = DeformConv2d(3, 2)
    try:
        conv(torch.randn(1, 3, 5, 5), torch.zeros(1, 9, 5, 5))
    except ValueError as exc:
        assert "offset" in str(exc)
    else:
        raise AssertionError("a wrong offset shape must be rejected")
