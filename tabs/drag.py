"""Drag-editing tab (DragFlow precise, RegionDrag-style fast): UI and wiring only; the method is
studio.methods.drag."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image, ImageDraw

from studio.catalogue import ModelSpec
from studio.context import StudioContext
from studio.errors import InvalidRequest
from studio.generation import GenerationSettings
from studio.metadata import decode_mask, encode_mask, read_payload, save_image
from studio.methods.drag import KINDS, MODES, Drag, DragSettings, mask_array
from studio.runner import Job
from tabs import common

GENERATE, UPLOAD = "Generate it from the prompt (exact, from the seed)", common.UPLOAD_SOURCE
# The click canvas shows small images enlarged to about this many pixels on their long side.
SHOWN_SIDE = 512
REGION_COLOUR, ARROW_COLOUR, PENDING_COLOUR = (255, 0, 200), (255, 230, 0), (0, 230, 255)
REGION_BRUSH, FIXED_BRUSH = "#ff00c8", "#00b4ff"
FIELDS = (
    "prompt",
    "mode",
    "steps",
    "guidance",
    "width",
    "height",
    "seed",
    "skip_steps",
    "transport",
    "intensify",
    "learning_rate",
    "handle_noise",
    "paste_fraction",
)


def serves(spec: ModelSpec) -> bool:
    return spec.flow is not None and spec.family.token_order in ("text-image", "image-text")


def painted_masks(editor: Any) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The regions to drag and the area to keep fixed, painted on an ImageEditor's layers in the
    two brush colours (None where nothing is painted)."""
    if not isinstance(editor, dict):
        return None, None
    layers = [layer if isinstance(layer, Image.Image) else Image.open(layer) for layer in editor.get("layers") or []]
    regions, fixed = [], []
    for layer in layers:
        pixels = np.asarray(layer.convert("RGBA")).astype(np.int16)
        painted = pixels[..., 3] > 127
        # The region brush is magenta (more red than blue), the fixed-area brush light blue.
        regions.append(painted & (pixels[..., 0] >= pixels[..., 2]))
        fixed.append(painted & (pixels[..., 0] < pixels[..., 2]))

    def union(masks: list[np.ndarray]) -> np.ndarray | None:
        joined = np.logical_or.reduce(masks) if masks else None
        return joined if joined is not None and joined.any() else None

    return union(regions), union(fixed)


def painted_mask(editor: Any) -> np.ndarray | None:
    return painted_masks(editor)[0]


def enlargement(image: Image.Image) -> int:
    return max(1, SHOWN_SIDE // max(image.size))


def draw_drags(
    image: Image.Image, mask: np.ndarray | None, drags: list[Drag], pending: tuple[float, float] | None
) -> Image.Image:
    """The image enlarged, with the painted regions outlined and every drag drawn: an arrow from
    handle to target, an anchor with its angle or factor, the handle still waiting for a target."""
    scale = enlargement(image)
    shown = image.convert("RGB").resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(shown)
    if mask is not None and mask.shape == (image.height, image.width):
        edge = mask & ~np.pad(mask, 1)[2:, 1:-1] | mask & ~np.pad(mask, 1)[:-2, 1:-1]
        edge |= mask & ~np.pad(mask, 1)[1:-1, 2:] | mask & ~np.pad(mask, 1)[1:-1, :-2]
        for y, x in np.argwhere(edge):
            draw.rectangle([x * scale, y * scale, (x + 1) * scale - 1, (y + 1) * scale - 1], outline=REGION_COLOUR)
    radius = max(3, scale)

    def at(point: tuple[float, float]) -> tuple[float, float]:
        return point[0] * scale, point[1] * scale

    for number, drag in enumerate(drags, start=1):
        hx, hy = at(drag.handle)
        draw.ellipse([hx - radius, hy - radius, hx + radius, hy + radius], outline=ARROW_COLOUR, width=2)
        if drag.kind == "move":
            tx, ty = at(drag.points[1])
            draw.line([hx, hy, tx, ty], fill=ARROW_COLOUR, width=2)
            direction = math.atan2(ty - hy, tx - hx)
            for side in (-0.5, 0.5):
                back = direction + math.pi + side
                draw.line([tx, ty, tx + 3 * radius * math.cos(back), ty + 3 * radius * math.sin(back)], ARROW_COLOUR, 2)
            label = str(number)
        else:
            label = f"{number}: {drag.angle:g}°" if drag.kind == "rotate" else f"{number}: ×{drag.scale:g}"
        draw.text((hx + radius + 2, hy - radius - 2), label, fill=ARROW_COLOUR)
    if pending is not None:
        px, py = at(pending)
        draw.ellipse([px - radius, py - radius, px + radius, py + radius], outline=PENDING_COLOUR, width=2)
    return shown


def add_point(
    drags: list[list], pending: list[float] | None, point: tuple[float, float], kind: str, angle: float, scale: float
) -> tuple[list[list], list[float] | None]:
    """A click: a move's handle, then its target; a rotation's or scaling's anchor."""
    if kind == "move":
        if pending is None:
            return drags, [point[0], point[1]]
        return [*drags, ["move", [pending, [point[0], point[1]]], 0.0, 1.0]], None
    return [*drags, [kind, [[point[0], point[1]]], float(angle), float(scale)]], None


@dataclass
class DragTab:
    model: gr.Dropdown
    source: common.SourcePicker
    prompt: gr.Textbox
    show_source: gr.Button
    editor: gr.ImageEditor
    canvas: gr.Image
    kind: gr.Radio
    angle: gr.Slider
    scale: gr.Slider
    undo: gr.Button
    clear: gr.Button
    drags: gr.State
    pending: gr.State
    drag_list: gr.JSON
    sampling: common.SamplingControls
    form: common.Form
    run: gr.Button
    cancel: gr.Button
    api_mask: gr.Image
    api_drags: gr.JSON
    api_run: gr.Button
    reuse: gr.File
    outputs: list[Any]


# What the tab opens on: an image the default built-in draws, to paint a region of and drag.
OPENING_PROMPT = "a large red square on the left, gray background"


def layout(studio: StudioContext) -> DragTab:
    default = common.default_model(studio, serves)
    with gr.Row():
        with gr.Column(scale=2):
            model = gr.Dropdown(common.model_choices(studio, serves), value=default.id, label="Model (FLUX and SD3)")
            source = common.source_picker(GENERATE)
            prompt = gr.Textbox(label="Prompt of the image", lines=2, value=OPENING_PROMPT, elem_id="drag-prompt")
            show_source = gr.Button("Show the source image to paint on", size="sm")
            mode = gr.Radio(list(MODES), value="fast", label="Mode (precise: DragFlow, minutes; fast: seconds)")
            run, cancel = common.run_and_cancel("Drag")
            reuse = gr.File(label="Reuse a drag result: drop its PNG to restore the whole edit", file_types=[".png"])
            with gr.Accordion("Sampling and method", open=False):
                sampling = common.sampling_controls(DragSettings, default, steps=25)
                # The method's own settings: everything after the sampling ones.
                sliders = {name: common.setting_slider(DragSettings, name) for name in FIELDS[7:]}
        with gr.Column(scale=3):
            editor = gr.ImageEditor(
                type="pil",
                label="1 · Paint each region to drag in magenta; optionally what must not change in blue",
                brush=gr.Brush(colors=[REGION_BRUSH, FIXED_BRUSH], default_color=REGION_BRUSH, color_mode="defaults"),
                sources=[],
                elem_classes=["studio-brush-first"],
                elem_id="drag-regions",
                height=360,
            )
            canvas = gr.Image(
                type="pil", label="2 · Click a handle, then its target (rotate / scale: click the anchor)",
                interactive=False, height=360, elem_id="drag-canvas",
            )  # fmt: skip
            with gr.Row():
                kind = gr.Radio(list(KINDS), value="move", label="Drag")
                angle = gr.Slider(-180, 180, value=30, step=1, label="Angle (rotate, degrees clockwise)")
                scale = gr.Slider(0.2, 5, value=1.5, step=0.05, label="Factor (scale)")
            with gr.Row():
                undo = gr.Button("Undo the last drag", size="sm")
                clear = gr.Button("Clear the drags", size="sm")
            drag_list = gr.JSON(label="Drags (kind, points in image pixels, angle, factor)")
            compare = gr.ImageSlider(label="Before / after", type="pil")
            result = gr.Image(label="Result", type="pil", format="png", height=256)
            info = gr.JSON(label="Settings of this result")
            with gr.Row(visible=False):
                api_mask = gr.Image(type="pil", image_mode=None, label="Regions (API)")
                api_drags = gr.JSON(label="Drags (API)")
                api_run = gr.Button("Drag (API)")
    steps, guidance, width, height, seed = sampling.components()
    fields = {"prompt": prompt, "mode": mode, "steps": steps, "guidance": guidance, "width": width}
    fields |= {"height": height, "seed": seed, **sliders}
    return DragTab(
        model,
        source,
        prompt,
        show_source,
        editor,
        canvas,
        kind,
        angle,
        scale,
        undo,
        clear,
        gr.State([]),
        gr.State(None),
        drag_list,
        sampling,
        common.Form(DragSettings, fields),
        run,
        cancel,
        api_mask,
        api_drags,
        api_run,
        reuse,
        [compare, result, info],
    )


def run_drag(
    studio: StudioContext,
    request: gr.Request | None,
    progress: gr.Progress,
    form: common.Form,
    model_id: str,
    image: Image.Image | None,
    mask: np.ndarray | Image.Image | None,
    drags: Any,
    fields: tuple[Any, ...],
    fixed: np.ndarray | None = None,
) -> tuple[Any, ...]:
    """One drag edit from plain data, for the UI and the API alike."""
    if mask is None:
        raise gr.Error("Paint the region to drag first.")
    if not isinstance(drags, list):
        raise gr.Error("Drags are a list of [kind, points, angle, factor].")
    with common.user_errors("Drag"):
        parsed = tuple(Drag.parse(drag) for drag in drags)
        settings = form.read(fields, model=model_id, drags=parsed)
    inputs: dict[str, Any] = {"mask": mask} | ({"image": image} if image is not None else {})
    if fixed is not None:
        inputs["fixed"] = fixed
    progress((0, 1), desc="Loading model")
    edit = common.run_job(
        studio, request, "Drag", Job("drag_edit", settings, inputs), phases(progress, settings, image)
    )
    if edit is None:
        return gr.update(), gr.update(), gr.update()
    payload = {"method": f"drag ({edit.settings.mode})", **edit.settings.to_dict(), "seconds": round(edit.seconds, 3)}
    # What the edit needs to be remade whole from this PNG: where its image came from, the
    # painted regions and the fixed area.
    payload["source"] = "upload" if image is not None else "seed"
    payload["regions"] = encode_mask(mask_array(mask) if isinstance(mask, Image.Image) else mask)
    if fixed is not None:
        payload["fixed"] = encode_mask(fixed)
    if edit.losses:
        payload["loss_first_last"] = [round(edit.losses[0], 4), round(edit.losses[-1], 4)]
    folder = studio.history.folder(common.session_of(request))
    path = save_image(edit.result, payload, folder, f"drag-{settings.model}-{settings.seed}")
    return (edit.source, edit.result), str(path), payload


def phases(progress: gr.Progress, settings: DragSettings, image: Image.Image | None) -> Callable[[int, int], None]:
    """Progress that names the phase: the source (inverted or remade), the optimisation's
    iteration k of K (precise), the denoising."""
    source = settings.steps - settings.skip_steps if image is not None else settings.steps
    iterations = settings.transport + settings.intensify if settings.mode == "precise" else 0

    def on_step(done: int, total: int) -> None:
        if done <= source:
            desc = "Inverting the image" if image is not None else "Remaking the source from its seed"
        elif done <= source + iterations:
            desc = f"Optimising: iteration {done - source} of {iterations}"
        else:
            desc = "Denoising the edit"
        progress((done, total), desc=desc)

    return on_step


def edit_handler(studio: StudioContext, form: common.Form) -> Callable:
    # Gradio passes its request and progress only to parameters before a *values one.
    def on_drag(request: gr.Request, progress=gr.Progress(), *values):
        model_id, mode, upload, editor, drags, *fields = values
        if mode == UPLOAD and upload is None:
            raise gr.Error("Upload the image to edit, or choose to generate it from the prompt.")
        regions, fixed = painted_masks(editor)
        image = upload if mode == UPLOAD else None
        return run_drag(studio, request, progress, form, model_id, image, regions, drags, tuple(fields), fixed)

    return on_drag


def api_handler(studio: StudioContext, form: common.Form) -> Callable:
    def on_api(request: gr.Request, progress=gr.Progress(), *values):
        model_id, image, mask, drags, *fields = values
        regions = mask_array(mask) if mask is not None else None
        return run_drag(studio, request, progress, form, model_id, image, regions, drags, tuple(fields))

    return on_api


def source_handler(studio: StudioContext) -> Callable:
    def on_source(request: gr.Request, progress=gr.Progress(), *values):
        model_id, mode, upload, prompt, steps, guidance, width, height, seed = values
        if mode == UPLOAD:
            if upload is None:
                raise gr.Error("Upload the image to edit first.")
            picture = upload.convert("RGB")
        else:
            with common.user_errors("Making the source"):
                settings = GenerationSettings(
                    model=model_id, prompt=prompt, steps=steps, guidance=guidance, width=width, height=height, seed=seed
                )
            phase = common.progress_callback(progress, "Making the source")
            results = common.run_job(studio, request, "Making the source", Job("generate", settings, {}), phase)
            if results is None:
                return gr.update(), gr.update(), [], None, []
            picture = next(iter(results)).image
        editor = {"background": picture, "layers": [], "composite": picture}
        return editor, draw_drags(picture, None, [], None), [], None, []

    return on_source


def painted_layer(regions: np.ndarray, fixed: np.ndarray | None) -> Image.Image:
    """The regions and the fixed area as an editor layer, in the two brushes' colours."""
    layer = np.zeros((*regions.shape, 4), dtype=np.uint8)
    layer[regions] = (*REGION_COLOUR, 255)
    if fixed is not None:
        layer[fixed & ~regions] = (0, 180, 255, 255)
    return Image.fromarray(layer, "RGBA")


def reuse_handler(studio: StudioContext, form: common.Form) -> Callable:
    """A drag result's PNG restores the whole edit: model, prompt, sampling, method settings,
    drags, painted regions and fixed area, and the source remade from its seed (an uploaded
    source is not in the PNG: it is asked for again)."""

    def on_reuse(request: gr.Request, progress=gr.Progress(), *values):
        (path,) = values
        if not path:
            return (gr.update(),) * (3 + len(form.inputs) + 5)
        with common.user_errors("Reusing the drag"):
            payload = read_payload(path)
            if not str(payload.get("method", "")).startswith("drag"):
                raise InvalidRequest("That PNG is not a drag result: drop a PNG the drag tab saved.")
            fields = tuple(payload.get(name) for name in form.fields)
            drags = [Drag.parse(drag).as_plain() for drag in payload.get("drags", [])]
            settings = form.read(fields, model=str(payload.get("model")), drags=tuple(Drag.parse(d) for d in drags))
            if settings.model not in studio.registry.catalogue or not serves(
                studio.registry.catalogue.get(settings.model)
            ):
                raise InvalidRequest(f"The model {settings.model!r} of that drag cannot drag here.")
            size = (int(settings.width), int(settings.height))
            regions = decode_mask(payload.get("regions"), size)
            fixed = decode_mask(payload["fixed"], size) if payload.get("fixed") else None
        restored = [getattr(settings, name) for name in form.fields]
        if payload.get("source") == "upload":
            gr.Warning("That drag edited an uploaded image, which its PNG does not hold: upload it again and show it, "
                       "then paint the regions again; the drags and settings are restored.")  # fmt: skip
            return (
                settings.model,
                UPLOAD,
                gr.update(visible=True),
                *restored,
                gr.update(),
                gr.update(),
                drags,
                None,
                drags,
            )
        generation = GenerationSettings(
            model=settings.model, prompt=settings.prompt, steps=settings.steps, guidance=settings.guidance,
            width=settings.width, height=settings.height, seed=settings.seed,
        )  # fmt: skip
        phase = common.progress_callback(progress, "Remaking the source from its seed")
        results = common.run_job(studio, request, "Making the source", Job("generate", generation, {}), phase)
        if results is None:
            return (gr.update(),) * (3 + len(form.inputs) + 5)
        picture = next(iter(results)).image
        editor = {"background": picture, "layers": [painted_layer(regions, fixed)], "composite": picture}
        shown = draw_drags(picture, regions, [Drag.parse(drag) for drag in drags], None)
        hidden = gr.update(visible=False)
        return settings.model, GENERATE, hidden, *restored, editor, shown, drags, None, drags

    return on_reuse


def click_handler() -> Callable:
    def on_click(editor, drags, pending, kind, angle, scale, event: gr.SelectData):
        background = editor.get("background") if isinstance(editor, dict) else None
        if background is None:
            raise gr.Error("Show the source image first, then paint and click on it.")
        factor = enlargement(background)
        point = (event.index[0] / factor, event.index[1] / factor)
        drags, pending = add_point(drags or [], pending, point, kind, angle, scale)
        try:
            Drag.parse(drags[-1]) if drags else None
        except InvalidRequest as error:
            raise gr.Error(str(error)) from None
        return drags, pending, redraw(editor, drags, pending), drags

    return on_click


def redraw(editor: Any, drags: list[list], pending: list[float] | None) -> Any:
    background = editor.get("background") if isinstance(editor, dict) else None
    if background is None:
        return gr.update()
    parsed = [Drag.parse(drag) for drag in drags]
    return draw_drags(background, painted_mask(editor), parsed, (pending[0], pending[1]) if pending else None)


TAB_ID = "drag-editing"


def build(studio: StudioContext, text_to_image_history: gr.State) -> common.SendTarget:
    """The tab; returns where a history image goes in it (the image to drag in)."""
    ui = layout(studio)
    catalogue = studio.registry.catalogue
    steps, guidance, width, height, seed = ui.sampling.components()
    ui.model.input(
        lambda model_id: common.sampling_updates(catalogue.get(model_id), 25),
        ui.model,
        [steps, guidance, width, height],
        api_visibility="private",
    )
    ui.source.wire(studio, serves, "drag", text_to_image_history, ui.model, ui.prompt, ui.sampling)
    common.in_gpu_slot(
        ui.show_source.click,
        source_handler(studio),
        [ui.model, ui.source.mode, ui.source.image, ui.prompt, steps, guidance, width, height, seed],
        [ui.editor, ui.canvas, ui.drags, ui.pending, ui.drag_list],
        api_visibility="private",
    )
    ui.canvas.select(
        click_handler(),
        [ui.editor, ui.drags, ui.pending, ui.kind, ui.angle, ui.scale],
        [ui.drags, ui.pending, ui.canvas, ui.drag_list],
        api_visibility="private",
    )
    ui.editor.change(redraw, [ui.editor, ui.drags, ui.pending], ui.canvas, api_visibility="private")
    ui.undo.click(
        lambda editor, drags: (drags[:-1], None, redraw(editor, drags[:-1], None), drags[:-1]),
        [ui.editor, ui.drags],
        [ui.drags, ui.pending, ui.canvas, ui.drag_list],
        api_visibility="private",
    )
    ui.clear.click(
        lambda editor: ([], None, redraw(editor, [], None), []),
        ui.editor,
        [ui.drags, ui.pending, ui.canvas, ui.drag_list],
        api_visibility="private",
    )
    job = common.in_gpu_slot(
        ui.run.click,
        edit_handler(studio, ui.form),
        [ui.model, ui.source.mode, ui.source.image, ui.editor, ui.drags, *ui.form.inputs],
        ui.outputs,
        api_visibility="private",
    )
    common.in_gpu_slot(
        ui.api_run.click,
        api_handler(studio, ui.form),
        [ui.model, ui.source.image, ui.api_mask, ui.api_drags, *ui.form.inputs],
        ui.outputs,
        api_name="drag_edit",
    )
    common.start_slider_at_change(job, ui.outputs[0])
    common.wire_cancel(studio, ui.cancel, job, "drag_cancel")
    common.in_gpu_slot(
        ui.reuse.upload,
        reuse_handler(studio, ui.form),
        [ui.reuse],
        [ui.model, ui.source.mode, ui.source.image, *ui.form.inputs, ui.editor, ui.canvas, ui.drags, ui.pending,
         ui.drag_list],
        api_name="drag_reuse",
    )  # fmt: skip
    return ui.source.send_target("Drag editing (as the image to edit)", TAB_ID)
