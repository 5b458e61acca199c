"""Grounding: an auxiliary loss that teaches a toy world's T5 what each word of a caption refers to.

A real T5 comes to a diffusion model pre-trained on language, so its vector for "red" in "a red
circle on the left and a blue square on the right" differs from the one in "a blue circle on the
left and a red square on the right". The toy encoders learn only through the diffusion loss, and
that barely reaches them: the shapes worlds' T5 gave each word the same vector wherever it stood
(cosine 0.9999 between those two "red"s). FLUX and CogVideoX give text tokens no positions of
their own, so their transformers then read a caption as a bag of words: two objects cannot be
bound to their places, "from the left to the right" cannot be told from "from the right to the
left". Here every token of the words that describe an object is asked, by one linear head per
attribute, for that object's attributes (colour, shape, place; a clip's motion), which the
encoder can only answer by carrying each phrase's meaning onto all its words. The heads exist
only in training.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline
from transformers import PreTrainedTokenizerBase, T5EncoderModel

from studio.toyworld.scene import Caption

# Label of a token that describes no one object (lead-ins, background, padding).
UNGROUNDED = -100


def token_labels(
    tokenizer: PreTrainedTokenizerBase,
    captions: Sequence[Caption],
    attributes: Sequence[Sequence[tuple[int, ...]]],
    length: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids [N, length] as the pipeline pads them, and labels [N, length, A]: for each token,
    the attributes of the object whose span holds its first character, UNGROUNDED elsewhere."""
    encoded = tokenizer(
        [caption.text for caption in captions],
        padding="max_length",
        max_length=length,
        truncation=True,
        return_offsets_mapping=True,
    )
    count = len(attributes[0][0]) if attributes and attributes[0] else 0
    labels = torch.full((len(captions), length, count), UNGROUNDED, dtype=torch.long)
    for row, (caption, offsets, owners) in enumerate(zip(captions, encoded["offset_mapping"], attributes)):
        for column, (start, end) in enumerate(offsets):
            owner = next((o for s, e, o in caption.spans if s <= start < e), None) if end > start else None
            if owner is not None:
                labels[row, column] = torch.tensor(owners[owner])
    return torch.tensor(encoded["input_ids"]), labels


def t5_of(pipe: DiffusionPipeline) -> tuple[PreTrainedTokenizerBase, T5EncoderModel]:
    """The pipeline's T5 and its tokenizer: the encoder whose tokens the transformer reads
    (FLUX's text_encoder_2, SD3's text_encoder_3, CogVideoX's text_encoder)."""
    for name, module in pipe.components.items():
        if isinstance(module, T5EncoderModel):
            return getattr(pipe, name.replace("text_encoder", "tokenizer")), module
    raise ValueError(f"{type(pipe).__name__} has no T5 text encoder to ground")


def grounding_options(parser: argparse.ArgumentParser) -> None:
    """The options of a trainer whose T5 is grounded (see `Grounding.prepared`)."""
    parser.add_argument(
        "--grounding-weight",
        type=float,
        default=0.1,
        help="weight of the T5 grounding loss beside the diffusion loss (0: none; see grounding.py)",
    )
    # On shapes world 2's T5 the loss sits near 0.7 for a thousand steps, then falls to 0.1 within
    # five hundred as the encoder starts to gather each phrase onto its words.
    parser.add_argument(
        "--grounding-steps", type=int, default=2000, help="steps of grounding alone before the transformer trains"
    )


@dataclass
class Grounding:
    """A training set's token ids and labels for the pipeline's T5, with the heads that read them."""

    encoder: T5EncoderModel
    ids: torch.Tensor
    labels: torch.Tensor
    heads: torch.nn.ModuleList
    # Of the grounding loss beside the diffusion loss.
    weight: float = 1.0

    @classmethod
    def build(
        cls,
        pipe: DiffusionPipeline,
        captions: Sequence[Caption],
        attributes: Sequence[Sequence[tuple[int, ...]]],
        classes: Sequence[int],
        length: int,
        weight: float = 1.0,
    ) -> Grounding:
        tokenizer, encoder = t5_of(pipe)
        ids, labels = token_labels(tokenizer, captions, attributes, length)
        width = encoder.config.d_model
        heads = torch.nn.ModuleList(torch.nn.Linear(width, n) for n in classes).to(encoder.device)
        return cls(encoder, ids, labels, heads, weight)

    @classmethod
    def prepared(
        cls,
        pipe: DiffusionPipeline,
        captions: Sequence[Caption],
        attributes: Sequence[Sequence[tuple[int, ...]]],
        classes: Sequence[int],
        length: int,
        args: argparse.Namespace,
    ) -> Grounding | None:
        """What a trainer's `grounding_options` ask for: None at weight 0, else the grounding with
        its encoder already pre-trained for --grounding-steps."""
        if not args.grounding_weight:
            return None
        grounding = cls.build(pipe, captions, attributes, classes, length, args.grounding_weight)
        generator = torch.Generator().manual_seed(args.seed)
        final = grounding.pretrain(args.grounding_steps, args.batch_size, 1e-3, generator)
        print(f"T5 grounded alone for {args.grounding_steps} steps (loss {final:.3f})", flush=True)
        return grounding

    def added_to(self, loss: torch.Tensor, rows: torch.Tensor, shown: dict[str, str]) -> torch.Tensor:
        """`loss` plus the weighted grounding loss of the batch's rows (entered in `shown`)."""
        grounding_loss = self.loss(rows)
        shown["grounding"] = f"{grounding_loss.item():.3f}"
        return loss + self.weight * grounding_loss

    def loss(self, rows: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over the grounded tokens of the given rows (zero when none is)."""
        labels = self.labels[rows].to(self.encoder.device)
        hidden = self.encoder(self.ids[rows].to(self.encoder.device))[0]
        grounded = labels[..., 0] != UNGROUNDED
        if not bool(grounded.any()):
            return hidden.sum() * 0.0
        picked = hidden[grounded].float()
        terms = [F.cross_entropy(head(picked), labels[grounded][:, i]) for i, head in enumerate(self.heads)]
        return torch.stack(terms).mean()

    def pretrain(
        self,
        steps: int,
        batch_size: int,
        learning_rate: float,
        generator: torch.Generator,
        keeping: Callable[[torch.Generator], torch.Tensor] | None = None,
    ) -> float:
        """Train the encoder on grounding alone, as a language model is pre-trained before a
        diffusion model reads it, plus `keeping` (a loss that holds what must not move); returns
        the last grounding loss."""
        parameters = [*self.encoder.parameters(), *self.heads.parameters()]
        optimiser = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=0.01)
        self.encoder.train()
        loss = torch.zeros(())
        for _ in range(steps):
            loss = self.loss(torch.randint(len(self.ids), (batch_size,), generator=generator))
            optimiser.zero_grad(set_to_none=True)
            (loss if keeping is None else loss + keeping(generator)).backward()
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            optimiser.step()
        return loss.item()
