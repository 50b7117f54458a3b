"""`imgpipe run` as a subprocess against a local Kling server: what can be known about the
destination is checked before the first task (the server's counters show nothing was paid),
a failing stage ends the process with its exit code instead of hanging, and `save` writes
what the umask says, the already-shaped image under the same name as any result."""

from __future__ import annotations

import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from PIL import Image

from imgpipe import ConfigError, load_config
from kling_expand_plugin.localserver import LocalServer
from tests.helpers import free_port, write_pipeline
from tests.servers import keys_env, nothing_created

pytestmark = pytest.mark.slow  # pipelines run end to end, some in subprocesses


@pytest.fixture
def server(start_server):
    return start_server()


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.linear_gradient("L").convert("RGB").resize((400, 300)).save(folder / "a.png")
    Image.linear_gradient("L").convert("RGB").resize((640, 360)).save(folder / "wide.png")
    return folder


def config(tmp_path: Path, server: LocalServer, paths: list[str], save: dict[str, str]) -> Path:
    outpaint = {
        "endpoint": server.url,
        "aspect": "16:9",
        "ledger": str(tmp_path / "ledger.sqlite"),
        "local_latency": 0.05,
    }
    return write_pipeline(tmp_path / "pipeline.toml", paths, outpaint, save)


def imgpipe(
    *args: str,
    script: str | None = None,
    timeout: float = 60,
    env_extra: dict[str, str] | None = None,
):
    env = keys_env(**(env_extra or {}))
    command = [sys.executable, "-c", script, *args] if script else [
        sys.executable, "-m", "imgpipe.cli", *args]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)


def test_a_name_typo_is_refused_before_any_task_with_a_suggestion(server, photos, tmp_path):
    save = {"folder": str(tmp_path / "out"), "name": "{stem}_{varient}.{ext}"}
    ran = imgpipe("run", str(config(tmp_path, server, [str(photos)], save)))
    assert ran.returncode == 2, ran.stderr
    assert "{varient}" in ran.stderr and "did you mean {variant}?" in ran.stderr
    assert "stage #3" in ran.stderr
    assert nothing_created(server.stats())


def test_two_load_paths_with_one_file_name_are_refused_before_any_task(server, photos, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.png").write_bytes((photos / "a.png").read_bytes())
    save = {"folder": str(tmp_path / "out"), "name": "{variant}.{ext}"}
    ran = imgpipe("run", str(config(tmp_path, server, [str(photos), str(other)], save)))
    assert ran.returncode == 2, ran.stderr
    assert "would both be written to" in ran.stderr
    assert nothing_created(server.stats())


def test_a_save_folder_inside_the_inputs_is_refused(server, photos, tmp_path):
    (photos / "wide").mkdir()
    Image.new("RGB", (400, 300)).save(photos / "wide" / "a-0.png")
    ran = imgpipe(
        "run", str(config(tmp_path, server, [str(photos)], {"folder": str(photos / "wide")}))
    )
    assert ran.returncode == 2 and "results would be processed again" in ran.stderr
    assert nothing_created(server.stats())


def test_an_unwritable_save_folder_is_refused_before_any_task(server, photos, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    save = {"folder": str(tmp_path / "file" / "out")}
    ran = imgpipe("run", str(config(tmp_path, server, [str(photos)], save)))
    assert ran.returncode == 2 and "cannot be written" in ran.stderr
    assert nothing_created(server.stats())


def test_save_writes_with_the_umask_and_names_the_already_shaped_image_as_any_result(
    server, photos, tmp_path
):
    out = tmp_path / "out"
    out.mkdir()
    leftover = out / ".a-0.png.999999-0123abcd.part"
    leftover.write_bytes(b"half")
    script = "import os, sys; os.umask(0o022); from imgpipe.cli import main; sys.exit(main())"
    ran = imgpipe("run", str(config(tmp_path, server, [str(photos)], {"folder": str(out)})),
                  script=script)  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert sorted(path.name for path in out.iterdir()) == ["a-0.png", "wide-0.png"]
    assert {stat.S_IMODE(path.stat().st_mode) for path in out.iterdir()} == {0o644}
    assert len(server.stats()["creates_by_external_id"]) == 1  # wide.png: no task
    # Run again: the same bytes come from the ledger, nothing is replaced or paid for.
    again = imgpipe("run", str(config(tmp_path, server, [str(photos)], {"folder": str(out)})))
    assert again.returncode == 0, again.stderr
    assert server.stats()["units_charged"] == 1


FAILING_STAGE = """
import sys
from imgpipe import cli, hookimpl
from imgpipe.manager import make_plugin_manager

def boom():
    def stage(items):
        for item in items:
            raise RuntimeError("boom: the disk caught fire")
            yield item
    return stage

class Plugin:
    @hookimpl
    def register_stages(self, register):
        register("boom", boom)

def manager():
    pm = make_plugin_manager()
    pm.register(Plugin(), "boom-plugin")
    return pm

cli.make_plugin_manager = manager
sys.exit(cli.main())
"""


def test_a_stage_failing_after_paid_work_ends_the_process_with_exit_1(server, photos, tmp_path):
    path = config(tmp_path, server, [str(photos)], {"folder": str(tmp_path / "out")})
    # The embedded server (endpoint "local") is the one that hung at interpreter shutdown.
    text = path.read_text().replace(f'endpoint = "{server.url}"', 'endpoint = "local"')
    path.write_text(text + '\n[[stages]]\nstage = "boom"\n')
    ran = imgpipe("run", str(path), script=FAILING_STAGE, timeout=30)
    assert ran.returncode == 1, ran.stderr
    assert "boom: the disk caught fire" in ran.stderr


def test_too_little_free_space_for_the_results_is_refused_before_any_task(
    server, photos, tmp_path, monkeypatch, kling_env
):
    from imgpipe import make_plugin_manager
    from imgpipe.runner import build_pipeline, check_pipeline
    from imgpipe.stages import save

    path = config(tmp_path, server, [str(photos)], {"folder": str(tmp_path / "out")})
    stages = build_pipeline(make_plugin_manager().stages(), load_config(path))
    check_pipeline(stages)  # room enough on the real disk
    monkeypatch.setattr(save.shutil, "disk_usage", lambda path: _Usage(free=10_000))
    with pytest.raises(ConfigError, match=r"stage #3: save: .* 0.0 MB free; the results need"):
        check_pipeline(stages)
    assert nothing_created(server.stats())


class _Usage:
    def __init__(self, free: int) -> None:
        self.free = free


# Issue 17: a config typo gets "did you mean", a pipeline that would read nothing or throw its
# results away is refused, `check`/`run --dry-run` pay nothing, `stages` shows the options, the
# endpoint is checked before any work, and -v goes before or after the command.


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pipeline.toml"
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.slow  # subprocesses
def test_an_unknown_option_says_did_you_mean_and_lists_only_config_options(tmp_path, photos):
    path = write(
        tmp_path,
        f"""
        [[stages]]
        stage = "load"
        paths = ["{photos}"]
        [[stages]]
        stage = "outpaint"
        aspect = "16:9"
        promt = "a beach"
        [[stages]]
        stage = "save"
        folder = "{tmp_path / "out"}"
        """,
    )
    ran = imgpipe("run", str(path))
    assert ran.returncode == 2
    assert "unknown option 'promt' for stage 'outpaint'; did you mean 'prompt'?" in ran.stderr
    assert "prompt" in ran.stderr and "slots" not in ran.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # subprocesses
def test_a_pipeline_without_load_or_save_is_refused_unless_it_says_so(tmp_path, photos):
    no_save = f'[[stages]]\nstage = "load"\npaths = ["{photos}"]\n'
    ran = imgpipe("run", str(write(tmp_path, no_save)))
    assert ran.returncode == 2 and "no 'save' stage: every result would be thrown away" in (
        ran.stderr
    )
    assert "allow_no_save = true" in ran.stderr
    ran = imgpipe("check", str(write(tmp_path, "allow_no_save = true\n" + no_save)))
    assert ran.returncode == 0, ran.stderr
    no_load = f'[[stages]]\nstage = "save"\nfolder = "{tmp_path / "out"}"\n'
    ran = imgpipe("run", str(write(tmp_path, no_load)))
    assert ran.returncode == 2 and "no 'load' stage: the pipeline would have no inputs" in (
        ran.stderr
    )
    ran = imgpipe("run", str(write(tmp_path, 'allow_no_load = "yes"\n' + no_load)))
    assert ran.returncode == 2 and "allow_no_load must be true or false" in ran.stderr


@pytest.mark.slow  # subprocesses
def test_check_and_dry_run_list_the_work_and_pay_nothing(server, photos, tmp_path):
    path = config(tmp_path, server, [str(photos)], {"folder": str(tmp_path / "out")})
    for args in (["check", str(path)], ["run", str(path), "--dry-run", "-v"]):
        ran = imgpipe(*args)
        assert ran.returncode == 0, ran.stderr
        assert ran.stdout.splitlines() == [
            "stage #1 load: 2 items",
            "stage #2 outpaint: 2 items",
            "stage #3 save: 2 items",
            "  a-0.png",
            "  wide-0.png",
            "checked: nothing was done or paid for",
        ]
    assert nothing_created(server.stats())
    assert not list((tmp_path / "out").iterdir())


@pytest.mark.slow  # subprocesses
def test_stages_shows_each_stages_options(tmp_path):
    ran = imgpipe("-q", "stages")
    assert ran.returncode == 0, ran.stderr
    text = ran.stdout
    assert "Expand every image of the stream with the Kling Image Expansion API." in text
    assert "options: paths (required), recursive = True" in text
    assert "prompt = ''" in text and "slots" not in text
    assert "folder (required), name = '{stem}.{ext}'" in text


@pytest.mark.slow  # subprocesses
def test_the_endpoint_and_its_credentials_are_checked_before_any_work(server, photos, tmp_path):
    path = config(tmp_path, server, [str(photos)], {"folder": str(tmp_path / "out")})
    wrong_keys = path.read_text()
    refused = imgpipe("run", str(path), env_extra={
        "KLING_SECRET_KEY": "SK-not-the-right-one-0123456789abcdef"})  # fmt: skip
    assert refused.returncode == 2, refused.stderr
    assert f"stage #2: outpaint: endpoint {server.url}:" in refused.stderr
    closed = f"http://127.0.0.1:{free_port()}"
    path.write_text(wrong_keys.replace(server.url, closed))
    unreachable = imgpipe("run", str(path), timeout=90)
    assert unreachable.returncode == 2 and f"outpaint: endpoint {closed}:" in unreachable.stderr
    assert nothing_created(server.stats())
    assert not list((tmp_path / "out").glob("*.png"))
