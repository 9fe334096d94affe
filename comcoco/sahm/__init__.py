"""SAHM: syntax-aware hybrid mapping for referring object removal (generator, losses, metrics, trainer)."""

from comcoco.sahm.config import SAHMConfig, get_config
from comcoco.sahm.model import SAHMGenerator, SAHMOutput, build_discriminator, build_generator

__all__ = [
    "SAHMConfig",
    "SAHMGenerator",
    "SAHMOutput",
    "build_discriminator",
    "build_generator",
    "get_config",
]
