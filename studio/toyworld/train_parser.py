"""Train the dress-up world's human parser: a tiny Segformer with the real clothes parser's
label ids (ATR, as mattmdjaga/segformer_b2_clothes), so the try-on's automatic mask runs the same
code on the built-in as on the real parser.

    python -m studio.toyworld.train_parser               # a few minutes on a 2-core CPU
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

from studio.methods.tryon import BUILTIN_PARSER
from studio.toyworld import dressup
from studio.toyworld.train import run_options, seeded, warmup_cosine


def new_parser() -> tuple[SegformerImageProcessor, SegformerForSemanticSegmentation]:
    # Inputs four times the cell, so the decoder's quarter-resolution logits land on the cell's
    # own pixels (arms are four pixels wide).
    processor = SegformerImageProcessor(size={"height": 4 * dressup.CELL[1], "width": 4 * dressup.CELL[0]})
    config = SegformerConfig(
        num_labels=len(dressup.LABELS),
        id2label=dict(dressup.ID_TO_LABEL),
        label2id=dict(dressup.LABELS),
        depths=[1, 1, 1, 1],
        hidden_sizes=[16, 32, 64, 96],
        num_attention_heads=[1, 1, 2, 2],
        decoder_hidden_size=64,
        mlp_ratios=[2, 2, 2, 2],
    )
    return processor, SegformerForSemanticSegmentation(config)


def pixel_accuracy(
    processor: SegformerImageProcessor, model: SegformerForSemanticSegmentation, count: int, seed: int
) -> float:
    from studio.methods.tryon import parse_with

    rng = random.Random(seed)
    correct = total = 0
    for _ in range(count):
        image, labels = dressup.render_person(dressup.random_person(rng, held_out=True))
        found = parse_with(processor, model, image)
        correct += int((found == labels).sum())
        total += labels.size
    return correct / total


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=BUILTIN_PARSER)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=16)
    run_options(parser)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    rng = seeded(args)
    processor, model = new_parser()
    model.train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: warmup_cosine(s, args.steps, 50))
    for _ in (bar := tqdm(range(args.steps), desc="parser")):
        drawn = [dressup.render_person(dressup.random_person(rng, held_out=None)) for _ in range(args.batch_size)]
        inputs = processor(images=[image for image, _ in drawn], return_tensors="pt")
        labels = torch.from_numpy(np.stack([labels for _, labels in drawn])).long()
        loss = model(pixel_values=inputs.pixel_values, labels=labels).loss
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    print(f"pixel accuracy on held-out garments: {pixel_accuracy(processor, model, 64, 999):.3f}")
    model.to(torch.float16).save_pretrained(args.output, safe_serialization=True)
    processor.save_pretrained(args.output)
    print(f"saved to {args.output} after {(time.perf_counter() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
