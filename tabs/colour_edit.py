"""Colour-editing tab (ColorCtrl): UI and wiring only; the method is studio.methods.colour."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from studio.catalogue import ModelSpec
from studio.context import StudioContext
from studio.errors import InvalidRequest
from studio.metadata import save_image
from studio.methods.colour import COLOUR_NAMES, ColourEditSettings, recolour_prompt
from studio.presets import example_rows
from studio.runner import Job
from tabs import common

GENERATE, UPLOAD = "Generate it from the source prompt", common.UPLOAD_SOURCE
MASK_TINT = np.array([255, 60, 200], dtype=np.float32)


def serves(spec: ModelSpec) -> bool:
    return spec.flow is not None


def mask_overlay(image: Image.Image, mask: np.ndarray) -> Image.Image:
    """The image with the kept-colour region tinted, so the user sees what the edit may change."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    tinted = np.where(mask[..., None], 0.55 * pixels + 0.45 * MASK_TINT, 0.6 * pixels)
    return Image.fromarray(tinted.clip(0, 255).astype(np.uint8))


@dataclass
class ColourTab:
    model: gr.Dropdown
    source: common.SourcePicker
    source_prompt: gr.Textbox
    word: gr.Textbox
    colour: gr.Dropdown
    picker: gr.ColorPicker
    target_prompt: gr.Textbox
    sampling: common.SamplingControls
    form: common.Form
    run: gr.Button
    cancel: gr.Button
    outputs: list[Any]


def layout(studio: StudioContext) -> ColourTab:
    default = common.default_model(studio, serves)
    with gr.Row():
        with gr.Column(scale=2):
            model = gr.Dropdown(common.model_choices(studio, serves), value=default.id, label="Model (SD3 and FLUX)")
            source = common.source_picker(GENERATE)
            found = example_rows("colour_edit", ["source", "word", "colour"])
            opening = found[0] if found else ["", "", "blue"]
            source_prompt = gr.Textbox(label="Source prompt", lines=2, value=opening[0], elem_id="colour-source")
            with gr.Row():
                word = gr.Textbox(
                    label="Object to recolour (a word of the source prompt)", value=opening[1], elem_id="colour-word"
                )
                colour = gr.Dropdown(
                    [name for name in COLOUR_NAMES if name != "grey"],
                    value=opening[2],
                    elem_id="colour-colour",
                    allow_custom_value=True,
                    label="New colour",
                )
                picker = gr.ColorPicker(label="…or pick one", value="#2850dc")
            target_prompt = gr.Textbox(
                label="Target prompt (built from the above; edit freely)",
                lines=2,
                value=recolour_prompt(*opening) if found else "",
                elem_id="colour-target",
            )
            run, cancel = common.run_and_cancel("Recolour")
            intensity = common.setting_slider(ColourEditSettings, "intensity")
            with gr.Accordion("Sampling", open=False):
                sampling = common.sampling_controls(ColourEditSettings, default, steps=default.steps)
                threshold = common.setting_slider(ColourEditSettings, "threshold")
            gr.Examples(
                found,
                inputs=[source_prompt, word, colour],
                label="Examples",
            )
        with gr.Column(scale=3):
            compare = gr.ImageSlider(label="Before / after", type="pil")
            with gr.Row():
                mask_view = gr.Image(label="Edit mask (tinted: takes the new colour)", type="pil", height=256)
                result = gr.Image(label="Result", type="pil", format="png", height=256)
            info = gr.JSON(label="Settings of this result")
    steps, guidance, width, height, seed = sampling.components()
    form = common.Form(
        ColourEditSettings,
        {
            "source_prompt": source_prompt,
            "target_prompt": target_prompt,
            "word": word,
            "intensity": intensity,
            "steps": steps,
            "guidance": guidance,
            "width": width,
            "height": height,
            "seed": seed,
            "threshold": threshold,
        },
    )
    return ColourTab(
        model,
        source,
        source_prompt,
        word,
        colour,
        picker,
        target_prompt,
        sampling,
        form,
        run,
        cancel,
        [compare, mask_view, result, info],
    )


def on_target(source_text: str, object_word: str, new_colour: str) -> str | dict:
    if not (source_text or "").strip() or not (object_word or "").strip() or not (new_colour or "").strip():
        return gr.update()
    try:
        return recolour_prompt(source_text, object_word, new_colour)
    except InvalidRequest:  # a word still being typed: Recolour says what is wrong, not every keystroke
        return gr.update()


def edit_handler(studio: StudioContext, form: common.Form) -> Callable:
    # Gradio passes its request and progress only to parameters before a *values one.
    def on_edit(request: gr.Request, progress=gr.Progress(), *values):
        model_id, mode, source_image, *fields = values
        if mode == UPLOAD and source_image is None:
            raise gr.Error("Upload the image to edit, or choose to generate it from the source prompt.")
        with common.user_errors("Colour edit"):
            settings = form.read(tuple(fields), model=model_id)
        inputs = {"image": source_image} if mode == UPLOAD else {}
        progress((0, 2 * settings.steps), desc="Loading model")
        phase = common.progress_callback(progress, "Source, then target")
        edit = common.run_job(studio, request, "Colour edit", Job("colour_edit", settings, inputs), phase)
        if edit is None:
            return gr.update(), gr.update(), gr.update(), gr.update()
        before = source_image.convert("RGB").resize(edit.result.size) if mode == UPLOAD else edit.source
        payload = {
            "method": "ColorCtrl",
            **edit.settings.to_dict(),
            "seconds": round(edit.seconds, 3),
            "source_cached": edit.source_cached,
        }
        path = save_image(
            edit.result,
            payload,
            studio.history.folder(common.session_of(request)),
            f"colour-{settings.model}-{settings.seed}",
        )
        return (before, edit.result), mask_overlay(edit.source, edit.mask), str(path), payload

    return on_edit


TAB_ID = "colour-editing"


def build(studio: StudioContext, text_to_image_history: gr.State) -> common.SendTarget:
    """The tab; returns where a history image goes in it (the image to recolour)."""
    ui = layout(studio)
    catalogue = studio.registry.catalogue
    steps, guidance, width, height, _ = ui.sampling.components()
    gr.on(
        [ui.source_prompt.change, ui.word.change, ui.colour.change],
        on_target,
        [ui.source_prompt, ui.word, ui.colour],
        ui.target_prompt,
        api_name="colour_target_prompt",
    )
    ui.picker.input(lambda value: value, ui.picker, ui.colour, api_visibility="private")
    ui.model.input(
        lambda model_id: common.sampling_updates(catalogue.get(model_id), catalogue.get(model_id).steps),
        ui.model,
        [steps, guidance, width, height],
        api_name="colour_model_defaults",
    )
    ui.source.wire(studio, serves, "edit colours", text_to_image_history, ui.model, ui.source_prompt, ui.sampling)
    job = common.in_gpu_slot(
        ui.run.click,
        edit_handler(studio, ui.form),
        [ui.model, ui.source.mode, ui.source.image, *ui.form.inputs],
        ui.outputs,
        api_name="colour_edit",
    )
    common.start_slider_at_change(job, ui.outputs[0])
    common.wire_cancel(studio, ui.cancel, job, "colour_cancel")
    return ui.source.send_target("Colour editing (as the image to recolour)", TAB_ID)
