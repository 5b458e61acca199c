"""Train SiamLayout branches for the shapes-world SD3 model, the base frozen (as CreatiLayout
trains its layout branch on a pre-trained MM-DiT).

    python -m studio.toyworld.train_layout            # about 30 minutes on a 2-core CPU
    python -m studio.toyworld.train_layout --base DIR --branches-from assets/models/shapes-sd3-siamlayout
                                                      # a new base's branches, from trained ones

The global caption names colours, sizes and shapes but no positions ("a large red circle and a
small blue square, gray background"); where each object goes comes only from its box and its
phrase, so the branches must learn to read the layout. One layout in ten is dropped (null tokens
only), as classifier-free guidance's unconditional half sees it. Only the branches and the
layout-token projection are saved (fp16 safetensors), next to the base model they extend.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import StableDiffusion3Pipeline
from safetensors.torch import save_file
from tqdm import tqdm

from studio.families import sd3
from studio.families.siamlayout import (
    MAX_BOXES,
    LayoutTokens,
    attach_layout_branches,
    branch_state,
    load_layout_weights,
    siamlayout_forward,
)
from studio.toyworld import train
from studio.toyworld.data import build_pool
from studio.toyworld.scene import Scene, SceneObject


def object_phrase(item: SceneObject) -> str:
    return f"a {item.size} {item.colour} {item.shape}"


def unplaced_caption(scene: Scene) -> str:
    """The scene's caption without its position words."""
    return " and ".join(object_phrase(item) for item in scene.objects) + f", {scene.background} background"


@torch.no_grad()
def phrase_embeddings(pipe: StableDiffusion3Pipeline, phrases: list[str]) -> dict[str, torch.Tensor]:
    """Each phrase's pooled CLIP-L and CLIP-G embeddings side by side, as the layout tokens take them."""
    pooled = []
    for tokenizer, encoder in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
        ids = tokenizer(
            phrases, padding="max_length", max_length=pipe.tokenizer_max_length, truncation=True, return_tensors="pt"
        ).input_ids
        pooled.append(encoder(ids)[0])
    return dict(zip(phrases, torch.cat(pooled, dim=-1)))


def layout_batch(scenes: list[Scene], embeddings: dict[str, torch.Tensor], dropped: torch.Tensor) -> LayoutTokens:
    width = next(iter(embeddings.values())).shape[-1]
    boxes = torch.zeros(len(scenes), MAX_BOXES, 4)
    phrases = torch.zeros(len(scenes), MAX_BOXES, width)
    masks = torch.zeros(len(scenes), MAX_BOXES)
    for row, scene in enumerate(scenes):
        if dropped[row]:
            continue
        for slot, item in enumerate(scene.objects):
            boxes[row, slot] = torch.tensor(item.box)
            phrases[row, slot] = embeddings[object_phrase(item)]
            masks[row, slot] = 1
    return LayoutTokens(boxes, phrases, masks)


def main(argv: list[str] | None = None) -> None:
    parser = train.frozen_base_arguments(__doc__, "shapes-sd3", "shapes-sd3-siamlayout", steps=1500)
    parser.add_argument(
        "--branches-from",
        type=Path,
        default=None,
        help="start from saved branches (of this base, or of an earlier base of the same architecture)",
    )
    args = parser.parse_args(argv)

    started = time.perf_counter()
    pipe = StableDiffusion3Pipeline.from_pretrained(args.base, dtype=torch.float32)
    transformer = pipe.transformer
    attach_layout_branches(transformer, seed=args.seed)
    if args.branches_from:
        load_layout_weights(transformer, args.branches_from)
    transformer.requires_grad_(False)
    trained = [parameter for name, parameter in transformer.named_parameters() if name in branch_state(transformer)]
    for parameter in trained:
        parameter.requires_grad_(True)
    pool = build_pool(args.scenes, seed=args.seed + 1)
    latents = train.encode_pool(pipe.vae, pool, "cpu")
    latents = (latents - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor
    captions = [unplaced_caption(scene) for scene in pool.scenes]
    embeddings = phrase_embeddings(pipe, sorted({object_phrase(o) for scene in pool.scenes for o in scene.objects}))
    shift = train.sigma_shift((latents.shape[-2] // 2) * (latents.shape[-1] // 2), pipe.scheduler.config)
    optimiser = torch.optim.AdamW(trained, lr=args.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: train.warmup_cosine(s, args.steps, 100))
    generator = torch.Generator().manual_seed(args.seed)
    for _ in (bar := tqdm(range(args.steps), desc="layout branches")):
        indices = torch.randint(len(pool), (args.batch_size,), generator=generator)
        dropped = torch.rand(args.batch_size, generator=generator) < 0.1
        with torch.no_grad():
            text = sd3.encode_text(pipe, [captions[i] for i in indices.tolist()], train.MAX_SEQUENCE_LENGTH)
        layout = layout_batch([pool.scenes[i] for i in indices.tolist()], embeddings, dropped)
        noisy, sigma, target = train.noised(latents[indices], shift, generator)
        velocity = siamlayout_forward(transformer, noisy, sigma * 1000, text.embeds, text.pooled, layout, 1.0)
        loss = F.mse_loss(velocity, target)
        train.optimise(loss, optimiser, schedule, trained)
        bar.set_postfix(loss=f"{loss.item():.4f}")
    args.output.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.to(torch.float16).contiguous() for name, tensor in branch_state(transformer).items()}
    save_file(state, args.output / "diffusion_pytorch_model.safetensors")
    print(
        f"saved {sum(t.numel() for t in state.values()) / 1e6:.2f} M branch parameters to {args.output} "
        f"after {(time.perf_counter() - started) / 60:.1f} min"
    )


if __name__ == "__main__":
    main()
