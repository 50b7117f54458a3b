"""The local Kling-compatible server: the offline default target and the test target."""

from .server import LocalServer

__all__ = ["LocalServer"]
