"""Train the moving-shapes world's CogVideoX model: its causal 3D VAE first, then the transformer
with its T5 text encoder, on v-prediction in exactly the schedule CogVideoXPipeline samples with.

    python -m studio.toyworld.train_video                # CPU: see the README for the times
    python -m studio.toyworld.train_video --device cuda

Writes a complete CogVideoXPipeline (fp16 safetensors) that the registry loads like a hub model.
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLCogVideoX, CogVideoXPipeline
from tqdm import tqdm

from studio.families import cogvideox
from studio.toyworld.grounding import Grounding, grounding_options
from studio.toyworld.motion import TRACK_ATTRIBUTES, ClipPool, build_clip_pool
from studio.toyworld.scene import BACKGROUNDS
from studio.toyworld.train import MODELS_DIR, optimise, save, step_with_average, trained_components, warmup_cosine

# Room for two objects and their motions worded at length.
TEXT_LENGTH = cogvideox.SHAPES_TEXT_LENGTH
# Steps a time-budgeted run takes before timing itself (the first ones warm up kernels).
BUDGET_PROBE = (10, 60)
# Seconds a time-budgeted run keeps for saving the model after its last step.
SAVE_SECONDS = 45.0
# Frames the VAE learns on: a window of a clip (the causal VAE is convolutional in time) with an
# odd count of latent frames, as CogVideoX decodes those back to 4k + 1 frames (an even count of
# latent frames decodes to 4k).
VAE_FRAMES = 9


def clip_windows(pool: ClipPool, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """A batch of VAE_FRAMES-frame windows of random clips, one start for the batch."""
    frames = pool.videos.shape[2]
    start = int(torch.randint(frames - VAE_FRAMES + 1, (), generator=generator))
    videos = pool.batch(torch.randint(len(pool), (batch_size,), generator=generator))
    return videos[:, :, start : start + VAE_FRAMES]


def reconstruction_loss(reconstruction: torch.Tensor, videos: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(reconstruction, videos) + 0.1 * F.l1_loss(reconstruction, videos)


def psnr(reconstruction: torch.Tensor, videos: torch.Tensor) -> str:
    return f"{10 * math.log10(4 / max(F.mse_loss(reconstruction.detach(), videos).item(), 1e-10)):.1f}"


def train_vae(
    pool: ClipPool,
    steps: int,
    batch_size: int,
    device: str,
    seed: int,
    start: AutoencoderKLCogVideoX | None = None,
    channels: tuple[int, ...] = cogvideox.SHAPES_VAE_CHANNELS,
) -> AutoencoderKLCogVideoX:
    """A new VAE of `channels` (one block each), or `start` trained further."""
    torch.manual_seed(seed)
    vae = (start or cogvideox.small_vae(channels)).to(device).train()
    optimiser = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: warmup_cosine(s, steps, 50))
    generator = torch.Generator().manual_seed(seed)
    for _ in (bar := tqdm(range(steps), desc="VAE", mininterval=30)):
        videos = clip_windows(pool, batch_size, generator).to(device)
        posterior = vae.encode(videos).latent_dist
        reconstruction = vae.decode(posterior.sample()).sample
        kl = posterior.kl().mean() / videos[0].numel()
        loss = reconstruction_loss(reconstruction, videos) + 1e-4 * kl
        optimise(loss, optimiser, schedule, vae.parameters())
        bar.set_postfix(loss=f"{loss.item():.4f}", psnr=psnr(reconstruction, videos))
    return vae.eval()


def train_decoder(
    vae: AutoencoderKLCogVideoX, pool: ClipPool, steps: int, batch_size: int, device: str, seed: int, noise: float
) -> AutoencoderKLCogVideoX:
    """The decoder alone learns to draw the clean clip from its latents with Gaussian noise added
    (a random share, up to `noise`, of the latents' spread). The encoder and the scaling stay, so
    the latent space is the one the transformer knows; what the transformer gets slightly wrong
    then decodes to a clean shape instead of blotches (the first decoder drew garbage from latents
    30% off)."""
    torch.manual_seed(seed)
    vae = vae.to(device).train()
    vae.encoder.requires_grad_(False)
    parameters = [p for p in vae.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(parameters, lr=2e-4, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: warmup_cosine(s, steps, 50))
    generator = torch.Generator().manual_seed(seed)
    for _ in (bar := tqdm(range(steps), desc="decoder", mininterval=30)):
        videos = clip_windows(pool, batch_size, generator).to(device)
        with torch.no_grad():
            latents = vae.encode(videos).latent_dist.mode()
        share = noise * torch.rand(batch_size, 1, 1, 1, 1, generator=generator).to(device)
        disturbed = latents + share * latents.std() * torch.randn(latents.shape, generator=generator).to(device)
        reconstruction = vae.decode(disturbed).sample
        loss = reconstruction_loss(reconstruction, videos)
        optimise(loss, optimiser, schedule, parameters)
        bar.set_postfix(loss=f"{loss.item():.4f}", psnr=psnr(reconstruction, videos))
    return vae.requires_grad_(True).eval()


@torch.no_grad()
def encode_pool(vae: AutoencoderKLCogVideoX, pool: ClipPool, device: str) -> torch.Tensor:
    """Every clip's latents as the transformer takes them, [N, F, C, h, w], scaled by the VAE's
    scaling factor (taken from the data for a fresh VAE)."""
    parts = []
    for start in range(0, len(pool), 32):
        videos = pool.batch(torch.arange(start, min(start + 32, len(pool)))).to(device)
        parts.append(vae.encode(videos).latent_dist.mode().cpu())
    latents = torch.cat(parts)
    if vae.config.scaling_factor == 1.0:
        vae.register_to_config(scaling_factor=float(1 / latents.std()))
    return (latents * vae.config.scaling_factor).permute(0, 2, 1, 3, 4).contiguous()


def foreground_weights(pool: ClipPool, latent_shape: tuple[int, ...], weight: float) -> torch.Tensor:
    """[clips, latent frames, 1, h, w]: 1 + `weight` on every latent pixel that covers some object
    pixel in the frames it encodes (CogVideoX's causal VAE: the first frame alone, then groups of
    four), 1 elsewhere. An object's shape lives in the one to four latent pixels a small object
    covers at 8x; weighted, the loss asks for them as much as for the background around them."""
    latent_frames, height, width = latent_shape[-4], latent_shape[-2], latent_shape[-1]
    factor = pool.videos.shape[-1] // width
    parts = []
    for start in range(0, len(pool), 256):
        clips = pool.clips[start : start + 256]
        backgrounds = torch.tensor([BACKGROUNDS[clip.background] for clip in clips], dtype=torch.uint8)
        covered = (pool.videos[start : start + 256] != backgrounds.view(-1, 3, 1, 1, 1)).any(dim=1)  # [n, F, H, W]
        groups = [covered[:, :1], *covered[:, 1:].split(4, dim=1)][:latent_frames]
        per_latent = torch.stack([group.any(dim=1) for group in groups], dim=1).float()
        pooled = F.max_pool2d(per_latent.flatten(0, 1).unsqueeze(1), factor)
        parts.append(pooled.view(len(clips), latent_frames, 1, height, width))
    return 1 + weight * torch.cat(parts)


def text_embeddings(pipe: CogVideoXPipeline, texts: list[str]) -> torch.Tensor:
    """T5 embeddings exactly as CogVideoXPipeline makes them (no attention mask), with gradients."""
    ids = pipe.tokenizer(
        texts,
        padding="max_length",
        max_length=TEXT_LENGTH,
        truncation=True,
        add_special_tokens=True,
        return_tensors="pt",
    ).input_ids
    return pipe.text_encoder(ids.to(pipe.text_encoder.device))[0]


def velocity_loss(
    pipe: CogVideoXPipeline,
    latents: torch.Tensor,
    captions: list[str],
    indices: torch.Tensor,
    generator: torch.Generator,
    device: str,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """The v-prediction loss of the transformer on the `indices` rows of `latents` at random
    timesteps of the pipeline's own scheduler; `weights` (as foreground_weights) weigh it."""
    scheduler = pipe.scheduler
    # One caption in ten is dropped so classifier-free guidance has an unconditional model.
    texts = ["" if torch.rand((), generator=generator) < 0.1 else captions[i] for i in indices.tolist()]
    x0 = latents[indices].to(device)
    noise = torch.randn(x0.shape, generator=generator).to(device)
    timesteps = torch.randint(scheduler.config.num_train_timesteps, (len(indices),), generator=generator)
    noisy = scheduler.add_noise(x0, noise, timesteps)
    target = scheduler.get_velocity(x0, noise, timesteps)
    prediction = pipe.transformer(
        hidden_states=noisy,
        encoder_hidden_states=text_embeddings(pipe, texts),
        timestep=timesteps.to(device),
        return_dict=False,
    )[0]
    # Float32 for the loss even when the forward ran in bfloat16 (--bf16).
    error = (prediction.float() - target) ** 2
    if weights is None:
        return error.mean()
    weight = weights[indices].to(device)
    return (weight * error).mean() / weight.mean()


def steps_within(planned: int, done: int, seconds_per_step: float, seconds_left: float) -> int:
    """The step count that ends in the time left: never more than planned, never fewer than done."""
    return max(done, min(planned, done + int(max(seconds_left, 0.0) / max(seconds_per_step, 1e-9))))


def train_transformer(
    pipe: CogVideoXPipeline,
    latents: torch.Tensor,
    captions: list[str],
    args: argparse.Namespace,
    grounding: Grounding | None = None,
    weights: torch.Tensor | None = None,
    deadline: float | None = None,
) -> CogVideoXPipeline:
    """With `grounding`, its loss (weighted by --grounding-weight) joins the v-prediction loss;
    `weights` (per latent pixel, as foreground_weights) weigh the v-prediction loss. With a
    `deadline` (a perf_counter time) the step count is cut, once the speed is known, to what
    ends before it with time to save; the learning-rate schedule follows the new count."""
    torch.manual_seed(args.seed)
    names = trained_components(pipe)
    trained = torch.nn.ModuleList([getattr(pipe, name).to(args.device) for name in names]).train()
    ema = copy.deepcopy(trained).eval().requires_grad_(False)
    heads = list(grounding.heads.parameters()) if grounding else []
    optimiser = torch.optim.AdamW([*trained.parameters(), *heads], lr=args.learning_rate, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: warmup_cosine(s, args.transformer_steps, 200))
    generator = torch.Generator().manual_seed(args.seed)
    timed_from = 0.0
    for step in (bar := tqdm(range(args.transformer_steps), desc="transformer", mininterval=30)):
        if deadline is not None and step in BUDGET_PROBE:
            now = time.perf_counter()
            if step == BUDGET_PROBE[0]:
                timed_from = now
            else:
                per_step = (now - timed_from) / (BUDGET_PROBE[1] - BUDGET_PROBE[0])
                left = deadline - now - SAVE_SECONDS
                args.transformer_steps = steps_within(args.transformer_steps, step, per_step, left)
                bar.total = args.transformer_steps
                print(f"\n{per_step:.3f} s a step: {args.transformer_steps} steps fit the time budget", flush=True)
        # The speed can change after the probe (a machine shared with other work): the deadline holds.
        late = deadline is not None and step >= BUDGET_PROBE[1] and time.perf_counter() > deadline - SAVE_SECONDS
        if step >= args.transformer_steps or late:
            break
        indices = torch.randint(len(captions), (args.batch_size,), generator=generator)
        with torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16, enabled=args.bf16):
            loss = velocity_loss(pipe, latents, captions, indices, generator, args.device, weights)
            shown = {"loss": f"{loss.item():.4f}"}
            if args.image_batch_size:
                # Image-video joint training, as CogVideoX's own: first frames as one-frame videos.
                stills = torch.randint(len(captions), (args.image_batch_size,), generator=generator)
                first_weights = None if weights is None else weights[:, :1]
                image_loss = velocity_loss(
                    pipe, latents[:, :1], captions, stills, generator, args.device, first_weights
                )
                shown["image"] = f"{image_loss.item():.4f}"
                loss = (loss + image_loss) / 2
            if grounding is not None:
                loss = grounding.added_to(loss, indices, shown)
        step_with_average(loss, step, optimiser, schedule, trained, ema)
        bar.set_postfix(shown)
        if args.checkpoint_every and (step + 1) % args.checkpoint_every == 0:
            save(pipe, names, ema, args.output)
    for name, module in zip(names, ema):
        setattr(pipe, name, module.requires_grad_(True))
    return pipe


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=MODELS_DIR / "moving-shapes-cogvideox")
    parser.add_argument("--clips", type=int, default=6000)
    parser.add_argument(
        "--size",
        type=int,
        default=64,
        help="clip side in pixels; at 128 the 8x VAE gives a small object three or more latent pixels a side",
    )
    parser.add_argument("--vae-steps", type=int, default=None, help="default: 4000, or 0 with --vae-from")
    parser.add_argument("--vae-batch-size", type=int, default=4)
    parser.add_argument(
        "--vae-channels",
        type=int,
        nargs="+",
        default=list(cogvideox.SHAPES_VAE_CHANNELS),
        help="a fresh VAE's channels, one block each (four blocks: CogVideoX's 8x spatial; three: 4x)",
    )
    parser.add_argument(
        "--decoder-steps",
        type=int,
        default=0,
        help="then train the VAE's decoder alone on noisy latents (the latent space stays)",
    )
    parser.add_argument(
        "--latent-noise",
        type=float,
        default=0.5,
        help="the most noise the decoder learns to see past (share of spread)",
    )
    parser.add_argument("--transformer-steps", type=int, default=6000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--image-batch-size",
        type=int,
        default=0,
        help="also train on this many first frames a step, as one-frame videos (image-video joint training)",
    )
    parser.add_argument(
        "--bf16",
        action="store_true",
        help="the transformer's and T5's matmuls in bfloat16 under autocast (weights, optimiser and loss stay "
        "float32): 1.45x a step on a CPU with AVX-512 BF16",
    )
    parser.add_argument("--checkpoint-every", type=int, default=500)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--resume", type=Path, default=None, help="a saved moving-shapes pipeline to train further")
    parser.add_argument(
        "--vae-from",
        type=Path,
        default=None,
        help="a saved moving-shapes pipeline whose VAE to use instead of training one",
    )
    parser.add_argument(
        "--foreground-weight",
        type=float,
        default=0.0,
        help="extra weight of the loss on latent pixels that cover an object (see foreground_weights)",
    )
    parser.add_argument(
        "--patch-size",
        type=int,
        default=cogvideox.SHAPES_SIZES["patch_size"],
        help="latent pixels per token side; a resumed model of another patch size keeps its blocks",
    )
    grounding_options(parser)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: PyTorch's default)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--minutes",
        type=float,
        default=0.0,
        help="a time budget for the whole run (0: none): the transformer takes as many of its steps as fit, then saves",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):
        # TF32 tensor cores for the float32 matmuls: several times faster, and the weights are
        # saved in fp16 anyway.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    started = time.perf_counter()
    pool = build_clip_pool(args.clips, seed=args.seed, size=args.size)
    print(f"{len(pool)} clips drawn in {time.perf_counter() - started:.0f} s", flush=True)
    if args.resume:
        pipe = CogVideoXPipeline.from_pretrained(args.resume, dtype=torch.float32)
        vae = pipe.vae.to(args.device)
    else:
        vae = None
        if args.vae_from:
            vae = AutoencoderKLCogVideoX.from_pretrained(args.vae_from, subfolder="vae", dtype=torch.float32)
        steps = args.vae_steps if args.vae_steps is not None else (0 if vae else 4000)
        if steps:
            vae = train_vae(
                pool, steps, args.vae_batch_size, args.device, args.seed, start=vae, channels=tuple(args.vae_channels)
            )
            vae.register_to_config(scaling_factor=1.0)  # taken from the data again below
            print(f"VAE trained at {(time.perf_counter() - started) / 60:.1f} min", flush=True)
        assert vae is not None
        vae = vae.to(args.device)
    if args.decoder_steps:
        vae = train_decoder(
            vae, pool, args.decoder_steps, args.vae_batch_size, args.device, args.seed, args.latent_noise
        )
        print(f"decoder trained at {(time.perf_counter() - started) / 60:.1f} min", flush=True)
    latents = encode_pool(vae, pool, args.device)
    latent_size = latents.shape[-1]
    if args.resume:
        wanted = {"patch_size": args.patch_size, "sample_height": latent_size, "sample_width": latent_size}
        if any(pipe.transformer.config[name] != value for name, value in wanted.items()):
            pipe.transformer = cogvideox.reconfigured(pipe.transformer, **wanted)
    else:
        torch.manual_seed(args.seed)
        transformer = cogvideox.small_transformer(
            TEXT_LENGTH,
            cogvideox.SHAPES_T5_D_MODEL,
            **{**cogvideox.SHAPES_SIZES, "patch_size": args.patch_size},
            latent_size=latent_size,
        )
        pipe = cogvideox.build_pipeline(transformer, vae, t5_d_model=cogvideox.SHAPES_T5_D_MODEL)
    vae_done = time.perf_counter()
    descriptions = [clip.description for clip in pool.clips]
    grounding = Grounding.prepared(
        pipe.to(args.device), descriptions, pool.attributes(), TRACK_ATTRIBUTES, TEXT_LENGTH, args
    )
    weights = foreground_weights(pool, latents.shape, args.foreground_weight) if args.foreground_weight else None
    deadline = started + 60 * args.minutes if args.minutes else None
    pipe = train_transformer(pipe, latents, pool.captions, args, grounding, weights, deadline)
    pipe.to("cpu", torch.float16).save_pretrained(args.output, safe_serialization=True)
    print(
        f"transformer trained in {(time.perf_counter() - vae_done) / 60:.1f} min; saved to {args.output} after "
        f"{(time.perf_counter() - started) / 60:.1f} min",
        flush=True,
    )


if __name__ == "__main__":
    main()
