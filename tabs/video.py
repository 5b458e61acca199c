"""Multi-prompt video tab (DiTCtrl): UI and wiring only; the method is studio.methods.video."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from studio.catalogue import ModelSpec
from studio.context import StudioContext
from studio.errors import Cancelled, InvalidRequest, StudioError
from studio.metadata import save_image
from studio.methods.video import (
    TEMPORAL_COMPRESSION,
    SegmentPreview,
    VideoResult,
    VideoSettings,
    build_plan,
    latent_to_frames,
    segment_seconds,
)
from studio.presets import read_examples
from studio.runner import Job
from studio.video_io import read_video, write_mp4
from tabs import common

# Frames shown in the strip under the video.
STRIP_FRAMES = 12
SECONDS, FRAMES = "seconds", "frames"
FIELDS = ("steps", "guidance", "width", "height", "seed", "fps", "transitions", "overlap")
ADVANCED = ("kv_sharing", "subject", "mask_threshold", "preview_every")


def serves(spec: ModelSpec) -> bool:
    return spec.kind == "video"


@dataclass(frozen=True)
class VideoExample:
    name: str
    rows: list[list[Any]]


def examples() -> list[VideoExample]:
    """The tab's examples (presets/examples.toml [video]): prompts with their seconds."""
    found = []
    for number, entry in enumerate(read_examples("video").get("examples", []), start=1):
        prompts, seconds = entry.get("prompts", []), entry.get("seconds", [])
        if not prompts or len(seconds) not in (0, len(prompts)):
            raise InvalidRequest(f"examples.toml: [video] example {number}: prompts, and seconds for each or none")
        durations = seconds or [None] * len(prompts)
        found.append(VideoExample(entry.get("name", f"Example {number}"), [[p, s] for p, s in zip(prompts, durations)]))
    return found


def table_rows(table: Any) -> list[list[Any]]:
    """The prompt table's rows as lists (Gradio gives lists, or a DataFrame from some clients)."""
    if table is None:
        return []
    if hasattr(table, "values") and hasattr(table, "columns"):
        return [list(row) for row in table.values.tolist()]
    if isinstance(table, dict) and "data" in table:
        return [list(row) for row in table["data"]]
    return [list(row) for row in table]


def blank(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == ""


def prompts_from(table: Any) -> tuple[tuple[str, ...], tuple[float | None, ...]]:
    """Prompts and seconds (None: one segment) from the table, or InvalidRequest naming the row."""
    prompts: list[str] = []
    seconds: list[float | None] = []
    for number, row in enumerate(table_rows(table), start=1):
        text, duration = [*row, None, None][:2]
        if blank(text):
            raise InvalidRequest(f"Row {number} has no prompt: write one or delete the row.")
        prompts.append(str(text))
        if blank(duration):
            seconds.append(None)
            continue
        try:
            seconds.append(float(duration))
        except (TypeError, ValueError):
            raise InvalidRequest(f"Row {number}'s seconds must be a number (or blank: one segment).") from None
    if not prompts:
        raise InvalidRequest("Write a prompt first.")
    return tuple(prompts), tuple(seconds)


def settings_with_prompts(settings: VideoSettings, spec: ModelSpec, table: Any, unit: str = SECONDS) -> VideoSettings:
    """The settings with the table's prompts; durations in seconds or frames (at the video's
    frame rate; whole numbers), a blank one is one segment's."""
    prompts, durations = prompts_from(table)
    if unit == FRAMES:
        for number, value in enumerate(durations, start=1):
            if value is not None and not float(value).is_integer():
                raise InvalidRequest(f"Row {number} lasts {value:g} frames: a frame count is a whole number.")
    fps = max(settings.fps, 1)
    seconds = [value / fps if unit == FRAMES and value is not None else value for value in durations]
    if all(value is None for value in seconds):
        return replace(settings, prompts=prompts, seconds=())
    one_segment = segment_seconds(settings, spec)
    filled = tuple(one_segment if value is None else value for value in seconds)
    return replace(settings, prompts=prompts, seconds=filled)


def timeline_markdown(settings: VideoSettings, spec: ModelSpec) -> str:
    """The plan as a table: which seconds each prompt and transition covers."""
    plan = build_plan(settings, spec)
    rows = "\n".join(
        f"| {what} | {start:.2f} s | {end:.2f} s |"
        for what, start, end in plan.timeline(settings.prompts, settings.fps, TEMPORAL_COMPRESSION)
    )
    frames = latent_to_frames(plan.latent_frames - 1, TEMPORAL_COMPRESSION)[1] + 1
    return (
        f"**{len(plan.segments)} segments** of {plan.length} latent frames overlapping by {plan.overlap} · "
        f"{plan.latent_frames} latent frames ≈ {frames} frames ≈ {frames / settings.fps:.1f} s "
        f"at {settings.fps} fps\n\n"
        f"| covers | from | to |\n|---|---|---|\n{rows}"
    )


def initial_plan(spec: ModelSpec, found: list[VideoExample]) -> str:
    """The plan of the table the tab opens with, at the model's defaults."""
    settings = VideoSettings(model=spec.id, prompts=(), fps=spec.fps or 8)
    try:
        return timeline_markdown(settings_with_prompts(settings, spec, found[0].rows if found else []), spec)
    except StudioError as error:
        return f"*The plan cannot be made yet: {error}*"


@dataclass
class VideoTab:
    model: gr.Dropdown
    table: gr.Dataframe
    unit: gr.Radio
    example: gr.Dropdown
    plan: gr.Markdown
    sampling: common.SamplingControls
    form: common.Form
    run: gr.Button
    extend: gr.Button
    cancel: gr.Button
    outputs: list[Any]


def layout(studio: StudioContext) -> VideoTab:
    default = common.default_model(studio, serves)
    found = examples()
    with gr.Row():
        with gr.Column(scale=2):
            model = gr.Dropdown(common.model_choices(studio, serves), value=default.id, label="Model (CogVideoX, Wan)")
            table = gr.Dataframe(
                value=found[0].rows if found else [["", None]],
                headers=["Prompt", "Duration"],
                datatype=["str", "number"],
                column_count=2,
                row_count=1,
                column_widths=["78%", "22%"],
                wrap=True,
                type="array",
                label="Prompts, in order: + adds a row; a blank duration is one segment",
                elem_id="video-prompts",
            )
            with gr.Row():
                unit = gr.Radio([SECONDS, FRAMES], value=SECONDS, label="Durations in")
                example = gr.Dropdown([e.name for e in found], value=None, label="Examples (fill the table)")
            with gr.Row():
                fps = common.setting_slider(VideoSettings, "fps", value=default.fps or 8)
            run, cancel = common.run_and_cancel("Make the video")
            extend = gr.Button("Continue the video on the right with these prompts", elem_id="video-extend")
            plan = gr.Markdown(initial_plan(default, found), label="Segment plan", elem_id="video-plan")
            with gr.Accordion("Sampling", open=False):
                sampling = common.sampling_controls(VideoSettings, default, steps=default.steps)
            with gr.Accordion("Segments and KV sharing (advanced)", open=False):
                transitions = common.setting_slider(VideoSettings, "transitions")
                overlap = common.setting_slider(VideoSettings, "overlap")
                kv_sharing = gr.Checkbox(value=True, label="KV sharing between neighbouring segments (off: compare)")
                subject = gr.Textbox(
                    label="Subject words for mask-guided sharing (blank: plain sharing)", placeholder="red circle"
                )
                mask_threshold = common.setting_slider(VideoSettings, "mask_threshold")
                preview_every = common.setting_slider(VideoSettings, "preview_every")
        with gr.Column(scale=3):
            result = gr.Video(
                label="Video (or upload one to continue)",
                format="mp4",
                autoplay=True,
                loop=True,
                elem_id="video-result",
            )
            previews = gr.Gallery(label="While denoising: one frame per segment", columns=8, height=140)
            strip = gr.Gallery(label="Frames", columns=STRIP_FRAMES, height=140)
            with gr.Row():
                settings_png = gr.File(label="Settings (PNG of the middle frame, settings inside)")
                info = gr.JSON(label="Settings of this video")
    steps, guidance, width, height, seed = sampling.components()
    form = common.Form(
        VideoSettings,
        dict(zip(FIELDS + ADVANCED, (steps, guidance, width, height, seed, fps, transitions, overlap,
                                     kv_sharing, subject, mask_threshold, preview_every))),
    )  # fmt: skip
    return VideoTab(
        model,
        table,
        unit,
        example,
        plan,
        sampling,
        form,
        run,
        extend,
        cancel,
        [result, previews, strip, settings_png, info],
    )


def read_form(
    studio: StudioContext, form: common.Form, model_id: str, table: Any, unit: str, fields: tuple
) -> VideoSettings:
    spec = studio.registry.catalogue.get(model_id)
    settings = form.read(fields, model=model_id, prompts=())
    return settings_with_prompts(settings, spec, table, unit)


def plan_handler(studio: StudioContext, form: common.Form) -> Callable:
    def on_plan(model_id: str, table: Any, unit: str, *fields: Any) -> str:
        try:
            spec = studio.registry.catalogue.get(model_id)
            return timeline_markdown(read_form(studio, form, model_id, table, unit, fields), spec)
        except (StudioError, TypeError, ValueError) as error:
            return f"*The plan cannot be made yet: {error}*"

    return on_plan


def strip_of(frames: np.ndarray) -> list[Image.Image]:
    picked = np.linspace(0, len(frames) - 1, min(STRIP_FRAMES, len(frames))).round().astype(int)
    return [Image.fromarray(frames[index]) for index in picked]


def video_handler(studio: StudioContext, form: common.Form, continuing: bool) -> Callable:
    # Gradio passes its request and progress only to parameters before a *values one.
    def on_video(request: gr.Request, progress=gr.Progress(), *values) -> Iterator[tuple]:
        model_id, table, unit, *fields = values
        previous_path = fields.pop(0) if continuing else None
        session = common.session_of(request)
        with common.user_errors("Video"):
            settings = read_form(studio, form, model_id, table, unit, tuple(fields))
            common.warn_if_far_from_native_size(studio, settings)
            inputs = {}
            if continuing:
                if not previous_path:
                    raise InvalidRequest("Make a video first (or upload one on the right) to continue it.")
                frames, _ = read_video(previous_path)
                inputs["previous"] = frames
        same = gr.update()
        progress(0, desc="Loading model")

        def on_step(done: int, total: int) -> None:
            groups = max(1, total // max(settings.steps, 1))
            step, pair = done // groups, done % groups
            progress(
                (done, total),
                desc=f"Step {min(step + 1, settings.steps)} of {settings.steps}, pair {pair + 1} of {groups}",
            )

        with studio.cancellations.job(session) as cancel, common.user_errors("Video"):
            try:
                for item in studio.runner.run(Job("multi_prompt_video", settings, inputs), on_step, cancel):
                    if isinstance(item, SegmentPreview):
                        shown = [(Image.fromarray(f), f"segment {n + 1}") for n, f in enumerate(item.frames)]
                        yield same, shown, same, same, same
                    elif isinstance(item, VideoResult):
                        yield save_video(studio, session, item)
            except Cancelled:
                gr.Info("Video cancelled.")

    return on_video


def save_video(studio: StudioContext, session: str, made: VideoResult) -> tuple:
    folder = studio.history.folder(session)
    name = f"video-{made.settings.model}-{made.settings.seed}"
    path = write_mp4(made.frames, made.fps, folder, name)
    payload = {
        "method": "DiTCtrl",
        **made.settings.to_dict(),
        "frames": len(made.frames),
        "segments": len(made.plan.segments),
        "timeline": [[what, round(start, 2), round(end, 2)] for what, start, end in made.timeline],
        "seconds": round(made.seconds, 3),
        "video": path.name,
    }
    middle = Image.fromarray(made.frames[len(made.frames) // 2])
    png = save_image(middle, payload, folder, name)
    return str(path), gr.update(), strip_of(made.frames), str(png), payload


def example_handler() -> Callable:
    found = {e.name: e.rows for e in examples()}

    def on_example(name: str | None):
        return found.get(name, gr.update()) if name else gr.update()

    return on_example


def build(studio: StudioContext) -> None:
    ui = layout(studio)
    catalogue = studio.registry.catalogue
    steps, guidance, width, height, _ = ui.sampling.components()
    fps = ui.form.fields["fps"]
    ui.model.input(
        lambda model_id: (
            *common.sampling_updates(catalogue.get(model_id), catalogue.get(model_id).steps),
            gr.update(value=catalogue.get(model_id).fps),
        ),
        ui.model,
        [steps, guidance, width, height, fps],
        api_name="video_model_defaults",
    )
    ui.example.change(example_handler(), ui.example, ui.table, api_visibility="private")
    planning = [ui.model, ui.table, ui.unit, *ui.form.inputs]
    gr.on(
        [ui.table.change, ui.model.change, ui.unit.change, *(component.change for component in ui.form.inputs)],
        plan_handler(studio, ui.form),
        planning,
        ui.plan,
        api_name="video_plan",
    )
    result = ui.outputs[0]
    job = common.in_gpu_slot(
        ui.run.click,
        video_handler(studio, ui.form, continuing=False),
        [ui.model, ui.table, ui.unit, *ui.form.inputs],
        ui.outputs,
        duration=300,
        api_name="multi_prompt_video",
    )
    extension = common.in_gpu_slot(
        ui.extend.click,
        video_handler(studio, ui.form, continuing=True),
        [ui.model, ui.table, ui.unit, result, *ui.form.inputs],
        ui.outputs,
        duration=300,
        api_name="video_extend",
    )
    common.wire_cancel(studio, ui.cancel, [job, extension], "video_cancel")
