"""The dress-up world: a drawn figure (head, hair, torso, arms, legs) on a plain background,
wearing a top and a bottom (or a dress) whose colour and pattern vary, and each garment drawn
alone, flat on white, as a shop's product shot.

Every figure comes with its label map in the human parser's ATR ids (segformer_b2_clothes), so
the built-in parser is trained on it and the try-on's automatic mask is checked against it. The
try-on evaluation asks for garments whose colour and pattern were never paired in training
(`HELD_OUT`) and reads the generated top back with `pattern_of` and its hue.
"""

from __future__ import annotations

import colorsys
import random
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from studio.toyworld.scene import COLOURS

# One cell of the try-on canvas: 3:4 like catvton-flux's 576x768.
CELL = (48, 64)
SUPERSAMPLE = 4
PATTERNS = ("plain", "stripes", "dots", "checks")
KINDS = ("upper", "lower", "dress")
# The pattern's second colour: white threads on the garment's colour.
THREAD = (245, 245, 245)
# Pattern periods in cell pixels: stripes of 3 on 3, dots every 5, checks of 4.
STRIPE_PERIOD, DOT_SPACING, CHECK_SIDE = 6, 5, 4
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "light gray": (200, 200, 200),
    "beige": (232, 222, 200),
    "pale blue": (200, 216, 232),
    "white": (245, 245, 245),
}
SKINS = ((238, 200, 170), (205, 155, 115), (145, 100, 65), (250, 222, 196))
HAIRS = ((35, 28, 22), (105, 65, 35), (215, 185, 110), (150, 150, 150))
SHOE = (40, 40, 45)

# The ATR label ids of mattmdjaga/segformer_b2_clothes.
LABELS: dict[str, int] = {
    "background": 0, "hat": 1, "hair": 2, "sunglasses": 3, "upper clothes": 4, "skirt": 5, "pants": 6,
    "dress": 7, "belt": 8, "left shoe": 9, "right shoe": 10, "face": 11, "left leg": 12, "right leg": 13,
    "left arm": 14, "right arm": 15, "bag": 16, "scarf": 17,
}  # fmt: skip
ID_TO_LABEL = {index: name for name, index in LABELS.items()}

# (colour, pattern) pairs no training garment has; the evaluation's garments are these.
HELD_OUT: frozenset[tuple[str, str]] = frozenset(
    {
        ("red", "dots"),
        ("orange", "checks"),
        ("yellow", "stripes"),
        ("green", "plain"),
        ("blue", "checks"),
        ("purple", "stripes"),
    }
)
assert all(colour in COLOURS and pattern in PATTERNS for colour, pattern in HELD_OUT)


@dataclass(frozen=True)
class Garment:
    kind: str  # "upper", "lower" (trousers or skirt) or "dress"
    colour: str
    pattern: str
    # An upper or a dress: long sleeves or short; a lower: "trousers" or "skirt".
    cut: str

    def phrase(self) -> str:
        pattern = (
            ""
            if self.pattern == "plain"
            else {"stripes": "striped", "dots": "dotted", "checks": "checked"}[self.pattern] + " "
        )
        noun = {"upper": "top", "dress": "dress"}.get(self.kind, self.cut)
        return f"{self.colour} {pattern}{noun}"


@dataclass(frozen=True)
class Person:
    upper: Garment | None  # None when wearing a dress
    lower: Garment
    skin: int
    hair: int
    background: str
    # Horizontal offset of the figure from the cell's centre and its scale, in cell pixels / x.
    offset: float = 0.0
    scale: float = 1.0

    def wearing(self, garment: Garment) -> Person:
        """The same person with `garment` on in place of what it replaces."""
        if garment.kind == "upper":
            lower = self.lower if self.lower.kind == "lower" else random_garment(random.Random(0), "lower")
            return replace(self, upper=garment, lower=lower)
        if garment.kind == "lower":
            upper = self.upper or random_garment(random.Random(0), "upper")
            return replace(self, upper=upper, lower=garment)
        return replace(self, upper=None, lower=garment)

    def garment(self, kind: str) -> Garment | None:
        if kind == "upper":
            return self.upper
        return self.lower if self.lower.kind == kind else None


def random_garment(rng: random.Random, kind: str, held_out: bool | None = False) -> Garment:
    """A garment of `kind`; `held_out` True draws only held-out colour-pattern pairs, False never,
    None either."""
    while True:
        colour, pattern = rng.choice(list(COLOURS)), rng.choice(PATTERNS)
        if held_out is None or ((colour, pattern) in HELD_OUT) == held_out:
            break
    cut = rng.choice(("trousers", "skirt")) if kind == "lower" else rng.choice(("long", "short"))
    return Garment(kind, colour, pattern, cut)


def random_person(rng: random.Random, held_out: bool | None = False, dress: float = 0.2) -> Person:
    wears_dress = rng.random() < dress
    return Person(
        upper=None if wears_dress else random_garment(rng, "upper", held_out),
        lower=random_garment(rng, "dress" if wears_dress else "lower", held_out),
        skin=rng.randrange(len(SKINS)),
        hair=rng.randrange(len(HAIRS)),
        background=rng.choice(list(BACKGROUNDS)),
        offset=rng.uniform(-3, 3),
        scale=rng.uniform(0.92, 1.04),
    )


def _fabric(garment: Garment, size: tuple[int, int], period_scale: float) -> Image.Image:
    """The garment's cloth over a whole canvas of `size` (supersampled pixels)."""
    colour = COLOURS[garment.colour]
    cloth = Image.new("RGB", size, colour)
    if garment.pattern == "plain":
        return cloth
    draw = ImageDraw.Draw(cloth)
    unit = SUPERSAMPLE * period_scale
    width, height = size
    if garment.pattern == "stripes":
        period = STRIPE_PERIOD * unit
        for top in np.arange(period / 2, height, period):
            draw.rectangle((0, top, width, top + period / 2 - 1), fill=THREAD)
    elif garment.pattern == "dots":
        spacing, radius = DOT_SPACING * unit, 1.1 * unit
        for row, y in enumerate(np.arange(spacing / 2, height, spacing)):
            for x in np.arange(spacing / 2 + (row % 2) * spacing / 2, width, spacing):
                draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=THREAD)
    else:
        side = CHECK_SIDE * unit
        for row, y in enumerate(np.arange(0, height, side)):
            for column, x in enumerate(np.arange(0, width, side)):
                if (row + column) % 2:
                    draw.rectangle((x, y, x + side - 1, y + side - 1), fill=THREAD)
    return cloth


class _Canvas:
    """An image and its label map drawn together at supersampled size, in cell coordinates."""

    def __init__(self, background: tuple[int, int, int], offset: float = 0.0, scale: float = 1.0) -> None:
        self.size = (CELL[0] * SUPERSAMPLE, CELL[1] * SUPERSAMPLE)
        self.image = Image.new("RGB", self.size, background)
        self.labels = Image.new("L", self.size, 0)
        self.offset, self.scale = offset, scale

    def _box(self, box: tuple[float, float, float, float]) -> tuple[float, ...]:
        x1, y1, x2, y2 = box
        centre_x = CELL[0] / 2

        def x(value: float) -> float:
            return (centre_x + (value - centre_x) * self.scale + self.offset) * SUPERSAMPLE

        def y(value: float) -> float:
            return (4 + (value - 4) * self.scale) * SUPERSAMPLE

        return (x(x1), y(y1), x(x2), y(y2))

    def shape(self, kind: str, box: tuple[float, ...], fill, label: str) -> None:
        """Draw a rectangle, ellipse, upper half-ellipse or trapezoid (box + bottom widening)."""
        pixel_box = self._box((box[0], box[1], box[2], box[3]))
        for target, value in ((ImageDraw.Draw(self.image), fill), (ImageDraw.Draw(self.labels), LABELS[label])):
            if kind == "rectangle":
                target.rectangle(pixel_box, fill=value)
            elif kind == "ellipse":
                target.ellipse(pixel_box, fill=value)
            elif kind == "cap":
                target.pieslice(pixel_box, 180, 360, fill=value)
            else:  # trapezoid widening by box[4] on each side at the bottom
                x1, y1, x2, y2 = pixel_box
                spread = box[4] * SUPERSAMPLE * self.scale
                target.polygon([(x1, y1), (x2, y1), (x2 + spread, y2), (x1 - spread, y2)], fill=value)

    def cloth(self, garment: Garment, parts: list[tuple[str, tuple[float, ...]]], label: str) -> None:
        """Garment parts cut out of its fabric (so the pattern runs on across parts)."""
        stencil = Image.new("L", self.size, 0)
        outline = _Canvas((0, 0, 0), self.offset, self.scale)
        for kind, box in parts:
            outline.shape(kind, box, (255, 255, 255), label)
        stencil = outline.image.convert("L").point(lambda v: 255 if v > 127 else 0)
        # A seam a pixel wide in a darker shade, so white threads at the edge still show the cut.
        seam = tuple(int(v * 0.6) for v in COLOURS[garment.colour])
        self.image.paste(seam, (0, 0), stencil)
        inner = stencil.filter(ImageFilter.MinFilter(2 * SUPERSAMPLE // 2 * 2 + 1))
        self.image.paste(_fabric(garment, self.size, self.scale), (0, 0), inner)
        self.labels.paste(LABELS[label], (0, 0), stencil)

    def finish(self) -> tuple[Image.Image, np.ndarray]:
        image = self.image.resize(CELL, Image.Resampling.BOX)
        labels = np.asarray(self.labels.resize(CELL, Image.Resampling.NEAREST)).copy()
        return image, labels


TORSO = (16.0, 18.0, 32.0, 38.0)
HIPS = 38.0
SKIRT_HEM, SKIRT_FLARE = 50.0, 3.0
FEET = 58.0


def _upper_parts(cut: str, body: tuple[float, float, float, float] = TORSO) -> list[tuple[str, tuple[float, ...]]]:
    x1, y1, x2, y2 = body
    sleeve_end = y2 if cut == "long" else y1 + 8
    return [
        ("rectangle", body),
        ("rectangle", (x1 - 5, y1 + 1, x1, sleeve_end)),
        ("rectangle", (x2, y1 + 1, x2 + 5, sleeve_end)),
    ]


def _lower_parts(cut: str, top: float = HIPS) -> list[tuple[str, tuple[float, ...]]]:
    if cut == "skirt":
        return [("trapezoid", (TORSO[0], top, TORSO[2], SKIRT_HEM, SKIRT_FLARE))]
    return [
        ("rectangle", (TORSO[0], top, TORSO[2], top + 4)),
        ("rectangle", (17, top, 23, FEET)),
        ("rectangle", (25, top, 31, FEET)),
    ]


def render_person(person: Person) -> tuple[Image.Image, np.ndarray]:
    """The figure's image and its ATR label map (cell size). The figure faces the viewer, so its
    left arm and leg are on the image's right."""
    canvas = _Canvas(BACKGROUNDS[person.background], person.offset, person.scale)
    skin, hair = SKINS[person.skin], HAIRS[person.hair]
    # Limbs first, garments over them.
    for label, x in (("right arm", 11.0), ("left arm", 33.0)):
        canvas.shape("rectangle", (x, 19, x + 4, 38), skin, label)
        canvas.shape("ellipse", (x - 0.5, 37, x + 4.5, 42), skin, label)  # the hand
    for label, x in (("right leg", 17.0), ("left leg", 25.0)):
        canvas.shape("rectangle", (x, HIPS, x + 6, FEET), skin, label)
    for label, x in (("right shoe", 16.0), ("left shoe", 25.0)):
        canvas.shape("rectangle", (x, FEET, x + 7, FEET + 3), SHOE, label)
    canvas.shape("rectangle", (22, 14, 26, 19), skin, "face")  # the neck, as the parser labels it
    canvas.shape("ellipse", (18, 3, 30, 16), skin, "face")
    canvas.shape("cap", (17.5, 2, 30.5, 14), hair, "hair")
    if person.lower.kind == "dress":
        dress = person.lower
        skirt = ("trapezoid", (TORSO[0], HIPS - 1, TORSO[2], SKIRT_HEM, SKIRT_FLARE))
        canvas.cloth(dress, [*_upper_parts(dress.cut), skirt], "dress")
    else:
        assert person.upper is not None
        bottom = person.lower
        canvas.cloth(bottom, _lower_parts(bottom.cut), "skirt" if bottom.cut == "skirt" else "pants")
        canvas.cloth(person.upper, _upper_parts(person.upper.cut), "upper clothes")
    return canvas.finish()


def render_garment(garment: Garment) -> Image.Image:
    """The garment alone, flat on white and larger than worn, as a product shot (cell size)."""
    canvas = _Canvas((255, 255, 255))
    if garment.kind == "upper":
        parts = _upper_parts(garment.cut, (14.0, 14.0, 34.0, 40.0))
    elif garment.kind == "lower":
        parts = [
            ("rectangle", (14.0, 10.0, 34.0, 15.0)),
            ("rectangle", (14.0, 10.0, 23.0, 54.0)),
            ("rectangle", (25.0, 10.0, 34.0, 54.0)),
        ] if garment.cut == "trousers" else [("trapezoid", (15.0, 14.0, 33.0, 46.0, 5.0))]  # fmt: skip
    else:
        parts = [*_upper_parts(garment.cut, (16.0, 8.0, 32.0, 28.0)), ("trapezoid", (16.0, 27.0, 32.0, 50.0, 5.0))]
    canvas.cloth(garment, parts, "upper clothes")
    return canvas.finish()[0]


def write_examples(folder: Path, seed: int = 11, enlarge: int = 4) -> list[tuple[str, str, str]]:
    """The try-on tab's examples: people and held-out garments of each kind, enlarged (nearest)
    so they show well; (person file, garment file, kind) each."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for number, kind in enumerate(("upper", "upper", "lower", "dress"), start=1):
        person = random_person(rng, dress=0.0)
        garment = random_garment(rng, kind, held_out=True)
        picture, _ = render_person(person)
        names = (f"person-{number}.png", f"garment-{number}-{kind}.png")
        for image, name in zip((picture, render_garment(garment)), names):
            image.resize((CELL[0] * enlarge, CELL[1] * enlarge), Image.Resampling.NEAREST).save(folder / name)
        rows.append((*names, kind))
    return rows


# --- Reading a garment back -------------------------------------------------------------------


def _hsv(pixels: np.ndarray) -> np.ndarray:
    flat = pixels.reshape(-1, 3).astype(np.float32) / 255.0
    return np.array([colorsys.rgb_to_hsv(*p) for p in flat]).reshape(*pixels.shape[:-1], 3)


def is_thread(pixels: np.ndarray) -> np.ndarray:
    """Pixels that are (or blend into) the pattern's white threads rather than the garment's colour."""
    hsv = _hsv(pixels)
    return (hsv[..., 1] < 0.45) & (hsv[..., 2] > 0.7)


def pattern_of(patch: np.ndarray) -> str:
    """The pattern of a rectangular patch of cloth (H x W x 3): plain, stripes, dots or checks,
    from where its white threads lie: none, in whole rows, sparse, or half of every row and
    column. (On drawn garments thread shares are 0, 0.12-0.24 for dots, 0.5-0.7 for checks and
    stripes, whose rows alternate: row spread 0.45-0.5 against 0 across columns.)"""
    threads = is_thread(patch)
    share = float(threads.mean())
    if share < 0.06:
        return "plain"
    rows, columns = threads.mean(1), threads.mean(0)
    if rows.std() > 0.3 and rows.std() > 2 * columns.std():
        return "stripes"
    return "checks" if share > 0.36 else "dots"


def garment_hue(patch: np.ndarray) -> float | None:
    """The circular mean hue (degrees) of a patch's coloured (non-thread, saturated) pixels."""
    hsv = _hsv(patch).reshape(-1, 3)
    coloured = (hsv[:, 1] > 0.35) & (hsv[:, 2] > 0.2)
    if coloured.sum() < 4:
        return None
    angles = hsv[coloured, 0] * 2 * np.pi
    return float(np.degrees(np.arctan2(np.sin(angles).mean(), np.cos(angles).mean())) % 360)


def _pixel_box(person: Person, box: tuple[float, float, float, float]) -> tuple[int, int, int, int]:
    """A box in figure coordinates as the cell's pixel box for this person's place and scale."""
    x1, y1, x2, y2 = (round(v / SUPERSAMPLE) for v in _Canvas((0, 0, 0), person.offset, person.scale)._box(box))
    return x1, y1, x2, y2


def torso_box(person: Person, margin: float = 2.0) -> tuple[int, int, int, int]:
    """Pixel box (x1, y1, x2, y2) inside the figure's torso: where a worn top shows its cloth."""
    x1, y1, x2, y2 = TORSO
    return _pixel_box(person, (x1 + margin, y1 + margin, x2 - margin, y2 - margin))


def head_box(person: Person) -> tuple[int, int, int, int]:
    return _pixel_box(person, (17.5, 2, 30.5, 16))
