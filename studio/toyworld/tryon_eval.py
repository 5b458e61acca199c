"""How well the try-on dresses a dress-up person in a garment it never saw, against inpainting
from the prompt alone.

    python -m studio.toyworld.tryon_eval [--pairs 24] [--model dressup-flux-fill]

Each pair is a person of the world wearing a top and a garment (a top) whose colour and pattern
were never paired in training (`dressup.HELD_OUT`). The try-on runs as the tab runs it: the
built-in parser's automatic mask, the in-context prompt, the model's defaults. A pair counts when
the generated top (read inside the person's torso) takes the garment's hue (within 30 degrees)
and pattern (`dressup.pattern_of`); the head and the background are compared with the photo
(PSNR, dB; the paste-back keeps what the mask leaves bit for bit). The baseline is the same
model with the garment panel left blank and the garment described in the prompt.
"""

from __future__ import annotations

import argparse
import colorsys
import random
import statistics
from dataclasses import dataclass

import numpy as np

from studio import metrics
from studio.catalogue import Catalogue
from studio.methods.tryon import TryOnSettings, try_on
from studio.registry import Registry
from studio.toyworld import dressup
from studio.toyworld.measure import hue_distance
from studio.toyworld.scene import COLOURS

HUE_BAR = 30.0
PSNR_BAR = 30.0
MODEL = "dressup-flux-fill"


@dataclass(frozen=True)
class Pair:
    person: dressup.Person
    garment: dressup.Garment


@dataclass(frozen=True)
class PairScore:
    hue_ok: bool
    pattern_ok: bool
    head_psnr: float
    background_psnr: float

    @property
    def success(self) -> bool:
        return self.hue_ok and self.pattern_ok


def pairs(count: int, seed: int = 2024) -> list[Pair]:
    """People as in training, each given a held-out top of another colour than their own."""
    rng = random.Random(seed)
    made: list[Pair] = []
    while len(made) < count:
        person = dressup.random_person(rng, dress=0.0)
        garment = dressup.random_garment(rng, "upper", held_out=True)
        if person.upper is not None and person.upper.colour != garment.colour:
            made.append(Pair(person, garment))
    return made


def colour_hue(name: str) -> float:
    return colorsys.rgb_to_hsv(*(v / 255 for v in COLOURS[name]))[0] * 360


def score(pair: Pair, result: np.ndarray) -> PairScore:
    original, labels = dressup.render_person(pair.person)
    before = np.asarray(original)
    x1, y1, x2, y2 = dressup.torso_box(pair.person)
    patch = result[y1:y2, x1:x2]
    hue = dressup.garment_hue(patch)
    hx1, hy1, hx2, hy2 = dressup.head_box(pair.person)
    head = np.zeros(labels.shape, dtype=bool)
    head[hy1:hy2, hx1:hx2] = True
    return PairScore(
        hue_ok=hue is not None and hue_distance(hue, colour_hue(pair.garment.colour)) <= HUE_BAR,
        pattern_ok=dressup.pattern_of(patch) == pair.garment.pattern,
        head_psnr=metrics.psnr(before, result, head),
        background_psnr=metrics.psnr(before, result, labels == 0),
    )


def run_pair(registry: Registry, model: str, pair: Pair, seed: int, baseline: bool) -> PairScore:
    spec = registry.catalogue.get(model)
    person, _ = dressup.render_person(pair.person)
    settings = TryOnSettings(
        model=model, kind="upper", steps=spec.steps, guidance=spec.guidance_scale, width=spec.width,
        height=spec.height, seed=seed, description=pair.garment.phrase() if baseline else "", without_garment=baseline,
    )  # fmt: skip
    garment = dressup.render_garment(pair.garment)
    made = try_on(registry, settings, person, None if baseline else garment, None)
    return score(pair, np.asarray(made.image))


def summary(scores: list[PairScore]) -> dict[str, float]:
    return {
        "success": statistics.mean(s.success for s in scores),
        "hue": statistics.mean(s.hue_ok for s in scores),
        "pattern": statistics.mean(s.pattern_ok for s in scores),
        "head_psnr": statistics.median(min(s.head_psnr, 99.0) for s in scores),
        "background_psnr": statistics.median(min(s.background_psnr, 99.0) for s in scores),
    }


def evaluate(registry: Registry, model: str, count: int) -> dict[str, dict[str, float]]:
    cases = pairs(count)
    return {
        name: summary([run_pair(registry, model, pair, seed, baseline) for seed, pair in enumerate(cases)])
        for name, baseline in (("try-on (garment panel)", False), ("prompt alone (baseline)", True))
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--pairs", type=int, default=24)
    args = parser.parse_args(argv)
    registry = Registry(Catalogue.load(), offline_only=True)
    table = evaluate(registry, args.model, args.pairs)
    print(f"| {args.pairs} held-out pairs | success | hue ≤ {HUE_BAR:.0f}° | pattern | head PSNR | background PSNR |")
    print("|---|---|---|---|---|---|")
    for name, row in table.items():
        print(
            f"| {name} | {row['success']:.2f} | {row['hue']:.2f} | {row['pattern']:.2f} | "
            f"{row['head_psnr']:.1f} dB | {row['background_psnr']:.1f} dB |"
        )


if __name__ == "__main__":
    main()
