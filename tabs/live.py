"""Live sketch: every stroke (or a photo through a preprocessor) becomes an image through the
fastest ControlNet the chosen family has (or SANA-Sprint img2img), with its latency."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import gradio as gr
from PIL import Image

from studio.context import StudioContext
from studio.errors import InvalidRequest
from studio.families import Family, all_families
from studio.gpu import gpu_task
from studio.metadata import save_image
from studio.methods.control import (
    STROKE_KINDS,
    LiveRenderer,
    LiveRequest,
    LiveTarget,
    live_targets,
    on_white,
)
from tabs.common import user_errors

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


def build(studio: StudioContext) -> None:
    registry = studio.registry
    renderer = LiveRenderer(registry)

    def choices(family: str, source: str, kind: str) -> list[tuple[str, str]]:
        kinds = STROKE_KINDS if source == "sketch" else (kind,)
        return [
            (target.describe(registry.catalogue.get(target.model)), target_value(target))
            for target in live_targets(registry, family, kinds)
        ]

    first = choices("flux", "sketch", "canny")
    gr.Markdown(
        "Pick the brush beside the canvas and draw: the image follows every stroke. The fastest model of the "
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
            )
            with gr.Group(visible=False) as photo_group:
                photo = gr.Image(label="Photo", type="pil", sources=["upload", "clipboard"])
                kind = gr.Radio(list(PHOTO_KINDS), value="canny", label="Preprocessor")
                with gr.Row():
                    low = gr.Slider(0, 255, value=100, step=1, label="Canny low threshold")
                    high = gr.Slider(0, 255, value=200, step=1, label="Canny high threshold")
            with gr.Accordion("Control", open=False):
                first_target = parse_target(first[0][1]) if first else None
                steps = gr.Slider(
                    1,
                    registry.catalogue.get(first_target.model).max_steps if first_target else 4,
                    value=first_target.steps if first_target else 1,
                    step=1,
                    label="Steps (fewer: faster frames)",
                )
                scale = gr.Slider(0, 2, value=1.0, step=0.05, label="Conditioning scale")
                with gr.Row():
                    start = gr.Slider(0, 1, value=0.0, step=0.05, label="Control starts at (fraction of steps)")
                    end = gr.Slider(0, 1, value=1.0, step=0.05, label="Control ends at")
                seed = gr.Number(value=0, precision=0, minimum=0, label="Seed (fixed: frames stay stable)")
        with gr.Column():
            with gr.Row():
                result = gr.Image(label="Live result", type="pil", format="png", height=320, elem_id="live-result")
                control = gr.Image(label="Control image", type="pil", format="png", height=320, elem_id="live-control")
            latency = gr.Markdown("Draw on the canvas to start.", elem_id="live-latency")
            keep = gr.Button("Save this frame", size="sm")
    last = gr.State(None)

    def on_family(chosen_family, chosen_source, chosen_kind):
        options = choices(chosen_family, chosen_source, chosen_kind)
        if not options:
            gr.Warning(unavailable_message(all_families()[chosen_family]))
        return gr.update(choices=options, value=options[0][1] if options else None)

    @gpu_task(duration=30)
    def on_target(target_id):
        if not target_id:
            return gr.update()
        chosen = parse_target(target_id)
        return gr.update(value=chosen.steps, maximum=registry.catalogue.get(chosen.model).max_steps)

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
                )
            )
        spec = registry.catalogue.get(frame.settings.model)
        text_note = "prompt encoded" if frame.encoded_prompt else "prompt from cache"
        note = (
            f"**{frame.seconds * 1000:.0f} ms** per frame · {chosen.describe(spec)} · "
            f"{frame.settings.width}×{frame.settings.height} · {text_note}"
        )
        return preview(frame.image), preview(frame.control_image), note, frame

    def on_keep(frame):
        if frame is None:
            raise gr.Error("Draw something first: there is no frame to save.")
        path = save_image(
            frame.image,
            {**frame.settings.to_dict(), "seconds": round(frame.seconds, 3)},
            studio.output_dir,
            f"live-{frame.settings.model}-{frame.settings.seed}",
        )
        gr.Info(f"Saved {path.name}.")

    family.input(on_family, [family, source, kind], target, api_visibility="private")
    gr.on([source.input, kind.input], on_family, [family, source, kind], target, api_visibility="private")
    source.input(
        lambda chosen: (gr.update(visible=chosen == "sketch"), gr.update(visible=chosen == "photo")),
        source,
        [sketch, photo_group],
        api_visibility="private",
    )
    # The newest drawing always wins: a frame still running is followed only by the latest change,
    # and every live frame shares the one GPU slot with the other tabs' runs.
    frame_inputs = [target, prompt, source, sketch, photo, low, high, seed, scale, start, end, steps]
    frame_outputs = [result, control, latency, last]
    live = dict(trigger_mode="always_last", concurrency_limit=1, concurrency_id="gpu", show_progress="hidden")
    gr.on(
        [
            sketch.change,
            photo.change,
            prompt.change,
            scale.release,
            start.release,
            end.release,
            seed.change,
            low.release,
            high.release,
            steps.release,
        ],
        on_frame,
        frame_inputs,
        frame_outputs,
        api_name="live_frame",
        **live,
    )
    # A new model first sets its own step count, then draws.
    target.change(on_target, target, steps, api_visibility="private").then(
        on_frame, frame_inputs, frame_outputs, api_visibility="private", **live
    )
    keep.click(on_keep, last, None, api_name="live_save")
