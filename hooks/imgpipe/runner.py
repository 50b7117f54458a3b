"""Building a pipeline from its config, checking it, and streaming items through it.

A stage is a callable over items. It may also offer, for the checks made before any work:
`preview(items) -> items`, the items it would yield for those (keys and metadata, without
doing the work), and `check(items)`, which raises `ConfigError` if it cannot take them (say,
two would be written to one file); `items` is None where a stage before offers no preview.
And `failures`, a list of `Failure`s it adds to as items fail (an item a stage drops or hands
on as failed): the host reports them and exits 1, whatever was logged.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .config import StageConfig, load_config
from .errors import ConfigError
from .item import Item
from .registry import Stage, StageRegistry


@dataclass(frozen=True)
class Failure:
    """An item a stage could not do: its key, and why, in words."""

    key: str
    reason: str


def failures_of(stages: list[Stage]) -> list[Failure]:
    """What the stages reported as failed, stage by stage."""
    return [failure for stage in stages for failure in getattr(stage, "failures", ())]


def build_pipeline(registry: StageRegistry, config: list[StageConfig]) -> list[Stage]:
    """Build every stage before any work is done, so a config error costs nothing."""
    stages = []
    for number, stage_config in enumerate(config, start=1):
        try:
            stages.append(registry.build(stage_config.stage, stage_config.options))
        except ConfigError as exc:
            raise ConfigError(f"stage #{number}: {exc}") from exc
    return stages


def check_pipeline(stages: list[Stage], items: Iterable[Item] = ()) -> list[list[Item] | None]:
    """The checks the stages offer, on the items they would see; ConfigError names the stage.
    Returns what each stage would hand on, from its preview (None where it cannot say)."""
    seen: list[Item] | None = list(items)
    handed_on: list[list[Item] | None] = []
    for number, stage in enumerate(stages, start=1):
        check = getattr(stage, "check", None)
        if check is not None:
            try:
                check(seen)
            except ConfigError as exc:
                raise ConfigError(f"stage #{number}: {exc}") from exc
        preview = getattr(stage, "preview", None)
        seen = list(preview(seen)) if seen is not None and preview is not None else None
        handed_on.append(seen)
    return handed_on


def run_stages(stages: list[Stage], items: Iterable[Item] = ()) -> Generator[Item, None, None]:
    """Chain the stages lazily: each pulls from the one before it. When the stream ends, fails
    or is closed, every stage is closed at once, last first, so each can stop its work."""
    streams: list[Iterable[Item]] = []
    stream: Iterable[Item] = items
    for stage in stages:
        stream = stage(stream)
        streams.append(stream)
    return _closing_all(iter(stream), streams)


def _closing_all(
    stream: Iterator[Item], streams: list[Iterable[Item]]
) -> Generator[Item, None, None]:
    try:
        yield from stream
    finally:
        for each in reversed(streams):
            close = getattr(each, "close", None)
            if close is not None:
                close()


def run_pipeline(registry: StageRegistry, config_path: str | Path) -> Generator[Item, None, None]:
    """Read a config file, build and check its stages, and stream items through them."""
    stages = build_pipeline(registry, load_config(config_path))
    check_pipeline(stages)
    return run_stages(stages)
