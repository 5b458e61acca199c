"""Built-in offline models: small pipelines built from configs in code, tokenizers included.

A built-in model is saved once to a folder and then loaded through the same `from_pretrained`
path as a hub model. Where the catalogue names a folder of trained weights that exists (the
shapes-world checkpoints under `assets/models/`), that folder is used as it is; otherwise the
family's random-weight model is built into the cache. So a trained checkpoint replaces a random
one by being put in place, with no code change.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    Gemma2Config,
    Gemma2Model,
    GemmaTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

from studio.toyworld.scene import VOCABULARY

BUILTIN_FORMAT_VERSION = "7"
_build_lock = threading.Lock()


def studio_home() -> Path:
    return Path(os.environ.get("DIT_STUDIO_HOME", Path.home() / ".cache" / "dit-studio"))


def builtin_cache_dir(name: str) -> Path:
    return studio_home() / "builtin" / f"{name}-v{BUILTIN_FORMAT_VERSION}"


def ensure_builtin(
    name: str, build: Callable[[Path], None], trained_dir: Path | None = None, marker: str = "model_index.json"
) -> Path:
    """The folder to load built-in model `name` from: `trained_dir` when it holds a saved
    pipeline, else the random-weight model that `build` saves, built once into the cache.
    `marker` is the file a finished save leaves (a lone model's is its config.json)."""
    if trained_dir is not None and (trained_dir / marker).is_file():
        return trained_dir
    target = builtin_cache_dir(name)
    with _build_lock:
        if not (target / marker).is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            # Built in a temporary folder and renamed, so a crash never leaves half a model.
            staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
            try:
                build(staging)
                shutil.rmtree(target, ignore_errors=True)
                staging.rename(target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    return target


def small_vae(latent_channels: int, block_out_channels: tuple[int, ...] = (16, 32, 64)) -> AutoencoderKL:
    """A small KL autoencoder for FLUX, SD3 and PixArt built-ins. Its latent shift and scale start
    at 0 and 1; training takes both from the data."""
    # Few GroupNorm groups: with one group per channel flat colours wash out.
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(block_out_channels),
        up_block_types=("UpDecoderBlock2D",) * len(block_out_channels),
        block_out_channels=block_out_channels,
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=4,
        mid_block_add_attention=False,
        scaling_factor=1.0,
        shift_factor=0.0,
    )


# --- Tokenizers -------------------------------------------------------------------------------
# transformers 5 tokenizers rebuild their model from the saved vocabulary, so a plain word list
# does not survive a save/load. Each tokenizer here is a real BPE or Unigram model whose merges
# or pieces give exactly one token per vocabulary word, built deterministically (no training), so
# ids are stable across processes.


def _chained_merges(pieces: list[str], vocab: dict[str, int], merges: list[tuple[str, str]], from_end: bool) -> None:
    """Merges that join `pieces` into one token, one piece at a time from the start or the end.

    A chain from the end (whose right side always carries CLIP's end-of-word mark) or from a
    word-start mark can only ever apply at one place in a word, so chains of different words
    never cut into each other."""
    for piece in pieces:
        vocab.setdefault(piece, len(vocab))
    order = pieces[::-1] if from_end else pieces
    merged = order[0]
    for piece in order[1:]:
        pair = (piece, merged) if from_end else (merged, piece)
        if pair not in merges:
            merges.append(pair)
        merged = pair[0] + pair[1]
        vocab.setdefault(merged, len(vocab))


def clip_tokenizer(words: Sequence[str] = VOCABULARY, max_length: int = 77) -> CLIPTokenizer:
    # Start and end of text first, so end-of-text is id 1: CLIPTextModel pools at the eos id and
    # falls back to argmax pooling when that id is 2.
    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    merges: list[tuple[str, str]] = []
    for word in words:
        _chained_merges([*list(word[:-1]), word[-1] + "</w>"], vocab, merges, from_end=True)
    return CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        model_max_length=max_length,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )


def t5_tokenizer(words: Sequence[str] = VOCABULARY) -> T5Tokenizer:
    # Every word as one piece after a space mark, and also bare (costlier), so that tags written
    # without spaces ("[PANEL-1]") still split into known words rather than <unk>.
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -3.0)]
    pieces += [("\u2581" + word, -1.0) for word in words]
    pieces += [(word, -2.0) for word in words]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def gemma_tokenizer(words: Sequence[str] = VOCABULARY) -> GemmaTokenizer:
    vocab: dict[str, int] = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3}
    word_start_merges: list[tuple[str, str]] = []
    for word in words:
        _chained_merges(["\u2581", *word] if word.isalnum() else list(word), vocab, word_start_merges, from_end=False)
    # Gemma gives the first word of a text no start mark, so each word also gets a plain chain,
    # ranked after every start-marked chain so that it never cuts into a later word.
    plain_merges: list[tuple[str, str]] = []
    for word in words:
        _chained_merges(list(word), vocab, plain_merges, from_end=True)
    merges = word_start_merges + [pair for pair in plain_merges if pair not in word_start_merges]
    return GemmaTokenizer(vocab=vocab, merges=merges)


# --- Text encoders ----------------------------------------------------------------------------
# Encoders built from a config start in training mode with dropout: switch both off, or the
# conditioning changes from call to call.


def _inference_ready(model: torch.nn.Module) -> torch.nn.Module:
    return model.eval()


def clip_text_encoder(
    tokenizer: CLIPTokenizer, hidden_size: int = 32, projection_dim: int | None = None, layers: int = 2
) -> CLIPTextModel | CLIPTextModelWithProjection:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=2,
        max_position_embeddings=tokenizer.model_max_length,
        projection_dim=projection_dim or hidden_size,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        attention_dropout=0.0,
        dropout=0.0,
    )
    model_class = CLIPTextModelWithProjection if projection_dim else CLIPTextModel
    return _inference_ready(model_class(config))


def t5_text_encoder(tokenizer: T5Tokenizer, d_model: int = 32, layers: int = 2) -> T5EncoderModel:
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_kv=d_model // 4,
        d_ff=d_model * 2,
        num_layers=layers,
        num_heads=4,
        dropout_rate=0.0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return _inference_ready(T5EncoderModel(config))


def gemma_text_encoder(tokenizer: GemmaTokenizer, hidden_size: int = 32) -> Gemma2Model:
    config = Gemma2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=hidden_size // 2,
        attention_dropout=0.0,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return _inference_ready(Gemma2Model(config))
