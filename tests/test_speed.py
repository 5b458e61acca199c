"""Speed settings: diffusers' cache hooks for one run, where they fit the run; elsewhere the run
goes without and says why."""

import numpy as np
import pytest
from support import pipeline_of

from studio.errors import InvalidRequest
from studio.generation import GenerationSettings, generate
from studio.speed import SPEEDS, chosen, offered

PROMPT = "a large red circle on the left, gray background"
CACHES = [name for name in SPEEDS if name != "off"]


def made(registry, model="shapes-flux", **changes):
    spec = registry.catalogue.get(model)
    fields = {"steps": 16, "guidance": spec.guidance_scale, "width": 64, "height": 64, "seed": 1} | changes
    (result,) = generate(registry, GenerationSettings(model=model, prompt=PROMPT, **fields))
    return result


def pixels(result) -> np.ndarray:
    return np.asarray(result.image, dtype=float)


def test_the_families_with_diffusers_caches_offer_them(catalogue):
    assert offered(catalogue.get("shapes-flux")) == list(SPEEDS)
    assert offered(catalogue.get("tiny-wan")) == list(SPEEDS) and offered(catalogue.get("tiny-cogvideox")) == list(
        SPEEDS
    )
    for model in ("shapes-sd3", "tiny-pixart-sigma", "tiny-sana"):
        assert offered(catalogue.get(model)) == ["off"]
    # FLUX's transformer has the hooks, but these pipelines open no cache context for them.
    for model in ("shapes-flux-sprint", "flux-fill-dev"):
        assert offered(catalogue.get(model)) == ["off"]


@pytest.mark.parametrize("speed", CACHES)
def test_each_cache_runs_near_the_plain_image_and_leaves_the_model_as_it_was(registry, speed):
    plain = made(registry)
    fast = made(registry, speed=speed)
    assert fast.settings.speed == speed and not fast.notes
    # The image the cache approximates (the shapes world's object where it was); not bit for bit.
    assert np.abs(pixels(fast) - pixels(plain)).mean() <= 6
    # Taken off after the run: the shared model draws exactly as before.
    assert not pipeline_of(registry, "shapes-flux").transformer.is_cache_enabled
    assert np.array_equal(pixels(made(registry)), pixels(plain))


def test_a_cache_that_does_not_fit_the_run_is_left_out_and_the_result_says_why(registry, catalogue):
    sd3 = made(registry, "shapes-sd3", speed="taylorseer")
    assert sd3.settings.speed == "off" and "no cache hooks for SD3" in sd3.notes[0]
    assert np.array_equal(pixels(sd3), pixels(made(registry, "shapes-sd3")))
    few = made(registry, steps=4, speed="first-block-cache")
    assert few.settings.speed == "off" and "4 steps leave nothing to reuse" in few.notes[0]
    assert "ControlNet" in chosen(catalogue.get("shapes-flux"), "taylorseer", 8, "controlnet:scribble").notice
    with pytest.raises(InvalidRequest, match="Speed must be one of off, first-block-cache"):
        made(registry, speed="warp")


def test_a_cache_beside_a_controlnet_is_switched_off_and_the_frame_is_the_plain_one(registry):
    from PIL import Image, ImageDraw

    from studio.methods.control import ControlSettings, control_generate, sketch_control

    drawing = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(drawing).ellipse([(8, 16), (40, 48)], outline="black", width=3)
    control = sketch_control("scribble", drawing)
    settings = ControlSettings(model="shapes-flux", prompt=PROMPT, control="scribble", steps=8, guidance=3.0,
                               width=64, height=64, seed=2)  # fmt: skip
    plain = control_generate(registry, settings, control)
    asked = control_generate(registry, settings.__class__(**{**settings.to_dict(), "speed": "taylorseer"}), control)
    assert asked.settings.speed == "off" and "ControlNet" in asked.notes[0]
    assert np.array_equal(np.asarray(asked.image), np.asarray(plain.image))


def test_a_cache_joins_a_lora_run(tmp_path, catalogue):
    from test_lora import MODEL, make_lora

    from studio.registry import Registry

    registry = Registry(catalogue, device="cpu")
    registry.add_adapter(MODEL, "style", make_lora(registry, tmp_path / "style.safetensors", 1))
    with_lora = made(registry, MODEL, adapters=(("style", 1.0),), speed="first-block-cache")
    plain_lora = made(registry, MODEL, adapters=(("style", 1.0),))
    assert with_lora.settings.speed == "first-block-cache" and not with_lora.notes
    assert np.abs(pixels(with_lora) - pixels(plain_lora)).mean() <= 6
    # The adapter still acts under the cache.
    assert np.abs(pixels(with_lora) - pixels(made(registry, MODEL, speed="first-block-cache"))).mean() > 1


def test_compiled_blocks_draw_the_same_image_and_are_plain_again_after(registry):
    """torch.compile of FLUX's repeated blocks (regional compilation) for one run: the same image
    to rounding, the blocks plain after (the editing methods put their processors in them)."""
    plain = made(registry, "tiny-flux-dev", steps=4)
    fast = made(registry, "tiny-flux-dev", steps=4, compiled=True)
    assert fast.settings.compiled and not fast.notes
    assert np.abs(pixels(fast) - pixels(plain)).max() <= 2
    transformer = pipeline_of(registry, "tiny-flux-dev").transformer
    assert all(getattr(block, "_compiled_call_impl", None) is None for block in transformer.transformer_blocks)


def test_compiling_is_left_out_where_it_would_compile_again_or_has_nothing_to_compile(registry, catalogue):
    from studio.speed import compile_chosen

    flux = catalogue.get("tiny-flux-dev")
    assert compile_chosen(flux, True, adapters=False, speed="off") == (True, "")
    assert "a LoRA would make the compiled blocks compile again" in compile_chosen(flux, True, True, "off")[1]
    assert "a cache's hooks" in compile_chosen(flux, True, False, "taylorseer")[1]
    # A transformer its memory plan quantizes or streams is not compiled, and the result says why.
    assert compile_chosen(flux, True, False, "off", "int8") == (
        False,
        "torch.compile: the memory plan keeps the transformer in int8; ran uncompiled.",
    )
    assert "streamed from host memory" in compile_chosen(flux, True, False, "off", "offloaded")[1]
    sd3_run = made(registry, "tiny-sd3", steps=4, compiled=True)
    assert not sd3_run.settings.compiled and "no repeated blocks for SD3" in sd3_run.notes[0]
