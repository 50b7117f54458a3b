"""The host's built-in stages, each an ordinary plugin."""
