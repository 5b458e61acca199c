import argparse

import numpy as np
import pytest
from gradio_client import handle_file
from PIL import Image

from studio.cli import create_studio, main, parse_args

COLOUR_DEFAULTS = {
    "model": "shapes-flux", "source_mode": "Generate it from the source prompt", "image": None,
    "source_prompt": "a large red circle on the left, gray background",
    "target_prompt": "a large blue circle on the left, gray background", "word": "circle", "intensity": 1.0,
    "steps": 8, "guidance": 3.0, "width": 64, "height": 64, "seed": 3, "threshold": 0.1,
}  # fmt: skip
LAYOUT_BOXES = {
    "headers": ["caption", "x1", "y1", "x2", "y2"],
    "data": [
        ["a large red circle on the left, gray background", 0.0, 0.15, 0.5, 0.85],
        ["a large blue square on the right, gray background", 0.5, 0.15, 1.0, 0.85],
    ],
}
LAYOUT_DEFAULTS = {
    "model": "shapes-flux",
    "caption": "a large red circle on the left and a large blue square on the right, gray background",
    "boxes": LAYOUT_BOXES, "steps": 8, "guidance": 3.0, "width": 64, "height": 64, "seed": 0, "inject_steps": 4,
    "block_stride": 1, "base_ratio": 0.2, "with_boxes": True, "method": "regional", "grounding_fraction": 0.3,
}  # fmt: skip


def colour_edit_call(client, **given):
    """/colour_edit with the defaults above changed by `given` (in the endpoint's order)."""
    return client.predict(*{**COLOUR_DEFAULTS, **given}.values(), api_name="/colour_edit")


def live_call(client, canvas, **given):
    """/live_frame on `canvas` (a Sketchpad value) with the defaults changed by `given`."""
    defaults = {"target": "tiny-flux-schnell|scribble|2", "prompt": "a large red circle, gray background",
                "source": "sketch", "canvas": canvas, "photo": None, "canny_low": 100, "canny_high": 200, "seed": 0,
                "scale": 1.0, "start": 0.0, "end": 1.0, "steps": 2}  # fmt: skip
    return client.predict(*(defaults | given).values(), api_name="/live_frame")


def layout_call(client, **given):
    return client.predict(*{**LAYOUT_DEFAULTS, **given}.values(), api_name="/layout_generate")


def value(output):
    """An output's value, whether the handler returned it plain or as a gr.update."""
    return output["value"] if isinstance(output, dict) else output


def test_generate_endpoint_returns_images_with_their_settings(running_app):
    client, output_dir = running_app
    asked = ("tiny-flux-dev", "a large red circle on the left, gray background", "", 3, 3.5, 64, 96, 42)
    gallery, info = client.predict(*asked, 2, api_name="/generate")
    assert len(gallery) == 2
    newest, oldest = (Image.open(item["image"]) for item in gallery)
    assert newest.size == (64, 96) and oldest.size == (64, 96)
    assert "seed 42" in gallery[1]["caption"] and "seed 43" in gallery[0]["caption"]
    assert "tiny-flux-dev" in info and "3 steps" in info and "64×96" in info
    assert '"seed": 42' in oldest.text["dit-studio"]
    assert len(list(output_dir.glob("*.png"))) == 2

    # Reuse gives back what was asked, for one image, at the speed it ran with.
    reused = [value(v) for v in client.predict(handle_file(gallery[1]["image"]), api_name="/reuse_settings")]
    assert reused == [*asked, 1, "off"]


def test_the_image_shows_while_it_forms(running_app):
    client, output_dir = running_app
    job = client.submit("tiny-flux-dev", "a red circle", "", 12, 3.5, 64, 64, 0, 1, api_name="/generate")
    job.result(timeout=120)
    captions = [gallery[0]["caption"] for gallery, _ in job.outputs() if gallery]
    forming = [caption for caption in captions if caption.startswith("forming")]
    assert forming == [f"forming: step {step} of 12" for step in (2, 4, 6, 8, 10, 12)]
    assert not captions[-1].startswith("forming") and len(list(output_dir.glob("*.png"))) == 1


def test_model_defaults_follow_the_picked_model(running_app):
    client, _ = running_app
    outputs = client.predict("tiny-flux-schnell", api_name="/model_defaults")
    steps, guidance, width, height, negative, aspect, speed = outputs
    assert [value(v) for v in (steps, guidance, width, height, aspect)] == [2, 0.0, 64, 64, "1:1"]
    # FLUX takes diffusers' caches; SD3 has none (off only).
    assert [name for _, name in speed["choices"]] == ["off", "first-block-cache", "taylorseer",
                                                      "pyramid-attention-broadcast"]  # fmt: skip
    sd3 = client.predict("tiny-sd3", api_name="/model_defaults")[-1]
    assert [name for _, name in sd3["choices"]] == ["off"]
    assert guidance["visible"] is False and negative["visible"] is False and steps["maximum"] == 4
    width, height = client.predict("flux-dev", "16:9", api_name="/aspect_size")
    assert (width, height) == (1360, 768)


def test_the_memory_plan_shows_before_the_load_and_a_policy_can_be_picked(running_app):
    client, _ = running_app
    with pytest.raises(Exception, match="'all-offloaded' cannot run here: offloading moves weights"):
        client.predict("tiny-sana", "all-offloaded", api_name="/memory_policy")
    line = client.predict("tiny-sana", "resident", api_name="/memory_policy")
    assert line.startswith("Memory: Tiny SANA") and "everything on the device" in line
    assert line.endswith("(chosen by hand)")
    assert not client.predict("tiny-sana", "auto", api_name="/memory_policy").endswith("(chosen by hand)")


def test_bad_input_gives_a_message_and_the_server_stays_up(running_app):
    client, _ = running_app
    with pytest.raises(Exception, match="Write a prompt first"):
        client.predict("tiny-flux-dev", "  ", "", 2, 3.5, 64, 64, 0, 1, api_name="/generate")
    with pytest.raises(Exception, match="not in the local cache and the studio is offline"):
        client.predict("flux-dev", "a cat", "", 2, 3.5, 1024, 1024, 0, 1, api_name="/generate")
    gallery, _ = client.predict("tiny-flux-dev", "a red circle", "", 2, 3.5, 64, 64, 0, 1, api_name="/generate")
    assert len(gallery) == 1


@pytest.fixture
def launched(monkeypatch) -> dict:
    """What `main` would launch the studio with (no server, no internet)."""
    options: dict = {}

    class FakeDemo:
        def launch(self, **kwargs):
            options.update(kwargs)

    monkeypatch.setattr("studio.cli.internet_reachable", lambda *a, **k: False)
    monkeypatch.setattr("tabs.app.build_app", lambda studio, mcp=False: FakeDemo())
    return options


def test_share_without_internet_says_so_in_one_line_and_serves_locally(launched, capsys):
    main(["--share", "--auth", "ann:pw", "--no-browser", "--port", "7999", "--default-model", "tiny-sd3"])
    lines = [line for line in capsys.readouterr().out.splitlines() if "--share" in line]
    assert lines == [
        "--share: no public link, the internet is not reachable from here; "
        "the studio is still served at http://127.0.0.1:7999"
    ]
    assert launched["share"] is False and launched["server_port"] == 7999
    assert launched["auth"] == [("ann", "pw")] and launched["max_file_size"]


def test_mcp_is_off_by_default_and_on_a_shared_studio_only_behind_a_login(launched, monkeypatch):
    monkeypatch.delenv("DIT_STUDIO_AUTH", raising=False)
    main(["--no-browser", "--default-model", "tiny-sd3"])
    assert launched["mcp_server"] is False
    launched.clear()
    with pytest.raises(SystemExit, match="--mcp on a shared studio lets any program run its tools: give --auth"):
        main(["--mcp", "--shared", "--no-browser", "--default-model", "tiny-sd3"])
    assert not launched
    main(["--mcp", "--shared", "--auth", "ann:pw", "--no-browser", "--default-model", "tiny-sd3"])
    assert launched["mcp_server"] is True and launched["auth"] == [("ann", "pw")]


def test_share_needs_a_login_unless_said_otherwise(launched, monkeypatch, tmp_path):
    monkeypatch.delenv("DIT_STUDIO_AUTH", raising=False)
    with pytest.raises(SystemExit, match="--share makes the studio public: give --auth"):
        main(["--share", "--no-browser", "--default-model", "tiny-sd3"])
    assert not launched
    main(["--share", "--share-without-auth", "--no-browser", "--default-model", "tiny-sd3"])
    assert launched["auth"] is None
    logins = tmp_path / "logins"
    logins.write_text("# the team\nann:first pass\n\nbob:x:y\n")
    monkeypatch.setenv("DIT_STUDIO_AUTH", "space:secret")
    main(["--auth-file", str(logins), "--auth", "cy:z", "--no-browser", "--default-model", "tiny-sd3"])
    assert launched["auth"] == [("cy", "z"), ("ann", "first pass"), ("bob", "x:y"), ("space", "secret")]
    logins.write_text("no colon here\n")
    with pytest.raises(SystemExit, match="login 1 is not USER:PASSWORD"):
        main(["--auth-file", str(logins), "--no-browser", "--default-model", "tiny-sd3"])


def test_cli_flags_and_a_bad_default_model(capsys):
    args = parse_args(
        [
            "--host",
            "0.0.0.0",
            "--port",
            "8000",
            "--device",
            "cpu",
            "--dtype",
            "fp32",
            "--memory-budget",
            "12",
            "--default-model",
            "tiny-sana",
        ]
    )
    assert isinstance(args, argparse.Namespace) and args.memory_budget == 12.0
    studio = create_studio(args)
    assert studio.registry.budget_bytes == 12 * 1024**3 and studio.default_model == "tiny-sana"
    with pytest.raises(SystemExit, match="no model 'nope'"):
        main(["--default-model", "nope", "--no-browser"])
    # A memory policy is checked against the device at start, not at the first load.
    with pytest.raises(SystemExit, match="--memory-policy all-offloaded cannot run on cpu: offloading"):
        main(["--device", "cpu", "--memory-policy", "all-offloaded", "--no-browser"])
    forced = create_studio(parse_args(["--device", "cpu", "--memory-policy", "resident"]))
    assert forced.registry.memory_plan("tiny-sana").describe().endswith("(chosen by hand)")


def test_colour_edit_endpoint_recolours_and_saves(running_app):
    client, output_dir = running_app
    source = "a large red circle on the left, gray background"
    target = client.predict(source, "circle", "blue", api_name="/colour_target_prompt")
    assert value(target) == "a large blue circle on the left, gray background"
    compare, mask_view, result, settings = colour_edit_call(client)
    before, after = (Image.open(item) if isinstance(item, str) else Image.open(item["path"]) for item in compare)
    assert before.size == after.size == (64, 64) and Image.open(mask_view).size == (64, 64)
    # The circle that was red is blue, in the same place and shape; no red is left.
    from studio.toyworld.measure import colour_mask, iou, largest_blob

    red, blue = largest_blob(colour_mask(before, "red")), largest_blob(colour_mask(after, "blue"))
    assert red.sum() > 300 and iou(red, blue) >= 0.8 and not colour_mask(after, "red").any()
    saved = Image.open(result)
    assert '"method": "ColorCtrl"' in saved.text["dit-studio"] and settings["seed"] == 3
    assert any(output_dir.glob("*colour-shapes-flux-3-*.png"))

    with pytest.raises(Exception, match="Upload the image"):
        colour_edit_call(client, source_mode="Edit an image (inverted)")
    with pytest.raises(Exception, match="'hexagon' is not in the source prompt"):
        colour_edit_call(client, word="hexagon")
    compare, *_ = colour_edit_call(client, steps=2)
    assert len(compare) == 2  # the server is still up


def test_colour_edit_of_an_uploaded_image(running_app, tmp_path):
    client, _ = running_app
    picture = tmp_path / "upload.png"
    from studio.toyworld.scene import make_object, make_scene, render

    render(make_scene([make_object("red", "square", "large", "centre")], "gray"), 64)[0].save(picture)
    _compare, _, result, settings = client.predict(
        "shapes-sd3",
        "Edit an image (inverted)",
        handle_file(str(picture)),
        "a large red square in the centre, gray background",
        "a large green square in the centre, gray background",
        "square",
        1.0,
        8,
        1.0,
        64,
        64,
        0,
        0.1,
        api_name="/colour_edit",
    )
    assert settings["inversion_steps"] == 8
    assert Image.open(result).size == (64, 64)


def test_layout_endpoint_generates_and_checks_boxes(running_app):
    client, output_dir = running_app
    boxes = LAYOUT_BOXES
    result, settings = layout_call(client)
    assert Image.open(result).size == (512, 512)  # shown enlarged with its boxes drawn
    assert settings["method"] == "regional" and len(settings["regions"]) == 2
    saved = next(output_dir.glob("*layout-shapes-flux-0-*.png"))
    assert Image.open(saved).size == (64, 64) and '"regions"' in Image.open(saved).text["dit-studio"]
    empty_caption = {"headers": boxes["headers"], "data": [["", 0.1, 0.1, 0.5, 0.5]]}
    with pytest.raises(Exception, match="Box 1 has no caption"):
        layout_call(client, boxes=empty_caption)
    flat = {"headers": boxes["headers"], "data": [["a red circle", 0.1, 0.4, 0.5, 0.4]]}
    with pytest.raises(Exception, match="no area"):
        layout_call(client, boxes=flat)
    result, settings = layout_call(
        client, model="tiny-pixart-sigma", steps=2, guidance=4.5, inject_steps=1, with_boxes=False
    )
    assert Image.open(result).size == (64, 64) and settings["model"] == "tiny-pixart-sigma"
    result, settings = layout_call(
        client, model="shapes-sd3-siamlayout", steps=4, with_boxes=False, method="siamlayout"
    )
    assert Image.open(result).size == (64, 64) and settings["method_name"] == "CreatiLayout SiamLayout (SD3)"
    assert settings["grounding_fraction"] == 0.3
    with pytest.raises(Exception, match="SiamLayout branches"):
        layout_call(client, steps=4, with_boxes=False, method="siamlayout")
    eleven = {"headers": boxes["headers"], "data": [["a red circle", 0.1, 0.1, 0.5, 0.5]] * 11}
    with pytest.raises(Exception, match="At most 10 boxes"):
        layout_call(client, boxes=eleven)


def test_lora_upload_and_generate_with_it(running_app, tmp_path):
    from test_lora import make_lora

    from studio.catalogue import Catalogue
    from studio.registry import Registry

    client, _ = running_app
    lora = make_lora(Registry(Catalogue.load(), device="cpu"), tmp_path / "style.safetensors", 1)
    choices = client.predict("tiny-flux-dev", handle_file(str(lora)), "", "style", api_name="/add_adapter")
    assert value(choices) == ["style"]
    arguments = ("tiny-flux-dev", "a red circle", "", 2, 3.5, 64, 64, 0, 1)
    plain, _ = client.predict(*arguments, [], 1.0, api_name="/generate")
    styled, _ = client.predict(*arguments, ["style"], 1.0, api_name="/generate")
    plain_pixels, styled_pixels = (np.asarray(Image.open(result[0]["image"]), float) for result in (plain, styled))
    assert np.abs(plain_pixels - styled_pixels).mean() > 1

    pickled = tmp_path / "evil.safetensors"
    pickled.write_bytes(b"\x80\x04not a safetensors header")
    with pytest.raises(Exception, match="not a safetensors file"):
        client.predict("tiny-flux-dev", handle_file(str(pickled)), "", "evil", api_name="/add_adapter")
    with pytest.raises(Exception, match="no LoRA loader for PixArt"):
        client.predict("tiny-pixart-sigma", handle_file(str(lora)), "", "style", api_name="/add_adapter")
    with pytest.raises(Exception, match="Cannot fetch style.safetensors from someone/styles"):
        client.predict("tiny-flux-dev", None, "someone/styles style.safetensors", "hub-style", api_name="/add_adapter")

    # The same name again with other weights: swapped in, and the image follows the new weights.
    other = make_lora(Registry(Catalogue.load(), device="cpu"), tmp_path / "other.safetensors", 2)
    assert value(client.predict("tiny-flux-dev", handle_file(str(other)), "", "style", api_name="/add_adapter")) == [
        "style"
    ]
    restyled, _ = client.predict(*arguments, ["style"], 1.0, api_name="/generate")
    restyled_pixels = np.asarray(Image.open(restyled[0]["image"]), float)
    assert np.abs(restyled_pixels - styled_pixels).mean() > 1
    assert value(client.predict("tiny-flux-dev", ["style"], api_name="/remove_adapter")) == []
    with pytest.raises(Exception, match="not in the list of choices"):  # the picker no longer offers it
        client.predict(*arguments, ["style"], 1.0, api_name="/generate")
    with pytest.raises(Exception, match="Pick the adapters to remove"):
        client.predict("tiny-flux-dev", [], api_name="/remove_adapter")


def test_image_set_endpoint_generates_panels_and_a_zip(running_app, tmp_path):
    import zipfile

    client, _output_dir = running_app
    prompt = client.predict(
        "couple-profile", "two shapes", "a red circle", "a blue square", "", "", api_name="/image_set_prompt"
    )
    assert value(prompt) == "This two-part image portrays two shapes [LEFT] a red circle [RIGHT] a blue square"
    reference = tmp_path / "left.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(reference)
    whole, panels, archive, settings = client.predict(
        "couple-profile",
        "tiny-flux-dev",
        True,
        [],
        1.0,
        value(prompt),
        2,
        3.5,
        128,
        64,
        0,
        handle_file(str(reference)),
        None,
        None,
        None,
        api_name="/image_set_generate",
    )
    assert Image.open(whole).size == (128, 64) and len(panels) == 2
    left = np.asarray(Image.open(panels[0]["image"]).convert("RGB"))
    assert (left == (200, 30, 30)).all()  # the reference panel comes back unchanged
    assert settings["reference_panels"] == [0] and settings["adapters"] == []
    with zipfile.ZipFile(archive) as bundle:
        assert len(bundle.namelist()) == 2


def test_live_frame_endpoint_draws_from_a_sketch(running_app, tmp_path):
    client, _output_dir = running_app
    sketch = Image.new("RGBA", (128, 128), (0, 0, 0, 0))
    for x in range(20, 100):
        for y in range(60, 66):
            sketch.putpixel((x, y), (0, 0, 0, 255))
    sketch_path = tmp_path / "sketch.png"
    sketch.save(sketch_path)
    canvas = {"background": None, "layers": [], "composite": handle_file(str(sketch_path))}
    image, control, latency = live_call(client, canvas)
    result = Image.open(value(image))
    assert result.size == (320, 320)  # the 64x64 frame, enlarged for the eye
    control_image = np.asarray(Image.open(value(control)).convert("L").resize((64, 64)))
    assert control_image[31, 32] > 200 and control_image[5, 5] < 50  # the stroke, white on black
    assert " ms** per frame" in value(latency) and "prompt encoded" in value(latency)
    _, _, again = live_call(client, canvas)
    assert "prompt from cache" in value(again)
    with pytest.raises(Exception, match="Write a prompt first"):
        live_call(client, canvas, prompt=" ")
    # The steps slider ends at the default target's 4 (the distilled student's), so Gradio's own
    # bound says it before the studio's range check would.
    with pytest.raises(Exception, match="Value 24 is greater than maximum value 4"):
        live_call(client, canvas, prompt="a red circle", steps=24)


def test_a_blank_canvas_is_no_drawing():
    """Before the first stroke, and once cleared (the canvas then sends opaque white), no frame runs."""
    from tabs.live import strokes_of

    assert strokes_of({"composite": Image.new("RGBA", (8, 8), (255, 255, 255, 255))}) is None
    assert strokes_of({"composite": Image.new("RGBA", (8, 8), (0, 0, 0, 0))}) is None
    assert strokes_of(None) is None
    drawn = Image.new("RGBA", (8, 8), (255, 255, 255, 255))
    drawn.putpixel((3, 3), (0, 0, 0, 255))
    assert strokes_of({"composite": drawn}) is drawn


def test_every_handler_in_the_gpu_slot_is_a_gpu_task_and_gets_its_request(tmp_path):
    """ZeroGPU gives the GPU only to decorated handlers; Gradio gives a handler its request and
    progress only through parameters before a *values one (after it they stay at their defaults:
    cancel keyed to no session, a progress bar that never moves)."""
    import inspect

    import gradio as gr

    from studio.cli import create_studio, parse_args
    from studio.gpu import GPU_MARK
    from tabs.app import build_app

    demo = build_app(create_studio(parse_args(["--offline", "--output-dir", str(tmp_path)])))
    in_slot = [block.fn for block in demo.fns.values() if block.concurrency_id == "gpu"]
    assert len(in_slot) >= 6
    assert [fn.__qualname__ for fn in in_slot if not hasattr(fn, GPU_MARK)] == []
    for block in demo.fns.values():
        if block.fn is None:
            continue
        parameters = list(inspect.signature(block.fn).parameters.values())
        variadic = [i for i, p in enumerate(parameters) if p.kind is p.VAR_POSITIONAL]
        special = [
            i
            for i, p in enumerate(parameters)
            if isinstance(p.default, gr.Progress) or p.annotation in (gr.Request, "gr.Request", "gr.Request | None")
        ]
        assert not variadic or all(i < variadic[0] for i in special), block.fn.__qualname__


def test_cancel_reaches_every_running_job_of_its_session_and_no_other():
    from studio.context import Cancellations

    switches = Cancellations()
    with switches.job("ann") as first, switches.job("ann") as second, switches.job("bob") as other:
        assert switches.running() == 3
        assert switches.cancel("ann")
        assert first.is_set() and second.is_set() and not other.is_set()
    assert switches.running() == 0  # a finished job's switch leaves with it
    assert not switches.cancel("ann")  # nothing runs: a later job starts unswitched
    with switches.job("ann") as later:
        assert not later.is_set()


def test_a_size_far_from_the_models_own_is_warned_about(monkeypatch, tmp_path):
    import gradio as gr

    from studio.generation import GenerationSettings
    from tabs import common

    said: list[str] = []
    monkeypatch.setattr(gr, "Warning", said.append)
    studio = create_studio(parse_args(["--offline", "--output-dir", str(tmp_path)]))
    for width, height in ((64, 64), (96, 96), (512, 512), (16, 16), ("wide", 64)):
        common.warn_if_far_from_native_size(
            studio, GenerationSettings(model="shapes-flux", prompt="x", width=width, height=height)
        )
    assert len(said) == 2 and "512×512" in said[0] and "16×16" in said[1]


def test_drag_edit_endpoint_moves_a_painted_shape(running_app, tmp_path):
    """Regions and drags as plain data: a mask image and [kind, points, angle, factor] lists."""
    client, output_dir = running_app
    from studio.toyworld.measure import centroid, colour_mask, largest_blob

    mask = np.zeros((64, 64, 4), np.uint8)
    mask[18:46, 2:30, 3] = 255  # painted where the shapes model draws "on the left"
    path = tmp_path / "regions.png"
    Image.fromarray(mask).save(path)
    prompt = "a large red square on the left, gray background"
    drags = [["move", [[16, 32], [39, 32]], 0, 1]]
    fields = [prompt, "fast", 25, 3.0, 64, 64, 0, 6, 50, 20, 1000.0, 0.3, 0.4]
    compare, result, settings = client.predict(
        "shapes-flux", None, handle_file(str(path)), drags, *fields, api_name="/drag_edit"
    )
    before, after = (Image.open(item) if isinstance(item, str) else Image.open(item["path"]) for item in compare)
    start, end = (centroid(largest_blob(colour_mask(image, "red"))) for image in (before, after))
    assert start is not None and end is not None and end[0] - start[0] > 0.25
    assert settings["drags"] == [["move", [[16.0, 32.0], [39.0, 32.0]], 0.0, 1.0]]
    assert '"method": "drag (fast)"' in Image.open(result).text["dit-studio"]
    assert any(output_dir.glob("*drag-shapes-flux-0-*.png"))
    with pytest.raises(Exception, match="outside every painted region"):
        client.predict("shapes-flux", None, handle_file(str(path)), [["move", [[60, 5], [30, 5]], 0, 1]], *fields,
                       api_name="/drag_edit")  # fmt: skip
    with pytest.raises(Exception, match="Paint the region"):
        client.predict("shapes-flux", None, None, drags, *fields, api_name="/drag_edit")
    # The result's PNG restores the whole edit: settings, drags, the painted region, the source.
    restored = client.predict(handle_file(result), api_name="/drag_reuse")
    model, mode, _, restored_prompt, restored_mode, *rest = restored
    editor, _, restored_drags = rest[-3:]  # the session's drag states are not the API's
    assert (model, restored_prompt, restored_mode) == ("shapes-flux", prompt, "fast")
    assert mode.startswith("Generate") and restored_drags == [["move", [[16.0, 32.0], [39.0, 32.0]], 0.0, 1.0]]
    layer = np.asarray(
        Image.open(editor["layers"][0]["path"] if isinstance(editor["layers"][0], dict) else editor["layers"][0])
    )
    assert np.array_equal(layer[..., 3] > 127, mask[..., 3] > 127)
    background = Image.open(
        editor["background"]["path"] if isinstance(editor["background"], dict) else editor["background"]
    )
    assert np.array_equal(np.asarray(background.convert("RGB")), np.asarray(before.convert("RGB")))
    from studio.metadata import save_image

    other = save_image(Image.new("RGB", (64, 64)), {"method": "ColorCtrl", "model": "shapes-flux"}, tmp_path, "x")
    with pytest.raises(Exception, match="not a drag result"):
        client.predict(handle_file(str(other)), api_name="/drag_reuse")


def test_multi_prompt_video_endpoint_writes_a_playable_mp4_and_extends_it(running_app):
    """Two prompts through /multi_prompt_video: an mp4 whose frames, rate and size read back, a
    strip, the settings PNG; /video_extend continues it; bad tables are one sentence."""
    from studio.video_io import read_video

    client, output_dir = running_app
    table = {
        "headers": ["Prompt", "Seconds (blank: one segment)"],
        "data": [["a red circle", None], ["a blue square", None]],
    }
    fields = [4, 6.0, 64, 64, 3, 8, 1, 0.69, True, "", 0.3, 0]
    video, _, strip, png, settings = client.predict(
        "tiny-cogvideox", table, "seconds", *fields, api_name="/multi_prompt_video"
    )
    path = video["video"] if isinstance(video, dict) else video
    frames, rate = read_video(path)
    assert frames.shape[1:] == (64, 64, 3) and rate == 8.0
    assert len(frames) == settings["frames"] and settings["segments"] == 3
    assert settings["prompts"] == ["a red circle", "a blue square"]
    assert len(strip) == 12
    assert '"method": "DiTCtrl"' in Image.open(png).text["dit-studio"]
    assert any(output_dir.glob("*video-tiny-cogvideox-3-*.mp4"))
    longer, *_ = client.predict(
        "tiny-cogvideox", table, "seconds", handle_file(path), *fields, api_name="/video_extend"
    )
    extended, _ = read_video(longer["video"] if isinstance(longer, dict) else longer)
    assert len(extended) > len(frames)
    empty_row = {"headers": table["headers"], "data": [["a red circle", None], ["", None]]}
    with pytest.raises(Exception, match="Row 2 has no prompt"):
        client.predict("tiny-cogvideox", empty_row, "seconds", *fields, api_name="/multi_prompt_video")
    with pytest.raises(Exception, match="a frame count is a whole number"):
        frames_table = {"headers": table["headers"], "data": [["a red circle", 12.5]]}
        client.predict("tiny-cogvideox", frames_table, "frames", *fields, api_name="/multi_prompt_video")
    with pytest.raises(Exception, match="Make a video first"):
        client.predict("tiny-cogvideox", table, "seconds", None, *fields, api_name="/video_extend")


def test_a_history_result_s_settings_go_back_to_text_to_image(running_app):
    """History → "Reuse its settings in Text to image": the picked result's model, prompt and
    sampling fill the text-to-image tab; a name that is not the session's own is refused."""
    client, output_dir = running_app
    client.predict("tiny-flux-dev", "a blue square", "", 3, 2.5, 64, 64, 11, 1, api_name="/generate")
    name = next(output_dir.glob("*tiny-flux-dev-11-*.png")).name
    filled = client.predict(name, api_name="/history_reuse")
    # Components updated with more than a value (a slider's range) come as updates.
    model, prompt, _, steps, guidance, width, height, seed, count, _ = (
        value["value"] if isinstance(value, dict) else value for value in filled
    )
    assert (model, prompt, steps, guidance, width, height, seed, count) == (
        "tiny-flux-dev", "a blue square", 3, 2.5, 64, 64, 11, 1,
    )  # fmt: skip
    for hostile in ("../secret.png", "/etc/passwd", "missing.png"):
        with pytest.raises(Exception, match="Pick one of your results|not in your history"):
            client.predict(hostile, api_name="/history_reuse")


def test_a_history_image_is_sent_to_another_tab(running_app):
    """History → "Send the picked image to": the result becomes the try-on's person, or the colour
    tab's image to edit (as an upload); names outside the session are refused."""
    client, output_dir = running_app
    client.predict("tiny-flux-dev", "a blue square", "", 2, 2.5, 64, 64, 5, 1, api_name="/generate")
    name = next(output_dir.glob("*tiny-flux-dev-5-*.png")).name
    sent = client.predict(name, "Virtual try-on (as the person)", api_name="/history_send")
    colour_mode, colour_image, drag_mode, drag_image, person, *others = sent
    with Image.open(person) as received, Image.open(output_dir / name) as original:
        assert np.array_equal(np.asarray(received.convert("RGB")), np.asarray(original.convert("RGB")))
    # The other tabs' components come back as bare updates: left as they were.
    untouched = (colour_mode, colour_image, drag_mode, drag_image, *others)
    # (layout: 5; live: 7, its photo group not among an API's outputs)
    assert len(others) == 11 and all(value == {"__type__": "update"} or value["__type__"] == "update"
                                     for value in untouched)  # fmt: skip
    sent = client.predict(name, "Colour editing (as the image to recolour)", api_name="/history_send")
    assert sent[0] == "Edit an image (inverted)" and sent[1]["visible"] is True
    assert sent[4] == {"__type__": "update"}
    # The live sketch takes it as the photo to draw from (its edges steer the live model).
    family, source, sketch, photo, kind, target = client.predict(
        name, "Live sketch (as the photo to draw from)", api_name="/history_send"
    )[-6:]
    assert (family, source, kind) == ("flux", "photo", "canny") and sketch["visible"] is False
    assert Image.open(photo).size == (64, 64) and target["value"]
    # A layout takes back the boxes of a layout result; an image made elsewhere has none.
    with pytest.raises(Exception, match="not made in the layout tab"):
        client.predict(name, "Layout to image (its caption and boxes)", api_name="/history_send")
    layout_call(client, steps=2)
    made = next(output_dir.glob("*layout-shapes-flux-*.png")).name
    caption, table, editor, width, height = client.predict(
        made, "Layout to image (its caption and boxes)", api_name="/history_send"
    )[5:10]
    assert caption == LAYOUT_DEFAULTS["caption"] and (value(width), value(height)) == (64, 64)
    assert [[float(cell) for cell in row[1:]] for row in table["data"]] == [row[1:] for row in LAYOUT_BOXES["data"]]
    assert '"x1": 0.5' in editor
    with pytest.raises(Exception, match="Pick one of your results|not in your history"):
        client.predict("../secret.png", "Virtual try-on (as the person)", api_name="/history_send")


def test_progress_names_the_phase_and_the_time_left(monkeypatch):
    from tabs import common

    clock = iter([100.0, 102.0, 104.0, 160.0])  # the pace: 2 s a step
    monkeypatch.setattr(common.time, "monotonic", lambda: next(clock))
    said = []
    on_step = common.progress_callback(lambda done_total, desc: said.append((done_total, desc)), "Denoising")
    on_step(0, 50)
    on_step(1, 50)  # 49 to go: 98 s
    on_step(2, 50)
    on_step(30, 50)  # 20 to go
    assert said[0] == ((0, 50), "Denoising")
    assert said[1] == ((1, 50), "Denoising · about 2 min left") and said[2][1] == "Denoising · about 2 min left"
    assert said[3][1] == "Denoising · about 40 s left"
