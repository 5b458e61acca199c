"""CreatiLayout's SiamLayout: an SD3 (MM-DiT) transformer with a layout branch in every joint block.

Each entity of a layout becomes one layout token: its phrase's pooled CLIP-L + CLIP-G embedding
and a Fourier embedding of its box, through an MLP, with learned null features for empty slots.
Every joint block gets a sibling attention between the image tokens and the layout tokens, with
its own weights and its own adaptive norms for the layout stream, fused into the image stream as

    gate · attn(image, text) + scale · zero_init_linear(attn(image, layout))

so a fresh branch leaves the base model's output unchanged. The modules are attached to a
diffusers `SD3Transformer2DModel` under the checkpoint's names (`transformer_blocks.N.bbox_fuser_block`,
`position_net`, ...), so the published `HuiZhang0812/CreatiLayout` SiamLayout_SD3 weights load
strictly into it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import SD3Transformer2DModel
from diffusers.models.attention import FeedForward, JointTransformerBlock
from diffusers.models.attention_processor import Attention, JointAttnProcessor2_0
from diffusers.models.normalization import AdaLayerNormContinuous, AdaLayerNormZero
from safetensors.torch import load_file
from torch import nn

from studio.errors import InvalidRequest
from studio.families import Extension

MAX_BOXES = 10
BRANCH_MODULES = ("bbox_fuser_block", "bbox_forward", "norm1_bbox", "norm2_bbox", "ff_bbox")
FOURIER_FREQUENCIES = 8


def box_fourier_embedding(boxes: torch.Tensor, frequencies: int = FOURIER_FREQUENCIES) -> torch.Tensor:
    """[B, N, 4] boxes (x1, y1, x2, y2 in 0..1) -> [B, N, frequencies * 2 * 4], GLIGEN's embedding
    (per coordinate: sin then cos of each frequency 100^(k/frequencies))."""
    batch, count = boxes.shape[:2]
    scales = 100 ** (torch.arange(frequencies, device=boxes.device, dtype=boxes.dtype) / frequencies)
    angles = scales.view(1, 1, 1, -1) * boxes.unsqueeze(-1)  # [B, N, 4, F]
    waves = torch.stack((angles.sin(), angles.cos()), dim=-1)  # [B, N, 4, F, 2]
    return waves.permute(0, 1, 3, 4, 2).reshape(batch, count, frequencies * 2 * 4)


class TwoLayerProjection(nn.Module):
    def __init__(self, in_features: int, hidden: int, out_features: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_features, hidden)
        self.act_1 = nn.SiLU()
        self.linear_2 = nn.Linear(hidden, out_features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act_1(self.linear_1(features)))


class LayoutTokenProjection(nn.Module):
    """Phrase embeddings and boxes -> layout tokens; masked-out slots take the learned nulls."""

    def __init__(self, phrase_dim: int, width: int, frequencies: int = FOURIER_FREQUENCIES) -> None:
        super().__init__()
        self.frequencies = frequencies
        position_dim = frequencies * 2 * 4
        self.text_embedder = TwoLayerProjection(phrase_dim, width, width)
        self.linears = TwoLayerProjection(width + position_dim, width // 2, width)
        self.null_positive_feature = nn.Parameter(torch.zeros(width))
        self.null_position_feature = nn.Parameter(torch.zeros(position_dim))

    def forward(self, boxes: torch.Tensor, masks: torch.Tensor, phrases: torch.Tensor) -> torch.Tensor:
        present = masks.unsqueeze(-1).to(boxes.dtype)
        position = box_fourier_embedding(boxes, self.frequencies)
        position = position * present + (1 - present) * self.null_position_feature.view(1, 1, -1)
        phrase = self.text_embedder(phrases)
        phrase = phrase * present + (1 - present) * self.null_positive_feature.view(1, 1, -1)
        return self.linears(torch.cat([phrase, position], dim=-1))


@dataclass
class LayoutTokens:
    """A batch's layout: boxes [B, N, 4], phrase embeddings [B, N, D] and which slots are filled
    [B, N]; the unconditional half of CFG has no slot filled, so it sees only null tokens."""

    boxes: torch.Tensor
    phrases: torch.Tensor
    masks: torch.Tensor


def attach_layout_branches(transformer: SD3Transformer2DModel, max_boxes: int = MAX_BOXES, seed: int = 0) -> None:
    """Give every joint block its layout branch and the transformer its layout-token projection
    (seeded initialisation, fuse layers zero), as CreatiLayout's SiamLayout_SD3 has them."""
    if is_siamlayout(transformer):
        return
    if any(block.use_dual_attention for block in transformer.transformer_blocks):
        raise InvalidRequest("SiamLayout is defined for SD3 (Medium) blocks, not SD3.5's dual-attention blocks.")
    config = transformer.config
    width = config.num_attention_heads * config.attention_head_dim
    last = len(transformer.transformer_blocks) - 1
    parameter = next(transformer.parameters())
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    # Built in float32 on the host, then moved to the transformer's dtype and device.
    try:
        for index, block in enumerate(transformer.transformer_blocks):
            stream_ends = index == last  # the last block only reads the layout stream, as with text
            block.bbox_fuser_block = Attention(
                query_dim=width,
                cross_attention_dim=None,
                added_kv_proj_dim=width,
                dim_head=config.attention_head_dim,
                heads=config.num_attention_heads,
                out_dim=width,
                context_pre_only=stream_ends,
                bias=True,
                processor=JointAttnProcessor2_0(),
            )
            block.bbox_forward = nn.Linear(width, width)
            nn.init.zeros_(block.bbox_forward.weight)
            nn.init.zeros_(block.bbox_forward.bias)
            if stream_ends:
                block.norm1_bbox = AdaLayerNormContinuous(
                    width, width, elementwise_affine=False, eps=1e-6, bias=True, norm_type="layer_norm"
                )
            else:
                block.norm1_bbox = AdaLayerNormZero(width)
                block.norm2_bbox = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
                block.ff_bbox = FeedForward(dim=width, dim_out=width, activation_fn="gelu-approximate")
            for name in BRANCH_MODULES:
                if hasattr(block, name):
                    getattr(block, name).to(parameter)
        transformer.position_net = LayoutTokenProjection(config.pooled_projection_dim, width).to(parameter)
    finally:
        torch.random.set_rng_state(generator_state)
    transformer.register_to_config(attention_type="layout", max_boxes_per_image=max_boxes)


def is_siamlayout(transformer: torch.nn.Module) -> bool:
    return hasattr(transformer, "position_net")


def branch_state(transformer: SD3Transformer2DModel) -> dict[str, torch.Tensor]:
    """The layout branches' and the layout-token projection's tensors, by state-dict name."""
    return {
        name: tensor
        for name, tensor in transformer.state_dict().items()
        if name.startswith("position_net.") or any(f".{module}." in name for module in BRANCH_MODULES)
    }


def load_layout_weights(transformer: SD3Transformer2DModel, folder: Path) -> None:
    """Load SiamLayout weights (safetensors, one file or an index of shards) into a transformer
    with attached branches: a whole SiamLayout transformer (CreatiLayout's checkpoints) or the
    branches alone (trained on a frozen base). Every expected key must be there, no other."""
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = ["diffusion_pytorch_model.safetensors"]
    state = {}
    for name in files:
        state.update(load_file(folder / name))
    parameter = next(transformer.parameters())
    state = {key: value.to(parameter.dtype) for key, value in state.items()}
    if set(state) == set(branch_state(transformer)):
        transformer.load_state_dict(state, strict=False)
    else:
        transformer.load_state_dict(state, strict=True)


def _layout_block(
    block: JointTransformerBlock,
    hidden: torch.Tensor,
    context: torch.Tensor,
    temb: torch.Tensor,
    layout: torch.Tensor,
    scale: float,
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """A joint block with its layout branch (SD3's JointTransformerBlock plus the sibling attention)."""
    norm_hidden, gate_msa, shift_mlp, scale_mlp, gate_mlp = block.norm1(hidden, emb=temb)
    if block.context_pre_only:
        norm_context = block.norm1_context(context, temb)
    else:
        norm_context, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp = block.norm1_context(context, emb=temb)
    attn_output, context_attn_output = block.attn(hidden_states=norm_hidden, encoder_hidden_states=norm_context)
    attn_output = gate_msa.unsqueeze(1) * attn_output

    stream_ends = block.bbox_fuser_block.context_pre_only
    if stream_ends:
        norm_layout = block.norm1_bbox(layout, temb)
    else:
        norm_layout, l_gate_msa, l_shift_mlp, l_scale_mlp, l_gate_mlp = block.norm1_bbox(layout, emb=temb)
    image_from_layout, layout_attn_output = block.bbox_fuser_block(
        hidden_states=norm_hidden, encoder_hidden_states=norm_layout
    )
    attn_output = attn_output + scale * block.bbox_forward(image_from_layout)
    next_layout: torch.Tensor | None = None
    if not stream_ends:
        layout = layout + l_gate_msa.unsqueeze(1) * layout_attn_output
        norm_layout = block.norm2_bbox(layout) * (1 + l_scale_mlp[:, None]) + l_shift_mlp[:, None]
        next_layout = layout + l_gate_mlp.unsqueeze(1) * block.ff_bbox(norm_layout)

    hidden = hidden + attn_output
    norm_hidden = block.norm2(hidden) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
    hidden = hidden + gate_mlp.unsqueeze(1) * block.ff(norm_hidden)
    if block.context_pre_only:
        return None, hidden, next_layout
    context = context + c_gate_msa.unsqueeze(1) * context_attn_output
    norm_context = block.norm2_context(context) * (1 + c_scale_mlp[:, None]) + c_shift_mlp[:, None]
    return context + c_gate_mlp.unsqueeze(1) * block.ff_context(norm_context), hidden, next_layout


def layout_tokens(transformer: SD3Transformer2DModel, layout: LayoutTokens) -> torch.Tensor:
    parameter = next(transformer.parameters())
    return transformer.position_net(
        layout.boxes.to(parameter), layout.masks.to(parameter), layout.phrases.to(parameter)
    )


def siamlayout_forward(
    transformer: SD3Transformer2DModel,
    hidden_states: torch.Tensor,
    timestep: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    pooled_projections: torch.Tensor,
    layout: LayoutTokens,
    scale: float,
) -> torch.Tensor:
    """The SiamLayout transformer's output; with `scale` 0 the layout branches are skipped and
    each block runs as the base SD3 block (CreatiLayout's schedule after its grounding steps)."""
    height, width = hidden_states.shape[-2:]
    hidden = transformer.pos_embed(hidden_states).contiguous()
    temb = transformer.time_text_embed(timestep, pooled_projections)
    context = transformer.context_embedder(encoder_hidden_states)
    stream = layout_tokens(transformer, layout) if scale != 0 else None
    for block in transformer.transformer_blocks:
        if stream is None:
            context, hidden = block(hidden_states=hidden, encoder_hidden_states=context, temb=temb)
        else:
            context, hidden, stream = _layout_block(block, hidden, context, temb, stream, scale)
    hidden = transformer.proj_out(transformer.norm_out(hidden, temb))
    patch = transformer.config.patch_size
    rows, columns = height // patch, width // patch
    hidden = hidden.reshape(hidden.shape[0], rows, columns, patch, patch, transformer.out_channels)
    hidden = torch.einsum("nhwpqc->nchpwq", hidden)
    return hidden.reshape(hidden.shape[0], transformer.out_channels, rows * patch, columns * patch)


# --- The catalogue extension --------------------------------------------------------------------
BRANCH_FIELDS = ("repo", "subfolder", "path", "grounding_fraction")


@dataclass(frozen=True)
class LayoutBranch:
    """A catalogue model's SiamLayout branches: `repo` and `subfolder` of their safetensors (the
    whole transformer, as CreatiLayout ships them), `path` of a built-in's trained branches, or
    neither for fresh ones (zero-initialised fuse layers); `grounding_fraction`: the share of the
    steps the branches act in by default (the paper's 30%)."""

    repo: str | None = None
    subfolder: str = ""
    path: Path | None = None
    grounding_fraction: float = 0.3

    def file(self, name: str) -> str:
        """`name` inside the weights' subfolder, as a hub path."""
        return f"{self.subfolder}/{name}" if self.subfolder else name


def parse_branch(table: dict, root: Path) -> LayoutBranch:
    unknown = sorted(set(table) - set(BRANCH_FIELDS))
    if unknown:
        raise ValueError(f"unknown key {', '.join(unknown)} (it takes {', '.join(BRANCH_FIELDS)})")
    path = table.get("path")
    return LayoutBranch(
        repo=table.get("repo"),
        subfolder=table.get("subfolder", ""),
        path=root / path if path else None,
        grounding_fraction=float(table.get("grounding_fraction", 0.3)),
    )


def branch_repos(branch: LayoutBranch) -> list[tuple[str, str]]:
    return [(branch.repo, branch.file("config.json"))] if branch.repo else []


def attach_branch(pipe, branch: LayoutBranch, offline_only: bool) -> None:
    attach_layout_branches(pipe.transformer)
    if branch.path is not None:
        load_layout_weights(pipe.transformer, branch.path)
    elif branch.repo:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(
            branch.repo,
            local_files_only=offline_only,
            allow_patterns=[branch.file("*.safetensors*"), branch.file("*.json")],
        )
        load_layout_weights(pipe.transformer, Path(folder, branch.file("")))


EXTENSION = Extension("layout_branch", parse_branch, branch_repos, attach_branch)


def layout_branch(spec) -> LayoutBranch | None:
    """The model's SiamLayout branches, if its catalogue entry has them."""
    return spec.extensions.get(EXTENSION.field)


def default_grounding(spec) -> float:
    """The share of the steps the model's branches act in by default (the paper's 30%)."""
    branch = layout_branch(spec)
    return branch.grounding_fraction if branch is not None else 0.3
