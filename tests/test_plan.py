from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from kling_expand_plugin.imaging.geometry import Ratios, canvas_for
from kling_expand_plugin.imaging.plan import Plan, plan_expansion, ratios_for_aspect
from kling_expand_plugin.imaging.target import (
    ANCHORS,
    PlanError,
    Target,
    parse_anchor,
    parse_aspect,
    parse_size,
)
from kling_expand_plugin.kling import limits


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
    with pytest.raises(PlanError, match="aspect") as error:
        parse_aspect(text)
    assert error.value.option == "aspect"


def test_parse_size_and_anchor():
    assert parse_size("1920x1080") == parse_size([1920, 1080]) == (1920, 1080)
    assert parse_anchor("top-left") == (0.0, 0.0) and parse_anchor("centre") == (0.5, 0.5)
    assert parse_anchor([0.25, 1]) == (0.25, 1.0)
    for bad in ("middle", [2, 0], "x"):
        with pytest.raises(PlanError):
            parse_anchor(bad) if bad != "x" else parse_size(bad)


def test_canvas_places_the_original_at_the_ratios():
    canvas = canvas_for(1000, 500, Ratios(up=0.1, down=0.2, left=0.3, right=0.4))
    assert (canvas.width, canvas.height) == (1700, 650)
    assert canvas.box.as_tuple() == (300, 50, 1300, 550)


def test_explicit_ratios_are_sent_as_given():
    ratios = Ratios(0.1495, 0.1495, 0.6547, 0.6547)
    plan = plan_expansion(1000, 1000, Target(ratios=ratios))
    assert plan.passes == (ratios,)
    assert plan.canvas == plan.expanded == canvas_for(1000, 1000, ratios)


def test_an_area_too_small_for_the_aspect_is_refused_with_the_reason():
    with pytest.raises(PlanError, match="crop the original"):
        plan_expansion(1000, 500, Target(aspect=9 / 16, area=1.5))


def test_the_smallest_canvas_keeps_one_dimension_and_an_image_of_the_shape_needs_no_call():
    plan = plan_expansion(600, 400, Target(aspect=16 / 9))
    assert (plan.canvas.width, plan.canvas.height) == (711, 400)
    assert plan_expansion(400, 400, Target(aspect=1)).is_empty


def test_anchor_left_puts_every_new_column_on_the_right():
    plan = plan_expansion(600, 400, Target(aspect=16 / 9, area="max", anchor=ANCHORS["left"]))
    [ratios] = plan.passes
    assert ratios.left == 0 and ratios.right == pytest.approx(2.0 * 0.4425, abs=0.01)
    assert plan.canvas.box.left == 0 and ratios.area <= limits.MAX_AREA


def test_area_max_is_the_largest_canvas_one_call_allows():
    plan = plan_expansion(800, 800, Target(aspect=16 / 9, area="max"))
    [ratios] = plan.passes
    assert ratios.area == pytest.approx(3.0, abs=0.01) and not ratios.problems()


def test_a_size_target_beyond_one_call_needs_passes_or_is_refused_with_the_reason():
    with pytest.raises(PlanError, match=r"needs more than 1 call.*max_passes"):
        plan_expansion(600, 400, Target(size=(1920, 1080)))
    plan = plan_expansion(600, 400, Target(size=(1920, 1080), max_passes=3))
    assert len(plan.passes) == 2 and (plan.canvas.width, plan.canvas.height) == (1920, 1080)
    assert all(not ratios.problems() for ratios in plan.passes)


def test_a_size_smaller_than_the_original_expands_then_scales_down():
    plan = plan_expansion(1600, 1200, Target(size=(1920, 1080)))
    assert plan.output_size == (1920, 1080)
    assert plan.canvas.width / plan.canvas.height == pytest.approx(16 / 9, abs=0.01)


def test_a_banner_outside_the_aspect_range_is_padded_inside_the_bands_the_target_adds():
    plan = plan_expansion(1200, 300, Target(aspect=16 / 9))
    assert plan.pad == (0, 90, 0, 90) and plan.upload_size == (1200, 480)
    assert plan.crop is None and len(plan.passes) == 1
    assert (plan.canvas.width, plan.canvas.height) == (1200, 675)
    assert plan.canvas_in_expanded == _whole(plan)


def test_a_banner_the_target_does_not_pad_enough_follows_the_policy():
    with pytest.raises(PlanError, match="aspect_policy"):
        plan_expansion(1200, 300, Target(aspect=3.0, aspect_policy="reject"))
    cropped = plan_expansion(1200, 300, Target(aspect=3.0, aspect_policy="crop"))
    assert cropped.crop is not None and cropped.crop.width == 750 and cropped.content == (750, 300)
    padded = plan_expansion(1200, 300, Target(aspect=3.0, aspect_policy="pad"))
    assert padded.upload_size == (1200, 480) and (padded.canvas.width, padded.canvas.height) == (
        1200,
        400,
    )
    cut = padded.canvas_in_expanded
    assert (cut.top, cut.height) == (40, 400)  # the padding that sticks out is cut off again


def _whole(plan: Plan):
    from kling_expand_plugin.imaging.geometry import Box

    return Box(0, 0, plan.canvas.width, plan.canvas.height)


sizes = st.integers(min_value=limits.MIN_SIDE, max_value=4000)
anchors = st.tuples(st.floats(0, 1), st.floats(0, 1))


def _check(plan: Plan, width: int, height: int, anchor: tuple[float, float]) -> None:
    """Every call within the API's limits; the content where the anchor puts it."""
    size = plan.upload_size
    for ratios in plan.passes:
        assert not ratios.problems()
        assert limits.MIN_ASPECT <= size[0] / size[1] <= limits.MAX_ASPECT
        grown = canvas_for(*size, ratios)
        size = (grown.width, grown.height)
    if plan.passes:
        assert abs(size[0] - plan.expanded.width) <= 2 * len(plan.passes)
        assert abs(size[1] - plan.expanded.height) <= 2 * len(plan.passes)
    canvas, box = plan.canvas, plan.canvas.box
    assert (box.width, box.height) == plan.content
    spare_x, spare_y = canvas.width - box.width, canvas.height - box.height
    assert abs(box.left - anchor[0] * spare_x) <= 1 and abs(box.top - anchor[1] * spare_y) <= 1
    cut = plan.canvas_in_expanded
    assert cut.left >= 0 and cut.top >= 0
    assert cut.right <= plan.expanded.width and cut.bottom <= plan.expanded.height


@settings(max_examples=300, deadline=None)
@given(
    width=sizes,
    height=sizes,
    aspect=st.floats(min_value=0.4, max_value=2.5),
    area=st.one_of(st.none(), st.just("max"), st.floats(min_value=1.0, max_value=9.0)),
    anchor=anchors,
)
def test_every_aspect_plan_is_within_limits_reaches_the_aspect_and_places_the_original(
    width, height, aspect, area, anchor
):
    try:
        plan = plan_expansion(
            width, height, Target(aspect=aspect, area=area, anchor=anchor, max_passes=3)
        )
    except PlanError as error:
        assert f"{width} x {height}" in str(error)  # a reason about the input's own size
        assume(False)  # ...fine, as long as it is only for real limits
        return
    _check(plan, width, height, anchor)
    assert plan.canvas.width / plan.canvas.height == pytest.approx(
        aspect, rel=0.005, abs=1.5 / plan.canvas.height
    )
    if isinstance(area, float):
        assert plan.canvas.width * plan.canvas.height == pytest.approx(
            area * width * height, rel=0.01
        )


@settings(max_examples=200, deadline=None)
@given(
    width=sizes,
    height=sizes,
    target=st.tuples(st.integers(300, 6000), st.integers(300, 6000)),
    anchor=anchors,
)
def test_every_size_plan_reaches_the_size_exactly(width, height, target, anchor):
    try:
        plan = plan_expansion(width, height, Target(size=target, anchor=anchor, max_passes=4))
    except PlanError as error:
        assert f"{width} x {height}" in str(error)
        assume(False)
        return
    _check(plan, width, height, anchor)
    final = plan.output_size or (plan.canvas.width, plan.canvas.height)
    assert final == target


@settings(max_examples=200, deadline=None)
@given(
    width=st.integers(min_value=300, max_value=6000),
    height=st.integers(min_value=300, max_value=6000),
    aspect=st.floats(min_value=0.4, max_value=2.5),
    policy=st.sampled_from(["pad", "crop"]),
)
def test_any_aspect_ratio_of_input_is_brought_into_range(width, height, aspect, policy):
    try:
        plan = plan_expansion(
            width, height, Target(aspect=aspect, aspect_policy=policy, max_passes=3)
        )
    except PlanError:
        assume(False)
        return
    upload = plan.upload_size
    assert limits.MIN_ASPECT <= upload[0] / upload[1] <= limits.MAX_ASPECT
    _check(plan, *plan.content, (0.5, 0.5))


def test_refusals_are_rare_for_ordinary_photos():
    refused = 0
    for width in range(300, 4000, 250):
        for height in range(300, 4000, 250):
            if not 0.4 <= width / height <= 2.5:
                continue
            for aspect in (16 / 9, 9 / 16, 1.0, 4 / 3, 21 / 9):
                smallest = plan_expansion(width, height, Target(aspect=aspect, max_passes=3))
                canvas = smallest.canvas
                if canvas.width * canvas.height > 3 * width * height:
                    continue  # beyond one call whatever the plan
                try:
                    plan_expansion(width, height, Target(aspect=aspect, area="max"))
                except PlanError:
                    refused += 1
    assert refused == 0
