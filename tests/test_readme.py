"""The README's commands and examples stay true."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # the README's commands in subprocesses

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_the_python_api_example_runs(tmp_path):
    section = README.split("## Python API", 1)[1]
    example = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert example, "no python example under ## Python API"
    shutil.copytree(ROOT / "sample_data", tmp_path / "sample_data")
    done = subprocess.run(
        [sys.executable, "-c", example.group(1)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "coffee-0.png").is_file() and (tmp_path / "coffee-1.png").is_file()


def test_ci_runs_the_readme_test_command():
    quick_start = README.split("**The tests**", 1)[1]
    command = re.search(r"```sh\n(.*?)\n```", quick_start, re.DOTALL)
    assert command
    test_command = command.group(1).split("&&")[-1].strip()
    assert test_command in (ROOT / ".ci" / "run").read_text()


# Every `kling-expand` and `imgpipe` command the README shows: run when it can run here (the
# local server, the sample photos), its printed transcript compared; parsed by the command's own
# parser when it needs the paid service, a URL on the internet, or a server left running.

COMMAND = re.compile(r"(?:\.venv/bin/)?(kling-expand|imgpipe)\s")
OFFLINE_ONLY = ("https://", "http://", "tasks ", "serve ", "doctor ")


def readme_commands() -> list[tuple[str, str | None]]:
    """(command, its transcript or None) for each command line of the README's code blocks."""
    found: list[tuple[str, str | None]] = []
    for lang, body in re.findall(r"```(\w*)\n(.*?)```", README, re.DOTALL):
        lines = body.splitlines()
        for number, line in enumerate(lines):
            transcript = line.startswith("$ ")
            if lang != "sh" and not transcript:
                continue
            for part in line.removeprefix("$ ").split("&&"):
                part = part.split("  #")[0].strip().rstrip("&").strip()
                if COMMAND.match(part + " "):
                    shown = "\n".join(lines[number + 1 :]).split("\n$ ")[0] if transcript else None
                    found.append((part, shown))
    transcripts = {command: shown for command, shown in found if shown is not None}
    unique = dict.fromkeys(command.removeprefix(".venv/bin/") for command, _ in found)
    return [(command, transcripts.get(command)) for command in unique]  # each run once


def workspace(tmp_path: Path) -> Path:
    """A folder holding what the README's examples name: the sample data, photos/, a.jpg,
    b.png and the pipeline config of "Pipeline configs"."""
    shutil.copytree(ROOT / "sample_data", tmp_path / "sample_data")
    shutil.copytree(ROOT / "sample_data" / "photos", tmp_path / "photos")
    shutil.copy(ROOT / "sample_data" / "photos" / "rocket.jpg", tmp_path / "a.jpg")
    shutil.copy(ROOT / "sample_data" / "photos" / "coffee.png", tmp_path / "b.png")
    section = README.split("## Pipeline configs", 1)[1]
    toml = re.search(r"```toml\n(.*?)```", section, re.DOTALL)
    assert toml, "no pipeline config under ## Pipeline configs"
    (tmp_path / "pipeline.toml").write_text(toml.group(1))
    return tmp_path


def test_every_readme_command_is_found():
    commands = [command for command, _ in readme_commands()]
    assert len(commands) >= 15, commands
    assert any(command.startswith("imgpipe check") for command in commands)


def test_every_readme_command_runs_or_parses(tmp_path):
    from kling_expand_plugin.cli import build_parser

    cwd = workspace(tmp_path)
    for command, shown in readme_commands():
        program, *args = shlex.split(command)
        program = program.removeprefix(".venv/bin/")
        if any(marker in command + " " for marker in OFFLINE_ONLY):
            assert program == "kling-expand", command
            parsed, unknown = build_parser().parse_known_args(args)
            assert not unknown and parsed.handler, command
            continue
        module = "kling_expand_plugin.cli" if program == "kling-expand" else "imgpipe.cli"
        for folder in ("out", "banners"):  # each example starts from a clean slate, as read
            shutil.rmtree(cwd / folder, ignore_errors=True)
        done = subprocess.run(
            [sys.executable, "-m", module, *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=120,
        )
        expected_code = 2 if "--n 12" in command else 0
        assert done.returncode == expected_code, (command, done.stderr)
        if shown is not None:
            printed = done.stdout + done.stderr
            wanted = [line for line in shown.splitlines() if line and not line.startswith("[")]
            assert mask(printed.splitlines()) == mask(wanted), command


def mask(lines: list[str]) -> list[str]:
    """The lines without their timings, which differ from run to run."""
    return [re.sub(r"\d+\.\d s\b", "T s", line) for line in lines]
