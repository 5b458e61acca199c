"""Model families. Each module knows its pipelines (per task), its call conventions and how to
build its small built-in model; the registry knows nothing family-specific."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import ModelMixin


@dataclass
class TextConditioning:
    """A prompt batch as the family's transformer takes it."""

    embeds: torch.Tensor
    pooled: torch.Tensor
    # FLUX's text position ids (shared by every row); None for families without them.
    text_ids: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.embeds.shape[0]

    def cat(self, other: TextConditioning) -> TextConditioning:
        return TextConditioning.stack([self, other])

    def chunk(self, count: int) -> list[TextConditioning]:
        """The batch in `count` equal parts (rows in order)."""
        return [
            TextConditioning(embeds, pooled, self.text_ids)
            for embeds, pooled in zip(self.embeds.chunk(count), self.pooled.chunk(count))
        ]

    @staticmethod
    def stack(parts: list[TextConditioning]) -> TextConditioning:
        """Batches one after another (they share the text position ids)."""
        return TextConditioning(
            torch.cat([part.embeds for part in parts]), torch.cat([part.pooled for part in parts]), parts[0].text_ids
        )

    @staticmethod
    def join(parts: list[TextConditioning]) -> TextConditioning:
        """Several captions' tokens as one sequence; the first caption gives the pooled vector."""
        if len(parts) == 1:
            return parts[0]
        ids = [part.text_ids for part in parts if part.text_ids is not None]
        text_ids = torch.cat(ids) if len(ids) == len(parts) else None
        return TextConditioning(torch.cat([part.embeds for part in parts], dim=1), parts[0].pooled, text_ids)


@dataclass(frozen=True)
class TextSegment:
    """One tokenizer's share of the text tokens the transformer sees: positions
    offset .. offset + length of the text sequence."""

    tokenizer: Any
    offset: int
    length: int


@dataclass(frozen=True)
class FlowConvention:
    """How a rectified-flow family's transformer is called, in unpacked latent space [B, C, H, W]
    with sigma in [0, 1] (1 = noise): what inversion, the methods' sampler and training share."""

    # (pipe, prompts, max_sequence_length) -> TextConditioning
    encode_text: Callable[[diffusers.DiffusionPipeline, list[str], int], TextConditioning]
    # (pipe, latents, sigma [B], text, embedded guidance or None) -> velocity (noise - data)
    velocity: Callable[
        [diffusers.DiffusionPipeline, torch.Tensor, torch.Tensor, TextConditioning, float | None], torch.Tensor
    ]
    # The pipeline samples on linspace(1, 1/n, n) sigmas (FLUX) rather than the scheduler's own grid (SD3).
    linear_sigmas: bool


@dataclass(frozen=True)
class VideoConvention:
    """How a video family's transformer and VAE are called, in frame-major latents [B, F, C, h, w]
    (as CogVideoX keeps them; Wan's own order is [B, C, F, h, w]), normalised as the transformer
    sees them: what the video methods' own sampling loop needs."""

    # (pipe, latents, timestep [B], text embeddings [B, tokens, dim]) -> the model's output
    predict: Callable[[diffusers.DiffusionPipeline, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    # (pipe, latents [1, F, C, h, w]) -> frames [frames, H, W, 3] in [0, 1]
    decode: Callable[[diffusers.DiffusionPipeline, torch.Tensor], Any]
    # (pipe, frames [1, 3, frames, H, W] in [-1, 1]) -> latents [1, F, C, h, w]
    encode: Callable[[diffusers.DiffusionPipeline, torch.Tensor], torch.Tensor]
    # The family's own latents are [B, C, F, h, w]: its pipeline draws the first noise so.
    channels_first: bool = False


@dataclass(frozen=True)
class Extension:
    """Weights a family attaches to some of its models after they load, named by a table of the
    model's catalogue entry (SD3's CreatiLayout SiamLayout branches). The registry and catalogue
    know extensions only through this: a family's specifics stay in its own module."""

    # The catalogue table that names the extension.
    field: str
    # (the table, the project root for relative paths) -> parsed options; ValueError says what is wrong
    parse: Callable[[dict[str, Any], Path], Any]
    # options -> [(hub repo, a file whose presence in the cache says it is there)]
    repos: Callable[[Any], list[tuple[str, str]]]
    # (the loaded pipeline, options, offline only) -> None
    attach: Callable[[diffusers.DiffusionPipeline, Any, bool], None]


@dataclass(frozen=True)
class Family:
    name: str
    label: str
    # Task variants reachable from a text-to-image pipeline class through `from_pipe`.
    task_variants: Mapping[str, Mapping[str, str]]
    # Token order for the attention-control toolkit: joint "text-image" / "image-text",
    # "cross-attention", or video: "text-video" (one attention over both) / "video" (self-attention).
    token_order: str
    # Built-in random-weight models of this family: name -> builder writing a saved pipeline.
    builtin_builders: Mapping[str, Callable[[Path], None]] = field(default_factory=dict)
    # (pipe, max_sequence_length) -> where each tokenizer's tokens sit in the text sequence.
    text_segments: Callable[[diffusers.DiffusionPipeline, int], list[TextSegment]] = lambda pipe, length: [
        TextSegment(pipe.tokenizer, 0, length)
    ]
    # Rectified-flow families (FLUX, SD3) say how their transformer is called; None otherwise.
    flow: FlowConvention | None = None
    # Video families (CogVideoX, Wan) say how their transformer and VAE are called; None otherwise.
    video: VideoConvention | None = None
    # The diffusers ControlNet pipeline for this family's models, or None where diffusers has none.
    controlnet_pipeline: str | None = None
    # (the base model's transformer, seed) -> a small random ControlNet that fits it, for built-ins
    # (`small_controlnet` with the family's ControlNet class).
    controlnet_builder: Callable[..., ModelMixin] | None = None
    # What the pipelines' `encode_prompt` returns, in order, as the call's argument names (None:
    # not a call argument), so a prompt can be encoded once and passed as embeddings.
    # Why no model of the family can draw from a sketch, where that is so (said in the live tab).
    no_control_reason: str = ""
    # What the family attaches to some models after loading (by catalogue table).
    extensions: tuple[Extension, ...] = ()
    # Pipelines the family defines itself (diffusers has none for them), by class name.
    own_pipelines: Mapping[str, type[diffusers.DiffusionPipeline]] = field(default_factory=dict)
    prompt_outputs: tuple[str | None, ...] = (
        "prompt_embeds",
        "prompt_attention_mask",
        "negative_prompt_embeds",
        "negative_prompt_attention_mask",
    )

    def pipeline_class(self, t2i_class: str, task: str) -> type[diffusers.DiffusionPipeline]:
        variant = self.task_variants.get(t2i_class, {}).get(task)
        if task == "t2i":
            name = t2i_class
        elif variant is not None:
            name = variant
        elif task == "controlnet" and self.controlnet_pipeline:
            name = self.controlnet_pipeline
        else:
            raise KeyError(task)
        return self.own_pipelines.get(name) or getattr(diffusers, name)

    def tasks(self, t2i_class: str) -> tuple[str, ...]:
        return ("t2i", *(task for task in self.task_variants.get(t2i_class, {}) if task != "controlnet"))


def all_families() -> dict[str, Family]:
    """Every module of this package that defines a FAMILY: a new family is a new module."""
    import importlib
    import pkgutil

    families = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda info: info.name):
        family = getattr(importlib.import_module(f"{__name__}.{info.name}"), "FAMILY", None)
        if isinstance(family, Family):
            families[family.name] = family
    return families


def small_controlnet(
    transformer: ModelMixin, controlnet_class: type[ModelMixin], seed: int, **sizes: int
) -> ModelMixin:
    """A small ControlNet shaped like `transformer` (its config, with `sizes` overriding, such as
    fewer layers) and started from its weights, as InstantX's are; the base's config is copied,
    never changed (diffusers' SD3 `from_transformer` writes into it). Its zero-initialised layers
    get small random weights: a trained ControlNet has learned them, and at zero a random built-in
    would add nothing, leaving the control image no effect to test."""
    accepted = inspect.signature(controlnet_class.__init__).parameters
    config = {key: value for key, value in transformer.config.items() if key in accepted}
    controlnet = controlnet_class(**(config | sizes))
    controlnet.load_state_dict(transformer.state_dict(), strict=False)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in controlnet.modules():
            weight = getattr(module, "weight", None)
            if isinstance(weight, torch.nn.Parameter) and weight.dim() >= 2 and not weight.any():
                weight.copy_(torch.randn(weight.shape, generator=generator) * 0.05)
    return controlnet
