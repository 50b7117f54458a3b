"""Reading a pipeline config: a TOML file whose `[[stages]]` tables name a stage and its options."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

ALLOW = {
    "allow_no_load": (
        "load",
        "the pipeline would have no inputs: add a [[stages]] table with "
        'stage = "load" and paths = [...] first',
    ),
    "allow_no_save": (
        "save",
        "every result would be thrown away: add a [[stages]] table with "
        'stage = "save" and folder = "..." last',
    ),
}
"""Top-level keys that let a pipeline file do without a built-in end, and why it needs one."""


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
    stages = parse_config(data, source=str(path))
    _check_ends(stages, data, str(path))
    return stages


def parse_config(data: dict[str, Any], source: str = "<config>") -> list[StageConfig]:
    """The stages of an already parsed config."""
    unknown = sorted(set(data) - {"stages", *ALLOW})
    if unknown:
        raise ConfigError(
            f"{source}: unknown top-level keys {unknown}; expected [[stages]] tables and "
            f"optionally {' and '.join(f'{key} = true' for key in ALLOW)}"
        )
    for key in ALLOW:
        if not isinstance(data.get(key, False), bool):
            raise ConfigError(f"{source}: {key} must be true or false")
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


def _check_ends(stages: list[StageConfig], data: dict[str, Any], source: str) -> None:
    """A pipeline file reads its inputs with `load` and writes its results with `save`, unless
    it says otherwise (a plugin's stage makes the items, or keeps the results itself)."""
    names = {stage.stage for stage in stages}
    for key, (stage, why) in ALLOW.items():
        if stage not in names and not data.get(key, False):
            raise ConfigError(
                f"{source}: no {stage!r} stage: {why}; or, if a stage of yours does that, set "
                f"{key} = true at the top of the file"
            )
