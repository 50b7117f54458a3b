"""The stage registry: the host's side of `register_stages(register)`."""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from .errors import ConfigError, OptionError, RegistrationError
from .item import Item

Stage = Callable[[Iterable[Item]], Iterator[Item]]
"""A stage takes the upstream items and yields items, lazily."""

StageFactory = Callable[..., Stage]
"""`factory(**options)` builds a stage from its options in a pipeline config."""


class Register(Protocol):
    """The callback a plugin's `register_stages` hook receives."""

    def __call__(self, name: str, factory: StageFactory) -> None: ...


NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_-]*$")


@dataclass(frozen=True)
class StageInfo:
    """A registered stage: its name, factory, and the plugin (and distribution) that gave it."""

    name: str
    factory: StageFactory
    plugin: str
    distribution: str | None = None

    def options(self) -> list[str]:
        """The factory's keyword options, as its signature declares them, less those it names
        in `python_only_options` (objects a config cannot give, such as a shared pool)."""
        python_only = getattr(self.factory, "python_only_options", ())
        return [
            p.name
            for p in inspect.signature(self.factory).parameters.values()
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name not in python_only
        ]


class StageRegistry:
    """Stages by name. Only the host adds to it, through the `register` callbacks it hands out."""

    def __init__(self) -> None:
        self._stages: dict[str, StageInfo] = {}

    def callback_for(self, plugin: str, distribution: str | None = None) -> Register:
        """The `register` callback handed to one plugin's hook, so each stage knows its plugin."""

        def register(name: str, factory: StageFactory) -> None:
            self.add(StageInfo(name, factory, plugin, distribution))

        return register

    def add(self, info: StageInfo) -> None:
        """Add a stage, refusing a bad name, a non-callable factory or a duplicate name."""
        if not isinstance(info.name, str) or not NAME_PATTERN.match(info.name):
            raise RegistrationError(
                f"plugin {info.plugin!r} registered a stage named {info.name!r}: a stage name is "
                "lower-case letters, digits, '-' and '_', starting with a letter"
            )
        if not callable(info.factory):
            raise RegistrationError(
                f"plugin {info.plugin!r} registered stage {info.name!r} with a factory that is "
                f"not callable: {info.factory!r}"
            )
        if info.name in self._stages:
            first = self._stages[info.name].plugin
            raise RegistrationError(
                f"stage {info.name!r} is registered twice: by plugin {first!r} and by plugin "
                f"{info.plugin!r}"
            )
        self._stages[info.name] = info

    def __iter__(self) -> Iterator[StageInfo]:
        return iter(sorted(self._stages.values(), key=lambda info: info.name))

    def __contains__(self, name: object) -> bool:
        return name in self._stages

    def get(self, name: str) -> StageInfo:
        """The stage called `name`, or a ConfigError listing the stages there are."""
        try:
            return self._stages[name]
        except KeyError:
            available = ", ".join(sorted(self._stages)) or "none"
            raise ConfigError(f"unknown stage {name!r}; available stages: {available}") from None

    def build(self, name: str, options: dict[str, Any]) -> Stage:
        """Call the stage's factory with `options`; an option it does not take is an error."""
        info = self.get(name)
        known = info.options()
        signature = inspect.signature(info.factory)
        takes_any = any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values())
        for option in options:
            if option not in known and not takes_any:
                close = difflib.get_close_matches(option, known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ConfigError(
                    f"unknown option {option!r} for stage {name!r}{hint} "
                    f"(its options: {', '.join(known) or 'none'})"
                )
        try:
            signature.bind(**options)
        except TypeError as exc:
            raise ConfigError(
                f"stage {name!r}: bad options ({exc}); its options are: "
                f"{', '.join(known) or 'none'}"
            ) from None
        try:
            return info.factory(**options)
        except OptionError as exc:
            raise ConfigError(f"stage {name!r}: {exc}") from exc
