"""Scenes of 1-3 coloured shapes on a plain background, their captions and their renderings.

A scene is data first (objects with colour, shape, size, position and an exact box); the image and
each object's visible mask are drawn from it, so evaluation can check a generated image against the
scene that was asked for.
"""

from __future__ import annotations

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
SIZES = ("small", "large")
# Centre of each named position as a fraction of the canvas.
POSITIONS: dict[str, tuple[float, float]] = {
    "left": (0.25, 0.5),
    "right": (0.75, 0.5),
    "top": (0.5, 0.25),
    "bottom": (0.5, 0.75),
    "centre": (0.5, 0.5),
}
POSITION_PHRASES = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "centre": "in the centre",
}
# Side of the shape's bounding square as a fraction of the canvas.
SIZE_FRACTION = {"small": 0.28, "large": 0.44}

VOCABULARY: tuple[str, ...] = tuple(
    dict.fromkeys(
        ["a", "an", "and", ",", "background", "with", "of", "image", "picture", "shape", "shapes"]
        + list(COLOURS)
        + list(BACKGROUNDS)
        + list(SHAPES)
        + list(SIZES)
        + " ".join(POSITION_PHRASES.values()).split()
        + list(POSITIONS)
    )
)


@dataclass(frozen=True)
class SceneObject:
    colour: str
    shape: str
    size: str
    position: str
    # Exact box (x1, y1, x2, y2), normalised to 0-1.
    box: tuple[float, float, float, float]

    def phrase(self) -> str:
        return f"a {self.size} {self.colour} {self.shape} {POSITION_PHRASES[self.position]}"


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]
    background: str
    caption: str = field(default="")

    @staticmethod
    def caption_for(objects: tuple[SceneObject, ...], background: str) -> str:
        return " and ".join(o.phrase() for o in objects) + f", {background} background"


def make_object(
    colour: str, shape: str, size: str, position: str, jitter: float = 0.0, rng: random.Random | None = None
) -> SceneObject:
    cx, cy = POSITIONS[position]
    if jitter and rng is not None:
        cx += rng.uniform(-jitter, jitter)
        cy += rng.uniform(-jitter, jitter)
    half = SIZE_FRACTION[size] / 2
    cx = min(max(cx, half), 1 - half)
    cy = min(max(cy, half), 1 - half)
    return SceneObject(colour, shape, size, position, (cx - half, cy - half, cx + half, cy + half))


def make_scene(objects: list[SceneObject] | tuple[SceneObject, ...], background: str) -> Scene:
    objects = tuple(objects)
    return Scene(objects, background, Scene.caption_for(objects, background))


def random_scene(
    rng: random.Random,
    max_objects: int = 3,
    jitter: float = 0.05,
    exclude: frozenset[tuple[str, str, str]] = frozenset(),
) -> Scene:
    """A scene of 1..max_objects shapes at distinct positions, none of whose (colour, shape,
    position) triples is in `exclude` (held out for evaluation)."""
    count = rng.randint(1, max_objects)
    positions = rng.sample(list(POSITIONS), count)
    background = rng.choice(list(BACKGROUNDS))
    objects = []
    for position in positions:
        while True:
            colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
            if (colour, shape, position) not in exclude:
                break
        objects.append(make_object(colour, shape, rng.choice(SIZES), position, jitter, rng))
    return make_scene(objects, background)


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


def render(scene: Scene, size: int = 64, supersample: int = 4) -> tuple[Image.Image, list[np.ndarray]]:
    """The scene's RGB image and one boolean mask per object (its visible pixels; later objects
    cover earlier ones). Drawn supersampled so edges are smooth, as a camera would see them."""
    big = size * supersample
    image = Image.new("RGB", (big, big), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    owner = Image.new("L", (big, big), 0)
    owner_draw = ImageDraw.Draw(owner)
    for index, obj in enumerate(scene.objects, start=1):
        pixel_box = tuple(v * big for v in obj.box)
        _draw_shape(draw, obj.shape, pixel_box, COLOURS[obj.colour])
        _draw_shape(owner_draw, obj.shape, pixel_box, index)
    image = image.resize((size, size), Image.Resampling.BOX)
    owner_small = np.asarray(owner.resize((size, size), Image.Resampling.NEAREST))
    masks = [owner_small == index for index in range(1, len(scene.objects) + 1)]
    return image, masks
