"""The outpaint stage: its options, the stage, its plugin wiring, the Python API and the report."""
