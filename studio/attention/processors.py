"""The studio's attention processors, and their installation.

A processor projects q, k, v exactly as the family's own processor does (diffusers'
FluxAttnProcessor / JointAttnProcessor2_0 for joint attention, AttnProcessor2_0 /
SanaAttnProcessor2_0 for PixArt's and SANA's text cross-attention), hands them to the
controller, and projects the result back. Only the projections differ between token orders."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from diffusers import ModelMixin
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import apply_rotary_emb
from torch import Tensor

from studio.attention.control import AttentionCall, AttentionController

SINGLE_STREAM_PREFIX = "single_transformer_blocks."


def _heads(tensor: torch.Tensor, head_dim: int) -> torch.Tensor:
    """[batch, tokens, heads * dim] -> [batch, tokens, heads, dim]."""
    return tensor.unflatten(-1, (-1, head_dim))


class StudioProcessor:
    """An attention processor of the toolkit, called as diffusers calls its processors; the
    subclass's `attend` does the work."""

    def __init__(self, layer: str, controller: AttentionController) -> None:
        self.layer = layer
        self.controller = controller

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: torch.Tensor | None = None,
        **_: object,
    ) -> Any:
        return self.attend(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)

    def attend(self, attn: Attention, hidden_states: Tensor, context: Tensor | None, mask: Tensor | None,
               rotary: Tensor | None) -> Any:  # fmt: skip
        raise NotImplementedError


class ControlledProcessor(StudioProcessor):
    def __init__(self, layer: str, controller: AttentionController, token_order: str) -> None:
        super().__init__(layer, controller)
        self.text_first = token_order == "text-image"

    def attend(self, attn: Attention, hidden_states: Tensor, context: Tensor | None, mask: Tensor | None,
               rotary: Tensor | None) -> Any:  # fmt: skip
        encoder_hidden_states, attention_mask, image_rotary_emb = context, mask, rotary
        head_dim = attn.head_dim if hasattr(attn, "head_dim") else attn.to_q.out_features // attn.heads
        q, k, v = (_heads(projection(hidden_states), head_dim) for projection in (attn.to_q, attn.to_k, attn.to_v))
        q, k = attn.norm_q(q) if attn.norm_q is not None else q, attn.norm_k(k) if attn.norm_k is not None else k
        if encoder_hidden_states is not None:
            text_length = encoder_hidden_states.shape[1]
            text_q, text_k, text_v = (
                _heads(projection(encoder_hidden_states), head_dim)
                for projection in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj)
            )
            if attn.norm_added_q is not None:
                text_q, text_k = attn.norm_added_q(text_q), attn.norm_added_k(text_k)
            pair = (
                (lambda text, image: torch.cat([text, image], dim=1))
                if self.text_first
                else (lambda text, image: torch.cat([image, text], dim=1))
            )
            q, k, v = pair(text_q, q), pair(text_k, k), pair(text_v, v)
        else:
            # A single-stream block: text and image arrive already joined, text first.
            if self.controller.text_length is None:
                raise RuntimeError("a single-stream block ran outside `controlled`: the text length is unknown")
            text_length = self.controller.text_length
        if image_rotary_emb is not None:
            q = apply_rotary_emb(q, image_rotary_emb, sequence_dim=1)
            k = apply_rotary_emb(k, image_rotary_emb, sequence_dim=1)

        tokens = q.shape[1]
        if self.text_first:
            text, image = slice(0, text_length), slice(text_length, tokens)
        else:
            text, image = slice(tokens - text_length, tokens), slice(0, tokens - text_length)
        call = AttentionCall(self.layer, self.controller.step, text, image, q.shape[2])
        output = self.controller.attend(call, q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attention_mask)
        output = output.transpose(1, 2).flatten(2, 3).to(q.dtype)

        if encoder_hidden_states is None:
            return output
        text_output, image_output = output[:, text], output[:, image]
        image_output = attn.to_out[1](attn.to_out[0](image_output.contiguous()))
        if not getattr(attn, "context_pre_only", False):
            text_output = attn.to_add_out(text_output.contiguous())
        return image_output, text_output


class ControlledCrossProcessor(StudioProcessor):
    """Cross-attention from image tokens (queries) to text tokens (keys), as PixArt and SANA use
    it. The call's `image` slice indexes the queries and its `text` slice the keys."""

    def attend(self, attn: Attention, hidden_states: Tensor, context: Tensor | None, mask: Tensor | None,
               rotary: Tensor | None) -> Any:  # fmt: skip
        encoder_hidden_states, attention_mask = context, mask
        batch = hidden_states.shape[0]
        q, k, v = attn.to_q(hidden_states), attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
        head_dim = q.shape[-1] // attn.heads

        def normalise(norm, tensor):
            # A norm over the whole width (SANA's across heads) comes before the head split.
            if norm is None:
                return tensor.unflatten(-1, (attn.heads, head_dim))
            if norm.weight is not None and norm.weight.numel() == tensor.shape[-1]:
                return norm(tensor).unflatten(-1, (attn.heads, head_dim))
            return norm(tensor.unflatten(-1, (attn.heads, head_dim)))

        q, k, v = normalise(attn.norm_q, q), normalise(attn.norm_k, k), v.unflatten(-1, (attn.heads, head_dim))
        if attention_mask is not None:  # the transformer's padding bias, [batch, 1, keys]
            attention_mask = attention_mask.view(batch, 1, -1, attention_mask.shape[-1]).to(q.dtype)
        call = AttentionCall(self.layer, self.controller.step, slice(0, k.shape[1]), slice(0, q.shape[1]), attn.heads)
        output = self.controller.attend(call, q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attention_mask)
        output = output.transpose(1, 2).flatten(2, 3).to(q.dtype)
        output = attn.to_out[1](attn.to_out[0](output))
        if attn.residual_connection:
            output = output + hidden_states
        return output / attn.rescale_output_factor


class ControlledVideoProcessor(StudioProcessor):
    """Video attention: CogVideoX's one attention over [text, video] with projections shared by
    text and video (as CogVideoXAttnProcessor2_0), or, without text, Wan's self-attention over
    the video tokens (as WanAttnProcessor: q/k RMS-normed across heads, then its rotary
    embedding). Returns what the family's own processor returns."""

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: Any = None,
        **named: Any,
    ) -> Any:
        if encoder_hidden_states is None:  # Wan passes its rotary embedding by position or as rotary_emb
            rotary = named.get("rotary_emb", image_rotary_emb)
            return self.attend_video(attn, hidden_states, rotary)
        return self.attend(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)

    def attend(self, attn: Attention, hidden_states: Tensor, context: Tensor | None, mask: Tensor | None,
               rotary: Tensor | None) -> Any:  # fmt: skip
        assert context is not None
        text_length = context.shape[1]
        joined = torch.cat([context, hidden_states], dim=1)
        head_dim = attn.to_k.out_features // attn.heads
        q, k, v = (projection(joined).unflatten(-1, (attn.heads, head_dim)).transpose(1, 2)
                   for projection in (attn.to_q, attn.to_k, attn.to_v))  # fmt: skip
        q, k = attn.norm_q(q) if attn.norm_q is not None else q, attn.norm_k(k) if attn.norm_k is not None else k
        if rotary is not None:  # CogVideoX-5b: rotary positions on the video tokens only
            q = torch.cat([q[:, :, :text_length], apply_rotary_emb(q[:, :, text_length:], rotary)], dim=2)
            k = torch.cat([k[:, :, :text_length], apply_rotary_emb(k[:, :, text_length:], rotary)], dim=2)
        tokens = q.shape[2]
        call = AttentionCall(self.layer, self.controller.step, slice(0, text_length), slice(text_length, tokens),
                             attn.heads)  # fmt: skip
        output = self.controller.attend(call, q, k, v, mask).transpose(1, 2).flatten(2, 3).to(q.dtype)
        output = attn.to_out[1](attn.to_out[0](output))
        return output[:, text_length:], output[:, :text_length]

    def attend_video(self, attn: Any, hidden_states: Tensor, rotary: tuple[Tensor, Tensor] | None) -> Tensor:
        q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        q, k = attn.norm_q(q), attn.norm_k(k)
        q, k, v = (tensor.unflatten(2, (attn.heads, -1)) for tensor in (q, k, v))
        if rotary is not None:
            q, k = _wan_rotary(q, *rotary), _wan_rotary(k, *rotary)
        call = AttentionCall(self.layer, self.controller.step, slice(0, 0), slice(0, q.shape[1]), attn.heads)
        output = self.controller.attend(call, q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        output = output.transpose(1, 2).flatten(2, 3).type_as(q)
        return attn.to_out[1](attn.to_out[0](output))


def _wan_rotary(tensor: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Wan's rotary embedding on interleaved (even, odd) feature pairs."""
    even, odd = tensor.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2).type_as(tensor)


VIDEO_TOKEN_ORDERS = ("text-video", "video")


def video_layers(transformer: ModelMixin) -> list[str]:
    """Names of a video transformer's video attention layers ("transformer_blocks.3.attn1")."""
    return [
        name.removesuffix(".processor") for name in transformer.attn_processors if name.endswith(".attn1.processor")
    ]


def cross_layers(transformer: ModelMixin) -> list[str]:
    """Names of the transformer's text cross-attention layers ("transformer_blocks.3.attn2")."""
    return [
        name.removesuffix(".processor") for name in transformer.attn_processors if name.endswith(".attn2.processor")
    ]


def controllable_layers(transformer: ModelMixin, token_order: str) -> list[str]:
    """The layers the toolkit controls: joint attention, text cross-attention, or video attention."""
    if token_order in VIDEO_TOKEN_ORDERS:
        return video_layers(transformer)
    return cross_layers(transformer) if token_order == "cross-attention" else joint_layers(transformer)


def joint_layers(transformer: ModelMixin, kind: str = "all") -> list[str]:
    """Names of the transformer's joint-attention layers ("transformer_blocks.3.attn"); kind
    "single" keeps FLUX's single-stream blocks, "double" the two-stream ones."""
    names = [
        name.removesuffix(".processor") for name in transformer.attn_processors if name.endswith(".attn.processor")
    ]
    if kind == "single":
        return [name for name in names if name.startswith(SINGLE_STREAM_PREFIX)]
    if kind == "double":
        return [name for name in names if not name.startswith(SINGLE_STREAM_PREFIX)]
    if kind != "all":
        raise ValueError(f"Layer kind {kind!r}: one of all, single, double.")
    return names


@contextmanager
def controlled(transformer: ModelMixin, controller: AttentionController, token_order: str) -> Iterator[None]:
    """Run the transformer's joint-attention layers through `controller`; the original processors
    come back afterwards whatever happens."""
    if token_order not in ("text-image", "image-text", "cross-attention", *VIDEO_TOKEN_ORDERS):
        raise ValueError(f"no attention control for token order {token_order!r}")
    originals = transformer.attn_processors
    layers = set(controllable_layers(transformer, token_order))

    def studio_processor(layer: str):
        if token_order == "cross-attention":
            return ControlledCrossProcessor(layer, controller)
        if token_order in VIDEO_TOKEN_ORDERS:
            return ControlledVideoProcessor(layer, controller)
        return ControlledProcessor(layer, controller, token_order)

    replacement = {
        name: studio_processor(name.removesuffix(".processor"))
        if name.removesuffix(".processor") in layers
        else processor
        for name, processor in originals.items()
    }

    def observe_text_length(_module, _args, kwargs):
        text = kwargs.get("encoder_hidden_states")
        controller.text_length = None if text is None else text.shape[1]

    hook = transformer.register_forward_pre_hook(observe_text_length, with_kwargs=True)
    transformer.set_attn_processor(replacement)
    try:
        yield
    finally:
        hook.remove()
        transformer.set_attn_processor(dict(originals))
