"""The pluggy markers of the imgpipe host: plugins decorate their hooks with `hookimpl`."""

import pluggy

PROJECT = "imgpipe"
"""The pluggy project name, and the entry-point group plugins are published under."""

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)
