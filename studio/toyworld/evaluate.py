"""Evaluate a shapes-world model on held-out prompts and print a table.

    python -m studio.toyworld.evaluate [--model shapes-flux] [--seeds 2] [--guidance 3]
    python -m studio.toyworld.evaluate --speeds      # each speed setting against off: × and measures
    python -m studio.toyworld.evaluate --compare shapes-flux:24 shapes-flux-sprint:1 shapes-flux-sprint:2
                                                     # models at step counts: measures and seconds
    python -m studio.toyworld.evaluate --text        # how the model reads its text (see read_text)

Single-object prompts use the (colour, shape, position) combinations held out of training; an
image counts when the object of the asked colour is there, at the asked position, of the asked
shape and size (measured from the image, see measure.py). Two-object prompts measure binding:
each colour at its own position.
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import random
import time
from pathlib import Path

import torch
from PIL import Image

from studio.catalogue import Catalogue
from studio.generation import GenerationSettings, call_arguments, encode_prompt_arguments, generate, guided
from studio.registry import Registry
from studio.speed import OFF, offered
from studio.toyworld.data import HELD_OUT
from studio.toyworld.grounding import t5_of
from studio.toyworld.measure import check_object, colour_mask
from studio.toyworld.scene import (
    BACKGROUNDS,
    COLOURS,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    make_object,
    make_scene,
    overlap,
)

ATTRIBUTES = ("colour", "position", "size", "shape")


def single_object_scenes() -> list[Scene]:
    return [
        make_scene([make_object(colour, shape, size, position)], background)
        for (colour, shape, position), size, background in itertools.product(sorted(HELD_OUT), SIZES, BACKGROUNDS)
    ]


def two_object_scenes(count: int, seed: int = 1) -> list[Scene]:
    """Two objects of different colours at two different named places, each named in the caption."""
    rng = random.Random(seed)
    scenes: list[Scene] = []
    while len(scenes) < count:
        places = rng.sample(list(POSITIONS), 2)
        colours = rng.sample(list(COLOURS), 2)
        objects = [
            make_object(colour, rng.choice(SHAPES), rng.choice(("medium", "large")), place)
            for colour, place in zip(colours, places)
        ]
        if overlap(*objects) <= 0.1:
            scenes.append(make_scene(objects, rng.choice(list(BACKGROUNDS))))
    return scenes


def evaluate(
    registry: Registry,
    model: str,
    scenes: list[Scene],
    seeds: int,
    guidance: float,
    steps: int,
    samples: list[Image.Image] | None = None,
    speed: str = OFF,
) -> dict:
    """Fractions of images that hold what was asked; `samples` collects the images made."""
    hits = {name: 0 for name in (*ATTRIBUTES, "all", "binding")}
    total = 0
    for scene in scenes:
        settings = GenerationSettings(
            model=model, prompt=scene.caption, steps=steps, guidance=guidance, width=64, height=64, seed=0, count=seeds,
            speed=speed,
        )  # fmt: skip
        for result in generate(registry, settings):
            if samples is not None:
                samples.append(result.image)
            checks = [check_object(result.image, obj) for obj in scene.objects]
            total += 1
            if len(scene.objects) == 1:
                for name in ATTRIBUTES:
                    hits[name] += checks[0][name]
                hits["all"] += all(checks[0].values())
            else:
                for name in ("colour", "position"):
                    hits[name] += all(c[name] for c in checks)
                hits["binding"] += all(c["colour"] and c["position"] for c in checks)
    return {name: value / total for name, value in hits.items()} | {"images": total}


def position_by_place(scenes: list[Scene], samples: list[Image.Image], seeds: int) -> dict[str, float]:
    """For single-object scenes and the images `evaluate` made of them (`seeds` each, in order):
    the fraction at the asked place, per named place (corners and sides learn at different rates)."""
    placed: dict[str, list[bool]] = {}
    for index, image in enumerate(samples):
        (obj,) = scenes[index // seeds].objects
        placed.setdefault(str(obj.position), []).append(check_object(image, obj)["position"])
    return {place: sum(hits) / len(hits) for place, hits in placed.items()}


def word_context(pipe, word: str, first: str, second: str) -> float:
    """Cosine between the T5 vectors of `word` in two captions where it describes different
    objects: near 1 when the encoder reads each word without its context, so that a transformer
    that gives text tokens no positions (FLUX, CogVideoX) sees a bag of words."""
    tokenizer, encoder = t5_of(pipe)
    vectors = []
    for caption in (first, second):
        ids = tokenizer(caption, return_tensors="pt").input_ids.to(encoder.device)
        with torch.no_grad():
            hidden = encoder(ids)[0][0]
        vectors.append(hidden[tokenizer.convert_ids_to_tokens(ids[0]).index("\u2581" + word)].float())
    return torch.cosine_similarity(vectors[0], vectors[1], dim=0).item()


# Caption pairs that differ in colour (and place): drawn with one's tokens and the other's pooled
# vector, the colour shows which of the two the model takes colour from.
COLOUR_SOURCE_PAIRS = (
    (make_object("red", "circle", "large", "left"), make_object("blue", "square", "large", "right")),
    (make_object("green", "triangle", "large", "top"), make_object("yellow", "circle", "large", "bottom")),
    (make_object("purple", "square", "large", "bottom left"), make_object("orange", "circle", "large", "top right")),
)


def colour_source(registry: Registry, model: str, seeds: int, guidance: float, steps: int) -> dict[str, float]:
    """Fractions of images (COLOUR_SOURCE_PAIRS, `seeds` each) drawn in the colour of the caption
    that gave the T5 tokens, of the one that gave the pooled vector, or of neither."""
    spec = registry.catalogue.get(model)
    counts = {"tokens": 0, "pooled": 0, "neither": 0}
    with registry.use(model) as pipe:
        accepted = inspect.signature(pipe.__call__).parameters
        for tokens_object, pooled_object in COLOUR_SOURCE_PAIRS:
            encoded = [
                encode_prompt_arguments(pipe, spec, make_scene([obj], "gray").caption, "", guided(spec, guidance))
                for obj in (tokens_object, pooled_object)
            ]
            mixed = {**encoded[0], "pooled_prompt_embeds": encoded[1]["pooled_prompt_embeds"]}
            for seed in range(seeds):
                settings = GenerationSettings(model=model, prompt="", steps=steps, guidance=guidance, width=64,
                                              height=64, seed=seed)  # fmt: skip
                arguments = call_arguments(pipe, spec, settings, None)
                arguments.update({name: None for name in ("prompt", "negative_prompt") if name in accepted})
                image = pipe(**arguments | mixed).images[0]
                token_pixels, pooled_pixels = (
                    colour_mask(image, o.colour).sum() for o in (tokens_object, pooled_object)
                )
                floor = 0.006 * image.width * image.height  # measure.MIN_OBJECT_FRACTION: a blob, not noise
                counts["tokens" if token_pixels > max(pooled_pixels, floor) else
                       "pooled" if pooled_pixels > max(token_pixels, floor) else "neither"] += 1  # fmt: skip
    total = sum(counts.values())
    return {name: count / total for name, count in counts.items()}


def read_text(registry: Registry, model: str, seeds: int, guidance: float, steps: int) -> None:
    """Print how the model reads its text: whether its T5 tells a word's object apart, and which
    part of the text (T5 tokens or pooled vector) its colours come from."""
    with registry.use(model) as pipe:
        same_red = word_context(pipe, "red", "a red circle on the left and a blue square on the right",
                                "a blue circle on the left and a red square on the right")  # fmt: skip
    source = colour_source(registry, model, seeds, guidance, steps)
    print(f"\nHow {model} reads its text\n")
    print("| “red” of the first object against “red” of the second (cosine) | colour from the T5 tokens | "
          "from the pooled vector | neither |")  # fmt: skip
    print("|---|---|---|---|")
    print(f"| {same_red:.3f} | {source['tokens']:.2f} | {source['pooled']:.2f} | {source['neither']:.2f} |")


MEASURES = ("colour", "position", "shape", "all", "binding")
# Images timed per speed setting, in turns.
TIMED_IMAGES = 24


def compare_speeds(registry: Registry, model: str, seeds: int, guidance: float, steps: int, pairs: int) -> None:
    """Each speed setting the model takes against none: seconds per image (timed in turns, one
    image of each setting after another, so a busy machine slows them alike) and the measures,
    with the largest loss (more than 0.05 of any measure is noted)."""
    speeds = offered(registry.catalogue.get(model))
    measures = {}
    for speed in speeds:
        single = evaluate(registry, model, single_object_scenes(), seeds, guidance, steps, speed=speed)
        double = evaluate(registry, model, two_object_scenes(pairs), seeds, guidance, steps, speed=speed)
        measures[speed] = single | {"binding": double["binding"]}
    timed = {speed: 0.0 for speed in speeds}
    for scene in single_object_scenes()[:TIMED_IMAGES]:
        for speed in speeds:
            settings = GenerationSettings(model=model, prompt=scene.caption, steps=steps, guidance=guidance, width=64,
                                          height=64, seed=0, speed=speed)  # fmt: skip
            started = time.perf_counter()
            list(generate(registry, settings))
            timed[speed] += (time.perf_counter() - started) / TIMED_IMAGES
    base = measures[OFF]
    print(f"\nSpeed settings on {model}, {steps} steps, guidance {guidance:g} (CPU, 64×64)\n")
    print("| speed | s / image | speed-up | " + " | ".join(MEASURES) + " | largest loss |")
    print("|---|---|---|" + "---|" * len(MEASURES) + "---|")
    for speed in speeds:
        loss = max(base[name] - measures[speed][name] for name in MEASURES)
        print(
            f"| {speed} | {timed[speed]:.3f} | ×{timed[OFF] / timed[speed]:.2f} | "
            + " | ".join(f"{measures[speed][name]:.2f}" for name in MEASURES)
            + f" | {max(loss, 0.0):.2f}{' (over 0.05)' if loss > 0.05 else ''} |"
        )


def compare_runs(registry: Registry, runs: list[tuple[str, int]], seeds: int, guidance: float, pairs: int) -> None:
    """Models at step counts (a teacher and its distilled student) on the same prompts: measures,
    seconds per image (timed in turns) and the speed-up over the first run."""
    measures = {}
    for model, steps in runs:
        single = evaluate(registry, model, single_object_scenes(), seeds, guidance, steps)
        double = evaluate(registry, model, two_object_scenes(pairs), seeds, guidance, steps)
        measures[model, steps] = single | {"binding": double["binding"]}
    timed = dict.fromkeys(runs, 0.0)
    for scene in single_object_scenes()[:TIMED_IMAGES]:
        for model, steps in runs:
            settings = GenerationSettings(model=model, prompt=scene.caption, steps=steps, guidance=guidance, width=64,
                                          height=64, seed=0)  # fmt: skip
            started = time.perf_counter()
            list(generate(registry, settings))
            timed[model, steps] += (time.perf_counter() - started) / TIMED_IMAGES
    first = runs[0]
    print(f"\nShapes world, held-out prompts, guidance {guidance:g} (CPU, 64×64)\n")
    print("| model | steps | s / image | speed-up | " + " | ".join(MEASURES) + " |")
    print("|---|---|---|---|" + "---|" * len(MEASURES))
    for run in runs:
        print(
            f"| {run[0]} | {run[1]} | {timed[run]:.3f} | ×{timed[first] / timed[run]:.1f} | "
            + " | ".join(f"{measures[run][name]:.2f}" for name in MEASURES)
            + " |"
        )


def save_grid(images: list[Image.Image], path: Path, columns: int = 12) -> None:
    width, height = images[0].size
    rows = -(-len(images) // columns)
    grid = Image.new("RGB", (columns * width, rows * height))
    for index, image in enumerate(images):
        grid.paste(image, ((index % columns) * width, (index // columns) * height))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="shapes-flux")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0, 3.0])
    parser.add_argument("--two-object-prompts", type=int, default=48)
    parser.add_argument("--grid", type=Path, default=None, help="save the single-object images as one PNG grid")
    parser.add_argument("--speeds", action="store_true", help="compare the speed settings (at the first guidance)")
    parser.add_argument(
        "--compare", nargs="+", default=None, metavar="MODEL:STEPS", help="models at step counts, side by side"
    )
    parser.add_argument("--text", action="store_true", help="how the model reads its text (at the first guidance)")
    args = parser.parse_args(argv)
    registry = Registry(Catalogue.load(), device="cpu")
    if args.text:
        read_text(registry, args.model, args.seeds, args.guidance[0], args.steps)
        return
    if args.compare:
        runs = [(model, int(steps)) for model, _, steps in (run.partition(":") for run in args.compare)]
        compare_runs(registry, runs, args.seeds, args.guidance[0], args.two_object_prompts)
        return
    if args.speeds:
        compare_speeds(registry, args.model, args.seeds, args.guidance[0], args.steps, args.two_object_prompts)
        return
    rows = []
    for guidance in args.guidance:
        samples: list[Image.Image] = []
        singles = single_object_scenes()
        single = evaluate(registry, args.model, singles, args.seeds, guidance, args.steps, samples)
        if args.grid:
            save_grid(samples, args.grid.with_name(f"{args.grid.stem}-cfg{guidance:g}{args.grid.suffix}"))
        double = evaluate(
            registry, args.model, two_object_scenes(args.two_object_prompts), args.seeds, guidance, args.steps
        )
        by_place = position_by_place(singles, samples, args.seeds)
        rows.append((guidance, single, double, by_place))
    print(f"\nShapes world evaluation: {args.model}, {args.steps} steps, held-out single-object prompts\n")
    print(
        "| CFG | colour | position | size | shape | all four | images "
        "|| two objects: both colours | both positions | binding | images |"
    )
    print("|---|---|---|---|---|---|---||---|---|---|---|")
    for guidance, single, double, _ in rows:
        print(
            f"| {guidance:g} | {single['colour']:.2f} | {single['position']:.2f} | {single['size']:.2f} | "
            f"{single['shape']:.2f} | {single['all']:.2f} | {single['images']} || {double['colour']:.2f} | "
            f"{double['position']:.2f} | {double['binding']:.2f} | {double['images']} |"
        )
    places = list(rows[0][3])
    print("\nPosition by asked place (single objects)\n")
    print("| CFG | " + " | ".join(places) + " |")
    print("|---|" + "---|" * len(places))
    for guidance, _, _, by_place in rows:
        print(f"| {guidance:g} | " + " | ".join(f"{by_place[place]:.2f}" for place in places) + " |")
    print(f"\nchance: shape 0.33, position {1 / len(POSITIONS):.2f}, colour {1 / len(COLOURS):.2f}")


if __name__ == "__main__":
    main()
