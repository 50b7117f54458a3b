from __future__ import annotations

import re

import pluggy
import pytest

from imgpipe import (
    ConfigError,
    Item,
    OptionError,
    RegistrationError,
    hookimpl,
    hookspecs,
    make_plugin_manager,
    parse_config,
)
from imgpipe.runner import build_pipeline, run_stages

from .conftest import upper_keys


class ThrowawayPlugin:
    @hookimpl
    def register_stages(self, register):
        register("upper", upper_keys)


def test_builtin_stages_are_registered_as_ordinary_plugins(pm):
    assert pm.get_plugin("imgpipe.load") is not None
    assert {info.name for info in pm.stages()} == {"load", "save"}
    assert {info.plugin for info in pm.stages()} == {"imgpipe.load", "imgpipe.save"}


def test_a_throwaway_plugin_registers_a_stage_that_runs(pm):
    pm.register(ThrowawayPlugin(), name="throwaway")
    registry = pm.stages()
    assert registry.get("upper").plugin == "throwaway"
    stages = build_pipeline(registry, parse_config({"stages": [{"stage": "upper"}]}))
    out = list(run_stages(stages, [Item("a.png", b""), Item("b.png", b"")]))
    assert [item.key for item in out] == ["A.PNG", "B.PNG"]


def test_duplicate_stage_names_both_plugins(pm):
    class Again:
        @hookimpl
        def register_stages(self, register):
            register("load", upper_keys)

    pm.register(Again(), name="again")
    with pytest.raises(RegistrationError, match=r"'load'.*'imgpipe.load'.*'again'"):
        pm.stages()


@pytest.mark.parametrize("name", ["", "Bad Name", "1st", None])
def test_bad_stage_names_are_refused(pm, name):
    class Bad:
        @hookimpl
        def register_stages(self, register):
            register(name, upper_keys)

    pm.register(Bad(), name="bad")
    with pytest.raises(RegistrationError, match="'bad'"):
        pm.stages()


def test_a_factory_that_is_not_callable_is_refused(pm):
    class Bad:
        @hookimpl
        def register_stages(self, register):
            register("broken", "not a factory")

    pm.register(Bad(), name="bad")
    with pytest.raises(RegistrationError, match="not callable"):
        pm.stages()


def test_unknown_stage_lists_the_available_ones(pm):
    config = parse_config({"stages": [{"stage": "nope"}]})
    with pytest.raises(ConfigError, match=r"unknown stage 'nope'; available stages: load, save"):
        build_pipeline(pm.stages(), config)


def test_an_unknown_option_names_the_stage_and_the_option(pm):
    config = parse_config({"stages": [{"stage": "save", "folder": "x", "colour": "red"}]})
    with pytest.raises(ConfigError) as error:
        build_pipeline(pm.stages(), config)
    message = str(error.value)
    assert "stage #1" in message and "'save'" in message and "colour" in message


def test_a_bad_option_value_names_the_stage_and_the_option(pm):
    config = parse_config({"stages": [{"stage": "save", "folder": "x", "format": "bmpx"}]})
    with pytest.raises(ConfigError, match=r"stage 'save': option 'format': 'bmpx'"):
        build_pipeline(pm.stages(), config)


def test_every_stage_is_built_before_any_work_is_done(pm):
    built = []

    class Recorder:
        @hookimpl
        def register_stages(self, register):
            def factory():
                built.append("recorder")
                return lambda items: iter(())

            register("recorder", factory)

    pm.register(Recorder(), name="recorder")
    config = parse_config({"stages": [{"stage": "recorder"}, {"stage": "missing"}]})
    with pytest.raises(ConfigError, match="stage #2"):
        build_pipeline(pm.stages(), config)
    assert built == ["recorder"]  # built, and nothing ran


def test_a_misspelled_hook_is_caught_by_check_pending():
    class Misspelled:
        @hookimpl
        def register_stage(self, register):  # missing the final "s"
            pass

    dist = FakeDistribution("typo-plugin", "1.0", {"typo": Misspelled()})
    with pytest.raises(pluggy.PluginValidationError, match="register_stage"):
        make_plugin_manager(distributions=[dist])


class FakeEntryPoint:
    group = "imgpipe"

    def __init__(self, name: str, plugin: object) -> None:
        self.name = name
        self._plugin = plugin

    def load(self) -> object:
        if isinstance(self._plugin, Exception):
            raise self._plugin
        return self._plugin


class FakeDistribution:
    def __init__(self, name: str, version: str, plugins: dict[str, object]) -> None:
        self.metadata = {"Name": name}
        self.version = version
        self.entry_points = [FakeEntryPoint(n, p) for n, p in plugins.items()]


def test_entry_points_are_discovered_with_their_distribution():
    dist = FakeDistribution("upper-plugin", "2.3", {"upper": ThrowawayPlugin()})
    pm = make_plugin_manager(distributions=[dist])
    info = pm.stages().get("upper")
    assert (info.plugin, info.distribution) == ("upper", "upper-plugin 2.3")


def test_a_broken_plugin_is_reported_and_skipped(caplog):
    broken = FakeDistribution("broken-plugin", "0.1", {"broken": ImportError("no module named x")})
    good = FakeDistribution("upper-plugin", "2.3", {"upper": ThrowawayPlugin()})
    pm = make_plugin_manager(distributions=[broken, good], strict=False)
    assert "upper" in pm.stages()
    assert "no module named x" in pm.load_errors["broken"]
    assert re.search(r"skipping plugin 'broken' \(broken-plugin 0.1\)", caplog.text)


def test_a_broken_plugin_is_fatal_when_the_env_var_says_so(monkeypatch):
    from imgpipe import PluginLoadError

    monkeypatch.setenv("IMGPIPE_STRICT_PLUGINS", "1")
    broken = FakeDistribution("broken-plugin", "0.1", {"broken": ImportError("boom")})
    with pytest.raises(PluginLoadError, match=r"'broken' \(broken-plugin 0.1\).*boom"):
        make_plugin_manager(distributions=[broken])


def test_the_installed_outpaint_plugin_is_found_through_its_entry_point():
    pm = make_plugin_manager()
    info = pm.stages().get("outpaint")
    assert info.plugin == "outpaint"
    assert info.distribution is not None and info.distribution.startswith("kling-expand-plugin ")


def test_option_error_carries_the_option():
    error = OptionError("aspect", "bad")
    assert error.option == "aspect" and str(error) == "option 'aspect': bad"


def test_every_hook_is_documented_in_the_readme():
    from pathlib import Path

    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    hooks = [name for name in dir(hookspecs) if hasattr(getattr(hookspecs, name), "imgpipe_spec")]
    assert hooks, "no hookspecs found"
    for name in hooks:
        assert f"`{name}(" in readme, f"hook {name} is not documented in README.md"


def test_check_pipeline_previews_each_stage_once_and_returns_what_each_hands_on():
    from imgpipe.runner import check_pipeline

    calls = []

    class Doubling:
        def __call__(self, items):
            return items

        def preview(self, items):
            calls.append(len(items))
            return [item for item in items for _ in range(2)]

    class Blind:
        def __call__(self, items):
            return items

    handed_on = check_pipeline([Doubling(), Doubling(), Blind()], [Item("a.png", b"")])
    assert calls == [1, 2]
    assert [None if items is None else len(items) for items in handed_on] == [2, 4, None]
