"""Stable Diffusion 3 / 3.5: joint attention over [image, text]; two CLIPs (pooled + sequence)
and T5; classifier-free guidance as a doubled batch."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    SD3ControlNetModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)

from studio import offline
from studio.families import Family, FlowConvention, TextConditioning, TextSegment, siamlayout, small_controlnet

CLIP_LENGTH = 77


def build_pipeline(
    transformer: SD3Transformer2DModel, vae: AutoencoderKL, clip_hidden: int, clip_projection: int, t5_d_model: int
) -> StableDiffusion3Pipeline:
    """An SD3 pipeline around `transformer` with small word-level text encoders. The two CLIPs'
    sequence outputs are concatenated (2 x clip_hidden, at most the T5 width) and their pooled
    projections make the transformer's pooled input (2 x clip_projection)."""
    clip_tokenizer = offline.clip_tokenizer()
    t5_tokenizer = offline.t5_tokenizer()
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae,
        text_encoder=offline.clip_text_encoder(clip_tokenizer, hidden_size=clip_hidden, projection_dim=clip_projection),
        tokenizer=clip_tokenizer,
        text_encoder_2=offline.clip_text_encoder(
            clip_tokenizer, hidden_size=clip_hidden, projection_dim=clip_projection
        ),
        tokenizer_2=clip_tokenizer,
        text_encoder_3=offline.t5_text_encoder(t5_tokenizer, d_model=t5_d_model),
        tokenizer_3=t5_tokenizer,
    )


def build_random(target: Path, qk_norm: str | None = None) -> None:
    torch.manual_seed(0)
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
        qk_norm=qk_norm,
    )
    build_pipeline(
        transformer, offline.small_vae(16, (8, 16, 16)), clip_hidden=16, clip_projection=32, t5_d_model=32
    ).save_pretrained(target)


def encode_text(pipe: StableDiffusion3Pipeline, prompts: list[str], max_sequence_length: int) -> TextConditioning:
    embeds, _, pooled, _ = pipe.encode_prompt(
        prompts,
        None,
        None,
        device=pipe.transformer.device,
        do_classifier_free_guidance=False,
        max_sequence_length=max_sequence_length,
    )
    return TextConditioning(embeds, pooled)


def velocity(
    pipe: StableDiffusion3Pipeline,
    latents: torch.Tensor,
    sigma: torch.Tensor,
    text: TextConditioning,
    guidance: float | None,
) -> torch.Tensor:
    # SD3 has no embedded guidance (`guidance` is unused): classifier-free guidance doubles the batch.
    return pipe.transformer(
        hidden_states=latents,
        timestep=sigma * 1000,
        encoder_hidden_states=text.embeds,
        pooled_projections=text.pooled,
        return_dict=False,
    )[0]


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
    extensions=(siamlayout.EXTENSION,),
    # 77 CLIP positions (CLIP-L and CLIP-G side by side in the features), then T5's.
    text_segments=lambda pipe, length: [
        TextSegment(pipe.tokenizer, 0, CLIP_LENGTH),
        TextSegment(pipe.tokenizer_3, CLIP_LENGTH, length),
    ],
    flow=FlowConvention(encode_text=encode_text, velocity=velocity, linear_sigmas=False),
    controlnet_pipeline="StableDiffusion3ControlNetPipeline",
    controlnet_builder=lambda transformer, seed: small_controlnet(transformer, SD3ControlNetModel, seed, num_layers=1),
    prompt_outputs=("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds"),
    builtin_builders={
        "sd3-random": build_random,
        # SD3.5 Large Turbo: SD3.5 Large's QK-normalised transformer, adversarially distilled to
        # sample in 4 steps without guidance, on SD3's scheduler (flow-match Euler, shift 3).
        "sd3-turbo-random": lambda target: build_random(target, qk_norm="rms_norm"),
        # Stands in for the trained shapes-world weights when they are absent.
        "sd3-shapes-random": build_random,
    },
)
