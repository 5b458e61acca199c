"""Text-to-image generation through the registry: one code path for every family.

The pipeline's own signature decides which arguments it receives, so families differ only in
catalogue data (guidance kind, sequence length, extra call arguments), never in code here.
"""

from __future__ import annotations

import inspect
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, replace
from typing import Any, TypeVar

import torch
from diffusers import DiffusionPipeline
from PIL import Image

from studio.catalogue import KIND_USES, ModelSpec
from studio.errors import InvalidRequest
from studio.params import MAX_SEED, SamplingSettings, StepCallback, StepReporter, checked, prompt_text, setting
from studio.previews import Preview, Previewer, with_previews
from studio.registry import Registry
from studio.runner import Method, register
from studio.speed import OFF, cached, chosen, compile_chosen, compiled

S = TypeVar("S", bound=SamplingSettings)

MAX_IMAGES = 8
ASPECT_RATIOS = {"1:1": 1.0, "4:3": 4 / 3, "3:4": 3 / 4, "3:2": 3 / 2, "2:3": 2 / 3, "16:9": 16 / 9, "9:16": 9 / 16}


@dataclass(frozen=True, kw_only=True)
class GenerationSettings(SamplingSettings):
    prompt: str
    negative_prompt: str = ""
    count: int = setting("Images", 1, 1, MAX_IMAGES, 1)
    # diffusers' cache hooks for the run (`speed.SPEEDS`), where they fit it.
    speed: str = OFF
    # torch.compile of the transformer's repeated blocks for the run, where it fits it.
    compiled: bool = False
    # Previews while an image forms (what a tab shows; 0 for API clients and methods).
    preview_every: int = setting("Preview every", 0, 0, 100, 1, info="steps between previews (0: none)")
    # LoRA adapters registered with the registry, as (name, scale) pairs.
    adapters: tuple[tuple[str, float], ...] = ()

    @classmethod
    def sampled_as(cls, settings: SamplingSettings, prompt: str, **changes: Any) -> GenerationSettings:
        """A plain generation that samples as another method's settings do (its model, steps,
        guidance, size and seed), for a method that calls the pipeline itself."""
        shared = {item.name: getattr(settings, item.name) for item in fields(SamplingSettings)}
        return cls(**(shared | changes), prompt=prompt)


@dataclass(frozen=True)
class GeneratedImage:
    image: Image.Image
    # The settings that remake exactly this image: its own seed, a count of one, the speed it ran with.
    settings: GenerationSettings
    seconds: float
    # What the run changed of the request, and why (a speed setting it went without).
    notes: tuple[str, ...] = ()


def snap(value: float, multiple: int) -> int:
    return max(multiple, round(value / multiple) * multiple)


def size_for_aspect(spec: ModelSpec, ratio: str) -> tuple[int, int]:
    """The model's default pixel area at the given aspect ratio, snapped to its size multiple."""
    area = spec.width * spec.height
    aspect = ASPECT_RATIOS[ratio]
    return snap(math.sqrt(area * aspect), spec.size_multiple), snap(math.sqrt(area / aspect), spec.size_multiple)


def model_sampling(spec: ModelSpec) -> dict[str, Any]:
    """A model's own sampling (steps, guidance, size): what a request that names none gets."""
    return {"steps": spec.steps, "guidance": spec.guidance_scale, "width": spec.width, "height": spec.height}


def validate(settings: GenerationSettings, spec: ModelSpec) -> GenerationSettings:
    """The settings made safe to run, or InvalidRequest saying what is wrong."""
    if spec.kind != "image":
        raise InvalidRequest(f"{spec.name} {KIND_USES[spec.kind]}.")
    prompt = prompt_text(settings.prompt)
    negative = prompt_text(settings.negative_prompt, "a negative prompt") if settings.negative_prompt else ""
    return replace(
        validate_sampling(settings, spec),
        prompt=prompt,
        negative_prompt=negative if spec.accepts_negative_prompt else "",
    )


def validate_sampling(settings: S, spec: ModelSpec) -> S:
    """Any method's settings with every declared setting in its range (`params.checked`), then
    fitted to the model: at most its steps, sizes snapped to its multiple, guidance 0 where it
    has none."""
    # The model's own ceiling is the one to name (a one-step model takes 1 to 4, not 1 to 100).
    if isinstance(settings.steps, (int, float)) and not 1 <= settings.steps <= spec.max_steps:
        raise InvalidRequest(f"Steps must be between 1 and {spec.max_steps} for {spec.name}.")
    settings = checked(settings)
    if min(settings.width, settings.height) < spec.size_multiple:
        raise InvalidRequest(f"Width and height must be at least {spec.size_multiple} pixels for {spec.name}.")
    return replace(
        settings,
        guidance=0.0 if spec.guidance == "none" else settings.guidance,
        width=snap(settings.width, spec.size_multiple),
        height=snap(settings.height, spec.size_multiple),
    )


def call_arguments(
    pipe: DiffusionPipeline,
    spec: ModelSpec,
    settings: GenerationSettings,
    on_step: Callable[[int], None] | None,
    watch: Callable[[int, torch.Tensor], None] | None = None,
) -> dict[str, Any]:
    """Keyword arguments for one image: the pipeline's signature decides what it is given.
    `on_step(done)` after each step; `watch(done, latents)` too, with the step's latents."""
    accepted = inspect.signature(pipe.__call__).parameters
    arguments: dict[str, Any] = dict(
        prompt=settings.prompt,
        num_inference_steps=settings.steps,
        width=settings.width,
        height=settings.height,
        generator=torch.Generator("cpu").manual_seed(settings.seed),
    )
    if spec.guidance == "true-cfg":
        arguments.update(true_cfg_scale=max(settings.guidance, 1.0), negative_prompt=settings.negative_prompt)
    else:
        arguments["guidance_scale"] = settings.guidance
        if spec.guidance == "cfg" and settings.negative_prompt:
            arguments["negative_prompt"] = settings.negative_prompt
    if spec.max_sequence_length and "max_sequence_length" in accepted:
        arguments["max_sequence_length"] = spec.max_sequence_length
    arguments.update(spec.call_for(settings.steps))
    if on_step is not None or watch is not None:

        def after_step(index: int, latents: torch.Tensor) -> None:
            if on_step is not None:
                on_step(index + 1)
            if watch is not None:
                watch(index + 1, latents)

        if "callback_on_step_end" in accepted:

            def step_end(_pipe, index, _timestep, tensors):
                after_step(index, tensors["latents"])
                return tensors

            arguments["callback_on_step_end"] = step_end
        elif "callback" in accepted:  # PixArt still has the older per-step callback
            arguments.update(callback=lambda index, _t, latents: after_step(index, latents), callback_steps=1)
    return {name: value for name, value in arguments.items() if name in accepted}


def encode_prompt_arguments(pipe, spec: ModelSpec, prompt: str, negative: str, guided: bool) -> dict[str, torch.Tensor]:
    """Run the pipeline's own `encode_prompt` once and name its outputs as its call takes them
    (prompt_embeds and companions). Families whose encoder has no notion of guidance (FLUX's true
    CFG) get the negative prompt encoded the same way."""
    accepted = inspect.signature(pipe.encode_prompt).parameters
    options = {"max_sequence_length": spec.max_sequence_length, **spec.call}
    kwargs = {name: value for name, value in options.items() if name in accepted and value is not None}
    if "device" in accepted:
        kwargs["device"] = pipe._execution_device
    # Second and third prompts (SD3's CLIP-G and T5) default to the first one.
    kwargs.update(
        {
            name: None
            for name, parameter in accepted.items()
            if name.startswith("prompt_") and name[7:].isdigit() and parameter.default is inspect.Parameter.empty
        }
    )
    separate_negative = guided and "do_classifier_free_guidance" not in accepted
    if "do_classifier_free_guidance" in accepted:
        kwargs.update(do_classifier_free_guidance=guided, negative_prompt=negative)
    with torch.no_grad():
        named = dict(zip(spec.family.prompt_outputs, pipe.encode_prompt(prompt, **kwargs)))
        if separate_negative:
            negatives = zip(spec.family.prompt_outputs, pipe.encode_prompt(negative, **kwargs))
            named.update({f"negative_{name}": value for name, value in negatives if name})
    call_accepts = inspect.signature(pipe.__call__).parameters
    return {name: value for name, value in named.items() if name and name in call_accepts and value is not None}


def guided(spec: ModelSpec, guidance: float) -> bool:
    """Whether the pipeline will run classifier-free guidance (and so needs negative embeddings)."""
    return spec.accepts_negative_prompt and guidance > 1.0


def generate(
    registry: Registry,
    settings: GenerationSettings,
    on_step: StepCallback | None = None,
    cancel: threading.Event | None = None,
) -> Iterator[GeneratedImage | Preview]:
    """Images one at a time (seeds seed, seed+1, ...), with previews between when
    `preview_every` asks. `on_step(done, total)` counts denoising steps over the whole batch;
    setting `cancel` stops at the next step with Cancelled."""
    spec = registry.catalogue.get(settings.model)
    settings = validate(settings, spec)
    reporter = StepReporter(settings.steps * settings.count, on_step, cancel)
    choice = chosen(spec, settings.speed, settings.steps)
    placement = registry.memory_plan(spec.id).policy.placement("transformer") if settings.compiled else "resident"
    compile_on, compile_notice = compile_chosen(
        spec, settings.compiled, bool(settings.adapters), choice.speed, placement
    )
    notes = tuple(note for note in (choice.notice, compile_notice) if note)
    with (
        registry.use(spec.id, "t2i", dict(settings.adapters)) as pipe,
        cached(pipe, choice.speed),
        compiled(pipe, compile_on),
    ):
        reporter.begin()
        for index in range(settings.count):
            seed = (settings.seed + index) % (MAX_SEED + 1)
            single = replace(settings, seed=seed, count=1, preview_every=0, speed=choice.speed, compiled=compile_on)
            reporter.check()
            started = time.perf_counter()
            for item in denoised(pipe, spec, single, reporter, settings.preview_every, index):
                if isinstance(item, Preview):
                    yield item
                else:
                    yield GeneratedImage(item, single, time.perf_counter() - started, notes)


def denoised(
    pipe: DiffusionPipeline,
    spec: ModelSpec,
    single: GenerationSettings,
    reporter: StepReporter,
    every: int,
    index: int,
) -> Iterator[Preview | Image.Image]:
    """One image's pipeline call: its previews as they come (every `every` steps; 0: none), then
    the image."""
    if not every:
        yield pipe(**call_arguments(pipe, spec, single, reporter.step)).images[0]
        return
    previewer = Previewer(pipe, spec, single.width, single.height, single.steps, every, index)
    yield from with_previews(
        lambda watch: pipe(**call_arguments(pipe, spec, single, reporter.step, watch)).images[0], previewer
    )


register(
    Method(
        "generate",
        GenerationSettings,
        lambda registry, settings, inputs, on_step, cancel: generate(registry, settings, on_step, cancel),
        "text to image: `count` images from one prompt (seeds seed, seed+1, ...), one at a time",
        pictures=lambda results: [made.image for made in results if isinstance(made, GeneratedImage)],
        remaining=lambda settings, done: replace(
            settings, seed=(settings.seed + done) % (MAX_SEED + 1), count=settings.count - done
        ),
    )
)
