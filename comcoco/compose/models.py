"""The learned parts a compose configuration names, loaded once: GracoNet and Harmonizer checkpoints."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from comcoco.config import ComposeConfig, ComposeConfigError


@dataclass
class ComposeModels:
    """Learned parts loaded once per run (None when the configuration does not use them)."""

    placer: Any = None
    harmonizer: Any = None


def load_models(config: ComposeConfig, device: str = "cpu") -> ComposeModels:
    """Load the checkpoints the configuration names; an unusable file is a ComposeConfigError."""
    models = ComposeModels()
    if config.placement == "graconet":
        from comcoco.placement.graconet import GracoNetPlacer

        try:
            models.placer = GracoNetPlacer(config.graconet_ckpt, device=device)
        except Exception as exc:  # strict key mismatch, bad pickle, wrong file: all mean "unusable"
            raise ComposeConfigError(f"cannot use GracoNet checkpoint {config.graconet_ckpt}: {exc}") from None
    if config.harmonize == "network":
        from comcoco.harmonize.network import load_harmonizer

        try:
            models.harmonizer = load_harmonizer(config.harmonizer_ckpt, device=device)
        except Exception as exc:
            raise ComposeConfigError(f"cannot use Harmonizer checkpoint {config.harmonizer_ckpt}: {exc}") from None
    return models
