"""In-context image sets tab (In-Context LoRA): UI and wiring only; the toolkit is
studio.methods.incontext."""

from __future__ import annotations

import gradio as gr

from studio.catalogue import ModelSpec
from studio.context import StudioContext
from studio.gpu import gpu_task
from studio.metadata import save_image
from studio.methods.incontext import SetRequest, load_sets, set_canvas, set_lora, write_panels
from studio.params import param
from tabs.common import (
    LoraControls,
    cancel_handler,
    default_model,
    lora_controls,
    model_choices,
    progress_callback,
    run_and_cancel,
    run_job,
    sampling_controls,
    sampling_updates,
    user_errors,
)

PANEL_BOXES = 4  # the official sets have at most four panels


def serves(spec: ModelSpec) -> bool:
    return spec.family.name == "flux" and "inpaint" in spec.tasks


def build(studio: StudioContext) -> None:
    registry = studio.registry
    sets = load_sets()
    choices = model_choices(studio, serves)
    default = default_model(studio, serves)
    first = next(iter(sets.values()))
    width0, height0 = set_canvas(first, default)
    with gr.Row():
        with gr.Column(scale=2):
            chosen = gr.Dropdown([(s.label, s.id) for s in sets.values()], value=first.id, label="Image set")
            model = gr.Dropdown(choices, value=default.id, label="Model (FLUX)")
            use_lora = gr.Checkbox(value=True, label="Apply the set's In-Context LoRA (FLUX.1-dev; downloads once)")
            caption = gr.Textbox(value=first.caption, label="Overall caption")
            panel_texts = [
                gr.Textbox(
                    value=first.panels[i] if i < first.count else "",
                    visible=i < first.count,
                    label=f"Panel {i + 1} {first.tags[i] if i < first.count else ''}",
                )
                for i in range(PANEL_BOXES)
            ]
            prompt = gr.Textbox(
                value=first.prompt(first.caption, first.panels),
                lines=4,
                label="Full prompt (composed from the above; edit freely)",
            )
            with gr.Accordion("Reference panels (optional: the other panels are generated to match)", open=False):
                references = [
                    gr.Image(type="pil", label=f"Panel {i + 1}", visible=i < first.count, height=160)
                    for i in range(PANEL_BOXES)
                ]
            lora = lora_controls()
            with gr.Accordion("Sampling", open=False):
                sampling = sampling_controls(SetRequest, default)
                sampling.width.value, sampling.height.value = width0, height0
            steps, guidance, width, height, seed = sampling.components()
            run, cancel = run_and_cancel("Generate set")
        with gr.Column(scale=3):
            result = gr.Image(label="The set", type="pil", format="png", height=480, elem_id="image-set-result")
            gallery = gr.Gallery(label="Panels", columns=4, height="auto", format="png")
            archive = gr.File(label="Panels as a zip")
            info = gr.JSON(label="Settings of this set")

    def on_set(set_id: str, model_id: str):
        image_set = sets[set_id]
        w, h = set_canvas(image_set, registry.catalogue.get(model_id))
        texts = [
            gr.update(
                value=image_set.panels[i] if i < image_set.count else "",
                visible=i < image_set.count,
                label=f"Panel {i + 1} {image_set.tags[i] if i < image_set.count else ''}",
            )
            for i in range(PANEL_BOXES)
        ]
        pictures = [gr.update(value=None, visible=i < image_set.count) for i in range(PANEL_BOXES)]
        return (
            image_set.caption,
            *texts,
            image_set.prompt(image_set.caption, image_set.panels),
            *pictures,
            gr.update(value=w),
            gr.update(value=h),
        )

    def on_compose(set_id: str, overall: str, *texts: str) -> str:
        return sets[set_id].prompt(overall or "", texts[: sets[set_id].count])

    @gpu_task()
    def on_generate(
        set_id,
        model_id,
        apply_lora,
        extra_adapters,
        extra_scale,
        full_prompt,
        step_count,
        guidance_scale,
        w,
        h,
        seed_value,
        *pictures,
        request: gr.Request = None,
        progress=gr.Progress(),
    ):
        image_set = sets[set_id]
        spec = registry.catalogue.get(model_id)
        with user_errors("Image set"):
            adapters = set_lora(registry, image_set, spec) if apply_lora else ()
            if apply_lora and not adapters:
                gr.Info(f"The {image_set.label} LoRA is made for FLUX.1-dev; {spec.name} runs without it.")
            adapters += LoraControls.requested(extra_adapters, extra_scale)
            set_request = SetRequest(
                model=model_id,
                prompt=full_prompt or "",
                rows=image_set.rows,
                columns=image_set.columns,
                width=int(w),
                height=int(h),
                steps=int(step_count),
                guidance=float(guidance_scale),
                seed=int(seed_value or 0),
                adapters=adapters,
                references={i: picture for i, picture in enumerate(pictures[: image_set.count]) if picture is not None},
            )
        made = run_job(
            studio,
            request,
            "Image set",
            lambda cancel: studio.runner.run(
                "image_set", set_request, {}, progress_callback(progress, "Denoising"), cancel
            ),
        )
        if made is None:
            return gr.update(), gr.update(), gr.update(), gr.update()
        payload = {
            "method": "in-context set",
            "set": set_id,
            **made.request.to_dict(),
            "seconds": round(made.seconds, 3),
        }
        path = save_image(made.image, payload, studio.output_dir, f"set-{set_id}-{model_id}-{set_request.seed}")
        return made.image, made.panels, str(write_panels(made.panels, path)), payload

    chosen.input(
        on_set, [chosen, model], [caption, *panel_texts, prompt, *references, width, height], api_visibility="private"
    )
    gr.on(
        [caption.input, *(text.input for text in panel_texts)],
        on_compose,
        [chosen, caption, *panel_texts],
        prompt,
        api_name="image_set_prompt",
    )

    def on_model(set_id, model_id):
        spec = registry.catalogue.get(model_id)
        steps_now = sampling_updates(spec, param(SetRequest, "steps").default)[0]
        return (*(gr.update(value=side) for side in set_canvas(sets[set_id], spec)), steps_now)

    model.input(on_model, [chosen, model], [width, height, steps], api_visibility="private")
    lora.wire(studio, model, api_name="image_set_add_adapter")
    run.click(
        on_generate,
        [chosen, model, use_lora, lora.active, lora.scale, prompt, steps, guidance, width, height, seed, *references],
        [result, gallery, archive, info],
        api_name="image_set_generate",
        concurrency_limit=1,
        concurrency_id="gpu",
    )
    cancel.click(cancel_handler(studio), None, None, api_name="image_set_cancel")
