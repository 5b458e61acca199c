"""How often a layout method puts each shapes-world object in its box, against the global
caption alone on the same seeds.

    python -m studio.toyworld.layout_eval [--model shapes-flux] [--seeds 4]
    python -m studio.toyworld.layout_eval --method siamlayout [--grounding-fraction 1.0]

Each layout has two objects of different colours in two boxes; an image counts when the
largest blob of each colour has its centroid inside that object's box. Regional attention is
asked with position words in the captions (as the shapes world's captions have them);
SiamLayout without any (its branches were trained to take positions from the boxes alone), so
there the caption alone cannot know where the objects go.
"""

from __future__ import annotations

import argparse
import random
from dataclasses import replace

import numpy as np
from PIL import Image

from studio.catalogue import Catalogue
from studio.families import siamlayout
from studio.methods.layout import LayoutSettings, Region, regional_generate
from studio.registry import Registry
from studio.toyworld.measure import centroid, colour_mask, largest_blob
from studio.toyworld.scene import COLOURS, SHAPES

BOXES = {
    "left": (0.0, 0.15, 0.5, 0.85),
    "right": (0.5, 0.15, 1.0, 0.85),
    "top": (0.15, 0.0, 0.85, 0.5),
    "bottom": (0.15, 0.5, 0.85, 1.0),
}
PHRASES = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom"}
LAYOUTS = [
    (("red", "circle", "left"), ("blue", "square", "right")),
    (("green", "triangle", "top"), ("purple", "circle", "bottom")),
    (("yellow", "square", "right"), ("orange", "circle", "left")),
    (("blue", "circle", "bottom"), ("red", "square", "top")),
]


def layout_settings(
    model: str, seed: int, method: str = "regional", grounding_fraction: float = 0.3, size: int = 64
) -> list[tuple[LayoutSettings, list[tuple[str, tuple]]]]:
    """Each layout's settings and its (colour, box) pairs to check."""
    cases = []
    for objects in LAYOUTS:
        if method == "regional":
            phrases = [f"a large {colour} {shape} {PHRASES[where]}" for colour, shape, where in objects]
            regions = tuple(
                Region(f"{phrase}, gray background", BOXES[where]) for phrase, (_, _, where) in zip(phrases, objects)
            )
        else:
            phrases = [f"a large {colour} {shape}" for colour, shape, _ in objects]
            regions = tuple(Region(phrase, BOXES[where]) for phrase, (_, _, where) in zip(phrases, objects))
        settings = LayoutSettings(
            model=model,
            caption=" and ".join(phrases) + ", gray background",
            regions=regions,
            steps=16,
            guidance=3.0,
            seed=seed,
            width=size,
            height=size,
            inject_steps=8,
            base_ratio=0.2,
            method=method,
            grounding_fraction=grounding_fraction,
        )
        cases.append((settings, [(colour, BOXES[where]) for colour, _, where in objects]))
    return cases


def anywhere_layouts(count: int, seed: int) -> list[list[tuple[str, str, tuple[float, float, float, float]]]]:
    """Layouts of two or three boxes at places no caption names (corners, thirds, off-centre),
    each (colour, shape, box) with a different colour, boxes apart."""
    rng = random.Random(seed)
    layouts: list[list[tuple[str, str, tuple[float, float, float, float]]]] = []
    while len(layouts) < count:
        side = rng.choice((0.3, 0.36, 0.42))
        boxes: list[tuple[float, float, float, float]] = []
        for _ in range(rng.choice((2, 3))):
            for _attempt in range(50):
                x, y = rng.uniform(0.02, 0.98 - side), rng.uniform(0.02, 0.98 - side)
                box = (x, y, x + side, y + side)
                if all(box[2] <= b[0] or b[2] <= box[0] or box[3] <= b[1] or b[3] <= box[1] for b in boxes):
                    boxes.append(box)
                    break
        if len(boxes) < 2:
            continue
        colours = rng.sample(list(COLOURS), len(boxes))
        layouts.append([(colour, rng.choice(SHAPES), box) for colour, box in zip(colours, boxes)])
    return layouts


def anywhere_settings(
    model: str, seed: int, method: str, grounding_fraction: float, size: int = 64, count: int = 12
) -> list:
    """The anywhere layouts as settings: captions name colours and shapes only, the boxes the places."""
    cases = []
    for objects in anywhere_layouts(count, seed=100 + seed):
        phrases = [f"a large {colour} {shape}" for colour, shape, _ in objects]
        regions = tuple(Region(f"{phrase}, gray background", box) for phrase, (_, _, box) in zip(phrases, objects))
        settings = LayoutSettings(
            model=model, caption=" and ".join(phrases) + ", gray background", regions=regions, steps=16,
            guidance=3.0, seed=seed, width=size, height=size, method=method, grounding_fraction=grounding_fraction,
        )  # fmt: skip
        cases.append((settings, [(colour, box) for colour, _, box in objects]))
    return cases


def share_in_box(image: Image.Image, colour: str, box: tuple[float, float, float, float]) -> float:
    """The share of the colour's pixels (its largest blob) that lie inside the box."""
    blob = largest_blob(colour_mask(image, colour))
    if blob.sum() < 20:
        return 0.0
    height, width = blob.shape
    ys, xs = (np.arange(height) + 0.5) / height, (np.arange(width) + 0.5) / width
    inside = ((ys >= box[1]) & (ys <= box[3]))[:, None] & ((xs >= box[0]) & (xs <= box[2]))[None, :]
    return float((blob & inside).sum() / blob.sum())


def in_box(image: Image.Image, colour: str, box: tuple[float, float, float, float]) -> bool:
    blob = largest_blob(colour_mask(image, colour))
    where = centroid(blob)
    if blob.sum() < 20 or where is None:
        return False
    x, y = where
    return box[0] <= x <= box[2] and box[1] <= y <= box[3]


def placement_rates(
    registry: Registry,
    model: str,
    seeds: int,
    method: str = "regional",
    grounding_fraction: float = 0.3,
    anywhere: bool = False,
    size: int = 64,
) -> dict[str, float]:
    """Fraction of layouts with every object's centroid in its box, and (strict) with at least
    70% of each object inside it: the method, and the global caption alone (no masked steps, or no
    grounding steps) from the same noise. `anywhere`: boxes at places no caption names; `size`:
    the canvas side in pixels (more image tokens a box at a larger size)."""
    hits = {method: 0, "global caption only": 0, f"{method} (strict)": 0, "global caption only (strict)": 0}
    total = 0
    for seed in range(seeds):
        cases = (anywhere_settings if anywhere else layout_settings)(model, seed, method, grounding_fraction, size)
        for settings, checks in cases:
            total += 1
            alone = replace(settings, inject_steps=0, grounding_fraction=0.0)
            for name, variant in ((method, settings), ("global caption only", alone)):
                image = regional_generate(registry, variant).image
                hits[name] += all(in_box(image, colour, box) for colour, box in checks)
                hits[f"{name} (strict)"] += all(share_in_box(image, colour, box) >= 0.7 for colour, box in checks)
    return {name: count / total for name, count in hits.items()} | {"images": total}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", help="default: shapes-flux and shapes-sd3")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--method", choices=["regional", "siamlayout"], default="regional")
    parser.add_argument("--anywhere", action="store_true", help="boxes at places no caption names (2 or 3)")
    parser.add_argument("--size", type=int, default=64, help="canvas side in pixels")
    parser.add_argument(
        "--grounding-fraction",
        type=float,
        default=None,
        help="SiamLayout: the share of the steps its branches act in (default: the model's own)",
    )
    args = parser.parse_args(argv)
    registry = Registry(Catalogue.load())
    print(f"| model | layouts | {args.method} | strict | global caption only | strict |\n|---|---|---|---|---|---|")
    default = ["shapes-flux", "shapes-sd3"] if args.method == "regional" else ["shapes-sd3-siamlayout"]
    for model in args.model or default:
        grounding = args.grounding_fraction
        if grounding is None:
            grounding = siamlayout.default_grounding(registry.catalogue.get(model))
        rates = placement_rates(registry, model, args.seeds, args.method, grounding, args.anywhere, args.size)
        print(f"| {model} | {rates['images']} | {rates[args.method]:.2f} | {rates[f'{args.method} (strict)']:.2f} "
              f"| {rates['global caption only']:.2f} | {rates['global caption only (strict)']:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
