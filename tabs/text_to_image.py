"""Text-to-image tab: UI and wiring only; generation lives in studio.generation."""

from __future__ import annotations

import random
from typing import Any

import gradio as gr

from studio.catalogue import ModelSpec
from studio.context import StudioContext
from studio.errors import Cancelled
from studio.generation import ASPECT_RATIOS, MAX_SEED, GenerationSettings, size_for_aspect
from studio.gpu import gpu_task
from studio.metadata import read_settings, save_png
from studio.presets import example_prompts
from studio.registry import ModelState
from tabs.common import (
    LoraControls,
    cancel_handler,
    lora_controls,
    model_choices,
    progress_callback,
    run_and_cancel,
    sampling_controls,
    sampling_updates,
    session_of,
    setting_slider,
    user_errors,
)

HISTORY_LIMIT = 48
GUIDANCE_LABELS = {
    "cfg": "Guidance (CFG)",
    "true-cfg": "Guidance (true CFG)",
    "embedded": "Embedded guidance",
    "none": "Guidance",
}


def describe(settings: GenerationSettings, seconds: float) -> str:
    return (
        f"{settings.model} · seed {settings.seed} · {settings.steps} steps · guidance {settings.guidance:g} · "
        f"{settings.width}×{settings.height} · {seconds:.2f} s"
    )


def guidance_display(spec: ModelSpec) -> dict[str, Any]:
    """The guidance slider's label and visibility for the model's guidance kind. A model without
    guidance gets no slider at all; embedded guidance is named apart from CFG because it is an
    input of the distilled model, with no negative prompt and no second pass."""
    return {"label": GUIDANCE_LABELS[spec.guidance], "visible": spec.guidance != "none"}


def control_updates(spec: ModelSpec) -> tuple[Any, ...]:
    """Steps, guidance, width, height, negative prompt and aspect controls for a model's defaults."""
    steps, _, width, height = sampling_updates(spec, spec.steps)
    return (
        steps,
        gr.update(value=spec.guidance_scale, **guidance_display(spec)),
        width,
        height,
        gr.update(visible=spec.accepts_negative_prompt),
        gr.update(value="1:1"),
    )


def build(studio: StudioContext) -> gr.State:
    """The tab; returns its session history ([(png path, caption)], newest first) for other tabs."""
    registry = studio.registry
    default = registry.catalogue.get(studio.default_model)
    with gr.Row():
        with gr.Column(scale=2):
            model = gr.Dropdown(model_choices(studio), value=default.id, label="Model")
            prompt = gr.Textbox(label="Prompt", lines=2, placeholder="a large red circle on the left, gray background")
            negative = gr.Textbox(label="Negative prompt", visible=default.accepts_negative_prompt)
            sampling = sampling_controls(
                GenerationSettings, default, steps=default.steps, guidance_display=guidance_display(default)
            )
            steps, guidance, width, height, seed = sampling.components()
            with gr.Row():
                aspect = gr.Dropdown(list(ASPECT_RATIOS), value="1:1", label="Aspect ratio")
                dice = gr.Button("Random seed", size="sm")
                count = setting_slider(GenerationSettings, "count")
            run, cancel = run_and_cancel("Generate")
            lora = lora_controls()
            reuse = gr.File(label="Reuse settings: drop a PNG made by the studio", file_types=[".png"])
            gr.Examples([[p] for p in example_prompts("text_to_image")], inputs=[prompt], label="Examples")
        with gr.Column(scale=3):
            gallery = gr.Gallery(label="Results", columns=3, height="auto", format="png", show_label=True)
            info = gr.Markdown(label="Settings of these results")
    history = gr.State([])

    @gpu_task()
    def on_generate(
        model_id,
        prompt_text,
        negative_text,
        step_count,
        guidance_scale,
        w,
        h,
        seed_value,
        image_count,
        past,
        active_adapters=(),
        adapter_scale=1.0,
        request: gr.Request = None,
        progress=gr.Progress(),
    ):
        cancel = studio.cancellations.start(session_of(request))
        made: list[tuple[str, str]] = []

        def shown():
            return (made[::-1] + past)[:HISTORY_LIMIT]

        # Gradio has checked the sliders' types; an emptied seed box means seed 0.
        settings = GenerationSettings(
            model=model_id,
            prompt=prompt_text or "",
            negative_prompt=negative_text or "",
            steps=int(step_count),
            guidance=float(guidance_scale),
            width=int(w),
            height=int(h),
            seed=int(seed_value or 0),
            count=int(image_count),
            adapters=LoraControls.requested(active_adapters, adapter_scale),
        )
        with user_errors("Generation"):
            try:
                progress((0, settings.steps * settings.count), desc="Loading model")
                for result in studio.runner.run(
                    "generate", settings, {}, progress_callback(progress, "Denoising"), cancel
                ):
                    path = save_png(result, studio.output_dir)
                    made.append((str(path), describe(result.settings, result.seconds)))
                    yield shown(), "\n\n".join(caption for _, caption in made), shown()
            except Cancelled:
                gr.Info(f"Cancelled; kept the {len(made)} finished image(s).")
                yield shown(), "\n\n".join(caption for _, caption in made), shown()

    def on_model_picked(model_id: str):
        spec = registry.catalogue.get(model_id)
        if registry.state(model_id) is ModelState.UNAVAILABLE:
            gr.Warning(f"{spec.name} is not in the local cache and the studio is offline; it cannot run here.")
        return control_updates(spec)

    def on_aspect(model_id: str, ratio: str):
        return size_for_aspect(registry.catalogue.get(model_id), ratio)

    def on_reuse(path: str | None):
        if not path:
            return (gr.update(),) * 9
        with user_errors("Reading settings"):
            settings = read_settings(path)
        if settings.model not in registry.catalogue:
            raise gr.Error(f"That image was made with '{settings.model}', which this studio's catalogue lacks.")
        spec = registry.catalogue.get(settings.model)
        return (
            gr.update(value=settings.model),
            settings.prompt,
            gr.update(value=settings.negative_prompt, visible=spec.accepts_negative_prompt),
            gr.update(value=settings.steps, maximum=spec.max_steps),
            gr.update(value=settings.guidance, **guidance_display(spec)),
            gr.update(value=settings.width, step=spec.size_multiple),
            gr.update(value=settings.height, step=spec.size_multiple),
            settings.seed,
            1,
        )

    inputs = [model, prompt, negative, steps, guidance, width, height, seed, count, history, lora.active, lora.scale]
    gr.on(
        [run.click, prompt.submit],
        on_generate,
        inputs,
        [gallery, info, history],
        api_name="generate",
        concurrency_limit=1,
        concurrency_id="gpu",
    ).then(
        lambda current: gr.update(choices=model_choices(studio), value=current), model, model, api_visibility="private"
    )
    cancel.click(cancel_handler(studio), None, None, api_name="cancel")
    model.input(on_model_picked, model, [steps, guidance, width, height, negative, aspect], api_name="model_defaults")
    lora.wire(studio, model, api_name="add_adapter")
    aspect.input(on_aspect, [model, aspect], [width, height], api_name="aspect_size")
    dice.click(lambda: random.randint(0, MAX_SEED), None, seed, api_name="random_seed")
    reuse.upload(
        on_reuse,
        reuse,
        [model, prompt, negative, steps, guidance, width, height, seed, count],
        api_name="reuse_settings",
    )
    return history
