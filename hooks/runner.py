"""Building a pipeline from its config and streaming items through it."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from .config import StageConfig, load_config
from .errors import ConfigError
from .item import Item
from .registry import Stage, StageRegistry


def build_pipeline(registry: StageRegistry, config: list[StageConfig]) -> list[Stage]:
    """Build every stage before any work is done, so a config error costs nothing."""
    stages = []
    for number, stage_config in enumerate(config, start=1):
        try:
            stages.append(registry.build(stage_config.stage, stage_config.options))
        except ConfigError as exc:
            raise ConfigError(f"stage #{number}: {exc}") from exc
    return stages


def run_stages(stages: list[Stage], items: Iterable[Item] = ()) -> Iterator[Item]:
    """Chain the stages lazily: each pulls from the one before it."""
    stream: Iterable[Item] = items
    for stage in stages:
        stream = stage(stream)
    return iter(stream)


def run_pipeline(registry: StageRegistry, config_path: str | Path) -> Iterator[Item]:
    """Read a config file, build its stages and stream items through them."""
    return run_stages(build_pipeline(registry, load_config(config_path)))
