"""Issue 17 on the `kling-expand` command, as a person sees it: errors in flag terms on one line,
flags where people put them, counts in English, budget skips said as such, and plan's total."""

from __future__ import annotations

from pathlib import Path

from kling_expand_plugin.batch.progress import progress_line

from .conftest import run_cli

FAST = ["--local-latency", "0.05"]


def test_a_mistyped_flag_shows_the_commands_usage_line_and_the_flag_meant(photos, tmp_path):
    ran = run_cli("expand", str(photos), "--aspct", "16:9", "--out", str(tmp_path / "o"))
    assert ran.code == 2
    usage, error = ran.stderr.splitlines()
    assert usage.startswith("usage: kling-expand expand INPUT... --out DIR")
    assert error.startswith("kling-expand expand: error: unrecognized arguments: --aspct")
    assert "did you mean --aspect?" in error and "(see 'kling-expand expand --help')" in error


def test_value_errors_are_one_line_naming_the_flag_or_the_input(photos, tmp_path):
    out = ["--out", str(tmp_path / "o")]
    cases = {
        ("expand", str(tmp_path / "nosuchdir"), "--aspect", "16:9", *out): "INPUT: '",
        ("expand", str(photos), *out): "give one target: --aspect (with --area), --size",
        ("expand", str(photos), "--aspect", "16:9", "--n", "12", *out): "--n: 12 is not",
        ("plan", str(photos), "--aspect", "wide"): "--aspect: aspect 'wide' is not a ratio",
        ("ratios", "100", "100", "--aspect", "16:9", "--area", "lots"): "--area: 'lots'",
    }
    for args, expected in cases.items():
        ran = run_cli(*args)
        assert ran.code == 2, args
        assert ran.stderr.count("\n") == 1, ran.stderr  # one line, no usage block
        assert f"kling-expand {args[0]}: error: {expected}" in ran.stderr, ran.stderr
        assert "option '" not in ran.stderr and "--help" in ran.stderr


def test_global_flags_go_before_or_after_the_command():
    for args in (["-q", "ratios", "100", "100"], ["ratios", "100", "100", "-v"]):
        ran = run_cli(*args, "--aspect", "16:9", "--area", "3")
        assert (ran.code, ran.stdout) == (0, "0.1495,0.1495,0.6547,0.6547\n"), ran.stderr


def test_ratios_takes_area_max_and_an_aspect_written_with_x():
    largest = run_cli("ratios", "100", "100", "--aspect", "16:9", "--area", "max", "--json")
    assert largest.code == 0, largest.stderr
    canvas = largest.json()["canvas"]
    assert canvas[0] * canvas[1] <= 3 * 100 * 100 and canvas[0] * canvas[1] > 2.9 * 100 * 100
    with_x = run_cli("ratios", "100", "100", "--aspect", "16x9", "--area", "3")
    assert with_x.stdout == "0.1495,0.1495,0.6547,0.6547\n"


def test_counts_are_english_failures_print_once_and_budget_skips_say_so(tmp_path, photos):
    (tmp_path / "in").mkdir()
    (photos / "a.png").rename(tmp_path / "in" / "a.png")
    (photos / "b.jpg").rename(tmp_path / "in" / "b.jpg")
    (tmp_path / "in" / "notes.txt").write_text("not a picture")
    ran = run_cli("expand", str(tmp_path / "in"), "--aspect", "16:9", "--budget", "1",
                  "--concurrency", "1", "--out", str(tmp_path / "out"), *FAST)  # fmt: skip
    assert ran.code == 1, ran.stderr
    lines = ran.stdout.splitlines()
    paid, skipped = sorted(lines[:2], key=lambda line: "SKIPPED" in line)  # either gets the unit
    name = Path(paid.split(":")[0])
    assert paid.endswith(f" 1 unit -> {tmp_path / 'out' / name.stem}-0{name.suffix}")
    assert skipped.split(": ", 1)[1].startswith("SKIPPED (budget): not submitted: ")
    assert lines[2] == (
        "notes.txt: FAILED: not an image Pillow can read (rule: an input must be an image)"
    )
    assert "1 done, 1 failed, 1 skipped (budget); 1 result; 1 unit;" in lines[3]
    assert "notes.txt" not in ran.stderr and "SKIPPED" not in ran.stderr  # printed once


def test_the_progress_lines_numbers_add_up():
    summary = {"done": 0, "failed": 0, "skipped": 0, "created": 1, "reattached": 0,
               "slots_in_use": 4, "units": 0.0, "seconds": 0.5}  # fmt: skip
    # Two tasks' slots taken, one task created so far: one is running, not two.
    assert "tasks 1  running 1" in progress_line(summary, total=3, n=2)


def test_plan_prints_the_batchs_total(photos):
    (photos / "bad.png").write_bytes(b"")
    args = ["plan", str(photos), "--aspect", "16:9", "--n", "2", "--task-seconds", "30"]
    text = run_cli(*args, "--concurrency", "2")
    assert text.code == 1
    total = text.stdout.splitlines()[-1]
    # three tasks of n=2 at 2 slots run one at a time: 3 x 30 s
    assert total.startswith("total: 3 inputs planned, 1 refused; 3 tasks, about 6 units; ")
    assert "about 90 s at 2 slots (30 s a task); disk about " in total
    document = run_cli(*args, "--json").json()
    assert len(document["inputs"]) == 4
    summary = document["total"]
    assert (summary["planned"], summary["refused"], summary["tasks"]) == (3, 1, 3)
    assert summary["slots"] == 4 and summary["estimated_seconds"] == 60  # two at a time
    assert summary["estimated_bytes"] == sum(
        entry.get("estimated_bytes", 0) for entry in document["inputs"]
    )


def test_readme_states_the_local_fill_is_a_stand_in():
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    assert "no seam shows" not in readme
    assert "stand-in" in readme
