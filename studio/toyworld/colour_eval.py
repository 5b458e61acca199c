"""How well colour editing recolours a shapes-world object, against a plain prompt swap.

    python -m studio.toyworld.colour_eval [--model shapes-flux] [--seeds 2]

Each case draws a one-object scene from its caption, then asks for another colour. An edit
counts when the recoloured object keeps the source object's mask (IoU >= 0.9), takes the asked
hue (within 30 degrees) and the background stays (PSNR >= 30 dB outside the objects' masks
dilated by 2 pixels). An object's mask takes a rim pixel when it lies at least half-way from the
background's colour to the object's, so a perfect recolour scores IoU 1 whatever the two colours.
The plain swap samples the target prompt from the same noise, uncontrolled.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
from dataclasses import dataclass

import numpy as np
from PIL import Image

from studio import flow, metrics
from studio.catalogue import Catalogue
from studio.methods.colour import ColourEditSettings, colour_edit, recolour_prompt
from studio.registry import Registry
from studio.toyworld.measure import colour_mask, hue_distance, iou, largest_blob, mean_hue
from studio.toyworld.scene import BACKGROUNDS, COLOURS, make_object, make_scene

IOU_BAR = 0.9
HUE_BAR = 30.0
BACKGROUND_PSNR_BAR = 30.0
FOREGROUND_DISTANCE = 60.0


@dataclass(frozen=True)
class RecolourScore:
    iou: float
    hue_error: float
    background_psnr: float
    canny_ssim: float  # the paper's structure measure, whole image

    @property
    def success(self) -> bool:
        return self.iou >= IOU_BAR and self.hue_error <= HUE_BAR and self.background_psnr >= BACKGROUND_PSNR_BAR


def recolour_cases() -> list[tuple[str, str, str]]:
    """(source caption, object word, new colour): every shape, a spread of colours, positions
    and backgrounds."""
    cases = []
    colours = list(COLOURS)
    for index, (shape, position, background) in enumerate(
        itertools.product(("circle", "square", "triangle"), ("left", "centre", "right"), ("gray", "white"))
    ):
        colour, new = colours[index % len(colours)], colours[(index + 2) % len(colours)]
        scene = make_scene([make_object(colour, shape, "large", position)], background)
        cases.append((scene.caption, shape, new))
    return cases


def foreground(image: Image.Image, background: str) -> np.ndarray:
    """The object's pixels whatever its colour: where the image is at least half-way from the
    background's colour to the object's own (its median colour, over the largest region away from
    the background). An anti-aliased rim pixel counts by its coverage, not by how far the object's
    colour lies from the background: a fixed distance would count the rim of a colour close to the
    background (yellow on white) a pixel ring thinner than that of a distant one (green on white),
    and a perfect recolour would lose IoU to the edge alone."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    ground = np.array(BACKGROUNDS[background], dtype=np.float32)
    core = largest_blob(np.linalg.norm(pixels - ground, axis=-1) > FOREGROUND_DISTANCE)
    if not core.any():
        return core
    direction = np.median(pixels[core], axis=0) - ground
    coverage = (pixels - ground) @ direction / max(float(direction @ direction), 1e-6)
    return largest_blob(coverage >= 0.5)


def score(source: Image.Image, result: Image.Image, old: str, new: str, background: str) -> RecolourScore | None:
    """The recolour's measures, or None when the source lacks the object (nothing to recolour)."""
    if largest_blob(colour_mask(source, old)).sum() < 20:
        return None
    before, after = foreground(source, background), foreground(result, background)
    hue = mean_hue(result, after & colour_mask(result, new)) if (after & colour_mask(result, new)).any() else None
    target_hue = mean_hue(np.array([[COLOURS[new]]], dtype=np.uint8), np.ones((1, 1), bool))
    edited = metrics.dilate(before | after, 2)
    return RecolourScore(
        iou=iou(before, after),
        hue_error=180.0 if hue is None or target_hue is None else hue_distance(hue, target_hue),
        background_psnr=min(metrics.background_psnr(source, result, edited), 99.0),
        canny_ssim=metrics.canny_ssim(source, result),
    )


def caption_colour(caption: str, word: str) -> str:
    return caption.split(f" {word}")[0].split()[-1]


def caption_background(caption: str) -> str:
    return caption.rsplit(", ", 1)[1].removesuffix(" background")


def plain_swap(registry: Registry, settings: ColourEditSettings) -> Image.Image:
    spec = registry.catalogue.get(settings.model)
    with registry.use(spec.id) as pipe:
        guidance = flow.Guidance(spec.guidance, settings.guidance)
        size = (settings.width, settings.height)
        latents = flow.sample(pipe, spec.family, settings.target_prompt, guidance, spec.text_length, settings.seed,
                              size, settings.steps)  # fmt: skip
        return flow.decode(pipe, latents)[0]


def evaluate(registry: Registry, model: str, seeds: int, steps: int, guidance: float) -> dict[str, list[RecolourScore]]:
    scores: dict[str, list[RecolourScore]] = {"ColorCtrl": [], "prompt swap": []}
    for (caption, word, new), seed in itertools.product(recolour_cases(), range(seeds)):
        old, background = caption_colour(caption, word), caption_background(caption)
        settings = ColourEditSettings(
            model=model,
            source_prompt=caption,
            target_prompt=recolour_prompt(caption, word, new),
            word=word,
            steps=steps,
            guidance=guidance,
            seed=seed,
            width=64,
            height=64,
        )
        edit = colour_edit(registry, settings)
        edited = score(edit.source, edit.result, old, new, background)
        if edited is None:
            continue
        scores["ColorCtrl"].append(edited)
        swapped = score(edit.source, plain_swap(registry, settings), old, new, background)
        if swapped is not None:  # the same source as ColorCtrl's, which has the object
            scores["prompt swap"].append(swapped)
    return scores


def summary(scores: list[RecolourScore]) -> dict[str, float]:
    return {
        "success": sum(s.success for s in scores) / len(scores),
        "iou": statistics.median(s.iou for s in scores),
        "hue_error": statistics.median(s.hue_error for s in scores),
        "background_psnr": statistics.median(s.background_psnr for s in scores),
        "canny_ssim": statistics.median(s.canny_ssim for s in scores),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", help="default: shapes-flux and shapes-sd3")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=16)
    args = parser.parse_args(argv)
    registry = Registry(Catalogue.load())
    print(
        "| model | method | edits | success | median IoU | median hue error | median background PSNR "
        "| median Canny-SSIM |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for model in args.model or ["shapes-flux", "shapes-sd3"]:
        guidance = registry.catalogue.get(model).guidance_scale
        for method, scores in evaluate(registry, model, args.seeds, args.steps, guidance).items():
            s = summary(scores)
            print(
                f"| {model} | {method} | {len(scores)} | {s['success']:.2f} | {s['iou']:.3f} | "
                f"{s['hue_error']:.1f}° | {s['background_psnr']:.1f} dB | {s['canny_ssim']:.3f} |"
            )


if __name__ == "__main__":
    main()
