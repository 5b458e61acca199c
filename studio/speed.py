"""Speed settings: diffusers' own cache hooks on a model's transformer, for one run, where
diffusers offers them for the family (its transformer has `CacheMixin`: FLUX, CogVideoX, Wan).

A setting joins a run only where it leaves the run what it asked for; otherwise the run goes
without it and says why (`Choice.notice`): a ControlNet adds its residuals into the very blocks a
cache skips, and a model of a few steps has nothing to reuse.

Not offered: FasterCache (built for classifier-free-guided video models, its guidance-branch
reuse needs the pipeline's CFG batch, which FLUX's embedded guidance does not have) and MagCache
(its magnitude ratios must be calibrated per model first; diffusers ships none for these families).
"""

from __future__ import annotations

import inspect
import typing
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import (
    DiffusionPipeline,
    FirstBlockCacheConfig,
    PyramidAttentionBroadcastConfig,
    TaylorSeerCacheConfig,
)
from diffusers.models.cache_utils import CacheMixin

from studio.catalogue import CONTROLNET_TASK, ModelSpec
from studio.errors import InvalidRequest

OFF = "off"
# A run of this many steps or fewer has nothing for a cache to reuse.
FEW_STEPS = 4


@dataclass(frozen=True)
class Speed:
    name: str
    label: str
    # (pipe) -> the diffusers cache config for it; None for "off"
    config: Callable[[DiffusionPipeline], Any] | None
    # What it costs on the shapes world where a measure drops by more than 0.05 (python -m
    # studio.toyworld.evaluate --speeds), shown beside its name in the UI.
    measured: str = ""


SPEEDS: dict[str, Speed] = {
    speed.name: speed
    for speed in (
        Speed(OFF, "Off (every step computed)", None),
        # The first block's residual decides whether the other blocks run again (ParaAttention).
        Speed("first-block-cache", "First-block cache", lambda pipe: FirstBlockCacheConfig(threshold=0.1)),
        # Outputs predicted by a first-order Taylor expansion between full steps every third step.
        Speed(
            "taylorseer",
            "TaylorSeer",
            lambda pipe: TaylorSeerCacheConfig(
                cache_interval=3, disable_cache_before_step=3, max_order=1, taylor_factors_dtype=torch.float32
            ),
        ),
        # Attention reused every other step in the middle of the schedule (Pyramid Attention Broadcast).
        Speed(
            "pyramid-attention-broadcast",
            "Pyramid Attention Broadcast",
            lambda pipe: PyramidAttentionBroadcastConfig(
                spatial_attention_block_skip_range=2,
                spatial_attention_timestep_skip_range=(100, 800),
                current_timestep_callback=lambda: pipe.current_timestep,
            ),
            " — loses 0.06 of shape on the shapes world",
        ),
    )
}


def transformer_class(spec: ModelSpec) -> type | None:
    """The diffusers class of the model's transformer, read from its pipeline's signature
    (without loading anything)."""
    pipeline = spec.family.pipeline_class(spec.pipeline, "t2i")
    try:
        transformer = typing.get_type_hints(pipeline.__init__).get("transformer")
    except (NameError, TypeError):
        transformer = inspect.signature(pipeline.__init__).parameters.get("transformer")
    options = typing.get_args(transformer) or (transformer,)  # `WanTransformer3DModel | None`
    return next((option for option in options if isinstance(option, type)), None)


def family_caches(spec: ModelSpec) -> bool:
    """Whether diffusers offers cache hooks for the model's transformer in its text-to-image pipeline."""
    transformer = transformer_class(spec)
    return (
        transformer is not None
        and issubclass(transformer, CacheMixin)
        and opens_cache_contexts(spec.family.pipeline_class(spec.pipeline, "t2i"))
    )


def family_compiles(spec: ModelSpec) -> bool:
    """Whether diffusers names the transformer's repeated blocks (what regional compilation compiles)."""
    return bool(getattr(transformer_class(spec), "_repeated_blocks", None))


def offered(spec: ModelSpec) -> list[str]:
    """The speed settings a model can take: every cache where its family has them, else off only."""
    return list(SPEEDS) if family_caches(spec) else [OFF]


@dataclass(frozen=True)
class Choice:
    """The speed a run goes with, and why it is not the one asked for where so."""

    speed: str
    notice: str = ""


def opens_cache_contexts(pipeline: type) -> bool:
    """Whether the pipeline names its transformer calls' cache contexts, which diffusers' cache
    hooks need to keep state between steps (FluxPipeline does; FLUX's img2img, inpaint and
    ControlNet pipelines do not, and a hook there fails at the first step). Read from diffusers'
    own source, so a pipeline that gains contexts gains the caches."""
    try:
        return "cache_context" in inspect.getsource(pipeline.__call__)
    except (OSError, TypeError):
        return False


def chosen(spec: ModelSpec, requested: str, steps: int, task: str = "t2i") -> Choice:
    """The asked speed where it fits the run (the model's pipeline for `task`); else off, with the reason."""
    if requested not in SPEEDS:
        raise InvalidRequest(f"Speed must be one of {', '.join(SPEEDS)}, not {requested!r}.")
    label = SPEEDS[requested].label
    if requested == OFF:
        return Choice(OFF)
    if not family_caches(spec):
        return Choice(OFF, f"{label}: diffusers has no cache hooks for {spec.family.label}; ran without it.")
    if steps <= FEW_STEPS:
        return Choice(OFF, f"{label}: {steps} steps leave nothing to reuse; ran without it.")
    if task.startswith(CONTROLNET_TASK):
        return Choice(OFF, f"{label}: a cache would skip the blocks the ControlNet steers; ran without it.")
    pipeline = spec.family.pipeline_class(spec.pipeline, task)
    if not opens_cache_contexts(pipeline):
        return Choice(OFF, f"{label}: diffusers' {pipeline.__name__} gives its cache hooks no context; ran without it.")
    return Choice(requested)


def compile_chosen(
    spec: ModelSpec, requested: bool, adapters: bool, speed: str, transformer_placement: str = "resident"
) -> tuple[bool, str]:
    """Whether the run compiles the transformer's repeated blocks, and why not where it was asked:
    a LoRA or a cache's hooks would make the compiled blocks compile again (seconds each time),
    and a transformer quantized or streamed by its memory plan is not the plain module compiled."""
    if not requested:
        return False, ""
    if not family_compiles(spec):
        return False, f"torch.compile: diffusers names no repeated blocks for {spec.family.label}; ran uncompiled."
    if transformer_placement != "resident":
        how = {"offloaded": "streamed from host memory", "nf4": "in 4-bit"}.get(transformer_placement, "in int8")
        return False, f"torch.compile: the memory plan keeps the transformer {how}; ran uncompiled."
    if adapters:
        return False, "torch.compile: a LoRA would make the compiled blocks compile again; ran uncompiled."
    if speed != OFF:
        return False, "torch.compile: a cache's hooks would make the compiled blocks compile again; ran uncompiled."
    return True, ""


# Each block's compiled call, kept between runs (compiling takes seconds; it is done once).
_compiled_calls: weakref.WeakKeyDictionary[torch.nn.Module, Callable] = weakref.WeakKeyDictionary()


@contextmanager
def compiled(pipe: DiffusionPipeline, on: bool) -> Iterator[None]:
    """The transformer's repeated blocks compiled for the block (regional compilation, as
    `ModelMixin.compile_repeated_blocks`), plain again after: the editing methods install their
    own attention processors in the same blocks, which compiled code would not follow."""
    if not on:
        yield
        return
    names = set(pipe.transformer._repeated_blocks)
    blocks = [module for module in pipe.transformer.modules() if type(module).__name__ in names]
    for block in blocks:
        if block not in _compiled_calls:
            _compiled_calls[block] = torch.compile(block._call_impl)
        # What `nn.Module.compile` sets: the module's call goes through the compiled one.
        block._compiled_call_impl = _compiled_calls[block]
    try:
        yield
    finally:
        for block in blocks:
            block._compiled_call_impl = None


@contextmanager
def cached(pipe: DiffusionPipeline, speed: str) -> Iterator[None]:
    """The pipeline's transformer with the speed's cache for the block, always taken off after
    (the pipeline is shared by every run of the model)."""
    make = SPEEDS[speed].config
    if make is None:
        yield
        return
    transformer = pipe.transformer
    transformer.enable_cache(make(pipe))
    try:
        yield
    finally:
        transformer.disable_cache()
