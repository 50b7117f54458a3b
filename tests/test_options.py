"""The outpaint stage's options are one list: its constructor. The README's table and the
command's flags are checked against it, so none is added in one place and forgotten in another."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

from kling_expand_plugin.outpaint.stage import OutpaintStage

README = Path(__file__).parents[1] / "README.md"
PYTHON_ONLY = {"slots": "a Slots object, say a cluster's"}
NOT_FLAGS = {
    "on_error": "the command passes failures through, or stops with --fail-fast",
    "order": "the command hands results on in input order",
}


def stage_options() -> list[str]:
    return [name for name in inspect.signature(OutpaintStage.__init__).parameters if name != "self"]


def test_the_readme_table_lists_every_stage_option_and_no_other():
    text = README.read_text()
    section = text[text.index("### `outpaint`") : text.index("### Batches")]
    rows = re.findall(r"^\| `(\w+)` \|", section, re.M)
    assert sorted(rows) == sorted(set(stage_options()) - set(PYTHON_ONLY))


def test_every_stage_option_has_a_flag_on_the_command():
    ran = subprocess.run(
        [sys.executable, "-m", "kling_expand_plugin.cli", "expand", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    flags = set(re.findall(r"--([a-z-]+)", ran.stdout))
    missing = {
        name
        for name in stage_options()
        if name.replace("_", "-") not in flags and name not in PYTHON_ONLY | NOT_FLAGS
    }
    assert not missing
