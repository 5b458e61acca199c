"""Virtual try-on tab: UI and wiring only; the method is studio.methods.tryon."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from studio.catalogue import PROJECT_ROOT, ModelSpec
from studio.context import StudioContext
from studio.metadata import encode_mask, save_image
from studio.methods.tryon import KINDS, TryOnSettings, automatic_mask, check_image, without_backdrop
from studio.presets import example_rows
from studio.runner import Job
from tabs import common

KIND_LABELS = {"upper": "Top (upper body)", "lower": "Trousers or skirt", "dress": "Dress (whole body)"}
MASK_BRUSH = "#ff28c8"


def serves(spec: ModelSpec) -> bool:
    return spec.kind == "fill"


@dataclass
class TryOnTab:
    model: gr.Dropdown
    person: gr.Image
    use_last: gr.Button
    garment: gr.Image
    kind: gr.Radio
    clean_garment: gr.Checkbox
    make_mask: gr.Button
    editor: gr.ImageEditor
    api_mask: gr.Image
    sampling: common.SamplingControls
    form: common.Form
    run: gr.Button
    cancel: gr.Button
    last: gr.State
    outputs: list[Any]


def layout(studio: StudioContext) -> TryOnTab:
    default = common.default_model(studio, serves)
    examples = example_rows("try_on", ["person", "garment", "kind"])
    # Opens on the first example (the dress-up world's), which the default built-in dresses.
    opening = [str(PROJECT_ROOT / examples[0][0]), str(PROJECT_ROOT / examples[0][1])] if examples else [None, None]
    with gr.Row():
        with gr.Column(scale=2):
            model = gr.Dropdown(common.model_choices(studio, serves), value=default.id, label="Model (FLUX Fill)")
            with gr.Row():
                person = gr.Image(
                    value=opening[0], type="pil", label="Person", sources=["upload", "webcam", "clipboard"],
                    height=256, elem_id="tryon-person", format="png",
                )  # fmt: skip
                garment = gr.Image(
                    value=opening[1],
                    type="pil",
                    label="Garment",
                    sources=["upload", "clipboard"],
                    height=256,
                    elem_id="tryon-garment",
                    format="png",
                )
            use_last = gr.Button("Use the last try-on result as the person (dress in layers)", size="sm")
            kind = gr.Radio(
                [(KIND_LABELS[k], k) for k in KINDS],
                value=examples[0][2] if examples else "upper",
                label="Garment kind",
                elem_id="tryon-kind",
            )
            clean_garment = gr.Checkbox(False, label="Remove the garment photo's plain background")
            keep_backdrop = gr.Checkbox(
                True, label="Keep the photo's backdrop inside the mask (where the result shows it)"
            )
            description = gr.Textbox(
                label="Garment description (optional: fills the prompt's product-shot part)",
                placeholder="a red striped top",
            )
            run, cancel = common.run_and_cancel("Try on")
            with gr.Accordion("Sampling", open=False):
                sampling = common.sampling_controls(TryOnSettings, default, steps=default.steps)
                lora_scale = common.setting_slider(TryOnSettings, "lora_scale", info="catvton-flux LoRA (hub models)")
            gr.Examples(
                [[str(PROJECT_ROOT / person), str(PROJECT_ROOT / garment), kind] for person, garment, kind in examples],
                inputs=[person, garment, kind],
                label="Examples (the dress-up world; garments never seen in training)",
            )
        with gr.Column(scale=3):
            editor = gr.ImageEditor(
                type="pil",
                label="Area to repaint: automatic when the person or kind changes; paint or erase to change it",
                brush=gr.Brush(colors=[MASK_BRUSH], default_color=MASK_BRUSH, color_mode="fixed"),
                sources=[],
                elem_id="tryon-mask",
                height=320,
            )
            make_mask = gr.Button("Remake the automatic mask", size="sm")
            compare = gr.ImageSlider(label="Person / wearing the garment", type="pil")
            with gr.Row():
                result = gr.Image(label="Result (PNG with its settings)", type="pil", format="png", height=256)
                canvas = gr.Image(label="The canvas the model filled [garment | person]", type="pil", height=256)
            info = gr.JSON(label="Settings of this result")
            with gr.Row(visible=False):
                api_mask = gr.Image(type="pil", image_mode="L", label="Mask (API: white repaints; empty: automatic)")
    steps, guidance, width, height, seed = sampling.components()
    fields = {"kind": kind, "description": description, "steps": steps, "guidance": guidance}
    fields |= {"width": width, "height": height, "seed": seed, "lora_scale": lora_scale, "keep_backdrop": keep_backdrop}
    return TryOnTab(
        model,
        person,
        use_last,
        garment,
        kind,
        clean_garment,
        make_mask,
        editor,
        api_mask,
        sampling,
        common.Form(TryOnSettings, fields),
        run,
        cancel,
        gr.State(None),
        [compare, result, canvas, info],
    )


def painted(editor: Any) -> np.ndarray | None:
    """The mask painted on the editor's layers (None when nothing is painted)."""
    if not isinstance(editor, dict):
        return None
    # Gradio hands the layers over as images; anything else (an API client's string) is no mask.
    layers = [layer for layer in editor.get("layers") or [] if isinstance(layer, Image.Image)]
    masks = [np.asarray(layer.convert("RGBA"))[..., 3] > 127 for layer in layers]
    joined = np.logical_or.reduce(masks) if masks else None
    return joined if joined is not None and joined.any() else None


def mask_layer(mask: np.ndarray) -> Image.Image:
    """The mask as a translucent brush layer the size of the person, to show and to edit."""
    layer = np.zeros((*mask.shape, 4), dtype=np.uint8)
    layer[mask] = (255, 40, 200, 160)
    return Image.fromarray(layer, mode="RGBA")


def mask_editor(person: Image.Image, mask: np.ndarray | None) -> dict:
    layers = [] if mask is None else [mask_layer(mask)]
    return {"background": person, "layers": layers, "composite": person}


def mask_handler(studio: StudioContext) -> Callable:
    catalogue = studio.registry.catalogue

    def on_mask(model_id: str, person: Image.Image | None, kind: str):
        if person is None:
            return None
        person = person.convert("RGB")
        try:
            with common.user_errors("Automatic mask"):
                mask = automatic_mask(person, kind, catalogue.get(model_id), studio.registry.offline_only)
        except gr.Error as error:
            # Not a failure of the try-on: say why and leave the brush to the user.
            gr.Warning(error.message)
            return mask_editor(person, None)
        return mask_editor(person, mask)

    return on_mask


def try_on_handler(studio: StudioContext, form: common.Form) -> Callable:
    # Gradio passes its request and progress only to parameters before a *values one.
    def on_try_on(request: gr.Request, progress=gr.Progress(), *values):
        model_id, person, garment, clean, editor, api_mask, *fields = values
        with common.user_errors("Try-on"):
            settings = form.read(tuple(fields), model=model_id)
            person = check_image(person, "person")
            if garment is not None and clean:
                garment = without_backdrop(check_image(garment, "garment"))
        mask = np.asarray(api_mask.convert("L")) > 127 if api_mask is not None else painted(editor)
        if mask is not None and mask.shape != (person.height, person.width):
            # The editor keeps the person's size; a mask of another size came with another photo.
            raise gr.Error("The painted mask belongs to another photo: remake the automatic mask.")
        progress((0, settings.steps), desc="Loading model")
        inputs = {"person": person, "garment": garment, "mask": mask}
        phase = common.progress_callback(progress, "Trying on")
        made = common.run_job(studio, request, "Try-on", Job("try_on", settings, inputs), phase)
        if made is None:
            return gr.update(), gr.update(), gr.update(), gr.update(), gr.update()
        for note in made.notes:
            gr.Info(note)
        payload = {
            "method": "catvton-flux in-context try-on",
            **made.settings.to_dict(),
            "seconds": round(made.seconds, 3),
            "mask": encode_mask(made.mask),
            "automatic_mask": mask is None,
        }
        path = save_image(
            made.image, payload, studio.history.folder(common.session_of(request)), f"tryon-{made.settings.model}"
        )
        shown = {key: value for key, value in payload.items() if key != "mask"}
        return (person, made.image), str(path), made.canvas, shown, made.image

    return on_try_on


def use_last_result(last: Image.Image | None) -> Any:
    if last is None:
        gr.Warning("No try-on result yet in this session: try one on first.")
        return gr.update()
    return last


TAB_ID = "virtual-try-on"


def build(studio: StudioContext) -> common.SendTarget:
    """The tab; returns where a history image goes in it (the person)."""
    ui = layout(studio)
    catalogue = studio.registry.catalogue
    steps, guidance, width, height, _ = ui.sampling.components()
    ui.model.input(
        lambda model_id: common.sampling_updates(catalogue.get(model_id), catalogue.get(model_id).steps),
        ui.model,
        [steps, guidance, width, height],
        api_name="tryon_model_defaults",
    )
    gr.on(
        [ui.person.change, ui.kind.change, ui.make_mask.click],
        mask_handler(studio),
        [ui.model, ui.person, ui.kind],
        ui.editor,
        api_name="tryon_mask",
    )
    ui.use_last.click(use_last_result, ui.last, ui.person, api_visibility="private")
    job = common.in_gpu_slot(
        ui.run.click,
        try_on_handler(studio, ui.form),
        [ui.model, ui.person, ui.garment, ui.clean_garment, ui.editor, ui.api_mask, *ui.form.inputs],
        [*ui.outputs, ui.last],
        api_name="try_on",
    )
    common.start_slider_at_change(job, ui.outputs[0])
    common.wire_cancel(studio, ui.cancel, job, "tryon_cancel")
    return common.SendTarget("Virtual try-on (as the person)", TAB_ID, [ui.person], lambda image, settings: (image,))
