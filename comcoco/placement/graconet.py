"""GracoNet placement (Zhou et al., ECCV 2022) for CPU inference, from the official checkpoint.

The network lives in ``comcoco.placement.graconet_model`` (the official layout, so the ``model`` entry
of an official ``.pth`` — ``{'generator': ..., 'discriminator': ...}`` — loads with ``strict=True``);
this module reads checkpoints, prepares inputs as the official loader does, and places objects.
Inference draws the code z ~ N(0, I) from a seed, so a proposal is reproducible.

Checkpoints are read with ``torch.load(weights_only=True)``; the official file also pickles an
``argparse.Namespace`` under ``'opt'``, which is admitted through ``torch.serialization.safe_globals``
and nothing else, so an arbitrary pickle is never executed.
"""

from __future__ import annotations

import argparse
import pickle
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from comcoco.errors import ComcocoError
from comcoco.ids import stable_hash64
from comcoco.placement.graconet_model import (  # noqa: F401 (the network's names, re-exported)
    IMAGENET_MEAN,
    IMAGENET_STD,
    Discriminator,
    GracoNetConfig,
    SysNet,
    blend_theta,
    gen_blend,
    make_shared_net,
)
from comcoco.placement.sampler import (
    DEFAULT_CONFIG,
    PlacementError,
    PlacementRequest,
    SamplerConfig,
    placement_box,
    placement_from_params,
)
from comcoco.records import Placement


class GracoNetError(ComcocoError):
    """The GracoNet placer cannot be used (no checkpoint, unreadable or incompatible file)."""


# --- checkpoints -------------------------------------------------------------------------------


def read_checkpoint(path: str | Path) -> tuple[dict, GracoNetConfig]:
    """The ``model`` dict and network config of a GracoNet checkpoint, loaded without arbitrary pickle.

    Accepts the official layout ``{'epoch', 'model': {'generator', 'discriminator'}, 'opt', ...}`` or a
    bare ``{'generator': ..., 'discriminator': ...}``.
    """
    p = Path(path)
    if not p.is_file():
        raise GracoNetError(f"GracoNet checkpoint not found: {p}")
    try:
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            # the official file pickles its argparse options; admit exactly that class, nothing more
            with torch.serialization.safe_globals([argparse.Namespace]):
                obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f" (found {found.group(1)})" if found else ""
        raise GracoNetError(
            f"{p}: refused to load: it pickles objects other than tensors and training options{what}"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise GracoNetError(f"{p}: not a readable torch checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise GracoNetError(f"{p}: expected a dict checkpoint, got {type(obj).__name__}")
    model = obj.get("model", obj)
    if not isinstance(model, dict) or "generator" not in model:
        raise GracoNetError(f"{p}: no 'model' -> 'generator' state dict (keys: {sorted(map(str, obj))[:8]})")
    opt = obj.get("opt")
    cfg = GracoNetConfig.from_namespace(opt) if opt is not None else GracoNetConfig()
    return model, cfg


def _load_strict(module: nn.Module, state: object, what: str, path: Path) -> None:
    if not isinstance(state, dict):
        raise GracoNetError(f"{path}: '{what}' is not a state dict")
    result = module.state_dict()
    missing = [k for k in result if k not in state]
    unexpected = [k for k in state if k not in result]
    wrong = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in result.items()
        if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            parts.append(f"{len(wrong)} of wrong shape (e.g. {wrong[0]})")
        raise GracoNetError(f"{path}: {what} does not match the GracoNet layout: " + "; ".join(parts))
    module.load_state_dict(state, strict=True)


# --- preprocessing (loader/datasets.py at img_size) --------------------------------------------


@dataclass(frozen=True)
class PreparedInputs:
    """Network inputs at img_size: tensors in [0, 1], batch of one, plus the fg box in the canvas."""

    bg: torch.Tensor  # (1, 3, S, S)
    fg: torch.Tensor  # (1, 3, S, S)
    fg_mask: torch.Tensor  # (1, 1, S, S)
    fg_bbox: torch.Tensor  # (1, 4) x, y, w, h of the fg inside its padded canvas


def _as_mask_u8(mask: np.ndarray) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim == 3:
        m = m[..., 0]
    if m.dtype == np.bool_ or (m.dtype != np.uint8 and float(m.max(initial=0)) <= 1.0):
        return np.clip(np.rint(m.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    if m.dtype == np.uint8 and int(m.max(initial=0)) <= 1:
        return np.ascontiguousarray(m * np.uint8(255))
    return np.ascontiguousarray(np.clip(m, 0, 255).astype(np.uint8))


def _to_tensor(arr: np.ndarray) -> torch.Tensor:
    a = arr.astype(np.float32) / 255.0
    if a.ndim == 2:
        a = a[None]
    else:
        a = a.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(a))[None]


def prepare_inputs(
    fg_rgb: np.ndarray, fg_mask: np.ndarray, bg_rgb: np.ndarray, size: int = 256
) -> PreparedInputs:
    """The official 256-px inputs: bg stretched to size x size; the fg crop gets the same stretch,
    its limiting side scaled to ``size`` and the other zero-padded centrally."""
    fg_h, fg_w = fg_rgb.shape[:2]
    bg_h, bg_w = bg_rgb.shape[:2]
    if min(fg_h, fg_w, bg_h, bg_w) < 1:
        raise ValueError("foreground and background must be non-empty images")
    if fg_mask.shape[:2] != (fg_h, fg_w):
        raise ValueError(f"fg_mask shape {fg_mask.shape[:2]} differs from fg_rgb shape {(fg_h, fg_w)}")
    bg = np.asarray(
        Image.fromarray(np.ascontiguousarray(bg_rgb[..., :3])).resize((size, size), Image.BILINEAR)
    )
    fg_img = Image.fromarray(np.ascontiguousarray(fg_rgb[..., :3]))
    msk_img = Image.fromarray(_as_mask_u8(fg_mask))
    if bg_w / bg_h > fg_w / fg_h:
        new_w = max((size * fg_w * bg_h) // (fg_h * bg_w), 1)
        new_h = size
    else:
        new_w = size
        new_h = max((size * fg_h * bg_w) // (fg_w * bg_h), 1)
    x0, y0 = (size - new_w) // 2, (size - new_h) // 2
    fg = np.zeros((size, size, 3), np.uint8)
    msk = np.zeros((size, size), np.uint8)
    fg[y0 : y0 + new_h, x0 : x0 + new_w] = np.asarray(fg_img.resize((new_w, new_h), Image.BILINEAR))
    msk[y0 : y0 + new_h, x0 : x0 + new_w] = np.asarray(msk_img.resize((new_w, new_h), Image.BILINEAR))
    return PreparedInputs(
        bg=_to_tensor(bg),
        fg=_to_tensor(fg),
        fg_mask=_to_tensor(msk),
        fg_bbox=torch.tensor([[x0, y0, new_w, new_h]], dtype=torch.float32),
    )


def gen_composite_image(
    bg_rgb: np.ndarray, fg_rgb: np.ndarray, fg_mask: np.ndarray, trans: Sequence[float]
) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int, int]]:
    """Full-resolution composite: fg crop and mask resized (bilinear) into ``placement_box``, soft alpha.

    Returns the composite (uint8 HxWx3), the 8-bit mask in background coordinates and the box.
    """
    bg_h, bg_w = bg_rgb.shape[:2]
    fg_h, fg_w = fg_rgb.shape[:2]
    x0, y0, w, h = placement_box(float(trans[0]), float(trans[1]), float(trans[2]), fg_w, fg_h, bg_w, bg_h)
    fg = np.asarray(Image.fromarray(np.ascontiguousarray(fg_rgb[..., :3])).resize((w, h), Image.BILINEAR))
    m = np.asarray(Image.fromarray(_as_mask_u8(fg_mask)).resize((w, h), Image.BILINEAR))
    alpha = (m.astype(np.float64) / 255.0)[..., None]
    out = bg_rgb[..., :3].copy()
    region = out[y0 : y0 + h, x0 : x0 + w].astype(np.float64)
    out[y0 : y0 + h, x0 : x0 + w] = (alpha * fg + (1.0 - alpha) * region).astype(np.uint8)
    mask = np.zeros((bg_h, bg_w), np.uint8)
    mask[y0 : y0 + h, x0 : x0 + w] = m
    return out, mask, (x0, y0, w, h)


# --- the placer --------------------------------------------------------------------------------


def noise_code(seed: int, index: int, dim: int) -> torch.Tensor:
    """z ~ N(0, I) of proposal ``index`` for ``seed``: (1, dim), independent of how many are drawn."""
    g = torch.Generator().manual_seed(stable_hash64(int(seed), "graconet-noise", int(index)) & (2**63 - 1))
    return torch.randn(1, dim, generator=g)


class GracoNetPlacer:
    """Proposes (s, rx, ry) with a trained GracoNet generator on CPU (or a given device).

    ``checkpoint_path`` is required: an untrained GracoNet proposes nothing meaningful, so a missing
    path is an error, not a silent fallback to random weights.
    """

    def __init__(self, checkpoint_path: str | Path | None, device: str = "cpu"):
        if checkpoint_path is None or str(checkpoint_path) == "":
            raise GracoNetError(
                "--placement graconet needs a trained checkpoint: pass --graconet-ckpt PATH "
                "(the official GracoNet result/graconet/models/11.pth); none was given"
            )
        path = Path(checkpoint_path)
        model, cfg = read_checkpoint(path)
        self.path = path
        self.config = cfg
        self.device = torch.device(device)
        generator = SysNet(cfg)
        _load_strict(generator, model["generator"], "generator", path)
        self.generator = generator.to(self.device).eval()
        self.discriminator: Discriminator | None = None
        if "discriminator" in model:
            discriminator = Discriminator(input_nc=4)
            _load_strict(discriminator, model["discriminator"], "discriminator", path)
            self.discriminator = discriminator.to(self.device).eval()

    @torch.no_grad()
    def propose_many(
        self, fg_rgb: np.ndarray, fg_mask: np.ndarray, bg_rgb: np.ndarray, seed: int, n: int
    ) -> list[tuple[float, float, float]]:
        """``n`` proposals; proposal i uses ``noise_code(seed, i)``, the backbone runs once."""
        x = prepare_inputs(fg_rgb, fg_mask, bg_rgb, self.config.img_size)
        attended = self.generator.attend(
            x.bg.to(self.device), x.fg.to(self.device), x.fg_mask.to(self.device)
        )
        codes = torch.cat([noise_code(seed, i, self.config.d_noise) for i in range(n)]).to(self.device)
        trans = self.generator.regress(attended.expand(n, -1), codes).cpu().double().numpy()
        return [(float(t[0]), float(t[1]), float(t[2])) for t in trans]

    def propose(
        self, fg_rgb: np.ndarray, fg_mask: np.ndarray, bg_rgb: np.ndarray, seed: int
    ) -> tuple[float, float, float]:
        """One (s, rx, ry) in (0, 1) for the fg crop (HxWx3 uint8) and its mask on the background."""
        return self.propose_many(fg_rgb, fg_mask, bg_rgb, seed, 1)[0]

    def place(
        self,
        req: PlacementRequest,
        fg_rgb: np.ndarray,
        fg_mask: np.ndarray,
        bg_rgb: np.ndarray,
        seed: int,
        key: object,
        k: int = 1,
        config: SamplerConfig = DEFAULT_CONFIG,
    ) -> Placement:
        """The best-scoring valid proposal among ``k`` (scored like the default sampler)."""
        sample_seed = stable_hash64(int(seed), "graconet", key) & 0xFFFFFFFF
        proposals = self.propose_many(fg_rgb, fg_mask, bg_rgb, sample_seed, max(1, k))
        best: Placement | None = None
        reasons: list[str] = []
        for s, rx, ry in proposals:
            try:
                p = placement_from_params(req, s, rx, ry, config)
            except PlacementError as exc:
                reasons.append(str(exc))
                continue
            if best is None or p.score > best.score:
                best = p
        if best is None:
            raise PlacementError(f"no valid GracoNet proposal for sample {key!r}: {reasons[0]}")
        return best
