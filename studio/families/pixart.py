"""PixArt-α / Σ / δ: cross-attention DiT conditioned on T5 alone; no task variants in diffusers
beyond text-to-image."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel

from studio import offline
from studio.families import Family


def build_random(target: Path) -> None:
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
    pipe = PixArtSigmaPipeline(
        tokenizer=t5_tokenizer,
        text_encoder=offline.t5_text_encoder(t5_tokenizer, d_model=32),
        vae=offline.small_vae(4, (8, 16, 16)),
        transformer=transformer,
        scheduler=DPMSolverMultistepScheduler(),
    )
    pipe.save_pretrained(target)


FAMILY = Family(
    name="pixart",
    label="PixArt",
    task_variants={},
    token_order="cross-attention",
    builtin_builders={"pixart-sigma-random": build_random},
)
