"""Harmonizer's six white-box filters in torch: differentiable in the image and the arguments, for
training or checking a network; ``filters`` holds the formulas and the numpy fast path, which composing
uses (so composing never imports torch). The two agree to 1e-5 for any arguments in [−1, 1]."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from comcoco.harmonize.filters import EPS, POW_EPS
from comcoco.records import FILTER_NAMES


def _t_arg(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, 1, 1, 1)


def temperature_torch(img: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Torch temperature on (B, 3, H, W) with per-image x of shape (B,); gains in float64."""
    x = _t_arg(x).double()
    m = img.mean(dim=(2, 3), keepdim=True, dtype=torch.float64)
    g = m.mean(dim=1, keepdim=True)
    a = 1.0 - g / (m + EPS)
    ax = x.abs()
    zero = torch.zeros_like(x)
    shift = torch.cat(
        [torch.where(x < 0, ax, zero), torch.where(x != 0, 0.5 * ax, zero), torch.where(x > 0, ax, zero)],
        dim=1,
    )
    m2 = m + shift
    g2 = m2.mean(dim=1, keepdim=True)
    gains = (g2 / (m2 + EPS) + a).to(img.dtype)
    return torch.clamp(img * gains, 0.0, 1.0)


def brightness_torch(img: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    x = _t_arg(x)
    alpha = torch.where(x >= 0, 1.0 / torch.clamp(1.0 - x, min=EPS), 1.0 + x)
    return torch.clamp(img * alpha, 0.0, 1.0)


def contrast_torch(img: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Torch contrast; the floor passes no gradient for x > 0 (as in Harmonizer)."""
    x = _t_arg(x)
    t = img.mean(dim=(1, 2, 3), keepdim=True, dtype=torch.float64).to(img.dtype)
    xp = 255.0 / (256.0 - torch.floor(x * 255.0)) - 1.0
    xe = torch.where(x.detach() > 0, xp, x)
    return torch.clamp(img + (img - t) * xe, 0.0, 1.0)


def saturation_torch(img: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    x = _t_arg(x)
    cmax = img.max(dim=1, keepdim=True).values
    cmin = img.min(dim=1, keepdim=True).values
    var = cmax - cmin
    ran = cmax + cmin
    light = ran * 0.5
    s = torch.where(light < 0.5, var / (ran + EPS), var / (2.0 - ran + EPS))
    a_x = 1.0 / torch.clamp(1.0 - x, min=EPS) - 1.0
    a_pos = torch.where(x + s > 1, 1.0 / (s + EPS) - 1.0, a_x)
    pos = img + (img - light) * a_pos
    neg = light + (img - light) * (1.0 + x)
    return torch.clamp(torch.where(x.detach() >= 0, pos, neg), 0.0, 1.0)


def highlight_torch(img: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    x = _t_arg(x)
    base = (1.0 - img).double() + POW_EPS
    out = 1.0 - torch.clamp(torch.pow(base, (1.0 + x).double()), 0.0, 1.0).to(img.dtype)
    return torch.clamp(out, 0.0, 1.0)


def shadow_torch(img: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    x = _t_arg(x)
    out = torch.pow(img.double() + POW_EPS, (1.0 - x).double())
    return torch.clamp(out, 0.0, 1.0).to(img.dtype)


_TORCH_FILTERS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "temperature": temperature_torch,
    "brightness": brightness_torch,
    "contrast": contrast_torch,
    "saturation": saturation_torch,
    "highlight": highlight_torch,
    "shadow": shadow_torch,
}


def apply_filter_torch(name: str, img: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """One named filter on (B, 3, H, W) with arguments of shape (B,)."""
    try:
        fn = _TORCH_FILTERS[name]
    except KeyError:
        raise ValueError(f"unknown filter {name!r}; expected one of {', '.join(FILTER_NAMES)}") from None
    return fn(img, x)


def _torch_mask(mask: torch.Tensor, img: torch.Tensor) -> torch.Tensor:
    m = mask
    if m.dim() == 3:
        m = m.unsqueeze(1)
    if m.dim() != 4 or m.shape[1] != 1 or m.shape[0] != img.shape[0] or m.shape[2:] != img.shape[2:]:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match image shape {tuple(img.shape)}")
    return torch.clamp(m.to(img.dtype), 0.0, 1.0)


def _check_torch(img: torch.Tensor, args: torch.Tensor) -> None:
    if img.dim() != 4 or img.shape[1] != 3:
        raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(img.shape)}")
    if args.shape != (img.shape[0], len(FILTER_NAMES)):
        raise ValueError(f"expected arguments of shape ({img.shape[0]}, 6), got {tuple(args.shape)}")


def _run_chain_torch(
    img: torch.Tensor, args: torch.Tensor, mask: torch.Tensor | None, order: Sequence[int]
) -> torch.Tensor:
    _check_torch(img, args)
    out = img
    for i in order:
        out = _TORCH_FILTERS[FILTER_NAMES[i]](out, args[:, i].to(img.dtype))
    if mask is None:
        return out
    m = _torch_mask(mask, img)
    return out * m + img * (1.0 - m)


def apply_filters_torch(
    img: torch.Tensor, args: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Torch chain in Harmonizer order; differentiable in the image and the arguments."""
    return _run_chain_torch(img, args, mask, range(len(FILTER_NAMES)))


def synthesize_torch(img: torch.Tensor, mask: torch.Tensor | None, args: torch.Tensor) -> torch.Tensor:
    """Torch version of :func:`synthesize` (reverse order, blended into the mask)."""
    return _run_chain_torch(img, args, mask, range(len(FILTER_NAMES) - 1, -1, -1))
