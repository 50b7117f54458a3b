"""The local Kling-compatible server: the offline default target and the test target."""

from kling_expand_plugin.localserver.server import LocalServer, with_own_keys

__all__ = ["LocalServer", "with_own_keys"]
