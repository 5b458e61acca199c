"""Flow-matching inversion: a real image back to the initial noise of a rectified-flow model
(FLUX, SD3), by following the flow from sigma 0 to 1. Guidance is 1 (no CFG) while inverting, as
RF-Solver, FireFlow and UniEdit-Flow do; editing then samples from the returned noise."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers import DiffusionPipeline
from PIL import Image

from studio import flow
from studio.families import Family


@dataclass
class Inversion:
    sigmas: list[float]  # ascending, 0 (the image) to 1 (its noise)
    latents: list[torch.Tensor]  # latents[i] lies at sigmas[i]

    @property
    def noise(self) -> torch.Tensor:
        return self.latents[-1]


def invert_latents(
    model: flow.FlowModel,
    latents: torch.Tensor,
    sigmas: list[float],
    solver: str,
    after_step: Callable[[int], None] | None = None,
) -> Inversion:
    """Invert normalised latents along `sigmas` (as sampled: descending, ending at 0)."""
    ascending = list(reversed(sigmas))
    return Inversion(ascending, flow.integrate(model.velocity, latents, ascending, solver, after_step=after_step))


def invert_image(
    pipe: DiffusionPipeline,
    family: Family,
    image: Image.Image,
    prompt: str,
    steps: int,
    width: int,
    height: int,
    max_sequence_length: int,
    solver: str = "fireflow",
    after_step: Callable[[int], None] | None = None,
) -> Inversion:
    """The image (resized to width x height) inverted under `prompt` on the pipeline's own schedule."""
    latents = flow.encode_image(pipe, image, width, height)
    # Embedded guidance (FLUX dev) is given as 1 too: inversion must not amplify the prompt.
    guidance = flow.Guidance("embedded" if pipe.transformer.config.get("guidance_embeds") else "none", 1.0)
    model = flow.FlowModel(pipe, family, [prompt], guidance, max_sequence_length)
    sigmas = flow.schedule(pipe, family, steps, latents.shape[-2], latents.shape[-1])
    return invert_latents(model, latents, sigmas, solver, after_step)
