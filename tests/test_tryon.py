"""Virtual try-on: the agnostic mask from label maps, the canvas, the paste-back, bad input, the
built-in parser and try-on model on the dress-up world, the endpoint."""

import random
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from studio.errors import InvalidRequest
from studio.methods import tryon
from studio.methods.tryon import (
    ARMS,
    FACE,
    HAIR,
    TryOnSettings,
    agnostic_mask,
    canvas_mask,
    checked_mask,
    compose,
    fit,
    hands,
    paste_back,
    try_on,
    without_backdrop,
)
from studio.toyworld import dressup, tryon_eval

MODEL = "dressup-flux-fill"


def label_map() -> np.ndarray:
    """A front-facing figure 60 pixels tall on a 40x64 map: hair, face, a top, arms hanging
    beside it, trousers and shoes."""
    labels = np.zeros((64, 40), dtype=np.uint8)
    labels[2:6, 14:26] = HAIR
    labels[6:16, 15:25] = FACE
    labels[16:36, 12:28] = 4  # upper clothes
    labels[17:40, 8:12] = 15  # right arm (image left), hand at its end
    labels[17:40, 28:32] = 14
    labels[36:58, 13:19] = 6  # pants
    labels[36:58, 21:27] = 6
    labels[58:62, 13:27] = 9
    return labels


def test_the_upper_mask_covers_the_top_and_arms_but_never_face_hair_or_hands():
    labels = label_map()
    mask = agnostic_mask(labels, "upper", dilation=2)
    assert mask[labels == 4].all()
    the_hands = hands(labels)
    arms = np.isin(labels, ARMS)
    assert the_hands.any() and (the_hands <= arms).all()
    # A hand is the tenth of the figure's height (60 rows -> 6) at the far end of each arm.
    assert the_hands[34:40, 8:12].all() and not the_hands[17:30, 8:12].any()
    assert mask[arms & ~the_hands].all()
    for kept in (FACE, HAIR, 9):
        assert not mask[labels == kept].any()
    assert not (mask & the_hands).any()
    # Dilated by 2 and boxed: the box of the top and the arms grown by two pixels.
    rows, columns = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    assert (rows.min(), rows.max(), columns.min(), columns.max()) == (14, 41, 6, 33)


def test_the_lower_and_dress_masks_take_their_own_labels():
    labels = label_map()
    lower = agnostic_mask(labels, "lower", dilation=1)
    assert lower[labels == 6].all() and not lower[labels == 9].any() and not lower[:30].any()
    dress = agnostic_mask(labels, "dress", dilation=1)
    assert dress[np.isin(labels, (4, 6))].all() and not dress[np.isin(labels, (FACE, HAIR, 9))].any()
    labels[labels == 6] = 5  # a skirt is a lower garment too
    assert agnostic_mask(labels, "lower", dilation=1)[labels == 5].all()


def test_a_missing_garment_kind_is_said_and_the_brush_offered():
    labels = label_map()
    labels[labels == 4] = 7  # wearing a dress: no top to replace
    with pytest.raises(InvalidRequest, match="no a top.*brush|brush"):
        agnostic_mask(labels, "upper")
    with pytest.raises(InvalidRequest, match="kind"):
        agnostic_mask(labels, "hat")


def test_masks_covering_nothing_or_everything_are_refused():
    with pytest.raises(InvalidRequest, match="nothing"):
        checked_mask(np.zeros((8, 8), bool))
    with pytest.raises(InvalidRequest, match="whole"):
        checked_mask(np.ones((8, 8), bool))


def test_canvas_composition_and_crop_are_exact():
    rng = np.random.default_rng(0)
    garment = Image.fromarray(rng.integers(0, 256, (64, 48, 3), dtype=np.uint8))
    person = Image.fromarray(rng.integers(0, 256, (64, 48, 3), dtype=np.uint8))
    canvas = compose(garment, person)
    assert canvas.size == (96, 64)
    assert np.array_equal(np.asarray(canvas)[:, :48], np.asarray(garment))
    assert np.array_equal(np.asarray(canvas)[:, 48:], np.asarray(person))
    placed, placement = fit(person, (48, 64))
    assert placement.box == (0, 0, 48, 64) and np.array_equal(np.asarray(placement.crop(placed)), np.asarray(person))
    wide = Image.new("RGB", (200, 100), (10, 200, 30))
    placed, placement = fit(wide, (48, 64))
    assert placed.size == (48, 64) and placement.box == (0, 20, 48, 24)
    # The border is the picture's own backdrop colour, so the margin is seamless.
    assert np.all(np.asarray(placed)[0] == (10, 200, 30))
    mask = canvas_mask(np.ones((64, 48), bool), (48, 64))
    assert not mask[:, :48].any() and mask[:, 48:].all()


def test_pixels_outside_the_mask_are_the_persons_bit_for_bit():
    rng = np.random.default_rng(1)
    person = Image.fromarray(rng.integers(0, 256, (80, 60, 3), dtype=np.uint8))
    generated = Image.fromarray(rng.integers(0, 256, (32, 24, 3), dtype=np.uint8))
    mask = np.zeros((80, 60), bool)
    mask[20:50, 10:40] = True
    result = np.asarray(paste_back(person, generated, mask))
    assert np.array_equal(result[~mask], np.asarray(person)[~mask])
    assert np.array_equal(result[mask], np.asarray(generated.resize((60, 80), Image.Resampling.LANCZOS))[mask])


def test_the_backdrop_goes_white_but_a_white_print_inside_stays():
    garment = np.full((40, 40, 3), (180, 180, 190), dtype=np.uint8)  # a grey studio backdrop
    garment[8:32, 8:32] = (220, 40, 40)
    garment[16:24, 16:24] = (180, 180, 190)  # a grey print inside the garment, not connected
    cleaned = np.asarray(without_backdrop(Image.fromarray(garment)))
    assert np.all(cleaned[:8] == 255) and np.all(cleaned[8:32, 8:16] == (220, 40, 40))
    assert np.all(cleaned[16:24, 16:24] == (180, 180, 190))


def test_the_drawn_patterns_read_back():
    rng = random.Random(5)
    for _ in range(60):
        person = dressup.random_person(rng, held_out=None)
        image, _ = dressup.render_person(person)
        x1, y1, x2, y2 = dressup.torso_box(person)
        worn = person.upper or person.lower
        assert dressup.pattern_of(np.asarray(image)[y1:y2, x1:x2]) == worn.pattern


def test_no_training_person_wears_a_held_out_garment():
    rng = random.Random(0)
    for _ in range(300):
        person = dressup.random_person(rng)
        for garment in (person.upper, person.lower):
            assert garment is None or (garment.colour, garment.pattern) not in dressup.HELD_OUT


def test_the_builtin_parser_labels_a_new_person_as_the_world_does():
    rng = random.Random(77)
    accuracy = []
    for index in range(8):
        person = dressup.random_person(rng, held_out=True, dress=1.0 if index % 4 == 0 else 0.0)
        image, labels = dressup.render_person(person)
        found = tryon.parse(image, str(tryon.BUILTIN_PARSER), offline=True)
        assert found.shape == labels.shape
        accuracy.append((found == labels).mean())
        worn = 7 if person.upper is None else 4  # a dress, or a top as upper clothes
        assert (found[labels == worn] == worn).mean() > 0.9
    assert np.mean(accuracy) > 0.93


@pytest.fixture(scope="module")
def example(registry):
    rng = random.Random(3)
    person = dressup.random_person(rng, dress=0.0)
    garment = dressup.random_garment(rng, "upper", held_out=True)
    spec = registry.catalogue.get(MODEL)
    settings = TryOnSettings(model=MODEL, steps=spec.steps, guidance=spec.guidance_scale, width=96, height=64, seed=0)
    return person, garment, settings


def test_the_builtin_tries_on_with_the_automatic_mask_and_keeps_the_rest(registry, example):
    person, garment, settings = example
    picture, labels = dressup.render_person(person)
    made = try_on(registry, settings, picture, dressup.render_garment(garment), None)
    result, before = np.asarray(made.image), np.asarray(picture)
    assert made.image.size == picture.size and made.canvas.size == (96, 64)
    assert np.array_equal(result[~made.mask], before[~made.mask])
    assert made.mask[labels == 4].mean() > 0.95 and not made.mask[np.isin(labels, (FACE, HAIR))].any()
    assert (np.abs(result[made.mask].astype(int) - before[made.mask]).max(-1) > 40).mean() > 0.2


def test_a_bigger_photo_keeps_its_size_and_its_pixels(registry, example):
    person, garment, settings = example
    picture = dressup.render_person(person)[0].resize((150, 200), Image.Resampling.BICUBIC)
    made = try_on(registry, settings, picture, dressup.render_garment(garment), None)
    assert made.image.size == (150, 200)
    assert np.array_equal(np.asarray(made.image)[~made.mask], np.asarray(picture)[~made.mask])


def test_the_tryon_beats_the_prompt_alone_on_held_out_garments(registry):
    table = tryon_eval.evaluate(registry, MODEL, 6)
    ours, baseline = table["try-on (garment panel)"], table["prompt alone (baseline)"]
    assert ours["hue"] >= 0.8 and ours["pattern"] >= 0.5
    assert ours["head_psnr"] >= 30 and ours["background_psnr"] >= 30
    assert ours["pattern"] > baseline["pattern"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"person": None}, "person image"),
        ({"garment": None}, "garment image"),
        ({"person": Image.new("RGB", (20, 20))}, "too small"),
        ({"garment": Image.new("RGB", (5000, 40))}, "too large"),
        ({"mask": np.zeros((64, 48), bool)}, "covers nothing"),
        ({"mask": np.ones((10, 10), bool)}, "size of the person"),
        ({"model": "shapes-flux"}, "not a FLUX Fill model"),
        ({"kind": "hat"}, "kind"),
        ({"description": "x" * 300}, "too long"),
    ],
)
def test_bad_input_is_refused_in_one_sentence(registry, example, change, message):
    person, garment, settings = example
    inputs = {"person": dressup.render_person(person)[0], "garment": dressup.render_garment(garment), "mask": None}
    inputs |= {key: value for key, value in change.items() if key in inputs}
    settings = replace(settings, **{key: value for key, value in change.items() if key not in inputs})
    with pytest.raises(InvalidRequest, match=message):
        try_on(registry, settings, inputs["person"], inputs["garment"], inputs["mask"])


def test_the_endpoint_makes_a_tryon_with_the_automatic_mask(running_app):
    from gradio_client import handle_file

    client, _ = running_app
    person = "assets/examples/tryon/person-1.png"
    garment = "assets/examples/tryon/garment-1-upper.png"
    editor = client.predict(MODEL, handle_file(person), "upper", api_name="/tryon_mask")
    assert editor["layers"], "the automatic mask comes back as a layer to edit"
    compare, result, _canvas, info = client.predict(
        MODEL, handle_file(person), handle_file(garment), False, None, None,
        "upper", "", 30, 30.0, 96, 64, 0, 1.0, True, api_name="/try_on",
    )  # fmt: skip
    with Image.open(result) as made, Image.open(person) as photo:
        assert made.size == photo.size
    assert len(compare) == 2
    assert info["kind"] == "upper" and info["automatic_mask"] is True and "mask" not in info


def test_text_to_image_sends_a_fill_model_to_the_tryon_tab(registry):
    from studio.generation import GenerationSettings, generate

    with pytest.raises(InvalidRequest, match="fills a masked image.*Virtual try-on"):
        next(generate(registry, GenerationSettings(model=MODEL, prompt="a red top")))


def test_a_mask_sent_as_a_picture_is_white_where_to_paint():
    """Tool and API clients send the mask as an image; the tab as booleans: the same mask."""
    from studio.methods.tryon import as_mask

    painted = np.zeros((8, 6), bool)
    painted[2:5, 1:4] = True
    picture = Image.fromarray(np.where(painted[..., None], 255, 0).astype(np.uint8).repeat(3, -1))
    assert np.array_equal(as_mask(picture), painted) and np.array_equal(as_mask(painted), painted)
