"""comcoco: build ComCOCO-style referring object removal datasets from RefCOCO+ sources."""

from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("comcoco")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "collate", "load", "load_refer"]


def __getattr__(name: str) -> Any:
    """``comcoco.load``, ``comcoco.collate`` and ``comcoco.load_refer`` import torch only when first used."""
    if name in ("collate", "load", "load_refer"):
        from comcoco.release import dataset

        return getattr(dataset, name)
    raise AttributeError(f"module 'comcoco' has no attribute {name!r}")
