"""The outpaint stage's options are one schema (`outpaint/options.py`). The stage's signature
and checks and the command's flags are made from it; the README's table and the Python API's
written-out signatures are held to it here, so none is added in one place and forgotten in
another."""

from __future__ import annotations

import inspect
import re
import typing
from pathlib import Path

import pytest

from imgpipe import OptionError
from kling_expand_plugin.cli import build_parser
from kling_expand_plugin.cli.stage_flags import stage_options
from kling_expand_plugin.outpaint.api import StageOptions, expand, expand_many
from kling_expand_plugin.outpaint.options import BY_NAME, HIDDEN, OPTIONS, check_options
from kling_expand_plugin.outpaint.stage import OutpaintStage

README = Path(__file__).parents[1] / "README.md"
WITHOUT_FLAGS = {"order", "on_error", "slots"}
"""The command hands results on in input order, passes failures through (or stops with
--fail-fast), and has no shared slots object."""


def readme_default(value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    return f'`"{value}"`' if isinstance(value, str) else str(value)


def test_the_readme_table_lists_every_option_in_order_with_its_default():
    text = README.read_text()
    section = text[text.index("### `outpaint`") : text.index("### Batches")]
    rows = re.findall(r"^\| `(\w+)` \| (.*?) \|", section, re.M)
    documented = [option for option in OPTIONS if not option.python_only]
    assert [name for name, _ in rows] == [option.name for option in documented]
    for (name, default), option in zip(rows, documented, strict=True):
        expected = readme_default(option.default)
        if name == "recreate_lost":  # None: it depends on the endpoint
            expected = 'false (true for `"local"`)'
        assert default == expected, name


BAD_VALUES = {
    "endpoint": "ftp://x",
    "aspect": "wide",
    "area": 0.5,
    "size": "big",
    "ratios": [0.5, 0.5],
    "anchor": "middle",
    "max_passes": 0,
    "aspect_policy": "stretch",
    "n": 12,
    "prompt": "x" * 2501,
    "concurrency": "four",
    "order": "random",
    "on_error": "ignore",
    "ledger": "",
    "budget": -1,
    "callback": "8787",
    "callback_url": "example.com",
    "timeout": 0.5,
    "attempts": 0,
    "blend": 1.5,
    "animated": "all",
    "background": "nocolour",
    "max_pixels": 10,
    "max_upload_pixels": "many",
    "local_latency": -1,
    "format": "gif",
    "quality": 101,
    "png_compression": 10,
    "slots": 4,
}


def test_the_host_sees_every_option_a_config_can_give():
    from imgpipe import make_plugin_manager

    info = make_plugin_manager().stages().get("outpaint")
    assert info.options() == [option.name for option in OPTIONS if not option.python_only]
    assert OutpaintStage.python_only_options == ("slots",)


@pytest.mark.parametrize("name", [name for name in BAD_VALUES if name != "on_error"])
def test_the_python_api_hands_every_option_to_the_stage(name):
    # The stage is built when expand_many is called: a bad value is refused there, by its name.
    with pytest.raises(OptionError) as refused:
        expand_many([], **{"aspect": "16:9", name: BAD_VALUES[name]})
    assert refused.value.option == name
    signature = inspect.signature(expand)
    assert signature.parameters[name].default == BY_NAME[name].default  # help() shows it


def test_the_python_api_s_typed_keywords_are_the_schema_s():
    assert typing.get_type_hints(StageOptions) == {
        option.name: option.type for option in OPTIONS if option.name != "on_error"
    }


def test_every_option_but_three_is_a_flag_of_expand_with_the_schema_s_help():
    parser = build_parser()
    args = parser.parse_args(["expand", "in.png", "--out", "out", "--aspect", "16:9"])
    flags = {flag: action for action in args.parser._actions for flag in action.option_strings}
    for option in OPTIONS:
        action = flags.get("--" + option.name.replace("_", "-"))
        if option.name in WITHOUT_FLAGS:
            assert action is None, option.name
        else:
            assert action is not None and action.help == option.help, option.name


def test_flags_are_read_into_stage_options_of_the_schema_s_types():
    args = build_parser().parse_args(
        [
            "expand",
            "in.png",
            "--out",
            "out",
            "--aspect",
            "4:3",
            "--area",
            "max",
            "--anchor",
            "0.2,0.8",
            "--n",
            "2",
            "--quality",
            "80",
            "--watermark",
            "--budget",
            "7",
            "--ledger",
            "auto",
            "--callback",
            "127.0.0.1:0",
        ]
    )
    options = stage_options(args, ("target", "format", "running"))
    assert options == {
        "endpoint": "local",
        "aspect": "4:3",
        "area": "max",
        "anchor": [0.2, 0.8],
        "n": 2,
        "quality": 80,
        "watermark": True,
        "budget": 7.0,
        "ledger": "auto",
        "callback": "127.0.0.1:0",
        "concurrency": 4,  # room for one task of n
    }
    values = check_options(options)
    assert values["anchor"] == (0.2, 0.8) and values["callback"] == ("127.0.0.1", 0)
    assert values["recreate_lost"] is True  # the local server's tasks end with the run


def test_every_option_that_can_be_wrong_has_a_bad_value_here():
    assert set(BAD_VALUES) == {
        option.name for option in OPTIONS if option.type not in (bool, bool | None)
    }


@pytest.mark.parametrize(("name", "value"), BAD_VALUES.items())
def test_a_bad_value_is_refused_naming_the_option_and_the_rule(name, value):
    given = {"aspect": "16:9", name: value}
    with pytest.raises(OptionError) as refused:
        check_options(given)
    assert refused.value.option == name


def test_the_refusals_keep_their_words():
    cases = {
        "n": (12, "12 is not a whole number from 1 to 9"),
        "quality": (101, "101 is outside 1..100"),
        "timeout": (0.5, "0.5 is below 1"),
        "blend": (1.5, "1.5 is not a whole number"),
        "format": ("gif", "'gif' is not one of auto, png, jpeg, webp"),
        "callback": ("8787", "'8787' is not HOST:PORT, such as 0.0.0.0:8787"),
    }
    for name, (value, message) in cases.items():
        with pytest.raises(OptionError, match=re.escape(f"option {name!r}: {message}")):
            check_options({name: value})
    with pytest.raises(OptionError, match="'concurrency': 2 slots cannot run one task of n=3"):
        check_options({"n": 3, "concurrency": 2})
    with pytest.raises(OptionError, match="'callback_url': goes with callback"):
        check_options({"callback_url": "https://example.com/"})


def test_an_unknown_option_is_a_type_error_naming_it():
    with pytest.raises(TypeError, match="colour"):
        OutpaintStage(aspect="16:9", colour="red")


def test_a_secret_option_stays_out_of_the_stage_s_repr():
    url = "postgresql://kling:hunter2@127.0.0.1:9/ledger"
    stage = OutpaintStage(aspect="16:9", ledger=url)
    assert repr(stage) == f"OutpaintStage(aspect='16:9', ledger={HIDDEN})"
    assert "hunter2" not in repr(stage)
