"""Train the shapes world's In-Context LoRA on a frozen shapes-world FLUX model, as the In-Context
LoRA paper trains its LoRAs: captioned multi-panel images (the panels side by side on one canvas)
with tagged prompts, composed exactly as the image-sets tab composes them (`ImageSet.prompt`).

    python -m studio.toyworld.train_incontext                 # about 15 minutes on a 2-core CPU
    python -m studio.toyworld.train_incontext --ground-panels 800   # first teach the base's T5 the tags
    python -m studio.toyworld.train_incontext --evaluate      # the table: with and without the LoRA
    python -m studio.toyworld.train_incontext --held-references 0.5   # also learn to read given panels

The sets it learns are the shapes-world sets of presets/ic_lora_sets.toml (the ones whose
`model` is the base): the same shape in another colour (two panels), the same shape at another
place (two panels), one shape in four colours (four panels). Saved as a diffusers FLUX LoRA
(fp16 safetensors) where those sets name their `file`.
"""

from __future__ import annotations

import copy
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import FluxPipeline
from peft import LoraConfig, get_peft_model_state_dict
from PIL import Image
from tqdm import tqdm

from studio.catalogue import Catalogue
from studio.families import flux
from studio.methods.incontext import (
    MAX_PANELS,
    ImageSet,
    SetRequest,
    cells_latent_mask,
    compose,
    generate_set,
    load_sets,
    set_canvas,
    set_lora,
    split,
)
from studio.registry import Registry
from studio.toyworld import train
from studio.toyworld.data import build_pool
from studio.toyworld.grounding import Grounding, t5_of
from studio.toyworld.measure import classify_shape, colour_mask, largest_blob
from studio.toyworld.scene import (
    BACKGROUNDS,
    COLOURS,
    POSITION_PHRASES,
    POSITIONS,
    SHAPES,
    Caption,
    make_object,
    make_scene,
    render,
)

# How much the world's own captions must keep their vectors while the T5 learns the panel tags.
KEEP_WEIGHT = 100.0
Example = tuple[Image.Image, Caption]  # the set's canvas and its prompt, each panel's part a span


# What each shapes-world set varies across its panels, and whether a panel's text is the whole
# object phrase or the varying word alone (four panels of phrases would not fit the text length).
VARIES: dict[str, tuple[str, str]] = {
    "shapes-recolour": ("colour", "phrase"),
    "shapes-move": ("position", "phrase"),
    "shapes-four-colours": ("colour", "word"),
}
CHOICES = {"colour": list(COLOURS), "position": list(POSITIONS)}


def example(image_set: ImageSet, rng: random.Random) -> Example:
    """One drawn set: the same object in every panel but for the attribute the set varies."""
    varied, texts_are = VARIES[image_set.id]
    chosen = {
        "colour": rng.choice(list(COLOURS)),
        "shape": rng.choice(SHAPES),
        "size": rng.choice(("medium", "large")),
        "position": rng.choice(list(POSITIONS)),
    }
    background = rng.choice(list(BACKGROUNDS))
    values = rng.sample(CHOICES[varied], image_set.count)
    objects = [make_object(**(chosen | {varied: value}), jitter=0.03, rng=rng) for value in values]
    panels = [render(make_scene([obj], background))[0] for obj in objects]
    if texts_are == "phrase":
        texts, caption = [f"{obj.phrase()}, {background} background" for obj in objects], image_set.caption
    else:
        texts = values
        place = POSITION_PHRASES[chosen["position"]]
        caption = f"one {chosen['size']} {chosen['shape']} {place} in four colours, {background} background"
    return compose(panels, image_set.rows, image_set.columns), tagged_prompt(image_set, caption, texts)


def tagged_prompt(image_set: ImageSet, caption: str, texts: list[str]) -> Caption:
    """The set's prompt (`ImageSet.prompt`) with each panel's tag and text as that panel's span."""
    prompt = image_set.prompt(caption, texts)
    spans, start = [], 0
    for index, (tag, text) in enumerate(zip(image_set.tags, texts)):
        begin = prompt.index(f"{tag} {text.strip()}", start)
        start = begin + len(tag) + 1 + len(text.strip())
        spans.append((begin, start, index))
    return Caption(prompt, tuple(spans))


def ground_panels(
    pipe: FluxPipeline, prompts: list[Caption], plain: list[str], steps: int, generator: torch.Generator
) -> tuple[float, float]:
    """Teach the base's T5 which panel each word of a set prompt belongs to (grounding.py, asked
    for the panel index), while its vectors for the world's own captions stay where the frozen
    transformer expects them (mean squared distance to the untouched encoder's). A real T5 reads
    "[LEFT] … [RIGHT] …" from language pre-training; the toy one, trained on single scenes, gave
    "red" the same vector in either panel (cosine 0.99), so no LoRA could tell which panel a
    colour was asked for. Returns the last grounding loss and the captions' distance after."""
    panels = [[(index,) for index in range(len(prompt.spans))] for prompt in prompts]
    grounding = Grounding.build(pipe, prompts, panels, (MAX_PANELS,), train.MAX_SEQUENCE_LENGTH)
    tokenizer, encoder = t5_of(pipe)
    untouched = copy.deepcopy(encoder).eval().requires_grad_(False)
    plain_ids = tokenizer(plain, padding="max_length", max_length=train.MAX_SEQUENCE_LENGTH, truncation=True,
                          return_tensors="pt").input_ids  # fmt: skip

    def distance(generator: torch.Generator) -> torch.Tensor:
        batch = plain_ids[torch.randint(len(plain_ids), (32,), generator=generator)]
        return F.mse_loss(encoder(batch)[0], untouched(batch)[0])

    encoder.requires_grad_(True)  # the trainer froze the base's text encoders
    grounded = grounding.pretrain(steps, 32, 3e-4, generator, keeping=lambda g: KEEP_WEIGHT * distance(g))
    encoder.eval().requires_grad_(False)
    with torch.no_grad():
        return grounded, distance(generator).item()


def shapes_sets(base: str) -> list[ImageSet]:
    return [image_set for image_set in load_sets().values() if image_set.model == base and image_set.id in VARIES]


def canvas_latents(pipe: FluxPipeline, images: list[Image.Image]) -> torch.Tensor:
    pixels = torch.stack([torch.from_numpy(np.array(image)).permute(2, 0, 1) for image in images]).float() / 127.5 - 1
    with torch.no_grad():
        latents = pipe.vae.encode(pixels).latent_dist.mode()
    return (latents - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor


def evaluate(registry: Registry, model: str, seeds: int, with_lora: bool) -> dict[str, float]:
    """Conditioned sets (the first panel given, drawn from the world): how often every generated
    panel keeps the reference's shape, and takes its own panel's colour."""
    spec = registry.catalogue.get(model)
    kept = coloured = total = 0
    for image_set in shapes_sets(model):
        for seed in range(seeds):
            rng = random.Random(1000 + seed)
            canvas, prompt = example(image_set, rng)
            reference = split(canvas, image_set.rows, image_set.columns)[0]
            shape = classify_shape(largest_blob(colour_mask(reference, dominant_colour(reference))))
            width, height = set_canvas(image_set, spec)
            request = SetRequest(
                model=model, prompt=prompt.text, rows=image_set.rows, columns=image_set.columns, width=width,
                height=height, steps=spec.steps, guidance=spec.guidance_scale, seed=seed, references={0: reference},
                adapters=set_lora(registry, image_set, spec) if with_lora else (),
                reference_mode=image_set.references if with_lora else "inpaint",
            )  # fmt: skip
            made = generate_set(registry, request)
            truth = split(canvas, image_set.rows, image_set.columns)
            for panel, wanted in zip(made.panels[1:], truth[1:]):
                colour = dominant_colour(wanted)
                blob = largest_blob(colour_mask(panel, colour))
                total += 1
                coloured += blob.sum() >= 20
                kept += blob.sum() >= 20 and classify_shape(blob) == shape
    return {"shape kept": kept / total, "own colour": coloured / total, "panels": total}


def held_cells(
    rows: int, columns: int, latents: torch.Tensor, share: float, generator: torch.Generator
) -> torch.Tensor:
    """[batch, 1, height, width] booleans: for about `share` of the rows, a random non-empty proper
    subset of the panels, given as references (held clean); none for the other rows."""
    count = rows * columns
    masks = torch.zeros(latents.shape[0], 1, *latents.shape[-2:], dtype=torch.bool)
    for row in range(latents.shape[0]):
        if count < 2 or torch.rand(1, generator=generator).item() >= share:
            continue
        given = torch.randperm(count, generator=generator)[: int(torch.randint(1, count, (1,), generator=generator))]
        masks[row, 0] = cells_latent_mask(rows, columns, latents.shape[-2], latents.shape[-1], given.tolist())
    return masks.to(latents.device)


def dominant_colour(image: Image.Image) -> str:
    """The world colour covering most of a drawn panel (its object's)."""
    return max(COLOURS, key=lambda name: int(colour_mask(image, name).sum()))


def main(argv: list[str] | None = None) -> None:
    # The default output is the file the shapes-world sets name (assets/loras/...).
    parser = train.frozen_base_arguments(__doc__, "shapes-flux-2", "../loras/shapes-incontext.safetensors", steps=1500)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--examples", type=int, default=600, help="drawn per set (the paper: a few hundred)")
    parser.add_argument("--evaluate", action="store_true", help="print the evaluation table instead of training")
    parser.add_argument(
        "--ground-panels", type=int, default=0, help="first teach the base's T5 the panel tags for N steps (saved)"
    )
    parser.add_argument("--encoder-output", type=Path, default=None, help="default: the base's text_encoder_2")
    parser.add_argument(
        "--held-references",
        type=float,
        default=0.0,
        help="share of rows whose reference panels (a random subset) are held clean, the loss on the others: "
        'the LoRA learns the sets\' held-reference conditioning (references = "held" in the sets file)',
    )
    args = parser.parse_args(argv)
    if args.evaluate:
        registry = Registry(Catalogue.load())
        print("| model | LoRA | panels | keeps the reference's shape | takes its own colour |\n|---|---|---|---|---|")
        for with_lora in (True, False):
            rates = evaluate(registry, args.base.name, args.seed + 8, with_lora)
            print(f"| {args.base.name} | {'yes' if with_lora else 'no'} | {rates['panels']} | "
                  f"{rates['shape kept']:.2f} | {rates['own colour']:.2f} |")  # fmt: skip
        return
    started = time.perf_counter()
    torch.manual_seed(args.seed)
    pipe = FluxPipeline.from_pretrained(args.base, dtype=torch.float32)
    pipe.transformer.requires_grad_(False)
    for encoder in (pipe.text_encoder, pipe.text_encoder_2):
        encoder.requires_grad_(False)
    sets = shapes_sets(args.base.name)
    rng = random.Random(args.seed)
    data = {image_set.id: [example(image_set, rng) for _ in range(args.examples)] for image_set in sets}
    generator = torch.Generator().manual_seed(args.seed)
    if args.ground_panels:
        prompts = [prompt for pairs in data.values() for _, prompt in pairs]
        plain = build_pool(2048, seed=args.seed + 3).captions
        grounded, kept = ground_panels(pipe, prompts, plain, args.ground_panels, generator)
        encoder_output = args.encoder_output or args.base / "text_encoder_2"
        pipe.text_encoder_2.to(torch.float16).save_pretrained(encoder_output, safe_serialization=True)
        pipe.text_encoder_2.float()
        print(f"panel tags: grounding loss {grounded:.3f}, world captions kept to {kept:.5f}; T5 saved to "
              f"{encoder_output}", flush=True)  # fmt: skip
    latents = {name: canvas_latents(pipe, [image for image, _ in pairs]) for name, pairs in data.items()}
    config = LoraConfig(r=args.rank, lora_alpha=args.rank, init_lora_weights="gaussian",
                        target_modules=["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj",
                                        "to_add_out", "ff.net.0.proj", "ff.net.2", "proj_mlp", "proj_out"])  # fmt: skip
    pipe.transformer.add_adapter(config)
    parameters = [p for p in pipe.transformer.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(parameters, lr=args.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: train.warmup_cosine(s, args.steps, 100))
    names = list(data)
    sets_by_id = {image_set.id: image_set for image_set in sets}
    for step in (bar := tqdm(range(args.steps), desc="in-context LoRA")):
        name = names[step % len(names)]  # one kind of canvas a batch: they differ in size
        indices = torch.randint(len(data[name]), (args.batch_size,), generator=generator)
        dropped = torch.rand(args.batch_size, generator=generator) < 0.1
        texts = ["" if drop else data[name][i][1].text for i, drop in zip(indices.tolist(), dropped.tolist())]
        batch = latents[name][indices]
        shift = train.sigma_shift((batch.shape[-2] // 2) * (batch.shape[-1] // 2), pipe.scheduler.config)
        with torch.no_grad():
            text = flux.encode_text(pipe, texts, train.MAX_SEQUENCE_LENGTH)
        noisy, sigma, target = train.noised(batch, shift, generator)
        image_set = sets_by_id[name]
        held = held_cells(image_set.rows, image_set.columns, batch, args.held_references, generator)
        noisy = torch.where(held, batch, noisy)
        drawn = (~held).expand_as(target).float()
        error = (flux.velocity(pipe, noisy, sigma, text, None) - target) ** 2
        loss = (error * drawn).sum() / drawn.sum()
        train.optimise(loss, optimiser, schedule, parameters)
        bar.set_postfix(loss=f"{loss.item():.4f}", kind=name)
    layers = {key: value.to(torch.float16) for key, value in get_peft_model_state_dict(pipe.transformer).items()}
    output = args.output
    output.parent.mkdir(parents=True, exist_ok=True)
    FluxPipeline.save_lora_weights(output.parent, transformer_lora_layers=layers, weight_name=output.name)
    print(f"saved the LoRA ({sum(v.numel() for v in layers.values()) / 1e6:.2f} M parameters) to {output} "
          f"after {(time.perf_counter() - started) / 60:.1f} min")  # fmt: skip


if __name__ == "__main__":
    main()
