from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kling_expand_plugin import limits
from kling_expand_plugin.geometry import Ratios, canvas_for
from kling_expand_plugin.plan import (
    PlanError,
    parse_aspect,
    plan_expansion,
    ratios_for_aspect,
    smallest_ratios_for_aspect,
)


def test_the_api_documentation_worked_example_comes_out_exactly():
    ratios = ratios_for_aspect(100, 100, aspect=16 / 9, area=3)
    assert (ratios.up, ratios.down, ratios.left, ratios.right) == (0.1495, 0.1495, 0.6547, 0.6547)


@pytest.mark.parametrize(
    ("text", "value"), [("16:9", 16 / 9), ("4/3", 4 / 3), ("1.5", 1.5), (2, 2.0), ("21x9", 21 / 9)]
)
def test_parse_aspect(text, value):
    assert parse_aspect(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["wide", "16:0", "-1", "0", ""])
def test_parse_aspect_refuses_nonsense(text):
    with pytest.raises(PlanError, match="aspect"):
        parse_aspect(text)


def test_canvas_places_the_original_at_the_ratios():
    canvas = canvas_for(1000, 500, Ratios(up=0.1, down=0.2, left=0.3, right=0.4))
    assert (canvas.width, canvas.height) == (1700, 650)
    assert canvas.box.as_tuple() == (300, 50, 1300, 550)


def test_an_area_too_small_for_the_aspect_is_refused_with_the_reason():
    with pytest.raises(PlanError, match="crop the original"):
        ratios_for_aspect(1000, 500, aspect=9 / 16, area=1.5)


def test_ratios_beyond_the_limits_are_refused():
    with pytest.raises(PlanError, match=r"exceeds 3"):
        plan_expansion(500, 500, ratios=Ratios(1, 1, 1, 1))


def test_the_smallest_canvas_keeps_one_dimension():
    plan = plan_expansion(600, 400, aspect=16 / 9)
    assert plan.canvas.height == 400 and plan.canvas.width in (711, 712)
    assert plan_expansion(400, 400, aspect=1).is_empty


sizes = st.integers(min_value=limits.MIN_SIDE, max_value=4000)
aspects = st.floats(min_value=0.4, max_value=2.5)


@given(width=sizes, height=sizes, aspect=aspects, area=st.floats(min_value=1.0, max_value=3.0))
def test_every_aspect_and_area_plan_is_within_limits_and_reaches_the_aspect(
    width, height, aspect, area
):
    try:
        plan = plan_expansion(width, height, aspect=aspect, area=area)
    except PlanError:
        # Only refused when the area is too small to hold the original at that aspect.
        target_height = (area * width * height / aspect) ** 0.5
        assert target_height < height or target_height * aspect < width
        return
    assert not plan.ratios.problems()
    canvas = plan.canvas
    assert canvas.width / canvas.height == pytest.approx(aspect, rel=0.01, abs=2 / canvas.height)
    box = canvas.box
    assert abs(box.left - (canvas.width - box.right)) <= 1  # centred
    assert abs(box.top - (canvas.height - box.bottom)) <= 1


@given(width=sizes, height=sizes, aspect=aspects)
def test_the_smallest_canvas_for_an_aspect_holds_the_original(width, height, aspect):
    ratios = smallest_ratios_for_aspect(width, height, aspect=aspect)
    assert min(ratios.up, ratios.left) == 0
    canvas = canvas_for(width, height, ratios)
    assert canvas.width / canvas.height == pytest.approx(aspect, rel=0.01, abs=2 / canvas.height)
