"""Train a scribble ControlNet for the shapes-world FLUX model, the base frozen (as ControlNets are
trained on a pre-trained model), so the live sketch tab draws what is sketched.

    python -m studio.toyworld.train_controlnet --double-blocks 2 --single-blocks 0   # world 2's, 35 min on one core
    python -m studio.toyworld.train_controlnet --base assets/models/shapes-flux --output DIR   # world 1's
    python -m studio.toyworld.train_controlnet --base assets/models/shapes-flux-2-sprint \
        --output assets/models/shapes-flux-2-sprint-controlnet-scribble --double-blocks 2 --single-blocks 0

The control image is each scene's object outlines, white on black, drawn 1 to 3 pixels wide (a
person's brush strokes on the canvas, shrunk to 64x64, are about that). Half the captions lose
their position words, so where an object goes must come from the sketch (with them, the caption
alone tells the base model, and the ControlNet learns only shapes); one caption in ten is dropped
so classifier-free guidance keeps working. The ControlNet starts as a copy of the
transformer's blocks (InstantX's recipe) with zero-initialised output layers, and is saved as a
diffusers FluxControlNetModel in fp16 safetensors.

A one-step student (`studio.toyworld.distill`: its transformer has the embedded guidance input) gets
a ControlNet made from it, which reads time and guidance as the student does, and learns what the
student is asked at sampling: its clean estimate at the times it samples from (one step from pure
noise, two through the intermediate time) regressed on the sketched scene's latents. A sketch and
a caption leave little of the scene open, so the regression has one answer to learn; the student
needs no dropped captions (its guidance is embedded).
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from diffusers import FluxControlNetModel, FluxPipeline
from PIL import Image
from tqdm import tqdm

from studio.families import TextConditioning, flux
from studio.sprint import (
    DENSE_TIME,
    GUIDANCE_INPUT,
    INTERMEDIATE_TIME,
    MAX_TIME,
    SIGMA_DATA,
    clean_estimate,
    trigflow_velocity,
)
from studio.toyworld import train
from studio.toyworld.data import build_pool
from studio.toyworld.distill import GUIDANCE_SCALES
from studio.toyworld.scene import render
from studio.toyworld.train_layout import unplaced_caption


def outline(masks: list[np.ndarray], width: int) -> Image.Image:
    """The objects' outlines, white on black, `width` pixels wide."""
    kernel = np.ones((width + 1, width + 1), np.uint8)
    lines = np.zeros(masks[0].shape, np.uint8)
    for mask in masks:
        lines |= cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_GRADIENT, kernel).astype(np.uint8)
    return Image.fromarray(lines * 255).convert("RGB")


@torch.no_grad()
def control_latents(pipe: FluxPipeline, controls: list[Image.Image], seed: int) -> torch.Tensor:
    """The control images as FluxControlNetPipeline hands them to the ControlNet: VAE-encoded
    (sampled), shifted and scaled, unpacked."""
    generator = torch.Generator().manual_seed(seed)
    encoded = []
    for start in range(0, len(controls), 256):
        batch = pipe.image_processor.preprocess(controls[start : start + 256])
        encoded.append(pipe.vae.encode(batch).latent_dist.sample(generator))
    latents = torch.cat(encoded)
    return (latents - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor


def student_loss(
    pipe: FluxPipeline,
    controlnet: FluxControlNetModel,
    latents: torch.Tensor,
    text: TextConditioning,
    conditions: torch.Tensor,
    guidance: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """The student's clean estimate with the ControlNet against the true latents, at TrigFlow times
    drawn where the student samples: pure noise (its first step) and the intermediate time (its
    second) two fifths each, the rest uniform so three and four steps are served too."""
    batch = latents.shape[0]
    draw = torch.rand(batch, generator=generator)
    anywhere = 0.2 + (MAX_TIME - 0.2) * torch.rand(batch, generator=generator)
    s = torch.where(draw < 0.4, MAX_TIME, torch.where(draw < 0.8, INTERMEDIATE_TIME, anywhere))
    noise = torch.randn(latents.shape, generator=generator)
    sb = s.view(-1, 1, 1, 1)
    x_s = SIGMA_DATA * (torch.cos(sb) * latents + torch.sin(sb) * noise)

    def velocity(flow_input: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return flux.velocity(pipe, flow_input, t * DENSE_TIME, text, guidance * GUIDANCE_INPUT, controlnet, conditions)

    estimate = clean_estimate(x_s, s, trigflow_velocity(velocity, x_s / SIGMA_DATA, s))
    return F.mse_loss(estimate / SIGMA_DATA, latents)


def main(argv: list[str] | None = None) -> None:
    parser = train.frozen_base_arguments(__doc__, "shapes-flux-2", "shapes-flux-2-controlnet-scribble", steps=2000)
    parser.add_argument("--resume", type=Path, default=None, help="a saved ControlNet to train further")
    # InstantX's FLUX ControlNets copy only the first few blocks; diffusers spreads their residuals
    # over all of the base's blocks. Fewer blocks: a faster live loop.
    parser.add_argument("--double-blocks", type=int, default=None, help="default: as many as the base")
    parser.add_argument("--single-blocks", type=int, default=None, help="default: as many as the base")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    torch.manual_seed(args.seed)
    pipe = FluxPipeline.from_pretrained(args.base, dtype=torch.float32)
    pipe.transformer.requires_grad_(False)
    config = pipe.transformer.config
    student = config.guidance_embeds
    if args.resume:
        controlnet = FluxControlNetModel.from_pretrained(args.resume, dtype=torch.float32)
    else:
        controlnet = FluxControlNetModel.from_transformer(
            pipe.transformer,
            num_layers=config.num_layers if args.double_blocks is None else args.double_blocks,
            num_single_layers=config.num_single_layers if args.single_blocks is None else args.single_blocks,
            attention_head_dim=config.attention_head_dim,
            num_attention_heads=config.num_attention_heads,
        )
    controlnet.train()
    pool = build_pool(args.scenes, seed=args.seed + 2)
    rng = np.random.default_rng(args.seed)
    controls = [outline(render(scene, 64)[1], int(rng.integers(1, 4))) for scene in pool.scenes]
    latents = (train.encode_pool(pipe.vae, pool, "cpu") - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor
    conditions = control_latents(pipe, controls, args.seed)
    captions = [
        scene.caption if keep else unplaced_caption(scene)
        for scene, keep in zip(pool.scenes, rng.random(len(pool.scenes)) < 0.5)
    ]
    if not student:
        shift = train.sigma_shift((latents.shape[-2] // 2) * (latents.shape[-1] // 2), pipe.scheduler.config)
    optimiser = torch.optim.AdamW(controlnet.parameters(), lr=args.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: train.warmup_cosine(s, args.steps, 100))
    generator = torch.Generator().manual_seed(args.seed)
    for step in (bar := tqdm(range(args.steps), desc="scribble ControlNet")):
        indices = torch.randint(len(pool), (args.batch_size,), generator=generator)
        dropped = torch.rand(args.batch_size, generator=generator) < (0.0 if student else 0.1)
        texts = ["" if drop else captions[i] for i, drop in zip(indices.tolist(), dropped.tolist())]
        with torch.no_grad():
            text = flux.encode_text(pipe, texts, train.MAX_SEQUENCE_LENGTH)
        if student:
            guidance = GUIDANCE_SCALES[step % len(GUIDANCE_SCALES)]
            loss = student_loss(pipe, controlnet, latents[indices], text, conditions[indices], guidance, generator)
        else:
            noisy, sigma, target = train.noised(latents[indices], shift, generator)
            predicted = flux.velocity(pipe, noisy, sigma, text, None, controlnet, conditions[indices])
            loss = F.mse_loss(predicted, target)
        train.optimise(loss, optimiser, schedule, controlnet.parameters())
        bar.set_postfix(loss=f"{loss.item():.4f}")
    controlnet.eval().to(torch.float16).save_pretrained(args.output, safe_serialization=True)
    print(
        f"saved a {sum(p.numel() for p in controlnet.parameters()) / 1e6:.2f} M parameter ControlNet to "
        f"{args.output} after {(time.perf_counter() - started) / 60:.1f} min"
    )


if __name__ == "__main__":
    main()
