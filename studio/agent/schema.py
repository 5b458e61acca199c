"""What a planner answers, as data: the images a turn makes (one prompt each, for in-context
generation) or the tool calls it makes instead. A language model's answer is JSON parsed here and
checked before anything runs; an answer that fails says why, so the model can be asked again."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from studio.errors import InvalidRequest

MAX_OUTPUTS = 12
IMAGE_ID = re.compile(r"^(input|output)-[1-9][0-9]?$")


@dataclass(frozen=True)
class ToolCall:
    """One call of a studio method: its settings as JSON, and its image inputs by image id."""

    tool: str
    arguments: dict[str, Any]
    images: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Answer:
    """A planner's answer for one turn."""

    reply: str
    overview: str = ""
    outputs: tuple[str, ...] = ()
    calls: tuple[ToolCall, ...] = ()
    # What each of the user's images shows, by id (ChatDiT's parsing agent describes its inputs:
    # the text of a reference panel in the in-context prompt).
    inputs: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {
                "reply": self.reply,
                "overview": self.overview,
                "outputs": list(self.outputs),
                "calls": [{"tool": c.tool, "arguments": c.arguments, "images": c.images} for c in self.calls],
                "inputs": self.inputs,
            },
            indent=1,
        )


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise InvalidRequest(f"{where} must be a string.")
    return value.strip()


def _call(value: Any, index: int) -> ToolCall:
    where = f"calls[{index}]"
    if not isinstance(value, Mapping):
        raise InvalidRequest(f"{where} must be an object with tool, arguments and images.")
    unknown = set(value) - {"tool", "arguments", "images"}
    if unknown:
        raise InvalidRequest(f"{where} has no field {sorted(unknown)[0]!r}.")
    arguments, images = value.get("arguments", {}), value.get("images", {})
    if not isinstance(arguments, Mapping) or not isinstance(images, Mapping):
        raise InvalidRequest(f"{where}: arguments and images must be objects.")
    for name, image in images.items():
        if not isinstance(image, str) or not IMAGE_ID.match(image):
            raise InvalidRequest(f"{where}.images.{name}: an image id such as 'output-1' or 'input-2'.")
    return ToolCall(_text(value.get("tool"), f"{where}.tool"), dict(arguments), dict(images))


def parse_answer(text: str) -> Answer:
    """An answer from a planner's JSON text (the first JSON object in it), checked: a reply, and
    either 1 to MAX_OUTPUTS output prompts or at least one tool call, not both."""
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end < start:
        raise InvalidRequest("The answer holds no JSON object.")
    try:
        data = json.loads(text[start : end + 1])
    except json.JSONDecodeError as error:
        raise InvalidRequest(f"The answer is not valid JSON: {error.msg} (character {error.pos}).") from None
    if not isinstance(data, Mapping):
        raise InvalidRequest("The answer must be a JSON object.")
    unknown = set(data) - {"reply", "overview", "outputs", "calls", "inputs"}
    if unknown:
        raise InvalidRequest(f"The answer has no field {sorted(unknown)[0]!r}.")
    outputs = data.get("outputs", [])
    calls = data.get("calls", [])
    if not isinstance(outputs, list) or not isinstance(calls, list):
        raise InvalidRequest("outputs and calls must be lists.")
    if bool(outputs) == bool(calls):
        raise InvalidRequest("Give either output prompts or tool calls (one of the two).")
    if len(outputs) > MAX_OUTPUTS:
        raise InvalidRequest(f"At most {MAX_OUTPUTS} images a turn.")
    described = data.get("inputs", {})
    if not isinstance(described, Mapping):
        raise InvalidRequest("inputs must be an object of image id to description.")
    for image_id in described:
        if not IMAGE_ID.match(image_id) or not image_id.startswith("input-"):
            raise InvalidRequest(f"inputs: {image_id!r} is not an input image id such as 'input-1'.")
    return Answer(
        reply=_text(data.get("reply", ""), "reply"),
        overview=_text(data.get("overview", ""), "overview"),
        outputs=tuple(_text(prompt, f"outputs[{index}]") for index, prompt in enumerate(outputs)),
        calls=tuple(_call(call, index) for index, call in enumerate(calls)),
        inputs={image_id: _text(text, f"inputs.{image_id}") for image_id, text in described.items()},
    )
