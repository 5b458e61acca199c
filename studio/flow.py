"""Rectified-flow sampling outside the pipelines' own loops, for the methods that need to drive
each step themselves (inversion, editing): the same schedule, guidance and latent normalisation
as the family's pipeline, with the transformer called through the family's `FlowConvention`."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.pipelines.flux.pipeline_flux import calculate_shift
from PIL import Image

from studio.errors import InvalidRequest
from studio.families import Family, TextConditioning

SOLVERS = ("euler", "fireflow")


@dataclass(frozen=True)
class Guidance:
    """The catalogue's guidance kind (cfg | true-cfg | embedded | none) and its scale."""

    kind: str
    scale: float

    @property
    def doubles_batch(self) -> bool:
        return self.kind in ("cfg", "true-cfg") and self.scale > 1


class FlowModel:
    """A rectified-flow pipeline with its prompts encoded once: `velocity(latents, sigma)`.
    With classifier-free guidance the batch is [negatives..., prompts...] in one transformer call,
    as the SD3 pipeline does, so attention control sees the same rows in every pass."""

    def __init__(
        self,
        pipe: DiffusionPipeline,
        family: Family,
        prompts: Sequence[str | Sequence[str]],
        guidance: Guidance,
        max_sequence_length: int,
        negative_prompt: str = "",
    ) -> None:
        """A prompt given as several captions is encoded caption by caption and the token
        sequences are joined (pooled conditioning from the first): regional prompting."""
        if family.flow is None:
            raise InvalidRequest(f"{family.label} is not a rectified-flow family; this needs FLUX or SD3.")
        self.pipe = pipe
        self.flow = family.flow
        self.guidance = guidance
        rows = [[prompt] if isinstance(prompt, str) else list(prompt) for prompt in prompts]

        def encode(rows: list[list[str]]) -> TextConditioning:
            parts = [
                self.flow.encode_text(pipe, [row[part] for row in rows], max_sequence_length)
                for part in range(len(rows[0]))
            ]
            return TextConditioning.join(parts)

        with torch.no_grad():
            self.text = encode(rows)
            if guidance.doubles_batch:
                self.text = encode([[negative_prompt] * len(row) for row in rows]).cat(self.text)

    @property
    def dtype(self) -> torch.dtype:
        return self.pipe.transformer.dtype

    def beside(self, other: FlowModel) -> FlowModel:
        """One model running this model's prompts and `other`'s in one batch, without encoding
        them again: rows [mine, theirs], or [my negatives, their negatives, mine, theirs] under CFG."""
        halves = 2 if self.guidance.doubles_batch else 1
        mine, theirs = self.text.chunk(halves), other.text.chunk(halves)
        pair = copy.copy(self)
        pair.text = TextConditioning.stack([part for couple in zip(mine, theirs) for part in couple])
        return pair

    def alternating_rows(self) -> tuple[list[int], list[int]]:
        """A `beside` model's rows of the first model and of the second (they alternate)."""
        rows = len(self.text)
        return list(range(0, rows, 2)), list(range(1, rows, 2))

    @torch.no_grad()
    def velocity(self, latents: torch.Tensor, sigma: float) -> torch.Tensor:
        batch = torch.cat([latents, latents]) if self.guidance.doubles_batch else latents
        sigmas = torch.full((batch.shape[0],), sigma, device=latents.device, dtype=latents.dtype)
        embedded = self.guidance.scale if self.guidance.kind == "embedded" else None
        velocity = self.flow.velocity(self.pipe, batch.to(self.dtype), sigmas.to(self.dtype), self.text, embedded)
        velocity = velocity.to(latents.dtype)
        if self.guidance.doubles_batch:
            unconditional, conditional = velocity.chunk(2)
            velocity = unconditional + self.guidance.scale * (conditional - unconditional)
        return velocity


def schedule(pipe: DiffusionPipeline, family: Family, steps: int, latent_height: int, latent_width: int) -> list[float]:
    """The sigmas (1 → 0, steps + 1 values) the family's pipeline samples on at this size."""
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    options = {}
    if scheduler.config.use_dynamic_shifting:
        c = scheduler.config
        options["mu"] = calculate_shift(
            (latent_height // 2) * (latent_width // 2),
            c.base_image_seq_len,
            c.max_image_seq_len,
            c.base_shift,
            c.max_shift,
        )
    if family.flow is not None and family.flow.linear_sigmas:
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), **options)
    else:
        scheduler.set_timesteps(steps, **options)
    return [float(sigma) for sigma in scheduler.sigmas]


def integrate(
    velocity: Callable[[torch.Tensor, float], torch.Tensor],
    latents: torch.Tensor,
    sigmas: Sequence[float],
    solver: str = "euler",
    before_step: Callable[[int], None] | None = None,
    after_step: Callable[[int], None] | None = None,
    adjust: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """Follow the flow along `sigmas` (descending samples, ascending inverts); returns every state.
    `before_step(index)` prepares a step (attention control's step counter), `after_step(index)`
    follows it (progress and cancel), `adjust(index, latents)` may change the latents a step
    starts from (an edit that pastes or restores latents).

    "fireflow" is FireFlow's second-order step at one velocity per step: each step moves with the
    velocity at its midpoint, and that midpoint velocity stands in for the next step's start.
    """
    if solver not in SOLVERS:
        raise InvalidRequest(f"Unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}.")
    states = [latents]
    reused = None
    for index, (sigma, next_sigma) in enumerate(itertools.pairwise(sigmas)):
        if before_step is not None:
            before_step(index)
        if adjust is not None:
            adjusted = adjust(index, latents)
            if adjusted is not latents:
                reused = None  # a velocity of other latents would carry the old content
                latents = adjusted
        delta = next_sigma - sigma
        start_velocity = reused if reused is not None else velocity(latents, sigma)
        if solver == "fireflow":
            reused = velocity(latents + delta / 2 * start_velocity, sigma + delta / 2)
            latents = latents + delta * reused
        else:
            latents = latents + delta * start_velocity
        states.append(latents)
        if after_step is not None:
            after_step(index)
    return states


def sample(
    pipe: DiffusionPipeline,
    family: Family,
    prompt: str,
    guidance: Guidance,
    max_sequence_length: int,
    seed: int,
    size: tuple[int, int],
    steps: int,
    negative_prompt: str = "",
    adjust: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
    after_step: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Plain sampling of one prompt from the seed's noise at `size` (width, height), on the
    family's own schedule: the final latents. `adjust` and `after_step` as in `integrate`."""
    model = FlowModel(pipe, family, [prompt], guidance, max_sequence_length, negative_prompt)
    noise = initial_noise(pipe, seed, *size).to(pipe.transformer.device)
    sigmas = schedule(pipe, family, steps, *noise.shape[-2:])
    return integrate(model.velocity, noise, sigmas, adjust=adjust, after_step=after_step)[-1]


@torch.no_grad()
def encode_image(pipe: DiffusionPipeline, image: Image.Image, width: int, height: int) -> torch.Tensor:
    """The image's normalised latents, as the transformer sees them ([1, C, H/8, W/8])."""
    vae = pipe.vae
    pixels = pipe.image_processor.preprocess(image.convert("RGB"), height=height, width=width)
    latents = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.mode()
    return ((latents - (vae.config.shift_factor or 0.0)) * vae.config.scaling_factor).float()


@torch.no_grad()
def decode(pipe: DiffusionPipeline, latents: torch.Tensor) -> list[Image.Image]:
    vae = pipe.vae
    latents = latents / vae.config.scaling_factor + (vae.config.shift_factor or 0.0)
    return pipe.image_processor.postprocess(vae.decode(latents.to(vae.device, vae.dtype)).sample, output_type="pil")


def initial_noise(pipe: DiffusionPipeline, seed: int, width: int, height: int) -> torch.Tensor:
    """The seed's starting latents, drawn as the pipelines draw them (CPU generator, unpacked)."""
    scale = pipe.vae_scale_factor
    shape = (1, pipe.vae.config.latent_channels, height // scale, width // scale)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))
