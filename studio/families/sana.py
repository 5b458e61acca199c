"""SANA / SANA 1.5 / SANA-Sprint (NVIDIA): linear-attention DiT with a 32x deep-compression
autoencoder and a Gemma-2 text encoder; Sprint is the one-to-four-step sCM distillation with
embedded guidance."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    AutoencoderDC,
    FlowMatchEulerDiscreteScheduler,
    SanaControlNetModel,
    SanaPipeline,
    SanaSprintPipeline,
    SanaTransformer2DModel,
    SCMScheduler,
)

from studio import offline
from studio.families import Family, small_controlnet


def small_dc_autoencoder() -> AutoencoderDC:
    return AutoencoderDC(
        in_channels=3,
        latent_channels=4,
        attention_head_dim=2,
        encoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock"),
        decoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock"),
        encoder_block_out_channels=(8, 8, 8),
        decoder_block_out_channels=(8, 8, 8),
        encoder_qkv_multiscales=((), (), (5,)),
        decoder_qkv_multiscales=((), (), (5,)),
        encoder_layers_per_block=(1, 1, 1),
        decoder_layers_per_block=(1, 1, 1),
        downsample_block_type="conv",
        upsample_block_type="interpolate",
        decoder_norm_types="rms_norm",
        decoder_act_fns="silu",
        scaling_factor=0.41407,
    )


def small_transformer(guidance_embeds: bool) -> SanaTransformer2DModel:
    return SanaTransformer2DModel(
        patch_size=1,
        in_channels=4,
        out_channels=4,
        num_layers=2,
        num_attention_heads=2,
        attention_head_dim=8,
        num_cross_attention_heads=2,
        cross_attention_head_dim=8,
        cross_attention_dim=16,
        caption_channels=32,
        sample_size=16,
        guidance_embeds=guidance_embeds,
        qk_norm="rms_norm_across_heads" if guidance_embeds else None,
    )


def build_random(target: Path, one_step: bool) -> None:
    torch.manual_seed(0)
    tokenizer = offline.gemma_tokenizer()
    components = dict(
        tokenizer=tokenizer,
        text_encoder=offline.gemma_text_encoder(tokenizer, hidden_size=32),
        vae=small_dc_autoencoder(),
        transformer=small_transformer(guidance_embeds=one_step),
    )
    if one_step:
        pipe = SanaSprintPipeline(scheduler=SCMScheduler(), **components)
    else:
        pipe = SanaPipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), **components)
    pipe.save_pretrained(target)


FAMILY = Family(
    name="sana",
    label="SANA",
    task_variants={"SanaSprintPipeline": {"img2img": "SanaSprintImg2ImgPipeline"}},
    token_order="cross-attention",
    controlnet_pipeline="SanaControlNetPipeline",
    controlnet_builder=lambda transformer, seed: small_controlnet(transformer, SanaControlNetModel, seed, num_layers=1),
    builtin_builders={
        "sana-random": lambda target: build_random(target, one_step=False),
        "sana-sprint-random": lambda target: build_random(target, one_step=True),
    },
)
