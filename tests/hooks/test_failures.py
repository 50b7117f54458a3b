"""Failed items reach the host's exit code through the stages' `failures`, not log lines."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterable, Iterator

from PIL import Image

from imgpipe import Failure, Item, failures_of


class Flaky:
    """Hands on every item but those whose key starts with "bad", which it reports failed."""

    def __call__(self, items: Iterable[Item]) -> Iterator[Item]:
        self.failures: list[Failure] = []
        for item in items:
            if item.key.startswith("bad"):
                logging.getLogger("flaky").error("%s failed (and this line, and another)", item.key)
                logging.getLogger("flaky").error("a second error line about %s", item.key)
                self.failures.append(Failure(item.key, "it was bad"))
                continue
            yield item


def test_the_host_counts_reported_failures_not_error_lines():
    stage = Flaky()
    items = [Item(key, b"") for key in ("a", "bad1", "b", "bad2", "bad3")]
    assert [item.key for item in stage(items)] == ["a", "b"]
    assert [f.key for f in failures_of([stage])] == ["bad1", "bad2", "bad3"]


def test_a_registered_stage_s_failures_set_imgpipe_s_exit_code_and_summary(tmp_path):
    plugin = tmp_path / "flakyplugin.py"
    plugin.write_text(
        "from imgpipe import Failure, hookimpl\n"
        "import logging\n"
        "class Flaky:\n"
        "    def __call__(self, items):\n"
        "        self.failures = []\n"
        "        for item in items:\n"
        "            if 'bad' in item.key:\n"
        "                logging.getLogger('flaky').error('one')\n"
        "                logging.getLogger('x').error('two')\n"
        "                self.failures.append(Failure(item.key, 'bad'))\n"
        "            else:\n"
        "                yield item\n"
        "@hookimpl\n"
        "def register_stages(register):\n"
        "    register('flaky', lambda: Flaky())\n"
    )
    folder = tmp_path / "in"
    folder.mkdir()
    Image.new("RGB", (8, 8), "teal").save(folder / "a.png")
    for name in ("bad1.png", "bad2.png", "bad3.png"):
        (folder / name).write_bytes(b"x")
    config = tmp_path / "pipeline.toml"
    config.write_text(
        f'[[stages]]\nstage = "load"\npaths = ["{folder}"]\n\n[[stages]]\nstage = "flaky"\n\n'
        f'[[stages]]\nstage = "save"\nfolder = "{tmp_path / "out"}"\n'
    )
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "import flakyplugin, imgpipe.cli, imgpipe.manager\n"
        "real = imgpipe.manager.make_plugin_manager\n"
        "def patched(*a, **k):\n"
        "    pm = real(*a, **k); pm.register(flakyplugin); return pm\n"
        "imgpipe.cli.make_plugin_manager = patched\n"
        "sys.exit(imgpipe.cli.main(['run', sys.argv[2]]))\n"
    )
    ran = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path), str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 1, ran.stderr
    assert "1 item out of the pipeline" in ran.stdout and "3 items failed" in ran.stdout
