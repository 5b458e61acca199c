"""CogVideoX (THUDM / zai-org): one full 3D attention over [text (226 T5 tokens), video] with
shared projections, a causal 3D VAE (8x spatial, 4x temporal) and v-prediction DDIM sampling on
a zero-SNR schedule. The DiTCtrl paper's model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel

from studio import offline
from studio.families import Family, VideoConvention


def scheduler() -> CogVideoXDDIMScheduler:
    # CogVideoX-2b's own scheduler settings (its repo's scheduler_config.json).
    return CogVideoXDDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        set_alpha_to_one=True,
        snr_shift_scale=3.0,
        timestep_spacing="trailing",
    )


def small_vae(block_out_channels: tuple[int, ...] = (8, 8, 8, 8)) -> AutoencoderKLCogVideoX:
    """CogVideoX's causal 3D autoencoder, small: a block per channel count (four: 8x spatial, as
    CogVideoX's; three: 4x), 4x temporal, 16 channels."""
    blocks = len(block_out_channels)
    return AutoencoderKLCogVideoX(
        down_block_types=("CogVideoXDownBlock3D",) * blocks,
        up_block_types=("CogVideoXUpBlock3D",) * blocks,
        block_out_channels=block_out_channels,
        latent_channels=16,
        layers_per_block=1,
        norm_num_groups=4 if block_out_channels[0] >= 16 else 2,
        sample_height=64,
        sample_width=64,
        scaling_factor=1.0,
    )


def small_transformer(
    text_length: int, text_dim: int, patch_size: int = 2, latent_size: int = 8, **sizes: int
) -> CogVideoXTransformer3DModel:
    """A CogVideoX-2b-style transformer (sin-cos positions, no RoPE) over `latent_size`-square
    latents (8: 64-pixel frames)."""
    return CogVideoXTransformer3DModel(
        in_channels=16,
        out_channels=16,
        text_embed_dim=text_dim,
        sample_width=latent_size,
        sample_height=latent_size,
        sample_frames=17,
        patch_size=patch_size,
        max_text_seq_length=text_length,
        **sizes,
    )


def reconfigured(transformer: CogVideoXTransformer3DModel, **changes: int) -> CogVideoXTransformer3DModel:
    """The same transformer with config `changes` (patch_size, sample_height, ...): every weight
    whose shape the changes do not set is kept (blocks, time and text embeddings); the rest (a
    new patch size's patch embedding and output projection) starts afresh."""
    fresh = CogVideoXTransformer3DModel.from_config({**transformer.config, **changes})
    weights = fresh.state_dict()
    weights.update({name: w for name, w in transformer.state_dict().items() if w.shape == weights[name].shape})
    fresh.load_state_dict(weights)
    return fresh


def build_pipeline(
    transformer: CogVideoXTransformer3DModel, vae: AutoencoderKLCogVideoX, t5_d_model: int, t5_layers: int = 2
) -> CogVideoXPipeline:
    tokenizer = offline.t5_tokenizer()
    return CogVideoXPipeline(
        tokenizer=tokenizer,
        text_encoder=offline.t5_text_encoder(tokenizer, d_model=t5_d_model, layers=t5_layers),
        vae=vae,
        transformer=transformer,
        scheduler=scheduler(),
    )


# The random built-in's text length: with sin-cos positions the pipeline's max_sequence_length
# must equal the transformer's max_text_seq_length.
TINY_TEXT_LENGTH = 16


# The moving-shapes world's model (studio.toyworld.train_video): its text length and sizes.
SHAPES_TEXT_LENGTH = 40
SHAPES_SIZES = {
    "patch_size": 2,
    "num_attention_heads": 4,
    "attention_head_dim": 32,
    "time_embed_dim": 128,
    "num_layers": 6,
}
SHAPES_T5_D_MODEL = 128
# The VAE train_video makes (the shipped model's is (16, 32, 32, 64), 8x): three blocks, 4x spatial,
# so a 64-pixel frame is 16x16 latents and a small object covers three to eight latent pixels a
# side, as in the image world, whose model learned shapes (at 8x it covered one to four, and the
# model drew every shape as one blob).
SHAPES_VAE_CHANNELS = (16, 32, 64)


def build_random(target: Path) -> None:
    torch.manual_seed(0)
    transformer = small_transformer(
        TINY_TEXT_LENGTH, 32, num_attention_heads=2, attention_head_dim=16, time_embed_dim=32, num_layers=2
    )
    build_pipeline(transformer, small_vae(), t5_d_model=32).save_pretrained(target)


def build_shapes_random(target: Path) -> None:
    """The moving-shapes model's architecture with random weights: stands in where its trained
    weights are absent."""
    torch.manual_seed(0)
    transformer = small_transformer(SHAPES_TEXT_LENGTH, SHAPES_T5_D_MODEL, **SHAPES_SIZES)
    build_pipeline(transformer, small_vae((16, 32, 32, 64)), t5_d_model=SHAPES_T5_D_MODEL).save_pretrained(target)


def predict(pipe: CogVideoXPipeline, latents: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    rotary = None
    if pipe.transformer.config.use_rotary_positional_embeddings:  # CogVideoX-5b
        scale = pipe.vae_scale_factor_spatial
        _, frames, _, height, width = latents.shape
        rotary = pipe._prepare_rotary_positional_embeddings(height * scale, width * scale, frames, latents.device)
    return pipe.transformer(
        hidden_states=latents,
        encoder_hidden_states=text,
        timestep=timestep,
        image_rotary_emb=rotary,
        return_dict=False,
    )[0]


@torch.no_grad()
def decode(pipe: CogVideoXPipeline, latents: torch.Tensor) -> np.ndarray:
    video = pipe.decode_latents(latents.to(pipe.vae.dtype))
    return pipe.video_processor.postprocess_video(video, output_type="np")[0]


@torch.no_grad()
def encode(pipe: CogVideoXPipeline, frames: torch.Tensor) -> torch.Tensor:
    latents = pipe.vae.encode(frames.to(pipe.vae.dtype)).latent_dist.mode()
    return (latents * pipe.vae.config.scaling_factor).transpose(1, 2)


FAMILY = Family(
    name="cogvideox",
    label="CogVideoX",
    task_variants={},
    token_order="text-video",
    builtin_builders={"cogvideox-random": build_random, "cogvideox-shapes-random": build_shapes_random},
    video=VideoConvention(predict=predict, decode=decode, encode=encode),
)
