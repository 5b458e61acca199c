"""ColorCtrl colour editing: the mechanism layer by layer, then what it does on the shapes world."""

import re
import threading
from dataclasses import dataclass, field, replace

import numpy as np
import pytest
import torch
from support import joint, pipeline_of, random_per_family, trained

from studio import flow, metrics
from studio.attention import AttentionController, AttentionEdit, BranchCache, CaptureBranch, RecordAttention, controlled
from studio.errors import Cancelled, InvalidRequest
from studio.methods.colour import (
    ColourEditSettings,
    colour_edit,
    colour_name,
    edited_layers,
    intensity_words,
    mask_words,
    recolour_prompt,
    source_fits,
    target_edits,
    upsample,
)
from studio.toyworld import colour_eval
from studio.toyworld.scene import make_object, make_scene, render

SOURCE = "a large red circle on the left, gray background"
TARGET = "a large blue circle on the left, gray background"


def settings_for(model, **changes):
    return replace(
        ColourEditSettings(
            model=model,
            source_prompt=SOURCE,
            target_prompt=TARGET,
            word="circle",
            steps=6,
            guidance=3.0,
            seed=1,
            width=64,
            height=64,
        ),
        **changes,
    )


@dataclass(kw_only=True)
class ValueProbe(AttentionEdit):
    values: dict = field(default_factory=dict)

    def on_qkv(self, call, q, k, v):
        self.values[call.step, call.layer] = v.clone()
        return q, k, v


@pytest.mark.parametrize("model_id", [*random_per_family(joint), *trained(joint)])
def test_same_prompt_returns_the_source_exactly(registry, model_id):
    originals = dict(pipeline_of(registry, model_id).transformer.attn_processors)
    edit = colour_edit(registry, settings_for(model_id, target_prompt=SOURCE, steps=4))
    assert np.array_equal(np.asarray(edit.source), np.asarray(edit.result))
    assert edit.mask.shape == (64, 64) and edit.mask.dtype == bool
    assert all(pipeline_of(registry, model_id).transformer.attn_processors[n] is p for n, p in originals.items())


@pytest.mark.parametrize("model_id", random_per_family(joint))
def test_target_branch_takes_maps_and_values_from_the_source(registry, model_id):
    spec = registry.catalogue.get(model_id)
    pipe = pipeline_of(registry, model_id)
    guidance = flow.Guidance(spec.guidance, spec.guidance_scale)
    source = flow.FlowModel(pipe, spec.family, [SOURCE], guidance, spec.max_sequence_length)
    target = flow.FlowModel(pipe, spec.family, [TARGET], guidance, spec.max_sequence_length)
    start = flow.initial_noise(pipe, 0, 64, 64)
    sigmas = flow.schedule(pipe, spec.family, 3, *start.shape[-2:])
    layers = edited_layers(pipe.transformer, spec)
    every_layer = None

    def run(model, edits):
        controller = AttentionController(edits)
        with controlled(pipe.transformer, controller, spec.family.token_order):
            return flow.integrate(model.velocity, start, sigmas, before_step=controller.set_step)[-1]

    cache = BranchCache()
    source_maps, source_values = RecordAttention(keys="image", layers=every_layer), ValueProbe()
    run(source, [CaptureBranch(cache=cache, layers=layers), source_maps, source_values])

    image_tokens = next(iter(source_maps.maps.values())).shape[-1]
    keep = torch.rand(image_tokens, generator=torch.Generator().manual_seed(0)) > 0.5
    conditional = slice(len(target.text) // 2, None) if target.guidance.doubles_batch else None

    def edited(intensity, scaled=True):
        # Probes on every layer: all layers run the same explicit attention in every variant.
        own_values, maps, values = ValueProbe(), RecordAttention(keys="image", layers=every_layer), ValueProbe()
        edits = target_edits(cache, keep, layers, [2], intensity, None, conditional)
        output = run(target, [own_values, *(edits if scaled else edits[:2]), maps, values])
        return output, own_values, maps, values

    output, own_values, target_maps, target_values = edited(1.0)
    for key in source_maps.maps:
        _step, layer = key
        if layer in layers:
            torch.testing.assert_close(target_maps.maps[key], source_maps.maps[key], rtol=0, atol=1e-6)
        else:  # layers ColorCtrl leaves alone keep the target's own attention
            assert not torch.allclose(target_maps.maps[key], source_maps.maps[key], atol=1e-4)
    for key, values in target_values.values.items():
        if key[1] not in layers:
            continue
        image = slice(0, image_tokens) if spec.family.token_order == "image-text" else slice(-image_tokens, None)
        kept, source_image = values[:, :, image], source_values.values[key][:, :, image]
        own = own_values.values[key][:, :, image]
        assert torch.equal(kept[:, :, ~keep], source_image[:, :, ~keep])
        assert torch.equal(kept[:, :, keep], own[:, :, keep])
        assert not torch.equal(own[:, :, ~keep], source_image[:, :, ~keep])  # the swap did something
        text = slice(image_tokens, None) if spec.family.token_order == "image-text" else slice(0, -image_tokens)
        assert torch.equal(values[:, :, text], own_values.values[key][:, :, text])  # text values untouched

    # Intensity 1 is the plain edit (another factor changes it: test_intensity_changes_the_edit).
    assert torch.equal(output, edited(1.0, scaled=False)[0])


def test_intensity_changes_the_edit(registry):
    # The scaled scores are the colour word's (as query) to the image: they reach the image through
    # the word's updated token in the following edited layers.
    weak = colour_edit(registry, settings_for("shapes-sd3", intensity=0.5))
    strong = colour_edit(registry, settings_for("shapes-sd3", intensity=2.0))
    assert not np.array_equal(np.asarray(weak.result), np.asarray(strong.result))
    assert np.array_equal(np.asarray(weak.source), np.asarray(strong.source))


def test_progress_and_cancel_restore_the_processors(registry):
    pipe = pipeline_of(registry, "tiny-flux-dev")
    originals = dict(pipe.transformer.attn_processors)
    seen = []
    colour_edit(
        registry, settings_for("tiny-flux-dev", steps=3), on_step=lambda done, total: seen.append((done, total))
    )
    assert seen == [(done, 6) for done in range(7)]  # 0: the model is ready, then each step
    cancel = threading.Event()

    def cancel_midway(done, total):
        if done == 4:
            cancel.set()

    with pytest.raises(Cancelled):
        colour_edit(registry, settings_for("tiny-flux-dev", steps=3), on_step=cancel_midway, cancel=cancel)
    assert all(pipe.transformer.attn_processors[n] is p for n, p in originals.items())


def test_bad_requests_are_clear(registry):
    with pytest.raises(InvalidRequest, match="SD3 or FLUX"):
        colour_edit(registry, settings_for("tiny-pixart-sigma"))
    with pytest.raises(InvalidRequest, match="'hexagon' is not in the source prompt"):
        colour_edit(registry, settings_for("tiny-sd3", word="hexagon"))
    with pytest.raises(InvalidRequest, match="target prompt"):
        colour_edit(registry, settings_for("tiny-sd3", target_prompt="  "))
    with pytest.raises(InvalidRequest, match="Intensity"):
        colour_edit(registry, settings_for("tiny-sd3", intensity=0))
    with pytest.raises(InvalidRequest, match="not a colour"):
        colour_name("sparkly")


def test_target_prompt_from_object_and_colour():
    assert recolour_prompt(SOURCE, "circle", "blue") == TARGET
    assert recolour_prompt("a circle on the left", "circle", "#2850dc") == "a blue circle on the left"
    assert recolour_prompt("a red, large circle", "circle", "green") == "a green, large circle"
    assert colour_name("rgb(240, 130, 180)") == "pink"
    with pytest.raises(InvalidRequest, match="not in the source prompt"):
        recolour_prompt(SOURCE, "square", "blue")


def test_editing_an_image_inverts_it_first(registry):
    source = colour_edit(registry, settings_for("shapes-flux", guidance=1.0, steps=12)).source
    edit = colour_edit(registry, settings_for("shapes-flux", guidance=1.0, steps=12), image=source)
    assert edit.settings.inversion_steps == 12
    # FireFlow inversion at guidance 1: the source branch reconstructs the uploaded image.
    assert metrics.psnr(source, edit.source) > 25
    assert colour_eval.score(edit.source, edit.result, "red", "blue", "gray").hue_error < 30


def test_a_perfect_recolour_keeps_the_whole_mask():
    """The object's mask counts an anti-aliased rim pixel by its coverage, whatever the colour: a
    rendered scene and the same scene in the new colour (same geometry) score IoU 1. (A fixed
    distance from the background counted green's rim on white but not yellow's: IoU 0.875.)"""
    for shape, old, new, background in (
        ("square", "green", "yellow", "white"),
        ("circle", "purple", "red", "gray"),
        ("triangle", "orange", "green", "white"),
    ):
        source, _ = render(make_scene([make_object(old, shape, "large", "left")], background))
        result, _ = render(make_scene([make_object(new, shape, "large", "left")], background))
        score = colour_eval.score(source, result, old, new, background)
        assert score.iou == 1.0 and score.success, (shape, old, new, score)


def test_recolouring_shapes_keeps_the_object_and_background(registry):
    """On the trained shapes world, the issue's bar over every recolour case (one seed): the object
    keeps its mask (median IoU >= 0.9), takes the asked hue (within 30 degrees) and the background
    stays (PSNR >= 30 dB); a plain prompt swap from the same noise keeps the shape less well."""
    cases = colour_eval.recolour_cases()
    edited, swapped = [], []
    for caption, word, new in cases:
        old, background = colour_eval.caption_colour(caption, word), colour_eval.caption_background(caption)
        settings = settings_for(
            "shapes-flux",
            source_prompt=caption,
            word=word,
            steps=16,
            target_prompt=recolour_prompt(caption, word, new),
            seed=0,
        )
        edit = colour_edit(registry, settings)
        score = colour_eval.score(edit.source, edit.result, old, new, background)
        if score is not None:
            edited.append(score)
            swapped.append(
                colour_eval.score(edit.source, colour_eval.plain_swap(registry, settings), old, new, background)
            )
    assert len(edited) >= 16
    ours, theirs = colour_eval.summary(edited), colour_eval.summary(swapped)
    print("ColorCtrl", ours, "prompt swap", theirs)
    assert ours["iou"] >= 0.9 and ours["hue_error"] <= 30 and ours["background_psnr"] >= 30
    assert ours["iou"] >= theirs["iou"] + 0.02 and ours["success"] > theirs["success"]


@pytest.mark.parametrize("model_id", [*random_per_family(joint), *trained(joint)[:1]])
def test_source_beside_the_target_equals_the_cached_source(registry, model_id):
    """Too big to cache (full-size models at 1024²): the source runs again in the target's batch,
    with the same result."""
    settings = settings_for(model_id, intensity=1.5, steps=5)
    cached = colour_edit(registry, settings)
    beside = colour_edit(registry, settings, cache_limit_bytes=0)
    assert cached.source_cached and not beside.source_cached
    assert np.array_equal(cached.mask, beside.mask)
    difference = np.abs(np.asarray(cached.result, float) - np.asarray(beside.result, float))
    assert difference.max() <= 2, difference.max()  # batching changes float rounding only
    plain = colour_eval.plain_swap(registry, settings)
    assert np.abs(np.asarray(plain, float) - np.asarray(beside.result, float)).mean() > 4 * difference.mean()


@pytest.mark.parametrize("cached", [True, False])
def test_the_target_uses_the_sources_values_outside_the_mask_and_its_own_inside(registry, monkeypatch, cached):
    """What the image values of the target branch are once ColorCtrl's edits have run, layer by
    layer and step by step: the source's wherever the mask does not reach, the target's own
    (different) wherever it does. End to end this barely shows on the shapes world (the map copy
    dominates), so it is checked where it happens."""
    from studio.methods import colour

    seen: dict = {}
    original = colour.target_edits

    def spied(source, keep, layers, tokens, intensity, rows, conditional):
        seen.update(source=source, keep=keep, after=BranchCache(history=True))
        return [*original(source, keep, layers, tokens, intensity, rows, conditional),
                CaptureBranch(cache=seen["after"], layers=layers, rows=rows)]  # fmt: skip

    monkeypatch.setattr(colour, "target_edits", spied)
    colour_edit(registry, settings_for("shapes-flux", steps=4), cache_limit_bytes=2**40 if cached else 0)
    keep = seen["keep"]
    assert 0 < keep.sum() < keep.numel()
    compared = 0
    for (step, layer), (_, _, target_v) in seen["after"]._entries.items():
        if not cached and step != 3:
            continue  # recomputed beside the target, the source's values are kept for the current step only
        _, _, source_v = seen["source"]._entries[(step if cached else -1, layer)]
        image = slice(target_v.shape[2] - keep.numel(), None)  # FLUX: [text, image]
        target_image, source_image = target_v[:, :, image], source_v[:, :, image]
        assert torch.equal(target_image[:, :, ~keep], source_image[:, :, ~keep])
        assert not torch.equal(target_image[:, :, keep], source_image[:, :, keep])
        compared += 1
    assert compared == (4 if cached else 1) * len(colour.edited_layers(pipeline_of(registry, "shapes-flux").transformer,
                                                    registry.catalogue.get("shapes-flux")))  # fmt: skip


def test_the_edit_mask_holds_the_object_it_recolours(registry):
    """The mask from the edited words' attention covers the object (what may change colour) and
    not the whole image. On the toy FLUX model it is broad (about 80% of the image), which is
    why the value swap and the map copy, not the mask alone, keep the rest."""
    from studio.toyworld.measure import colour_mask, largest_blob

    edit = colour_edit(registry, settings_for("shapes-flux", steps=6))
    red = largest_blob(colour_mask(edit.source, "red"))
    assert red.sum() > 300
    assert (edit.mask & red).sum() >= 0.9 * red.sum()
    assert edit.mask.mean() < 0.95


def test_prompt_words_of_a_recolour():
    assert recolour_prompt("red circle", "circle", "blue") == "blue circle"  # the colour first of all
    assert recolour_prompt("a  red circle", "circle", "blue") == "a  blue circle"  # spacing kept
    assert mask_words("a red, shiny circle", "circle") == ["red", "circle"]
    assert mask_words("red circle", "circle") == ["red", "circle"] and mask_words("a circle", "circle") == ["circle"]
    source = "a red circle, gray background."
    assert intensity_words(source, "a Blue, circle, Gray background", "circle") == ["Blue"]
    assert intensity_words(source, "a deep blue circle", "circle") == ["deep", "blue"]
    assert intensity_words(source, source, "circle") == ["circle"]  # nothing added: the object word
    assert intensity_words(source, "a Xenon-blue circle", "circle") == ["Xenon-blue"]


def test_the_edit_mask_is_the_min_max_normalised_attention_above_the_threshold():
    from studio.methods.colour import edit_mask

    record = RecordAttention(keys=[0])
    record.maps[(0, "layer")] = torch.tensor([[[0.5], [0.52], [0.6], [1.0]]])  # one row, four image tokens, one key
    assert edit_mask(record, 0.1).tolist() == [False, False, True, True]  # 0, 0.04, 0.2, 1 after normalising
    record.maps[(0, "layer")] = torch.tensor([[[0.0], [0.25], [1.0]]])
    assert edit_mask(record, 0.25).tolist() == [False, False, True]  # strictly above


def test_picker_values_become_the_nearest_colour_name():
    assert colour_name("#3050DC") == "blue" and colour_name(" Gold ") == "gold"
    assert colour_name("#f0f028") == "yellow"  # read channel by channel...
    assert colour_name("#9e9e9e") == "gray"  # ...as hexadecimal (158: nearer gray's 128 than silver's 192)
    assert colour_name("rgba(40, 170, 60, 0.5)") == "green"
    for wrong in ("1234567", "#12345", "sparkly"):
        with pytest.raises(InvalidRequest) as refused:
            colour_name(wrong)
        assert str(refused.value) == (
            f"{wrong.lower()!r} is not a colour: give a name (red, orange, yellow, green, cyan, blue, purple, "
            "pink, brown, black, white, gray, grey, gold, silver) or #rrggbb."
        )


def test_a_token_grid_is_upsampled_to_pixels_by_nearest_neighbour():
    grid = np.array([[1, 0], [0, 0], [0, 1]], dtype=bool)
    expected = np.repeat(np.repeat(grid, 2, axis=0), 2, axis=1)
    assert np.array_equal(upsample(grid, 4, 6), expected)


def test_flux_edits_its_single_stream_blocks_and_sd3_every_joint_block(registry):
    from studio.attention import joint_layers

    flux = pipeline_of(registry, "tiny-flux-dev").transformer
    single = set(joint_layers(flux, "single"))
    assert edited_layers(flux, registry.catalogue.get("tiny-flux-dev")) == single
    assert single < set(joint_layers(flux, "all"))
    sd3 = pipeline_of(registry, "tiny-sd3").transformer
    assert edited_layers(sd3, registry.catalogue.get("tiny-sd3")) == set(joint_layers(sd3, "all"))


def test_the_source_cache_is_kept_exactly_when_a_whole_run_fits(registry):
    """3 tensors (q, k, v) × edited layers × steps × rows × tokens (text + image) × width × bytes."""
    from studio.methods.colour import sampler_for, validate

    spec = registry.catalogue.get("tiny-flux-dev")
    settings = validate(settings_for(spec.id, width=96, height=192, steps=3), spec)  # no side equal to another
    pipe = pipeline_of(registry, spec.id)
    sampler = sampler_for(pipe, spec, settings, None, lambda done: None)
    config = pipe.transformer.config
    patch = 2 * pipe.vae_scale_factor  # one image token per 2x2 latent patch
    image_tokens = (192 // patch) * (96 // patch)
    text_tokens = sum(segment.length for segment in spec.family.text_segments(pipe, spec.text_length))
    needed = 3 * len(sampler.layers) * 3 * 2 * (image_tokens + text_tokens) * config.num_attention_heads
    needed *= config.attention_head_dim * 4
    assert source_fits(sampler, spec, 2, 3, needed) and not source_fits(sampler, spec, 2, 3, needed - 1)


def test_an_edits_settings_are_trimmed_and_its_refusals_exact(registry):
    from studio.methods.colour import validate

    spec = registry.catalogue.get("tiny-sd3")
    checked = validate(
        settings_for(spec.id, source_prompt=f"  {SOURCE} ", target_prompt=f" {TARGET}  ", word=" circle "), spec
    )
    assert (checked.source_prompt, checked.target_prompt, checked.word) == (SOURCE, TARGET, "circle")
    refusals = {
        "source_prompt": (" ", "Write a source prompt first."),
        "target_prompt": ("", "Write a target prompt first."),
        "word": ("  ", "Name the object to recolour (a word of the source prompt)."),
    }
    for field_name, (value, message) in refusals.items():
        with pytest.raises(InvalidRequest) as refused:
            validate(settings_for(spec.id, **{field_name: value}), spec)
        assert str(refused.value) == message
    with pytest.raises(InvalidRequest) as refused:
        validate(settings_for(spec.id, word=None), spec)
    assert str(refused.value) == "Name the object to recolour (a word of the source prompt)."
    student = registry.catalogue.get("shapes-flux-sprint")
    with pytest.raises(InvalidRequest, match=re.escape(f"; {student.name} is a distilled one-step student.") + "$"):
        validate(settings_for(student.id), student)
    pixart = registry.catalogue.get("tiny-pixart-sigma")
    with pytest.raises(InvalidRequest, match=re.escape(f"; {pixart.name} is PixArt.") + "$"):
        validate(settings_for(pixart.id), pixart)


@pytest.mark.parametrize("cached", [True, False])
def test_with_cfg_the_new_colour_is_scaled_in_the_conditional_rows_only(registry, monkeypatch, cached):
    """[negative, prompt] rows with CFG: the negative prompt has no new colour word to scale."""
    from studio.methods import colour

    seen = []
    original = colour.target_edits

    def spied(source, keep, layers, tokens, intensity, rows, conditional):
        edits = original(source, keep, layers, tokens, intensity, rows, conditional)
        seen.append((rows, conditional, edits[-1].rows, edits[-1].layers == layers))
        return edits

    monkeypatch.setattr(colour, "target_edits", spied)
    colour_edit(registry, settings_for("tiny-sd3", guidance=4.0, steps=2), cache_limit_bytes=2**40 if cached else 0)
    if cached:  # the target alone: [negative, prompt]
        assert seen == [(None, slice(1, None), slice(1, None), True)]
    else:  # beside the source: [source negative, target negative, source prompt, target prompt]
        assert seen == [([1, 3], [3], [3], True)]
    seen.clear()  # without CFG, beside the source: [source, target]; the source row is never scaled
    colour_edit(registry, settings_for("tiny-flux-dev", steps=2), cache_limit_bytes=2**40 if cached else 0)
    assert seen == ([(None, None, None, True)] if cached else [([1], [1], [1], True)])


def test_progress_counts_the_inversion_and_the_result_says_what_ran(registry, monkeypatch):
    from studio.methods import colour

    solvers, recorded_layers = [], []
    original_integrate, original_record = colour.flow.integrate, colour.RecordAttention

    def integrate(*arguments, **keywords):
        solvers.append(keywords.get("solver", arguments[3] if len(arguments) > 3 else "euler"))
        return original_integrate(*arguments, **keywords)

    monkeypatch.setattr(colour.flow, "integrate", integrate)
    monkeypatch.setattr(colour, "RecordAttention", lambda **k: recorded_layers.append(k.get("layers")) or
                        original_record(**k))  # fmt: skip
    progress = []
    generated = colour_edit(
        registry,
        settings_for("tiny-flux-dev", steps=2, width=96, height=128, inversion_steps=3),  # no image: not inverted
        on_step=lambda done, total: progress.append(total),
    )
    assert set(progress) == {4} and generated.mask.shape == (128, 96)
    assert 0 < generated.seconds < 120 and solvers == ["euler", "euler"]
    pipe = pipeline_of(registry, "tiny-flux-dev")
    assert recorded_layers == [edited_layers(pipe.transformer, registry.catalogue.get("tiny-flux-dev"))]
    seen, solvers[:] = [], []
    upload = generated.source
    edit = colour_edit(
        registry,
        settings_for("tiny-flux-dev", steps=2, width=96, height=128, inversion_steps=1),
        image=upload,
        on_step=lambda done, total: seen.append((done, total)),
    )
    assert edit.settings.inversion_steps == 1 and seen == [(done, 5) for done in range(6)]
    assert solvers == ["fireflow", "fireflow", "fireflow"]  # the inversion, then both branches


def test_the_source_branch_is_the_models_own_image(registry):
    from studio.generation import GenerationSettings, generate

    settings = settings_for("tiny-flux-dev", steps=2, guidance=3.5)
    source = np.asarray(colour_edit(registry, settings).source, float)
    plain = GenerationSettings(model="tiny-flux-dev", prompt=SOURCE, steps=2, guidance=3.5, seed=1, width=64, height=64)
    own = np.asarray(next(iter(generate(registry, plain))).image, float)
    assert np.abs(source - own).mean() < 1


def test_recolouring_one_of_two_objects_keeps_the_other(registry):
    """A red circle and a blue square (a rendered scene, inverted): the circle turns green, the
    square and the background stay as they were."""
    import colorsys

    scene = make_scene([make_object("red", "circle", "large", "left"), make_object("blue", "square", "large", "right")],
                       "gray")  # fmt: skip
    picture, (circle, square) = render(scene)
    settings = settings_for(
        "shapes-flux",
        source_prompt=scene.caption,
        target_prompt=recolour_prompt(scene.caption, "circle", "green"),
        guidance=1.0,
        steps=12,
    )
    edit = colour_edit(registry, settings, image=picture)
    background = ~(metrics.dilate(circle, 3) | square)  # beyond the recoloured object's rim
    assert metrics.psnr(edit.source, edit.result, square) >= 28  # the other object: kept
    assert metrics.psnr(edit.source, edit.result, background) >= 28
    red, green, blue = np.asarray(edit.result, float)[circle].mean(axis=0) / 255
    hue = colorsys.rgb_to_hsv(red, green, blue)[0] * 360
    assert abs(hue - 120) <= 40, hue  # green, from red
    assert not edit.mask[square].mean() > 0.5  # the mask is the circle's, not the square's
