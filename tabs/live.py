"""Live sketch: every stroke (or a photo through a preprocessor) becomes an image through the
fastest ControlNet the chosen family has (or SANA-Sprint img2img), with its latency."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import gradio as gr
from PIL import Image

from studio.context import StudioContext
from studio.errors import InvalidRequest
from studio.families import Family, all_families
from studio.metadata import save_image
from studio.methods.control import (
    STROKE_KINDS,
    ControlSettings,
    LiveRenderer,
    LiveRequest,
    LiveTarget,
    live_targets,
    on_white,
)
from studio.speed import OFF
from tabs.common import SendTarget, in_gpu_slot, session_of, setting_slider, speed_choices, user_errors

PHOTO_KINDS = (("Canny edges", "canny"), ("Soft edges", "softedge"), ("Depth", "depth"))
CANVAS_SIDE = 512
# Small frames (the built-ins make 64x64) are enlarged for the eye; saved frames keep their size.
PREVIEW_SIDE = 320


def preview(image: Image.Image) -> Image.Image:
    scale = PREVIEW_SIDE // max(image.size)
    return image if scale <= 1 else image.resize((image.width * scale, image.height * scale), Image.Resampling.LANCZOS)


def target_value(target: LiveTarget) -> str:
    return f"{target.model}|{target.control}|{target.steps}"


def parse_target(value: str | None) -> LiveTarget:
    try:
        model, control, steps = (value or "").split("|")
        return LiveTarget(model, control, int(steps))
    except ValueError:
        raise InvalidRequest("Pick a live model first.") from None


def unavailable_message(family: Family) -> str:
    return family.no_control_reason or (
        "No model of this family can draw from a sketch here (offline, and none is in the local cache)."
    )


def strokes_of(value: Any) -> Image.Image | None:
    """The drawing on a Sketchpad (its composite), or None while the canvas is empty."""
    if not isinstance(value, dict) or value.get("composite") is None:
        return None
    drawing = value["composite"]
    if not isinstance(drawing, Image.Image):
        drawing = Image.open(drawing)
    # Blank paper (transparent, or white as the canvas sends it once cleared) is no drawing yet.
    darkest = on_white(drawing).convert("L").getextrema()[0]
    if isinstance(darkest, (int, float)) and darkest > 250:
        return None
    return drawing


@dataclass
class LiveTab:
    family: gr.Radio
    target: gr.Dropdown
    prompt: gr.Textbox
    source: gr.Radio
    sketch: gr.Sketchpad
    photo_group: gr.Group
    photo: gr.Image
    kind: gr.Radio
    low: gr.Slider
    high: gr.Slider
    steps: gr.Slider
    scale: gr.Slider
    start: gr.Slider
    end: gr.Slider
    seed: gr.Number
    speed: gr.Dropdown
    result: gr.Image
    control: gr.Image
    latency: gr.Markdown
    keep: gr.Button


def target_choices(studio: StudioContext, family: str, source: str, kind: str) -> list[tuple[str, str]]:
    kinds = STROKE_KINDS if source == "sketch" else (kind,)
    catalogue = studio.registry.catalogue
    return [
        (target.describe(catalogue.get(target.model)), target_value(target))
        for target in live_targets(studio.registry, family, kinds)
    ]


def layout(studio: StudioContext) -> LiveTab:
    first = target_choices(studio, "flux", "sketch", "canny")
    first_target = parse_target(first[0][1]) if first else None
    gr.Markdown(
        "Draw on the canvas: the image follows every stroke. The fastest model of the "
        "family that can read a drawing is picked for you: one-step with a ControlNet, else SANA-Sprint "
        "img2img, else a standard model with a ControlNet at 8 steps (random-weight built-ins last)."
    )
    with gr.Row():
        with gr.Column():
            family = gr.Radio(
                [(item.label, item.name) for item in all_families().values()], value="flux", label="Family"
            )
            target = gr.Dropdown(first, value=first[0][1] if first else None, label="Live model")
            prompt = gr.Textbox(label="Live prompt", value="a large red circle, gray background")
            source = gr.Radio([("Sketch", "sketch"), ("Photo", "photo")], value="sketch", label="Draw from")
            sketch = gr.Sketchpad(
                label="Sketch",
                type="pil",
                canvas_size=(CANVAS_SIDE, CANVAS_SIDE),
                brush=gr.Brush(colors=["#000000"], default_size=12, color_mode="fixed"),
                elem_id="live-sketch",
                elem_classes=["studio-brush-first"],
            )
            with gr.Group(visible=False) as photo_group:
                photo = gr.Image(label="Photo", type="pil", sources=["upload", "clipboard"])
                kind = gr.Radio(list(PHOTO_KINDS), value="canny", label="Preprocessor")
                with gr.Row():
                    low = setting_slider(LiveRequest, "canny_low")
                    high = setting_slider(LiveRequest, "canny_high")
            with gr.Accordion("Control", open=False):
                steps = setting_slider(
                    ControlSettings,
                    "steps",
                    maximum=studio.registry.catalogue.get(first_target.model).max_steps if first_target else 4,
                    value=first_target.steps if first_target else 1,
                    label="Steps (fewer: faster frames)",
                )
                scale = setting_slider(LiveRequest, "conditioning_scale")
                with gr.Row():
                    start = setting_slider(LiveRequest, "control_start")
                    end = setting_slider(LiveRequest, "control_end")
                seed = gr.Number(value=0, precision=0, minimum=0, label="Seed (fixed: frames stay stable)")
                speed = gr.Dropdown(
                    speed_choices(studio.registry.catalogue.get(first_target.model)) if first_target else [],
                    value=OFF,
                    label="Speed (diffusers' cache hooks: not beside a ControlNet, not at 4 steps or fewer)",
                )
        with gr.Column():
            with gr.Row():
                result = gr.Image(label="Live result", type="pil", format="png", height=320, elem_id="live-result")
                control = gr.Image(label="Control image", type="pil", format="png", height=320, elem_id="live-control")
            latency = gr.Markdown("Draw on the canvas to start.", elem_id="live-latency")
            keep = gr.Button("Save this frame", size="sm")
    return LiveTab(
        family,
        target,
        prompt,
        source,
        sketch,
        photo_group,
        photo,
        kind,
        low,
        high,
        steps,
        scale,
        start,
        end,
        seed,
        speed,
        result,
        control,
        latency,
        keep,
    )


def frame_handler(studio: StudioContext) -> Callable:
    renderer = LiveRenderer(studio.registry)

    def on_frame(
        target_id,
        text,
        chosen_source,
        drawing,
        picture,
        canny_low,
        canny_high,
        seed_value,
        conditioning,
        control_start,
        control_end,
        step_count,
        speed=OFF,
    ):
        strokes = picture if chosen_source == "photo" else strokes_of(drawing)
        if strokes is None:
            return gr.update(), gr.update(), gr.update(), gr.update()
        with user_errors("Live frame"):
            chosen = replace(parse_target(target_id), steps=int(step_count))
            frame = renderer.frame(
                LiveRequest(
                    chosen,
                    text or "",
                    strokes,
                    from_photo=chosen_source == "photo",
                    canny_low=int(canny_low),
                    canny_high=int(canny_high),
                    seed=int(seed_value or 0),
                    conditioning_scale=float(conditioning),
                    control_start=float(control_start),
                    control_end=float(control_end),
                    speed=speed or OFF,
                )
            )
        spec = studio.registry.catalogue.get(frame.settings.model)
        text_note = "prompt encoded" if frame.encoded_prompt else "prompt from cache"
        note = (
            f"**{frame.seconds * 1000:.0f} ms** per frame · {chosen.describe(spec)} · "
            f"{frame.settings.width}×{frame.settings.height} · {text_note}"
        ) + "".join(f" · {note}" for note in frame.notes)
        return preview(frame.image), preview(frame.control_image), note, frame

    # The GPU work is the frame (a ZeroGPU slot for each; 30 s is ample for one).
    return on_frame


def keep_handler(studio: StudioContext) -> Callable:
    def on_keep(frame, request: gr.Request):
        if frame is None:
            raise gr.Error("Draw something first: there is no frame to save.")
        path = save_image(
            frame.image,
            {**frame.settings.to_dict(), "seconds": round(frame.seconds, 3)},
            studio.history.folder(session_of(request)),
            f"live-{frame.settings.model}-{frame.settings.seed}",
        )
        gr.Info(f"Saved {path.name}.")

    return on_keep


TAB_ID = "live-sketch"
SENT_FAMILY, SENT_KIND = "flux", "canny"


def send_target(studio: StudioContext, ui: LiveTab) -> SendTarget:
    """A history image becomes the live tab's photo: its edges (Canny) steer the live model, and
    the frames follow the prompt as it is typed."""

    def fill(image: Image.Image, settings: dict) -> tuple[Any, ...]:
        options = target_choices(studio, SENT_FAMILY, "photo", SENT_KIND)
        return (
            SENT_FAMILY,
            "photo",
            gr.update(visible=False),
            gr.update(visible=True),
            image,
            SENT_KIND,
            gr.update(choices=options, value=options[0][1] if options else None),
        )

    components = [ui.family, ui.source, ui.sketch, ui.photo_group, ui.photo, ui.kind, ui.target]
    return SendTarget("Live sketch (as the photo to draw from)", TAB_ID, components, fill)


def build(studio: StudioContext) -> SendTarget:
    ui = layout(studio)
    catalogue = studio.registry.catalogue
    last = gr.State(None)

    def on_family(chosen_family, chosen_source, chosen_kind):
        options = target_choices(studio, chosen_family, chosen_source, chosen_kind)
        if not options:
            gr.Warning(unavailable_message(all_families()[chosen_family]))
        return gr.update(choices=options, value=options[0][1] if options else None)

    def on_target(target_id):
        if not target_id:
            return gr.update(), gr.update()
        chosen = parse_target(target_id)
        spec = catalogue.get(chosen.model)
        return gr.update(value=chosen.steps, maximum=spec.max_steps), gr.update(choices=speed_choices(spec), value=OFF)

    ui.family.input(on_family, [ui.family, ui.source, ui.kind], ui.target, api_visibility="private")
    gr.on(
        [ui.source.input, ui.kind.input],
        on_family,
        [ui.family, ui.source, ui.kind],
        ui.target,
        api_visibility="private",
    )
    ui.source.input(
        lambda chosen: (gr.update(visible=chosen == "sketch"), gr.update(visible=chosen == "photo")),
        ui.source,
        [ui.sketch, ui.photo_group],
        api_visibility="private",
    )
    # The newest drawing always wins: a frame still running is followed only by the latest change,
    # and every live frame shares the one GPU slot with the other tabs' runs.
    frame_inputs = [
        ui.target,
        ui.prompt,
        ui.source,
        ui.sketch,
        ui.photo,
        ui.low,
        ui.high,
        ui.seed,
        ui.scale,
        ui.start,
        ui.end,
        ui.steps,
        ui.speed,
    ]
    frame_outputs = [ui.result, ui.control, ui.latency, last]
    # While a frame runs the latency line shows Gradio's busy animation (a slow machine never looks
    # frozen); the last frame stays in view.
    live: dict[str, Any] = dict(
        trigger_mode="always_last", show_progress="minimal", show_progress_on=ui.latency, duration=30
    )
    on_frame = frame_handler(studio)
    changes = [ui.sketch.change, ui.photo.change, ui.prompt.change, ui.seed.change]
    releases = [slider.release for slider in (ui.scale, ui.start, ui.end, ui.low, ui.high, ui.steps)]
    every_change = partial(gr.on, [*changes, *releases])
    in_gpu_slot(every_change, on_frame, frame_inputs, frame_outputs, api_name="live_frame", **live)
    # A new model first sets its own step count, then draws.
    model_picked = ui.target.change(on_target, ui.target, [ui.steps, ui.speed], api_visibility="private")
    in_gpu_slot(model_picked.then, on_frame, frame_inputs, frame_outputs, api_visibility="private", **live)
    ui.keep.click(keep_handler(studio), last, None, api_name="live_save")
    return send_target(studio, ui)
