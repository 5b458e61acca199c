"""In-context image sets tab (In-Context LoRA): UI and wiring only; the toolkit is
studio.methods.incontext."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr

from studio.catalogue import ModelSpec
from studio.context import StudioContext
from studio.metadata import save_image
from studio.methods.incontext import ImageSet, SetRequest, load_sets, set_canvas, set_lora, write_panels
from studio.params import param
from studio.runner import Job
from tabs import common

PANEL_BOXES = 4  # the official sets have at most four panels


def serves(spec: ModelSpec) -> bool:
    return spec.family.name == "flux" and "inpaint" in spec.tasks


@dataclass
class SetsTab:
    chosen: gr.Dropdown
    model: gr.Dropdown
    use_lora: gr.Checkbox
    caption: gr.Textbox
    panel_texts: list[gr.Textbox]
    prompt: gr.Textbox
    references: list[gr.Image]
    lora: common.LoraControls
    sampling: common.SamplingControls
    run: gr.Button
    cancel: gr.Button
    outputs: list[Any]


def panel_text(image_set: ImageSet, index: int) -> dict[str, Any]:
    """A panel box's value, visibility and label for a set (boxes past its panels hide)."""
    inside = index < image_set.count
    return {
        "value": image_set.panels[index] if inside else "",
        "visible": inside,
        "label": f"Panel {index + 1} {image_set.tags[index] if inside else ''}",
    }


def opening(studio: StudioContext, sets: dict[str, ImageSet]) -> tuple[ImageSet, ModelSpec]:
    """The set and model the tab opens on: a set whose LoRA fits the tab's default model; else a
    set whose LoRA fits another model that runs here, on that model (offline: the shapes world's
    sets on the model their LoRA was made for); else the first set on the default model."""
    default = common.default_model(studio, serves)
    registry = studio.registry
    runnable = [
        spec
        for spec in registry.catalogue
        if serves(spec) and registry.offers(spec.id) and common.model_rank(studio, spec) == 0
    ]
    for spec in (default, *runnable):
        fitting = next((image_set for image_set in sets.values() if image_set.lora_fits(spec)), None)
        if fitting is not None:
            return fitting, spec
    return next(iter(sets.values())), default


def layout(studio: StudioContext, sets: dict[str, ImageSet]) -> SetsTab:
    first, default = opening(studio, sets)
    with gr.Row():
        with gr.Column(scale=2):
            with gr.Row():
                chosen = gr.Dropdown(
                    [(s.label, s.id) for s in sets.values()],
                    value=first.id,
                    label="Image set",
                    elem_id="image-set-chosen",
                )
                model = gr.Dropdown(
                    common.model_choices(studio, serves),
                    value=default.id,
                    label="Model (FLUX)",
                    elem_id="image-set-model",
                )
            use_lora = gr.Checkbox(
                value=first.lora_fits(default),
                label="Apply the set's In-Context LoRA (where it fits the model)",
                elem_id="image-set-lora",
            )
            caption = gr.Textbox(value=first.caption, label="Overall caption")
            panel_texts = [gr.Textbox(**panel_text(first, i)) for i in range(PANEL_BOXES)]
            prompt = gr.Textbox(
                value=first.prompt(first.caption, first.panels),
                lines=4,
                label="Full prompt (composed from the above; edit freely)",
                elem_id="image-set-prompt",
            )
            run, cancel = common.run_and_cancel("Generate set")
            with gr.Accordion("Reference panels (optional: the other panels are generated to match)", open=False):
                references = [
                    gr.Image(type="pil", label=f"Panel {i + 1}", visible=i < first.count, height=160)
                    for i in range(PANEL_BOXES)
                ]
            lora = common.lora_controls()
            with gr.Accordion("Sampling", open=False):
                sampling = common.sampling_controls(SetRequest, default)
                sampling.width.value, sampling.height.value = set_canvas(first, default)
        with gr.Column(scale=3):
            result = gr.Image(label="The set", type="pil", format="png", height=480, elem_id="image-set-result")
            gallery = gr.Gallery(label="Panels", columns=4, height="auto", format="png", object_fit="contain")
            archive = gr.File(label="Panels as a zip")
            info = gr.JSON(label="Settings of this set")
    return SetsTab(
        chosen,
        model,
        use_lora,
        caption,
        panel_texts,
        prompt,
        references,
        lora,
        sampling,
        run,
        cancel,
        [result, gallery, archive, info],
    )


def set_picked(studio: StudioContext, sets: dict[str, ImageSet]) -> Callable:
    def on_set(set_id: str, model_id: str):
        image_set = sets[set_id]
        spec = studio.registry.catalogue.get(model_id)
        w, h = set_canvas(image_set, spec)
        texts = [gr.update(**panel_text(image_set, i)) for i in range(PANEL_BOXES)]
        pictures = [gr.update(value=None, visible=i < image_set.count) for i in range(PANEL_BOXES)]
        full = image_set.prompt(image_set.caption, image_set.panels)
        fits = image_set.lora_fits(spec)
        return image_set.caption, *texts, full, *pictures, gr.update(value=w), gr.update(value=h), fits

    return on_set


def generate_handler(studio: StudioContext, sets: dict[str, ImageSet]) -> Callable:
    registry = studio.registry

    # Gradio passes its request and progress only to parameters before a *values one.
    def on_generate(request: gr.Request, progress=gr.Progress(), *values):
        set_id, model_id, apply_lora, extra_adapters, extra_scale, full_prompt, *sampled = values[:11]
        steps, guidance, width, height, seed = sampled
        pictures = values[11:]
        image_set = sets[set_id]
        spec = registry.catalogue.get(model_id)
        with common.user_errors("Image set"):
            adapters = set_lora(registry, image_set, spec) if apply_lora else ()
            # A LoRA trained to read held references is conditioned that way; without it, inpainting.
            reference_mode = image_set.references if adapters else "inpaint"
            if apply_lora and not adapters:
                made_for = image_set.model or "FLUX.1-dev"
                gr.Info(f"The {image_set.label} LoRA is made for {made_for}; {spec.name} runs without it.")
            adapters += common.LoraControls.requested(extra_adapters, extra_scale)
            given = {i: picture for i, picture in enumerate(pictures[: image_set.count]) if picture is not None}
            set_request = common.settings_from(
                SetRequest,
                ("steps", "guidance", "width", "height", "seed"),
                (steps, guidance, width, height, seed),
                model=model_id,
                prompt=full_prompt or "",
                rows=image_set.rows,
                columns=image_set.columns,
                adapters=adapters,
                references=given,
                reference_mode=reference_mode,
            )
        phase = common.progress_callback(progress, "Denoising")
        made = common.run_job(studio, request, "Image set", Job("image_set", set_request, {}), phase)
        if made is None:
            return gr.update(), gr.update(), gr.update(), gr.update()
        payload = {
            "method": "in-context set",
            "set": set_id,
            **made.request.to_dict(),
            "seconds": round(made.seconds, 3),
        }
        path = save_image(
            made.image,
            payload,
            studio.history.folder(common.session_of(request)),
            f"set-{set_id}-{model_id}-{set_request.seed}",
        )
        return made.image, made.panels, str(write_panels(made.panels, path)), payload

    return on_generate


def build(studio: StudioContext) -> None:
    sets = load_sets()
    ui = layout(studio, sets)
    catalogue = studio.registry.catalogue
    steps, guidance, width, height, seed = ui.sampling.components()
    ui.chosen.input(
        set_picked(studio, sets),
        [ui.chosen, ui.model],
        [ui.caption, *ui.panel_texts, ui.prompt, *ui.references, width, height, ui.use_lora],
        api_visibility="private",
    )
    gr.on(
        [ui.caption.input, *(text.input for text in ui.panel_texts)],
        lambda set_id, overall, *texts: sets[set_id].prompt(overall or "", texts[: sets[set_id].count]),
        [ui.chosen, ui.caption, *ui.panel_texts],
        ui.prompt,
        api_name="image_set_prompt",
    )

    def on_model(set_id, model_id):
        spec = catalogue.get(model_id)
        steps_now = common.sampling_updates(spec, param(SetRequest, "steps").default)[0]
        return (*(gr.update(value=side) for side in set_canvas(sets[set_id], spec)), steps_now)

    ui.model.input(on_model, [ui.chosen, ui.model], [width, height, steps], api_visibility="private")
    ui.lora.wire(studio, ui.model, api_name="image_set_add_adapter")
    job = common.in_gpu_slot(
        ui.run.click,
        generate_handler(studio, sets),
        [
            ui.chosen,
            ui.model,
            ui.use_lora,
            ui.lora.active,
            ui.lora.scale,
            ui.prompt,
            steps,
            guidance,
            width,
            height,
            seed,
            *ui.references,
        ],
        ui.outputs,
        api_name="image_set_generate",
    )
    common.wire_cancel(studio, ui.cancel, job, "image_set_cancel")
