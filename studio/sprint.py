"""SANA-Sprint's TrigFlow view of a rectified-flow model, shared by the distiller
(`studio.toyworld.distill`) and the one-step sampler (`studio.families.flux.FluxSprintPipeline`).

TrigFlow writes a noisy sample as x_s = cos(s)·x0 + sin(s)·z with x0 = σ_d·latent and
z ~ N(0, σ_d²), s in [0, π/2]. A flow-matching model (x_t = (1-t)·latent + t·ε, velocity ε - latent)
reads it at t = sin s / (sin s + cos s) on x_t = (x_s/σ_d)·√(t² + (1-t)²), and its velocity v becomes
TrigFlow's F = cos(s)·ε - sin(s)·latent; the clean estimate is x̂0 = cos(s)·x_s - sin(s)·σ_d·F. No
retraining: the teacher is used as it is.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import SCMScheduler

SIGMA_DATA = 0.5
# The student's time input is dense: its embedder sees t in [0, 1], not 1000·t (FLUX multiplies
# the timestep it is given by 1000), so the time derivative the JVP takes stays small.
DENSE_TIME = 1e-3
# Its guidance input as SANA-Sprint's: the embedder sees 0.1·w (FLUX multiplies guidance by 1000).
GUIDANCE_INPUT = 1e-4
# The largest TrigFlow time, where a sample is pure noise: SANA-Sprint's `max_timesteps`.
MAX_TIME = 1.57080
# The time SANA-Sprint's two-step sampling passes through (its `intermediate_timesteps`).
INTERMEDIATE_TIME = 1.3


def flow_time(s: torch.Tensor) -> torch.Tensor:
    return torch.sin(s) / (torch.sin(s) + torch.cos(s))


def as_batch(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-sample value shaped to broadcast over a batch of latents."""
    return value.reshape(-1, *([1] * (like.dim() - 1)))


def trigflow_velocity(
    flow_velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], scaled: torch.Tensor, s: torch.Tensor
) -> torch.Tensor:
    """F at TrigFlow time `s` (one per sample) for `scaled` = x_s / σ_d, from a flow-matching
    velocity function (flow-matching input, flow time t per sample) -> velocity."""
    t = flow_time(s)
    tb = as_batch(t, scaled)
    norm = torch.sqrt(tb**2 + (1 - tb) ** 2)
    flow_input = scaled * norm
    velocity = flow_velocity(flow_input, t)
    return ((1 - 2 * tb) * flow_input + (1 - 2 * tb + 2 * tb**2) * velocity) / norm


def clean_estimate(x_s: torch.Tensor, s: torch.Tensor, velocity: torch.Tensor) -> torch.Tensor:
    """x̂0 = cos(s)·x_s - sin(s)·σ_d·F (in TrigFlow's scale: σ_d·latent)."""
    sb = as_batch(s, x_s)
    return torch.cos(sb) * x_s - torch.sin(sb) * SIGMA_DATA * velocity


def sprint_scheduler() -> SCMScheduler:
    """SANA-Sprint's sampler: TrigFlow steps from `MAX_TIME` (one step, or two through `INTERMEDIATE_TIME`)."""
    return SCMScheduler(prediction_type="trigflow", sigma_data=SIGMA_DATA)
