"""Wan 2.1 (Wan-AI): self-attention over the video tokens, cross-attention to 512 zero-padded
UMT5 text tokens, a causal 3D VAE (8x spatial, 4x temporal, normalised by per-channel mean and
std) and flow-matching sampling (UniPC, flow shift 3)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
from transformers import UMT5Config, UMT5EncoderModel

from studio import offline
from studio.families import Family, VideoConvention


def scheduler() -> UniPCMultistepScheduler:
    # Wan2.1-T2V-1.3B-Diffusers' scheduler with the flow shift its model card gives for 480p.
    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)


# The random built-in's text length (the real models take 512).
TINY_TEXT_LENGTH = 16


def build_random(target: Path) -> None:
    torch.manual_seed(0)
    tokenizer = offline.t5_tokenizer()
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=16,
        out_channels=16,
        text_dim=32,
        freq_dim=32,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    )
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    WanPipeline(
        tokenizer=tokenizer,
        text_encoder=UMT5EncoderModel(
            UMT5Config(
                vocab_size=len(tokenizer),
                d_model=32,
                d_kv=8,
                d_ff=64,
                num_layers=2,
                num_heads=4,
                dropout_rate=0.0,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        ).eval(),
        vae=vae,
        transformer=transformer,
        scheduler=scheduler(),
    ).save_pretrained(target)


def predict(pipe: WanPipeline, latents: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """The transformer's output for frame-major latents [B, F, C, h, w] (Wan's own are [B, C, F, h, w])."""
    output = pipe.transformer(
        hidden_states=latents.transpose(1, 2), timestep=timestep, encoder_hidden_states=text, return_dict=False
    )[0]
    return output.transpose(1, 2)


@torch.no_grad()
def decode(pipe: WanPipeline, latents: torch.Tensor) -> np.ndarray:
    config = pipe.vae.config
    latents = latents.transpose(1, 2).to(pipe.vae.dtype)
    mean = torch.tensor(config.latents_mean).view(1, -1, 1, 1, 1).to(latents)
    std = torch.tensor(config.latents_std).view(1, -1, 1, 1, 1).to(latents)
    video = pipe.vae.decode(latents * std + mean, return_dict=False)[0]
    return pipe.video_processor.postprocess_video(video, output_type="np")[0]


@torch.no_grad()
def encode(pipe: WanPipeline, frames: torch.Tensor) -> torch.Tensor:
    """Frames [1, 3, F, H, W] in [-1, 1] as normalised frame-major latents."""
    config = pipe.vae.config
    latents = pipe.vae.encode(frames.to(pipe.vae.dtype)).latent_dist.mode()
    mean = torch.tensor(config.latents_mean).view(1, -1, 1, 1, 1).to(latents)
    std = torch.tensor(config.latents_std).view(1, -1, 1, 1, 1).to(latents)
    return ((latents - mean) / std).transpose(1, 2)


FAMILY = Family(
    name="wan",
    label="Wan",
    task_variants={},
    # Text enters through cross-attention; the video self-attention is what DiTCtrl shares.
    token_order="video",
    builtin_builders={"wan-random": build_random},
    video=VideoConvention(predict=predict, decode=decode, encode=encode, channels_first=True),
)
