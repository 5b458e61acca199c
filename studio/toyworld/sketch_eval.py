"""Does the live sketch loop draw what is sketched? Outlines of each shape at each named position,
drawn as a person would on the live canvas (a 12-pixel black brush on a 512-pixel canvas), with a
caption that names the colour and shape but no position; measured with the ControlNet and, as the
baseline, with conditioning scale 0 on the same seeds.

    python -m studio.toyworld.sketch_eval [--model shapes-flux] [--seeds 2]

An image counts as placed when the largest blob of the asked colour has its centroid within a
tenth of the canvas of the sketched shape's centre; IoU compares that blob with the sketched shape
filled. `--anywhere` sketches at random places and sizes instead of the named places.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
from dataclasses import replace

import cv2
import numpy as np
from PIL import Image

from studio.catalogue import Catalogue
from studio.methods.control import LiveRenderer, LiveRequest, live_targets
from studio.registry import Registry
from studio.toyworld.measure import centroid, colour_mask, iou, largest_blob
from studio.toyworld.scene import POSITIONS, SHAPES, SceneObject, make_object, make_scene, object_at, render

CANVAS = 512
BRUSH = 12
COLOURS = ("red", "blue", "green")


def sketch(shape: str, position: str, size: str = "large") -> tuple[Image.Image, np.ndarray]:
    """A hand-drawn-like outline on a white canvas, and the shape it outlines (filled) at 64x64."""
    return outline_of(make_object("red", shape, size, position))


def outline_of(obj: SceneObject) -> tuple[Image.Image, np.ndarray]:
    scene = make_scene([obj], "gray")
    filled = render(scene, CANVAS)[1][0].astype(np.uint8)
    lines = cv2.morphologyEx(filled, cv2.MORPH_GRADIENT, np.ones((BRUSH, BRUSH), np.uint8))
    drawing = Image.fromarray(np.where(lines > 0, 0, 255).astype(np.uint8)).convert("RGB")
    return drawing, render(scene, 64)[1][0]


def sketches(seed: int, anywhere: bool) -> list[tuple[str, SceneObject]]:
    """(shape, object) pairs to sketch: every shape at every named place, or (anywhere) at 15
    random centres and sizes a caption could not name."""
    if not anywhere:
        return [(shape, make_object("red", shape, "large", place)) for shape in SHAPES for place in POSITIONS]
    rng = random.Random(seed)
    cases = []
    for index in range(15):
        side = rng.uniform(0.3, 0.46)
        centre = (rng.uniform(side / 2, 1 - side / 2), rng.uniform(side / 2, 1 - side / 2))
        cases.append((SHAPES[index % len(SHAPES)], object_at("red", SHAPES[index % len(SHAPES)], side, centre)))
    return cases


def evaluate(registry: Registry, model: str, seeds: int, anywhere: bool = False) -> dict[str, dict[str, float]]:
    target = next(t for t in live_targets(registry, registry.catalogue.get(model).family.name) if t.model == model)
    renderer = LiveRenderer(registry)
    placed = {"ControlNet": 0, "scale 0 (no control)": 0}
    ious: dict[str, list[float]] = {name: [] for name in placed}
    cases = 0
    for seed in range(seeds):
        for index, (shape, obj) in enumerate(sketches(seed, anywhere)):
            colour = COLOURS[(index + seed) % len(COLOURS)]
            drawing, wanted = outline_of(obj)
            request = LiveRequest(target, f"a large {colour} {shape}, gray background", drawing, seed=seed)
            cases += 1
            for name, scale in (("ControlNet", 1.0), ("scale 0 (no control)", 0.0)):
                image = renderer.frame(replace(request, conditioning_scale=scale)).image
                blob = largest_blob(colour_mask(image, colour))
                where = centroid(blob)
                # Placed: the object's centre within a tenth of the canvas of the sketched one.
                placed[name] += where is not None and math.dist(where, obj.centre) <= 0.1
                ious[name].append(iou(blob, wanted))
    return {
        name: {"placed": placed[name] / cases, "median IoU": statistics.median(ious[name]), "images": cases}
        for name in placed
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="shapes-flux")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--anywhere", action="store_true", help="sketches at random places and sizes")
    args = parser.parse_args(argv)
    rates = evaluate(Registry(Catalogue.load()), args.model, args.seeds, args.anywhere)
    print("| model | control | images | placed at the sketch | median IoU with the sketched shape |")
    print("|---|---|---|---|---|")
    for name, value in rates.items():
        print(f"| {args.model} | {name} | {value['images']} | {value['placed']:.2f} | {value['median IoU']:.2f} |")


if __name__ == "__main__":
    main()
