"""The plugin's entry point: registers the `outpaint` stage with the imgpipe host."""

from imgpipe import Register, hookimpl

from .stage import OutpaintStage


@hookimpl
def register_stages(register: Register) -> None:
    register("outpaint", OutpaintStage)
