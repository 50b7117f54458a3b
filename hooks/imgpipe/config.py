"""Reading a pipeline config: a TOML file whose `[[stages]]` tables name a stage and its options."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError


@dataclass(frozen=True)
class StageConfig:
    """One `[[stages]]` table: the stage's name and its options."""

    stage: str
    options: dict[str, Any] = field(default_factory=dict)


def load_config(path: str | Path) -> list[StageConfig]:
    """The stages a config file lists, in order."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the pipeline config: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_config(data, source=str(path))


def parse_config(data: dict[str, Any], source: str = "<config>") -> list[StageConfig]:
    """The stages of an already parsed config."""
    unknown = sorted(set(data) - {"stages"})
    if unknown:
        raise ConfigError(f"{source}: unknown top-level keys {unknown}; expected only [[stages]]")
    tables = data.get("stages")
    if not isinstance(tables, list) or not tables:
        raise ConfigError(f'{source}: no stages; add a [[stages]] table with stage = "name"')
    stages = []
    for number, table in enumerate(tables, start=1):
        if not isinstance(table, dict) or not isinstance(table.get("stage"), str):
            raise ConfigError(f'{source}: stage #{number} has no stage = "name"')
        options = {key: value for key, value in table.items() if key != "stage"}
        stages.append(StageConfig(table["stage"], options))
    return stages
