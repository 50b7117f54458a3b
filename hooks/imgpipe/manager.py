"""The plugin-manager factory: built-in stages and installed plugins, registered in that order."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from importlib import metadata

import pluggy

from . import hookspecs
from .errors import PluginLoadError
from .markers import PROJECT
from .registry import StageRegistry
from .stages import load, save

log = logging.getLogger(__name__)

STRICT_ENV = "IMGPIPE_STRICT_PLUGINS"
"""Set to 1 to make a plugin that fails to import an error instead of a warning."""

BUILTIN_PLUGINS = {"imgpipe.load": load, "imgpipe.save": save}


class PluginManager(pluggy.PluginManager):
    """pluggy's manager, remembering which distribution each entry-point plugin came from."""

    def __init__(self) -> None:
        super().__init__(PROJECT)
        self.distributions: dict[str, str] = {}
        """Plugin name to "distribution version", for plugins loaded from entry points."""
        self.load_errors: dict[str, str] = {}
        """Plugin name to the reason it was skipped."""

    def stages(self) -> StageRegistry:
        """Ask every plugin for its stages, handing each its own `register` callback."""
        registry = StageRegistry()
        for impl in self.hook.register_stages.get_hookimpls():
            register = registry.callback_for(
                impl.plugin_name, self.distributions.get(impl.plugin_name)
            )
            impl.function(*[{"register": register}[arg] for arg in impl.argnames])
        return registry


def make_plugin_manager(
    *,
    distributions: Iterable[metadata.Distribution] | None = None,
    strict: bool | None = None,
) -> PluginManager:
    """A fresh manager with the built-in stages and every installed `imgpipe` plugin.

    `distributions` defaults to the installed ones; tests pass fakes. A plugin that fails to
    import is logged and skipped, unless `strict` (default: the IMGPIPE_STRICT_PLUGINS env var).
    """
    if strict is None:
        strict = os.environ.get(STRICT_ENV, "") not in ("", "0")
    pm = PluginManager()
    pm.add_hookspecs(hookspecs)
    for name, plugin in BUILTIN_PLUGINS.items():
        pm.register(plugin, name=name)
    if distributions is None:
        distributions = metadata.distributions()
    for dist in distributions:
        for entry_point in dist.entry_points:
            if entry_point.group == PROJECT:
                _load(pm, dist, entry_point, strict)
    pm.check_pending()
    return pm


def _load(
    pm: PluginManager,
    dist: metadata.Distribution,
    entry_point: metadata.EntryPoint,
    strict: bool,
) -> None:
    seen = pm.get_plugin(entry_point.name) is not None or entry_point.name in pm.load_errors
    if seen or pm.is_blocked(entry_point.name):  # a distribution can be listed twice on sys.path
        return
    where = f"{dist.metadata['Name']} {dist.version}"
    try:
        plugin = entry_point.load()
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        if strict:
            raise PluginLoadError(
                f"plugin {entry_point.name!r} ({where}) failed to import: {reason}"
            ) from exc
        log.warning("skipping plugin %r (%s): import failed: %s", entry_point.name, where, reason)
        pm.load_errors[entry_point.name] = reason
        return
    pm.register(plugin, name=entry_point.name)
    pm.distributions[entry_point.name] = where
