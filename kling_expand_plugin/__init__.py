"""Batch image expansion (outpainting) with the Kling AI Image Expansion API."""

from importlib.metadata import PackageNotFoundError, version

from .api import expand, expand_many
from .auth import Credentials
from .client import ExpandRequest, KlingClient
from .geometry import Ratios
from .stage import OutpaintStage

try:
    __version__ = version("kling-expand-plugin")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "Credentials",
    "ExpandRequest",
    "KlingClient",
    "OutpaintStage",
    "Ratios",
    "__version__",
    "expand",
    "expand_many",
]
