"""The hooks a plugin may implement. Every hook here is documented in the README."""

from __future__ import annotations

from .markers import hookspec
from .registry import Register


@hookspec
def register_stages(register: Register) -> None:
    """Register pipeline stages by calling `register(name, factory)` once per stage."""
