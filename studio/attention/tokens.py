"""Which text tokens carry a word, for every family's tokenizers (CLIP BPE, T5 Unigram, Gemma
BPE): the positions, in the text sequence the transformer sees, of every token that overlaps
the word's characters, so words split into several tokens get all their pieces."""

from __future__ import annotations

import re

from diffusers import DiffusionPipeline

from studio.errors import InvalidRequest
from studio.families import Family


def word_spans(prompt: str, word: str) -> list[tuple[int, int]]:
    """Character spans of `word` as a whole word (case-insensitive) in `prompt`."""
    pattern = r"(?<!\w)" + re.escape(word.strip()) + r"(?!\w)"
    return [match.span() for match in re.finditer(pattern, prompt, flags=re.IGNORECASE)]


def word_token_indices(
    pipe: DiffusionPipeline, family: Family, prompt: str, word: str, max_sequence_length: int
) -> list[int]:
    """Text-sequence positions of `word`'s tokens in `prompt` (every occurrence)."""
    spans = word_spans(prompt, word) if word.strip() else []
    if not spans:
        raise InvalidRequest(f"The word {word!r} is not in the prompt {prompt!r}.")
    indices = []
    for segment in family.text_segments(pipe, max_sequence_length):
        encoded = segment.tokenizer(
            prompt, truncation=True, max_length=segment.length, return_offsets_mapping=True, add_special_tokens=True
        )
        for position, (start, end) in enumerate(encoded["offset_mapping"]):
            if end > start and any(start < span_end and end > span_start for span_start, span_end in spans):
                indices.append(segment.offset + position)
    if not indices:
        raise InvalidRequest(f"The word {word!r} lies beyond the {max_sequence_length} tokens the model reads.")
    return indices
