"""Training-free regional attention: the mask, what it does to attention, and on the shapes world."""

import threading
from dataclasses import replace

import numpy as np
import pytest
import torch
from support import cross, joint, pipeline_of, random_per_family

from studio import flow
from studio.attention import AttentionController, RecordAttention, controllable_layers, controlled, joint_layers
from studio.errors import Cancelled, InvalidRequest
from studio.methods.layout import (
    MAX_REGIONS,
    LayoutSettings,
    Region,
    plan,
    region_token_masks,
    regional_attention_mask,
    regional_generate,
    validate_regions,
)


def test_region_token_masks_take_tokens_whose_centre_is_inside():
    masks = region_token_masks([Region("a", (0.0, 0.0, 0.5, 1.0)), Region("b", (0.25, 0.0, 1.0, 0.5))], 2, 2)
    assert masks.tolist() == [[True, False, True, False], [True, True, False, False]]
    # Centres at 0.125, 0.375, 0.625, 0.875: a box edge through a centre takes it at the start, not at the end.
    edges = region_token_masks([Region("a", (0.375, 0.375, 0.625, 0.625))], 4, 4).view(4, 4)
    assert edges.nonzero().tolist() == [[1, 1]]


@pytest.mark.parametrize("token_order", ["text-image", "image-text"])
def test_mask_is_exact_with_overlap_and_background(token_order):
    # Two overlapping regions on a 2x2 token grid; one token per caption; p3 is background.
    masks = region_token_masks([Region("a", (0.0, 0.0, 0.5, 1.0)), Region("b", (0.25, 0.0, 1.0, 0.5))], 2, 2)
    allowed = regional_attention_mask(masks, 1, token_order).int()
    #            g  a  b  p0 p1 p2 p3
    expected = [
        [1, 0, 0, 1, 1, 1, 1],  # global caption: itself and the whole image
        [0, 1, 0, 1, 0, 1, 0],  # region a's caption: itself and a's tokens (p0, p2)
        [0, 0, 1, 1, 1, 0, 0],  # region b's caption: itself and b's tokens (p0, p1)
        [0, 1, 1, 1, 1, 1, 0],  # p0 lies in a and b: both captions, both regions
        [0, 0, 1, 1, 1, 0, 0],  # p1 in b only
        [0, 1, 0, 1, 0, 1, 0],  # p2 in a only
        [1, 1, 1, 1, 1, 1, 1],
    ]  # p3, background: everything
    expected = torch.tensor(expected)
    if token_order == "image-text":
        order = [3, 4, 5, 6, 0, 1, 2]
        expected = expected[order][:, order]
    assert torch.equal(allowed, expected)


def test_longer_captions_share_their_region():
    masks = region_token_masks([Region("a", (0.0, 0.0, 0.5, 1.0))], 1, 2)
    allowed = regional_attention_mask(masks, 2, "text-image")
    assert allowed.shape == (6, 6)
    assert allowed[2:4, 2:4].all() and not allowed[2:4, 0:2].any()  # region text sees itself only...
    assert allowed[2:4, 4].all() and not allowed[2:4, 5].any()  # ...and the image token in its box
    assert allowed[4, 2:4].all() and not allowed[4, 0:2].any()  # the token in the box: not the global caption


def test_box_validation_messages():
    assert validate_regions([Region(" a ", (1.2, 0.8, -0.1, 0.2))]) == (Region("a", (0.0, 0.2, 1.0, 0.8)),)
    with pytest.raises(InvalidRequest, match="Box 1 has no caption"):
        validate_regions([Region(" ", (0, 0, 1, 1))])
    with pytest.raises(InvalidRequest, match="no area"):
        validate_regions([Region("a", (0.3, 0.1, 0.3, 0.9))])
    with pytest.raises(InvalidRequest, match="no area"):
        validate_regions([Region("a", (1.1, 0.1, 1.5, 0.9))])  # wholly off the canvas
    with pytest.raises(InvalidRequest, match="At most 10 boxes"):
        validate_regions([Region("a", (0, 0, 1, 1))] * 11)
    assert len(validate_regions([Region("a", (0, 0, 1, 1))] * MAX_REGIONS)) == MAX_REGIONS == 10
    with pytest.raises(InvalidRequest, match="^Box 2 \\('b'\\) has no area inside the canvas.$"):
        validate_regions([Region("a", (0, 0, 1, 1)), Region("b", (0.1, 0.5, 0.4, 0.5))])  # no height
    for broken in (("x", 0, 1, 1), (0, 0, float("nan"), 1), (0, 0, None, 1)):
        with pytest.raises(InvalidRequest) as refused:
            validate_regions([Region("a", broken)])
        assert str(refused.value) == "Box 1 needs four numbers x1, y1, x2, y2 between 0 and 1."
    with pytest.raises(InvalidRequest, match="^Box 1's caption may be at most"):
        validate_regions([Region("a" * 5000, (0, 0, 1, 1))])


def layout(model, **changes):
    settings = LayoutSettings(
        model=model,
        caption="a large red circle on the left and a large blue square on the right, gray background",
        regions=(
            Region("a large red circle", (0.0, 0.2, 0.5, 0.8)),
            Region("a large blue square", (0.5, 0.2, 1.0, 0.8)),
        ),
        steps=6,
        guidance=3.0,
        width=64,
        height=64,
        inject_steps=3,
    )
    return replace(settings, **changes)


@pytest.mark.parametrize("model_id", random_per_family(joint))
def test_outside_tokens_ignore_a_region_caption_while_masked(registry, model_id):
    spec = registry.catalogue.get(model_id)
    pipe = pipeline_of(registry, model_id)
    settings = layout(model_id, base_ratio=0.0)
    regional = plan(pipe, spec, settings)
    length = regional.caption_length
    region_a_text = list(range(length, 2 * length))
    record = RecordAttention(keys=region_a_text)
    controller = AttentionController([*regional.edits, record])
    with controlled(pipe.transformer, controller, spec.family.token_order):
        flow.integrate(regional.model.velocity, regional.start, regional.sigmas, before_step=controller.set_step)
    rows, columns = regional.start.shape[-2] // 2, regional.start.shape[-1] // 2
    masks = region_token_masks(settings.regions, rows, columns)
    outside_a = ~masks[0] & masks[1]  # tokens inside b only
    conditional = -1
    for (step, layer), attention in record.maps.items():
        to_a = attention[conditional][outside_a].sum()
        if step < settings.inject_steps:
            assert to_a == 0, (step, layer)
        else:
            assert to_a > 0, (step, layer)


@pytest.mark.parametrize("model_id", random_per_family(joint))
def test_one_full_box_with_the_global_caption_is_the_plain_path(registry, model_id):
    spec = registry.catalogue.get(model_id)
    caption = "a large red circle on the left, gray background"
    settings = layout(model_id, caption=caption, regions=(Region(caption, (0, 0, 1, 1)),), base_ratio=0.0)
    regional = np.asarray(regional_generate(registry, settings).image, float)
    pipe = pipeline_of(registry, model_id)
    model = flow.FlowModel(pipe, spec.family, [caption], flow.Guidance(spec.guidance, 3.0), spec.max_sequence_length)
    start = flow.initial_noise(pipe, 0, 64, 64)
    plain = flow.integrate(model.velocity, start, flow.schedule(pipe, spec.family, 6, *start.shape[-2:]))[-1]
    plain = np.asarray(flow.decode(pipe, plain)[0], float)
    # Equal but for float rounding (the region's copy of the caption is summed in another order),
    # which is far below what real regions change: a level or two, a few levels at a rare pixel
    # of a random-weight model.
    rounding = np.abs(regional - plain)
    assert np.percentile(rounding, 99.5) <= 2 and rounding.max() <= 8
    two_boxes = np.asarray(regional_generate(registry, layout(model_id)).image, float)
    # Random-weight models barely listen to their text, so the regions' change is a small multiple.
    assert np.abs(two_boxes - plain).mean() > 2 * rounding.mean()


def test_bad_layout_requests(registry):
    with pytest.raises(InvalidRequest, match="Draw at least one box"):
        regional_generate(registry, layout("tiny-sd3", regions=()))
    with pytest.raises(InvalidRequest, match="global caption"):
        regional_generate(registry, layout("tiny-sd3", caption=" "))


def test_objects_land_in_their_boxes_on_the_shapes_world(registry):
    """Two coloured shapes, two boxes: regional attention puts each colour in its box; the
    global caption alone (the FLUX model's weak two-object binding) mostly does not."""
    from studio.toyworld.layout_eval import placement_rates

    rates = placement_rates(registry, "shapes-flux", seeds=2)
    print(rates)
    assert rates["regional"] >= 0.75
    assert rates["regional"] >= rates["global caption only"] + 0.25


def test_cross_attention_mask_is_exact():
    from studio.methods.layout import cross_attention_mask

    masks = region_token_masks([Region("a", (0.0, 0.0, 0.5, 1.0)), Region("b", (0.25, 0.0, 1.0, 0.5))], 2, 2)
    allowed = cross_attention_mask(masks, 2).int()
    #                 g  g  a  a  b  b   (two tokens per caption)
    assert allowed.tolist() == [
        [1, 1, 1, 1, 1, 1],  # p0: in a and b
        [1, 1, 0, 0, 1, 1],  # p1: in b
        [1, 1, 1, 1, 0, 0],  # p2: in a
        [1, 1, 0, 0, 0, 0],
    ]  # p3: background, the global caption only


@pytest.mark.parametrize("model_id", random_per_family(cross))
def test_cross_attention_families_get_regional_masks(registry, model_id, monkeypatch):
    import studio.methods.layout as layout_module

    recorders = []
    original = layout_module.AttentionController

    masks_made = []

    def recording_controller(edits):
        mask = edits[0]
        masks_made.append(mask)
        recorders.append(RecordAttention(keys=list(range(spec.max_sequence_length, 2 * spec.max_sequence_length))))
        return original([mask, recorders[-1]])

    spec = registry.catalogue.get(model_id)
    monkeypatch.setattr(layout_module, "AttentionController", recording_controller)
    settings = layout(model_id, steps=4, guidance=4.5, inject_steps=2, base_ratio=0.0)
    regional = np.asarray(regional_generate(registry, settings).image, float)
    record = recorders[-1]
    # [negative, prompt] with CFG: the mask acts on the prompt's row, in every chosen block.
    every = controllable_layers(pipeline_of(registry, model_id).transformer, "cross-attention")
    assert masks_made[-1].rows == slice(1, None) and masks_made[-1].layers == set(every)
    regional_generate(registry, replace(settings, block_stride=2, base_ratio=0.4, guidance=1.0))
    assert masks_made[-1].layers == set(every[::2]) and len(every) > len(masks_made[-1].layers)
    assert masks_made[-1].base_ratio == 0.4 and masks_made[-1].rows is None  # no CFG: one row
    scale = (
        pipeline_of(registry, model_id).vae_scale_factor * pipeline_of(registry, model_id).transformer.config.patch_size
    )
    masks = region_token_masks(settings.regions, 64 // scale, 64 // scale)
    outside_a = ~masks[0]
    steps = sorted({step for step, _ in record.maps})
    assert steps == [0, 1, 2, 3]
    for (step, layer), attention in record.maps.items():
        to_a = attention[-1][outside_a].sum()  # the conditional row
        assert (to_a == 0) if step < 2 else (to_a > 0), (step, layer)
    monkeypatch.setattr(layout_module, "AttentionController", original)
    plain = np.asarray(regional_generate(registry, replace(settings, inject_steps=0)).image, float)
    assert np.abs(regional - plain).mean() > 0.1


def test_a_caption_typed_after_drawing_names_the_last_uncaptioned_box():
    from tabs.layout import caption_last_uncaptioned

    rows = [["a red circle", 0, 0, 0.5, 0.5], ["box 2", 0.5, 0.5, 1, 1]]
    table, editor = caption_last_uncaptioned(rows, " a blue square ", 64, 64)
    assert [row[0] for row in table] == ["a red circle", "a blue square"] and "a blue square" in editor
    # Nothing waiting for a caption (or nothing typed): the caption is for the next box.
    assert caption_last_uncaptioned(table, "a green triangle", 64, 64) == ({"__type__": "update"},) * 2
    assert caption_last_uncaptioned(rows, "  ", 64, 64) == ({"__type__": "update"},) * 2


def test_a_regional_plan_masks_the_conditional_half_of_every_chosen_block(registry):
    """Non-square, with CFG: the mask is built on the latent's own token grid (rows from its height,
    columns from its width), acts on every `block_stride`-th block, and on the conditional rows only."""
    from studio.methods.layout import validate

    spec = registry.catalogue.get("tiny-sd3")
    settings = validate(
        layout("tiny-sd3", width=96, height=192, block_stride=2, base_ratio=0.3, guidance=4.0, inject_steps=2), spec
    )
    pipe = pipeline_of(registry, "tiny-sd3")
    regional = plan(pipe, spec, settings)
    (mask,) = regional.edits
    latent_height, latent_width = regional.start.shape[-2:]
    assert latent_height == 2 * latent_width  # twice as tall as wide, as asked
    grid = region_token_masks(settings.regions, latent_height // 2, latent_width // 2)
    expected = regional_attention_mask(grid, regional.caption_length, spec.family.token_order)
    tokens = latent_height * latent_width // 4
    assert torch.equal(mask.allowed, expected) and mask.allowed.shape[0] == 3 * regional.caption_length + tokens
    every = joint_layers(pipe.transformer)
    assert mask.layers == set(every[::2]) and len(every) > len(mask.layers)
    assert mask.rows == slice(1, None) and mask.base_ratio == 0.3 and mask.steps == range(2)
    unguided = registry.catalogue.get("tiny-flux-dev")
    flux_plan = plan(pipeline_of(registry, unguided.id), unguided, validate(layout(unguided.id), unguided))
    assert flux_plan.edits[0].rows is None  # guidance-distilled: one row, all of it conditional


@pytest.mark.parametrize("method,model_id", [("regional", "tiny-sd3"), ("regional", "tiny-pixart-sigma"),
                                             ("siamlayout", "shapes-sd3-siamlayout")])  # fmt: skip
def test_a_layout_reports_each_step_stops_when_cancelled_and_returns_what_it_ran(registry, method, model_id):
    regions = (
        Region(" a large red circle ", (0.5, 0.2, -0.2, 0.8)),
        Region("a large blue square", (0.5, 0.2, 1.0, 0.8)),
    )
    settings = layout(model_id, method=method, caption="  two shapes, gray background  ", steps=3, regions=regions)
    seen = []
    result = regional_generate(registry, settings, on_step=lambda done, total: seen.append((done, total)))
    assert seen == [(done, 3) for done in range(4)]
    assert result.settings.caption == "two shapes, gray background" and 0 < result.seconds < 120
    assert result.settings.regions[0] == Region("a large red circle", (0.0, 0.2, 0.5, 0.8))
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        regional_generate(registry, settings, cancel=cancel)


def test_layout_requests_are_refused_in_one_sentence(registry):
    from studio.methods.layout import validate

    sd3 = registry.catalogue.get("tiny-sd3")
    with pytest.raises(InvalidRequest) as refused:
        validate(layout("tiny-sd3", method="gligen"), sd3)
    assert str(refused.value) == "Unknown layout method 'gligen'; choose one of regional, siamlayout."
    with pytest.raises(InvalidRequest, match="has none. Pick a SiamLayout model, or the regional-attention method.$"):
        validate(layout("tiny-sd3", method="siamlayout"), sd3)
    with pytest.raises(InvalidRequest, match="^Write a global caption first.$"):
        validate(layout("tiny-sd3", caption=" "), sd3)
    with pytest.raises(InvalidRequest, match="^Draw at least one box.$"):
        validate(layout("tiny-sd3", regions=()), sd3)
    wan = registry.catalogue.get("tiny-wan")
    with pytest.raises(InvalidRequest, match="^Regional attention has no way into Wan models.$"):
        validate(layout("tiny-wan"), wan)


@pytest.mark.parametrize("model_id", random_per_family(cross))
def test_one_full_box_on_a_cross_attention_model_is_its_plain_pipeline(registry, model_id):
    """Every caption's encoding joined along the tokens (the negative prompt's as well, with CFG):
    with one whole-canvas box captioned as the image, each token and its copy share the attention
    they get, so the image is the pipeline's own."""
    from studio.generation import GenerationSettings, generate

    caption = "a large red circle on the left, gray background"
    settings = layout(model_id, caption=caption, regions=(Region(caption, (0, 0, 1, 1)),), guidance=4.5, steps=4)
    regional = np.asarray(regional_generate(registry, settings).image, float)
    plain = GenerationSettings(model=model_id, prompt=caption, steps=4, guidance=4.5, seed=0, width=64, height=64)
    own = np.asarray(next(iter(generate(registry, plain))).image, float)
    assert np.abs(regional - own).mean() < 1
    # A text length other than the text width (16 tokens of 32 features): the mask is laid out by
    # tokens; the caption fits and padding is masked, so the image is the same.
    from studio.catalogue import Catalogue
    from studio.registry import Registry

    spec = registry.catalogue.get(model_id)
    shorter = Registry(Catalogue([replace(spec, max_sequence_length=16)]), offline_only=True)
    assert np.abs(np.asarray(regional_generate(shorter, settings).image, float) - regional).mean() < 1
