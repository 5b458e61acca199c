import dataclasses
import random

import numpy as np
import pytest
import torch
from support import trained
from transformers import CLIPTokenizer, GemmaTokenizer, T5Tokenizer

from studio import offline
from studio.generation import GenerationSettings, generate
from studio.toyworld.data import HELD_OUT, OBJECT_ATTRIBUTES, build_pool, object_attributes
from studio.toyworld.grounding import UNGROUNDED, Grounding, token_labels
from studio.toyworld.measure import (
    centroid,
    check_object,
    classify_shape,
    colour_mask,
    hue_distance,
    iou,
    mean_hue,
    nearest_position,
)
from studio.toyworld.scene import (
    BACKGROUNDS,
    COLOURS,
    POSITION_VARIANTS,
    POSITIONS,
    SHAPES,
    SIZES,
    VOCABULARY,
    Caption,
    make_object,
    make_scene,
    random_scene,
    render,
    varied_caption,
)


def test_captions_describe_the_scene_in_the_world_vocabulary():
    scene = make_scene(
        [make_object("red", "circle", "large", "left"), make_object("blue", "square", "small", "bottom")], "gray"
    )
    assert scene.caption == "a large red circle on the left and a small blue square at the bottom, gray background"
    words = scene.caption.replace(",", " ,").split()
    assert set(words) <= set(VOCABULARY)


def test_each_span_of_a_varied_caption_is_the_words_describing_its_own_object():
    rng = random.Random(4)
    spans_seen = 0
    for _ in range(300):
        scene = random_scene(rng)
        caption = varied_caption(scene, rng)
        for start, end, index in caption.spans:
            words, obj = caption.text[start:end], scene.objects[index]
            spans_seen += 1
            if obj.position:
                assert any(words.endswith(variant) for variant in POSITION_VARIANTS[obj.position]), words
            if words.startswith("one ") and obj.colour not in words:  # "two red circles, one on the left"
                assert len({(o.colour, o.shape) for o in scene.objects}) == 1
                continue
            assert obj.colour in words and obj.shape in words, (words, obj)
            others = [o.colour for o in scene.objects if o.colour != obj.colour]
            assert not any(colour in words.split() for colour in others)
        outside = "".join(ch for i, ch in enumerate(caption.text) if not any(s <= i < e for s, e, _ in caption.spans))
        assert not any(place in outside.split() for place in ("left", "right", "centre", "center", "middle"))
    assert spans_seen > 400


def test_grounding_labels_each_token_with_the_attributes_of_the_object_it_describes():
    tokenizer = offline.t5_tokenizer()
    objects = [make_object("red", "circle", "large", "left"), make_object("blue", "square", "small", "top right")]
    caption = Caption.joined(
        [("draw ", None), ("a large red circle on the left", 0), (" and ", None),
         ("a small blue square at the top right", 1), (", grey background", None)]
    )  # fmt: skip
    ids, labels = token_labels(tokenizer, [caption], [[object_attributes(o) for o in objects]], 48)
    assert ids.shape == (1, 48) and labels.shape == (1, 48, len(OBJECT_ATTRIBUTES))
    tokens = tokenizer.convert_ids_to_tokens(ids[0])
    by_token = {}
    for token, label in zip(tokens, labels[0].tolist()):
        by_token.setdefault(token, []).append(tuple(label))
    red, blue = object_attributes(objects[0]), object_attributes(objects[1])
    assert red != blue and red[3] == list(POSITIONS).index("left") and blue[3] == list(POSITIONS).index("top right")
    assert by_token["\u2581red"] == by_token["\u2581circle"] == by_token["\u2581left"] == [red]
    assert by_token["\u2581blue"] == by_token["\u2581square"] == by_token["\u2581top"] == [blue]
    assert by_token["\u2581the"] == [red, blue]  # "on the left", "at the top right": each its own object's
    ungrounded = (UNGROUNDED,) * len(OBJECT_ATTRIBUTES)
    for word in ("\u2581draw", "\u2581and", "\u2581grey", "\u2581background", "</s>", "<pad>"):
        assert set(by_token[word]) == {ungrounded}, word


def test_grounding_teaches_the_t5_which_object_each_word_belongs_to():
    """Trained by diffusion alone, a toy T5 gives "red" the same vector wherever it stands; after
    grounding, the red of the first object and the red of the second differ."""
    torch.manual_seed(0)
    tokenizer = offline.t5_tokenizer()
    encoder = offline.t5_text_encoder(tokenizer, d_model=32)
    stand_in = type("Pipe", (), {"components": {"text_encoder": encoder}, "tokenizer": tokenizer})
    pool = build_pool(256, seed=1)
    grounding = Grounding.build(stand_in, pool.descriptions, pool.attributes(), OBJECT_ATTRIBUTES, 48)

    def red_first_against_red_second() -> float:
        texts = ["a red circle on the left and a blue square on the right",
                 "a blue circle on the left and a red square on the right"]  # fmt: skip
        ids = tokenizer(texts, padding="max_length", max_length=48, return_tensors="pt").input_ids
        with torch.no_grad():
            hidden = encoder(ids)[0]
        return torch.cosine_similarity(hidden[0, 1], hidden[1, 8], dim=0).item()

    rows = torch.arange(64)
    before, loss_before = red_first_against_red_second(), grounding.loss(rows).item()
    grounding.pretrain(200, 32, 3e-3, torch.Generator().manual_seed(0))
    assert before > 0.99
    assert red_first_against_red_second() < 0.95
    assert grounding.loss(rows).item() < loss_before / 2


def test_rendered_masks_are_the_objects_visible_pixels():
    scene = make_scene(
        [make_object("green", "square", "large", "centre"), make_object("red", "circle", "small", "centre")], "white"
    )
    image, masks = render(scene)
    assert image.size == (64, 64) and len(masks) == 2
    assert not np.logical_and(*masks).any()  # the circle covers part of the square
    assert iou(masks[1], colour_mask(image, "red")) > 0.85
    assert iou(masks[0], colour_mask(image, "green")) > 0.85
    x, y = centroid(masks[1])
    assert abs(x - 0.5) < 0.03 and abs(y - 0.5) < 0.03


@pytest.mark.parametrize(("width", "height"), [(128, 64), (64, 128)])
def test_a_wide_or_tall_canvas_keeps_each_object_round_at_its_place_and_size(width, height):
    """On a 2:1 canvas an object keeps its centre as a fraction of the canvas and its side as a
    fraction of the shorter edge: the circle stays a circle (as wide as tall, in pixels) and is
    drawn as large as on the square canvas."""
    scene = make_scene(
        [make_object("red", "circle", "large", "left"), make_object("blue", "square", "small", "bottom right")], "gray"
    )
    image, masks = render(scene, width, height=height)
    assert image.size == (width, height)
    ys, xs = np.nonzero(masks[0])
    assert abs((xs.max() - xs.min()) - (ys.max() - ys.min())) <= 1
    assert classify_shape(masks[0]) == "circle" and classify_shape(masks[1]) == "square"
    square, _ = render(scene, 64)
    assert abs(masks[0].sum() - colour_mask(square, "red").sum()) <= 0.05 * masks[0].sum()
    for mask, place in zip(masks, ("left", "bottom right")):
        assert nearest_position(centroid(mask)) == place
    assert iou(masks[1], colour_mask(image, "blue")) > 0.85


def test_training_scenes_never_contain_held_out_combinations():
    pool = build_pool(300, seed=5)
    triples = {(o.colour, o.shape, o.position) for s in pool.scenes for o in s.objects}
    assert not triples & HELD_OUT
    assert pool.images.shape == (300, 3, 64, 64)
    assert {len(s.objects) for s in pool.scenes} == {1, 2, 3}


@pytest.mark.parametrize("build", [offline.clip_tokenizer, offline.t5_tokenizer, offline.gemma_tokenizer])
def test_tokenizers_give_one_token_per_word_and_survive_save_and_load(build, tmp_path):
    tokenizer = build()
    caption = "a large red circle on the left and a small blue square at the bottom, gray background"
    words = caption.replace(",", " ,").split()
    special = set(tokenizer.all_special_ids)
    ids = [i for i in tokenizer(caption).input_ids if i not in special]
    assert len(ids) == len(words) and tokenizer.unk_token_id not in ids
    tokenizer.save_pretrained(tmp_path)
    reloaded = type(tokenizer).from_pretrained(tmp_path)
    assert reloaded(caption).input_ids == tokenizer(caption).input_ids
    assert isinstance(tokenizer, (CLIPTokenizer, T5Tokenizer, GemmaTokenizer))
    for word in filter(str.isalpha, VOCABULARY):
        assert len([i for i in tokenizer(f"a {word}").input_ids if i not in special]) == 2, word


def test_clip_end_of_text_is_not_id_two():
    assert offline.clip_tokenizer().eos_token_id not in (2, None)


def test_measures_read_ground_truth_scenes_exactly_and_catch_wrong_answers():
    rng = random.Random(3)
    for _ in range(60):
        place, size = rng.choice(list(POSITIONS)), rng.choice(SIZES)
        obj = make_object(rng.choice(list(COLOURS)), rng.choice(SHAPES), size, place, jitter=0.05, rng=rng)
        image, _ = render(make_scene([obj], rng.choice(list(BACKGROUNDS))))
        assert all(check_object(image, obj).values()), obj
        wrong_colour = next(c for c in COLOURS if c != obj.colour)
        assert not check_object(image, dataclasses.replace(obj, colour=wrong_colour))["colour"]
        assert not check_object(image, dataclasses.replace(obj, size=next(s for s in SIZES if s != size)))["size"]
    # Objects anywhere at any size: sizes near a range's edge may read as the neighbour.
    scenes = [random_scene(rng, max_objects=1) for _ in range(200)]
    readings = [check_object(render(scene)[0], scene.objects[0]) for scene in scenes]
    for measure in ("colour", "position", "shape"):
        assert sum(r[measure] for r in readings) >= 0.97 * len(readings), measure
    assert sum(r["size"] for r in readings) >= 0.9 * len(readings)
    image, masks = render(make_scene([make_object("blue", "triangle", "large", "right")], "black"))
    assert classify_shape(masks[0]) == "triangle" and nearest_position(centroid(masks[0])) == "right"
    assert hue_distance(mean_hue(image, masks[0]), 228) < 10


TRAINED_PROMPTS = [
    make_object("red", "circle", "large", "left"),
    make_object("blue", "square", "large", "right"),
    make_object("yellow", "triangle", "large", "top"),
    make_object("green", "square", "large", "bottom"),
]


@pytest.mark.parametrize("model", trained())
def test_the_trained_model_draws_the_asked_colour_at_the_asked_place(registry, model):
    assert registry.catalogue.get(model).path.joinpath("model_index.json").is_file()
    colour_hits = position_hits = total = 0
    for obj in TRAINED_PROMPTS:
        scene = make_scene([obj], "gray")
        settings = GenerationSettings(
            model=model, prompt=scene.caption, steps=12, guidance=3.0, width=64, height=64, seed=0, count=4
        )
        for result in generate(registry, settings):
            checks = check_object(result.image, obj)
            colour_hits += checks["colour"]
            position_hits += checks["position"]
            total += 1
    assert colour_hits / total >= 0.8
    assert position_hits / total >= 0.8


def test_the_world_2_sd3_twin_reads_world_2_words(catalogue):
    """shapes-sd3-2 was resumed from world 1's shapes-sd3 with the vocabulary taught (train
    --resume): its T5 and CLIPs take the words world 1 lacked as whole tokens, not <unk> pieces."""
    path = catalogue.get("shapes-sd3-2").path
    prompt = "a grey square in the center, a red circle in the top left corner"
    t5 = T5Tokenizer.from_pretrained(path, subfolder="tokenizer_3")
    assert t5.unk_token_id not in t5(prompt).input_ids
    assert len(t5.tokenize(prompt)) == len(prompt.replace(",", " ,").split())
    clip = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer")
    assert len(clip.tokenize(prompt)) == len(prompt.replace(",", " ,").split())


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_the_trainer_writes_a_pipeline_the_registry_path_can_load(tmp_path, family, monkeypatch):
    """Trained at three canvas sizes, the steps take them in turn, smallest first, a larger one
    with as many fewer rows as keeps the image tokens a batch (128x64: half, 128: a quarter)."""
    from diffusers import FluxPipeline, StableDiffusion3Pipeline

    from studio.toyworld import train

    shapes = []
    predict = train.predict_velocity

    def recorded(pipe, noisy, *args, **kwargs):
        shapes.append(tuple(noisy.shape))
        return predict(pipe, noisy, *args, **kwargs)

    monkeypatch.setattr(train, "predict_velocity", recorded)
    train.main(
        [
            "--family",
            family,
            "--scenes",
            "32",
            "--vae-steps",
            "2",
            "--transformer-steps",
            "4",
            "--batch-size",
            "8",
            "--sizes",
            "64",
            "128",
            "128x64",
            "--checkpoint-every",
            "0",
            "--grounding-steps",
            "2",
            "--output",
            str(tmp_path / "model"),
        ]
    )
    assert shapes == [(8, 16, 16, 16), (4, 16, 16, 32), (2, 16, 32, 32), (8, 16, 16, 16)]
    from safetensors import safe_open

    with safe_open(tmp_path / "model" / "transformer" / "diffusion_pytorch_model.safetensors", "pt") as weights:
        assert {weights.get_slice(name).get_dtype() for name in weights.keys()} == {"F16"}  # noqa: SIM118 (safe_open is no dict)
    pipeline_class = FluxPipeline if family == "flux" else StableDiffusion3Pipeline
    pipe = pipeline_class.from_pretrained(
        tmp_path / "model", dtype=torch.float32, use_safetensors=True, local_files_only=True
    )
    assert pipe.vae.config.scaling_factor != 1.0  # latent normalisation taken from the data
    image = pipe(
        "a large red circle on the left, gray background",
        height=64,
        width=64,
        num_inference_steps=2,
        max_sequence_length=train.MAX_SEQUENCE_LENGTH,
    ).images[0]
    assert image.size == (64, 64)


def test_resumed_with_the_text_frozen_only_the_transformer_learns(tmp_path):
    """`--resume --text-frozen` (a model learning new canvas sizes keeps its words): the saved text
    encoders are the resumed model's, the transformer has moved."""
    from safetensors.torch import load_file

    from studio.toyworld import train

    common = ["--scenes", "16", "--batch-size", "4", "--checkpoint-every", "0", "--grounding-steps", "1"]
    train.main([*common, "--vae-steps", "1", "--transformer-steps", "1", "--output", str(tmp_path / "a")])
    train.main([*common, "--resume", str(tmp_path / "a"), "--text-frozen", "--sizes", "64", "128",
                "--transformer-steps", "2", "--output", str(tmp_path / "b")])  # fmt: skip

    def weights(model: str, component: str) -> dict[str, torch.Tensor]:
        (file,) = (tmp_path / model / component).glob("*.safetensors")
        return load_file(file)

    for encoder in ("text_encoder", "text_encoder_2"):
        before, after = weights("a", encoder), weights("b", encoder)
        assert all(torch.equal(before[name], after[name]) for name in before)
    before, after = weights("a", "transformer"), weights("b", "transformer")
    assert any(not torch.equal(before[name], after[name]) for name in before)


def test_a_resumed_model_of_an_earlier_vocabulary_learns_the_current_one_keeping_its_words():
    """`train --resume` of a model saved with world 1's tokenizers (the shipped SD3 twin's): its
    text encoders take the current vocabulary, a caption of words it knew encodes exactly as
    before, a synonym starts from the word it means, and a tag it never had is whole words, not
    <unk>."""
    from studio.families import flux
    from studio.toyworld import train

    torch.manual_seed(0)
    pipe = flux.build_pipeline(flux.small_transformer(**flux.TINY_SIZES), offline.small_vae(16), 16, 32)
    old_words = ["a", "red", "blue", "circle", "square", "on", "the", "left", "right", "gray", "centre", ","]
    clip_tokenizer, t5_tokenizer = offline.clip_tokenizer(old_words), offline.t5_tokenizer(old_words)
    pipe.register_modules(
        tokenizer=clip_tokenizer,
        text_encoder=offline.clip_text_encoder(clip_tokenizer, 16),
        tokenizer_2=t5_tokenizer,
        text_encoder_2=offline.t5_text_encoder(t5_tokenizer, 32),
    )
    flow = flux.FAMILY.flow
    known = ["a red circle on the left, a blue square on the right"]
    before = flow.encode_text(pipe, known, 24)

    assert train.adopt_vocabulary(pipe) == ["text_encoder", "text_encoder_2"]

    assert len(pipe.tokenizer_2) == len(offline.t5_tokenizer()) > len(t5_tokenizer)
    after = flow.encode_text(pipe, known, 24)
    assert torch.equal(before.embeds, after.embeds) and torch.equal(before.pooled, after.pooled)
    rows = pipe.text_encoder_2.get_input_embeddings().weight
    ids = pipe.tokenizer_2.convert_tokens_to_ids(["\u2581grey", "\u2581gray", "\u2581middle", "\u2581centre"])
    assert torch.equal(rows[ids[0]], rows[ids[1]]) and torch.equal(rows[ids[2]], rows[ids[3]])
    assert pipe.tokenizer_2.unk_token_id not in pipe.tokenizer_2("a grey square [LEFT] at the top left").input_ids
    assert pipe.text_encoder_2.config.vocab_size == rows.shape[0]
    assert flow.encode_text(pipe, ["a grey square in the middle [RIGHT]"], 24).embeds.isfinite().all()
    assert train.adopt_vocabulary(pipe) == []  # already current: nothing to do


@pytest.mark.parametrize("base", ["shapes-flux-2", "shapes-flux-2-sprint"])
def test_the_controlnet_trainer_moves_the_zero_initialised_outputs(tmp_path, base, monkeypatch):
    """A few steps of the scribble-ControlNet trainer on a shipped world-2 model, copying two of
    its four double blocks and none of its single ones, as the shipped ControlNets do: it saves a
    diffusers ControlNet of that depth whose zero-initialised output layers have started to learn;
    made from the one-step student, it has the student's guidance input (and the sampler reads its
    time as the student's)."""
    from diffusers import FluxControlNetModel

    from studio.toyworld import train, train_controlnet

    student_steps = []
    student_loss = train_controlnet.student_loss

    def counted(*args, **kwargs):
        student_steps.append(1)
        return student_loss(*args, **kwargs)

    monkeypatch.setattr(train_controlnet, "student_loss", counted)
    train_controlnet.main(["--base", str(train.MODELS_DIR / base), "--scenes", "32", "--steps", "2", "--batch-size",
                           "4", "--double-blocks", "2", "--single-blocks", "0", "--output", str(tmp_path)])  # fmt: skip
    trained = FluxControlNetModel.from_pretrained(tmp_path)
    assert trained.config.guidance_embeds == base.endswith("-sprint")
    # The student learns its clean estimate every step; the teacher's ControlNet, flow matching.
    assert len(student_steps) == (2 if base.endswith("-sprint") else 0)
    assert len(trained.transformer_blocks) == 2 and len(trained.single_transformer_blocks) == 0
    assert all(block.weight.abs().sum() > 0 for block in trained.controlnet_blocks)
    assert trained.controlnet_x_embedder.weight.abs().sum() > 0


def test_the_in_context_trainer_writes_a_lora_the_base_takes(tmp_path):
    """A few steps on the shapes-world 2 checkpoint: the LoRA is fp16 safetensors that loads into
    the base, its training prompts are the sets' own (each panel's words a span), within the base's
    text length, and the T5 taught the panel tags first is saved where asked."""
    from diffusers import FluxPipeline
    from safetensors import safe_open
    from transformers import T5EncoderModel, T5Tokenizer

    from studio.toyworld import train, train_incontext

    base = train.MODELS_DIR / "shapes-flux-2"
    output = tmp_path / "lora.safetensors"
    encoder = tmp_path / "t5"
    options = ["--steps", "3", "--examples", "4", "--batch-size", "2", "--ground-panels", "2"]
    options += ["--held-references", "0.5"]
    train_incontext.main(["--base", str(base), *options, "--encoder-output", str(encoder), "--output", str(output)])
    # The panel-grounded T5 is saved where asked, fp16, and is not the base's any more.
    grounded = T5EncoderModel.from_pretrained(encoder)
    original = T5EncoderModel.from_pretrained(base, subfolder="text_encoder_2")
    assert grounded.dtype == torch.float16
    assert any(not torch.equal(a, b) for a, b in zip(grounded.state_dict().values(), original.state_dict().values()))
    with safe_open(output, "pt") as weights:
        names = list(weights.keys())
        assert names and {weights.get_slice(name).get_dtype() for name in names} == {"F16"}
    pipe = FluxPipeline.from_pretrained(base)
    pipe.load_lora_weights(str(output), adapter_name="sets")
    assert "sets" in {name for names in pipe.get_list_adapters().values() for name in names}
    tokenizer = T5Tokenizer.from_pretrained(base, subfolder="tokenizer_2")
    rng = random.Random(0)
    for image_set in train_incontext.shapes_sets("shapes-flux-2"):
        canvas, caption = train_incontext.example(image_set, rng)
        prompt = caption.text
        assert canvas.size == (64 * image_set.columns, 64 * image_set.rows)
        assert prompt.startswith(image_set.intro) and all(tag in prompt for tag in image_set.tags)
        assert len(tokenizer(prompt).input_ids) <= train.MAX_SEQUENCE_LENGTH
        # Each panel's span is its tag and its text, in panel order, and nothing of the intro.
        pieces = [prompt[start:end] for start, end, _ in caption.spans]
        assert [owner for *_, owner in caption.spans] == list(range(image_set.count))
        assert all(piece.startswith(tag + " ") for piece, tag in zip(pieces, image_set.tags))
        assert prompt.endswith(pieces[-1]) and image_set.intro not in "".join(pieces)


def test_held_reference_rows_hold_whole_cells_and_never_every_panel():
    """`train_incontext --held-references SHARE`: about that share of rows hold a random non-empty
    proper subset of the panels (whole cells of the latents); the other rows none."""
    from studio.methods.incontext import cells_latent_mask
    from studio.toyworld.train_incontext import held_cells

    latents = torch.zeros(400, 16, 32, 32)
    generator = torch.Generator().manual_seed(0)
    assert not held_cells(2, 2, latents, 0.0, generator).any()
    assert not held_cells(1, 1, latents, 1.0, generator).any()  # a lone panel is never given
    held = held_cells(2, 2, latents, 0.5, generator)
    cells = [cells_latent_mask(2, 2, 32, 32, [index]) for index in range(4)]
    counts = []
    for row in held[:, 0]:
        given = [bool(row[cell].all()) for cell in cells]
        assert all(row[cell].all() or not row[cell].any() for cell in cells)  # whole cells only
        counts.append(sum(given))
    assert max(counts) == 3 and 0.4 < np.mean([count > 0 for count in counts]) < 0.6
    assert {1, 2, 3} <= set(counts)


def test_the_evaluation_asks_held_out_combinations_and_two_objects_at_their_own_places():
    from studio.toyworld import evaluate
    from studio.toyworld.scene import POSITION_PHRASES, overlap

    singles = evaluate.single_object_scenes()
    assert len(singles) == len(HELD_OUT) * len(SIZES) * len(BACKGROUNDS)
    assert {(s.objects[0].colour, s.objects[0].shape, s.objects[0].position) for s in singles} == set(HELD_OUT)
    for scene in evaluate.two_object_scenes(16):
        first, second = scene.objects
        assert first.colour != second.colour and first.position != second.position
        assert overlap(first, second) <= 0.1
        for obj in (first, second):
            assert f"{obj.colour} {obj.shape} {POSITION_PHRASES[obj.position]}" in scene.caption


def test_position_by_place_reads_each_image_against_its_own_scene():
    from studio.toyworld import evaluate

    places = list(POSITIONS)
    scenes = [make_scene([make_object("red", "circle", "medium", place)], "gray") for place in places]
    drawn = [render(scene)[0] for scene in scenes]
    # Two seeds per scene, in the order evaluate() makes them.
    assert evaluate.position_by_place(scenes, [image for image in drawn for _ in range(2)], 2) == dict.fromkeys(
        places, 1.0
    )
    # Every image drawn at the next scene's place: found, but nowhere it was asked.
    shifted = drawn[1:] + drawn[:1]
    assert evaluate.position_by_place(scenes, shifted, 1) == dict.fromkeys(places, 0.0)


def test_the_world_2_model_tells_a_words_object_apart_and_takes_colour_from_its_tokens(registry):
    """shapes-flux-2 was trained with word grounding and pooled dropout: its T5 gives the red of the
    first object another vector than the red of the second (world 1's T5, trained without, does not),
    and with one caption's tokens and another's pooled vector it draws the tokens' colour."""
    from studio.toyworld import evaluate

    first = "a red circle on the left and a blue square on the right"
    second = "a blue circle on the left and a red square on the right"
    with registry.use("shapes-flux-2") as pipe:
        assert evaluate.word_context(pipe, "red", first, second) < 0.8
        assert evaluate.word_context(pipe, "red", first, first) == pytest.approx(1.0)
    with registry.use("shapes-flux") as pipe:
        assert evaluate.word_context(pipe, "red", first, second) > 0.99
    source = evaluate.colour_source(registry, "shapes-flux-2", seeds=1, guidance=3.0, steps=12)
    assert source["tokens"] >= 2 / 3 and source["pooled"] == 0


def test_the_world_2_t5_tells_which_panel_of_a_set_a_word_belongs_to(registry):
    """shapes-flux-2's T5 was taught the In-Context LoRA panel tags (train_incontext --ground-panels):
    "red" under [LEFT] and "red" under [RIGHT] get different vectors, so a LoRA can draw each
    panel's own colour; the same prompt gives the same vector."""
    from studio.methods.incontext import load_sets
    from studio.toyworld import evaluate

    image_set = load_sets()["shapes-recolour"]
    red, blue = (
        "a large red triangle in the centre, gray background",
        "a large blue triangle in the centre, gray background",
    )
    left = image_set.prompt(image_set.caption, [red, blue])
    right = image_set.prompt(image_set.caption, [blue, red])
    with registry.use("shapes-flux-2") as pipe:
        assert evaluate.word_context(pipe, "red", left, right) < 0.8
        assert evaluate.word_context(pipe, "red", left, left) == pytest.approx(1.0)


def test_the_evaluation_scores_what_the_model_drew(registry):
    from studio.toyworld import evaluate

    scenes = evaluate.single_object_scenes()[:3]
    samples: list = []
    scores = evaluate.evaluate(registry, "shapes-flux", scenes, seeds=2, guidance=3.0, steps=6, samples=samples)
    assert scores["images"] == len(samples) == 6
    checks = [check_object(image, scenes[index // 2].objects[0]) for index, image in enumerate(samples)]
    for name in ("colour", "position", "size", "shape"):
        assert scores[name] == sum(check[name] for check in checks) / 6
    assert scores["all"] == sum(all(check.values()) for check in checks) / 6


def test_a_dropped_pooled_vector_is_the_empty_prompts_and_the_tokens_keep_the_caption():
    """The trainer's pooled dropout: a dropped row is exactly the model called with the caption's
    tokens and the empty prompt's pooled vector; a kept row is the plain call."""
    import dataclasses

    from diffusers import FluxPipeline

    from studio.families import flux
    from studio.toyworld import train

    pipe = FluxPipeline.from_pretrained(train.MODELS_DIR / "shapes-flux-2", dtype=torch.float32)
    texts = ["a large red circle on the left, gray background", "a small blue square at the top right"]
    noisy = torch.randn(2, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.8, 0.8])
    with torch.no_grad():
        plain = train.predict_velocity(pipe, noisy, sigma, texts)
        dropped = train.predict_velocity(pipe, noisy, sigma, texts, torch.tensor([True, False]))
        tokens = flux.encode_text(pipe, texts[:1], train.MAX_SEQUENCE_LENGTH)
        empty = flux.encode_text(pipe, [""], train.MAX_SEQUENCE_LENGTH).pooled
        by_hand = flux.velocity(pipe, noisy[:1], sigma[:1], dataclasses.replace(tokens, pooled=empty), None)
    torch.testing.assert_close(dropped[1], plain[1])
    torch.testing.assert_close(dropped[:1], by_hand)
    assert (dropped[0] - plain[0]).abs().mean() > 1e-3
