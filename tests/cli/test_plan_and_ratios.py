"""`kling-expand plan` (a dry run) and `kling-expand ratios`, run as subprocesses."""

from __future__ import annotations

import pytest

from kling_expand_plugin.cli import main

from .conftest import noisy_image, run_cli


def test_plan_gives_each_input_its_upload_calls_canvas_and_cost(photos):
    ran = run_cli("plan", str(photos), "--aspect", "16:9", "--area", "2", "--n", "2", "--json")
    assert ran.code == 0, ran.stderr
    plans = ran.json()["inputs"]
    assert [plan["key"] for plan in plans] == ["a.png", "b.jpg", "sub/c.png"]
    first = plans[0]
    assert first["original"] == [400, 300]
    assert first["upload"]["changes"] == ["none: the file is sent as it is"]
    (ratios,) = first["passes"]
    sideways = ratios["left_expansion_ratio"] + ratios["right_expansion_ratio"]
    assert sideways == pytest.approx(653 / 400 - 1, abs=0.003)
    width, height = first["canvas"]
    assert width / height == pytest.approx(16 / 9, abs=0.01)
    assert width * height == pytest.approx(2 * 400 * 300, rel=0.01)
    left, top, right, bottom = first["box"]
    assert (right - left, bottom - top) == (400, 300)
    assert (first["tasks"], first["slots"], first["estimated_units"]) == (1, 2, 2)


def test_plan_of_a_target_beyond_one_call_needs_several_calls(photos):
    args = ["plan", str(photos / "a.png"), "--size", "1000x500", "--max-passes", "3"]
    ran = run_cli(*args, "--n", "2", "--json")
    assert ran.code == 0, ran.stderr
    (plan,) = ran.json()["inputs"]
    assert len(plan["passes"]) == 2 and plan["canvas"] == [1000, 500]
    assert (plan["tasks"], plan["estimated_units"]) == (3, 4)
    text = run_cli(*args)
    assert text.code == 0
    assert "call 1/2: up 0." in text.stdout
    assert "an estimate" in text.stdout and "1000 x 500" in text.stdout
    one_call = run_cli("plan", str(photos / "a.png"), "--size", "1000x500")
    assert one_call.code == 1 and "max_passes" in one_call.stdout


def test_plan_reports_an_input_it_cannot_use_and_exits_1(photos, tmp_path):
    (tmp_path / "x.png").write_text("no")
    noisy_image(480, 270, 4).save(tmp_path / "wide.png")
    ran = run_cli("plan", str(tmp_path / "x.png"), str(tmp_path / "wide.png"), "--aspect", "16:9")
    assert ran.code == 1
    assert "x.png: cannot be expanded: " in ran.stdout and "not an image" in ran.stdout
    assert "wide.png: 480 x 270" in ran.stdout and "already the target shape" in ran.stdout


def test_ratios_is_the_documented_worked_example():
    ran = run_cli("ratios", "100", "100", "--area", "3", "--aspect", "16:9")
    assert (ran.code, ran.stdout) == (0, "0.1495,0.1495,0.6547,0.6547\n")
    document = run_cli("ratios", "100", "100", "--area", "3", "--aspect", "16:9", "--json").json()
    assert document["left"] == 0.6547 and document["canvas"] == [230, 130]


@pytest.mark.parametrize(
    "args",
    [
        ["ratios", "100", "100", "--area", "0.5", "--aspect", "16:9"],
        ["ratios", "100", "100", "--area", "3", "--aspect", "sideways"],
        ["ratios", "100", "100", "--aspect", "16:9"],
        ["ratios", "0", "100", "--area", "2", "--aspect", "16:9"],
        ["plan", "--aspect", "16:9"],
    ],
)
def test_bad_arguments_exit_2(args, capsys):
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 2
