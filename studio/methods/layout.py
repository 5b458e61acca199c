"""Layout to image: boxes with their own captions.

Training-free regional attention (Regional-Prompting-FLUX, for FLUX and SD3): each region's
caption is encoded on its own and its tokens are appended to the global caption's; a boolean
mask over the joint sequence, in the family's token order, lets
- a region's text see only itself and the image tokens inside its box,
- image tokens inside a box see only their region(s): its text and its image tokens,
- the global caption's text and the background image tokens see everything they would
  (background: everything; global text: itself and the image),
for the first `inject_steps` steps in every `block_stride`-th joint block, blended with the
unmasked attention by `base_ratio`. With classifier-free guidance the mask applies to the
conditional half only.

PixArt and SANA read text through cross-attention: there the captions' encodings are joined the
same way and a region's caption is visible only to the image tokens inside its box (the global
caption to all), with the same steps, block stride and blend.

CreatiLayout (SiamLayout, on SD3 models with layout branches, `studio.families.siamlayout`): each
box becomes one layout token from its caption's pooled CLIP-L + CLIP-G embedding and its
coordinates; the branches act for the first `grounding_fraction` of the steps (the paper: 30%),
and the unconditional half of classifier-free guidance sees only null layout tokens.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from PIL import Image

from studio import flow
from studio.attention import (
    AttentionController,
    AttentionEdit,
    MaskAttention,
    controllable_layers,
    controlled,
    joint_layers,
)
from studio.catalogue import ModelSpec
from studio.errors import InvalidRequest
from studio.families import siamlayout
from studio.families.siamlayout import MAX_BOXES, LayoutTokens, siamlayout_forward
from studio.generation import GenerationSettings, call_arguments, encode_prompt_arguments, guided, validate_sampling
from studio.params import SamplingSettings, StepCallback, StepReporter, prompt_text, redefault, setting
from studio.registry import Registry
from studio.runner import Method, register

MAX_REGIONS = MAX_BOXES
METHODS = {"regional": "Regional attention (training-free)", "siamlayout": "CreatiLayout SiamLayout (SD3)"}


@dataclass(frozen=True)
class Region:
    caption: str
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 as fractions of width and height


@dataclass(frozen=True, kw_only=True)
class LayoutSettings(SamplingSettings):
    caption: str
    regions: tuple[Region, ...]
    steps: int = redefault("steps", 24)
    guidance: float = redefault("guidance", 3.5)
    # The reference's mask_inject_steps.
    inject_steps: int = setting("Mask steps", 8, 0, 100, 1, "steps whose attention is masked by the boxes")
    block_stride: int = setting("Block stride", 1, 1, 8, 1, "mask every k-th joint block")
    base_ratio: float = setting("Base ratio", 0.2, 0.0, 1.0, 0.05, "share of the unmasked attention kept")
    method: str = "regional"  # a key of METHODS
    grounding_fraction: float = setting(
        "Grounding fraction", 0.3, 0.0, 1.0, 0.05, "SiamLayout: the share of steps the layout branches act in"
    )


@dataclass
class LayoutResult:
    image: Image.Image
    settings: LayoutSettings
    seconds: float


def validate_regions(regions: Sequence[Region]) -> tuple[Region, ...]:
    """Regions with trimmed captions and boxes clamped to the canvas (corners in any order), or
    InvalidRequest naming the first problem."""
    if len(regions) > MAX_REGIONS:
        raise InvalidRequest(f"At most {MAX_REGIONS} boxes; this layout has {len(regions)}.")
    checked = []
    for number, region in enumerate(regions, start=1):
        if not isinstance(region.caption, str) or not region.caption.strip():
            raise InvalidRequest(f"Box {number} has no caption.")
        prompt_text(region.caption, f"box {number}'s caption")
        try:
            x1, y1, x2, y2 = (min(max(float(value), 0.0), 1.0) for value in region.box)
        except (TypeError, ValueError):
            raise InvalidRequest(f"Box {number} needs four numbers x1, y1, x2, y2 between 0 and 1.") from None
        if any(math.isnan(value) for value in (x1, y1, x2, y2)):
            raise InvalidRequest(f"Box {number} needs four numbers x1, y1, x2, y2 between 0 and 1.")
        x1, x2, y1, y2 = min(x1, x2), max(x1, x2), min(y1, y2), max(y1, y2)
        if x2 - x1 <= 0 or y2 - y1 <= 0:
            raise InvalidRequest(f"Box {number} ({region.caption.strip()!r}) has no area inside the canvas.")
        checked.append(Region(region.caption.strip(), (x1, y1, x2, y2)))
    return tuple(checked)


def region_token_masks(regions: Sequence[Region], rows: int, columns: int) -> torch.Tensor:
    """[regions, rows * columns]: the image tokens (row-major) whose centre lies in each box
    (one region or more: a layout always has a box)."""
    ys = (torch.arange(rows, dtype=torch.float64) + 0.5) / rows
    xs = (torch.arange(columns, dtype=torch.float64) + 0.5) / columns
    masks = []
    for region in regions:
        x1, y1, x2, y2 = region.box
        inside = ((ys >= y1) & (ys < y2)).view(-1, 1) & ((xs >= x1) & (xs < x2)).view(1, -1)
        masks.append(inside.flatten())
    return torch.stack(masks)


def regional_attention_mask(image_masks: torch.Tensor, caption_length: int, token_order: str) -> torch.Tensor:
    """The [tokens, tokens] mask over the joint sequence for text [global, region 1, ...] (each
    `caption_length` tokens) and image tokens `image_masks` ([regions, image tokens])."""
    regions, image_tokens = image_masks.shape
    text_tokens = caption_length * (regions + 1)
    # Which caption each text token belongs to: 0 global, i for region i.
    owner = torch.arange(text_tokens) // caption_length
    in_region = torch.cat([torch.ones(1, image_tokens, dtype=torch.bool), image_masks])  # [captions, image]
    background = ~image_masks.any(dim=0)

    text_to_text = owner.view(-1, 1) == owner.view(1, -1)
    text_to_image = in_region[owner]  # the global caption owns every image token
    image_to_image = (image_masks.T.float() @ image_masks.float() > 0) | background.view(-1, 1)
    image_to_text = in_region[owner].T.clone()
    image_to_text[:, owner == 0] = False  # region tokens see their regions' captions only...
    image_to_text[background] = True  # ...background tokens see every caption

    text_rows = torch.cat([text_to_text, text_to_image], dim=1)
    image_rows = torch.cat([image_to_text, image_to_image], dim=1)
    if token_order == "text-image":
        return torch.cat([text_rows, image_rows])
    # [image, text]: move the text block after the image block in both axes.
    joint = torch.cat([text_rows, image_rows])
    order = torch.cat([torch.arange(text_tokens, text_tokens + image_tokens), torch.arange(text_tokens)])
    return joint[order][:, order]


def cross_attention_mask(image_masks: torch.Tensor, caption_length: int) -> torch.Tensor:
    """[image tokens, text tokens] for cross-attention families (PixArt, SANA): a region's caption
    is visible only to the image tokens inside its box; the global caption to every token."""
    regions, image_tokens = image_masks.shape
    owner = torch.arange(caption_length * (regions + 1)) // caption_length
    in_region = torch.cat([torch.ones(1, image_tokens, dtype=torch.bool), image_masks])
    return in_region[owner].T.contiguous()


def validate(settings: LayoutSettings, spec: ModelSpec) -> LayoutSettings:
    if settings.method not in METHODS:
        raise InvalidRequest(f"Unknown layout method {settings.method!r}; choose one of {', '.join(METHODS)}.")
    if settings.method == "siamlayout" and siamlayout.layout_branch(spec) is None:
        raise InvalidRequest(
            f"CreatiLayout needs a model with SiamLayout branches; {spec.name} has none. "
            "Pick a SiamLayout model, or the regional-attention method."
        )
    if spec.family.token_order not in ("text-image", "image-text", "cross-attention"):
        raise InvalidRequest(f"Regional attention has no way into {spec.family.label} models.")
    prompt_text(settings.caption, "a global caption")
    if not settings.regions:
        raise InvalidRequest("Draw at least one box.")
    return replace(
        validate_sampling(settings, spec),
        caption=settings.caption.strip(),
        regions=validate_regions(settings.regions),
    )


@dataclass
class RegionalPlan:
    model: flow.FlowModel  # prompts: [global, region captions...] joined along the tokens
    edits: list[AttentionEdit]
    caption_length: int
    start: torch.Tensor
    sigmas: list[float]


def plan(pipe, spec: ModelSpec, settings: LayoutSettings) -> RegionalPlan:
    """What a regional generation runs: the model with the joined captions, and the mask edit."""
    guidance = flow.Guidance(spec.guidance, settings.guidance)
    captions = [settings.caption, *(region.caption for region in settings.regions)]
    model = flow.FlowModel(pipe, spec.family, [captions], guidance, spec.text_length)
    caption_length = model.text.embeds.shape[1] // len(captions)
    start = flow.initial_noise(pipe, settings.seed, settings.width, settings.height).to(pipe.transformer.device)
    rows, columns = start.shape[-2] // 2, start.shape[-1] // 2  # one image token per 2x2 latent patch
    allowed = regional_attention_mask(
        region_token_masks(settings.regions, rows, columns), caption_length, spec.family.token_order
    )
    layers = set(joint_layers(pipe.transformer)[:: settings.block_stride])
    conditional = slice(len(model.text) // 2, None) if guidance.doubles_batch else None
    mask = MaskAttention(
        allowed=allowed,
        base_ratio=settings.base_ratio,
        layers=layers,
        steps=range(settings.inject_steps),
        rows=conditional,
    )
    sigmas = flow.schedule(pipe, spec.family, settings.steps, *start.shape[-2:])
    return RegionalPlan(model, [mask], caption_length, start, sigmas)


def regional_generate(
    registry: Registry,
    settings: LayoutSettings,
    on_step: StepCallback | None = None,
    cancel: threading.Event | None = None,
) -> LayoutResult:
    spec = registry.catalogue.get(settings.model)
    settings = validate(settings, spec)
    started = time.perf_counter()
    reporter = StepReporter(settings.steps, on_step, cancel)
    with registry.use(spec.id) as pipe:
        reporter.begin()
        if settings.method == "siamlayout":
            image = siamlayout_generate(pipe, spec, settings, reporter)
        elif spec.family.token_order == "cross-attention":
            image = cross_attention_generate(pipe, spec, settings, reporter)
        else:
            regional = plan(pipe, spec, settings)
            controller = AttentionController(regional.edits)
            with controlled(pipe.transformer, controller, spec.family.token_order):
                latents = flow.integrate(
                    regional.model.velocity,
                    regional.start,
                    regional.sigmas,
                    before_step=controller.set_step,
                    after_step=reporter.step,
                )[-1]
            image = flow.decode(pipe, latents)[0]
    return LayoutResult(image, settings, time.perf_counter() - started)


def cross_attention_generate(pipe, spec: ModelSpec, settings: LayoutSettings, reporter: StepReporter) -> Image.Image:
    """PixArt / SANA: the captions' encodings joined along the tokens, through the pipeline, with
    the regional mask on the text cross-attention."""
    generation = GenerationSettings.sampled_as(settings, settings.caption)
    with_guidance = guided(spec, settings.guidance)
    parts = [
        encode_prompt_arguments(pipe, spec, caption, "", with_guidance)
        for caption in (settings.caption, *(region.caption for region in settings.regions))
    ]
    joined = {name: torch.cat([part[name] for part in parts], dim=1) for name in parts[0]}
    caption_length = parts[0]["prompt_embeds"].shape[1]

    scale = pipe.vae_scale_factor * pipe.transformer.config.patch_size
    masks = region_token_masks(settings.regions, settings.height // scale, settings.width // scale)
    layers = set(controllable_layers(pipe.transformer, "cross-attention")[:: settings.block_stride])
    edit = MaskAttention(
        allowed=cross_attention_mask(masks, caption_length),
        base_ratio=settings.base_ratio,
        layers=layers,
        steps=range(settings.inject_steps),
        rows=slice(1, None) if with_guidance else None,
    )  # [negative, prompt] with CFG
    controller = AttentionController([edit])

    def step_done(done: int) -> None:
        reporter.step()
        controller.set_step(done)

    arguments = {**call_arguments(pipe, spec, generation, step_done), "prompt": None, "negative_prompt": None, **joined}
    with controlled(pipe.transformer, controller, "cross-attention"):
        return pipe(**arguments).images[0]


def layout_tokens(pipe, regions: Sequence[Region], unconditional_half: bool) -> LayoutTokens:
    """The boxes as SiamLayout reads them: each caption's pooled CLIP-L and CLIP-G embeddings side
    by side, its box, and a filled-slot mask, padded to MAX_BOXES; with `unconditional_half` a
    first row with no slot filled (null tokens only) comes before the conditional row."""
    captions = [region.caption for region in regions]
    pooled = []
    with torch.no_grad():
        for tokenizer, encoder in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
            ids = tokenizer(
                captions,
                padding="max_length",
                max_length=pipe.tokenizer_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids
            pooled.append(encoder(ids.to(encoder.device))[0].float().cpu())
    phrases = torch.cat(pooled, dim=-1)
    boxes = torch.zeros(1, MAX_BOXES, 4)
    embeddings = torch.zeros(1, MAX_BOXES, phrases.shape[-1])
    masks = torch.zeros(1, MAX_BOXES)
    boxes[0, : len(regions)] = torch.tensor([region.box for region in regions])
    embeddings[0, : len(regions)] = phrases
    masks[0, : len(regions)] = 1
    if unconditional_half:
        boxes, embeddings, masks = (
            torch.cat([boxes] * 2),
            torch.cat([embeddings] * 2),
            torch.cat([torch.zeros_like(masks), masks]),
        )
    return LayoutTokens(boxes, embeddings, masks)


def siamlayout_generate(pipe, spec: ModelSpec, settings: LayoutSettings, reporter: StepReporter) -> Image.Image:
    """CreatiLayout's sampling: the global caption as the prompt, the layout branches on for the
    first `grounding_fraction` of the steps and off afterwards."""
    guidance = flow.Guidance(spec.guidance, settings.guidance)
    tokens = layout_tokens(pipe, settings.regions, guidance.doubles_batch)
    grounding_steps = int(settings.grounding_fraction * settings.steps)
    branch = {"scale": 1.0}

    def velocity(pipe, latents, sigma, text, embedded_guidance):
        return siamlayout_forward(
            pipe.transformer, latents, sigma * 1000, text.embeds, text.pooled, tokens, branch["scale"]
        )

    def before_step(index: int) -> None:
        branch["scale"] = 1.0 if index < grounding_steps else 0.0

    assert spec.family.flow is not None  # SiamLayout models are SD3
    family = replace(spec.family, flow=replace(spec.family.flow, velocity=velocity))
    model = flow.FlowModel(pipe, family, [settings.caption], guidance, spec.text_length)
    start = flow.initial_noise(pipe, settings.seed, settings.width, settings.height).to(pipe.transformer.device)
    sigmas = flow.schedule(pipe, spec.family, settings.steps, *start.shape[-2:])
    latents = flow.integrate(model.velocity, start, sigmas, before_step=before_step, after_step=reporter.step)[-1]
    return flow.decode(pipe, latents)[0]


register(
    Method(
        "layout",
        LayoutSettings,
        lambda registry, settings, inputs, on_step, cancel: regional_generate(registry, settings, on_step, cancel),
        "layout to image: a global caption and boxes with their own captions (regional attention or SiamLayout)",
    )
)
