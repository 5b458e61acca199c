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
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from diffusers import DiffusionPipeline
from PIL import Image

from studio.catalogue import ModelSpec
from studio.errors import Cancelled, InvalidRequest
from studio.registry import Registry

MAX_SEED = 2**32 - 1
MAX_SIDE = 4096
MAX_IMAGES = 8
ASPECT_RATIOS = {"1:1": 1.0, "4:3": 4 / 3, "3:4": 3 / 4, "3:2": 3 / 2, "2:3": 2 / 3, "16:9": 16 / 9, "9:16": 9 / 16}

StepCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class GenerationSettings:
    model: str
    prompt: str
    negative_prompt: str = ""
    steps: int = 20
    guidance: float = 4.5
    width: int = 1024
    height: int = 1024
    seed: int = 0
    count: int = 1
    # LoRA adapters registered with the registry, as (name, scale) pairs.
    adapters: tuple[tuple[str, float], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GeneratedImage:
    image: Image.Image
    # The settings that remake exactly this image: its own seed, a count of one.
    settings: GenerationSettings
    seconds: float


def snap(value: float, multiple: int) -> int:
    return max(multiple, round(value / multiple) * multiple)


def size_for_aspect(spec: ModelSpec, ratio: str) -> tuple[int, int]:
    """The model's default pixel area at the given aspect ratio, snapped to its size multiple."""
    area = spec.width * spec.height
    aspect = ASPECT_RATIOS[ratio]
    return snap(math.sqrt(area * aspect), spec.size_multiple), snap(math.sqrt(area / aspect), spec.size_multiple)


def defaults_for(spec: ModelSpec, prompt: str = "") -> GenerationSettings:
    return GenerationSettings(
        model=spec.id,
        prompt=prompt,
        steps=spec.steps,
        guidance=spec.guidance_scale,
        width=spec.width,
        height=spec.height,
    )


def validate(settings: GenerationSettings, spec: ModelSpec) -> GenerationSettings:
    """The settings made safe to run, or InvalidRequest saying what is wrong."""
    if not settings.prompt or not settings.prompt.strip():
        raise InvalidRequest("Write a prompt first.")
    if not 1 <= int(settings.count) <= MAX_IMAGES:
        raise InvalidRequest(f"Ask for between 1 and {MAX_IMAGES} images.")
    return replace(
        validate_sampling(settings, spec),
        prompt=settings.prompt.strip(),
        negative_prompt=(settings.negative_prompt or "").strip() if spec.accepts_negative_prompt else "",
        count=int(settings.count),
    )


def validate_sampling(settings: Any, spec: ModelSpec) -> Any:
    """Any settings dataclass with steps, seed, guidance, width and height, checked and normalised
    for the model (sizes snapped to its multiple, guidance 0 where it has none)."""
    if not 1 <= int(settings.steps) <= spec.max_steps:
        raise InvalidRequest(f"Steps must be between 1 and {spec.max_steps} for {spec.name}.")
    if not 0 <= int(settings.seed) <= MAX_SEED:
        raise InvalidRequest(f"The seed must be between 0 and {MAX_SEED}.")
    for side in (settings.width, settings.height):
        if not spec.size_multiple <= int(side) <= MAX_SIDE:
            raise InvalidRequest(f"Width and height must be between {spec.size_multiple} and {MAX_SIDE} pixels.")
    if not math.isfinite(float(settings.guidance)) or not 0 <= float(settings.guidance) <= 50:
        raise InvalidRequest("Guidance must be between 0 and 50.")
    return replace(
        settings,
        steps=int(settings.steps),
        seed=int(settings.seed),
        guidance=0.0 if spec.guidance == "none" else float(settings.guidance),
        width=snap(int(settings.width), spec.size_multiple),
        height=snap(int(settings.height), spec.size_multiple),
    )


def call_arguments(
    pipe: DiffusionPipeline, spec: ModelSpec, settings: GenerationSettings, on_step: Callable[[int], None] | None
) -> dict[str, Any]:
    """Keyword arguments for one image: the pipeline's signature decides what it is given."""
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
    if on_step is not None:
        if "callback_on_step_end" in accepted:

            def step_end(_pipe, index, _timestep, tensors):
                on_step(index + 1)
                return tensors

            arguments["callback_on_step_end"] = step_end
        elif "callback" in accepted:  # PixArt still has the older per-step callback
            arguments.update(callback=lambda index, _t, _latents: on_step(index + 1), callback_steps=1)
    return {name: value for name, value in arguments.items() if name in accepted}


def generate(
    registry: Registry,
    settings: GenerationSettings,
    on_step: StepCallback | None = None,
    cancel: threading.Event | None = None,
) -> Iterator[GeneratedImage]:
    """Images one at a time (seeds seed, seed+1, ...). `on_step(done, total)` counts denoising
    steps over the whole batch; setting `cancel` stops at the next step with Cancelled."""
    spec = registry.catalogue.get(settings.model)
    settings = validate(settings, spec)
    total = settings.steps * settings.count
    with registry.use(spec.id, "t2i", dict(settings.adapters)) as pipe:
        for index in range(settings.count):
            single = replace(settings, seed=(settings.seed + index) % (MAX_SEED + 1), count=1)

            def step_done(step: int, offset: int = index * settings.steps) -> None:
                if cancel is not None and cancel.is_set():
                    raise Cancelled("Generation cancelled.")
                if on_step is not None:
                    on_step(offset + step, total)

            if cancel is not None and cancel.is_set():
                raise Cancelled("Generation cancelled.")
            started = time.perf_counter()
            image = pipe(**call_arguments(pipe, spec, single, step_done)).images[0]
            yield GeneratedImage(image, single, time.perf_counter() - started)
