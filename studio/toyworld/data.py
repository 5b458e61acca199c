"""Training and evaluation sets of the shapes world, drawn reproducibly from a seed."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

from studio.toyworld.scene import COLOURS, POSITIONS, SHAPES, Scene, random_scene, render, varied_caption

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
    captions: list[str]

    def __len__(self) -> int:
        return len(self.scenes)

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
        """Images scaled to [-1, 1] and their captions."""
        images = self.images[indices].float() / 127.5 - 1.0
        return images, [self.captions[i] for i in indices.tolist()]


def build_pool(count: int, seed: int, size: int = 64, max_objects: int = 3) -> ScenePool:
    rng = random.Random(seed)
    scenes = [random_scene(rng, max_objects=max_objects, exclude=HELD_OUT) for _ in range(count)]
    images = np.stack([np.asarray(render(scene, size)[0]) for scene in scenes])
    captions = [varied_caption(scene, rng) for scene in scenes]
    return ScenePool(scenes, torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), captions)
