"""Training and evaluation sets of the shapes world, drawn reproducibly from a seed."""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

import numpy as np
import torch

from studio.toyworld.scene import (
    COLOURS,
    POSITIONS,
    SHAPES,
    SIZES,
    Caption,
    Scene,
    SceneObject,
    random_scene,
    render,
    varied_caption,
)

# (colour, shape, position) triples never drawn for training, so evaluation asks for
# combinations the model has not seen.
HELD_OUT: frozenset[tuple[str, str, str]] = frozenset(
    {
        ("red", "triangle", "left"),
        ("green", "circle", "right"),
        ("blue", "square", "top"),
        ("yellow", "triangle", "bottom"),
        ("purple", "circle", "centre"),
        ("orange", "square", "left"),
        ("red", "square", "bottom"),
        ("green", "triangle", "centre"),
        ("blue", "circle", "left"),
        ("yellow", "square", "right"),
        ("purple", "triangle", "top"),
        ("orange", "circle", "bottom"),
        ("red", "circle", "top left"),
        ("green", "square", "top right"),
        ("blue", "triangle", "bottom right"),
        ("yellow", "circle", "bottom left"),
    }
)
assert all(c in COLOURS and s in SHAPES and p in POSITIONS for c, s, p in HELD_OUT)


@dataclass
class ScenePool:
    scenes: list[Scene]
    images: torch.Tensor  # uint8, N x 3 x H x W
    # Each scene's training caption, worded as people write prompts (see scene.varied_caption).
    descriptions: list[Caption]

    def __len__(self) -> int:
        return len(self.scenes)

    @property
    def captions(self) -> list[str]:
        return [description.text for description in self.descriptions]

    def attributes(self) -> list[list[tuple[int, ...]]]:
        """Per scene, per object, what grounding asks its words for (OBJECT_ATTRIBUTES)."""
        return [[object_attributes(obj) for obj in scene.objects] for scene in self.scenes]

    def at_size(self, width: int, height: int | None = None) -> ScenePool:
        """The same scenes and captions drawn on a canvas of `width` x `height` pixels (default:
        square)."""
        return dataclasses.replace(self, images=rendered(self.scenes, width, height))

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
        """Images scaled to [-1, 1] and their captions."""
        images = self.images[indices].float() / 127.5 - 1.0
        return images, [self.descriptions[i].text for i in indices.tolist()]


# What the words describing an object are asked for (grounding.py), with the classes of each:
# colour, shape, size, and the named place (the last class: no named place).
OBJECT_ATTRIBUTES: tuple[int, ...] = (len(COLOURS), len(SHAPES), len(SIZES), len(POSITIONS) + 1)


def object_attributes(obj: SceneObject) -> tuple[int, ...]:
    place = list(POSITIONS).index(obj.position) if obj.position else len(POSITIONS)
    return list(COLOURS).index(obj.colour), SHAPES.index(obj.shape), SIZES.index(obj.size), place


def build_pool(count: int, seed: int, size: int = 64, max_objects: int = 3, height: int | None = None) -> ScenePool:
    rng = random.Random(seed)
    scenes = [random_scene(rng, max_objects=max_objects, exclude=HELD_OUT) for _ in range(count)]
    descriptions = [varied_caption(scene, rng) for scene in scenes]
    return ScenePool(scenes, rendered(scenes, size, height), descriptions)


def rendered(scenes: list[Scene], size: int, height: int | None = None) -> torch.Tensor:
    """The scenes' images, uint8 N x 3 x height x size (height: default the same)."""
    images = np.stack([np.asarray(render(scene, size, height=height)[0]) for scene in scenes])
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
