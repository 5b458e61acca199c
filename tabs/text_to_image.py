"""Text-to-image tab: UI and wiring only; generation lives in studio.generation."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import gradio as gr

from studio.catalogue import ModelSpec
from studio.context import StudioContext
from studio.errors import Cancelled
from studio.generation import ASPECT_RATIOS, MAX_SEED, GenerationSettings, size_for_aspect
from studio.metadata import read_settings, save_png
from studio.presets import example_prompts
from studio.previews import Preview
from studio.registry import ModelState
from studio.runner import Job
from studio.speed import OFF, SPEEDS, offered
from tabs import common

HISTORY_LIMIT = 48
# The settings the generate handler receives, in its order.
FIELDS = ("prompt", "negative_prompt", "steps", "guidance", "width", "height", "seed", "count")
GUIDANCE_LABELS = {
    "cfg": "Guidance (CFG)",
    "true-cfg": "Guidance (true CFG)",
    "embedded": "Embedded guidance",
    "none": "Guidance",
}


def describe(settings: GenerationSettings, seconds: float, notes: tuple[str, ...] = ()) -> str:
    speed = f" · {SPEEDS[settings.speed].label}" if settings.speed != OFF else ""
    speed += " · compiled" if settings.compiled else ""
    return (
        f"{settings.model} · seed {settings.seed} · {settings.steps} steps · guidance {settings.guidance:g} · "
        f"{settings.width}×{settings.height} · {seconds:.2f} s{speed}" + "".join(f" · {note}" for note in notes)
    )


def guidance_display(spec: ModelSpec) -> dict[str, Any]:
    """The guidance slider's label and visibility for the model's guidance kind. A model without
    guidance gets no slider at all; embedded guidance is named apart from CFG because it is an
    input of the distilled model, with no negative prompt and no second pass."""
    return {"label": GUIDANCE_LABELS[spec.guidance], "visible": spec.guidance != "none"}


def control_updates(spec: ModelSpec) -> tuple[Any, ...]:
    """Steps, guidance, width, height, negative prompt and aspect controls for a model's defaults."""
    steps, _, width, height = common.sampling_updates(spec, spec.steps)
    return (
        steps,
        gr.update(value=spec.guidance_scale, **guidance_display(spec)),
        width,
        height,
        gr.update(visible=spec.accepts_negative_prompt),
        gr.update(value="1:1"),
        gr.update(choices=common.speed_choices(spec), value=OFF),
    )


# The tab's id among the studio's tabs (other tabs send results here).
TAB_ID = "text-to-image"


@dataclass
class TextToImageTab:
    model: gr.Dropdown
    prompt: gr.Textbox
    negative: gr.Textbox
    sampling: common.SamplingControls
    aspect: gr.Dropdown
    dice: gr.Button
    count: gr.Slider
    speed: gr.Dropdown
    compile_blocks: gr.Checkbox
    memory: common.MemoryControls
    run: gr.Button
    cancel: gr.Button
    lora: common.LoraControls
    reuse: gr.File
    gallery: gr.Gallery
    info: gr.Markdown


def layout(studio: StudioContext) -> TextToImageTab:
    default = studio.registry.catalogue.get(studio.default_model)
    with gr.Row():
        with gr.Column(scale=2):
            model = gr.Dropdown(common.model_choices(studio), value=default.id, label="Model")
            prompts = example_prompts("text_to_image")
            # Opens on an example the default built-in draws (a placeholder looks filled and is not).
            prompt = gr.Textbox(label="Prompt", lines=2, value=prompts[0] if prompts else "", elem_id="t2i-prompt")
            negative = gr.Textbox(label="Negative prompt", visible=default.accepts_negative_prompt)
            sampling = common.sampling_controls(
                GenerationSettings, default, steps=default.steps, guidance_display=guidance_display(default)
            )
            with gr.Row():
                aspect = gr.Dropdown(list(ASPECT_RATIOS), value="1:1", label="Aspect ratio")
                dice = gr.Button("Random seed", size="sm")
                count = common.setting_slider(GenerationSettings, "count")
            run, cancel = common.run_and_cancel("Generate")
            # How the model sits in memory, shown before it loads (under the run buttons: they
            # stay above the fold).
            memory_line = gr.Markdown(common.memory_line(studio, default.id), elem_classes=["studio-memory"])
            speed = gr.Dropdown(
                common.speed_choices(default),
                value=OFF,
                label="Speed (diffusers' cache hooks, where the family has them)",
            )
            compile_blocks = gr.Checkbox(
                False, label="Compile the transformer's blocks (torch.compile: the first run compiles, then faster)"
            )
            memory = common.memory_controls(studio, default.id, memory_line)
            lora = common.lora_controls()
            reuse = gr.File(label="Reuse settings: drop a PNG made by the studio", file_types=[".png"])
            gr.Examples([[p] for p in prompts], inputs=[prompt], label="Examples")
        with gr.Column(scale=3):
            gallery = gr.Gallery(
                label="Results", columns=3, height="auto", format="png", show_label=True, object_fit="contain"
            )
            info = gr.Markdown(label="Settings of these results")
    return TextToImageTab(
        model,
        prompt,
        negative,
        sampling,
        aspect,
        dice,
        count,
        speed,
        compile_blocks,
        memory,
        run,
        cancel,
        lora,
        reuse,
        gallery,
        info,
    )


# About this many previews of each image while it forms.
PREVIEWS_PER_IMAGE = 6


def previews_for(steps: int) -> int:
    """Steps between previews: none for a one- or two-step model (the image is there at once)."""
    return 0 if steps <= 2 else max(1, round(steps / PREVIEWS_PER_IMAGE))


def generate_handler(studio: StudioContext) -> Callable:
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
        speed=OFF,
        compile_blocks=False,
        request: gr.Request = None,
        progress=gr.Progress(),
    ):
        made: list[tuple[str, str]] = []

        def shown():
            return (made[::-1] + past)[:HISTORY_LIMIT]

        adapters = common.LoraControls.requested(active_adapters, adapter_scale)
        values = (prompt_text, negative_text, step_count, guidance_scale, w, h, seed_value, image_count)
        with studio.cancellations.job(common.session_of(request)) as cancel, common.user_errors("Generation"):
            settings = common.settings_from(GenerationSettings, FIELDS, values, model=model_id, adapters=adapters)
            settings = replace(
                settings, preview_every=previews_for(settings.steps), speed=speed or OFF, compiled=bool(compile_blocks)
            )
            common.warn_if_far_from_native_size(studio, settings)
            try:
                progress((0, settings.steps * settings.count), desc="Loading model")
                phase = common.progress_callback(progress, "Denoising")
                for result in studio.runner.run(Job("generate", settings, {}), phase, cancel):
                    if isinstance(result, Preview):
                        # The image forming, first in the gallery until it is done.
                        forming = (result.image, f"forming: step {result.done} of {result.total}")
                        yield [forming, *shown()], gr.update(), shown()
                        continue
                    path = save_png(result, studio.history.folder(common.session_of(request)))
                    made.append((str(path), describe(result.settings, result.seconds, result.notes)))
                    yield shown(), "\n\n".join(caption for _, caption in made), shown()
            except Cancelled:
                gr.Info(f"Cancelled; kept the {len(made)} finished image(s).")
                yield shown(), "\n\n".join(caption for _, caption in made), shown()

    return on_generate


def reuse_handler(studio: StudioContext) -> Callable:
    catalogue = studio.registry.catalogue

    def on_reuse(path: str | None):
        if not path:
            return (gr.update(),) * 10
        with common.user_errors("Reading settings"):
            settings = read_settings(path)
        if settings.model not in catalogue:
            raise gr.Error(f"That image was made with '{settings.model}', which this studio's catalogue lacks.")
        spec = catalogue.get(settings.model)
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
            # The speed it ran with, where this model takes it (a cache changes the image a little).
            gr.update(
                choices=common.speed_choices(spec), value=settings.speed if settings.speed in offered(spec) else OFF
            ),
        )

    return on_reuse


def build(studio: StudioContext) -> tuple[gr.State, list[Any]]:
    """The tab; returns its session history ([(png path, caption)], newest first) for other tabs,
    and the components a reused result's settings fill (what `reuse_handler` returns into)."""
    registry = studio.registry
    ui = layout(studio)
    history = gr.State([])
    steps, guidance, width, height, seed = ui.sampling.components()

    def on_model_picked(model_id: str):
        spec = registry.catalogue.get(model_id)
        if registry.state(model_id) is ModelState.UNAVAILABLE:
            gr.Warning(f"{spec.name} is not in the local cache and the studio is offline; it cannot run here.")
        return control_updates(spec)

    inputs = [ui.model, ui.prompt, ui.negative, steps, guidance, width, height, seed, ui.count, history]
    job = common.in_gpu_slot(
        partial(gr.on, [ui.run.click, ui.prompt.submit]),
        generate_handler(studio),
        [*inputs, ui.lora.active, ui.lora.scale, ui.speed, ui.compile_blocks],
        [ui.gallery, ui.info, history],
        api_name="generate",
    )
    job.then(
        lambda current: gr.update(choices=common.model_choices(studio), value=current),
        ui.model,
        ui.model,
        api_visibility="private",
    )
    common.wire_cancel(studio, ui.cancel, job, "cancel")
    ui.model.input(
        on_model_picked,
        ui.model,
        [steps, guidance, width, height, ui.negative, ui.aspect, ui.speed],
        api_name="model_defaults",
    )
    ui.lora.wire(studio, ui.model, api_name="add_adapter")
    ui.memory.wire(studio, ui.model, api_name="memory_policy")
    ui.aspect.input(
        lambda model_id, ratio: size_for_aspect(registry.catalogue.get(model_id), ratio),
        [ui.model, ui.aspect],
        [width, height],
        api_name="aspect_size",
    )
    ui.dice.click(lambda: random.randint(0, MAX_SEED), None, seed, api_name="random_seed")
    reused = [ui.model, ui.prompt, ui.negative, steps, guidance, width, height, seed, ui.count, ui.speed]
    ui.reuse.upload(reuse_handler(studio), ui.reuse, reused, api_name="reuse_settings")
    return history, reused
