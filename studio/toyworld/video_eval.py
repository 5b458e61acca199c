"""The moving-shapes world's checks of the video model and of DiTCtrl.

    python -m studio.toyworld.video_eval [--model moving-shapes-cogvideox] [--seeds 2]

1. Held-out motions (colour, shape, direction never paired in training), one prompt each: is the
   object of the asked colour and shape, does it start and end at the asked sides, does it move
   the asked way?
2. Two-prompt videos (a place change, a colour change, a shape moving then resting): one object
   of one shape through the clip, each prompt followed in its own part, changes smooth (largest
   frame-to-frame change at a prompt boundary ≤ 2x the median inside the parts); DiTCtrl against
   the naive baseline (each prompt its own video, concatenated) on the same seeds: consistency
   (coefficient of variation of the object's per-frame area, lower is steadier) and boundary jump.
   The object's area is measured twice: as the largest blob of any palette colour, and as the
   largest blob that differs from the background whatever its colour; only the second sees an
   object in a colour near no palette entry, as one mid-way through a colour change can be.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from studio.catalogue import Catalogue
from studio.methods.video import VideoResult, VideoSettings, multi_prompt_video
from studio.registry import Registry
from studio.toyworld.measure import centroid, classify_shape, colour_mask, foreground_mask, largest_blob
from studio.toyworld.motion import DIRECTION_PHRASES, DIRECTIONS, HELD_OUT_MOTIONS, trace_object, travel_direction
from studio.toyworld.scene import COLOURS, POSITIONS, SHAPES

BACKGROUNDS_USED = ("gray", "white", "black")
# Two-prompt cases: (first prompt, second prompt, what the first asks, what the second asks) with
# each part's expectation as (colour, place or None).
PAIRS: tuple[tuple[str, str, tuple[str, str | None], tuple[str, str | None]], ...] = (
    ("a red circle on the left", "a red circle on the right", ("red", "left"), ("red", "right")),
    ("a red square in the centre", "a blue square in the centre", ("red", "centre"), ("blue", "centre")),
    ("a green triangle at the top", "a green triangle at the bottom", ("green", "top"), ("green", "bottom")),
    ("a yellow circle on the right", "a purple circle on the right", ("yellow", "right"), ("purple", "right")),
)
SMOOTHNESS_BAR = 2.0


def generate(registry: Registry, settings: VideoSettings) -> VideoResult:
    result = list(multi_prompt_video(registry, settings))[-1]
    assert isinstance(result, VideoResult)
    return result


# --- 1. Held-out motions ----------------------------------------------------------------------


def wordings(direction: str, both_ends: bool) -> list[str]:
    """The ways a caption says a direction that name both ends ("from the left to the right"),
    or only where the object goes ("moves to the right", "moving right")."""
    return [phrase for phrase in DIRECTION_PHRASES[direction] if ("from" in phrase.split()) == both_ends]


def motion_prompt(colour: str, shape: str, direction: str, background: str, wording: str | None = None) -> str:
    return f"a {colour} {shape} {wording or DIRECTION_PHRASES[direction][0]}, {background} background"


def side_of(point: tuple[float, float], axis: int) -> str:
    """The side a point is nearer along an axis: left/right (x) or top/bottom (y)."""
    value = point[axis]
    return ("left", "right")[value > 0.5] if axis == 0 else ("top", "bottom")[value > 0.5]


def check_motion(frames: np.ndarray, colour: str, shape: str, direction: str) -> dict[str, bool]:
    trace = trace_object(frames, colour)
    seen = [c for c in trace.centres if c is not None]
    start_place, end_place, axis = DIRECTIONS[direction]
    found = trace.found >= 0.8 and len(seen) >= 2
    return {
        "colour": found,
        "shape": found and trace.shape == shape,
        "start": found and side_of(seen[0], axis) == start_place,
        "end": found and side_of(seen[-1], axis) == end_place,
        "direction": found and travel_direction(trace) == direction,
    }


def held_out_table(registry: Registry, model: str, seeds: int, steps: int, both_ends: bool) -> dict[str, float]:
    """The held-out motions, each seed worded another way of the group (`wordings`)."""
    checks: list[dict[str, bool]] = []
    for index, (colour, shape, direction) in enumerate(sorted(HELD_OUT_MOTIONS)):
        for seed in range(seeds):
            background = BACKGROUNDS_USED[(index + seed) % len(BACKGROUNDS_USED)]
            group = wordings(direction, both_ends)
            prompt = motion_prompt(colour, shape, direction, background, group[(index + seed) % len(group)])
            settings = base_settings(model, steps, seed, (prompt,))
            checks.append(check_motion(generate(registry, settings).frames, colour, shape, direction))
    return {name: statistics.mean(check[name] for check in checks) for name in checks[0]} | {"videos": len(checks)}


# --- 2. Two prompts: DiTCtrl against the naive baseline ----------------------------------------


def main_object(frame: np.ndarray) -> tuple[str | None, np.ndarray]:
    """The colour whose largest blob is largest in the frame, and that blob."""
    best: tuple[str | None, np.ndarray] = (None, np.zeros(frame.shape[:2], dtype=bool))
    for colour in COLOURS:
        blob = largest_blob(colour_mask(frame, colour))
        if blob.sum() > best[1].sum():
            best = (colour, blob)
    return best


def frame_changes(frames: np.ndarray) -> np.ndarray:
    """Mean absolute pixel change between consecutive frames (0-255 scale)."""
    as_float = frames.astype(np.float32)
    return np.abs(np.diff(as_float, axis=0)).mean(axis=(1, 2, 3))


@dataclass
class PairScore:
    one_shape: bool  # one object of one shape through the clip (≥ 80% of frames)
    follows: bool  # each prompt's own part shows its colour at its place (≥ 60% of its frames)
    smooth: bool  # boundary jump ≤ 2
    area_cv: float  # coefficient of variation of the object's area (largest palette-colour blob) over frames
    object_cv: float  # the same of the largest blob apart from the background, whatever its colour
    boundary_jump: float  # largest change in a boundary window / the window's median change


def score_pair(frames: np.ndarray, parts: list[tuple[int, int]], windows: list[tuple[int, int]],
               asks: Sequence[tuple[str, str | None]], shape: str) -> PairScore:  # fmt: skip
    """`parts`: each prompt's own frames [start, end); `windows`: the frames [start, end) where
    one prompt hands over to the next (DiTCtrl's transition segments; for a cut, as many frames
    around it). A change spread over the window has a jump near 1; a cut, one large change among
    still frames, a jump far above 2."""
    objects = [main_object(frame) for frame in frames]
    shapes = [classify_shape(blob) if blob.any() else None for _, blob in objects]
    areas = np.array([blob.mean() for _, blob in objects])
    object_areas = np.array([largest_blob(foreground_mask(frame)).mean() for frame in frames])
    follows = True
    for (start, end), (colour, place) in zip(parts, asks):
        hits = 0
        for colour_found, blob in objects[start:end]:
            point = centroid(blob)
            at_place = place is None or (point is not None and nearest_named(point) == place)
            hits += colour_found == colour and at_place
        follows &= hits >= 0.6 * max(1, end - start)
    changes = frame_changes(frames)
    jumps = []
    for start, end in windows:
        inside = changes[max(0, start - 1) : max(start, end - 1)]
        jumps.append(float(inside.max() / max(float(np.median(inside)), 1e-3)) if len(inside) else 0.0)
    jump = max(jumps, default=0.0)
    return PairScore(
        one_shape=sum(s == shape for s in shapes) >= 0.8 * len(shapes),
        follows=follows,
        smooth=jump <= SMOOTHNESS_BAR,
        area_cv=variation(areas),
        object_cv=variation(object_areas),
        boundary_jump=jump,
    )


def variation(values: np.ndarray) -> float:
    """Coefficient of variation: spread over mean."""
    return float(values.std() / max(values.mean(), 1e-6))


def nearest_named(point: tuple[float, float]) -> str:
    return min(("left", "right", "top", "bottom", "centre"), key=lambda name: np.hypot(
        POSITIONS[name][0] - point[0], POSITIONS[name][1] - point[1]))  # fmt: skip


def plan_parts(result: VideoResult) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Frames [start, end) of each prompt's own part and of each hand-over (transition) in a
    DiTCtrl video, from its timeline."""
    fps = result.fps
    spans = [
        (label, round(start * fps), min(round(end * fps), len(result.frames))) for label, start, end in result.timeline
    ]
    parts = [(start, end) for label, start, end in spans if not label.startswith("transition")]
    windows = [(parts[k][1], parts[k + 1][0]) for k in range(len(parts) - 1)]
    # Without transition segments the hand-over is the overlap's middle: one frame either side.
    windows = [(start, end) if end > start else (start - 1, start + 1) for start, end in windows]
    return parts, windows


def pair_comparison(registry: Registry, model: str, seeds: int, steps: int) -> dict[str, dict[str, float]]:
    scores: dict[str, list[PairScore]] = {"DiTCtrl": [], "naive": []}
    for index, (first, second, ask_first, ask_second) in enumerate(PAIRS):
        shape = next(word for word in SHAPES if word in first)
        asks = (ask_first, ask_second)
        for seed in range(seeds):
            background = BACKGROUNDS_USED[(index + seed) % len(BACKGROUNDS_USED)]
            prompts = (f"{first}, {background} background", f"{second}, {background} background")
            made = generate(registry, base_settings(model, steps, seed, prompts))
            parts, windows = plan_parts(made)
            scores["DiTCtrl"].append(score_pair(made.frames, parts, windows, asks, shape))
            alone = [generate(registry, base_settings(model, steps, seed, (prompt,))).frames for prompt in prompts]
            cut = len(alone[0])
            width = max(2, max(end - start for start, end in windows))
            naive_window = [(cut - width // 2, cut + (width + 1) // 2)]
            naive = np.concatenate(alone)
            scores["naive"].append(score_pair(naive, [(0, cut), (cut, len(naive))], naive_window, asks, shape))
    return {
        name: {
            "one shape": statistics.mean(s.one_shape for s in found),
            "follows each prompt": statistics.mean(s.follows for s in found),
            "smooth": statistics.mean(s.smooth for s in found),
            "area CV": statistics.mean(s.area_cv for s in found),
            "object CV": statistics.mean(s.object_cv for s in found),
            "boundary jump": statistics.median(s.boundary_jump for s in found),
            "videos": len(found),
        }
        for name, found in scores.items()
    }


def base_settings(model: str, steps: int, seed: int, prompts: tuple[str, ...]) -> VideoSettings:
    spec = Catalogue.load().get(model)
    return VideoSettings(
        model=model, prompts=prompts, steps=steps, guidance=spec.guidance_scale, width=spec.width,
        height=spec.height, seed=seed, fps=spec.fps, preview_every=0,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="moving-shapes-cogvideox")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--parts", nargs="+", default=["held-out", "pairs"])
    args = parser.parse_args(argv)
    registry = Registry(Catalogue.load(), device="cpu")
    if "held-out" in args.parts:
        print(f"| held-out motions ({args.model}) | videos | colour | shape | start | end | direction | s |")
        print("|---|---|---|---|---|---|---|---|")
        for both_ends, label in ((True, "from the left to the right"), (False, "moves to the right, moving right")):
            started = time.perf_counter()
            table = held_out_table(registry, args.model, args.seeds, args.steps, both_ends)
            print(
                f"| worded as “{label}” | {table['videos']} | {table['colour']:.2f} | {table['shape']:.2f} | "
                f"{table['start']:.2f} | {table['end']:.2f} | {table['direction']:.2f} | "
                f"{time.perf_counter() - started:.0f} |"
            )
    if "pairs" in args.parts:
        started = time.perf_counter()
        rows = pair_comparison(registry, args.model, args.seeds, args.steps)
        print("\n| two prompts | videos | one shape | follows each prompt | smooth | colour-blob area CV "
              "| object area CV (any colour) | median boundary jump |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|")
        for name, row in rows.items():
            print(
                f"| {name} | {row['videos']} | {row['one shape']:.2f} | {row['follows each prompt']:.2f} | "
                f"{row['smooth']:.2f} | {row['area CV']:.3f} | {row['object CV']:.3f} | {row['boundary jump']:.2f} |"
            )
        print(f"\n({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
