"""How often the agent does what a chat asks, on the shapes world, through the studio's own turn
(the tab's code path) with the offline rule planner:

    python -m studio.agent.evaluate [--model shapes-flux]

The requests are written as people write them (counts in words or digits, plurals, synonyms,
follow-ups that point at an earlier image), none of them the README's or the tests'. A request
succeeds when the plan is the right kind (images, a colour edit, a layout) with the right count,
and the shapes world's measures find each asked colour at each asked place — the recolour keeps
the object (IoU ≥ 0.85) and takes the new hue (≤ 30°). Shapes are reported beside it: the world-1
model's own shape accuracy is issue 12's.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from PIL import Image

from studio.agent.agent import WORLD_BACKGROUND, Conversation, Made, RulePlanner, turn
from studio.catalogue import Catalogue
from studio.errors import StudioError
from studio.registry import Registry
from studio.runner import LocalRunner
from studio.toyworld.colour_eval import caption_background, score
from studio.toyworld.measure import MIN_OBJECT_FRACTION, centroid, classify_shape, colour_mask, largest_blob
from studio.toyworld.scene import POSITIONS

# An object is at a named place when its centre is this close to the place's centre.
PLACE_TOLERANCE = 0.15


@dataclass(frozen=True)
class Expected:
    """What one image of the answer must show."""

    colour: str
    shape: str | None = None
    place: str | None = None
    box: tuple[float, float, float, float] | None = None


@dataclass(frozen=True)
class Request:
    """A chat: earlier messages, then the judged one; `tool`: the tool the judged turn must call
    ("" for images made in context); `recoloured`: the earlier output the edit must keep (its
    index) and its old colour."""

    messages: tuple[str, ...]
    expected: tuple[tuple[Expected, ...], ...]  # per output image, the objects it must hold
    tool: str = ""
    recoloured: tuple[int, str] | None = None


def _images(count: int, colour: str, shape: str, *places: str | None) -> tuple[tuple[Expected, ...], ...]:
    chosen = places or (None,)
    return tuple((Expected(colour, shape, chosen[index % len(chosen)]),) for index in range(count))


REQUESTS: tuple[Request, ...] = (
    Request(("Could you draw a small blue square at the top for me?",), _images(1, "blue", "square", "top")),
    Request(("I'd like four pictures of a yellow circle",), _images(4, "yellow", "circle")),
    Request(
        ("two images of a purple triangle: one at the bottom, one at the top",),
        _images(2, "purple", "triangle", "bottom", "top"),
    ),
    Request(("Paint an orange circle in the middle on a white background",), _images(1, "orange", "circle", "centre")),
    Request(("Generate 3 images of big green circles",), _images(3, "green", "circle")),
    Request(("show me a red square on the right side",), _images(1, "red", "square", "right")),
    Request(
        ("a pair of pictures of a blue triangle, left and right",), _images(2, "blue", "triangle", "left", "right")
    ),
    Request(("I need a medium yellow square centered, grey background",), _images(1, "yellow", "square", "centre")),
    Request(
        ("draw a large green triangle on the right", "now turn it red"),
        _images(1, "red", "triangle", "right"),
        tool="colour_edit",
        recoloured=(0, "green"),
    ),
    Request(
        ("two images of a blue circle, on the left and on the right", "make the first one yellow"),
        _images(1, "yellow", "circle", "left"),
        tool="colour_edit",
        recoloured=(0, "blue"),
    ),
    Request(
        ("put a big purple square at the bottom", "change its colour to orange"),
        _images(1, "orange", "square", "bottom"),
        tool="colour_edit",
        recoloured=(0, "purple"),
    ),
    Request(
        ("Make a layout: a red circle in a box on the left and a blue square in a box on the right",),
        ((Expected("red", "circle", "left"), Expected("blue", "square", "right")),),
        tool="layout",
    ),
    Request(
        ("layout with two boxes, a yellow triangle at the top and a green circle at the bottom",),
        ((Expected("yellow", "triangle", "top"), Expected("green", "circle", "bottom")),),
        tool="layout",
    ),
    Request(("three red triangles please",), _images(3, "red", "triangle")),
    Request(
        ("draw a big blue square on the right", "now move it to the left"),
        _images(1, "blue", "square", "left"),
        tool="generate",
    ),
)


@dataclass
class Judged:
    request: Request
    planned: bool  # the plan's kind and count were right
    colour_and_place: bool
    shape: bool
    problem: str = ""

    @property
    def success(self) -> bool:
        return self.planned and self.colour_and_place


def holds(image: Image.Image, expected: Expected) -> tuple[bool, bool]:
    """(colour found at its place, shape right) for one expected object."""
    blob = largest_blob(colour_mask(image, expected.colour))
    if blob.sum() < MIN_OBJECT_FRACTION * blob.size:
        return False, False
    point = centroid(blob)
    placed = True
    if expected.place is not None and point is not None:
        x, y = POSITIONS[expected.place]
        placed = abs(point[0] - x) <= PLACE_TOLERANCE and abs(point[1] - y) <= PLACE_TOLERANCE
    shaped = expected.shape is None or classify_shape(blob) == expected.shape
    return placed, shaped


def judge(request: Request, made: list[Made], before: list[Made], tool: str) -> Judged:
    if tool != request.tool or len(made) != len(request.expected):
        return Judged(request, False, False, False, f"planned {tool or 'images'} × {len(made)}")
    found = [holds(item.image, expected) for item, wanted in zip(made, request.expected) for expected in wanted]
    placed, shaped = all(ok for ok, _ in found), all(ok for _, ok in found)
    if request.recoloured is not None:
        index, old = request.recoloured
        source, result = before[index].image, made[0].image
        background = caption_background(str(before[index].record.settings["prompt"]))
        measured = score(source, result, old, request.expected[0][0].colour, background)
        placed = placed and measured is not None and measured.iou >= 0.85 and measured.hue_error <= 30
    return Judged(request, True, placed, shaped)


def evaluate(registry: Registry, model: str, seed: int = 0) -> list[Judged]:
    runner, planner = LocalRunner(registry), RulePlanner(WORLD_BACKGROUND)
    judged = []
    for request in REQUESTS:
        conversation, before, answer_tool = Conversation(), [], ""
        try:
            for message in request.messages:
                answer, made = turn(runner, registry.catalogue, planner, conversation, message, [], model, False, seed)
                if message is not request.messages[-1]:
                    before += made
            answer_tool = answer.calls[0].tool if answer.calls else ""
            judged.append(judge(request, made, before, answer_tool))
        except StudioError as error:
            judged.append(Judged(request, False, False, False, str(error)))
    return judged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="shapes-flux")
    parser.add_argument("--seeds", type=int, default=3, help="each request run from seeds 0 … N-1")
    args = parser.parse_args()
    registry = Registry(Catalogue.load(), device="cpu")
    judged = [item for seed in range(args.seeds) for item in evaluate(registry, args.model, seed)]
    print(f"| request | planned | colour and place | shape | ({args.seeds} seeds) |")
    print("|---|---|---|---|---|")
    for request in REQUESTS:
        runs = [item for item in judged if item.request is request]
        counts = [sum(getattr(item, name) for item in runs) for name in ("planned", "colour_and_place", "shape")]
        problems = "; ".join(sorted({item.problem for item in runs if item.problem}))
        print(f"| {' → '.join(request.messages)} | {' | '.join(f'{n}/{len(runs)}' for n in counts)} | {problems} |")
    rate = sum(item.success for item in judged) / len(judged)
    shapes = sum(item.success and item.shape for item in judged) / len(judged)
    print(
        f"\n{len(REQUESTS)} requests × {args.seeds} seeds on {args.model}: success {rate:.2f} "
        f"(with the shape right too: {shapes:.2f})"
    )


if __name__ == "__main__":
    main()
