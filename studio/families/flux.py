"""FLUX.1 (black-forest-labs): joint attention over [text, image] in double-stream blocks, then
single-stream blocks; CLIP-L pooled + T5 sequence conditioning; embedded guidance (dev)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxControlNetModel,
    FluxControlNetPipeline,
    FluxFillPipeline,
    FluxPipeline,
    FluxTransformer2DModel,
)
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput

from studio import offline
from studio.families import Family, FlowConvention, TextConditioning, TextSegment, small_controlnet
from studio.sprint import (
    DENSE_TIME,
    GUIDANCE_INPUT,
    INTERMEDIATE_TIME,
    MAX_TIME,
    SIGMA_DATA,
    sprint_scheduler,
    trigflow_velocity,
)


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


def build_random(
    target: Path, guidance_embeds: bool, timestep_distilled: bool = False, fill: bool = False, sprint: bool = False
) -> None:
    """`sprint`: a one-step student's layout (FluxSprintPipeline: embedded guidance, SCM scheduler)."""
    torch.manual_seed(0)
    if fill:
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=SMALL_FILL_CHANNELS, out_channels=64, guidance_embeds=True, **TINY_SIZES
        )
    else:
        transformer = small_transformer(guidance_embeds, **TINY_SIZES)
    pipe = build_pipeline(
        transformer,
        offline.small_vae(16, (8, 16, 16)),
        clip_hidden=32,
        t5_d_model=32,
        timestep_distilled=timestep_distilled,
        pipeline_class=FluxFillPipeline if fill else FluxPipeline,
    )
    if sprint:
        pipe.register_modules(scheduler=sprint_scheduler())
    pipe.save_pretrained(target)


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
    batch = latents.shape[0]
    embedded_guidance = None
    if pipe.transformer.config.guidance_embeds:
        embedded_guidance = torch.full((batch,), 3.5 if guidance is None else guidance, device=latents.device)
    # FluxPipeline passes t / 1000, which is sigma.
    inputs = packed_inputs(latents, sigma, text, embedded_guidance)
    residuals = {}
    if controlnet is not None and control_latents is not None:
        residuals = control_residuals(controlnet, control_latents, inputs)
    return unpacked(pipe.transformer(**inputs, **residuals)[0], latents)


def packed_inputs(
    latents: torch.Tensor, timestep: torch.Tensor, text: TextConditioning, guidance: torch.Tensor | None
) -> dict[str, Any]:
    """A FLUX transformer's (or ControlNet's) keyword arguments for unpacked latents."""
    batch, channels, height, width = latents.shape
    return dict(
        hidden_states=FluxPipeline._pack_latents(latents, batch, channels, height, width),
        timestep=timestep,
        guidance=guidance,
        pooled_projections=text.pooled,
        encoder_hidden_states=text.embeds,
        txt_ids=text.text_ids,
        img_ids=FluxPipeline._prepare_latent_image_ids(batch, height // 2, width // 2, latents.device, latents.dtype),
        return_dict=False,
    )


def control_residuals(
    controlnet: FluxControlNetModel, control_latents: torch.Tensor, inputs: dict[str, Any]
) -> dict[str, Any]:
    """The ControlNet's block residuals for the transformer call `inputs`, as FluxControlNetPipeline
    passes them."""
    batch, channels, height, width = control_latents.shape
    condition = FluxPipeline._pack_latents(control_latents, batch, channels, height, width)
    blocks, single_blocks = controlnet(controlnet_cond=condition, **inputs)
    return dict(controlnet_block_samples=blocks, controlnet_single_block_samples=single_blocks)


def unpacked(packed: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The transformer's packed output in the shape of the latents `like` (B, C, H, W)."""
    batch, channels, height, width = like.shape
    return packed.view(batch, height // 2, width // 2, channels, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(like.shape)


def sprint_sample(
    pipe: FluxPipeline | FluxControlNetPipeline,
    prompt: Any,
    height: int | None,
    width: int | None,
    num_inference_steps: int,
    guidance_scale: float,
    max_timesteps: float,
    intermediate_timesteps: float | None,
    generator: torch.Generator | None,
    prompt_embeds: torch.Tensor | None,
    pooled_prompt_embeds: torch.Tensor | None,
    output_type: str,
    callback_on_step_end: Any,
    max_sequence_length: int,
    control: Any = None,
) -> ImagePipelineOutput:
    """TrigFlow sampling for a FLUX student distilled as SANA-Sprint (studio.toyworld.distill): the
    SCM scheduler's one to four steps from pure noise at `max_timesteps`, the student's time read
    densely and its guidance embedded (no second pass). `control`: (packed control latents,
    scale, start, end), whose ControlNet residuals join the student's blocks, or None."""
    height = height or pipe.default_sample_size * pipe.vae_scale_factor
    width = width or pipe.default_sample_size * pipe.vae_scale_factor
    device = pipe._execution_device
    embeds, pooled, text_ids = pipe.encode_prompt(
        prompt=prompt,
        prompt_2=None,
        prompt_embeds=prompt_embeds,
        pooled_prompt_embeds=pooled_prompt_embeds,
        device=device,
        max_sequence_length=max_sequence_length,
    )
    batch = embeds.shape[0]
    channels = pipe.transformer.config.in_channels // 4
    noise, image_ids = pipe.prepare_latents(batch, channels, height, width, embeds.dtype, device, generator)
    latents = noise * SIGMA_DATA
    pipe.scheduler.set_timesteps(
        num_inference_steps,
        device=device,
        max_timesteps=max_timesteps,
        intermediate_timesteps=intermediate_timesteps if num_inference_steps == 2 else None,
    )
    times = pipe.scheduler.timesteps[:-1]
    guidance = torch.full((batch,), guidance_scale * GUIDANCE_INPUT, device=device, dtype=embeds.dtype)
    text = dict(pooled_projections=pooled, encoder_hidden_states=embeds, txt_ids=text_ids, img_ids=image_ids)
    denoised = latents

    def velocity(flow_input: torch.Tensor, t: torch.Tensor, control_scale: float) -> torch.Tensor:
        residuals: dict[str, Any] = {}
        if control is not None:
            # A ControlNet with a guidance input was made from the student and reads as it
            # does; one without, the teacher's, reads time as the teacher.
            student_made = pipe.controlnet.config.guidance_embeds
            blocks, single_blocks = pipe.controlnet(
                hidden_states=flow_input,
                controlnet_cond=control[0],
                conditioning_scale=control_scale,
                timestep=t * DENSE_TIME if student_made else t,
                guidance=guidance if student_made else None,
                return_dict=False,
                **text,
            )
            residuals = dict(controlnet_block_samples=blocks, controlnet_single_block_samples=single_blocks)
        return pipe.transformer(
            hidden_states=flow_input, timestep=t * DENSE_TIME, guidance=guidance, return_dict=False,
            **text, **residuals,
        )[0]  # fmt: skip

    for index, s in enumerate(times):
        control_scale = 0.0
        if control is not None:
            _, scale, start, end = control
            control_scale = scale * (not (index / len(times) < start or (index + 1) / len(times) > end))
        step_times = s.expand(batch).to(embeds.dtype)
        trig_velocity = trigflow_velocity(
            functools.partial(velocity, control_scale=control_scale), latents / SIGMA_DATA, step_times
        )
        latents, denoised = pipe.scheduler.step(
            SIGMA_DATA * trig_velocity, s, latents, generator=generator, return_dict=False
        )
        if callback_on_step_end is not None:
            # The step's clean estimate, in the latents' own scale: what a preview should show
            # (the noisy TrigFlow sample is not a flow latent a preview could read).
            callback_on_step_end(pipe, index, s, {"latents": denoised / SIGMA_DATA})
    clean = denoised / SIGMA_DATA
    if output_type == "latent":
        return ImagePipelineOutput(images=clean)
    unpacked_latents = pipe._unpack_latents(clean, height, width, pipe.vae_scale_factor)
    unpacked_latents = unpacked_latents / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
    image = pipe.vae.decode(unpacked_latents.to(pipe.vae.dtype), return_dict=False)[0]
    return ImagePipelineOutput(images=pipe.image_processor.postprocess(image, output_type=output_type))


class FluxSprintPipeline(FluxPipeline):
    """A SANA-Sprint-distilled FLUX student: one to four steps, embedded guidance."""

    # It samples in TrigFlow with its own time and guidance inputs: the studio's rectified-flow
    # methods (inversion, ColorCtrl, drag) do not apply to it.
    rectified_flow = False

    @torch.no_grad()
    def __call__(
        self,
        prompt: Any = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 2,
        guidance_scale: float = 3.0,
        max_timesteps: float = MAX_TIME,
        intermediate_timesteps: float | None = INTERMEDIATE_TIME,
        generator: torch.Generator | None = None,
        prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        callback_on_step_end: Any = None,
        max_sequence_length: int = 512,
    ) -> ImagePipelineOutput:
        return sprint_sample(
            self,
            prompt, height, width, num_inference_steps, guidance_scale, max_timesteps, intermediate_timesteps,
            generator, prompt_embeds, pooled_prompt_embeds, output_type, callback_on_step_end, max_sequence_length,
        )  # fmt: skip


class FluxSprintControlNetPipeline(FluxControlNetPipeline):
    """The student with a FLUX ControlNet (the teacher's, whose residuals the student, initialised
    from the teacher, still reads)."""

    @torch.no_grad()
    def __call__(
        self,
        prompt: Any = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 2,
        guidance_scale: float = 3.0,
        control_image: Any = None,
        controlnet_conditioning_scale: float = 1.0,
        control_guidance_start: float = 0.0,
        control_guidance_end: float = 1.0,
        max_timesteps: float = MAX_TIME,
        intermediate_timesteps: float | None = INTERMEDIATE_TIME,
        generator: torch.Generator | None = None,
        prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        callback_on_step_end: Any = None,
        max_sequence_length: int = 512,
    ) -> ImagePipelineOutput:
        height = height or self.default_sample_size * self.vae_scale_factor
        width = width or self.default_sample_size * self.vae_scale_factor
        device = self._execution_device
        image = self.prepare_image(control_image, width, height, 1, 1, device, self.vae.dtype)
        # The control image's latents as FluxControlNetPipeline makes them (its mean: no draw from
        # the generator, so the noise is the one the seed gives without a ControlNet).
        encoded = self.vae.encode(image).latent_dist.mode()
        encoded = (encoded - self.vae.config.shift_factor) * self.vae.config.scaling_factor
        _, channels, rows, columns = encoded.shape
        condition = self._pack_latents(encoded, 1, channels, rows, columns)
        control = (condition, controlnet_conditioning_scale, control_guidance_start, control_guidance_end)
        return sprint_sample(
            self,
            prompt, height, width, num_inference_steps, guidance_scale, max_timesteps, intermediate_timesteps,
            generator, prompt_embeds, pooled_prompt_embeds, output_type, callback_on_step_end, max_sequence_length,
            control,
        )  # fmt: skip


FAMILY = Family(
    name="flux",
    label="FLUX",
    task_variants={
        "FluxPipeline": {"img2img": "FluxImg2ImgPipeline", "inpaint": "FluxInpaintPipeline"},
        "FluxSprintPipeline": {"controlnet": "FluxSprintControlNetPipeline"},
    },
    own_pipelines={cls.__name__: cls for cls in (FluxSprintPipeline, FluxSprintControlNetPipeline)},
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
        # Stands in for the distilled shapes-world student when its weights are absent.
        "flux-sprint-random": lambda target: build_random(target, guidance_embeds=True, sprint=True),
    },
)
