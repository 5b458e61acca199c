"""ControlNet pipelines on the built-in models and the live sketch loop."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from support import controllable, pipeline_of, random_per_family

from studio import conditions
from studio.errors import InvalidRequest, UnknownModel
from studio.generation import GenerationSettings, generate
from studio.methods.control import (
    ControlSettings,
    LiveRenderer,
    LiveRequest,
    LiveTarget,
    control_generate,
    control_image_for,
    live_targets,
    on_white,
    sketch_control,
    validate,
)

PROMPT = "a large red circle on the left, gray background"
# (model, ControlNet) for every family with ControlNet pipelines in diffusers.
CONTROLLED = [("tiny-flux-schnell", "scribble"), ("tiny-sd3-turbo", "scribble"), ("tiny-sana", "scribble")]


def strokes(shape: str) -> Image.Image:
    canvas = Image.new("RGB", (64, 64), "white")
    draw = ImageDraw.Draw(canvas)
    if shape == "line":
        draw.line([(8, 8), (56, 40)], fill="black", width=3)
    else:
        draw.ellipse([(20, 20), (44, 44)], outline="black", width=3)
    return canvas


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=float)


def settings_for(registry, model: str, control: str, **changes) -> ControlSettings:
    spec = registry.catalogue.get(model)
    base = ControlSettings(
        model=model,
        prompt=PROMPT,
        control=control,
        steps=spec.steps,
        guidance=spec.guidance_scale,
        width=64,
        height=64,
        seed=3,
    )
    return replace(base, **changes)


@pytest.mark.parametrize("model,control", CONTROLLED)
def test_the_control_image_decides_the_output(registry, model, control):
    line = sketch_control("scribble", strokes("line"))
    settings = settings_for(registry, model, control)
    first = control_generate(registry, settings, line)
    again = control_generate(registry, settings, line)
    other = control_generate(registry, settings, sketch_control("scribble", strokes("circle")))
    assert first.image.size == (64, 64)
    assert np.array_equal(pixels(first.image), pixels(again.image))
    assert np.abs(pixels(first.image) - pixels(other.image)).mean() > 0.2
    assert np.array_equal(pixels(first.control_image), pixels(line))


@pytest.mark.parametrize("model,control", CONTROLLED)
def test_conditioning_scale_zero_makes_the_control_image_irrelevant(registry, model, control):
    settings = settings_for(registry, model, control, conditioning_scale=0.0)
    line = control_generate(registry, settings, sketch_control("scribble", strokes("line"))).image
    circle = control_generate(registry, settings, sketch_control("scribble", strokes("circle"))).image
    assert np.array_equal(pixels(line), pixels(circle))


# FLUX's ControlNet pipeline samples the control image's latents from the seed's generator before
# it draws the noise, so at scale 0 it starts from other noise than plain FLUX: not compared.
@pytest.mark.parametrize("model,control", [case for case in CONTROLLED if not case[0].startswith("tiny-flux")])
def test_conditioning_scale_zero_is_the_plain_model_where_the_noise_is_drawn_first(registry, model, control):
    settings = settings_for(registry, model, control, conditioning_scale=0.0)
    line = control_generate(registry, settings, sketch_control("scribble", strokes("line"))).image
    plain = next(generate(registry, GenerationSettings.sampled_as(settings, PROMPT))).image
    assert np.abs(pixels(line) - pixels(plain)).max() <= 1.0


def test_controlnet_variants_share_the_base_models_components(registry):
    spec = registry.catalogue.get("tiny-flux-schnell")
    base = pipeline_of(registry, spec.id)
    with registry.use(spec.id, "controlnet:scribble") as pipe:
        assert type(pipe).__name__ == "FluxControlNetPipeline"
        for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
            assert getattr(pipe, name) is getattr(base, name)
        assert pipe.controlnet is pipeline_of(registry, spec.id, "controlnet:scribble").controlnet
        assert pipe.controlnet is not pipeline_of(registry, spec.id, "controlnet:canny").controlnet
    assert "controlnet:scribble" in spec.tasks


def test_control_end_changes_the_output_where_the_pipeline_has_it(registry):
    line = sketch_control("scribble", strokes("line"))
    settings = settings_for(registry, "tiny-flux-dev", "scribble", steps=4)
    whole = control_generate(registry, settings, line).image
    first_half = control_generate(registry, replace(settings, control_end=0.5), line).image
    assert np.abs(pixels(whole) - pixels(first_half)).mean() > 0.1
    for late_or_early in ({"control_end": 0.5}, {"control_start": 0.3}):
        with pytest.raises(InvalidRequest) as refused:
            control_generate(registry, settings_for(registry, "tiny-sana", "scribble", **late_or_early), line)
        assert str(refused.value) == (
            "SanaControlNetPipeline applies control to every step; leave start at 0 and end at 1."
        )
    with pytest.raises(InvalidRequest, match="start before it ends"):
        control_generate(registry, replace(settings, control_start=0.6, control_end=0.4), line)


def test_pixart_has_no_controlnet_and_says_so(registry):
    assert live_targets(registry, "pixart") == []
    with pytest.raises(UnknownModel, match="has no ControlNet"):
        control_generate(registry, settings_for(registry, "tiny-pixart-sigma", "canny"), strokes("line"))
    with pytest.raises(InvalidRequest, match="no ControlNet and no img2img"):
        control_generate(registry, settings_for(registry, "tiny-pixart-sigma", ""), strokes("line"))


def test_live_picks_the_fastest_way_to_draw_for_each_family(registry):
    # Trained weights first, the distilled one-step student before its teacher, both with the
    # trained scribble ControlNet...
    assert live_targets(registry, "flux")[:5] == [
        LiveTarget("shapes-flux-2-sprint", "scribble", 2),
        LiveTarget("shapes-flux-sprint", "scribble", 2),
        LiveTarget("shapes-flux", "scribble", 8),
        LiveTarget("shapes-flux-2", "scribble", 8),
        LiveTarget("tiny-flux-schnell", "scribble", 2),
    ]
    # ...then, among random built-ins, the one-step model before the standard ones.
    assert live_targets(registry, "sd3")[0] == LiveTarget("tiny-sd3-turbo", "scribble", 4)
    # SANA-Sprint has no ControlNet: its img2img redraws the sketch before SANA's 20-step ControlNet.
    assert live_targets(registry, "sana")[0] == LiveTarget("tiny-sana-sprint", "", 2)
    # Offline, hub models that are not cached are never offered.
    assert all(
        registry.catalogue.get(t.model).builtin
        for family in ("flux", "sd3", "sana")
        for t in live_targets(registry, family)
    )


def test_sprint_img2img_draws_from_the_sketch(registry):
    renderer = LiveRenderer(registry)
    target = live_targets(registry, "sana")[0]
    line = renderer.frame(LiveRequest(target, PROMPT, strokes("line")))
    circle = renderer.frame(LiveRequest(target, PROMPT, strokes("circle")))
    assert line.image.size == (64, 64)
    assert np.abs(pixels(line.image) - pixels(circle.image)).mean() > 0.2


def count_text_encoder_calls(pipe) -> list[int]:
    calls = [0]
    encoders = [
        getattr(pipe, name)
        for name in ("text_encoder", "text_encoder_2", "text_encoder_3")
        if getattr(pipe, name, None) is not None
    ]
    for encoder in encoders:
        encoder.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("cache_prompts", [True, False])
def test_the_live_loop_encodes_a_prompt_once_until_it_changes(registry, catalogue, cache_prompts):
    from studio.registry import Registry

    own = Registry(catalogue, device="cpu")  # hooks stay on this registry's encoders
    calls = count_text_encoder_calls(pipeline_of(own, "tiny-flux-schnell"))
    renderer = LiveRenderer(own, cache_prompts=cache_prompts)
    target = LiveTarget("tiny-flux-schnell", "scribble", 2)
    frames = [renderer.frame(LiveRequest(target, PROMPT, strokes(shape))) for shape in ("line", "circle", "line")]
    after_three = calls[0]
    changed = renderer.frame(LiveRequest(target, "a small blue square at the top, gray background", strokes("line")))
    if cache_prompts:
        assert [frame.encoded_prompt for frame in frames] == [True, False, False] and changed.encoded_prompt
        assert after_three == 2 and calls[0] == 4  # CLIP and T5 once per distinct prompt
    else:
        assert after_three == 6 and calls[0] == 8
    # Cached or not, the same sketch and seed give the same frame.
    assert np.array_equal(pixels(frames[0].image), pixels(frames[2].image))
    assert np.abs(pixels(frames[0].image) - pixels(changed.image)).mean() > 0.1


def test_cached_embeddings_give_the_pipelines_own_image(registry):
    """The cache hands the pipeline what its own text encoding would: identical images."""
    renderer = LiveRenderer(registry)
    settings = settings_for(registry, "tiny-sd3", "canny", guidance=3.0, negative_prompt="blurry")
    control = sketch_control("canny", strokes("circle"))
    cached = control_generate(registry, settings, control, renderer.prompts).image
    with registry.use("tiny-sd3", "controlnet:canny") as pipe, torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        own = pipe(
            prompt=PROMPT,
            negative_prompt="blurry",
            control_image=control,
            num_inference_steps=settings.steps,
            guidance_scale=3.0,
            width=64,
            height=64,
            max_sequence_length=32,
            generator=torch.Generator().manual_seed(settings.seed),
        ).images[0]
    assert np.array_equal(pixels(cached), pixels(own))


def test_a_control_transformer_takes_the_transformers_place(catalogue, tmp_path):
    """BFL's FLUX.1 Canny/Depth [dev] are whole transformers reading the control image's latents
    beside the noise (twice the input channels): the variant swaps the transformer and shares the rest."""
    from diffusers import FluxTransformer2DModel

    from studio.catalogue import Catalogue, ControlSpec
    from studio.registry import Registry

    spec = catalogue.get("tiny-flux-dev")
    config = dict(pipeline_of(Registry(catalogue), spec.id).transformer.config)
    torch.manual_seed(0)
    doubled = {**config, "in_channels": 2 * config["in_channels"], "out_channels": config["in_channels"]}
    FluxTransformer2DModel.from_config(doubled).save_pretrained(tmp_path / "transformer")
    control = ControlSpec(
        name="canny-full",
        kind="canny",
        repo=str(tmp_path),
        subfolder="transformer",
        component="transformer",
        pipeline="FluxControlPipeline",
    )
    registry = Registry(Catalogue([replace(spec, controlnets=(control,))]), offline_only=True)
    settings = settings_for(registry, spec.id, "canny-full", steps=2)
    edges = control_generate(registry, settings, sketch_control("canny", strokes("line"))).image
    other = control_generate(registry, settings, sketch_control("canny", strokes("circle"))).image
    assert np.abs(pixels(edges) - pixels(other)).mean() > 0.2
    with registry.use(spec.id, control.task) as pipe:
        assert type(pipe).__name__ == "FluxControlPipeline"
        assert pipe.transformer.config.in_channels == 2 * config["in_channels"]
        base = pipeline_of(registry, spec.id)
        assert pipe.vae is base.vae and pipe.transformer is not base.transformer
    with pytest.raises(InvalidRequest, match=r"^FluxControlPipeline \(a control transformer\) has no conditioning"):
        control_generate(registry, replace(settings, conditioning_scale=0.5), strokes("line"))


def test_a_hub_controlnet_offline_is_a_clear_message_and_never_offered(catalogue):
    from studio.catalogue import Catalogue, ControlSpec
    from studio.errors import ModelUnavailable
    from studio.registry import ModelState, Registry

    spec = catalogue.get("tiny-flux-schnell")
    hub = ControlSpec(name="canny", kind="canny", repo="InstantX/FLUX.1-dev-Controlnet-Canny")
    registry = Registry(Catalogue([replace(spec, controlnets=(hub,))]), offline_only=True)
    assert registry.control_state(spec.id, "canny") is ModelState.UNAVAILABLE
    # Without its ControlNet, the one-step model can still redraw a sketch through img2img.
    assert live_targets(registry, "flux") == [LiveTarget(spec.id, "", spec.steps)]
    with pytest.raises(ModelUnavailable, match="hf download InstantX/FLUX.1-dev-Controlnet-Canny"):
        control_generate(registry, settings_for(registry, spec.id, "canny"), strokes("line"))
    assert registry.models.ids() == [spec.id]  # the base model stays usable


def test_the_trained_scribble_controlnet_draws_what_is_sketched(registry):
    """A circle outlined on the left and then on the right of the live canvas (the caption names no
    position): the red object follows the sketch, and without control it does not."""
    from studio.toyworld.measure import centroid, colour_mask, iou, largest_blob
    from studio.toyworld.sketch_eval import sketch

    target = next(t for t in live_targets(registry, "flux") if t.model == "shapes-flux")
    renderer = LiveRenderer(registry)
    for position, (low, high) in (("left", (0.0, 0.45)), ("right", (0.55, 1.0))):
        drawing, wanted = sketch("circle", position)
        request = LiveRequest(target, "a large red circle, gray background", drawing)
        blob = largest_blob(colour_mask(renderer.frame(request).image, "red"))
        x, _ = centroid(blob)
        assert low <= x <= high and iou(blob, wanted) > 0.5


def test_world_2s_scribble_controlnet_draws_a_sketch_where_no_caption_could_say(registry):
    """On shapes-flux-2: a square and a triangle outlined off every named place (a third of the way
    in, near a corner); each object is drawn where it was sketched, in the caption's colour, and
    at conditioning scale 0 the same seed puts it elsewhere."""
    from studio.toyworld.measure import centroid, colour_mask, iou, largest_blob
    from studio.toyworld.scene import object_at
    from studio.toyworld.sketch_eval import outline_of

    target = next(t for t in live_targets(registry, "flux") if t.model == "shapes-flux-2")
    renderer = LiveRenderer(registry)
    for shape, colour, centre in (("square", "blue", (0.33, 0.7)), ("triangle", "green", (0.7, 0.3))):
        drawing, wanted = outline_of(object_at("red", shape, 0.4, centre))
        request = LiveRequest(target, f"a large {colour} {shape}, gray background", drawing)
        blob = largest_blob(colour_mask(renderer.frame(request).image, colour))
        assert math.dist(centroid(blob), centre) <= 0.1 and iou(blob, wanted) > 0.5, shape
        free = largest_blob(colour_mask(renderer.frame(replace(request, conditioning_scale=0.0)).image, colour))
        assert iou(free, wanted) < 0.5, shape


def test_a_controlnet_from_a_local_folder_loads_by_its_config(catalogue, registry, tmp_path):
    """A catalogue repo may be a local diffusers folder; the class comes from its config.json and
    must be one of diffusers' own models."""
    from studio.catalogue import Catalogue, ControlSpec
    from studio.registry import Registry

    spec = catalogue.get("tiny-sd3")
    with registry.use(spec.id, "controlnet:canny") as pipe:
        pipe.controlnet.save_pretrained(tmp_path / "canny")
        expected = control_generate(registry, settings_for(registry, spec.id, "canny"), strokes("line")).image
    local = ControlSpec(name="canny", kind="canny", repo=str(tmp_path / "canny"))
    own = Registry(Catalogue([replace(spec, controlnets=(local,))]), offline_only=True)
    made = control_generate(own, settings_for(own, spec.id, "canny"), strokes("line")).image
    assert np.array_equal(pixels(made), pixels(expected))
    config = tmp_path / "canny" / "config.json"
    config.write_text(config.read_text().replace('"SD3ControlNetModel"', '"StableDiffusion3Pipeline"'))
    broken = Registry(Catalogue([replace(spec, controlnets=(local,))]), offline_only=True)
    with pytest.raises(InvalidRequest, match="names no diffusers model class"):
        control_generate(broken, settings_for(broken, spec.id, "canny"), strokes("line"))


@pytest.mark.parametrize("model", random_per_family(controllable))
def test_building_a_small_controlnet_leaves_the_base_as_it_was(registry, model):
    """diffusers' SD3 `from_transformer` writes num_layers into the base's own config; the
    built-in builder must copy it instead."""
    transformer = pipeline_of(registry, model).transformer
    config, weights = dict(transformer.config), {k: v.clone() for k, v in transformer.state_dict().items()}
    controlnet = registry.catalogue.get(model).family.controlnet_builder(transformer, 0)
    assert dict(transformer.config) == config
    assert all(torch.equal(weights[k], v) for k, v in transformer.state_dict().items())
    assert controlnet.config.num_layers == 1


def test_a_controlnet_gets_room_under_the_budget_as_a_model_does(catalogue):
    from studio.registry import GIB, Registry

    probe = Registry(catalogue)
    pipeline_of(probe, "tiny-sd3")
    pipeline_of(probe, "tiny-flux-schnell")
    budget = probe.models.used_bytes() + 1024
    registry = Registry(catalogue, memory_budget_gb=budget / GIB)
    pipeline_of(registry, "tiny-sd3")
    pipeline_of(registry, "tiny-flux-schnell")
    assert registry.models.ids() == ["tiny-sd3", "tiny-flux-schnell"]
    pipeline_of(registry, "tiny-flux-schnell", "controlnet:scribble")
    assert registry.models.ids() == ["tiny-flux-schnell"]  # the least recently used model made room
    assert registry.models.used_bytes() <= budget


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_a_live_requests_conditioning_settings_reach_the_controlnet(registry, family):
    """The live tab's sliders: scale 0 makes the sketch irrelevant, scale 1 does not, and where
    control acts (its start and end) changes the frame."""
    renderer = LiveRenderer(registry)
    target = next(t for t in live_targets(registry, family) if t.control and t.model.startswith("tiny"))
    target = replace(target, steps=4)

    def frame(shape, **settings):
        return pixels(renderer.frame(LiveRequest(target, PROMPT, strokes(shape), **settings)).image)

    assert np.array_equal(frame("line", conditioning_scale=0.0), frame("circle", conditioning_scale=0.0))
    assert np.abs(frame("line") - frame("circle")).mean() > 0.2
    assert np.abs(frame("line") - frame("line", conditioning_scale=0.5)).mean() > 0.2
    assert np.abs(frame("line") - frame("line", control_end=0.5)).mean() > 0.2
    assert np.abs(frame("line") - frame("line", control_start=0.5)).mean() > 0.2


def photo() -> Image.Image:
    """A photo-like picture: a soft gradient with a few hard shapes, half transparent in one corner."""
    ramp = np.linspace(40, 220, 64, dtype=np.uint8)
    picture = Image.fromarray(
        np.stack([np.tile(ramp, (64, 1)), np.tile(ramp[:, None], (1, 64)), np.full((64, 64), 90, np.uint8)], -1)
    )
    draw = ImageDraw.Draw(picture)
    draw.ellipse([(10, 10), (30, 30)], fill=(250, 20, 20))
    draw.rectangle([(36, 30), (58, 56)], fill=(20, 20, 160))
    draw.line([(4, 60), (60, 40)], fill=(0, 0, 0), width=2)
    picture.putalpha(
        Image.fromarray(np.where(np.add.outer(np.arange(64), np.arange(64)) < 20, 0, 255).astype(np.uint8))
    )
    return picture


def test_a_photo_becomes_the_control_image_its_controlnet_reads():
    picture = photo()
    canny = np.asarray(control_image_for("canny", picture))
    assert np.array_equal(canny, np.asarray(conditions.canny(picture, 100, 200)))
    loose = np.asarray(control_image_for("canny", picture, 5, 30))
    assert np.array_equal(loose, np.asarray(conditions.canny(picture, 5, 30)))
    assert (loose > 0).sum() > (canny > 0).sum()  # lower thresholds keep more edges
    assert np.array_equal(np.asarray(control_image_for("softedge", picture)), np.asarray(conditions.soft_edge(picture)))
    assert np.array_equal(np.asarray(control_image_for("scribble", picture)), np.asarray(conditions.scribble(picture)))
    for as_given in ("pose", "tile"):
        given = control_image_for(as_given, picture)
        assert given.mode == "RGB" and np.array_equal(np.asarray(given), np.asarray(picture.convert("RGB")))
    with pytest.raises(InvalidRequest, match="not in the local cache and the studio is offline"):
        control_image_for("depth", picture)


def test_strokes_become_white_lines_and_soft_edges_for_a_softedge_controlnet():
    drawn = strokes("circle")
    lines = np.asarray(conditions.scribble(drawn))
    for kind in ("scribble", "canny"):
        assert np.array_equal(np.asarray(sketch_control(kind, drawn)), lines)
    soft = np.asarray(sketch_control("softedge", drawn))
    assert np.array_equal(soft, np.asarray(conditions.soft_edge(conditions.scribble(drawn))))
    assert not np.array_equal(soft, lines)


def test_a_transparent_canvas_is_drawn_on_white_paper():
    canvas = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).line([(0, 8), (15, 8)], fill=(0, 0, 0, 255))
    canvas.putpixel((3, 3), (0, 0, 0, 128))
    paper = on_white(canvas)
    assert paper.mode == "RGB"
    assert paper.getpixel((0, 0)) == (255, 255, 255) and paper.getpixel((5, 8)) == (0, 0, 0)
    assert all(abs(value - 127) <= 1 for value in paper.getpixel((3, 3)))  # half transparent: half grey
    coloured = Image.new("RGB", (4, 4), (10, 20, 30))
    assert np.array_equal(np.asarray(on_white(coloured)), np.asarray(coloured))
    grey = on_white(Image.new("L", (4, 4), 50))
    assert grey.mode == "RGB" and grey.getpixel((0, 0)) == (50, 50, 50)


def test_control_settings_are_trimmed_and_checked(registry):
    sd3 = registry.catalogue.get("tiny-sd3")
    asked = settings_for(registry, "tiny-sd3", "canny", prompt="  a red circle  ", negative_prompt="  blurry  ")
    checked = validate(asked, sd3)
    assert (checked.prompt, checked.negative_prompt) == ("a red circle", "blurry")
    schnell = registry.catalogue.get("tiny-flux-schnell")
    assert not schnell.accepts_negative_prompt
    unguided = replace(asked, model=schnell.id, control="scribble", steps=2, guidance=0.0)
    assert validate(unguided, schnell).negative_prompt == ""
    with pytest.raises(InvalidRequest, match="^Write a prompt first.$"):
        validate(replace(asked, prompt="   "), sd3)
    for start, end in ((0.5, 0.5), (0.6, 0.4)):
        with pytest.raises(InvalidRequest, match="^Control must start before it ends.$"):
            validate(replace(asked, control_start=start, control_end=end), sd3)


def test_a_control_image_is_fitted_to_the_canvas_and_the_result_says_how_it_ran(registry):
    drawn = sketch_control("scribble", strokes("circle")).resize((100, 90)).convert("L")
    settings = settings_for(registry, "tiny-flux-dev", "scribble", steps=2)
    result = control_generate(registry, settings, drawn)
    fitted = drawn.convert("RGB").resize((64, 64), Image.Resampling.BILINEAR)
    assert result.control_image.mode == "RGB"
    assert np.array_equal(np.asarray(result.control_image), np.asarray(fitted))
    assert result.notes == () and result.settings.speed == "off" and 0 < result.seconds < 120
    beside = control_generate(registry, replace(settings, steps=6, speed="first-block-cache"), drawn)
    assert beside.settings.speed == "off"
    assert beside.notes == ("First-block cache: a cache would skip the blocks the ControlNet steers; ran without it.",)
    # FLUX's img2img pipeline opens no cache context (a hook there would fail at the first step).
    redrawn = control_generate(registry, replace(settings, control="", steps=6, speed="first-block-cache"), drawn)
    assert redrawn.settings.speed == "off"
    assert redrawn.notes == (
        "First-block cache: diffusers' FluxImg2ImgPipeline gives its cache hooks no context; ran without it.",
    )


def test_live_targets_rank_one_step_controlnets_then_img2img_then_standard_models(catalogue):
    from studio.catalogue import Catalogue
    from studio.registry import Registry

    schnell = catalogue.get("tiny-flux-schnell")  # one-step, random weights, scribble and canny ControlNets
    candidates = [
        replace(schnell, id="standard-b", mode="standard", steps=20),
        replace(schnell, id="img2img", controlnets=(), steps=1),
        replace(schnell, id="standard-a", mode="standard", steps=20),  # the same rank as standard-b
        replace(schnell, id="one-step-control", steps=12),
    ]
    registry = Registry(Catalogue(candidates), offline_only=True)
    assert live_targets(registry, "flux") == [
        LiveTarget("one-step-control", "scribble", 12),
        LiveTarget("img2img", "", 1),
        LiveTarget("standard-b", "scribble", 8),
        LiveTarget("standard-a", "scribble", 8),
    ]
    assert live_targets(registry, "flux", kinds=("canny",))[0] == LiveTarget("one-step-control", "canny", 12)


def test_a_live_frame_runs_the_targets_steps_and_the_requests_seed(registry):
    renderer = LiveRenderer(registry)
    target = LiveTarget("tiny-sd3", "canny", 3)
    frame = renderer.frame(LiveRequest(target, PROMPT, strokes("line"), seed=11, speed="first-block-cache"))
    spec = registry.catalogue.get("tiny-sd3")
    assert (frame.settings.steps, frame.settings.seed, frame.settings.guidance) == (3, 11, spec.guidance_scale)
    assert spec.guidance_scale != ControlSettings.__dataclass_fields__["guidance"].default
    assert frame.settings.speed == "off" and frame.notes  # asked, and said why not (3 steps)


def test_a_photo_in_the_live_loop_goes_through_its_controlnets_preprocessor(registry, catalogue):
    from studio.registry import Registry

    picture = photo()
    renderer = LiveRenderer(registry)
    canny = registry.catalogue.get("tiny-sd3").controlnet("canny")
    request = LiveRequest(
        LiveTarget("tiny-sd3", "canny", 2), PROMPT, picture, from_photo=True, canny_low=5, canny_high=30
    )
    assert np.array_equal(
        np.asarray(renderer.control_image(request, canny)), np.asarray(conditions.canny(picture, 5, 30))
    )
    depth = replace(canny, name="depth", kind="depth")
    online = LiveRenderer(Registry(catalogue, offline_only=False))
    with pytest.raises(InvalidRequest) as refused:
        online.control_image(replace(request, canny_low=100, canny_high=200), depth)
    assert "not in the local cache;" in str(refused.value)  # online: not told it is offline


def test_the_live_loop_keeps_one_prompt_per_model(registry, catalogue):
    from studio.registry import Registry

    own = Registry(catalogue, device="cpu")
    renderer = LiveRenderer(own)  # caches prompts unless told not to
    flux, sd3 = LiveTarget("tiny-flux-schnell", "scribble", 2), LiveTarget("tiny-sd3-turbo", "scribble", 2)
    other = "a small blue square at the top, gray background"
    encoded = [
        renderer.frame(LiveRequest(target, prompt, strokes("line"))).encoded_prompt
        for target, prompt in (
            (flux, PROMPT),
            (flux, PROMPT),
            (sd3, PROMPT),
            (flux, PROMPT),
            (flux, other),
            (flux, PROMPT),
        )
    ]
    # Another model's prompt stays; a new prompt on the same model replaces the old one.
    assert encoded == [True, False, True, False, True, True]


def test_a_live_target_says_what_draws_the_frames(catalogue):
    schnell = catalogue.get("tiny-flux-schnell")
    assert LiveTarget(schnell.id, "scribble", 2).describe(schnell) == f"{schnell.name} · scribble ControlNet · 2 steps"
    assert LiveTarget(schnell.id, "", 1).describe(schnell) == f"{schnell.name} · img2img from the sketch · 1 step"
