"""Layout-to-image tab: a global caption and boxes with their own captions; UI and wiring only
(the method is studio.methods.layout)."""

from __future__ import annotations

import gradio as gr
from PIL import Image, ImageDraw

from studio.catalogue import ModelSpec
from studio.context import StudioContext
from studio.errors import Cancelled, InvalidRequest
from studio.gpu import gpu_task
from studio.metadata import save_image
from studio.methods.layout import MAX_REGIONS, LayoutSettings, Region, regional_generate, validate_regions
from studio.presets import layout_examples
from tabs.common import (
    cancel_handler,
    model_choices,
    run_and_cancel,
    sampling_controls,
    session_of,
    user_errors,
)

HEADERS = ["caption", "x1", "y1", "x2", "y2"]
BOX_COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45", "#469990",
               "#9a6324"]
PREVIEW_SIDE = 512


def serves(spec: ModelSpec) -> bool:
    return spec.family.token_order in ("text-image", "image-text", "cross-attention")


def regions_from_table(rows: list[list]) -> tuple[Region, ...]:
    """The table's filled rows as regions (blank rows are ignored), checked and clamped."""
    regions = []
    for number, row in enumerate(rows or [], start=1):
        cells = list(row) + [None] * (5 - len(row))
        if all(cell in (None, "") for cell in cells):
            continue
        try:
            box = tuple(float(cell) for cell in cells[1:5])
        except (TypeError, ValueError):
            raise InvalidRequest(f"Box {number}: x1, y1, x2, y2 must be numbers between 0 and 1.") from None
        regions.append(Region(str(cells[0] or ""), box))
    return validate_regions(regions)


def table_from_regions(regions: tuple[Region, ...]) -> list[list]:
    return [[region.caption, *(round(value, 3) for value in region.box)] for region in regions]


def draw_boxes(image: Image.Image, regions: tuple[Region, ...], pending: tuple[float, float] | None = None) -> Image.Image:
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
    if pending is not None:
        x, y = pending[0] * width, pending[1] * height
        draw.ellipse([x - 4, y - 4, x + 4, y + 4], outline="black", width=2)
    return canvas


def blank_canvas(width: int, height: int) -> Image.Image:
    scale = PREVIEW_SIDE / max(width, height)
    return Image.new("RGB", (max(1, round(width * scale)), max(1, round(height * scale))), "#f4f4f4")


def build(studio: StudioContext) -> None:
    registry = studio.registry
    choices = model_choices(studio, serves)
    default_id = studio.default_model if serves(registry.catalogue.get(studio.default_model)) else choices[0][1]
    default = registry.catalogue.get(default_id)
    examples = layout_examples()
    with gr.Row():
        with gr.Column(scale=2):
            model = gr.Dropdown(choices, value=default.id, label="Model")
            gr.Markdown("Method: **training-free regional attention** (joint attention on FLUX and SD3, text "
                        "cross-attention on PixArt and SANA).")
            caption = gr.Textbox(label="Global caption", lines=2)
            new_caption = gr.Textbox(label="Caption for the next box",
                                     placeholder="a large red circle on the left, gray background")
            canvas = gr.Image(value=blank_canvas(default.width, default.height), type="pil", interactive=False,
                              label="Canvas: click two opposite corners to add a box", elem_id="layout-canvas")
            table = gr.Dataframe(headers=HEADERS, datatype=["str", "number", "number", "number", "number"],
                                 col_count=(5, "fixed"), row_count=(0, "dynamic"), type="array", interactive=True,
                                 label=f"Boxes (up to {MAX_REGIONS}; edit to move or resize, x and y from 0 to 1)")
            with gr.Row():
                delete_number = gr.Number(value=1, precision=0, minimum=1, maximum=MAX_REGIONS, label="Box number")
                delete = gr.Button("Delete box", size="sm")
                clear = gr.Button("Clear boxes", size="sm")
            with gr.Accordion("Sampling and regional attention", open=False):
                sampling = sampling_controls(default, 24 if default.steps >= 8 else default.steps, seed=0)
                with gr.Row():
                    inject_steps = gr.Slider(0, 50, value=8, step=1, label="Masked steps (first N)")
                    block_stride = gr.Slider(1, 4, value=1, step=1, label="Mask every k-th block")
                    base_ratio = gr.Slider(0, 1, value=0.2, step=0.05, label="Base ratio")
            steps, guidance, width, height, seed = sampling.components()
            run, cancel = run_and_cancel("Generate layout")
            example = gr.Dropdown([(scene["caption"], index) for index, scene in enumerate(examples)],
                                  label="Load an example layout", value=None)
        with gr.Column(scale=3):
            overlay = gr.Checkbox(value=True, label="Show the boxes over the result")
            result = gr.Image(label="Result", type="pil", format="png", height=512, elem_id="layout-result")
            info = gr.JSON(label="Settings of this result")
    pending = gr.State(None)  # the first corner of a box being drawn
    last_image = gr.State(None)

    def preview(rows, w, h, corner=None):
        try:
            regions = regions_from_table(rows)
        except InvalidRequest:
            regions = ()
        return draw_boxes(blank_canvas(int(w), int(h)), regions, corner)

    def on_canvas_click(rows, box_caption, corner, w, h, event: gr.SelectData):
        picture = blank_canvas(int(w), int(h))
        point = (event.index[0] / picture.width, event.index[1] / picture.height)
        if corner is None:
            return gr.update(), point, preview(rows, w, h, point)
        rows = [row for row in rows or [] if any(cell not in (None, "") for cell in row)]
        if len(rows) >= MAX_REGIONS:
            gr.Warning(f"At most {MAX_REGIONS} boxes.")
            return rows, None, preview(rows, w, h)
        x1, x2 = sorted((corner[0], point[0]))
        y1, y2 = sorted((corner[1], point[1]))
        if x2 - x1 < 0.01 or y2 - y1 < 0.01:
            gr.Warning("That box has no area: click two opposite corners.")
            return rows, None, preview(rows, w, h)
        rows.append([(box_caption or "").strip() or f"box {len(rows) + 1}",
                     round(x1, 3), round(y1, 3), round(x2, 3), round(y2, 3)])
        return rows, None, preview(rows, w, h)

    def on_delete(rows, number, w, h):
        rows = list(rows or [])
        if not 1 <= int(number or 0) <= len(rows):
            raise gr.Error(f"There is no box {number}; the layout has {len(rows)}.")
        del rows[int(number) - 1]
        return rows, preview(rows, w, h)

    def on_example(index, w, h):
        if index is None:
            return gr.update(), gr.update(), gr.update()
        scene = examples[int(index)]
        rows = [[region["caption"], *region["box"]] for region in scene["regions"]]
        return scene["caption"], rows, preview(rows, w, h)

    def show(image, settings, with_boxes):
        if image is None:
            return gr.update()
        if not with_boxes:
            return image
        # Small results are enlarged first so the captions stay legible.
        scale = max(1, PREVIEW_SIDE // max(image.size))
        return draw_boxes(image.resize((image.width * scale, image.height * scale), Image.NEAREST), settings.regions)

    @gpu_task()
    def on_generate(model_id, global_caption, rows, step_count, guidance_scale, w, h, seed_value, masked_steps,
                    stride, ratio, with_boxes, request: gr.Request, progress=gr.Progress()):
        cancel_switch = studio.cancellations.start(session_of(request))
        with user_errors("Layout generation"):
            settings = LayoutSettings(
                model=model_id, caption=global_caption or "", regions=regions_from_table(rows), steps=int(step_count),
                guidance=float(guidance_scale), seed=int(seed_value or 0), width=int(w), height=int(h),
                inject_steps=int(masked_steps), block_stride=int(stride), base_ratio=float(ratio))
            try:
                made = regional_generate(registry, settings, lambda done, total: progress((done, total), desc="Denoising"),
                                         cancel_switch)
            except Cancelled:
                gr.Warning("Layout generation cancelled.")
                return gr.update(), gr.update(), gr.update()
        payload = {"method": "regional attention", **made.settings.to_dict(), "seconds": round(made.seconds, 3)}
        save_image(made.image, payload, studio.output_dir, f"layout-{settings.model}-{settings.seed}")
        return show(made.image, made.settings, with_boxes), payload, (made.image, made.settings)

    canvas.select(on_canvas_click, [table, new_caption, pending, width, height], [table, pending, canvas],
                  api_visibility="private")
    gr.on([table.input, width.change, height.change], lambda rows, w, h: preview(rows, w, h), [table, width, height],
          canvas, api_visibility="private")
    delete.click(on_delete, [table, delete_number, width, height], [table, canvas], api_visibility="private")
    clear.click(lambda w, h: ([], blank_canvas(int(w), int(h)), None), [width, height], [table, canvas, pending],
                api_visibility="private")
    example.input(on_example, [example, width, height], [caption, table, canvas], api_visibility="private")
    overlay.change(lambda made, with_boxes: show(*(made or (None, None)), with_boxes), [last_image, overlay], result,
                   api_visibility="private")
    run.click(on_generate, [model, caption, table, steps, guidance, width, height, seed, inject_steps, block_stride,
                            base_ratio, overlay], [result, info, last_image],
              api_name="layout_generate", concurrency_limit=1, concurrency_id="gpu")
    cancel.click(cancel_handler(studio), None, None, api_name="layout_cancel")
