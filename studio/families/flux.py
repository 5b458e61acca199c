"""FLUX.1 (black-forest-labs): joint attention over [text, image] in double-stream blocks, then
single-stream blocks; CLIP-L pooled + T5 sequence conditioning; embedded guidance (dev)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxControlNetModel,
    FluxFillPipeline,
    FluxPipeline,
    FluxTransformer2DModel,
)

from studio import offline
from studio.families import Family, FlowConvention, TextConditioning, TextSegment, small_controlnet


def flow_scheduler(timestep_distilled: bool = False) -> FlowMatchEulerDiscreteScheduler:
    # FLUX.1 [dev]'s own scheduler settings: resolution-dependent shift. [schnell], distilled to
    # sample in a few steps, ships the same scheduler unshifted (shift 1, no dynamic shifting).
    return FlowMatchEulerDiscreteScheduler(
        shift=1.0 if timestep_distilled else 3.0,
        use_dynamic_shifting=not timestep_distilled,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )


def build_pipeline(
    transformer: FluxTransformer2DModel,
    vae: AutoencoderKL,
    clip_hidden: int,
    t5_d_model: int,
    t5_layers: int = 2,
    timestep_distilled: bool = False,
    pipeline_class: type[FluxPipeline] | type[FluxFillPipeline] = FluxPipeline,
) -> FluxPipeline | FluxFillPipeline:
    clip_tokenizer = offline.clip_tokenizer()
    t5_tokenizer = offline.t5_tokenizer()
    return pipeline_class(
        scheduler=flow_scheduler(timestep_distilled),
        vae=vae,
        text_encoder=offline.clip_text_encoder(clip_tokenizer, hidden_size=clip_hidden),
        tokenizer=clip_tokenizer,
        text_encoder_2=offline.t5_text_encoder(t5_tokenizer, d_model=t5_d_model, layers=t5_layers),
        tokenizer_2=t5_tokenizer,
        transformer=transformer,
    )


TINY_SIZES: dict[str, Any] = {"num_layers": 1, "num_single_layers": 1, "attention_head_dim": 16,
                              "num_attention_heads": 2, "joint_attention_dim": 32, "pooled_projection_dim": 32,
                              "axes_dims_rope": (4, 6, 6)}  # fmt: skip


def small_transformer(guidance_embeds: bool = False, **sizes: Any) -> FluxTransformer2DModel:
    """A FLUX transformer over the small VAE's 16-channel latents packed 2x2 (64 features a token)."""
    return FluxTransformer2DModel(patch_size=1, in_channels=64, guidance_embeds=guidance_embeds, **sizes)


# The small VAE downsamples 4x, so FLUX Fill's mask (one channel per pixel of a latent's 4x4
# patch, packed 2x2) adds 64 features a token to the latents' 64 and the masked image's 64.
SMALL_FILL_CHANNELS = 64 + 64 + 4 * 4 * 4


def build_random(target: Path, guidance_embeds: bool, timestep_distilled: bool = False, fill: bool = False) -> None:
    torch.manual_seed(0)
    if fill:
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=SMALL_FILL_CHANNELS, out_channels=64, guidance_embeds=True, **TINY_SIZES
        )
    else:
        transformer = small_transformer(guidance_embeds, **TINY_SIZES)
    build_pipeline(
        transformer,
        offline.small_vae(16, (8, 16, 16)),
        clip_hidden=32,
        t5_d_model=32,
        timestep_distilled=timestep_distilled,
        pipeline_class=FluxFillPipeline if fill else FluxPipeline,
    ).save_pretrained(target)


def encode_text(pipe: FluxPipeline, prompts: list[str], max_sequence_length: int) -> TextConditioning:
    embeds, pooled, text_ids = pipe.encode_prompt(
        prompts, prompt_2=None, device=pipe.transformer.device, max_sequence_length=max_sequence_length
    )
    return TextConditioning(embeds, pooled, text_ids)


def velocity(
    pipe: FluxPipeline,
    latents: torch.Tensor,
    sigma: torch.Tensor,
    text: TextConditioning,
    guidance: float | None,
    controlnet: FluxControlNetModel | None = None,
    control_latents: torch.Tensor | None = None,
) -> torch.Tensor:
    """The transformer's velocity; with a ControlNet and the control image's (normalised, unpacked)
    latents, its residuals join the blocks as in FluxControlNetPipeline."""
    batch, channels, height, width = latents.shape
    image_ids = FluxPipeline._prepare_latent_image_ids(batch, height // 2, width // 2, latents.device, latents.dtype)
    embedded_guidance = None
    if pipe.transformer.config.guidance_embeds:
        embedded_guidance = torch.full((batch,), 3.5 if guidance is None else guidance, device=latents.device)
    inputs = dict(
        hidden_states=FluxPipeline._pack_latents(latents, batch, channels, height, width),
        timestep=sigma,  # FluxPipeline passes t / 1000, which is sigma
        guidance=embedded_guidance,
        pooled_projections=text.pooled,
        encoder_hidden_states=text.embeds,
        txt_ids=text.text_ids,
        img_ids=image_ids,
        return_dict=False,
    )
    residuals = {}
    if controlnet is not None:
        condition = FluxPipeline._pack_latents(control_latents, batch, channels, height, width)
        blocks, single_blocks = controlnet(controlnet_cond=condition, **inputs)
        residuals = dict(controlnet_block_samples=blocks, controlnet_single_block_samples=single_blocks)
    packed = pipe.transformer(**inputs, **residuals)[0]
    scale = pipe.vae_scale_factor
    return FluxPipeline._unpack_latents(packed, height * scale, width * scale, scale)


FAMILY = Family(
    name="flux",
    label="FLUX",
    task_variants={"FluxPipeline": {"img2img": "FluxImg2ImgPipeline", "inpaint": "FluxInpaintPipeline"}},
    token_order="text-image",
    # Only T5 tokens enter the joint sequence; CLIP's pooled vector goes to the modulation.
    text_segments=lambda pipe, length: [TextSegment(pipe.tokenizer_2, 0, length)],
    flow=FlowConvention(encode_text=encode_text, velocity=velocity, linear_sigmas=True),
    controlnet_pipeline="FluxControlNetPipeline",
    controlnet_builder=lambda transformer, seed: small_controlnet(
        transformer, FluxControlNetModel, seed, num_layers=1, num_single_layers=1
    ),
    prompt_outputs=("prompt_embeds", "pooled_prompt_embeds", None),
    builtin_builders={
        "flux-random": lambda target: build_random(target, guidance_embeds=True),
        "flux-schnell-random": lambda target: build_random(target, guidance_embeds=False, timestep_distilled=True),
        # Stands in for the trained dress-up try-on weights when they are absent.
        "flux-fill-random": lambda target: build_random(target, guidance_embeds=True, fill=True),
        # Stands in for the trained shapes-world weights when they are absent.
        "flux-shapes-random": lambda target: build_random(target, guidance_embeds=False),
    },
)
