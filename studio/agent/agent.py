"""One turn of the agent: a planner answers the message (`schema.Answer`), the answer runs through
the studio's runner (in-context generation as ChatDiT, or tool calls), and the images join the
conversation under ids later messages can name ("make the second one blue")."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from PIL import Image

from studio.agent.llm import ChatBackend, ask
from studio.agent.planning import grid_prompt, input_id, output_id, panelised, plan_steps
from studio.agent.rules import ImageRecord, plan
from studio.agent.schema import Answer
from studio.agent.tools import tool_settings, tools, with_defaults
from studio.catalogue import Catalogue
from studio.errors import InvalidRequest
from studio.params import SamplingSettings, StepCallback
from studio.runner import Job, Runner


@dataclass
class Made:
    """An image of the conversation and what it is."""

    record: ImageRecord
    image: Image.Image


@dataclass
class Conversation:
    """What a chat holds: its images (the user's and the agent's, by id) and its messages."""

    images: list[Made] = field(default_factory=list)
    messages: list[dict[str, str]] = field(default_factory=list)

    def records(self) -> list[ImageRecord]:
        return [made.record for made in self.images]

    def find(self, image_id: str) -> Image.Image:
        for made in self.images:
            if made.record.id == image_id:
                return made.image
        raise InvalidRequest(f"There is no image {image_id} in this conversation.")

    def prompt_of(self, image_id: str) -> str:
        """What an image shows, for a panel's text: its prompt, or "the given image" for the user's."""
        for made in self.images:
            if made.record.id == image_id:
                return str(made.record.settings.get("prompt", "the given image"))
        raise InvalidRequest(f"There is no image {image_id} in this conversation.")

    def describe(self, descriptions: dict[str, str]) -> None:
        """The user's images as a planner described them (their text in later panels)."""
        for made in self.images:
            if made.record.id in descriptions:
                made.record = dataclasses.replace(made.record, settings={"prompt": descriptions[made.record.id]})

    def add_input(self, image: Image.Image) -> str:
        index = sum(made.record.id.startswith("input-") for made in self.images)
        self.images.append(Made(ImageRecord(input_id(index), ""), image.convert("RGB")))
        return input_id(index)

    def add_output(self, image: Image.Image, method: str, settings: dict[str, Any]) -> Made:
        index = sum(made.record.id.startswith("output-") for made in self.images)
        made = Made(ImageRecord(output_id(index), method, settings), image)
        self.images.append(made)
        return made


# The shapes world's captions always name a background; gray is its most common.
WORLD_BACKGROUND = "gray"


class Planner(Protocol):
    def answer(
        self, message: str, conversation: Conversation, model: str, given: Sequence[str], check: Check
    ) -> Answer: ...


Check = Callable[[Answer], None]


class RulePlanner:
    """The offline planner (`rules.plan`): no language model. `background`: what its prompts
    name when a message names none (WORLD_BACKGROUND for the shapes world's models)."""

    def __init__(self, background: str | None = None) -> None:
        self.background = background

    def answer(
        self, message: str, conversation: Conversation, model: str, given: Sequence[str], check: Check
    ) -> Answer:
        return plan(message, conversation.records(), model, self.background)


class LanguageModelPlanner:
    """A language model asked for the answer as JSON (`llm.ask`): it sees the user's images (a
    vision model describes them, ChatDiT's parsing), and an answer that fails the schema or the
    check is sent back with the reason."""

    def __init__(self, backend: ChatBackend) -> None:
        self.backend = backend

    def answer(
        self, message: str, conversation: Conversation, model: str, given: Sequence[str], check: Check
    ) -> Answer:
        images = [_line(made) for made in conversation.images]
        attached = [(image_id, conversation.find(image_id)) for image_id in given]
        return ask(self.backend, conversation.messages, message, images, attached, check)


def _line(made: Made) -> str:
    """An image of the chat as the language model is told of it."""
    what = made.record.settings.get("prompt")
    if made.record.id.startswith("input-"):
        return f"{made.record.id}: the user's image" + (f" ({what})" if what else "")
    return f"{made.record.id}: {what or 'an image'} (made by {made.record.method})"


@dataclass(frozen=True)
class CheckedCall:
    """A tool call whose settings passed their type's checks and whose images exist."""

    tool: str
    settings: SamplingSettings
    inputs: dict[str, Image.Image]


def checked_calls(catalogue: Catalogue, answer: Answer, conversation: Conversation, model: str) -> list[CheckedCall]:
    """Every call of an answer checked before any runs (a plan never half-runs on a bad call)."""
    made = []
    for call in answer.calls:
        settings = tool_settings(call.tool, with_defaults(catalogue, call.arguments, model))
        method = tools()[call.tool]
        unknown = set(call.images) - set(method.inputs)
        if unknown:
            raise InvalidRequest(f"{call.tool} takes no image {sorted(unknown)[0]!r}.")
        inputs = {name: conversation.find(image_id) for name, image_id in call.images.items()}
        made.append(CheckedCall(call.tool, settings, inputs))
    return made


def check_answer(
    catalogue: Catalogue, answer: Answer, conversation: Conversation, model: str, given: Sequence[str]
) -> list[CheckedCall]:
    """The answer's calls, checked; InvalidRequest when the answer cannot run as it is: a call's
    settings or images, the described inputs, or more panels than a grid holds."""
    calls = checked_calls(catalogue, answer, conversation, model)
    for image_id in answer.inputs:
        if image_id not in given:
            raise InvalidRequest(f"inputs: {image_id} is not one of the images of this message ({', '.join(given)}).")
    if answer.outputs:
        plan_steps(len(given), len(answer.outputs))
    return calls


def run_call(runner: Runner, call: CheckedCall, conversation: Conversation, on_step, cancel) -> list[Made]:
    """One checked tool call: the method run, its pictures added as outputs."""
    result = runner.run(Job(call.tool, call.settings, call.inputs), on_step, cancel)
    pictures = tools()[call.tool].pictures(result)
    return [conversation.add_output(picture, call.tool, call.settings.to_dict()) for picture in pictures]


def run_outputs(
    runner: Runner,
    catalogue: Catalogue,
    answer: Answer,
    conversation: Conversation,
    given: Sequence[str],
    model: str,
    in_context: bool,
    seed: int,
    on_step: StepCallback | None,
    cancel: threading.Event | None,
) -> list[Made]:
    """The answer's output prompts, ChatDiT's way: steps by the referencing rules, each a grid of
    its references and new panels (`in_context`). A model without in-context ability (the small
    built-ins, trained on single scenes) makes each output on its own from its prompt."""
    if not in_context:
        made = []
        for index, prompt in enumerate(answer.outputs):
            arguments = with_defaults(catalogue, {"prompt": prompt, "seed": seed + index}, model)
            call = CheckedCall("generate", tool_settings("generate", arguments), {})
            made += run_call(runner, call, conversation, on_step, cancel)
        return made
    spec = catalogue.get(model)
    outputs: dict[int, Made] = {}
    for step in plan_steps(len(given), len(answer.outputs)):
        texts = [conversation.prompt_of(reference) for reference in step.references]
        texts += [answer.outputs[index] for index in step.outputs]
        prompt, rows, columns = grid_prompt(panelised(answer.overview, texts), step.panels)
        size = {"width": spec.width * columns, "height": spec.height * rows} if spec.builtin else {}
        arguments = with_defaults(catalogue, {"prompt": prompt, "rows": rows, "columns": columns, "seed": seed}, model)
        checked: Any = tool_settings("image_set", arguments | size)
        request = dataclasses.replace(
            checked,
            references={position: conversation.find(reference) for position, reference in enumerate(step.references)},
        )
        result = runner.run(Job("image_set", request, {}), on_step, cancel)
        for offset, index in enumerate(step.outputs):
            panel = result.panels[len(step.references) + offset]
            outputs[index] = conversation.add_output(
                panel, "image_set", {"prompt": answer.outputs[index], "model": model}
            )
    return [outputs[index] for index in sorted(outputs)]


@dataclass(frozen=True)
class Planned:
    """A turn planned and checked, not yet run: the answer, the message's images by id, and what
    the conversation held before the message (to put it back if the run fails)."""

    message: str
    answer: Answer
    given: tuple[str, ...]
    kept: tuple[int, int]
    calls: tuple[CheckedCall, ...] = ()

    def steps(self, in_context: bool) -> list[str]:
        """What will run, one line a step, for the user to see before it does."""
        if self.answer.calls:
            return [f"{call.tool}: {_arguments(call.arguments)}" for call in self.answer.calls]
        if not in_context:
            return [f"output-{n}: {prompt}" for n, prompt in enumerate(self.answer.outputs, start=1)]
        lines = []
        for step in plan_steps(len(self.given), len(self.answer.outputs)):
            made = ", ".join(output_id(index) for index in step.outputs)
            on = f" conditioned on {', '.join(step.references)}" if step.references else ""
            lines.append(f"{made} in context ({step.panels} panels){on}")
        return lines


def _arguments(arguments: dict[str, Any]) -> str:
    shown = ", ".join(f"{name}={value!r}" for name, value in arguments.items() if name != "model")
    return shown if len(shown) <= 160 else shown[:157] + "…"


def _restore(conversation: Conversation, kept: tuple[int, int]) -> None:
    del conversation.images[kept[0] :]
    del conversation.messages[kept[1] :]


def abandon(conversation: Conversation, planned: Planned) -> None:
    """A planned turn that will not run (its request was closed): the conversation as it was
    before the message."""
    _restore(conversation, planned.kept)


def plan_turn(
    catalogue: Catalogue,
    planner: Planner,
    conversation: Conversation,
    message: str,
    images: Sequence[Image.Image],
    model: str,
) -> Planned:
    """The planner's checked answer to a message (the message's images join the conversation);
    on failure the conversation is as it was."""
    kept = (len(conversation.images), len(conversation.messages))
    try:
        given = tuple(conversation.add_input(image) for image in images)

        def check(answer: Answer) -> None:
            check_answer(catalogue, answer, conversation, model, given)

        answer = planner.answer(message, conversation, model, given, check)
        calls = check_answer(catalogue, answer, conversation, model, given)
        conversation.describe(answer.inputs)
    except BaseException:
        _restore(conversation, kept)
        raise
    return Planned(message, answer, given, kept, tuple(calls))


def run_turn(
    runner: Runner,
    catalogue: Catalogue,
    conversation: Conversation,
    planned: Planned,
    model: str,
    in_context: bool,
    seed: int = 0,
    on_step: StepCallback | None = None,
    cancel: threading.Event | None = None,
) -> list[Made]:
    """A planned turn run; its images join the conversation. A run that fails or is cancelled
    leaves the conversation as it was before the message (nothing half-run stays)."""
    answer = planned.answer
    try:
        if answer.outputs:
            made = run_outputs(
                runner, catalogue, answer, conversation, planned.given, model, in_context, seed, on_step, cancel
            )
        else:
            made = [made for call in planned.calls for made in run_call(runner, call, conversation, on_step, cancel)]
    except BaseException:
        abandon(conversation, planned)
        raise
    conversation.messages += [
        {"role": "user", "content": planned.message},
        {"role": "assistant", "content": answer.reply},
    ]
    return made


def turn(
    runner: Runner,
    catalogue: Catalogue,
    planner: Planner,
    conversation: Conversation,
    message: str,
    images: Sequence[Image.Image],
    model: str,
    in_context: bool,
    seed: int = 0,
    on_step: StepCallback | None = None,
    cancel: threading.Event | None = None,
) -> tuple[Answer, list[Made]]:
    """One message in, the planner's answer and the images it made out (`plan_turn`, then
    `run_turn`); a turn that fails leaves the conversation as it was."""
    planned = plan_turn(catalogue, planner, conversation, message, images, model)
    return planned.answer, run_turn(runner, catalogue, conversation, planned, model, in_context, seed, on_step, cancel)
