"""The host's errors: each names what is wrong and where, so a user can fix it."""


class PipelineError(Exception):
    """Base of every error the host raises on purpose."""


class PluginLoadError(PipelineError):
    """A plugin's entry point could not be imported (fatal only when asked to be)."""


class RegistrationError(PipelineError):
    """A plugin registered a stage badly: a duplicate name, a bad name or a non-callable."""


class ConfigError(PipelineError):
    """A pipeline config is malformed, names an unknown stage, or gives a bad option."""


class OptionError(ConfigError):
    """A stage factory refused an option's value; factories raise it naming the option."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(f"option {option!r}: {message}")
        self.option = option
        self.message = message
