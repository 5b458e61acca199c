"""Measures that check an image against a shapes-world scene: object mask by colour, IoU, hue,
centroid, named position, shape. Method tests and the evaluation share them."""

from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image, ImageDraw

from studio.toyworld.scene import BACKGROUNDS, COLOURS, POSITIONS, SHAPES, SceneObject, size_name

_PALETTE_NAMES = list(COLOURS) + [f"background:{name}" for name in BACKGROUNDS]
_PALETTE = np.array(list(COLOURS.values()) + list(BACKGROUNDS.values()), dtype=np.float32)
# The smallest object (a small triangle at 64x64) covers about 100 pixels; a blob of a tenth of
# that is noise, not an object.
MIN_OBJECT_FRACTION = 0.006


def as_array(image: Image.Image | np.ndarray) -> np.ndarray:
    return np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float32)


def colour_mask(image: Image.Image | np.ndarray, colour: str, max_distance: float = 90.0) -> np.ndarray:
    """Pixels whose nearest palette colour (shape colours and backgrounds) is `colour`."""
    pixels = as_array(image)
    distances = np.linalg.norm(pixels[..., None, :] - _PALETTE, axis=-1)
    nearest = distances.argmin(-1)
    return (nearest == _PALETTE_NAMES.index(colour)) & (distances.min(-1) < max_distance)


def foreground_mask(image: Image.Image | np.ndarray, min_distance: float = 50.0) -> np.ndarray:
    """Pixels far from the image's background colour (the palette background nearest the median
    of its border): the objects whatever their colour, so also one in a colour near no palette
    entry, as an object changing colour can be in the middle of its change."""
    pixels = as_array(image)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    backgrounds = np.array(list(BACKGROUNDS.values()), dtype=np.float32)
    background = backgrounds[np.linalg.norm(backgrounds - np.median(border, axis=0), axis=-1).argmin()]
    return np.linalg.norm(pixels - background, axis=-1) >= min_distance


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def centroid(mask: np.ndarray) -> tuple[float, float] | None:
    """(x, y) of the mask's centre as fractions of the image, or None for an empty mask."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    height, width = mask.shape
    return float((xs.mean() + 0.5) / width), float((ys.mean() + 0.5) / height)


def nearest_position(point: tuple[float, float]) -> str:
    return min(POSITIONS, key=lambda name: (POSITIONS[name][0] - point[0]) ** 2 + (POSITIONS[name][1] - point[1]) ** 2)


def mean_hue(image: Image.Image | np.ndarray, mask: np.ndarray) -> float | None:
    """Circular mean hue (degrees) of the masked pixels."""
    pixels = as_array(image)[mask] / 255.0
    if len(pixels) == 0:
        return None
    hues = np.array([colorsys.rgb_to_hsv(*p)[0] for p in pixels]) * 2 * np.pi
    return float(np.degrees(np.arctan2(np.sin(hues).mean(), np.cos(hues).mean())) % 360)


def hue_distance(a: float, b: float) -> float:
    return abs((a - b + 180) % 360 - 180)


def _template(shape: str, box: tuple[int, int, int, int], size: tuple[int, int]) -> np.ndarray:
    canvas = Image.new("L", size, 0)
    draw = ImageDraw.Draw(canvas)
    x1, y1, x2, y2 = box
    if shape == "circle":
        draw.ellipse(box, fill=1)
    elif shape == "square":
        draw.rectangle(box, fill=1)
    else:
        draw.polygon([((x1 + x2) / 2, y1), (x2, y2), (x1, y2)], fill=1)
    return np.asarray(canvas, dtype=bool)


def classify_shape(mask: np.ndarray) -> str | None:
    """The shape whose outline, fitted to the mask's bounding box, overlaps the mask best."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    box = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))
    size = (mask.shape[1], mask.shape[0])
    return max(SHAPES, key=lambda shape: iou(mask, _template(shape, box, size)))


def largest_blob(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected region of a mask: stray pixels of a colour are not the object."""
    labels = np.zeros(mask.shape, dtype=np.int32)
    best, best_size, current = 0, 0, 0
    for start in zip(*np.nonzero(mask)):
        if labels[start]:
            continue
        current += 1
        stack, size = [start], 0
        labels[start] = current
        while stack:
            y, x = stack.pop()
            size += 1
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = current
                    stack.append((ny, nx))
        if size > best_size:
            best, best_size = current, size
    return labels == best if best else np.zeros_like(mask)


def check_object(image: Image.Image | np.ndarray, obj: SceneObject) -> dict[str, bool]:
    """Whether the image holds the object with the asked colour, position, size and shape."""
    mask = largest_blob(colour_mask(image, obj.colour))
    found = mask.sum() >= MIN_OBJECT_FRACTION * mask.size
    if not found:
        return {"colour": False, "position": False, "size": False, "shape": False}
    point = centroid(mask)
    # The bounding square's side from the visible area, which differs by shape.
    fill = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}[obj.shape]
    side = float(np.sqrt(mask.sum() / mask.size / fill))
    return {
        "colour": True,
        # An object asked for at no named place is wherever it is.
        "position": obj.position is None or (point is not None and nearest_position(point) == obj.position),
        "size": size_name(side) == obj.size,
        "shape": classify_shape(mask) == obj.shape,
    }
