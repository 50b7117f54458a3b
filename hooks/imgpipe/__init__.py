"""imgpipe: the host pipeline's contract (hooks, items, stages) and its reference runner."""

from .config import StageConfig, load_config, parse_config
from .errors import ConfigError, OptionError, PipelineError, PluginLoadError, RegistrationError
from .item import Item
from .manager import PluginManager, make_plugin_manager
from .markers import PROJECT, hookimpl, hookspec
from .registry import Register, Stage, StageFactory, StageInfo, StageRegistry
from .runner import Failure, build_pipeline, check_pipeline, failures_of, run_pipeline, run_stages
from .urls import FetchError, UrlLimits, redact_url

__all__ = [
    "PROJECT",
    "ConfigError",
    "Failure",
    "FetchError",
    "Item",
    "OptionError",
    "PipelineError",
    "PluginLoadError",
    "PluginManager",
    "Register",
    "RegistrationError",
    "Stage",
    "StageConfig",
    "StageFactory",
    "StageInfo",
    "StageRegistry",
    "UrlLimits",
    "build_pipeline",
    "check_pipeline",
    "failures_of",
    "hookimpl",
    "hookspec",
    "load_config",
    "make_plugin_manager",
    "parse_config",
    "redact_url",
    "run_pipeline",
    "run_stages",
]
