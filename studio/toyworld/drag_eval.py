"""Drag editing on the shapes world: does the object land where it was dragged, whole, with the
rest of the image kept? Prints a table for precise, fast and "no edit" (the source itself).

    python -m studio.toyworld.drag_eval [--model shapes-flux] [--seeds 2] [--modes precise fast none]

Each case draws one object from its caption (the seed's exact run), paints the object (its pixels
widened by two, as a hand paints), and drags it by about a third of the canvas: horizontally,
vertically or diagonally. An edit succeeds when the object's centroid lands within 10% of the
side of the asked target, its pixels overlap the source's moved by the drag (IoU ≥ 0.7) in its
own colour, and the background outside the source and target regions keeps PSNR ≥ 28 dB.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from studio import metrics
from studio.catalogue import Catalogue
from studio.methods.drag import Drag, DragSettings, drag_edit, remade_source
from studio.registry import Registry
from studio.toyworld.measure import centroid, colour_mask, iou, largest_blob
from studio.toyworld.scene import make_object, make_scene

CENTROID_BAR = 0.10
IOU_BAR = 0.7
BACKGROUND_PSNR_BAR = 28.0
# Where each case's object starts and the drag's vector (canvas fractions, about a third long).
MOVES: tuple[tuple[str, tuple[float, float]], ...] = (
    ("left", (0.36, 0.0)),
    ("right", (-0.36, 0.0)),
    ("top", (0.0, 0.36)),
    ("bottom", (0.0, -0.36)),
    ("centre", (0.25, 0.25)),
    ("centre", (-0.25, 0.25)),
    ("centre", (0.25, -0.25)),
    ("centre", (-0.25, -0.25)),
    ("left", (0.25, -0.22)),
    ("right", (-0.25, 0.22)),
    ("top", (0.22, 0.25)),
    ("bottom", (-0.22, -0.25)),
)
COLOURS_USED = ("red", "blue", "green", "yellow", "purple", "orange")
SHAPES_USED = ("square", "circle", "triangle")
BACKGROUNDS_USED = ("gray", "white", "black")


@dataclass
class DragScore:
    distance: float  # centroid to target, fraction of the side (1.0 when the object is gone)
    iou: float
    background_psnr: float

    @property
    def success(self) -> bool:
        return self.distance <= CENTROID_BAR and self.iou >= IOU_BAR and self.background_psnr >= BACKGROUND_PSNR_BAR


def cases() -> list[tuple[str, str, tuple[float, float]]]:
    """(caption, colour, drag vector) for every move, colours, shapes and backgrounds rotating."""
    made = []
    for index, (place, vector) in enumerate(MOVES):
        colour = COLOURS_USED[index % len(COLOURS_USED)]
        shape = SHAPES_USED[index % len(SHAPES_USED)]
        background = BACKGROUNDS_USED[(index // 2) % len(BACKGROUNDS_USED)]
        scene = make_scene([make_object(colour, shape, "large", place)], background)
        made.append((scene.caption, colour, vector))
    return made


def object_mask(image: Image.Image, colour: str) -> np.ndarray:
    return largest_blob(colour_mask(image, colour))


def shifted(mask: np.ndarray, dx: int, dy: int) -> np.ndarray:
    moved = np.zeros_like(mask)
    height, width = mask.shape
    ys, xs = np.nonzero(mask)
    ys, xs = ys + dy, xs + dx
    inside = (ys >= 0) & (ys < height) & (xs >= 0) & (xs < width)
    moved[ys[inside], xs[inside]] = True
    return moved


def score(source: Image.Image, result: Image.Image, colour: str, vector: tuple[int, int]) -> DragScore | None:
    """The drag's measures, or None when the source has no such object to drag."""
    before = object_mask(source, colour)
    if before.sum() < 20:
        return None
    wanted = shifted(before, *vector)
    after = object_mask(result, colour)
    target = centroid(wanted)
    landed = centroid(after) if after.sum() >= 5 else None
    assert target is not None
    distance = 1.0 if landed is None else float(np.hypot(landed[0] - target[0], landed[1] - target[1]))
    edited = metrics.dilate(before | wanted, 3)
    return DragScore(
        distance=distance,
        iou=iou(after, wanted),
        background_psnr=min(metrics.background_psnr(source, result, edited), 99.0),
    )


def painted_region(source: Image.Image, colour: str) -> np.ndarray:
    return metrics.dilate(object_mask(source, colour), 2)


def evaluate(registry: Registry, model: str, mode: str, seeds: int, steps: int) -> list[DragScore]:
    scores = []
    for (caption, colour, (fx, fy)), seed in itertools.product(cases(), range(seeds)):
        spec = registry.catalogue.get(model)
        base = DragSettings(
            model=model,
            prompt=caption,
            drags=(),
            mode="fast" if mode == "none" else mode,
            steps=steps,
            guidance=spec.guidance_scale,
            width=spec.width,
            height=spec.height,
            seed=seed,
        )
        source = remade_source(registry, base)
        region = painted_region(source, colour)
        if region.sum() < 20:
            continue
        handle = centroid(object_mask(source, colour))
        assert handle is not None
        hx, hy = handle[0] * source.width, handle[1] * source.height
        vector = (round(fx * source.width), round(fy * source.height))
        drag = Drag("move", ((hx, hy), (hx + vector[0], hy + vector[1])))
        result = source if mode == "none" else drag_edit(registry, replace(base, drags=(drag,)), region).result
        measured = score(source, result, colour, vector)
        if measured is not None:
            scores.append(measured)
    return scores


def summary(scores: list[DragScore]) -> dict[str, float]:
    return {
        "edits": len(scores),
        "success": sum(s.success for s in scores) / max(1, len(scores)),
        "distance": 100 * statistics.mean(s.distance for s in scores) if scores else float("nan"),
        "iou": statistics.median(s.iou for s in scores) if scores else float("nan"),
        "psnr": statistics.median(s.background_psnr for s in scores) if scores else float("nan"),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="shapes-flux")
    parser.add_argument("--modes", nargs="+", default=["precise", "fast", "none"])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=25)
    args = parser.parse_args(argv)
    registry = Registry(Catalogue.load(), device="cpu")
    print("| mode | edits | success | mean distance to target (% of side) | median IoU | median background PSNR | s |")
    print("|---|---|---|---|---|---|---|")
    for mode in args.modes:
        started = time.perf_counter()
        result = summary(evaluate(registry, args.model, mode, args.seeds, args.steps))
        print(
            f"| {mode} | {result['edits']} | {result['success']:.0%} | {result['distance']:.1f} | "
            f"{result['iou']:.2f} | {result['psnr']:.1f} | {time.perf_counter() - started:.0f} |"
        )


if __name__ == "__main__":
    main()
