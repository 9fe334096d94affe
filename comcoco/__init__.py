"""comcoco: build ComCOCO-style referring object removal datasets from RefCOCO+ sources."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("comcoco")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
