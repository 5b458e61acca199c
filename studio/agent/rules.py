"""The offline planner: no language model, rules that read the shapes world's vocabulary and
simple English requests, answering in the same form a language model does (`schema.Answer`).

It understands: how many images and of what ("three images of a green triangle, on the left, in
the centre and on the right"; "draw a large red circle on the left"), recolouring an earlier image
("make it blue", "make the second one purple", "recolour the square to orange"), moving its object
("move it to the left": drawn again from its seed at the new place), a layout ("a
layout with a red circle at the top left and a blue square at the bottom right"), and a video
("a video of a red circle moving from the left to the right").
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from studio.agent.schema import MAX_OUTPUTS, Answer, ToolCall
from studio.errors import InvalidRequest
from studio.methods.colour import recolour_prompt
from studio.toyworld.scene import COLOURS, PLURALS, POSITION_PHRASES, POSITION_VARIANTS, POSITIONS, SHAPES

NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9}
NUMBERS |= {"ten": 10, "eleven": 11, "twelve": 12, "a couple of": 2, "a pair of": 2, "several": 3}
ORDINALS = {"first": 0, "second": 1, "third": 2, "fourth": 3, "fifth": 4, "sixth": 5, "last": -1}
RECOLOUR_VERBS = ("make", "turn", "recolour", "recolor", "paint", "change", "colour", "color")
BACKGROUND_WORDS = {"gray": "gray", "grey": "gray", "white": "white", "black": "black"}
SIZE_WORDS = {"small": "small", "little": "small", "tiny": "small", "medium": "medium", "mid sized": "medium"}
SIZE_WORDS |= {"large": "large", "big": "large", "huge": "large"}
SHAPE_WORDS = {shape: shape for shape in SHAPES} | {PLURALS[shape]: shape for shape in SHAPES}
# A named place's box for a layout: a square of this side around the place's centre.
LAYOUT_BOX_SIDE = 0.45


@dataclass(frozen=True)
class ImageRecord:
    """An image the conversation holds, for later requests to refer to."""

    id: str  # "output-3", "input-1"
    method: str  # the tool that made it ("" for the user's own)
    settings: dict[str, Any] = field(default_factory=dict)


def _words(text: str) -> str:
    return " " + re.sub(r"[^a-z0-9 ]+", " ", text.lower()).strip() + " "


def places_in(text: str) -> list[str]:
    """The named places a text mentions, in the order it mentions them (longest wording first, so
    "top left" is not read as "top")."""
    spoken = _words(text)
    found: list[tuple[int, str]] = []
    variants = sorted(
        ((variant, place) for place, wordings in POSITION_VARIANTS.items() for variant in wordings),
        key=lambda pair: -len(pair[0]),
    )
    taken = [False] * len(spoken)
    for variant, place in variants:
        for match in re.finditer(rf"(?<= ){re.escape(variant)}(?= )", spoken):
            if not any(taken[match.start() : match.end()]):
                found.append((match.start(), place))
                taken[match.start() : match.end()] = [True] * (match.end() - match.start())
    return [place for _, place in sorted(found)]


def _first(words: str, choices: Sequence[str]) -> str | None:
    hits = [(words.find(f" {choice} "), choice) for choice in choices if f" {choice} " in words]
    return min(hits)[1] if hits else None


def object_phrase(text: str) -> str | None:
    """ "[size] colour shape" in the world's words (colour or shape may be missing: "big red
    circles" is "large red circle"), or None."""
    words = _words(text)
    size, colour, shape = (
        _first(words, list(SIZE_WORDS)),
        _first(words, list(COLOURS)),
        _first(words, list(SHAPE_WORDS)),
    )
    if shape is None and colour is None:
        return None
    return " ".join(
        part for part in (size and SIZE_WORDS[size], colour, SHAPE_WORDS[shape] if shape else "shape") if part
    )


COUNTED = r"(images|pictures|versions|variations|panels|copies|of|(?:[a-z]+ ){0,2}(?:circles|squares|triangles|shapes))"


def count_in(text: str) -> int | None:
    """How many images a text asks for ("three images of …", "4 pictures", "two red circles"),
    or None when it names no number; InvalidRequest over the turn's limit."""
    words = _words(text)
    found = None
    for phrase, number in sorted(NUMBERS.items(), key=lambda pair: -len(pair[0])):
        if re.search(rf" {phrase} {COUNTED} ", words):
            found = number
            break
    digits = re.search(rf" (\d{{1,4}}) {COUNTED} ", words)
    if found is None and digits:
        found = int(digits.group(1))
    if found is not None and not 1 <= found <= MAX_OUTPUTS:
        raise InvalidRequest(f"A turn makes 1 to {MAX_OUTPUTS} images; ask for fewer (you asked for {found}).")
    return found


def background_in(text: str) -> str | None:
    match = re.search(r" (gray|grey|white|black) (background|backdrop)", _words(text))
    return BACKGROUND_WORDS[match.group(1)] if match else None


def scene_prompt(phrase: str, place: str | None, background: str | None) -> str:
    article = "an" if phrase[0] in "aeiou" else "a"
    text = f"{article} {phrase}" + (f" {POSITION_PHRASES[place]}" if place else "")
    return text + (f", {background} background" if background else "")


def referred(text: str, images: Sequence[ImageRecord]) -> ImageRecord | None:
    """The earlier output a request points at: "the second one", "the last", "it" (the newest)."""
    outputs = [image for image in images if image.id.startswith("output-")]
    if not outputs:
        return None
    words = _words(text)
    for word, index in ORDINALS.items():
        if f" {word} " in words and -len(outputs) <= index < len(outputs):
            return outputs[index]
    number = re.search(r" (?:image|picture|output) (\d{1,2}) ", words)
    if number and 1 <= int(number.group(1)) <= len(outputs):
        return outputs[int(number.group(1)) - 1]
    return outputs[-1]


def own_sampling(image: ImageRecord) -> dict[str, Any]:
    """An earlier image's sampling (with its seed): what remakes it exactly."""
    kept = ("steps", "guidance", "width", "height", "seed")
    return {key: image.settings[key] for key in kept if key in image.settings}


def recolour(text: str, images: Sequence[ImageRecord], model: str) -> Answer | None:
    words = _words(text)
    colour = next((c for c in COLOURS if f" {c} " in words), None)
    if colour is None or not any(f" {verb} " in words for verb in RECOLOUR_VERBS) or "background" in words:
        return None
    target = referred(text, images)
    if target is None or "prompt" not in target.settings:
        return None
    source = str(target.settings["prompt"])
    word = _first(_words(source), SHAPES) or _first(words, SHAPES)
    if word is None:
        return None
    # The image's own sampling, so the edit's source branch remakes it exactly from its seed.
    arguments: dict[str, Any] = {"model": target.settings.get("model", model), "source_prompt": source, "word": word}
    arguments["target_prompt"] = recolour_prompt(source, word, colour)
    arguments |= own_sampling(target)
    return Answer(
        reply=f"Recolouring the {word} of {target.id} to {colour} (ColorCtrl; the rest is kept).",
        calls=(ToolCall("colour_edit", arguments),),
    )


MOVE_VERBS = ("move", "shift", "put it", "place it", "bring it")


def move(text: str, images: Sequence[ImageRecord], model: str) -> Answer | None:
    """ "Move it to the left": the earlier image drawn again from its own seed with its object at
    the named place (the same scene, the place phrase changed)."""
    words = _words(text)
    places = places_in(text)
    if not places or not any(f" {verb} " in words for verb in MOVE_VERBS):
        return None
    target = referred(text, images)
    if target is None or "prompt" not in target.settings:
        return None
    source = str(target.settings["prompt"])
    phrase, _, background = source.partition(",")
    for place in sorted(POSITION_PHRASES.values(), key=len, reverse=True):
        phrase = phrase.replace(f" {place}", "")
    prompt = f"{phrase.strip()} {POSITION_PHRASES[places[-1]]}" + (f",{background}" if background else "")
    arguments: dict[str, Any] = {"model": target.settings.get("model", model), "prompt": prompt}
    arguments |= own_sampling(target)
    return Answer(
        reply=f"Drawing {target.id} again from its seed with the object {POSITION_PHRASES[places[-1]]}.",
        calls=(ToolCall("generate", arguments),),
    )


def layout(text: str, model: str, default_background: str | None) -> Answer | None:
    words = _words(text)
    if not any(f" {word} " in words for word in ("layout", "box", "boxes", "regions")):
        return None
    regions: list[dict[str, Any]] = []
    captions: list[str] = []
    for part in re.split(r",| and ", text):
        phrase, places = object_phrase(part), places_in(part)
        if phrase and places:
            x, y = POSITIONS[places[0]]
            half = LAYOUT_BOX_SIDE / 2
            box = [round(max(0.0, x - half), 3), round(max(0.0, y - half), 3)]
            box += [round(min(1.0, x + half), 3), round(min(1.0, y + half), 3)]
            captions.append(scene_prompt(phrase, places[0], None))
            regions.append({"caption": captions[-1], "box": box})
    if not regions:
        return None
    background = background_in(text) or default_background
    caption = " and ".join(captions) + (f", {background} background" if background else "")
    return Answer(
        reply=f"Drawing a layout of {len(regions)} boxes (regional attention).",
        calls=(ToolCall("layout", {"model": model, "caption": caption, "regions": regions}),),
    )


def generation(text: str, default_background: str | None) -> Answer | None:
    phrase = object_phrase(text)
    if phrase is None:
        return None
    places = places_in(text)
    count = count_in(text) or max(1, len(places))
    background = background_in(text) or default_background
    if places and len(places) not in (1, count):
        places = places[:count]
    prompts = [
        scene_prompt(phrase, places[index % len(places)] if places else None, background) for index in range(count)
    ]
    overview = f"{count} image{'s' if count > 1 else ''} of {scene_prompt(phrase, None, background)}"
    return Answer(reply=f"Making {overview}.", overview=overview, outputs=tuple(prompts))


def plan(text: str, images: Sequence[ImageRecord], model: str, default_background: str | None = None) -> Answer:
    """The offline planner's answer for a message, or a reply saying what it understands.
    `default_background`: the background prompts name when the message names none (the shapes
    world's captions always name one; a prompt without it is one its models never saw)."""
    attempts = (
        lambda: recolour(text, images, model),
        lambda: move(text, images, model),
        lambda: layout(text, model, default_background),
        lambda: generation(text, default_background),
    )
    for attempt in attempts:
        answer = attempt()
        if answer is not None:
            return answer
    return Answer(
        reply=(
            "The offline planner understands the shapes world: ask for images of coloured circles, squares or "
            "triangles at named places ('three images of a green triangle, on the left, in the centre and on the "
            "right'), to recolour one ('make it blue'), or a layout ('a layout with a red circle at the top left and "
            "a blue square at the bottom right'). Connect a language model in the settings for anything else."
        )
    )
