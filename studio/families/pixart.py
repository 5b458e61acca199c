"""PixArt-α / Σ / δ: cross-attention DiT conditioned on T5 alone; no task variants in diffusers
beyond text-to-image."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    DPMSolverMultistepScheduler,
    LCMScheduler,
    PixArtAlphaPipeline,
    PixArtSigmaPipeline,
    PixArtTransformer2DModel,
)

from studio import offline
from studio.families import Family


def build_random(target: Path, one_step: bool) -> None:
    torch.manual_seed(0)
    t5_tokenizer = offline.t5_tokenizer()
    transformer = PixArtTransformer2DModel(
        sample_size=16,
        num_layers=2,
        patch_size=2,
        attention_head_dim=8,
        num_attention_heads=3,
        caption_channels=32,
        in_channels=4,
        cross_attention_dim=24,
        out_channels=8,
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
        use_additional_conditions=False,
    )
    components = dict(
        tokenizer=t5_tokenizer,
        text_encoder=offline.t5_text_encoder(t5_tokenizer, d_model=32),
        vae=offline.small_vae(4, (8, 16, 16)),
        transformer=transformer,
    )
    if one_step:
        # PixArt-δ is PixArt-α distilled by LCM; its repo ships an LCMScheduler on α's linear betas.
        scheduler = LCMScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="linear")
        pipe = PixArtAlphaPipeline(scheduler=scheduler, **components)
    else:
        pipe = PixArtSigmaPipeline(scheduler=DPMSolverMultistepScheduler(), **components)
    pipe.save_pretrained(target)


FAMILY = Family(
    name="pixart",
    label="PixArt",
    no_control_reason=(
        "ControlNet is not available for PixArt: diffusers has no PixArt ControlNet with safetensors "
        "weights (PixArt-δ's ControlNet-Transformer exists only as a research checkpoint), and PixArt "
        "has no img2img pipeline to draw from a sketch."
    ),
    task_variants={},
    token_order="cross-attention",
    builtin_builders={
        "pixart-sigma-random": lambda target: build_random(target, one_step=False),
        "pixart-lcm-random": lambda target: build_random(target, one_step=True),
    },
)
