"""The attention computation every controlled layer runs, and the edits that change it.

Tensors are [batch, heads, tokens, head_dim] over the joint sequence in the family's order; an
`AttentionCall` says where the text and image tokens lie. Edits that read or change scores or
probabilities force explicit attention, computed a few heads at a time to bound memory; with none
active the layer runs PyTorch's fused attention.
"""

from __future__ import annotations

from collections.abc import Container, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

# Heads per chunk of explicit attention: a [batch, 4, tokens, tokens] float32 score block.
HEADS_PER_CHUNK = 4


@dataclass(frozen=True)
class AttentionCall:
    layer: str  # e.g. "single_transformer_blocks.3.attn"
    step: int
    text: slice  # text tokens in the joint sequence
    image: slice  # image tokens in the joint sequence
    heads: int  # the layer's head count (edits see them a chunk at a time)


@dataclass(kw_only=True)
class AttentionEdit:
    """One change to attention, active on `layers` (None: every controlled layer) at `steps`
    (None: every step)."""

    layers: Container[str] | None = None
    steps: Container[int] | None = None
    # Reads or changes scores / probabilities, so the layer computes attention explicitly.
    explicit: bool = field(default=False, init=False)

    def applies(self, call: AttentionCall) -> bool:
        return (self.layers is None or call.layer in self.layers) and (self.steps is None or call.step in self.steps)

    def on_qkv(self, call: AttentionCall, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        return q, k, v

    def on_scores(self, call: AttentionCall, scores: torch.Tensor, heads: slice) -> torch.Tensor:
        return scores

    def on_probabilities(self, call: AttentionCall, probabilities: torch.Tensor, heads: slice) -> torch.Tensor:
        return probabilities


class BranchCache:
    """One branch's queries, keys and values per (step, layer), kept for a later branch.
    `device` may be the host when the accelerator cannot hold a whole run's worth."""

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.device = device
        self._entries: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def put(self, call: AttentionCall, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        self._entries[call.step, call.layer] = tuple(t.detach().to(self.device or t.device) for t in (q, k, v))

    def get(self, call: AttentionCall, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        try:
            entry = self._entries[call.step, call.layer]
        except KeyError:
            raise KeyError(f"the source branch did not pass layer {call.layer} at step {call.step}") from None
        return tuple(t.to(like.device, like.dtype) for t in entry)

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(kw_only=True)
class CaptureBranch(AttentionEdit):
    """Keep this pass's q, k, v for a later pass (the source branch of an edit)."""

    cache: BranchCache

    def on_qkv(self, call, q, k, v):
        self.cache.put(call, q, k, v)
        return q, k, v


@dataclass(kw_only=True)
class RecordAttention(AttentionEdit):
    """Record attention from image queries to `keys` (text-relative token indices, or "image" for
    the whole image→image map), averaged over heads, per (step, layer): [batch, image, keys]."""

    keys: Sequence[int] | str
    maps: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.explicit = True

    def _columns(self, call: AttentionCall) -> slice | list[int]:
        if isinstance(self.keys, str):
            return call.image
        return [call.text.start + index for index in self.keys]

    def on_probabilities(self, call, probabilities, heads):
        picked = probabilities[:, :, call.image][..., self._columns(call)].float().sum(dim=1)
        key = (call.step, call.layer)
        self.maps[key] = self.maps[key] + picked if heads.start else picked
        if heads.stop == call.heads:
            self.maps[key] = self.maps[key] / call.heads
        return probabilities

    def mean_map(self, row: int = -1) -> torch.Tensor:
        """The recorded attention of batch `row`, averaged over steps, layers and keys: [image]."""
        if not self.maps:
            raise ValueError("nothing was recorded: no controlled layer ran")
        return torch.stack([m[row].mean(dim=-1) for m in self.maps.values()]).mean(dim=0)


@dataclass(kw_only=True)
class CopyImageMap(AttentionEdit):
    """Structure: the source branch's image→image attention probabilities replace this branch's;
    the rows and columns of text tokens stay this branch's own."""

    source: BranchCache

    def __post_init__(self) -> None:
        self.explicit = True

    def on_probabilities(self, call, probabilities, heads):
        q, k, _ = self.source.get(call, probabilities)
        scores = q[:, heads.start:heads.stop] @ k[:, heads.start:heads.stop].transpose(-1, -2) * q.shape[-1] ** -0.5
        source_probabilities = scores.float().softmax(dim=-1).to(probabilities.dtype)
        probabilities = probabilities.clone()
        probabilities[:, :, call.image, call.image] = source_probabilities[:, :, call.image, call.image]
        return probabilities


@dataclass(kw_only=True)
class ReplaceImageValues(AttentionEdit):
    """Outside `keep` (a boolean mask over image tokens) this branch's image value tokens are the
    source's; inside they stay its own. Text values are never touched."""

    source: BranchCache
    keep: torch.Tensor

    def on_qkv(self, call, q, k, v):
        _, _, source_v = self.source.get(call, v)
        v = v.clone()
        keep = self.keep.to(v.device).view(1, 1, -1, 1)
        v[:, :, call.image] = torch.where(keep, v[:, :, call.image], source_v[:, :, call.image])
        return q, k, v


@dataclass(kw_only=True)
class ScaleTokenScores(AttentionEdit):
    """Multiply the pre-softmax scores from the given text tokens (as queries) to the image tokens
    by `factor`: word-level intensity."""

    tokens: Sequence[int]
    factor: float
    rows: slice | None = None  # batch rows (None: all), e.g. only the conditional half of CFG

    def __post_init__(self) -> None:
        self.explicit = True

    def on_scores(self, call, scores, heads):
        tokens = torch.tensor([call.text.start + index for index in self.tokens], device=scores.device)
        batch = self.rows or slice(None)
        scores[batch, :, tokens, call.image] = scores[batch, :, tokens, call.image] * self.factor
        return scores


@dataclass(kw_only=True)
class MaskAttention(AttentionEdit):
    """Only pairs where `allowed` ([tokens, tokens] over the joint sequence) is true attend, in the
    batch rows `rows` (None: all)."""

    allowed: torch.Tensor
    rows: slice | None = None

    def __post_init__(self) -> None:
        self.explicit = True

    def on_scores(self, call, scores, heads):
        rows = self.rows or slice(None)
        blocked = ~self.allowed.to(scores.device)
        scores[rows] = scores[rows].masked_fill(blocked, float("-inf"))
        return scores


@dataclass(kw_only=True)
class ShareKeysValues(AttentionEdit):
    """This branch's queries attend to the source branch's keys and values (KV sharing)."""

    source: BranchCache

    def on_qkv(self, call, q, k, v):
        _, source_k, source_v = self.source.get(call, k)
        return q, source_k, source_v


class AttentionController:
    """Holds the edits and the current step; the studio's processors call `attend`."""

    def __init__(self, edits: Sequence[AttentionEdit] = ()) -> None:
        self.edits = list(edits)
        self.step = 0
        self.text_length: int | None = None  # set per transformer call; single-stream blocks need it

    def set_step(self, step: int) -> None:
        self.step = step

    def attend(
        self, call: AttentionCall, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        active = [edit for edit in self.edits if edit.applies(call)]
        for edit in active:
            q, k, v = edit.on_qkv(call, q, k, v)
        if not any(edit.explicit for edit in active):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        heads = q.shape[1]
        output = torch.empty_like(q)
        for start in range(0, heads, HEADS_PER_CHUNK):
            chunk = slice(start, min(start + HEADS_PER_CHUNK, heads))
            scores = q[:, start:chunk.stop] @ k[:, start:chunk.stop].transpose(-1, -2) * q.shape[-1] ** -0.5
            if mask is not None:
                scores = scores + mask if mask.dtype != torch.bool else scores.masked_fill(~mask, float("-inf"))
            for edit in active:
                scores = edit.on_scores(call, scores, chunk)
            probabilities = scores.float().softmax(dim=-1).to(q.dtype)
            for edit in active:
                probabilities = edit.on_probabilities(call, probabilities, chunk)
            output[:, start:chunk.stop] = probabilities @ v[:, start:chunk.stop]
        return output
