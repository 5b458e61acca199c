"""ControlNet generation and the live sketch-to-image loop.

`control_generate` runs a model's ControlNet (FLUX, SD3 and SANA ControlNet pipelines, or BFL's
control transformer) on a control image with a conditioning scale and, where the pipeline has
them, the start and end of control as fractions of the steps.

The live loop (`LiveRenderer`) turns every new sketch into an image as fast as the model allows:
- the model: for the chosen family, a one-step model with a ControlNet that reads strokes; where
  none has one, a one-step img2img model (SANA-Sprint) redraws the sketch; only then a standard
  model with a ControlNet (built-ins with random weights after all trained choices);
- per frame only the control image changes: the prompt is encoded once until it changes, the
  model stays loaded, and the seed fixes every random draw (the initial noise, and the VAE
  sampling some ControlNet pipelines do from the global generator) so consecutive frames differ
  only where the sketch does.
"""

from __future__ import annotations

import inspect
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

import torch
from PIL import Image

from studio import conditions
from studio.catalogue import ControlSpec, ModelSpec
from studio.errors import InvalidRequest
from studio.generation import GenerationSettings, call_arguments, encode_prompt_arguments, guided, validate_sampling
from studio.params import SamplingSettings, prompt_text, redefault, setting
from studio.registry import ModelState, Registry
from studio.runner import Method, register
from studio.speed import OFF, cached, chosen

# ControlNets that read line drawings, best first: strokes are scribbles, then soft edges, then edges.
STROKE_KINDS = ("scribble", "softedge", "canny")
# Steps a standard (not distilled) model takes in the live loop: the ControlNet fixes the structure,
# so a short schedule keeps it (the shapes-world ControlNet places 1.00 / IoU 0.93 at 6, 8 and 12
# steps alike) and frames come several times faster. The tab's Steps slider gives more.
LIVE_STANDARD_STEPS = 8
# How much noise the img2img fallback puts over the sketch. img2img strength works in whole steps:
# at SANA-Sprint's 2 steps, 0.5 starts from its intermediate time (1.3 of pi/2), where the sketch
# still shows through (cos 1.3 = 0.27); anything above starts from pure noise.
SKETCH_STRENGTH = 0.5


@dataclass(frozen=True, kw_only=True)
class ControlSettings(SamplingSettings):
    prompt: str
    # The model's ControlNet (its catalogue name), or "" for the img2img fallback.
    control: str
    negative_prompt: str = ""
    steps: int = redefault("steps", 4)
    guidance: float = redefault("guidance", 0.0)
    conditioning_scale: float = setting("Conditioning scale", 1.0, 0.0, 2.0, 0.05)
    control_start: float = setting("Control start", 0.0, 0.0, 1.0, 0.05, "share of the steps before control acts")
    control_end: float = setting("Control end", 1.0, 0.0, 1.0, 0.05, "share of the steps after which it stops")
    # diffusers' cache hooks (`speed.SPEEDS`), where they fit the run (never beside a ControlNet).
    speed: str = OFF


@dataclass(frozen=True)
class ControlResult:
    image: Image.Image
    control_image: Image.Image
    settings: ControlSettings
    seconds: float
    # Whether this call ran the text encoders (False: the prompt came from the cache).
    encoded_prompt: bool
    # What the run changed of the request, and why (a speed setting it went without).
    notes: tuple[str, ...] = ()


def control_image_for(
    kind: str, image: Image.Image, canny_low: int = 100, canny_high: int = 200, offline: bool = True
) -> Image.Image:
    """The control image a ControlNet of `kind` reads, made from a photo or drawing."""
    if kind == "canny":
        return conditions.canny(image, canny_low, canny_high)
    if kind == "softedge":
        return conditions.soft_edge(image)
    if kind == "scribble":
        return conditions.scribble(image)
    if kind == "depth":
        return conditions.depth(image, offline)
    return image.convert("RGB")  # pose maps and tiles are given as they are


def sketch_control(kind: str, strokes: Image.Image) -> Image.Image:
    """Strokes drawn on a canvas as a `kind` ControlNet reads them: white lines on black (soft
    edges blurred a little, as HED maps are)."""
    lines = conditions.scribble(strokes)
    return conditions.soft_edge(lines) if kind == "softedge" else lines


def on_white(drawing: Image.Image) -> Image.Image:
    """A canvas drawing as an RGB picture: transparent pixels are the white paper."""
    if drawing.mode != "RGBA":
        return drawing.convert("RGB")
    paper = Image.new("RGB", drawing.size, "white")
    paper.paste(drawing, mask=drawing.getchannel("A"))
    return paper


class PromptCache:
    """Encoded prompts per (model, prompt, negative prompt, guidance on/off): a frame whose prompt
    has not changed skips the text encoders."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._entries: dict[tuple, dict[str, torch.Tensor]] = {}
        self._lock = threading.Lock()

    def arguments(
        self, pipe, spec: ModelSpec, prompt: str, negative: str, guided: bool
    ) -> tuple[dict[str, torch.Tensor], bool]:
        """The call's prompt arguments, and whether they were encoded now."""
        key = (spec.id, prompt, negative, guided)
        with self._lock:
            cached = self._entries.get(key) if self.enabled else None
        if cached is not None:
            return cached, False
        encoded = encode_prompt_arguments(pipe, spec, prompt, negative, guided)
        if self.enabled:
            with self._lock:
                # One prompt per model is enough for a live loop; older ones would only hold memory.
                self._entries = {k: v for k, v in self._entries.items() if k[0] != spec.id}
                self._entries[key] = encoded
        return encoded, True


def validate(settings: ControlSettings, spec: ModelSpec) -> ControlSettings:
    settings = replace(validate_sampling(settings, spec), prompt=prompt_text(settings.prompt))
    if settings.control_start >= settings.control_end:
        raise InvalidRequest("Control must start before it ends.")
    if settings.control:
        spec.controlnet(settings.control)
    elif "img2img" not in spec.tasks:
        raise InvalidRequest(f"{spec.name} has no ControlNet and no img2img mode to draw from a sketch.")
    return replace(
        settings,
        negative_prompt=(settings.negative_prompt or "").strip() if spec.accepts_negative_prompt else "",
    )


def control_generate(
    registry: Registry,
    settings: ControlSettings,
    control_image: Image.Image,
    prompts: PromptCache | None = None,
) -> ControlResult:
    """One image from a control image (already preprocessed: white structure on black), or for the
    img2img fallback (`settings.control == ""`) from the drawing itself."""
    spec = registry.catalogue.get(settings.model)
    settings = validate(settings, spec)
    control = spec.controlnet(settings.control) if settings.control else None
    task = control.task if control else "img2img"
    prompts = prompts or PromptCache(enabled=False)
    control_image = control_image.convert("RGB").resize((settings.width, settings.height), Image.Resampling.BILINEAR)
    choice = chosen(spec, settings.speed, settings.steps, task)
    settings = replace(settings, speed=choice.speed)

    with registry.use(spec.id, task) as pipe, cached(pipe, choice.speed):
        started = time.perf_counter()
        plain = GenerationSettings.sampled_as(settings, settings.prompt, negative_prompt=settings.negative_prompt)
        arguments = call_arguments(pipe, spec, plain, None)
        prompt_arguments, encoded = prompts.arguments(
            pipe, spec, settings.prompt, settings.negative_prompt, guided(spec, settings.guidance)
        )
        accepted = inspect.signature(pipe.__call__).parameters
        # The embeddings replace the texts (some pipelines default the negative text to "", not None).
        arguments.update({name: None for name in ("prompt", "negative_prompt") if name in accepted})
        arguments.update(prompt_arguments)
        arguments.update(control_arguments(pipe, control, settings, control_image))
        # Some ControlNet pipelines sample the control image's VAE encoding from the global
        # generator: seeding it for the call makes a frame depend on its inputs only.
        device = pipe._execution_device
        with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
            torch.manual_seed(settings.seed)
            image = pipe(**arguments).images[0]
        notes = (choice.notice,) if choice.notice else ()
        return ControlResult(image, control_image, settings, time.perf_counter() - started, encoded, notes)


def control_arguments(
    pipe, control: ControlSpec | None, settings: ControlSettings, control_image: Image.Image
) -> dict[str, Any]:
    accepted = inspect.signature(pipe.__call__).parameters
    if control is None:
        return {"image": control_image, "strength": SKETCH_STRENGTH}
    arguments: dict[str, Any] = {"control_image": control_image, **control.call}
    partial = settings.control_start > 0.0 or settings.control_end < 1.0
    if "control_guidance_start" in accepted:
        arguments.update(control_guidance_start=settings.control_start, control_guidance_end=settings.control_end)
    elif partial:
        raise InvalidRequest(f"{type(pipe).__name__} applies control to every step; leave start at 0 and end at 1.")
    if "controlnet_conditioning_scale" in accepted:
        arguments["controlnet_conditioning_scale"] = settings.conditioning_scale
    elif settings.conditioning_scale != 1.0:
        raise InvalidRequest(f"{type(pipe).__name__} (a control transformer) has no conditioning scale; leave it at 1.")
    return arguments


@dataclass(frozen=True)
class LiveTarget:
    """What the live loop runs for a family: a model and its ControlNet ("" for img2img)."""

    model: str
    control: str
    steps: int

    def describe(self, spec: ModelSpec) -> str:
        how = f"{self.control} ControlNet" if self.control else "img2img from the sketch"
        return f"{spec.name} · {how} · {self.steps} step{'s' if self.steps > 1 else ''}"


def live_targets(registry: Registry, family: str, kinds: tuple[str, ...] = STROKE_KINDS) -> list[LiveTarget]:
    """Every way the family's models can draw from a sketch now, fastest first: one-step models
    with a ControlNet of one of `kinds`, then one-step img2img, then standard models with a
    ControlNet. Models that could not load here (offline, not cached, not offered) are left out, and built-ins
    with random weights (the model's or its ControlNet's) come after every trained choice: they
    exist to test the path, and draw noise."""
    ranked = []
    for spec in registry.catalogue:
        if spec.family.name != family or registry.state(spec.id) in (ModelState.UNAVAILABLE, ModelState.NOT_OFFERED):
            continue
        one_step = spec.mode == "one-step"
        usable = [
            c
            for c in spec.controlnets
            if c.kind in kinds and registry.control_state(spec.id, c.name) is not ModelState.UNAVAILABLE
        ]
        if usable:
            best = min(usable, key=lambda c: (c.random_weights, kinds.index(c.kind)))
            rank = (spec.random_weights or best.random_weights, not one_step, 0, spec.steps, kinds.index(best.kind))
            ranked.append(
                (rank, LiveTarget(spec.id, best.name, spec.steps if one_step else min(spec.steps, LIVE_STANDARD_STEPS)))
            )
        elif one_step and "img2img" in spec.tasks:
            ranked.append(((spec.random_weights, False, 1, spec.steps, 0), LiveTarget(spec.id, "", spec.steps)))
    return [target for _, target in sorted(ranked, key=lambda pair: pair[0])]


@dataclass(frozen=True)
class LiveRequest:
    target: LiveTarget
    prompt: str
    # Strokes on a canvas, or a photo that the ControlNet's preprocessor reads.
    drawing: Image.Image
    from_photo: bool = False
    canny_low: int = setting("Canny low threshold", 100, 0, 255, 1)
    canny_high: int = setting("Canny high threshold", 200, 0, 255, 1)
    seed: int = redefault("seed", 0)
    conditioning_scale: float = redefault("conditioning_scale", 1.0, ControlSettings)
    control_start: float = redefault("control_start", 0.0, ControlSettings)
    control_end: float = redefault("control_end", 1.0, ControlSettings)
    speed: str = OFF
    width: int | None = None
    height: int | None = None


class LiveRenderer:
    """Frames of the live loop. Holds the prompt cache; the registry keeps the model loaded."""

    def __init__(self, registry: Registry, cache_prompts: bool = True):
        self.registry = registry
        self.prompts = PromptCache(enabled=cache_prompts)

    def control_image(self, request: LiveRequest, control: ControlSpec | None) -> Image.Image:
        if control is None:
            return on_white(request.drawing)
        if request.from_photo:
            return control_image_for(
                control.kind, request.drawing, request.canny_low, request.canny_high, offline=self.registry.offline_only
            )
        return sketch_control(control.kind, request.drawing)

    def frame(self, request: LiveRequest) -> ControlResult:
        spec = self.registry.catalogue.get(request.target.model)
        control = spec.controlnet(request.target.control) if request.target.control else None
        drawing = self.control_image(request, control)
        settings = ControlSettings(
            model=spec.id,
            prompt=request.prompt,
            control=request.target.control,
            steps=request.target.steps,
            guidance=spec.guidance_scale,
            width=request.width or spec.width,
            height=request.height or spec.height,
            seed=request.seed,
            conditioning_scale=request.conditioning_scale,
            control_start=request.control_start,
            control_end=request.control_end,
            speed=request.speed,
        )
        return control_generate(self.registry, settings, drawing, self.prompts)


register(
    Method(
        "control",
        ControlSettings,
        lambda registry, settings, inputs, on_step, cancel: control_generate(
            registry, settings, inputs["control_image"]
        ),
        "one image from a control image (a ControlNet's edges, scribble or depth; or img2img from a sketch)",
        {"control_image": "the preprocessed control image (white structure on black) or the sketch"},
    )
)
