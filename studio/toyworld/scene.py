"""Scenes of 1-3 coloured shapes on a plain background, their captions and their renderings.

A scene is data first (objects with colour, shape, size, position and an exact box); the image and
each object's visible mask are drawn from it, so evaluation can check a generated image against the
scene that was asked for.

Objects sit anywhere on the canvas at any size between small and large. A caption names an
object's place only where the object is near one of the named places (the four sides, the centre,
the four corners) and its size by range; elsewhere the boxes of a layout, a sketch or a drag must
carry the position. Training captions vary their wording (synonyms, articles, optional parts) the
way people write prompts; `Scene.caption` is the one canonical wording.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (140, 50, 180),
    "orange": (245, 140, 30),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "gray": (128, 128, 128),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
SHAPES = ("circle", "square", "triangle")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "shape": "shapes"}
# Side of the shape's bounding square as a fraction of the canvas: the range each size word
# covers, and the side a named size is drawn at.
SIZE_RANGES: dict[str, tuple[float, float]] = {"small": (0.18, 0.28), "medium": (0.28, 0.38), "large": (0.38, 0.5)}
SIZE_FRACTION: dict[str, float] = {"small": 0.26, "medium": 0.34, "large": 0.44}
SIZES = tuple(SIZE_RANGES)
# Centre of each named place as a fraction of the canvas.
POSITIONS: dict[str, tuple[float, float]] = {
    "left": (0.25, 0.5),
    "right": (0.75, 0.5),
    "top": (0.5, 0.25),
    "bottom": (0.5, 0.75),
    "centre": (0.5, 0.5),
    "top left": (0.25, 0.25),
    "top right": (0.75, 0.25),
    "bottom left": (0.25, 0.75),
    "bottom right": (0.75, 0.75),
}
POSITION_PHRASES = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "centre": "in the centre",
    "top left": "at the top left",
    "top right": "at the top right",
    "bottom left": "at the bottom left",
    "bottom right": "at the bottom right",
}
# Other ways people write a place; training captions use them all, so the model knows each.
POSITION_VARIANTS: dict[str, tuple[str, ...]] = {
    "left": ("on the left", "at the left", "to the left", "on the left side", "left"),
    "right": ("on the right", "at the right", "to the right", "on the right side", "right"),
    "top": ("at the top", "on the top", "on top", "at the top side", "top"),
    "bottom": ("at the bottom", "on the bottom", "at the bottom side", "bottom"),
    "centre": (
        "in the centre",
        "in the center",
        "in the middle",
        "at the centre",
        "at the center",
        "centered",
        "in the center of the image",
        "in the middle of the picture",
    ),
    **{
        corner: (
            f"at the {corner}",
            f"in the {corner}",
            f"in the {corner} corner",
            f"at the {corner} corner",
            f"{corner}",
        )
        for corner in ("top left", "top right", "bottom left", "bottom right")
    },
}
BACKGROUND_WORDS: dict[str, tuple[str, ...]] = {"gray": ("gray", "grey"), "white": ("white",), "black": ("black",)}
# An object whose centre lies within this distance (canvas fractions) of a named place is named
# by it; a scene object elsewhere has no position words.
PLACE_RADIUS = 0.1
COUNT_WORDS = ("one", "two", "three")
LEAD_INS = (
    "",
    "",
    "",
    "a picture of ",
    "an image of ",
    "draw ",
    "show ",
    "make ",
    "generate ",
    "create ",
    "please draw ",
    "there is ",
)

VOCABULARY: tuple[str, ...] = tuple(
    dict.fromkeys(
        [
            "a",
            "an",
            "the",
            "and",
            ",",
            ":",
            "background",
            "with",
            "of",
            "on",
            "in",
            "at",
            "to",
            "image",
            "picture",
            "shape",
            "side",
            "corner",
            "centered",
            "please",
            "draw",
            "show",
            "make",
            "generate",
            "create",
            "there",
            "is",
            "are",
            "one",
            "two",
            "three",
            "four",
            "both",
            "other",
            "same",
            "another",
            "colour",
            "color",
            "colours",
            "colors",
            "place",
            "places",
            ";",
            ".",
            "each",
            "images",
            "panel",
            "panels",
            "set",
            "sheet",
        ]
        # In-context set tags ([LEFT], [PANEL-2], [FOUR-PANEL]) as the In-Context LoRA papers write them.
        + ["[", "]", "-", "LEFT", "RIGHT", "TOP", "BOTTOM", "PANEL", "TWO", "THREE", "FOUR", "1", "2", "3", "4"]
        + list(COLOURS)
        # The moving-shapes world's captions ("a red circle moves from the left to the right").
        + ["moves", "moving", "move", "from", "up", "down", "still", "stays", "slides", "then"]
        # The dress-up world's garments and the try-on prompt (catvton-flux's wording).
        + ["top", "dress", "trousers", "skirt", "plain", "striped", "dotted", "checked", "clothing", "cloth"]
        + ["The", "pair", "highlights", "its", "styling", "model", "high", "resolution", "4K", "8K", "IMAGE"]
        + ["Detailed", "product", "shot", "worn", "by", "lifestyle", "setting", "person", "wearing"]
        # CLIP lower-cases what it reads, so the capitalised words need their lower-case forms.
        + ["detailed", "4k", "8k"]
        + [word for words in BACKGROUND_WORDS.values() for word in words]
        + list(SHAPES)
        + list(PLURALS.values())
        + list(SIZES)
        + [word for phrases in POSITION_VARIANTS.values() for phrase in phrases for word in phrase.split()]
    )
)


@dataclass(frozen=True)
class SceneObject:
    colour: str
    shape: str
    size: str
    # The named place the object is near, or None when it is nowhere a caption names.
    position: str | None
    # Exact box (x1, y1, x2, y2), normalised to 0-1.
    box: tuple[float, float, float, float]

    def phrase(self) -> str:
        article = "an" if self.size[0] in "aeiou" else "a"
        words = f"{article} {self.size} {self.colour} {self.shape}"
        return f"{words} {POSITION_PHRASES[self.position]}" if self.position else words

    @property
    def centre(self) -> tuple[float, float]:
        x1, y1, x2, y2 = self.box
        return (x1 + x2) / 2, (y1 + y2) / 2

    @property
    def side(self) -> float:
        return self.box[2] - self.box[0]


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]
    background: str
    caption: str = field(default="")

    @staticmethod
    def caption_for(objects: tuple[SceneObject, ...], background: str) -> str:
        return " and ".join(o.phrase() for o in objects) + f", {background} background"


def size_name(side: float) -> str:
    """The size word whose range holds a bounding-square side (fraction of the canvas)."""
    return next((name for name, (low, high) in SIZE_RANGES.items() if side < high), "large")


def place_name(centre: tuple[float, float]) -> str | None:
    """The named place within PLACE_RADIUS of a centre, if any."""
    name, (x, y) = min(POSITIONS.items(), key=lambda item: math.dist(item[1], centre))
    return name if math.dist((x, y), centre) <= PLACE_RADIUS else None


def object_at(colour: str, shape: str, side: float, centre: tuple[float, float]) -> SceneObject:
    """An object of bounding-square `side` centred at `centre` (kept inside the canvas)."""
    half = side / 2
    cx = min(max(centre[0], half), 1 - half)
    cy = min(max(centre[1], half), 1 - half)
    return SceneObject(
        colour, shape, size_name(side), place_name((cx, cy)), (cx - half, cy - half, cx + half, cy + half)
    )


def make_object(
    colour: str, shape: str, size: str, position: str, jitter: float = 0.0, rng: random.Random | None = None
) -> SceneObject:
    """An object of a named size at a named place (moved by up to `jitter` when `rng` is given)."""
    cx, cy = POSITIONS[position]
    if jitter and rng is not None:
        cx += rng.uniform(-jitter, jitter)
        cy += rng.uniform(-jitter, jitter)
    obj = object_at(colour, shape, SIZE_FRACTION[size], (cx, cy))
    return SceneObject(colour, shape, size, position, obj.box)


def make_scene(objects: list[SceneObject] | tuple[SceneObject, ...], background: str) -> Scene:
    objects = tuple(objects)
    return Scene(objects, background, Scene.caption_for(objects, background))


def overlap(a: SceneObject, b: SceneObject) -> float:
    """Area of the two boxes' intersection over the smaller box's area."""
    width = min(a.box[2], b.box[2]) - max(a.box[0], b.box[0])
    height = min(a.box[3], b.box[3]) - max(a.box[1], b.box[1])
    if width <= 0 or height <= 0:
        return 0.0
    return width * height / min(a.side, b.side) ** 2


def random_scene(
    rng: random.Random,
    max_objects: int = 3,
    exclude: frozenset[tuple[str, str, str]] = frozenset(),
    near_named_place: float = 0.6,
    max_overlap: float = 0.1,
) -> Scene:
    """A scene of 1..max_objects shapes with little overlap, none of whose (colour, shape, named
    place) triples is in `exclude` (held out for evaluation). Each object sits near a named place
    with probability `near_named_place`, anywhere otherwise; its size is anywhere in the range."""
    count = rng.randint(1, max_objects)
    background = rng.choice(list(BACKGROUNDS))
    objects: list[SceneObject] = []
    places = rng.sample(list(POSITIONS), len(POSITIONS))
    attempts = 0
    while len(objects) < count and attempts < 200:
        attempts += 1
        side = rng.uniform(SIZE_RANGES["small"][0], SIZE_RANGES["large"][1] if count == 1 else 0.42)
        if rng.random() < near_named_place:
            px, py = POSITIONS[places[len(objects)]]
            jitter = PLACE_RADIUS * 0.7
            centre = (px + rng.uniform(-jitter, jitter), py + rng.uniform(-jitter, jitter))
        else:
            centre = (rng.uniform(side / 2, 1 - side / 2), rng.uniform(side / 2, 1 - side / 2))
        colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
        candidate = object_at(colour, shape, side, centre)
        if (colour, shape, candidate.position) in exclude:
            continue
        if candidate.position and any(o.position == candidate.position for o in objects):
            continue
        if any(overlap(candidate, o) > max_overlap for o in objects):
            continue
        objects.append(candidate)
    return make_scene(objects, background)


@dataclass(frozen=True)
class Caption:
    text: str
    # (start, end, object index): the characters of `text` that describe each object, so a trainer
    # can ask every word what it refers to (see grounding.py).
    spans: tuple[tuple[int, int, int], ...] = ()

    @staticmethod
    def joined(segments: list[tuple[str, int | None]]) -> Caption:
        """The caption of consecutive segments, each describing the object of its index or none."""
        spans, start = [], 0
        for text, owner in segments:
            if owner is not None and text:
                spans.append((start, start + len(text), owner))
            start += len(text)
        return Caption("".join(text for text, _ in segments), tuple(spans))


def varied_caption(scene: Scene, rng: random.Random) -> Caption:
    """A caption of the scene as a person might write it: synonyms for places and colours,
    optional sizes and background, a lead-in, and counted plurals where objects are alike."""

    def place(obj: SceneObject) -> str:
        return rng.choice(POSITION_VARIANTS[obj.position]) if obj.position else ""

    def noun_phrase(obj: SceneObject, article: bool = True) -> str:
        words = [obj.size] if rng.random() < 0.7 else []
        words += [obj.colour, obj.shape]
        if article:
            first = words[0]
            words.insert(
                0,
                rng.choice(("a", "a", "one", "the"))
                if first[0] not in "aeiou"
                else rng.choice(("an", "an", "one", "the")),
            )
        return " ".join(words)

    objects = scene.objects
    alike = len(objects) > 1 and len({(o.colour, o.shape) for o in objects}) == 1
    segments: list[tuple[str, int | None]] = [(rng.choice(LEAD_INS), None)]
    if alike and rng.random() < 0.5:
        placed = [place(o) for o in objects]
        # "two red circles" describes every object at once, so no one object owns it.
        segments.append((f"{COUNT_WORDS[len(objects) - 1]} {objects[0].colour} {PLURALS[objects[0].shape]}", None))
        if all(placed):
            for index, where in enumerate(placed):
                segments += [(", " if index == 0 else " and ", None), (f"one {where}", index)]
    else:
        separator = ", " if rng.random() < 0.2 and len(objects) > 1 else " and "
        for index, obj in enumerate(objects):
            if index:
                segments.append((separator, None))
            segments.append((f"{noun_phrase(obj)} {place(obj)}".strip(), index))
    choice = rng.random()
    background = rng.choice(BACKGROUND_WORDS[scene.background])
    if choice < 0.55:
        segments.append((f", {background} background", None))
    elif choice < 0.7:
        segments.append((f" on a {background} background", None))
    elif choice < 0.8:
        segments.append((f" with a {background} background", None))
    return Caption.joined(segments)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[float, ...], fill) -> None:
    x1, y1, x2, y2 = box
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([((x1 + x2) / 2, y1), (x2, y2), (x1, y2)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def render(
    scene: Scene, size: int = 64, supersample: int = 4, height: int | None = None
) -> tuple[Image.Image, list[np.ndarray]]:
    """The scene's RGB image and one boolean mask per object (its visible pixels; later objects
    cover earlier ones). Drawn supersampled so edges are smooth, as a camera would see them.
    `size` is the width, `height` (default: the same) the height: on a wide or tall canvas each
    object keeps its centre as a fraction of the canvas and its side as a fraction of the shorter
    edge, so a circle stays round, "on the left" stays on the left and "large" stays large."""
    width, height = size, height or size
    big_width, big_height = width * supersample, height * supersample
    image = Image.new("RGB", (big_width, big_height), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    owner = Image.new("L", (big_width, big_height), 0)
    owner_draw = ImageDraw.Draw(owner)
    shorter = min(big_width, big_height)
    for index, obj in enumerate(scene.objects, start=1):
        cx, cy = obj.centre
        half = obj.side * shorter / 2
        pixel_box = (cx * big_width - half, cy * big_height - half, cx * big_width + half, cy * big_height + half)
        _draw_shape(draw, obj.shape, pixel_box, COLOURS[obj.colour])
        _draw_shape(owner_draw, obj.shape, pixel_box, index)
    image = image.resize((width, height), Image.Resampling.BOX)
    owner_small = np.asarray(owner.resize((width, height), Image.Resampling.NEAREST))
    masks = [owner_small == index for index in range(1, len(scene.objects) + 1)]
    return image, masks
