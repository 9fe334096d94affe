"""comcoco: build ComCOCO-style referring object removal datasets from RefCOCO+ sources."""

import logging
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("comcoco")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "collate", "load", "load_refer"]

# Stages report through the ``comcoco.*`` loggers; a Prefect run sends them to its log
# (pipelines/runners.py). Elsewhere they stay silent unless the caller configures logging.
logging.getLogger(__name__).addHandler(logging.NullHandler())


def __getattr__(name: str) -> Any:
    """``comcoco.load``, ``comcoco.collate`` and ``comcoco.load_refer`` import torch only when first used."""
    if name in ("collate", "load", "load_refer"):
        from comcoco.release import dataset

        return getattr(dataset, name)
    raise AttributeError(f"module 'comcoco' has no attribute {name!r}")
