"""Stable Diffusion 3 / 3.5: joint attention over [image, text]; two CLIPs (pooled + sequence)
and T5; classifier-free guidance as a doubled batch."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

from studio import offline
from studio.families import Family
from studio.families.flux import small_vae


def build_random(target: Path) -> None:
    torch.manual_seed(0)
    clip_tokenizer = offline.clip_tokenizer()
    t5_tokenizer = offline.t5_tokenizer()
    transformer = SD3Transformer2DModel(
        sample_size=32,
        patch_size=2,
        in_channels=16,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        caption_projection_dim=32,
        pooled_projection_dim=64,
        out_channels=16,
        pos_embed_max_size=32,
    )
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=small_vae(16, (8, 16, 16)),
        text_encoder=offline.clip_text_encoder(clip_tokenizer, hidden_size=16, projection_dim=32),
        tokenizer=clip_tokenizer,
        text_encoder_2=offline.clip_text_encoder(clip_tokenizer, hidden_size=16, projection_dim=32),
        tokenizer_2=clip_tokenizer,
        text_encoder_3=offline.t5_text_encoder(t5_tokenizer, d_model=32),
        tokenizer_3=t5_tokenizer,
    )
    pipe.save_pretrained(target)


FAMILY = Family(
    name="sd3",
    label="SD3",
    task_variants={
        "StableDiffusion3Pipeline": {
            "img2img": "StableDiffusion3Img2ImgPipeline",
            "inpaint": "StableDiffusion3InpaintPipeline",
        }
    },
    token_order="image-text",
    builtin_builders={"sd3-random": build_random},
)
