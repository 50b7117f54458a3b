"""Batch image expansion (outpainting) with the Kling AI Image Expansion API.

The public names below are imported on first use, so that importing one module of the package
(say `kling_expand_plugin.kling.limits`) does not load the rest.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kling_expand_plugin.imaging.geometry import Ratios
    from kling_expand_plugin.kling.auth import Credentials
    from kling_expand_plugin.kling.client import KlingClient
    from kling_expand_plugin.kling.expansion import ExpandRequest
    from kling_expand_plugin.outpaint.api import expand, expand_many
    from kling_expand_plugin.outpaint.stage import OutpaintStage

_PUBLIC = {
    "expand": ".outpaint.api",
    "expand_many": ".outpaint.api",
    "Credentials": ".kling.auth",
    "ExpandRequest": ".kling.expansion",
    "KlingClient": ".kling.client",
    "Ratios": ".imaging.geometry",
    "OutpaintStage": ".outpaint.stage",
}

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


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name], __name__), name)
    globals()[name] = value
    return value
