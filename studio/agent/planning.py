"""ChatDiT's strategy planning: which outputs are made together and which earlier images each is
conditioned on (rule-based referencing), and the in-context prompt of each step (panelising).

Images are named by ids: "input-1" for the user's first image, "output-2" for the second image the
turn makes. A step puts its references and its new outputs on one grid, references first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from studio.errors import InvalidRequest
from studio.methods.incontext import MAX_PANELS, grid_shape, panel_tags

# ChatDiT's grouping: at most four outputs are made together without references; beyond four,
# each further output is conditioned on the first three.
GROUP_SIZE = 4
ANCHORS = 3
COUNT_TAGS = {2: "TWO", 3: "THREE", 4: "FOUR"}


def input_id(index: int) -> str:
    return f"input-{index + 1}"


def output_id(index: int) -> str:
    return f"output-{index + 1}"


@dataclass(frozen=True)
class Step:
    """One in-context generation: the references (ids of images already there) and the outputs it
    makes (their indices in the turn's outputs), on one grid in that order."""

    references: tuple[str, ...]
    outputs: tuple[int, ...]

    @property
    def panels(self) -> int:
        return len(self.references) + len(self.outputs)


def plan_steps(inputs: int, outputs: int) -> list[Step]:
    """ChatDiT's referencing rules:
    - no inputs, up to four outputs: one group;
    - no inputs, more: the first four together, then each further one conditioned on the first three;
    - one input: one output at a time, each conditioned on the input and the outputs before it;
    - several inputs: one output at a time, each conditioned on all the inputs.
    A step holds at most MAX_PANELS panels: the oldest earlier outputs drop out of a long sequence."""
    if outputs < 1:
        raise InvalidRequest("Ask for at least one image.")
    if inputs >= MAX_PANELS:
        raise InvalidRequest(f"At most {MAX_PANELS - 1} input images can be used together.")
    if inputs == 0:
        first = tuple(range(min(outputs, GROUP_SIZE)))
        anchors = tuple(output_id(index) for index in first[:ANCHORS])
        return [Step((), first)] + [Step(anchors, (index,)) for index in range(GROUP_SIZE, outputs)]
    given = tuple(input_id(index) for index in range(inputs))
    if inputs > 1:
        return [Step(given, (index,)) for index in range(outputs)]
    room = MAX_PANELS - 1 - len(given)
    return [
        Step(given + tuple(output_id(earlier) for earlier in range(max(0, index - room), index)), (index,))
        for index in range(outputs)
    ]


def panelised(overview: str, texts: Sequence[str]) -> str:
    """ChatDiT's panelised prompt: "[N-PANEL] overview [PANEL-1] … [PANEL-k] …" (a single panel
    is the text alone)."""
    if len(texts) == 1:
        return f"{overview.strip()} {texts[0].strip()}".strip()
    parts = [f"[{COUNT_TAGS.get(len(texts), str(len(texts)))}-PANEL]", overview.strip()]
    parts += [f"[PANEL-{number}] {text.strip()}" for number, text in enumerate(texts, start=1)]
    return " ".join(part for part in parts if part)


def grid_prompt(prompt: str, panels: int) -> tuple[str, int, int]:
    """A panelised prompt on its grid: [PANEL-i] becomes the grid's own tag ([LEFT], [TOP-RIGHT]…);
    returns the prompt, rows and columns."""
    rows, columns = grid_shape(panels)
    tags = panel_tags(rows, columns)
    # From the highest number down, so [PANEL-1] does not eat the start of [PANEL-12].
    for number in range(panels, 0, -1):
        prompt = prompt.replace(f"[PANEL-{number}]", tags[number - 1])
    return prompt, rows, columns
