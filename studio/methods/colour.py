"""ColorCtrl (Yin et al., arXiv 2508.09131): training-free colour editing on MM-DiTs.

Two branches start from the same latents (a seed's noise, or an inverted image): the source
prompt, then the target prompt. The source pass runs once and leaves, per step and layer, its
queries, keys and values, and the attention of image queries to the edited word. On the target
pass, in every joint block (SD3) or single-stream block (FLUX) and at every step:

1. structure: the source's image→image attention map replaces the target's (text rows and
   columns stay the target's);
2. mask: the source's attention from image tokens to the edited word, averaged over heads,
   layers and steps, min-max normalised and thresholded at ε (0.1);
3. colour preservation: outside the mask the target's image value tokens are the source's;
4. word-level intensity: the pre-softmax scores from the new colour word's tokens to the image
   tokens are multiplied by the intensity.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

import numpy as np
import torch
from diffusers import DiffusionPipeline
from PIL import Image

from studio import flow
from studio.attention import (
    AttentionController,
    AttentionEdit,
    BranchCache,
    CaptureBranch,
    CopyImageMap,
    RecordAttention,
    ReplaceImageValues,
    Rows,
    ScaleTokenScores,
    controlled,
    joint_layers,
)
from studio.attention.tokens import word_spans, word_token_indices
from studio.catalogue import ModelSpec
from studio.errors import InvalidRequest
from studio.generation import validate_sampling
from studio.inversion import invert_image
from studio.params import SamplingSettings, StepCallback, StepReporter, prompt_text, redefault, setting
from studio.registry import Registry
from studio.runner import Method, register

MASK_THRESHOLD = 0.1
SOURCE_CACHE_LIMIT_BYTES = 4 * 2**30
# Named colours a recolour can ask for, with an sRGB value for the colour picker's nearest match.
COLOUR_NAMES: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (235, 210, 40),
    "green": (40, 170, 60),
    "cyan": (40, 200, 210),
    "blue": (40, 80, 220),
    "purple": (140, 50, 180),
    "pink": (240, 130, 180),
    "brown": (130, 80, 40),
    "black": (20, 20, 20),
    "white": (245, 245, 245),
    "gray": (128, 128, 128),
    "grey": (128, 128, 128),
    "gold": (212, 175, 55),
    "silver": (192, 192, 192),
}


@dataclass(frozen=True, kw_only=True)
class ColourEditSettings(SamplingSettings):
    source_prompt: str
    target_prompt: str
    word: str  # the edited object's word in the source prompt: its attention makes the mask
    intensity: float = setting("Intensity of the new colour word", 1.0, 0.2, 3.0, 0.05)
    steps: int = redefault("steps", 28)
    guidance: float = redefault("guidance", 7.0)
    seed: int = redefault("seed", 42)
    threshold: float = setting("Mask threshold ε", MASK_THRESHOLD, 0.0, 0.9, 0.01)
    # >0 when the source is an uploaded image (FireFlow inversion)
    inversion_steps: int = setting("Inversion steps", 0, 0, 100, 1)


@dataclass
class ColourEdit:
    source: Image.Image  # the source branch: the generated (or reconstructed) image
    result: Image.Image
    mask: np.ndarray  # bool [height, width]: where the target keeps its own colour
    settings: ColourEditSettings
    seconds: float
    source_cached: bool  # False: the source ran again beside the target (too big to cache)


def colour_name(colour: str) -> str:
    """A colour word from a name or a picker's value ("#3050dc", "rgb(48, 80, 220)")."""
    colour = colour.strip().lower()
    if colour in COLOUR_NAMES:
        return colour
    try:
        if colour.startswith("#") and len(colour) == 7:
            rgb = tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))
        elif colour.startswith("rgb"):
            rgb = tuple(round(float(part)) for part in colour[colour.index("(") + 1 : colour.index(")")].split(",")[:3])
        else:
            raise ValueError(colour)
    except ValueError:
        raise InvalidRequest(
            f"{colour!r} is not a colour: give a name ({', '.join(COLOUR_NAMES)}) or #rrggbb."
        ) from None
    return min(COLOUR_NAMES, key=lambda name: sum((a - b) ** 2 for a, b in zip(COLOUR_NAMES[name], rgb)))


def colour_before(prompt: str, word: str) -> tuple[list[str], int | None]:
    """The words of `prompt` up to `word`'s first occurrence, and the index among them of a colour
    within the two words before it (None if there is none)."""
    spans = word_spans(prompt, word)
    if not spans:
        raise InvalidRequest(f"The word {word!r} is not in the source prompt.")
    before = prompt[: spans[0][0]].rstrip().split(" ")
    for back in (1, 2):
        if len(before) >= back and before[-back].lower().strip(",") in COLOUR_NAMES:
            return before, len(before) - back
    return before, None


def recolour_prompt(source_prompt: str, word: str, colour: str) -> str:
    """The source prompt with `word`'s colour set to `colour`: a colour among the two words
    before it is replaced, otherwise the colour goes in front of the word."""
    colour = colour_name(colour)
    before, index = colour_before(source_prompt, word)
    start = word_spans(source_prompt, word)[0][0]
    if index is None:
        return source_prompt[:start] + colour + " " + source_prompt[start:]
    old = before[index]
    before[index] = colour + old[len(old.rstrip(",")) :]  # keep the punctuation after it
    return " ".join(before) + " " + source_prompt[start:]


def mask_words(source_prompt: str, word: str) -> list[str]:
    """The phrase being recoloured: the object word and the colour word qualifying it, if any
    (in small models the colour word's attention is often the better localised of the two)."""
    before, index = colour_before(source_prompt, word)
    return [word] if index is None else [before[index].strip(","), word]


def intensity_words(source_prompt: str, target_prompt: str, word: str) -> list[str]:
    """The words the target adds (its new colour); the edited word itself when it adds none."""
    source_words = {w.strip(",.").lower() for w in source_prompt.split()}
    added = [w.strip(",.") for w in target_prompt.split() if w.strip(",.").lower() not in source_words]
    return added or [word]


def validate(settings: ColourEditSettings, spec: ModelSpec) -> ColourEditSettings:
    if spec.flow is None or spec.family.token_order not in ("text-image", "image-text"):
        what = "a distilled one-step student" if spec.family.flow is not None else spec.family.label
        raise InvalidRequest(
            f"Colour editing needs an SD3 or FLUX model that samples as a flow; {spec.name} is {what}."
        )
    source, target = (
        prompt_text(settings.source_prompt, "a source prompt"),
        prompt_text(settings.target_prompt, "a target prompt"),
    )
    if not isinstance(settings.word, str) or not settings.word.strip():
        raise InvalidRequest("Name the object to recolour (a word of the source prompt).")
    return replace(
        validate_sampling(settings, spec), source_prompt=source, target_prompt=target, word=settings.word.strip()
    )


def edited_layers(transformer: torch.nn.Module, spec: ModelSpec) -> set[str]:
    """The paper's layers: FLUX's single-stream blocks, every joint block of SD3."""
    return set(joint_layers(transformer, "single" if spec.family.token_order == "text-image" else "all"))


def target_edits(
    source: BranchCache,
    keep: torch.Tensor,
    layers: set[str],
    intensity_tokens: list[int],
    intensity: float,
    target_rows: Rows,
    conditional_rows: Rows,
) -> list[AttentionEdit]:
    """ColorCtrl's target branch (in `target_rows`): structure from the source's image→image maps,
    the source's image values outside `keep`, the new colour word's scores to the image scaled by
    `intensity` (in the conditional rows only: the negative prompt has no such word)."""
    return [
        CopyImageMap(source=source, layers=layers, rows=target_rows),
        ReplaceImageValues(source=source, keep=keep, layers=layers, rows=target_rows),
        ScaleTokenScores(tokens=intensity_tokens, factor=intensity, rows=conditional_rows, layers=layers),
    ]


def source_cache_bytes(width: int, itemsize: int, layers: int, steps: int, rows: int, tokens: int) -> int:
    """Memory to keep the source's q, k, v (`width` features each) of every edited layer and step."""
    return 3 * layers * steps * rows * tokens * width * itemsize


@dataclass
class Sampler:
    """One edit's sampling: the same start, schedule, solver and edited layers for every branch."""

    pipe: DiffusionPipeline
    token_order: str
    start: torch.Tensor
    sigmas: list[float]
    solver: str
    layers: set[str]
    step: Callable[[int], None]

    def run(self, model: flow.FlowModel, latents: torch.Tensor, edits: list[AttentionEdit]) -> torch.Tensor:
        controller = AttentionController(edits)
        with controlled(self.pipe.transformer, controller, self.token_order):
            return flow.integrate(
                model.velocity, latents, self.sigmas, self.solver, before_step=controller.set_step, after_step=self.step
            )[-1]


def token_indices(pipe: DiffusionPipeline, spec: ModelSpec, prompt: str, words: list[str]) -> list[int]:
    return sorted(
        {index for word in words for index in word_token_indices(pipe, spec.family, prompt, word, spec.text_length)}
    )


def sampler_for(
    pipe: DiffusionPipeline,
    spec: ModelSpec,
    settings: ColourEditSettings,
    image: Image.Image | None,
    step: Callable[[int], None],
) -> Sampler:
    """The pipeline's own sampler from the seed's noise, or FireFlow from the inverted image."""
    if image is None:
        solver = "euler"
        start = flow.initial_noise(pipe, settings.seed, settings.width, settings.height).to(pipe.transformer.device)
    else:
        solver = "fireflow"
        inversion = invert_image(
            pipe,
            spec.family,
            image,
            settings.source_prompt,
            settings.inversion_steps,
            settings.width,
            settings.height,
            spec.text_length,
            solver,
            after_step=step,
        )
        start = inversion.noise
    sigmas = flow.schedule(pipe, spec.family, settings.steps, *start.shape[-2:])
    layers = edited_layers(pipe.transformer, spec)
    return Sampler(pipe, spec.family.token_order, start, sigmas, solver, layers, step)


def source_fits(sampler: Sampler, spec: ModelSpec, rows: int, steps: int, limit_bytes: int) -> bool:
    """Whether the source's q, k, v of a whole run fit in `limit_bytes`."""
    pipe, config = sampler.pipe, sampler.pipe.transformer.config
    text_tokens = sum(segment.length for segment in spec.family.text_segments(pipe, spec.text_length))
    image_tokens = sampler.start.shape[-2] * sampler.start.shape[-1] // 4
    width = config.num_attention_heads * config.attention_head_dim
    itemsize = pipe.transformer.dtype.itemsize
    needed = source_cache_bytes(width, itemsize, len(sampler.layers), steps, rows, image_tokens + text_tokens)
    return needed <= limit_bytes


def edit_mask(record: RecordAttention, threshold: float) -> torch.Tensor:
    """The source's attention to the edited words (conditional row), min-max normalised, above ε."""
    attention = record.mean_map(row=-1)
    attention = (attention - attention.min()) / (attention.max() - attention.min()).clamp_min(1e-12)
    return attention > threshold


def target_pass(
    sampler: Sampler,
    source: flow.FlowModel,
    target: flow.FlowModel,
    cache: BranchCache,
    edits: Callable[[Rows, Rows], list[AttentionEdit]],
    cached: bool,
) -> torch.Tensor:
    """The target branch steered by the source: from the cache, or (`cached` False) with the
    source run again in the same batch, rows alternating source, target."""
    doubles = target.guidance.doubles_batch
    if cached:
        conditional = slice(len(target.text) // 2, None) if doubles else None
        return sampler.run(target, sampler.start, edits(None, conditional))
    pair = source.beside(target)
    rows = len(pair.text)
    source_rows, target_rows = pair.alternating_rows()
    # Beside the source, the new colour's scores are scaled in the target's rows only: the source
    # branch must stay the source (and with CFG, only the target's conditional row has the word).
    conditional_rows = [row for row in target_rows if row >= rows // 2] if doubles else target_rows
    capture = CaptureBranch(cache=cache, layers=sampler.layers, rows=source_rows)
    both = torch.cat([sampler.start, sampler.start])
    return sampler.run(pair, both, [capture, *edits(target_rows, conditional_rows)])[1:]


def colour_edit(
    registry: Registry,
    settings: ColourEditSettings,
    image: Image.Image | None = None,
    on_step: StepCallback | None = None,
    cancel: threading.Event | None = None,
    cache_limit_bytes: int = SOURCE_CACHE_LIMIT_BYTES,
) -> ColourEdit:
    """Recolour `settings.word`'s object: generated from the seed, or in `image` (inverted under
    the source prompt with `settings.inversion_steps` FireFlow steps).

    The source's q, k, v are cached for the target pass when a whole run's worth fits in
    `cache_limit_bytes` (for full-size models at 1024² it is tens of GB); otherwise the source is
    recomputed beside the target in one batch, which gives the same result for one more pass."""
    spec = registry.catalogue.get(settings.model)
    settings = validate(settings, spec)
    if image is not None and settings.inversion_steps < 1:
        settings = replace(settings, inversion_steps=settings.steps)
    started = time.perf_counter()
    inversion_steps = settings.inversion_steps if image is not None else 0
    reporter = StepReporter(2 * settings.steps + inversion_steps, on_step, cancel)
    step = reporter.step
    with registry.use(spec.id, "t2i") as pipe:
        reporter.begin()
        guidance = flow.Guidance(spec.guidance, settings.guidance)
        source = flow.FlowModel(pipe, spec.family, [settings.source_prompt], guidance, spec.text_length)
        target = flow.FlowModel(pipe, spec.family, [settings.target_prompt], guidance, spec.text_length)
        word_tokens = token_indices(
            pipe, spec, settings.source_prompt, mask_words(settings.source_prompt, settings.word)
        )
        added = intensity_words(settings.source_prompt, settings.target_prompt, settings.word)
        intensity_tokens = token_indices(pipe, spec, settings.target_prompt, added)
        sampler = sampler_for(pipe, spec, settings, image, step)
        kept = source_fits(sampler, spec, len(source.text), settings.steps, cache_limit_bytes)
        # The source pass records its attention to the edited words (and keeps its q, k, v when
        # a whole run's worth fits in memory).
        cache = BranchCache(history=kept)
        record = RecordAttention(keys=word_tokens, layers=sampler.layers)
        captures = [CaptureBranch(cache=cache, layers=sampler.layers)] if kept else []
        source_latents = sampler.run(source, sampler.start, [record, *captures])
        keep = edit_mask(record, settings.threshold)

        edits = partial(target_edits, cache, keep, sampler.layers, intensity_tokens, settings.intensity)
        target_latents = target_pass(sampler, source, target, cache, edits, kept)
        source_image, result_image = flow.decode(pipe, torch.cat([source_latents, target_latents]))
    grid = (sampler.start.shape[-2] // 2, sampler.start.shape[-1] // 2)  # one image token per 2x2 latent patch
    return ColourEdit(
        source=source_image,
        result=result_image,
        mask=upsample(keep.view(grid).cpu().numpy(), settings.width, settings.height),
        settings=settings,
        seconds=time.perf_counter() - started,
        source_cached=kept,
    )


def upsample(grid: np.ndarray, width: int, height: int) -> np.ndarray:
    """A token-grid map at pixel size (nearest neighbour, so a mask stays a mask)."""
    rows = np.arange(height) * grid.shape[0] // height
    columns = np.arange(width) * grid.shape[1] // width
    return grid[rows][:, columns]


register(
    Method(
        "colour_edit",
        ColourEditSettings,
        lambda registry, settings, inputs, on_step, cancel: colour_edit(
            registry, settings, inputs.get("image"), on_step, cancel
        ),
        "recolour one object (ColorCtrl): the word's object takes the target prompt's colour, the rest is kept",
        {"image": "an image to edit (inverted); without it the source is generated from the source prompt"},
        pictures=lambda edit: [edit.result],
    )
)
