"""CreatiLayout SiamLayout: the layout branches on an SD3 transformer, their tokens, their weights
and the sampling schedule: fresh branches on the shapes-world SD3, and the built-in whose
branches were trained on the shapes world."""

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from support import pipeline_of

from studio import flow
from studio.errors import InvalidRequest
from studio.families import siamlayout
from studio.families.siamlayout import (
    MAX_BOXES,
    attach_layout_branches,
    box_fourier_embedding,
    branch_state,
    load_layout_weights,
    siamlayout_forward,
)
from studio.families.siamlayout import (
    layout_tokens as project_layout,
)
from studio.methods.layout import LayoutSettings, Region, layout_tokens, regional_generate

MODEL = "shapes-sd3-siamlayout"
REGIONS = (Region("a large red circle", (0.0, 0.2, 0.5, 0.8)), Region("a large blue square", (0.5, 0.2, 1.0, 0.8)))


@pytest.fixture(scope="module")
def pipe(registry):
    """The shapes-world SD3 with fresh branches on a copy of its transformer (components shared)."""
    base = pipeline_of(registry, "shapes-sd3")
    transformer = copy.deepcopy(base.transformer)
    attach_layout_branches(transformer)
    return type(base).from_pipe(base, transformer=transformer)


def transformer_inputs(transformer, rows=2):
    generator = torch.Generator().manual_seed(0)
    config = transformer.config
    return dict(
        hidden_states=torch.randn(rows, 16, 8, 8, generator=generator),
        timestep=torch.full((rows,), 600.0),
        encoder_hidden_states=torch.randn(rows, 20, config.joint_attention_dim, generator=generator),
        pooled_projections=torch.randn(rows, config.pooled_projection_dim, generator=generator),
    )


def base_output(transformer, inputs):
    with torch.no_grad():
        return transformer(**inputs, return_dict=False)[0]


def layout_output(transformer, inputs, tokens, scale=1.0):
    with torch.no_grad():
        return siamlayout_forward(
            transformer,
            inputs["hidden_states"],
            inputs["timestep"],
            inputs["encoder_hidden_states"],
            inputs["pooled_projections"],
            tokens,
            scale,
        )


@pytest.fixture
def trained_fuse(pipe):
    """The branches' fuse layers given weights, as training would; restored to zero afterwards."""
    blocks = pipe.transformer.transformer_blocks
    generator = torch.Generator().manual_seed(1)
    for block in blocks:
        block.bbox_forward.weight.data = torch.randn(block.bbox_forward.weight.shape, generator=generator) * 0.2
    yield pipe
    for block in blocks:
        torch.nn.init.zeros_(block.bbox_forward.weight)


def test_fourier_embedding_matches_its_formula():
    boxes = torch.tensor([[[0.1, 0.2, 0.6, 0.9]]])
    embedding = box_fourier_embedding(boxes, frequencies=8)
    assert embedding.shape == (1, 1, 64)
    frequencies = 100 ** (torch.arange(8) / 8)
    # Laid out frequency-major: for frequency k, sin of (x1, y1, x2, y2) then cos of them.
    k = 3
    assert torch.allclose(embedding[0, 0, k * 8 : k * 8 + 4], torch.sin(frequencies[k] * boxes[0, 0]))
    assert torch.allclose(embedding[0, 0, k * 8 + 4 : k * 8 + 8], torch.cos(frequencies[k] * boxes[0, 0]))


def test_fresh_branches_leave_the_base_output_unchanged(pipe):
    transformer = pipe.transformer
    inputs = transformer_inputs(transformer)
    tokens = layout_tokens(pipe, REGIONS, unconditional_half=True)
    assert torch.equal(layout_output(transformer, inputs, tokens), base_output(transformer, inputs))


def test_each_block_has_its_branch_and_the_fuse_starts_at_zero(pipe):
    blocks = pipe.transformer.transformer_blocks
    for index, block in enumerate(blocks):
        assert not block.bbox_forward.weight.any() and not block.bbox_forward.bias.any()
        # The last block only reads the layout stream (no output projection, no feed-forward).
        assert block.bbox_fuser_block.context_pre_only == (index == len(blocks) - 1)
        assert hasattr(block, "ff_bbox") == (index != len(blocks) - 1)


def test_layout_tokens_follow_the_boxes_and_the_unconditional_half_is_null(pipe):
    tokens = layout_tokens(pipe, REGIONS, unconditional_half=True)
    assert tokens.boxes.shape == (2, MAX_BOXES, 4) and tokens.phrases.shape[:2] == (2, MAX_BOXES)
    assert tokens.masks.tolist() == [[0] * MAX_BOXES, [1, 1] + [0] * (MAX_BOXES - 2)]
    projected = project_layout(pipe.transformer, tokens)
    with torch.no_grad():
        moved = project_layout(pipe.transformer, replace(tokens, boxes=tokens.boxes.roll(1, dims=-1)))
    # Filled slots change with their boxes; empty slots and the whole unconditional row do not.
    assert not torch.allclose(projected[1, :2], moved[1, :2])
    assert torch.equal(projected[1, 2:], moved[1, 2:]) and torch.equal(projected[0], moved[0])
    # The unconditional row is the null token in every slot, whatever the boxes and phrases.
    assert torch.allclose(projected[0], projected[0, :1].expand_as(projected[0]))
    assert torch.allclose(projected[0], projected[1, 2:3].expand_as(projected[0]))


def test_layout_tokens_take_captions_of_any_length(pipe):
    """Captions are padded to one length and cut at the text encoders' limit."""
    wordy = Region(" ".join(["a very large bright red circle"] * 30), (0.0, 0.0, 0.5, 0.5))
    tokens = layout_tokens(pipe, [wordy, Region("a square", (0.5, 0.5, 1.0, 1.0))], unconditional_half=False)
    assert tokens.phrases.shape[:2] == (1, MAX_BOXES) and tokens.masks.tolist() == [[1, 1] + [0] * (MAX_BOXES - 2)]
    assert not torch.equal(tokens.phrases[0, 0], tokens.phrases[0, 1])


def test_trained_branches_move_the_output_with_the_boxes(trained_fuse):
    transformer = trained_fuse.transformer
    inputs = transformer_inputs(transformer, rows=1)
    tokens = layout_tokens(trained_fuse, REGIONS, unconditional_half=False)
    base = base_output(transformer, inputs)
    with_layout = layout_output(transformer, inputs, tokens)
    swapped = layout_output(transformer, inputs, replace(tokens, boxes=tokens.boxes[:, [1, 0, *range(2, MAX_BOXES)]]))
    assert (with_layout - base).abs().mean() > 1e-3
    assert (with_layout - swapped).abs().mean() > 1e-4
    assert torch.equal(layout_output(transformer, inputs, tokens, scale=0.0), base)


def test_branches_act_only_in_the_grounding_steps(registry, monkeypatch):
    import studio.methods.layout as layout_module

    scales = []
    original = layout_module.siamlayout_forward

    def spy(transformer, hidden, timestep, context, pooled, tokens, scale):
        scales.append(scale)
        assert tokens.masks[0].sum() == 0 and tokens.masks[1].sum() == 2  # [unconditional, conditional]
        return original(transformer, hidden, timestep, context, pooled, tokens, scale)

    monkeypatch.setattr(layout_module, "siamlayout_forward", spy)
    settings = LayoutSettings(
        model=MODEL,
        caption="a large red circle and a large blue square, gray background",
        regions=REGIONS,
        steps=10,
        guidance=3.0,
        width=64,
        height=64,
        method="siamlayout",
    )
    grounded = np.asarray(regional_generate(registry, settings).image, float)
    assert scales == [1.0] * 3 + [0.0] * 7  # the paper's first 30% of the steps
    ungrounded = np.asarray(regional_generate(registry, replace(settings, grounding_fraction=0.0)).image, float)
    assert np.abs(grounded - ungrounded).mean() > 0.5


def test_without_grounding_steps_it_is_the_base_model(registry):
    """Branches off for every step: exactly the shapes-world SD3's own image from that noise."""
    caption = "a large red circle on the left, gray background"
    settings = LayoutSettings(
        model=MODEL,
        caption=caption,
        regions=REGIONS[:1],
        steps=6,
        guidance=3.0,
        width=64,
        height=64,
        method="siamlayout",
        grounding_fraction=0.0,
    )
    siamlayout = np.asarray(regional_generate(registry, settings).image, float)
    base = pipeline_of(registry, "shapes-sd3")
    spec = registry.catalogue.get("shapes-sd3")
    model = flow.FlowModel(base, spec.family, [caption], flow.Guidance("cfg", 3.0), spec.max_sequence_length)
    start = flow.initial_noise(base, 0, 64, 64)
    plain = flow.integrate(model.velocity, start, flow.schedule(base, spec.family, 6, *start.shape[-2:]))[-1]
    assert np.array_equal(siamlayout, np.asarray(flow.decode(base, plain)[0], float))


def test_checkpoints_load_strictly(pipe, tmp_path):
    source = pipe.transformer
    state = {key: value.clone() + 0.01 for key, value in source.state_dict().items()}
    save_file(state, tmp_path / "diffusion_pytorch_model.safetensors")
    copy = type(source).from_config(source.config)
    attach_layout_branches(copy)
    load_layout_weights(copy, tmp_path)
    assert torch.equal(
        copy.transformer_blocks[0].bbox_forward.weight, state["transformer_blocks.0.bbox_forward.weight"]
    )
    assert torch.equal(copy.position_net.null_positive_feature, state["position_net.null_positive_feature"])
    # The branches alone (trained on a frozen base) load over the base's own weights.
    fresh = type(source).from_config(source.config)
    attach_layout_branches(fresh)
    base_weight = fresh.pos_embed.proj.weight.clone()
    save_file(
        {key: value for key, value in state.items() if key in branch_state(fresh)},
        tmp_path / "diffusion_pytorch_model.safetensors",
    )
    load_layout_weights(fresh, tmp_path)
    assert torch.equal(fresh.position_net.null_positive_feature, state["position_net.null_positive_feature"])
    assert torch.equal(fresh.pos_embed.proj.weight, base_weight)
    # Anything else (a key missing) is refused.
    del state["position_net.null_position_feature"]
    save_file(state, tmp_path / "diffusion_pytorch_model.safetensors")
    with pytest.raises(RuntimeError, match="null_position_feature"):
        load_layout_weights(copy, tmp_path)


def test_siamlayout_needs_a_model_with_branches(registry):
    settings = LayoutSettings(
        model="shapes-sd3",
        caption="a red circle",
        regions=REGIONS[:1],
        steps=2,
        width=64,
        height=64,
        method="siamlayout",
    )
    with pytest.raises(InvalidRequest, match="SiamLayout branches"):
        regional_generate(registry, settings)
    with pytest.raises(InvalidRequest, match="Unknown layout method"):
        regional_generate(registry, replace(settings, method="gligen"))


def test_trained_branches_put_each_object_in_its_box(registry):
    """The shapes-world branches read positions from the boxes alone (the caption names none)."""
    from studio.toyworld.layout_eval import in_box, layout_settings

    spec = registry.catalogue.get(MODEL)
    settings, checks = layout_settings(
        MODEL, seed=0, method="siamlayout", grounding_fraction=siamlayout.default_grounding(spec)
    )[0]
    placed = regional_generate(registry, settings).image
    assert all(in_box(placed, colour, box) for colour, box in checks)
    alone = regional_generate(registry, replace(settings, grounding_fraction=0.0)).image
    assert not all(in_box(alone, colour, box) for colour, box in checks)


def test_the_branch_trainer_starts_from_saved_branches_when_asked(tmp_path):
    """`train_layout --branches-from DIR`: the branches start as the saved ones (two small steps
    stay near them) instead of fresh (whose fuse starts at zero); only the branches are saved."""
    from safetensors.torch import load_file

    from studio.toyworld import train, train_layout

    saved = load_file(train.MODELS_DIR / "shapes-sd3-siamlayout" / "diffusion_pytorch_model.safetensors")
    options = ["--scenes", "16", "--steps", "2", "--batch-size", "2", "--learning-rate", "1e-5"]
    for start, output in (
        (["--branches-from", str(train.MODELS_DIR / "shapes-sd3-siamlayout")], "resumed"),
        ([], "fresh"),
    ):
        train_layout.main([*options, *start, "--output", str(tmp_path / output)])
    resumed, fresh = (
        load_file(tmp_path / name / "diffusion_pytorch_model.safetensors") for name in ("resumed", "fresh")
    )
    assert set(resumed) == set(saved) == set(fresh)
    distance = {name: max((branches[key].float() - saved[key].float()).abs().max().item() for key in saved)
                for name, branches in (("resumed", resumed), ("fresh", fresh))}  # fmt: skip
    assert distance["resumed"] < 0.01 < distance["fresh"]
