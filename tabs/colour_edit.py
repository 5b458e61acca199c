"""Colour-editing tab (ColorCtrl): UI and wiring only; the method is studio.methods.colour."""

from __future__ import annotations

import gradio as gr
import numpy as np
from PIL import Image

from studio.catalogue import ModelSpec
from studio.context import StudioContext
from studio.errors import InvalidRequest
from studio.gpu import gpu_task
from studio.metadata import read_settings, save_image
from studio.methods.colour import COLOUR_NAMES, ColourEditSettings, recolour_prompt
from studio.presets import example_rows
from tabs.common import (
    cancel_handler,
    default_model,
    model_choices,
    progress_callback,
    run_and_cancel,
    run_job,
    sampling_controls,
    sampling_updates,
    setting_slider,
    user_errors,
)

GENERATE, UPLOAD = "Generate it from the source prompt", "Edit an image (inverted)"
MASK_TINT = np.array([255, 60, 200], dtype=np.float32)


def serves(spec: ModelSpec) -> bool:
    return spec.family.flow is not None


def mask_overlay(image: Image.Image, mask: np.ndarray) -> Image.Image:
    """The image with the kept-colour region tinted, so the user sees what the edit may change."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    tinted = np.where(mask[..., None], 0.55 * pixels + 0.45 * MASK_TINT, 0.6 * pixels)
    return Image.fromarray(tinted.clip(0, 255).astype(np.uint8))


def build(studio: StudioContext, text_to_image_history: gr.State) -> None:
    registry = studio.registry
    choices = model_choices(studio, serves)
    default = default_model(studio, serves)
    with gr.Row():
        with gr.Column(scale=2):
            model = gr.Dropdown(choices, value=default.id, label="Model (SD3 and FLUX)")
            source_mode = gr.Radio([GENERATE, UPLOAD], value=GENERATE, label="Source")
            image = gr.Image(type="pil", label="Image to edit", visible=False, sources=["upload", "clipboard"])
            use_last = gr.Button("Use the last text-to-image result", size="sm")
            source_prompt = gr.Textbox(
                label="Source prompt", lines=2, placeholder="a large red circle on the left, gray background"
            )
            with gr.Row():
                word = gr.Textbox(label="Object to recolour (a word of the source prompt)", placeholder="circle")
                colour = gr.Dropdown(
                    [name for name in COLOUR_NAMES if name != "grey"],
                    value="blue",
                    allow_custom_value=True,
                    label="New colour",
                )
                picker = gr.ColorPicker(label="…or pick one", value="#2850dc")
            target_prompt = gr.Textbox(label="Target prompt (built from the above; edit freely)", lines=2)
            intensity = setting_slider(ColourEditSettings, "intensity")
            with gr.Accordion("Sampling", open=False):
                sampling = sampling_controls(ColourEditSettings, default, steps=default.steps)
                threshold = setting_slider(ColourEditSettings, "threshold")
            steps, guidance, width, height, seed = sampling.components()
            run, cancel = run_and_cancel("Recolour")
            gr.Examples(
                example_rows("colour_edit", ["source", "word", "colour"]),
                inputs=[source_prompt, word, colour],
                label="Examples",
            )
        with gr.Column(scale=3):
            compare = gr.ImageSlider(label="Before / after", type="pil")
            with gr.Row():
                mask_view = gr.Image(label="Edit mask (tinted: takes the new colour)", type="pil", height=256)
                result = gr.Image(label="Result", type="pil", format="png", height=256)
            info = gr.JSON(label="Settings of this result")

    def on_target(source_text: str, object_word: str, new_colour: str) -> str:
        if not (source_text or "").strip() or not (object_word or "").strip() or not (new_colour or "").strip():
            return gr.update()
        try:
            return recolour_prompt(source_text, object_word, new_colour)
        except InvalidRequest as error:
            gr.Warning(str(error))
            return gr.update()

    @gpu_task()
    def on_edit(
        model_id,
        mode,
        source_image,
        source_text,
        target_text,
        object_word,
        strength,
        step_count,
        guidance_scale,
        w,
        h,
        seed_value,
        epsilon,
        request: gr.Request,
        progress=gr.Progress(),
    ):
        if mode == UPLOAD and source_image is None:
            raise gr.Error("Upload the image to edit, or choose to generate it from the source prompt.")
        settings = ColourEditSettings(
            model=model_id,
            source_prompt=source_text or "",
            target_prompt=target_text or "",
            word=object_word or "",
            intensity=float(strength),
            steps=int(step_count),
            guidance=float(guidance_scale),
            seed=int(seed_value or 0),
            width=int(w),
            height=int(h),
            threshold=float(epsilon),
        )
        inputs = {"image": source_image} if mode == UPLOAD else {}
        progress((0, 2 * settings.steps), desc="Loading model")
        edit = run_job(
            studio,
            request,
            "Colour edit",
            lambda cancel: studio.runner.run(
                "colour_edit", settings, inputs, progress_callback(progress, "Source, then target"), cancel
            ),
        )
        if edit is None:
            return gr.update(), gr.update(), gr.update(), gr.update()
        before = source_image.convert("RGB").resize(edit.result.size) if mode == UPLOAD else edit.source
        payload = {
            "method": "ColorCtrl",
            **edit.settings.to_dict(),
            "seconds": round(edit.seconds, 3),
            "source_cached": edit.source_cached,
        }
        path = save_image(edit.result, payload, studio.output_dir, f"colour-{settings.model}-{settings.seed}")
        return (before, edit.result), mask_overlay(edit.source, edit.mask), str(path), payload

    def on_use_last(history: list, model_id: str):
        if not history:
            raise gr.Error("Make an image in the text-to-image tab first.")
        path = history[0][0]
        with user_errors("Reading the last result"):
            made = read_settings(path)
        spec = registry.catalogue.get(made.model)
        if serves(spec):
            gr.Info(f"Remade exactly from its seed with {spec.name}: no inversion needed.")
            return (
                made.model,
                GENERATE,
                gr.update(visible=False),
                made.prompt,
                made.steps,
                made.guidance,
                made.width,
                made.height,
                made.seed,
            )
        gr.Info(f"{spec.name} cannot edit colours; its image will be inverted with the chosen model.")
        with Image.open(path) as opened:
            picture = opened.convert("RGB")
        return (
            model_id,
            UPLOAD,
            gr.update(value=picture, visible=True),
            made.prompt,
            gr.update(),
            gr.update(),
            made.width,
            made.height,
            gr.update(),
        )

    def on_model_picked(model_id: str):
        spec = registry.catalogue.get(model_id)
        return sampling_updates(spec, spec.steps)

    gr.on(
        [source_prompt.change, word.change, colour.change],
        on_target,
        [source_prompt, word, colour],
        target_prompt,
        api_name="colour_target_prompt",
    )
    picker.input(lambda value: value, picker, colour, api_visibility="private")
    source_mode.change(lambda mode: gr.update(visible=mode == UPLOAD), source_mode, image, api_visibility="private")
    model.input(on_model_picked, model, [steps, guidance, width, height], api_name="colour_model_defaults")
    use_last.click(
        on_use_last,
        [text_to_image_history, model],
        [model, source_mode, image, source_prompt, steps, guidance, width, height, seed],
        api_visibility="private",
    )
    run.click(
        on_edit,
        [
            model,
            source_mode,
            image,
            source_prompt,
            target_prompt,
            word,
            intensity,
            steps,
            guidance,
            width,
            height,
            seed,
            threshold,
        ],
        [compare, mask_view, result, info],
        api_name="colour_edit",
        concurrency_limit=1,
        concurrency_id="gpu",
    )
    cancel.click(cancel_handler(studio), None, None, api_name="colour_cancel")
