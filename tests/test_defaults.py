"""Every tab opens on an example its default built-in model can draw: the values the page opens
with, run through the studio's runner on the tab's default model, give images whose shapes-world
measures match the prompt."""

import numpy as np
import pytest
from PIL import Image

from studio.agent.evaluate import Expected, holds
from studio.agent.rules import _words, places_in
from studio.runner import Job
from studio.toyworld.colour_eval import caption_background, score
from studio.toyworld.measure import centroid, colour_mask, largest_blob
from studio.toyworld.scene import COLOURS


@pytest.fixture(scope="module")
def opened(tmp_path_factory):
    """The built page (offline, as `make demo`), its studio, and its components by elem_id."""
    from studio.cli import create_studio, parse_args
    from tabs.app import build_app

    studio = create_studio(parse_args(["--offline", "--output-dir", str(tmp_path_factory.mktemp("outputs"))]))
    demo = build_app(studio)
    by_id = {block.elem_id: block for block in demo.blocks.values() if getattr(block, "elem_id", None)}
    return studio, by_id


def default_model(studio, tab):
    from tabs import common

    return common.default_model(studio, getattr(tab, "serves", common.makes_images)).id


def expected_objects(prompt: str) -> list[Expected]:
    """The objects a shapes-world prompt asks for: each part's colour and named place."""
    found = []
    for part in prompt.split(" and "):
        words = _words(part.split(",")[0])
        colour = next((name for name in COLOURS if f" {name} " in words), None)
        places = places_in(part.split(",")[0])
        if colour:
            found.append(Expected(colour, None, places[0] if places else None))
    return found


def run(studio, method, settings, inputs=None):
    from studio.agent.tools import tool_settings, tools, with_defaults

    checked = tool_settings(method, with_defaults(studio.registry.catalogue, settings, settings["model"]))
    return tools()[method].pictures(studio.runner.run(Job(method, checked, inputs or {})))


def test_text_to_image_opens_on_a_prompt_its_model_draws(opened):
    from tabs import text_to_image

    studio, by_id = opened
    prompt = by_id["t2i-prompt"].value
    assert prompt  # a value, not a placeholder
    (image,) = run(studio, "generate", {"model": default_model(studio, text_to_image), "prompt": prompt})
    for expected in expected_objects(prompt):
        assert holds(image, expected)[0], (prompt, expected)


def test_the_drag_tab_opens_on_a_source_its_model_draws(opened):
    from tabs import drag

    studio, by_id = opened
    prompt = by_id["drag-prompt"].value
    (image,) = run(studio, "generate", {"model": default_model(studio, drag), "prompt": prompt})
    (expected,) = expected_objects(prompt)
    assert holds(image, expected)[0]


def test_the_colour_tab_opens_on_a_recolour_its_model_makes(opened):
    from tabs import colour_edit

    studio, by_id = opened
    source, word, colour = (by_id[name].value for name in ("colour-source", "colour-word", "colour-colour"))
    target = by_id["colour-target"].value
    assert word in source and colour in target
    from studio.agent.tools import tool_settings, with_defaults

    model = default_model(studio, colour_edit)
    arguments = {"source_prompt": source, "target_prompt": target, "word": word}
    settings = tool_settings("colour_edit", with_defaults(studio.registry.catalogue, arguments, model))
    edit = studio.runner.run(Job("colour_edit", settings, {}))
    (old,) = expected_objects(source)
    measured = score(edit.source, edit.result, old.colour, colour, caption_background(source))
    # The result is what the target prompt asks for, the rest of the picture kept (ColorCtrl's
    # success rate over many recolours, IoU ≥ 0.85 included, is the colour evaluation's figure).
    (wanted,) = expected_objects(target)
    assert holds(edit.result, wanted)[0] and wanted.colour == colour
    assert measured is not None and measured.hue_error <= 30 and measured.background_psnr >= 30


def test_the_layout_tab_opens_on_boxes_its_model_fills(opened):
    from tabs import layout

    studio, by_id = opened
    caption, rows = by_id["layout-caption"].value, by_id["layout-table"].value["data"]
    assert caption and len(rows) == 2
    regions = [{"caption": row[0], "box": [float(value) for value in row[1:5]]} for row in rows]
    (image,) = run(studio, "layout", {"model": default_model(studio, layout), "caption": caption, "regions": regions})
    for region in regions:
        (expected,) = expected_objects(region["caption"])
        point = centroid(largest_blob(colour_mask(image, expected.colour)))
        x1, y1, x2, y2 = region["box"]
        assert point is not None and x1 <= point[0] <= x2 and y1 <= point[1] <= y2, region


def test_the_video_tab_opens_on_prompts_its_model_follows(opened):
    from tabs import video

    studio, by_id = opened
    rows = by_id["video-prompts"].value["data"]
    prompts = [row[0] for row in rows if row[0]]
    assert len(prompts) >= 2
    frames = run(studio, "multi_prompt_video", {"model": default_model(studio, video), "prompts": prompts})
    first, last = expected_objects(prompts[0])[0], expected_objects(prompts[-1])[0]
    assert holds(frames[0], first)[0] and holds(frames[-1], last)[0]


def test_the_try_on_tab_opens_on_a_person_and_a_garment_its_model_dresses(opened):
    from studio.toyworld.measure import hue_distance, mean_hue
    from tabs import tryon

    studio, by_id = opened
    person, garment = (by_id[name].value for name in ("tryon-person", "tryon-garment"))
    assert person and garment
    person_image = Image.open(person["path"]).convert("RGB")
    garment_image = Image.open(garment["path"]).convert("RGB")
    settings = {"model": default_model(studio, tryon), "kind": by_id["tryon-kind"].value}
    (result,) = run(studio, "try_on", settings, {"person": person_image, "garment": garment_image})
    # The torso takes the garment's colour: the garment's own hue, where the result changed.
    changed = np.abs(np.asarray(result, float) - np.asarray(person_image, float)).sum(-1) > 60
    garment_pixels = np.asarray(garment_image, float)
    worn = np.abs(garment_pixels - garment_pixels[0, 0]).sum(-1) > 60
    assert changed.sum() > 50
    assert hue_distance(mean_hue(result, changed), mean_hue(garment_image, worn)) <= 30


def test_the_image_sets_tab_opens_on_a_shapes_set_with_the_lora_made_for_its_model(opened):
    from studio.methods.incontext import load_sets

    studio, by_id = opened
    image_set = load_sets()[by_id["image-set-chosen"].value]
    spec = studio.registry.catalogue.get(by_id["image-set-model"].value)
    # Offline the tab opens on a shapes-world set with the LoRA made for its model, switched on.
    assert not spec.random_weights and image_set.lora_fits(spec) and by_id["image-set-lora"].value
    assert by_id["image-set-prompt"].value == image_set.prompt(image_set.caption, image_set.panels)


@pytest.mark.xfail(
    strict=True,
    reason="issue 12: world 2's FLUX was trained on 64x64 canvases only, so on a set's 128-pixel canvas (image "
    "positions it never saw) it tiles objects instead of drawing panels (recolour set: 1 of 8 seeds with the LoRA); "
    "its T5 now tells the panels apart; a base trained on wide and tall canvases too (train --sizes 64 128 128x64 "
    "64x128) draws one object where asked on them, but its LoRA still does not copy the reference across panels "
    "(shape kept 0.38): not shipped",
)
def test_the_image_sets_tabs_opening_set_draws_each_panel_as_asked(opened):
    from studio.methods.incontext import SET_DEFAULTS, SetRequest, load_sets, set_canvas, set_lora
    from studio.params import param
    from tabs import common

    studio, by_id = opened
    image_set = load_sets()[by_id["image-set-chosen"].value]
    spec = studio.registry.catalogue.get(by_id["image-set-model"].value)
    width, height = set_canvas(image_set, spec)
    request = SetRequest(
        model=spec.id, prompt=by_id["image-set-prompt"].value, rows=image_set.rows, columns=image_set.columns,
        width=width, height=height, steps=common.steps_within(spec, SET_DEFAULTS.steps), guidance=spec.guidance_scale,
        seed=param(SetRequest, "seed").default, adapters=set_lora(studio.registry, image_set, spec),
    )  # fmt: skip
    made = studio.runner.run(Job("image_set", request, {}))
    assert len(made.panels) == image_set.count
    for panel, text in zip(made.panels, image_set.panels):
        for expected in expected_objects(text):
            assert holds(panel, expected)[0], (text, expected)
