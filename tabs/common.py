"""What every tab shares: the model picker's labels and turning failures into UI messages."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from studio.catalogue import ModelSpec
from studio.context import StudioContext
from studio.errors import Cancelled, StudioError
from studio.gpu import gpu_task
from studio.memory import AUTOMATIC, POLICIES
from studio.metadata import read_settings
from studio.params import SamplingSettings, StepCallback, param, params
from studio.registry import ModelState
from studio.runner import Job
from studio.speed import SPEEDS, offered

log = logging.getLogger(__name__)


CANNOT_RUN = (ModelState.UNAVAILABLE, ModelState.FAILED, ModelState.NOT_OFFERED)


def model_rank(studio: StudioContext, spec: ModelSpec) -> int:
    """0: trained or real and able to run here; 1: a random-weight test model; 2: cannot run."""
    if studio.registry.state(spec.id) in CANNOT_RUN:
        return 2
    return 1 if spec.random_weights else 0


def makes_images(spec: ModelSpec) -> bool:
    return spec.kind == "image"


def model_choices(studio: StudioContext, serves: Callable[[ModelSpec], bool] = makes_images) -> list[tuple[str, str]]:
    """(label, id) for the catalogue's models that can serve a tab, "name · family · mode · state":
    the ones that can run here first, random-weight test models after them (labelled so), those
    that cannot run (offline, failed) last."""
    registry = studio.registry
    serving = sorted(
        (spec for spec in registry.catalogue if serves(spec) and registry.offers(spec.id)),
        key=lambda spec: model_rank(studio, spec),
    )
    return [
        (
            f"{spec.name} · {spec.family.label} · {spec.mode} · "
            f"{'test model — random weights' if spec.random_weights else registry.state(spec.id).value}",
            spec.id,
        )
        for spec in serving
    ]


def session_of(request: gr.Request | None) -> str:
    return request.session_hash if request is not None and request.session_hash else "api"


@contextmanager
def user_errors(task: str) -> Iterator[None]:
    """StudioErrors reach the user as they are; anything else as one line, with the traceback in
    the log, and the server stays up."""
    try:
        yield
    except StudioError as error:
        log.info("%s refused: %s", task, error)  # the user's to act on: one line, no traceback
        raise gr.Error(str(error)) from None
    except gr.Error:
        raise
    except Exception as error:
        log.exception("%s failed", task)
        raise gr.Error(f"{task} failed: {type(error).__name__}: {error}") from None


@dataclass
class SamplingControls:
    steps: gr.Slider
    guidance: gr.Slider
    width: gr.Slider
    height: gr.Slider
    seed: gr.Number

    def components(self) -> tuple[gr.Slider, gr.Slider, gr.Slider, gr.Slider, gr.Number]:
        return self.steps, self.guidance, self.width, self.height, self.seed


def run_and_cancel(label: str) -> tuple[gr.Button, gr.Button]:
    """A tab's run and cancel buttons (Ctrl+Enter and Esc press them: tabs.app.SHORTCUTS)."""
    with gr.Row():
        run = gr.Button(label, variant="primary", elem_classes=["studio-run"])
        return run, gr.Button("Cancel", variant="stop", elem_classes=["studio-cancel"])


def speed_choices(spec: ModelSpec) -> list[tuple[str, str]]:
    """The speed settings a model takes (`speed.offered`), labelled with what they cost on the
    shapes world where that is more than a little."""
    return [(SPEEDS[name].label + SPEEDS[name].measured, name) for name in offered(spec)]


# The memory picker: automatic (the fastest plan that fits the budget), or a policy by hand.
MEMORY_CHOICES = [("Automatic (the fastest plan that fits)", AUTOMATIC)] + [
    (policy.name.replace("-", " ").capitalize(), policy.name) for policy in POLICIES
]


def memory_line(studio: StudioContext, model_id: str) -> str:
    """How the model sits (or will sit) in memory, or why it cannot: shown before it loads."""
    try:
        return f"Memory: {studio.registry.memory_plan(model_id).describe()}"
    except StudioError as error:
        return f"Memory: {error}"


@dataclass
class MemoryControls:
    """The plan line under a model picker and, in a studio of one user, the policy picker (the
    placement is the whole process's, so strangers on a shared studio do not change it)."""

    line: gr.Markdown
    policy: gr.Dropdown

    def wire(self, studio: StudioContext, model: gr.Dropdown, api_name: str) -> None:
        registry = studio.registry

        def on_policy(model_id: str, policy: str):
            if studio.shared:
                raise gr.Error("A shared studio places models in memory by its own plan.")
            with user_errors("Memory policy"):
                registry.set_memory_policy(model_id, policy)
            return memory_line(studio, model_id)

        def on_model(model_id: str):
            return memory_line(studio, model_id), registry.memory_policy(model_id)

        self.policy.input(on_policy, [model, self.policy], self.line, api_name=api_name)
        model.change(on_model, model, [self.line, self.policy], api_visibility="private")


def memory_controls(studio: StudioContext, model_id: str, line: gr.Markdown) -> MemoryControls:
    """The policy picker for the plan `line` (placed under the model picker by the tab)."""
    policy = gr.Dropdown(
        MEMORY_CHOICES,
        value=studio.registry.memory_policy(model_id),
        label="Memory (quantization and offload, applied when the model loads)",
        visible=not studio.shared,
    )
    return MemoryControls(line, policy)


def steps_within(spec: ModelSpec, preferred: int) -> int:
    """A tab's preferred step count where the model allows it, else the model's own default."""
    return preferred if preferred <= spec.max_steps else spec.steps


def setting_slider(settings_type: type, name: str, **overrides: Any) -> gr.Slider:
    """A slider for a declared setting: its range, step, default and label from the one spec."""
    spec = param(settings_type, name)
    options: dict[str, Any] = {
        "minimum": spec.minimum,
        "maximum": spec.maximum,
        "value": spec.default,
        "step": spec.step,
        "label": spec.label,
    }
    if spec.info:
        options["info"] = spec.info
    return gr.Slider(**(options | overrides))


def sampling_controls(
    settings_type: type[SamplingSettings],
    spec: ModelSpec,
    steps: int | None = None,
    seed: int | None = None,
    guidance_display: dict[str, Any] | None = None,
) -> SamplingControls:
    """Steps, guidance, size and seed for a model's defaults, laid out in rows; ranges and labels
    from the method's settings type, bounds that depend on the model from the model."""
    preferred = steps if steps is not None else param(settings_type, "steps").default
    seed_spec = param(settings_type, "seed")
    with gr.Row():
        step_slider = setting_slider(
            settings_type, "steps", minimum=1, maximum=spec.max_steps, value=steps_within(spec, preferred)
        )
        guidance = setting_slider(
            settings_type,
            "guidance",
            value=spec.guidance_scale,
            **(guidance_display or {"interactive": spec.guidance != "none"}),
        )
    with gr.Row():
        width, height = (
            setting_slider(settings_type, side, minimum=spec.size_multiple, value=value, step=spec.size_multiple)
            for side, value in (("width", spec.width), ("height", spec.height))
        )
        seed_box = gr.Number(
            value=seed_spec.default if seed is None else seed,
            precision=0,
            minimum=seed_spec.minimum,
            maximum=seed_spec.maximum,
            label=seed_spec.label,
        )
    return SamplingControls(step_slider, guidance, width, height, seed_box)


def sampling_updates(spec: ModelSpec, preferred_steps: int) -> tuple[dict, dict, dict, dict]:
    """Steps, guidance, width and height for a newly picked model: its defaults, its step range,
    its size multiple."""
    return (
        gr.update(value=steps_within(spec, preferred_steps), maximum=spec.max_steps),
        gr.update(value=spec.guidance_scale, interactive=spec.guidance != "none"),
        gr.update(value=spec.width, minimum=spec.size_multiple, step=spec.size_multiple),
        gr.update(value=spec.height, minimum=spec.size_multiple, step=spec.size_multiple),
    )


def default_model(studio: StudioContext, serves: Callable[[ModelSpec], bool]) -> ModelSpec:
    """The model a tab opens on: the studio's default where it serves the tab, else the first
    model that serves it and can run here."""
    catalogue = studio.registry.catalogue
    if serves(catalogue.get(studio.default_model)) and studio.registry.offers(studio.default_model):
        return catalogue.get(studio.default_model)
    offered = [spec for spec in catalogue if serves(spec) and studio.registry.offers(spec.id)]
    return min(offered or [spec for spec in catalogue if serves(spec)], key=lambda spec: model_rank(studio, spec))


def warn_if_far_from_native_size(studio: StudioContext, settings: SamplingSettings) -> None:
    """A model draws best near its own size: say so once when the asked area is far from it
    (bad values are the method's to refuse, with its own message)."""
    width, height = settings.width, settings.height
    if settings.model not in studio.registry.catalogue or not all(
        isinstance(side, (int, float)) and side > 0 for side in (width, height)
    ):
        return
    spec = studio.registry.catalogue.get(settings.model)
    ratio = (width * height) / (spec.width * spec.height)
    if ratio > 4 or ratio < 0.25:
        gr.Warning(
            f"{spec.name} was made for about {spec.width}×{spec.height}; at {width}×{height} expect "
            f"{'repeated or broken shapes and a long wait' if ratio > 4 else 'little detail'}."
        )


def divider_at_change(images: Any) -> Any:
    """Where a before/after slider's divider should start: over the horizontal centre of the
    pixels that changed (the middle when none did), so the first look shows the change."""
    if not isinstance(images, (tuple, list)) or len(images) != 2 or not all(isinstance(i, Image.Image) for i in images):
        return gr.update()
    before, after = images
    old = np.asarray(before.convert("RGB").resize(after.size), dtype=np.int16)
    new = np.asarray(after.convert("RGB"), dtype=np.int16)
    columns = np.nonzero((np.abs(old - new).max(axis=-1) > 24).any(axis=0))[0]
    position = 50.0 if len(columns) == 0 else float((columns.min() + columns.max() + 1) / 2 / after.width * 100)
    return gr.update(slider_position=round(position, 1))


def start_slider_at_change(job: Any, slider: gr.ImageSlider) -> None:
    """After `job` fills the slider, move its divider to the change (a page-only step: API
    clients get the two images as they are)."""
    job.then(divider_at_change, slider, slider, api_visibility="private")


def in_gpu_slot(
    listen: Callable[..., Any], handler: Callable, inputs: Any, outputs: Any, duration: int = 120, **options: Any
) -> Any:
    """Wire `handler` into the GPU slot (one job at a time across the studio) through the event
    listener `listen` (a component's `.click`, a `partial(gr.on, triggers)`, a `.then`). ZeroGPU's
    decorator is applied here, where the slot is wired, so no handler can be in it without one."""
    return listen(gpu_task(duration)(handler), inputs, outputs, concurrency_limit=1, concurrency_id="gpu", **options)


def progress_callback(progress: gr.Progress, phase: str) -> Callable[[int, int], None]:
    """Steps done of the total under the phase's name, with the time left once a step has shown
    the pace ("Denoising · about 12 s left")."""
    started: list[float] = []

    def on_step(done: int, total: int) -> None:
        now = time.monotonic()
        if not started or done == 0:
            started[:] = [now, done]
        first_time, first_done = started
        left = (now - first_time) / (done - first_done) * (total - done) if done > first_done else None
        progress((done, total), desc=phase if left is None else f"{phase} · about {time_left(left)} left")

    return on_step


def time_left(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def run_job(
    studio: StudioContext, request: gr.Request | None, task: str, job: Job, on_step: StepCallback | None
) -> Any:
    """Run a tab's job through the studio's runner with a fresh cancel switch for the session; a
    StudioError reaches the user as one sentence, a cancel as a notice (None is returned: the
    outputs stay as they were)."""
    with studio.cancellations.job(session_of(request)) as cancel, user_errors(task):
        try:
            return studio.runner.run(job, on_step, cancel)
        except Cancelled:
            gr.Info(f"{task} cancelled.")
            return None


def wire_cancel(studio: StudioContext, button: gr.Button, job: Any, api_name: str) -> None:
    """Cancel stops the session's running job at its next step and drops its queued ones (`job`:
    the run's event, or a list of the events the button stops). It skips the queue, so it
    answers even when the queue is full."""

    def on_cancel(request: gr.Request) -> None:
        if not studio.cancellations.cancel(session_of(request)):
            gr.Info("Nothing was running; queued work, if any, is dropped.")

    button.click(on_cancel, None, None, api_name=api_name, queue=False, cancels=job if isinstance(job, list) else [job])


@dataclass
class LoraControls:
    """The adapters a request should use (the model's own, added by the user) and their scale."""

    active: gr.Dropdown
    scale: gr.Slider
    upload: gr.File
    hub: gr.Textbox
    name: gr.Textbox
    add: gr.Button
    remove: gr.Button

    def wire(self, studio: StudioContext, model: gr.Dropdown, api_name: str) -> None:
        adapters = studio.adapters

        def on_add(model_id: str, upload: str | None, hub: str, name: str, request: gr.Request):
            name, hub_parts = (name or "").strip(), (hub or "").split()
            if not upload and len(hub_parts) != 2:
                raise gr.Error(
                    "Choose a .safetensors LoRA file, or name one on the hub as: owner/repo file.safetensors"
                )
            session = session_of(request)
            replacing = adapters.registered_name(session, name) in studio.registry.adapters(model_id)
            with user_errors("Adding the adapter"):
                registered = adapters.add(session, model_id, name, upload, hub_parts)
            gr.Info(f"Adapter {name} {'replaced (new weights swapped in)' if replacing else 'added'} on {model_id}.")
            return gr.update(choices=adapters.choices(session, model_id), value=[registered])

        def on_remove(model_id: str, chosen: list[str] | None, request: gr.Request):
            if not chosen:
                raise gr.Error("Pick the adapters to remove in the list first.")
            session = session_of(request)
            with user_errors("Removing adapters"):
                for registered in chosen:
                    adapters.remove(session, model_id, registered)
            gr.Info(f"Removed {len(chosen)} adapter(s) from {model_id}.")
            return gr.update(choices=adapters.choices(session, model_id), value=[])

        def on_model(model_id: str, request: gr.Request):
            return gr.update(choices=adapters.choices(session_of(request), model_id), value=[])

        model.change(on_model, model, self.active, api_visibility="private")
        self.add.click(on_add, [model, self.upload, self.hub, self.name], self.active, api_name=api_name)
        self.remove.click(on_remove, [model, self.active], self.active, api_name=api_name.replace("add", "remove"))

    @staticmethod
    def requested(names: list[str] | None, scale: float) -> tuple[tuple[str, float], ...]:
        return tuple((name, float(scale)) for name in names or ())


def lora_controls() -> LoraControls:
    with gr.Accordion("LoRA", open=False):
        active = gr.Dropdown([], value=[], multiselect=True, label="Active adapters (this model's)")
        scale = gr.Slider(0, 2, value=1.0, step=0.05, label="LoRA scale")
        with gr.Row():
            upload = gr.File(label="Add a LoRA (.safetensors)", file_types=[".safetensors"])
            with gr.Column():
                hub = gr.Textbox(label="…or from the hub", placeholder="owner/repo file.safetensors")
                name = gr.Textbox(label="Adapter name", placeholder="my-style")
        with gr.Row():
            add = gr.Button("Add adapter to this model (a name it has: new weights)", size="sm")
            remove = gr.Button("Remove the adapters picked above", size="sm")
    return LoraControls(active, scale, upload, hub, name, add, remove)


@dataclass
class Form:
    """The components that hold a settings type's fields, in the order a handler receives their
    values: `read` turns those values into the settings (an emptied box reads as the field's
    declared default; `checked` does the rest)."""

    settings_type: type
    fields: dict[str, Any]

    @property
    def inputs(self) -> list[Any]:
        return list(self.fields.values())

    def read(self, values: tuple[Any, ...], **extra: Any) -> Any:
        return settings_from(self.settings_type, tuple(self.fields), values, **extra)


def settings_from(settings_type: type, names: tuple[str, ...], values: tuple[Any, ...], **extra: Any) -> Any:
    """Settings from UI values named by field; an emptied box reads as the field's declared
    default (`checked` validates the rest when the method runs)."""
    declared = params(settings_type)
    data = {}
    for name, value in zip(names, values):
        if value is None or (isinstance(value, str) and name in declared and not value.strip()):
            value = declared[name].default if name in declared else ""
        data[name] = value
    return settings_type(**(data | extra))


UPLOAD_SOURCE = "Edit an image (inverted)"


@dataclass
class SendTarget:
    """A tab a result from the history can be sent to: its name, its tab id, the components the
    image fills and what it puts in each (`fill(image, settings)`, one value or update per
    component; `settings`: the PNG's own, {} when it has none; StudioError when the tab cannot
    take that image)."""

    label: str
    tab_id: str
    components: list[Any]
    fill: Callable[[Image.Image, dict], tuple[Any, ...]]


@dataclass
class SourcePicker:
    """Where an editing tab's image comes from: remade from a prompt and seed (the `generate`
    choice), an upload (inverted), or the last text-to-image result (remade where the tab's
    models can, else inverted)."""

    generate: str
    mode: gr.Radio
    image: gr.Image
    use_last: gr.Button

    def wire(
        self,
        studio: StudioContext,
        serves: Callable[[ModelSpec], bool],
        unable: str,
        history: gr.State,
        model: gr.Dropdown,
        prompt: gr.Textbox,
        sampling: SamplingControls,
    ) -> None:
        """The upload shows only when chosen; "use the last result" fills the model, prompt and
        sampling (`unable`: what the tab does, said when the last result's model cannot)."""
        self.mode.change(
            lambda mode: gr.update(visible=mode == UPLOAD_SOURCE), self.mode, self.image, api_visibility="private"
        )
        self.use_last.click(
            self.use_last_handler(studio, serves, unable),
            [history, model],
            [model, self.mode, self.image, prompt, *sampling.components()],
            api_visibility="private",
        )

    def send_target(self, label: str, tab_id: str) -> SendTarget:
        """A history image becomes the image to edit (an upload, inverted)."""
        return SendTarget(
            label,
            tab_id,
            [self.mode, self.image],
            lambda image, settings: (UPLOAD_SOURCE, gr.update(value=image, visible=True)),
        )

    def use_last_handler(self, studio: StudioContext, serves: Callable[[ModelSpec], bool], unable: str) -> Callable:
        catalogue = studio.registry.catalogue

        def on_use_last(history: list, model_id: str):
            if not history:
                raise gr.Error("Make an image in the text-to-image tab first.")
            path = history[0][0]
            with user_errors("Reading the last result"):
                made = read_settings(path)
            spec = catalogue.get(made.model)
            if serves(spec):
                gr.Info(f"Remade exactly from its seed with {spec.name}: no inversion needed.")
                hidden = gr.update(visible=False)
                sampled = (made.steps, made.guidance, made.width, made.height, made.seed)
                return made.model, self.generate, hidden, made.prompt, *sampled
            gr.Info(f"{spec.name} cannot {unable}; its image will be inverted with the chosen model.")
            with Image.open(path) as opened:
                picture = opened.convert("RGB")
            shown, same = gr.update(value=picture, visible=True), gr.update()
            return model_id, UPLOAD_SOURCE, shown, made.prompt, same, same, made.width, made.height, same

        return on_use_last


def source_picker(generate: str) -> SourcePicker:
    mode = gr.Radio([generate, UPLOAD_SOURCE], value=generate, label="Source")
    # PNG both ways: an image sent here from the history must arrive pixel for pixel.
    image = gr.Image(type="pil", label="Image to edit", visible=False, sources=["upload", "clipboard"], format="png")
    use_last = gr.Button("Use the last text-to-image result", size="sm")
    return SourcePicker(generate, mode, image, use_last)
