"""The moving-shapes world: short clips of one or two shapes of the shapes world that stay still
or move left, right, up or down at a steady pace, with captions such as "a red circle moves
from the left to the right, gray background".

A clip is data first (each object's track: colour, shape, side, start and end centre), so the
evaluation can check a generated video against the clip that was asked for; frames are drawn
with the shapes world's renderer.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from studio.toyworld.measure import centroid, classify_shape, colour_mask, largest_blob
from studio.toyworld.scene import (
    BACKGROUND_WORDS,
    BACKGROUNDS,
    COLOURS,
    LEAD_INS,
    POSITION_VARIANTS,
    POSITIONS,
    SHAPES,
    SIZE_RANGES,
    Caption,
    make_scene,
    object_at,
    render,
    size_name,
)

# Frames a training clip has: four latent frames after the first under 4x temporal compression.
CLIP_FRAMES = 17
# Direction -> (start place, end place, axis moved along: 0 = x, 1 = y). Objects travel half the
# canvas, from one side's place to the opposite one.
DIRECTIONS: dict[str, tuple[str, str, int]] = {
    "right": ("left", "right", 0),
    "left": ("right", "left", 0),
    "up": ("bottom", "top", 1),
    "down": ("top", "bottom", 1),
}
SIDE_CENTRES = {"left": 0.25, "right": 0.75, "top": 0.25, "bottom": 0.75}
# How a caption says each direction ("{object} moves from the left to the right").
DIRECTION_PHRASES: dict[str, tuple[str, ...]] = {
    "right": ("moves from the left to the right", "moves to the right", "moving right", "slides to the right"),
    "left": ("moves from the right to the left", "moves to the left", "moving left", "slides to the left"),
    "up": ("moves from the bottom to the top", "moves up", "moving up", "slides up"),
    "down": ("moves from the top to the bottom", "moves down", "moving down", "slides down"),
}
# (colour, shape, direction) triples never drawn for training: the evaluation asks for them.
HELD_OUT_MOTIONS: frozenset[tuple[str, str, str]] = frozenset(
    {
        ("red", "triangle", "right"),
        ("green", "circle", "left"),
        ("blue", "square", "up"),
        ("yellow", "triangle", "down"),
        ("purple", "circle", "right"),
        ("orange", "square", "left"),
        ("red", "square", "up"),
        ("green", "triangle", "down"),
    }
)
# The least travel (canvas fractions) of an object's centre that counts as motion.
MIN_TRAVEL = 0.15


@dataclass(frozen=True)
class Track:
    """One object over a clip: it moves in a straight line at a steady pace from `start` to
    `end` (equal for a still object)."""

    colour: str
    shape: str
    side: float
    start: tuple[float, float]
    end: tuple[float, float]
    direction: str | None  # None: it stays still

    def centre(self, fraction: float) -> tuple[float, float]:
        return (
            self.start[0] + (self.end[0] - self.start[0]) * fraction,
            self.start[1] + (self.end[1] - self.start[1]) * fraction,
        )


@dataclass(frozen=True)
class Clip:
    tracks: tuple[Track, ...]
    background: str
    description: Caption

    @property
    def caption(self) -> str:
        return self.description.text

    def scene(self, fraction: float):
        """The still scene at `fraction` (0 = first frame, 1 = last) of the clip."""
        return make_scene(
            [object_at(t.colour, t.shape, t.side, t.centre(fraction)) for t in self.tracks], self.background
        )

    def frames(self, count: int = CLIP_FRAMES, size: int = 64) -> np.ndarray:
        """[count, size, size, 3] uint8."""
        return np.stack([np.asarray(render(self.scene(i / (count - 1)), size)[0]) for i in range(count)])


def moving_track(colour: str, shape: str, side: float, direction: str, across: float) -> Track:
    """A track along `direction`'s axis, at `across` (canvas fraction) on the other axis."""
    start_place, end_place, axis = DIRECTIONS[direction]
    along = (SIDE_CENTRES[start_place], SIDE_CENTRES[end_place])
    if axis == 0:
        return Track(colour, shape, side, (along[0], across), (along[1], across), direction)
    return Track(colour, shape, side, (across, along[0]), (across, along[1]), direction)


def still_track(colour: str, shape: str, side: float, centre: tuple[float, float]) -> Track:
    return Track(colour, shape, side, centre, centre, None)


def track_phrase(track: Track, rng: random.Random | None = None) -> str:
    """The object and what it does, worded at random with `rng`, canonically without."""
    pick = (lambda options: options[0]) if rng is None else rng.choice
    words = ([size_name(track.side)] if rng is None or rng.random() < 0.5 else []) + [track.colour, track.shape]
    noun = f"{'an' if words[0][0] in 'aeiou' else 'a'} {' '.join(words)}"
    if track.direction is not None:
        return f"{noun} {pick(DIRECTION_PHRASES[track.direction])}"
    place = object_at(track.colour, track.shape, track.side, track.start).position
    return f"{noun} {pick(POSITION_VARIANTS[place])}" if place else noun


def caption(tracks: tuple[Track, ...], background: str, rng: random.Random | None = None) -> Caption:
    """The clip's caption, each track's words a span of its own (canonical without `rng`)."""
    segments: list[tuple[str, int | None]] = [(rng.choice(LEAD_INS) if rng else "", None)]
    for index, track in enumerate(tracks):
        segments += [(" and " if index else "", None), (track_phrase(track, rng), index)]
    words = rng.choice(BACKGROUND_WORDS[background]) if rng else background
    return Caption.joined([*segments, (f", {words} background", None)])


# What the words describing a track are asked for (grounding.py): colour, shape and motion
# (still, or a direction): a place word's vector must say whether the object leaves or reaches it.
MOTIONS = (None, *DIRECTIONS)
TRACK_ATTRIBUTES: tuple[int, ...] = (len(COLOURS), len(SHAPES), len(MOTIONS))


def track_attributes(track: Track) -> tuple[int, ...]:
    return list(COLOURS).index(track.colour), SHAPES.index(track.shape), MOTIONS.index(track.direction)


def random_clip(rng: random.Random, exclude: frozenset[tuple[str, str, str]] = HELD_OUT_MOTIONS) -> Clip:
    """One or two objects, each moving (60%) or still; a still object sits near a named place
    most of the time so captions can name it; two objects keep to separate halves."""
    count = 1 if rng.random() < 0.75 else 2
    background = rng.choice(list(BACKGROUNDS))
    tracks: list[Track] = []
    lanes = rng.sample((0.3, 0.7), 2)
    while len(tracks) < count:
        colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
        if any(t.colour == colour for t in tracks):
            continue
        side = rng.uniform(SIZE_RANGES["small"][0], 0.36 if count == 2 else SIZE_RANGES["medium"][1])
        lane = lanes[len(tracks)] if count == 2 else rng.uniform(0.3, 0.7)
        if rng.random() < 0.6:
            directions = list(DIRECTIONS)
            if tracks and tracks[0].direction is not None:
                # Two movers share an axis and keep to their own lane.
                axis = DIRECTIONS[tracks[0].direction][2]
                directions = [d for d, (_, _, a) in DIRECTIONS.items() if a == axis]
            direction = rng.choice(directions)
            if (colour, shape, direction) in exclude:
                continue
            tracks.append(moving_track(colour, shape, side, direction, lane))
        else:
            place = rng.choice(("left", "right", "top", "bottom", "centre")) if count == 1 else None
            centre = POSITIONS[place] if place else (lane, rng.choice((0.3, 0.7)))
            if tracks and tracks[0].direction is not None:
                # A still object stays out of the mover's lane.
                axis = DIRECTIONS[tracks[0].direction][2]
                centre = (0.5, lane) if axis == 0 else (lane, 0.5)
            tracks.append(still_track(colour, shape, side, centre))
    clip_tracks = tuple(tracks)
    return Clip(clip_tracks, background, caption(clip_tracks, background, rng))


@dataclass
class ClipPool:
    clips: list[Clip]
    videos: torch.Tensor  # uint8, N x 3 x F x H x W

    def __len__(self) -> int:
        return len(self.clips)

    @property
    def captions(self) -> list[str]:
        return [clip.caption for clip in self.clips]

    def attributes(self) -> list[list[tuple[int, ...]]]:
        """Per clip, per track, what grounding asks its words for (TRACK_ATTRIBUTES)."""
        return [[track_attributes(track) for track in clip.tracks] for clip in self.clips]

    def batch(self, indices: torch.Tensor) -> torch.Tensor:
        """Videos scaled to [-1, 1], [B, 3, F, H, W]."""
        return self.videos[indices].float() / 127.5 - 1.0


def build_clip_pool(count: int, seed: int, frames: int = CLIP_FRAMES, size: int = 64) -> ClipPool:
    rng = random.Random(seed)
    clips = [random_clip(rng) for _ in range(count)]
    videos = np.stack([clip.frames(frames, size) for clip in clips])
    return ClipPool(clips, torch.from_numpy(videos).permute(0, 4, 1, 2, 3).contiguous())


# --- Measures ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectTrace:
    """Where an object of one colour is in each frame (None where it is not found), and the shape
    most frames show."""

    centres: list[tuple[float, float] | None]
    areas: list[float]
    shape: str | None

    @property
    def found(self) -> float:
        return sum(c is not None for c in self.centres) / len(self.centres)


def trace_object(frames: list[Image.Image] | np.ndarray, colour: str) -> ObjectTrace:
    centres: list[tuple[float, float] | None] = []
    areas: list[float] = []
    shapes: list[str] = []
    for frame in frames:
        mask = largest_blob(colour_mask(frame, colour))
        area = float(mask.mean())
        areas.append(area)
        if area < 0.006:
            centres.append(None)
            continue
        centres.append(centroid(mask))
        shape = classify_shape(mask)
        if shape:
            shapes.append(shape)
    shape = max(set(shapes), key=shapes.count) if shapes else None
    return ObjectTrace(centres, areas, shape)


def travel_direction(trace: ObjectTrace) -> str | None:
    """The direction of the largest move between the first and last frames that show the object,
    or None (still) when it moves less than MIN_TRAVEL."""
    seen = [c for c in trace.centres if c is not None]
    if len(seen) < 2:
        return None
    dx, dy = seen[-1][0] - seen[0][0], seen[-1][1] - seen[0][1]
    if max(abs(dx), abs(dy)) < MIN_TRAVEL:
        return None
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"
