"""Layout-to-image tab: a global caption and boxes with their own captions; UI and wiring only
(the method is studio.methods.layout)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image, ImageDraw

from studio.catalogue import ModelSpec
from studio.context import StudioContext
from studio.errors import InvalidRequest
from studio.families import siamlayout
from studio.metadata import save_image
from studio.methods.layout import (
    MAX_REGIONS,
    METHODS,
    LayoutSettings,
    Region,
    validate_regions,
)
from studio.params import param
from studio.presets import layout_examples
from studio.runner import Job
from tabs import common

HEADERS = ["caption", "x1", "y1", "x2", "y2"]
BOX_COLOURS = [
    "#e6194b",
    "#3cb44b",
    "#4363d8",
    "#f58231",
    "#911eb4",
    "#42d4f4",
    "#f032e6",
    "#bfef45",
    "#469990",
    "#9a6324",
]
PREVIEW_SIDE = 512
EDITOR_SCRIPT = (Path(__file__).parent / "static" / "box_editor.js").read_text()
EDITOR_HTML = """
<div class="layout-frame"><div class="layout-stage"></div></div>
<div class="layout-tools"><span class="layout-status"></span>
<button type="button" class="layout-delete">Delete selected box</button></div>
"""
EDITOR_CSS = """
.layout-frame { max-width: 400px; margin: 0 auto; }
.layout-stage { position: relative; width: 100%; background: #f4f4f4; border: 1px solid #bbb; cursor: crosshair;
                touch-action: none; user-select: none; }
.layout-box { position: absolute; box-sizing: border-box; border: 2px solid; cursor: move; }
.layout-box.selected { border-style: dashed; background: rgba(0, 0, 0, 0.06); }
.layout-box span { font: 12px sans-serif; padding: 1px 3px; background: rgba(255, 255, 255, 0.8); pointer-events: none;
                   white-space: nowrap; }
.layout-handle { position: absolute; width: 10px; height: 10px; background: #fff; border: 2px solid #333; }
.layout-handle.nw { left: -6px; top: -6px; cursor: nwse-resize; }
.layout-handle.se { right: -6px; bottom: -6px; cursor: nwse-resize; }
.layout-handle.ne { right: -6px; top: -6px; cursor: nesw-resize; }
.layout-handle.sw { left: -6px; bottom: -6px; cursor: nesw-resize; }
.layout-delete { font-size: 13px; font-weight: normal; padding: 2px 10px; white-space: nowrap; }
.layout-tools { display: flex; justify-content: space-between; align-items: center; gap: 8px; margin-top: 4px;
                font-size: 13px; }
"""


SAMPLED = ("steps", "guidance", "width", "height", "seed")


def serves(spec: ModelSpec, method: str = "regional") -> bool:
    if method == "siamlayout":
        return siamlayout.layout_branch(spec) is not None
    return spec.family.token_order in ("text-image", "image-text", "cross-attention")


def regions_from_table(rows: list[list]) -> tuple[Region, ...]:
    """The table's filled rows as regions (blank rows are ignored), checked and clamped."""
    regions = []
    for number, row in enumerate(rows or [], start=1):
        cells = list(row) + [None] * (5 - len(row))
        if all(cell in (None, "") for cell in cells):
            continue
        try:
            x1, y1, x2, y2 = (float(cell) for cell in cells[1:5])
        except (TypeError, ValueError):
            raise InvalidRequest(f"Box {number}: x1, y1, x2, y2 must be numbers between 0 and 1.") from None
        regions.append(Region(str(cells[0] or ""), (x1, y1, x2, y2)))
    return validate_regions(regions)


def draw_boxes(image: Image.Image, regions: tuple[Region, ...]) -> Image.Image:
    """The image with each box outlined in its colour and labelled with its number and caption."""
    canvas = image.convert("RGB").copy()
    draw = ImageDraw.Draw(canvas)
    width, height = canvas.size
    line = max(2, width // 200)
    for number, region in enumerate(regions, start=1):
        colour = BOX_COLOURS[(number - 1) % len(BOX_COLOURS)]
        x1, y1, x2, y2 = region.box
        draw.rectangle([x1 * width, y1 * height, x2 * width - 1, y2 * height - 1], outline=colour, width=line)
        draw.text((x1 * width + line + 2, y1 * height + line + 1), f"{number}. {region.caption}", fill=colour)
    return canvas


def editor_value(rows: list[list], width: int, height: int) -> str:
    """The box editor's state for the table's rows (rows that do not parse are left out)."""
    boxes = []
    for row in rows or []:
        cells = list(row) + [None] * (5 - len(row))
        try:
            x1, y1, x2, y2 = (float(cell) for cell in cells[1:5])
        except (TypeError, ValueError):
            continue
        boxes.append({"caption": str(cells[0] or ""), "x1": x1, "y1": y1, "x2": x2, "y2": y2})
    return json.dumps({"aspect": width / height if width and height else 1, "boxes": boxes})


def rows_from_editor(value: str | None, next_caption: str) -> list[list]:
    """The editor's boxes as table rows; a new box (no caption yet) takes `next_caption`, or a
    placeholder to edit."""
    try:
        boxes = json.loads(value or "{}").get("boxes", [])
    except (ValueError, AttributeError):
        raise InvalidRequest("The box editor sent something unreadable; draw the box again.") from None
    if len(boxes) > MAX_REGIONS:
        raise InvalidRequest(f"At most {MAX_REGIONS} boxes.")
    rows = []
    for number, box in enumerate(boxes, start=1):
        caption = str(box.get("caption") or "").strip() or (next_caption or "").strip() or f"box {number}"
        rows.append([caption, *(round(min(max(float(box[key]), 0.0), 1.0), 3) for key in ("x1", "y1", "x2", "y2"))])
    return rows


@dataclass
class LayoutTab:
    method: gr.Radio
    model: gr.Dropdown
    caption: gr.Textbox
    new_caption: gr.Textbox
    editor: gr.HTML
    table: gr.Dataframe
    clear: gr.Button
    sampling: common.SamplingControls
    regional_options: gr.Row
    siamlayout_options: gr.Row
    method_settings: list[gr.Slider]  # mask steps, block stride, base ratio; grounding fraction
    run: gr.Button
    cancel: gr.Button
    example: gr.Dropdown
    overlay: gr.Checkbox
    result: gr.Image
    info: gr.JSON


def layout(studio: StudioContext, examples: list[dict]) -> LayoutTab:
    default = common.default_model(studio, serves)
    with gr.Row():
        with gr.Column(scale=2):
            with gr.Row():
                method = gr.Radio([(label, key) for key, label in METHODS.items()], value="regional", label="Method")
                model = gr.Dropdown(common.model_choices(studio, serves), value=default.id, label="Model")
            # Opens on the first example, which the default built-in draws.
            opening: dict[str, Any] = examples[0] if examples else {"caption": "", "regions": []}
            rows = [[region["caption"], *region["box"]] for region in opening["regions"]]
            with gr.Row():
                caption = gr.Textbox(
                    label="Global caption", lines=2, value=opening["caption"], elem_id="layout-caption"
                )
                new_caption = gr.Textbox(
                    label="Caption of the next box (or of the last one drawn without one)",
                    placeholder="a large red circle on the left, gray background",
                )
            editor = gr.HTML(
                editor_value(rows, default.width, default.height),
                html_template=EDITOR_HTML,
                css_template=EDITOR_CSS,
                js_on_load=EDITOR_SCRIPT,
                elem_id="layout-editor",
                label="Boxes",
            )
            run, cancel = common.run_and_cancel("Generate layout")
            example = gr.Dropdown(
                [(scene["caption"], index) for index, scene in enumerate(examples)],
                label="Load an example layout",
                value=None,
            )
            table = gr.Dataframe(
                value=rows,
                headers=HEADERS,
                datatype=["str", "number", "number", "number", "number"],
                column_count=5,
                column_limits=(5, 5),
                row_count=0,
                type="array",
                interactive=True,
                label=f"Boxes (up to {MAX_REGIONS}; x and y from 0 to 1, edit to change captions)",
                elem_id="layout-table",
            )
            clear = gr.Button("Clear boxes", size="sm")
            with gr.Accordion("Sampling and method settings", open=False):
                sampling = common.sampling_controls(LayoutSettings, default)
                with gr.Row(visible=True) as regional_options:
                    inject_steps = common.setting_slider(LayoutSettings, "inject_steps")
                    block_stride = common.setting_slider(LayoutSettings, "block_stride")
                    base_ratio = common.setting_slider(LayoutSettings, "base_ratio")
                with gr.Row(visible=False) as siamlayout_options:
                    grounding = common.setting_slider(
                        LayoutSettings, "grounding_fraction", value=siamlayout.default_grounding(default)
                    )
        with gr.Column(scale=3):
            overlay = gr.Checkbox(value=True, label="Show the boxes over the result")
            result = gr.Image(label="Result", type="pil", format="png", height=512, elem_id="layout-result")
            info = gr.JSON(label="Settings of this result")
    return LayoutTab(
        method,
        model,
        caption,
        new_caption,
        editor,
        table,
        clear,
        sampling,
        regional_options,
        siamlayout_options,
        [inject_steps, block_stride, base_ratio, grounding],
        run,
        cancel,
        example,
        overlay,
        result,
        info,
    )


PLACEHOLDER = re.compile(r"^box \d+$")


def caption_last_uncaptioned(rows: Any, caption: str, w: float, h: float) -> tuple[Any, Any]:
    """Box first, caption after: a caption typed once a box is drawn names the last box that still
    has only its placeholder ("box 2"); with none, it waits for the next box."""
    rows = [list(row) for row in (rows or [])]
    caption = (caption or "").strip()
    waiting = [row for row in rows if row and PLACEHOLDER.match(str(row[0]).strip())]
    if not caption or not waiting:
        return gr.update(), gr.update()
    waiting[-1][0] = caption
    return rows, editor_value(rows, int(w), int(h))


def on_editor_input(value: str, next_caption: str, w: float, h: float) -> tuple[list[list], str]:
    with common.user_errors("Editing the boxes"):
        rows = rows_from_editor(value, next_caption)
    return rows, editor_value(rows, int(w), int(h))


def show(image: Image.Image | None, settings: LayoutSettings | None, with_boxes: bool) -> Any:
    if image is None or settings is None:
        return gr.update()
    if not with_boxes:
        return image
    # Small results are enlarged first so the captions stay legible.
    scale = max(1, PREVIEW_SIDE // max(image.size))
    enlarged = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    return draw_boxes(enlarged, settings.regions)


NUMBERS = (*SAMPLED, "inject_steps", "block_stride", "base_ratio", "grounding_fraction")


def generate_handler(studio: StudioContext) -> Callable:
    # Gradio passes its request and progress only to parameters before a *values one.
    def on_generate(request: gr.Request, progress=gr.Progress(), *values):
        model_id, global_caption, rows, *sampled = values[:8]
        masked_steps, stride, ratio, with_boxes, chosen_method, grounding = values[8:]
        with common.user_errors("Layout generation"):
            settings = common.settings_from(
                LayoutSettings,
                NUMBERS,
                (*sampled, masked_steps, stride, ratio, grounding),
                model=model_id,
                caption=global_caption or "",
                regions=regions_from_table(rows),
                method=chosen_method or "regional",
            )
        phase = common.progress_callback(progress, "Denoising")
        made = common.run_job(studio, request, "Layout generation", Job("layout", settings, {}), phase)
        if made is None:
            return gr.update(), gr.update(), gr.update()
        payload = {**made.settings.to_dict(), "method_name": METHODS[made.settings.method]}
        payload["seconds"] = round(made.seconds, 3)
        save_image(
            made.image,
            payload,
            studio.history.folder(common.session_of(request)),
            f"layout-{settings.model}-{settings.seed}",
        )
        return show(made.image, made.settings, with_boxes), payload, (made.image, made.settings)

    return on_generate


def example_loader(examples: list[dict]) -> Callable:
    def on_example(index, w, h):
        if index is None:
            return gr.update(), gr.update(), gr.update()
        scene = examples[int(index)]
        rows = [[region["caption"], *region["box"]] for region in scene["regions"]]
        return scene["caption"], rows, editor_value(rows, int(w), int(h))

    return on_example


def model_picked(studio: StudioContext) -> Callable:
    def on_model(model_id):
        spec = studio.registry.catalogue.get(model_id)
        steps_now, guidance_now, width_now, height_now = common.sampling_updates(
            spec, param(LayoutSettings, "steps").default
        )
        return width_now, height_now, guidance_now, steps_now, siamlayout.default_grounding(spec)

    return on_model


def method_picked(studio: StudioContext) -> Callable:
    def on_method(chosen, current):
        options = common.model_choices(studio, lambda spec: serves(spec, chosen))
        ids = [model_id for _, model_id in options]
        picked = current if current in ids else common.default_model(studio, lambda spec: serves(spec, chosen)).id
        return (
            gr.update(choices=options, value=picked),
            gr.update(visible=chosen == "regional"),
            gr.update(visible=chosen == "siamlayout"),
        )

    return on_method


TAB_ID = "layout-to-image"


def send_target(ui: LayoutTab, width: gr.Slider, height: gr.Slider) -> common.SendTarget:
    """A layout result from the history brings back its caption and boxes (and its size), to
    change and draw again; an image made elsewhere has no boxes to bring."""

    def fill(image: Image.Image, settings: dict) -> tuple[Any, ...]:
        regions = settings.get("regions")
        if not isinstance(regions, list) or not regions:
            raise InvalidRequest("That image was not made in the layout tab: it has no boxes to bring back.")
        rows = [[str(region["caption"]), *region["box"]] for region in regions]
        w, h = image.size
        return str(settings.get("caption", "")), rows, editor_value(rows, w, h), w, h

    return common.SendTarget(
        "Layout to image (its caption and boxes)", TAB_ID, [ui.caption, ui.table, ui.editor, width, height], fill
    )


def build(studio: StudioContext) -> common.SendTarget:
    examples = layout_examples()
    ui = layout(studio, examples)
    steps, guidance, width, height, seed = ui.sampling.components()
    inject_steps, block_stride, base_ratio, grounding = ui.method_settings
    last_image = gr.State(None)

    private = {"api_visibility": "private"}
    ui.model.change(model_picked(studio), ui.model, [width, height, guidance, steps, grounding], **private)
    ui.editor.input(on_editor_input, [ui.editor, ui.new_caption, width, height], [ui.table, ui.editor], **private)
    gr.on(
        [ui.new_caption.submit, ui.new_caption.blur],
        caption_last_uncaptioned,
        [ui.table, ui.new_caption, width, height],
        [ui.table, ui.editor],
        **private,
    )
    gr.on(
        [ui.table.input, width.change, height.change],
        lambda rows, w, h: editor_value(rows, int(w), int(h)),
        [ui.table, width, height],
        ui.editor,
        **private,
    )
    ui.clear.click(
        lambda w, h: ([], editor_value([], int(w), int(h))), [width, height], [ui.table, ui.editor], **private
    )
    ui.example.input(
        example_loader(examples), [ui.example, width, height], [ui.caption, ui.table, ui.editor], **private
    )
    ui.method.input(
        method_picked(studio), [ui.method, ui.model], [ui.model, ui.regional_options, ui.siamlayout_options], **private
    )
    ui.overlay.change(
        lambda made, with_boxes: show(made[0], made[1], with_boxes) if made else gr.update(),
        [last_image, ui.overlay],
        ui.result,
        **private,
    )
    job = common.in_gpu_slot(
        ui.run.click,
        generate_handler(studio),
        [
            ui.model,
            ui.caption,
            ui.table,
            steps,
            guidance,
            width,
            height,
            seed,
            inject_steps,
            block_stride,
            base_ratio,
            ui.overlay,
            ui.method,
            grounding,
        ],
        [ui.result, ui.info, last_image],
        api_name="layout_generate",
    )
    common.wire_cancel(studio, ui.cancel, job, "layout_cancel")
    return send_target(ui, width, height)
