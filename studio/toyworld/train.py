"""Train a shapes-world model: the VAE first, then the transformer with its text encoders, by
rectified flow in exactly the convention its pipeline samples with (FLUX, or its SD3 twin).

    python -m studio.toyworld.train                    # FLUX; about 75 minutes on a 2-core CPU
    python -m studio.toyworld.train --family sd3       # the SD3 twin, on the FLUX model's VAE
    python -m studio.toyworld.train --device cuda

Writes a complete diffusers pipeline (fp16 safetensors) that the registry loads like a hub model.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import random
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DiffusionPipeline,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from tqdm import tqdm

from studio import offline
from studio.families import flux, sd3
from studio.toyworld.data import OBJECT_ATTRIBUTES, ScenePool, build_pool
from studio.toyworld.grounding import Grounding, grounding_options

MODELS_DIR = Path(__file__).resolve().parents[2] / "assets" / "models"
# Room for three objects worded at length (the longest training caption is 35 tokens).
MAX_SEQUENCE_LENGTH = 48
TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")


# Four double-stream blocks: binding each colour to its own place needs depth where text and
# image tokens still have their own weights (the 2+2 model bound two objects 47%).
FLUX_SIZES: dict[str, Any] = {"num_layers": 4, "num_single_layers": 2, "attention_head_dim": 48,
                              "num_attention_heads": 4, "joint_attention_dim": 128, "pooled_projection_dim": 64,
                              "axes_dims_rope": (16, 16, 16)}  # fmt: skip


def flux_transformer() -> FluxTransformer2DModel:
    return flux.small_transformer(**FLUX_SIZES)


def sd3_transformer() -> SD3Transformer2DModel:
    # The same width and token grid as the FLUX model: 2x2 latent patches, 4 heads of 48.
    return SD3Transformer2DModel(
        sample_size=16,
        patch_size=2,
        in_channels=16,
        num_layers=4,
        attention_head_dim=48,
        num_attention_heads=4,
        joint_attention_dim=128,
        caption_projection_dim=192,
        pooled_projection_dim=128,
        out_channels=16,
        pos_embed_max_size=32,
    )


def new_pipeline(family: str, vae: AutoencoderKL) -> DiffusionPipeline:
    if family == "flux":
        return flux.build_pipeline(flux_transformer(), vae, clip_hidden=64, t5_d_model=128)
    return sd3.build_pipeline(sd3_transformer(), vae, clip_hidden=64, clip_projection=64, t5_d_model=128)


def predict_velocity(
    pipe: DiffusionPipeline,
    noisy: torch.Tensor,
    sigma: torch.Tensor,
    texts: list[str],
    pooled_dropped: torch.Tensor | None = None,
) -> torch.Tensor:
    """The transformer's velocity for `noisy` latents, called as the family's pipeline calls it.
    Rows where `pooled_dropped` is set take the empty prompt's pooled vector while their tokens
    keep the caption: a pooled vector holds every colour of a prompt and none of its places, so a
    model that may not lean on it learns colour through the tokens, where it binds to places."""
    flow = (flux if isinstance(pipe, FluxPipeline) else sd3).FAMILY.flow
    if pooled_dropped is None or not bool(pooled_dropped.any()):
        return flow.velocity(pipe, noisy, sigma, flow.encode_text(pipe, texts, MAX_SEQUENCE_LENGTH), None)
    # The empty prompt rides in the same encoder call, as its last row.
    text = flow.encode_text(pipe, [*texts, ""], MAX_SEQUENCE_LENGTH)
    rows = pooled_dropped.to(text.pooled.device).view(-1, 1)
    pooled = torch.where(rows, text.pooled[-1:], text.pooled[:-1])
    text = dataclasses.replace(text, embeds=text.embeds[:-1], pooled=pooled)
    return flow.velocity(pipe, noisy, sigma, text, None)


# A word new to the vocabulary starts from the known word it means, when there is one.
NEAREST_KNOWN_WORD = {"center": "centre", "middle": "centre", "centered": "centre", "grey": "gray",
                      "color": "colour", "colours": "colour", "colors": "colour", "big": "large",
                      "circles": "circle", "squares": "square", "triangles": "triangle"}  # fmt: skip


def _word_of(token: str) -> str:
    return token.removeprefix("\u2581").removesuffix("</w>")


def adopt_vocabulary(pipe: DiffusionPipeline) -> list[str]:
    """Give a model saved with an earlier world's tokenizers the current vocabulary, so a world-1
    model can be trained further on world 2's captions. Every token keeps its embedding row when the
    old tokenizer had it (so a caption of known words encodes exactly as before), takes the row of
    the known word it means (`NEAREST_KNOWN_WORD`), or else starts at the mean of the old rows.
    Returns the names of the text encoders that changed."""
    changed = []
    for encoder_name in TEXT_ENCODERS:
        encoder = getattr(pipe, encoder_name, None)
        if encoder is None:
            continue
        tokenizer_name = encoder_name.replace("text_encoder", "tokenizer")
        old_tokenizer = getattr(pipe, tokenizer_name)
        is_clip = "clip" in type(old_tokenizer).__name__.lower()
        new_tokenizer = offline.clip_tokenizer() if is_clip else offline.t5_tokenizer()
        old_ids, new_ids = old_tokenizer.get_vocab(), new_tokenizer.get_vocab()
        if old_ids == new_ids:
            continue
        old_rows = encoder.get_input_embeddings().weight.detach()
        rows = old_rows.mean(0, keepdim=True).repeat(len(new_ids), 1)
        for token, new_id in new_ids.items():
            word = _word_of(token)
            candidates = [token, token.replace(word, NEAREST_KNOWN_WORD.get(word, word))]
            if not is_clip:  # T5's bare pieces (tags written without spaces) from the spaced word
                candidates += [word, "\u2581" + word, "\u2581" + NEAREST_KNOWN_WORD.get(word, word)]
            source = next((old_ids[c] for c in candidates if c in old_ids), None)
            if source is not None:
                rows[new_id] = old_rows[source]
        embedding = torch.nn.Embedding(len(new_ids), rows.shape[1], dtype=rows.dtype, device=rows.device)
        embedding.weight.data.copy_(rows)
        encoder.set_input_embeddings(embedding)
        encoder.config.vocab_size = len(new_ids)
        pipe.register_modules(**{tokenizer_name: new_tokenizer})
        changed.append(encoder_name)
    return changed


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def vae_step(
    vae: AutoencoderKL,
    images: torch.Tensor,
    optimiser: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
) -> float:
    """One VAE training step on images in [-1, 1] (reconstruction MSE + L1, a light KL); returns
    the batch's reconstruction PSNR."""
    posterior = vae.encode(images).latent_dist
    reconstruction = vae.decode(posterior.sample()).sample
    kl = posterior.kl().mean() / images[0].numel()
    loss = F.mse_loss(reconstruction, images) + 0.1 * F.l1_loss(reconstruction, images) + 1e-4 * kl
    optimise(loss, optimiser, schedule, vae.parameters())
    return 10 * math.log10(4 / max(F.mse_loss(reconstruction.detach(), images).item(), 1e-10))


def train_vae(pool: ScenePool, steps: int, batch_size: int, device: str, seed: int) -> AutoencoderKL:
    torch.manual_seed(seed)
    vae = offline.small_vae(16, (16, 32, 64)).to(device).train()
    optimiser = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: warmup_cosine(s, steps, 50))
    generator = torch.Generator().manual_seed(seed)
    for _ in (bar := tqdm(range(steps), desc="VAE")):
        images, _ = pool.batch(torch.randint(len(pool), (batch_size,), generator=generator))
        bar.set_postfix(psnr=f"{vae_step(vae, images.to(device), optimiser, schedule):.1f}")
    return vae.eval()


def run_options(parser: argparse.ArgumentParser) -> None:
    """What every trainer takes besides its own options: CPU threads and the seed."""
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)


def seeded(args: argparse.Namespace) -> random.Random:
    """Apply `run_options`: the thread count, torch's seed; a Python generator on the same seed."""
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    return random.Random(args.seed)


@torch.no_grad()
def encode_pool(vae: AutoencoderKL, pool: ScenePool, device: str) -> torch.Tensor:
    parts = []
    for start in range(0, len(pool), 256):
        images, _ = pool.batch(torch.arange(start, min(start + 256, len(pool))))
        parts.append(vae.encode(images.to(device)).latent_dist.mode().cpu())
    latents = torch.cat(parts)
    if vae.config.shift_factor == 0.0 and vae.config.scaling_factor == 1.0:
        # FLUX normalises latents as (z - shift) * scale; a fresh VAE takes both from the data.
        vae.register_to_config(shift_factor=float(latents.mean()), scaling_factor=float(1 / latents.std()))
    return latents


def noised(
    x0: torch.Tensor, shift: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A rectified-flow training sample: logit-normal sigmas moved by the same shift the sampler
    uses, the noisy latents at those sigmas, and the velocity to predict (noise - x0)."""
    noise = torch.randn(x0.shape, generator=generator).to(x0.device)
    u = torch.sigmoid(torch.randn(x0.shape[0], generator=generator)).to(x0.device)
    sigma = shift * u / (1 + (shift - 1) * u)
    noisy = (1 - sigma.view(-1, 1, 1, 1)) * x0 + sigma.view(-1, 1, 1, 1) * noise
    return noisy, sigma, noise - x0


def optimise(
    loss: torch.Tensor, optimiser: torch.optim.Optimizer, schedule: torch.optim.lr_scheduler.LRScheduler, parameters
) -> None:
    """One optimiser step on `loss`, gradients clipped to norm 1."""
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(parameters, 1.0)
    optimiser.step()
    schedule.step()


def step_with_average(
    loss: torch.Tensor,
    step: int,
    optimiser: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    trained: torch.nn.Module,
    average: torch.nn.Module,
) -> None:
    """One optimiser step, then the exponential moving average (what is saved) follows, its decay
    warming up to 0.999."""
    optimise(loss, optimiser, schedule, trained.parameters())
    decay = min(0.999, (1 + step) / (10 + step))
    with torch.no_grad():
        for averaged, live in zip(average.parameters(), trained.parameters()):
            averaged.lerp_(live, 1 - decay)


def frozen_base_arguments(description: str, base: str, output: str, steps: int) -> argparse.ArgumentParser:
    """The options of a trainer that teaches an addition to a frozen shapes-world model (layout
    branches, a ControlNet): where the base and the result live, the data, the schedule."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, default=MODELS_DIR / base)
    parser.add_argument("--output", type=Path, default=MODELS_DIR / output)
    parser.add_argument("--scenes", type=int, default=8192)
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--batch-size", type=int, default=24)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    return parser


def sigma_shift(image_tokens: int, scheduler_config) -> float:
    """The shift the pipeline's scheduler applies: FLUX's resolution-dependent exp(mu), else SD3's
    fixed shift."""
    c = scheduler_config
    if not c.use_dynamic_shifting:
        return c.shift
    slope = (c.max_shift - c.base_shift) / (c.max_image_seq_len - c.base_image_seq_len)
    return math.exp(c.base_shift + slope * (image_tokens - c.base_image_seq_len))


def trained_components(pipe: DiffusionPipeline) -> list[str]:
    return ["transformer", *(name for name in TEXT_ENCODERS if getattr(pipe, name, None) is not None)]


def save(pipe: DiffusionPipeline, names: list[str], modules: torch.nn.ModuleList, output: Path) -> None:
    """Save the pipeline with `modules` as its components `names` (the trained weights), as fp16
    safetensors."""
    snapshot = copy.deepcopy(pipe)
    for name, module in zip(names, modules, strict=True):
        setattr(snapshot, name, copy.deepcopy(module))
    snapshot.to("cpu", torch.float16).save_pretrained(output, safe_serialization=True)


def train_transformer(
    pipe: DiffusionPipeline,
    latents: dict[tuple[int, int], torch.Tensor],
    pool: ScenePool,
    steps: int,
    batch_size: int,
    device: str,
    seed: int,
    output: Path,
    checkpoint_every: int,
    learning_rate: float,
    pooled_dropout: float,
    grounding: Grounding | None = None,
    text_frozen: bool = False,
) -> DiffusionPipeline:
    """`latents`: the pool's scenes encoded at each canvas size (width, height in pixels); the
    steps take the sizes in turn, a larger canvas with as many fewer rows as keeps the image tokens
    per batch the same. With `grounding`, its loss (weighted) joins the flow loss at every step, so the T5 keeps
    telling apart what each word refers to while the transformer learns to read it. `text_frozen`:
    the transformer alone learns (the words are known; a model learning new canvas sizes keeps
    them as they are)."""
    torch.manual_seed(seed)
    names = ["transformer"] if text_frozen else trained_components(pipe)
    trained = torch.nn.ModuleList([getattr(pipe, name).to(device) for name in names]).train()
    ema = copy.deepcopy(trained).eval().requires_grad_(False)
    heads = list(grounding.heads.parameters()) if grounding else []
    optimiser = torch.optim.AdamW([*trained.parameters(), *heads], lr=learning_rate, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: warmup_cosine(s, steps, 200))
    vae_config = pipe.vae.config
    sizes = sorted(latents)
    normalised = {size: (latents[size] - vae_config.shift_factor) * vae_config.scaling_factor for size in sizes}
    shifts = {
        size: sigma_shift((value.shape[-2] // 2) * (value.shape[-1] // 2), pipe.scheduler.config)
        for size, value in normalised.items()
    }
    generator = torch.Generator().manual_seed(seed)
    captions = pool.captions

    for step in (bar := tqdm(range(steps), desc="transformer")):
        size = sizes[step % len(sizes)]
        rows = max(1, batch_size * math.prod(sizes[0]) // math.prod(size))
        indices = torch.randint(len(pool), (rows,), generator=generator)
        # One caption in ten is dropped so classifier-free guidance has an unconditional model.
        texts = ["" if torch.rand((), generator=generator) < 0.1 else captions[i] for i in indices.tolist()]
        noisy, sigma, target = noised(normalised[size][indices].to(device), shifts[size], generator)
        pooled_dropped = torch.rand(rows, generator=generator) < pooled_dropout
        loss = F.mse_loss(predict_velocity(pipe, noisy, sigma, texts, pooled_dropped), target)
        shown = {"loss": f"{loss.item():.4f}"}
        if grounding is not None:
            loss = grounding.added_to(loss, indices, shown)
        step_with_average(loss, step, optimiser, schedule, trained, ema)
        bar.set_postfix(shown)
        if checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < steps:
            # A usable model on disk all along: a stopped run still leaves its latest state.
            save(pipe, names, ema, output)
    for name, module in zip(names, ema):
        setattr(pipe, name, module.requires_grad_(True))
    return pipe


def canvas_size(text: str) -> tuple[int, int]:
    """ "128" (square) or "128x64" (width x height) as (width, height), in multiples of 16 pixels
    (the VAE's 4x and the transformer's 2x2 patches)."""
    try:
        width, height = (int(part) for part in (text.split("x") if "x" in text else (text, text)))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a size is 128 or 128x64") from None
    if width <= 0 or height <= 0 or width % 16 or height % 16:
        raise argparse.ArgumentTypeError(f"{text!r}: width and height must be positive multiples of 16")
    return width, height


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=["flux", "sd3"], default="flux")
    parser.add_argument("--output", type=Path, default=None, help="default: assets/models/shapes-FAMILY")
    parser.add_argument(
        "--vae-from",
        type=Path,
        default=None,
        help="a saved shapes-world model whose VAE to use instead of training one "
        "(the SD3 twin always shares one: default assets/models/shapes-flux)",
    )
    parser.add_argument("--scenes", type=int, default=32768)
    parser.add_argument("--vae-steps", type=int, default=1300)
    parser.add_argument("--transformer-steps", type=int, default=5000)
    parser.add_argument("--checkpoint-every", type=int, default=1000)
    parser.add_argument("--learning-rate", type=float, default=8e-4)
    parser.add_argument("--resume", type=Path, default=None, help="a saved shapes-world pipeline to train further")
    parser.add_argument("--batch-size", type=int, default=64, help="rows of a step at the smallest canvas size")
    parser.add_argument(
        "--sizes",
        type=canvas_size,
        nargs="+",
        default=[(64, 64)],
        help="canvas sizes the transformer learns, in turn: pixels a side (128) or width x height "
        "(128x64); a model that saw only 64 tiles its objects on a larger or wider canvas (the "
        "image-sets tab's panels)",
    )
    parser.add_argument(
        "--pooled-dropout",
        type=float,
        default=0.5,
        help="share of rows whose pooled text vector is the empty prompt's (their tokens keep the caption)",
    )
    parser.add_argument(
        "--text-frozen",
        action="store_true",
        help="train the transformer alone, the text encoders as they are (with --resume: new sizes, known words)",
    )
    grounding_options(parser)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    started = time.perf_counter()
    torch.manual_seed(args.seed)
    sizes = sorted(set(args.sizes), key=math.prod)
    pool = build_pool(args.scenes, seed=args.seed, size=sizes[0][0], height=sizes[0][1])
    print(f"{len(pool)} scenes drawn in {time.perf_counter() - started:.0f} s")
    output = args.output or MODELS_DIR / f"shapes-{args.family}"
    pipeline_class = FluxPipeline if args.family == "flux" else StableDiffusion3Pipeline
    if args.resume:
        # Go on training a saved model (its VAE and latent normalisation stay as they are).
        pipe = pipeline_class.from_pretrained(args.resume, dtype=torch.float32)
        if adopted := adopt_vocabulary(pipe):
            print(f"{', '.join(adopted)}: taught the current vocabulary (the resumed model knew an earlier one)")
        vae = pipe.vae.to(args.device)
    else:
        vae_from = args.vae_from or (MODELS_DIR / "shapes-flux" if args.family == "sd3" else None)
        if vae_from is None:
            vae = train_vae(pool, args.vae_steps, 16, args.device, args.seed)
        else:  # the twins share one latent space
            vae = AutoencoderKL.from_pretrained(vae_from, subfolder="vae", dtype=torch.float32).to(args.device)
        torch.manual_seed(args.seed)
        pipe = new_pipeline(args.family, vae)
    # The smallest size first: a fresh VAE takes its latent normalisation from it.
    latents = {size: encode_pool(vae, pool if size == sizes[0] else pool.at_size(*size), args.device) for size in sizes}
    grounding = None
    if not args.text_frozen:
        grounding = Grounding.prepared(
            pipe.to(args.device), pool.descriptions, pool.attributes(), OBJECT_ATTRIBUTES, MAX_SEQUENCE_LENGTH, args
        )
    pipe = train_transformer(
        pipe,
        latents,
        pool,
        args.transformer_steps,
        args.batch_size,
        args.device,
        args.seed,
        output,
        args.checkpoint_every,
        args.learning_rate,
        args.pooled_dropout,
        grounding,
        args.text_frozen,
    )
    pipe.to("cpu", torch.float16).save_pretrained(output, safe_serialization=True)
    parameters = sum(
        p.numel() for m in pipe.components.values() if isinstance(m, torch.nn.Module) for p in m.parameters()
    )
    print(f"saved {parameters / 1e6:.2f} M parameters to {output} after {(time.perf_counter() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
