"""The agent: ChatDiT's referencing rules and panelising."""

import pytest

from studio.agent.planning import Step, grid_prompt, panelised, plan_steps
from studio.errors import InvalidRequest


def test_no_inputs_and_up_to_four_outputs_make_one_group():
    assert plan_steps(0, 1) == [Step((), (0,))]
    assert plan_steps(0, 4) == [Step((), (0, 1, 2, 3))]


def test_no_inputs_and_more_outputs_condition_each_further_one_on_the_first_three():
    steps = plan_steps(0, 6)
    assert steps[0] == Step((), (0, 1, 2, 3))
    assert steps[1:] == [
        Step(("output-1", "output-2", "output-3"), (4,)),
        Step(("output-1", "output-2", "output-3"), (5,)),
    ]


def test_one_input_makes_outputs_in_sequence_each_on_the_input_and_the_ones_before():
    assert plan_steps(1, 3) == [
        Step(("input-1",), (0,)),
        Step(("input-1", "output-1"), (1,)),
        Step(("input-1", "output-1", "output-2"), (2,)),
    ]
    # A long sequence keeps within twelve panels: the oldest outputs drop out.
    last = plan_steps(1, 14)[-1]
    assert last.panels == 12 and last.references[0] == "input-1" and last.references[1] == "output-4"


def test_several_inputs_condition_every_output_on_all_of_them():
    assert plan_steps(2, 2) == [Step(("input-1", "input-2"), (0,)), Step(("input-1", "input-2"), (1,))]


@pytest.mark.parametrize(("inputs", "outputs"), [(0, 0), (12, 1)])
def test_impossible_counts_are_refused(inputs, outputs):
    with pytest.raises(InvalidRequest):
        plan_steps(inputs, outputs)


def test_panelised_prompts_take_the_grids_own_tags():
    prompt = panelised("the same triangle in three places", ["on the left", "in the centre", "on the right"])
    assert prompt == (
        "[THREE-PANEL] the same triangle in three places [PANEL-1] on the left [PANEL-2] in the centre "
        "[PANEL-3] on the right"
    )
    on_grid, rows, columns = grid_prompt(prompt, 3)
    assert (rows, columns) == (2, 2)
    assert "[TOP-LEFT] on the left [TOP-RIGHT] in the centre [BOTTOM-LEFT] on the right" in on_grid
    twelve, _, _ = grid_prompt(panelised("", [str(n) for n in range(12)]), 12)
    assert "[PANEL-1] 0" in twelve and "[PANEL-12] 11" in twelve and "[PANEL-1]2" not in twelve
    assert panelised("a red circle", ["on the left"]) == "a red circle on the left"


def test_every_method_is_a_tool_described_from_its_settings():
    from studio.agent.tools import describe_tools, tools

    names = set(tools())
    assert {"generate", "colour_edit", "layout", "drag_edit", "try_on", "multi_prompt_video", "image_set"} <= names
    text = describe_tools()
    assert "colour_edit:" in text and "- intensity: Intensity of the new colour word" in text
    assert "- person (input): the person photo" in text


def test_tool_arguments_are_checked_against_the_settings_type():
    from studio.agent.tools import tool_settings
    from studio.methods.layout import Region

    settings = tool_settings(
        "layout",
        {
            "model": "shapes-flux",
            "caption": "two shapes",
            "regions": [{"caption": "a red circle", "box": [0, 0, 0.5, 0.5]}],
        },
    )
    assert settings.regions == (Region("a red circle", (0, 0, 0.5, 0.5)),)
    with pytest.raises(
        InvalidRequest, match="colour_edit has no field 'colour'|ColourEditSettings has no field 'colour'"
    ):
        tool_settings("colour_edit", {"model": "shapes-flux", "colour": "blue"})
    with pytest.raises(InvalidRequest, match="Steps must be between"):
        tool_settings("generate", {"model": "shapes-flux", "prompt": "a red circle", "steps": 10_000})
    with pytest.raises(InvalidRequest, match="no tool 'paint'"):
        tool_settings("paint", {})
    with pytest.raises(InvalidRequest, match="regions: expected a list"):
        tool_settings("layout", {"model": "shapes-flux", "caption": "x", "regions": "everywhere"})
