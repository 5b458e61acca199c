"""Train the dress-up world's try-on model: a FLUX Fill-architecture transformer made from the
shapes-world FLUX model (as FLUX.1 Fill was made from FLUX.1: the image embedding widened to
take the masked image's latents and the packed mask, the new inputs starting at zero), taught
catvton-flux's in-context task on [garment | person] canvases with the studio's own automatic
mask and prompt.

    python -m studio.toyworld.train_tryon                  # VAE fine-tune, then the transformer
    python -m studio.toyworld.train_tryon --resume DIR     # more transformer steps on a saved model

Each example is a person of the dress-up world wearing a garment, the garment alone on the left,
the person's garment area masked (`methods.tryon.agnostic_mask` on the true label map): the model
learns to redraw the person wearing what the left panel shows. A fifth of the examples leave the
garment panel blank and describe the garment in the prompt instead, so the "prompt alone"
baseline is the same model asked the other way. Garments whose colour and pattern are paired in
`dressup.HELD_OUT` are never drawn, so the evaluation's garments are new.
"""

from __future__ import annotations

import argparse
import copy
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, FluxFillPipeline, FluxPipeline, FluxTransformer2DModel
from PIL import Image
from tqdm import tqdm
from transformers import PreTrainedModel

from studio import offline
from studio.families import flux
from studio.methods.tryon import agnostic_mask, canvas_mask, compose, prompt_for
from studio.toyworld import dressup
from studio.toyworld.train import (
    MODELS_DIR,
    run_options,
    save,
    seeded,
    sigma_shift,
    step_with_average,
    vae_step,
    warmup_cosine,
)

BASE = MODELS_DIR / "shapes-flux-2"
OUTPUT = MODELS_DIR / "dressup-flux-fill"
MAX_SEQUENCE_LENGTH = 64
KIND_SHARES = {"upper": 0.5, "lower": 0.3, "dress": 0.2}


@dataclass
class Example:
    canvas: Image.Image
    mask: Image.Image  # the whole canvas's, white where painted
    prompt: str


def example(rng: random.Random, kind: str | None = None, blank_share: float = 0.2) -> Example:
    kind = kind or rng.choices(list(KIND_SHARES), list(KIND_SHARES.values()))[0]
    person = dressup.random_person(rng, held_out=False, dress=1.0 if kind == "dress" else 0.0)
    garment = person.garment(kind)
    assert garment is not None
    image, labels = dressup.render_person(person)
    mask = agnostic_mask(labels, kind, dilation=rng.choice((1, 2, 2, 3)))
    roll = rng.random()
    if roll < blank_share:
        panel, prompt = Image.new("RGB", dressup.CELL, (255, 255, 255)), prompt_for(garment.phrase())
    else:
        described = roll < blank_share + 0.15
        panel, prompt = dressup.render_garment(garment), prompt_for(garment.phrase() if described else "")
    full = canvas_mask(mask, dressup.CELL)
    return Example(compose(panel, image), Image.fromarray(full.astype(np.uint8) * 255), prompt)


def as_pixels(images: list[Image.Image]) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.array(image)).permute(2, 0, 1) for image in images]).float() / 127.5 - 1


def finetune_vae(vae: AutoencoderKL, steps: int, batch_size: int, seed: int) -> AutoencoderKL:
    """The shapes VAE taught the dress-up world's cells (people and product shots)."""
    rng = random.Random(seed)
    vae.train()
    optimiser = torch.optim.AdamW(vae.parameters(), lr=5e-4, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: warmup_cosine(s, steps, 50))
    for _ in (bar := tqdm(range(steps), desc="VAE")):
        cells = []
        for _ in range(batch_size):
            person = dressup.random_person(rng, held_out=None)
            cells.append(
                dressup.render_person(person)[0]
                if rng.random() < 0.6
                else dressup.render_garment(dressup.random_garment(rng, rng.choice(dressup.KINDS), None))
            )
        bar.set_postfix(psnr=f"{vae_step(vae, as_pixels(cells), optimiser, schedule):.1f}")
    return vae.eval()


def widened_text_encoder(old_encoder: PreTrainedModel, old_tokenizer, new_tokenizer) -> PreTrainedModel:
    """The base's text encoder over the extended vocabulary: every token the base knew keeps its
    embedding, new tokens start from small random ones."""
    encoder = copy.deepcopy(old_encoder)
    old_vocab, new_vocab = old_tokenizer.get_vocab(), new_tokenizer.get_vocab()
    old_table = encoder.get_input_embeddings().weight.data
    table = torch.randn(len(new_tokenizer), old_table.shape[1]) * old_table.std()
    for token, index in new_vocab.items():
        if token in old_vocab:
            table[index] = old_table[old_vocab[token]]
    embedding = torch.nn.Embedding(len(new_tokenizer), old_table.shape[1])
    embedding.weight.data = table
    encoder.set_input_embeddings(embedding)
    encoder.config.vocab_size = len(new_tokenizer)
    if hasattr(encoder, "shared"):
        encoder.shared = embedding
    return encoder


def fill_transformer(base: FluxTransformer2DModel, mask_channels: int) -> FluxTransformer2DModel:
    """FLUX Fill's transformer from the base: x_embedder takes [latents, masked-image latents,
    mask] (the new columns zero), with an embedded-guidance input that stays zero (the built-in is
    not guidance-distilled, so the guidance value cannot change its output)."""
    config = {k: v for k, v in base.config.items() if not k.startswith("_")}
    latent_features = config["in_channels"]
    config.update(in_channels=2 * latent_features + mask_channels, out_channels=latent_features, guidance_embeds=True)
    transformer = FluxTransformer2DModel(**config)
    state = base.state_dict()
    own = transformer.state_dict()
    for name, value in state.items():
        if name == "x_embedder.weight":
            widened = torch.zeros_like(own[name])
            widened[:, :latent_features] = value
            own[name] = widened
        elif name in own and own[name].shape == value.shape:
            own[name] = value
    transformer.load_state_dict(own)
    guidance = transformer.time_text_embed.guidance_embedder
    torch.nn.init.zeros_(guidance.linear_2.weight)
    torch.nn.init.zeros_(guidance.linear_2.bias)
    guidance.requires_grad_(False)
    return transformer


def new_pipeline(base_dir: Path, vae_steps: int, seed: int) -> FluxFillPipeline:
    base = FluxPipeline.from_pretrained(base_dir, dtype=torch.float32)
    vae = finetune_vae(base.vae, vae_steps, 16, seed) if vae_steps else base.vae
    clip_tokenizer, t5_tokenizer = offline.clip_tokenizer(), offline.t5_tokenizer()
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    return FluxFillPipeline(
        scheduler=flux.flow_scheduler(),
        vae=vae,
        text_encoder=widened_text_encoder(base.text_encoder, base.tokenizer, clip_tokenizer),
        tokenizer=clip_tokenizer,
        text_encoder_2=widened_text_encoder(base.text_encoder_2, base.tokenizer_2, t5_tokenizer),
        tokenizer_2=t5_tokenizer,
        transformer=fill_transformer(base.transformer, 4 * scale * scale),
    )


@torch.no_grad()
def normalise_vae(pipe: FluxFillPipeline, examples: list[Example]) -> None:
    latents = pipe.vae.encode(as_pixels([e.canvas for e in examples[:512]])).latent_dist.mode()
    pipe.vae.register_to_config(shift_factor=float(latents.mean()), scaling_factor=float(1 / latents.std()))


@torch.no_grad()
def encode(pipe: FluxFillPipeline, examples: list[Example]) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed target latents and the packed [masked-image latents, mask] condition, made by the
    pipeline's own preprocessing (so training sees exactly what sampling gives)."""
    targets, conditions = [], []
    for start in range(0, len(examples), 128):
        chunk = examples[start : start + 128]
        width, height = chunk[0].canvas.size
        images = pipe.image_processor.preprocess([e.canvas for e in chunk], height=height, width=width)
        masks = pipe.mask_processor.preprocess([e.mask for e in chunk], height=height, width=width)
        latents = pipe._encode_vae_image(images, generator=None)
        batch, channels, lh, lw = latents.shape
        targets.append(FluxPipeline._pack_latents(latents, batch, channels, lh, lw))
        mask, masked = pipe.prepare_mask_latents(
            masks, images * (1 - masks), batch, channels, 1, height, width, torch.float32, "cpu", None
        )
        conditions.append(torch.cat((masked, mask), dim=-1))
    return torch.cat(targets), torch.cat(conditions)


def train(
    pipe: FluxFillPipeline,
    examples: list[Example],
    steps: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    output: Path,
    checkpoint_every: int,
) -> FluxFillPipeline:
    targets, conditions = encode(pipe, examples)
    prompts = [e.prompt for e in examples]
    width, height = examples[0].canvas.size
    scale = pipe.vae_scale_factor
    latent_height, latent_width = height // scale, width // scale
    image_ids = FluxPipeline._prepare_latent_image_ids(1, latent_height // 2, latent_width // 2, "cpu", torch.float32)
    shift = sigma_shift(targets.shape[1], pipe.scheduler.config)
    names = ["transformer", "text_encoder", "text_encoder_2"]
    trained = torch.nn.ModuleList([getattr(pipe, name) for name in names]).train()
    pipe.transformer.time_text_embed.guidance_embedder.requires_grad_(False)
    ema = copy.deepcopy(trained).eval().requires_grad_(False)
    parameters = [p for p in trained.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: warmup_cosine(s, steps, 200))
    generator = torch.Generator().manual_seed(seed)
    for step in (bar := tqdm(range(steps), desc="try-on")):
        indices = torch.randint(len(examples), (batch_size,), generator=generator)
        x0, condition = targets[indices], conditions[indices]
        noise = torch.randn(x0.shape, generator=generator)
        u = torch.sigmoid(torch.randn(batch_size, generator=generator))
        sigma = shift * u / (1 + (shift - 1) * u)
        noisy = (1 - sigma.view(-1, 1, 1)) * x0 + sigma.view(-1, 1, 1) * noise
        embeds, pooled, text_ids = pipe.encode_prompt(
            [prompts[i] for i in indices.tolist()], prompt_2=None, max_sequence_length=MAX_SEQUENCE_LENGTH
        )
        predicted = pipe.transformer(
            hidden_states=torch.cat((noisy, condition), dim=2),
            timestep=sigma,
            guidance=torch.full((batch_size,), 30.0),
            pooled_projections=pooled,
            encoder_hidden_states=embeds,
            txt_ids=text_ids,
            img_ids=image_ids,
            return_dict=False,
        )[0]
        loss = F.mse_loss(predicted, noise - x0)
        step_with_average(loss, step, optimiser, schedule, trained, ema)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if checkpoint_every and (step + 1) % checkpoint_every == 0:
            save(pipe, names, ema, output)
    for name, module in zip(names, ema):
        setattr(pipe, name, module)
    return pipe


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, default=BASE)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument("--resume", type=Path, default=None, help="a saved try-on model to train further")
    parser.add_argument("--examples", type=int, default=12000)
    parser.add_argument("--vae-steps", type=int, default=1500)
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--checkpoint-every", type=int, default=500)
    run_options(parser)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    rng = seeded(args)
    examples = [example(rng) for _ in range(args.examples)]
    print(f"{len(examples)} examples drawn in {time.perf_counter() - started:.0f} s")
    if args.resume:
        pipe = FluxFillPipeline.from_pretrained(args.resume, dtype=torch.float32)
    else:
        pipe = new_pipeline(args.base, args.vae_steps, args.seed)
        normalise_vae(pipe, examples)
        pipe.to(torch.float32).save_pretrained(args.output, safe_serialization=True)
    pipe = train(
        pipe, examples, args.steps, args.batch_size, args.learning_rate, args.seed, args.output, args.checkpoint_every
    )
    pipe.to("cpu", torch.float16).save_pretrained(args.output, safe_serialization=True)
    print(f"saved to {args.output} after {(time.perf_counter() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
