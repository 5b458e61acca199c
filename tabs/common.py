"""What every tab shares: the model picker's labels and turning failures into UI messages."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import gradio as gr

from studio.catalogue import ModelSpec
from studio.context import StudioContext
from studio.errors import StudioError
from studio.generation import MAX_SEED

log = logging.getLogger(__name__)


def model_choices(
    studio: StudioContext, serves: Callable[[ModelSpec], bool] = lambda spec: True
) -> list[tuple[str, str]]:
    """(label, id) for the catalogue's models that can serve a tab: "name · family · mode · state"."""
    registry = studio.registry
    return [
        (f"{spec.name} · {spec.family.label} · {spec.mode} · {registry.state(spec.id).value}", spec.id)
        for spec in registry.catalogue
        if serves(spec)
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
    with gr.Row():
        return gr.Button(label, variant="primary"), gr.Button("Cancel", variant="stop")


def steps_within(spec: ModelSpec, preferred: int) -> int:
    """A tab's preferred step count where the model allows it, else the model's own default."""
    return preferred if preferred <= spec.max_steps else spec.steps


def steps_update(spec: ModelSpec, preferred: int) -> dict:
    """The step slider for a newly picked model: its range and a count it accepts."""
    return gr.update(value=steps_within(spec, preferred), maximum=spec.max_steps)


def sampling_controls(spec: ModelSpec, steps: int, seed: int) -> SamplingControls:
    """Steps, guidance, size and seed sliders for a model's defaults, laid out in rows."""
    with gr.Row():
        step_slider = gr.Slider(1, spec.max_steps, value=steps_within(spec, steps), step=1, label="Steps")
        guidance = gr.Slider(
            0, 20, value=spec.guidance_scale, step=0.1, label="Guidance", interactive=spec.guidance != "none"
        )
    with gr.Row():
        width = gr.Slider(spec.size_multiple, 2048, value=spec.width, step=spec.size_multiple, label="Width")
        height = gr.Slider(spec.size_multiple, 2048, value=spec.height, step=spec.size_multiple, label="Height")
        seed_box = gr.Number(value=seed, precision=0, minimum=0, maximum=MAX_SEED, label="Seed")
    return SamplingControls(step_slider, guidance, width, height, seed_box)


def cancel_handler(studio: StudioContext) -> Callable[[gr.Request], None]:
    """A Cancel button's handler: stops the session's running job at its next step."""

    def on_cancel(request: gr.Request) -> None:
        if not studio.cancellations.cancel(session_of(request)):
            gr.Info("Nothing is running.")

    return on_cancel


@dataclass
class LoraControls:
    """The adapters a request should use (the model's own, added by the user) and their scale."""

    active: gr.Dropdown
    scale: gr.Slider
    upload: gr.File
    hub: gr.Textbox
    name: gr.Textbox
    add: gr.Button

    def wire(self, studio: StudioContext, model: gr.Dropdown, api_name: str) -> None:
        registry = studio.registry

        def on_add(model_id: str, upload: str | None, hub: str, name: str):
            name, hub_parts = (name or "").strip(), (hub or "").split()
            if not upload and len(hub_parts) != 2:
                raise gr.Error(
                    "Choose a .safetensors LoRA file, or name one on the hub as: owner/repo file.safetensors"
                )
            with user_errors("Adding the adapter"):
                if upload:
                    registry.import_adapter(model_id, name, upload)
                else:
                    registry.fetch_adapter(model_id, name, *hub_parts)
            gr.Info(f"Adapter {name} added to {model_id}.")
            return gr.update(choices=registry.adapters(model_id), value=[name])

        model.change(
            lambda model_id: gr.update(choices=registry.adapters(model_id), value=[]),
            model,
            self.active,
            api_visibility="private",
        )
        self.add.click(on_add, [model, self.upload, self.hub, self.name], self.active, api_name=api_name)

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
        add = gr.Button("Add adapter to this model", size="sm")
    return LoraControls(active, scale, upload, hub, name, add)
