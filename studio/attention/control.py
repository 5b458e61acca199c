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


# Batch rows an edit acts on: None for all, a slice or a list of row indices.
Rows = slice | list[int] | None


@dataclass(kw_only=True)
class AttentionEdit:
    """One change to attention, active on `layers` (None: every controlled layer) at `steps`
    (None: every step), in the batch rows `rows` (None: all)."""

    layers: Container[str] | None = None
    steps: Container[int] | None = None
    rows: Rows = None
    # Reads or changes scores / probabilities, so the layer computes attention explicitly.
    explicit: bool = field(default=False, init=False)

    @property
    def batch(self) -> slice | list[int]:
        return slice(None) if self.rows is None else self.rows

    def applies(self, call: AttentionCall) -> bool:
        return (self.layers is None or call.layer in self.layers) and (self.steps is None or call.step in self.steps)

    def on_qkv(self, call: AttentionCall, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        return q, k, v

    def on_scores(self, call: AttentionCall, scores: torch.Tensor, heads: slice) -> torch.Tensor:
        return scores

    def on_probabilities(self, call: AttentionCall, probabilities: torch.Tensor, heads: slice) -> torch.Tensor:
        return probabilities


class BranchCache:
    """A source branch's queries, keys and values per (step, layer). With `history` they are kept
    for a later pass over the whole run; without, only the current call's are (the source runs in
    the same batch as the target, and memory stays one layer's worth whatever the run's length)."""

    def __init__(self, history: bool = True) -> None:
        self.history = history
        self._entries: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def _key(self, call: AttentionCall) -> tuple[int, str]:
        return (call.step if self.history else -1), call.layer

    def put(self, call: AttentionCall, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        self._entries[self._key(call)] = (q.detach(), k.detach(), v.detach())

    def get(self, call: AttentionCall, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        try:
            entry = self._entries[self._key(call)]
        except KeyError:
            raise KeyError(f"the source branch did not pass layer {call.layer} at step {call.step}") from None
        q, k, v = (t.to(like.device, like.dtype) for t in entry)
        return q, k, v

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(kw_only=True)
class CaptureBranch(AttentionEdit):
    """Keep this pass's q, k, v (of `rows`) for the target branch."""

    cache: BranchCache

    def on_qkv(self, call, q, k, v):
        self.cache.put(call, q[self.batch], k[self.batch], v[self.batch])
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
        scores = q[:, heads.start : heads.stop] @ k[:, heads.start : heads.stop].transpose(-1, -2) * q.shape[-1] ** -0.5
        source_probabilities = scores.float().softmax(dim=-1).to(probabilities.dtype)
        probabilities = probabilities.clone()
        probabilities[self.batch, :, call.image, call.image] = source_probabilities[:, :, call.image, call.image]
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
        own = v[self.batch, :, call.image]
        v[self.batch, :, call.image] = torch.where(keep, own, source_v[:, :, call.image])
        return q, k, v


@dataclass(kw_only=True)
class ScaleTokenScores(AttentionEdit):
    """Multiply the pre-softmax scores from the given text tokens (as queries) to the image tokens
    by `factor`: word-level intensity."""

    tokens: Sequence[int]
    factor: float

    def __post_init__(self) -> None:
        self.explicit = True

    def on_scores(self, call, scores, heads):
        tokens = torch.tensor([call.text.start + index for index in self.tokens], device=scores.device)
        for row in range(scores.shape[0])[self.batch] if isinstance(self.batch, slice) else self.batch:
            scores[row, :, tokens, call.image] *= self.factor
        return scores


@dataclass(kw_only=True)
class MaskAttention(AttentionEdit):
    """Only pairs where `allowed` ([tokens, tokens] over the joint sequence) is true attend. With
    `base_ratio` r the probabilities are (1 - r) · masked + r · unmasked (regional prompting's
    blend with the base pass)."""

    allowed: torch.Tensor
    base_ratio: float = 0.0
    # The unmasked probabilities of the chunk in flight, between the two hooks.
    _unmasked: torch.Tensor | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.explicit = True

    def on_scores(self, call, scores, heads):
        if self.base_ratio:
            self._unmasked = scores[self.batch].float().softmax(dim=-1)
        blocked = ~self.allowed.to(scores.device)
        scores[self.batch] = scores[self.batch].masked_fill(blocked, float("-inf"))
        return scores

    def on_probabilities(self, call, probabilities, heads):
        if not self.base_ratio or self._unmasked is None:
            return probabilities
        probabilities = probabilities.clone()
        blended = (1 - self.base_ratio) * probabilities[self.batch].float() + self.base_ratio * self._unmasked
        probabilities[self.batch] = blended.to(probabilities.dtype)
        self._unmasked = None
        return probabilities


@dataclass(kw_only=True)
class ShareKeysValues(AttentionEdit):
    """This branch's queries attend to the source branch's keys and values (KV sharing); image
    tokens inside `keep` (a boolean mask over image tokens), if given, keep their own."""

    source: BranchCache
    keep: torch.Tensor | None = None

    def on_qkv(self, call, q, k, v):
        _, source_k, source_v = self.source.get(call, k)
        if self.keep is not None:
            keep = self.keep.to(k.device).view(1, 1, -1, 1)
            source_k, source_v = source_k.clone(), source_v.clone()
            source_k[:, :, call.image] = torch.where(keep, k[self.batch][:, :, call.image], source_k[:, :, call.image])
            source_v[:, :, call.image] = torch.where(keep, v[self.batch][:, :, call.image], source_v[:, :, call.image])
        k, v = k.clone(), v.clone()
        k[self.batch], v[self.batch] = source_k, source_v
        return q, k, v


@dataclass(kw_only=True)
class RecordTextAttention(AttentionEdit):
    """Each of `rows`' attention from image (video) queries to the text tokens `tokens`, summed
    over them and averaged over heads, then over the layers of the current transformer call so
    far (a layer seen again starts a new call). Computed from its own q and k, before any edit
    changes them, without forcing explicit attention on the layer."""

    tokens: Sequence[int]
    record_rows: Sequence[int]
    _maps: dict[str, torch.Tensor] = field(default_factory=dict, init=False, repr=False)

    def on_qkv(self, call, q, k, v):
        if call.layer in self._maps:
            self._maps.clear()
        columns = [call.text.start + index for index in self.tokens]
        total = torch.zeros(len(self.record_rows), call.image.stop - call.image.start, device=q.device)
        for head in range(q.shape[1]):
            rows = list(self.record_rows)
            scores = q[rows, head, call.image] @ k[rows, head].transpose(-1, -2) * q.shape[-1] ** -0.5
            total += scores.float().softmax(dim=-1)[..., columns].sum(dim=-1)
        self._maps[call.layer] = total / q.shape[1]
        return q, k, v

    def mean_map(self, row: int) -> torch.Tensor:
        """The map of `rows[row]` averaged over this call's layers so far: [image tokens]."""
        return torch.stack([m[row] for m in self._maps.values()]).mean(dim=0)


@dataclass(kw_only=True)
class MaskGuidedSharing(AttentionEdit):
    """DiTCtrl's mask-guided KV sharing. The target rows' queries attend the source branch's keys
    and values twice: with the video keys limited to the source's foreground, and to its
    background (text keys always allowed). Each target query takes the foreground attention
    where its own map says foreground (video queries by the target's map, text queries when they
    are the subject tokens), the background attention elsewhere. A map is the recorder's
    attention to the subject tokens, min-max normalised per frame of `frame_tokens` tokens and
    thresholded."""

    source: BranchCache
    recorder: RecordTextAttention
    threshold: float
    frame_tokens: int
    # Fused probabilities of the chunk in flight, between the two hooks.
    _fused: torch.Tensor | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.explicit = True

    def foreground(self, row: int) -> torch.Tensor:
        frames = self.recorder.mean_map(row).view(-1, self.frame_tokens)
        low, high = frames.amin(dim=1, keepdim=True), frames.amax(dim=1, keepdim=True)
        return ((frames - low) / (high - low + 1e-6) >= self.threshold).flatten()

    def on_qkv(self, call, q, k, v):
        _, source_k, source_v = self.source.get(call, k)
        k, v = k.clone(), v.clone()
        k[self.batch], v[self.batch] = source_k, source_v
        return q, k, v

    def on_scores(self, call, scores, heads):
        source_fg, target_fg = self.foreground(0).to(scores.device), self.foreground(1).to(scores.device)
        own = scores[self.batch].float()
        video_keys = torch.zeros(own.shape[-1], dtype=torch.bool, device=scores.device)
        video_keys[call.image] = True
        blocked_in_fg = video_keys.clone()
        blocked_in_fg[call.image] = ~source_fg
        blocked_in_bg = video_keys.clone()
        blocked_in_bg[call.image] = source_fg
        fg = own.masked_fill(blocked_in_fg, float("-inf")).softmax(dim=-1)
        bg = own.masked_fill(blocked_in_bg, float("-inf")).softmax(dim=-1)
        query_fg = torch.zeros(own.shape[-2], device=scores.device)
        query_fg[call.image] = target_fg.float()
        query_fg[[call.text.start + index for index in self.recorder.tokens]] = 1.0
        weight = query_fg.view(1, 1, -1, 1)
        self._fused = torch.nan_to_num(weight * fg + (1 - weight) * bg)
        return scores

    def on_probabilities(self, call, probabilities, heads):
        if self._fused is None:
            return probabilities
        probabilities = probabilities.clone()
        probabilities[self.batch] = self._fused.to(probabilities.dtype)
        self._fused = None
        return probabilities


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
            scores = q[:, start : chunk.stop] @ k[:, start : chunk.stop].transpose(-1, -2) * q.shape[-1] ** -0.5
            if mask is not None:
                scores = scores + mask if mask.dtype != torch.bool else scores.masked_fill(~mask, float("-inf"))
            for edit in active:
                scores = edit.on_scores(call, scores, chunk)
            probabilities = scores.float().softmax(dim=-1).to(q.dtype)
            for edit in active:
                probabilities = edit.on_probabilities(call, probabilities, chunk)
            output[:, start : chunk.stop] = probabilities @ v[:, start : chunk.stop]
        return output
