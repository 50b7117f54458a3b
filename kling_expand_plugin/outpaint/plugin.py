"""The plugin's entry point: registers the `outpaint` stage with the imgpipe host."""

from imgpipe import Register, hookimpl
from kling_expand_plugin.outpaint.stage import OutpaintStage


@hookimpl
def register_stages(register: Register) -> None:
    register("outpaint", OutpaintStage)
