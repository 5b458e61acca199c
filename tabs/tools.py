"""The studio's methods as tools for programs: one endpoint per method (`/tool_<method>`), its
settings one JSON object described from the method's settings type (the description the agent's
planner reads), its images by name. With `--mcp`, Gradio's MCP server serves these as MCP tools.

A call ends in one of three ways and says which: finished (its image), failed ("… failed" or the
refusal's sentence) or cancelled ("cancelled: …") — an error, never an image, for a job that did not
finish. (One output: Gradio's MCP server gives a client without progress tokens one output as it is.)
"""

from __future__ import annotations

import inspect
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import gradio as gr
from PIL import Image

from studio.agent.tools import json_schema, tool_settings, tools, with_defaults
from studio.context import StudioContext
from studio.errors import Cancelled, InvalidRequest
from studio.metadata import save_image
from studio.methods.incontext import compose, grid_shape
from studio.runner import Job, Method
from tabs import common

log = logging.getLogger(__name__)

USAGE = (
    "Call with `settings`: a JSON object of the settings below (only `model` and the required ones are "
    "needed; the model's own steps, guidance and size are used where none are given){images}. Returns the "
    "image (several on one grid) when the job finished; a failure or a cancellation is an error with its reason."
)


def description(method: Method) -> str:
    """What an API or MCP client is told of a tool: the method's own description and how to call it."""
    images = f"; images {', '.join(method.inputs)} as image files or URLs" if method.inputs else ""
    return f"{method.describe()}\n{USAGE.format(images=images)}"


def arguments_from(value: Any) -> dict[str, Any]:
    """The settings a client sent: a JSON object, or its text."""
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError as error:
            raise InvalidRequest(f"settings is not valid JSON: {error.msg} (character {error.pos}).") from None
    if not isinstance(value, dict):
        raise InvalidRequest("settings must be a JSON object of the tool's settings.")
    return value


def shown(pictures: list[Image.Image]) -> Image.Image:
    """One image for a client: the picture, or the pictures on one grid."""
    if len(pictures) == 1:
        return pictures[0]
    rows, columns = grid_shape(len(pictures))
    return compose(pictures, rows, columns)


def settings_input(schema: dict[str, Any]) -> gr.JSON:
    """A JSON input whose API type is its settings type's JSON Schema (what MCP clients see and
    check a call against). Set on the instance: a gr.JSON subclass would make Gradio write a type
    stub beside this module."""
    component = gr.JSON(label="settings")
    component.api_info = lambda: schema
    return component


def settings_schema(studio: StudioContext, method: Method) -> dict[str, Any]:
    """The method's settings as JSON Schema; the model among the studio's own, optional."""
    schema = json_schema(method.settings_type)
    schema["required"] = [name for name in schema["required"] if name != "model"]
    offered = [spec.id for spec in studio.registry.catalogue if studio.registry.offers(spec.id)]
    schema["properties"]["model"] = {
        "type": "string",
        "enum": offered,
        "description": f"the catalogue model to run (default: {studio.default_model})",
    }
    return schema


def tool_handler(studio: StudioContext, method: Method) -> Callable:
    """The endpoint's function, with a signature that names its parameters (settings, then each
    image) as API and MCP clients see them."""
    catalogue = studio.registry.catalogue
    names = list(method.inputs)

    def run_tool(*values: Any) -> Image.Image:
        # Gradio passes (settings, request, *images, progress): the order of the signature below.
        given, request, *images, progress = values
        with common.user_errors(method.name):
            arguments = with_defaults(catalogue, arguments_from(given), studio.default_model)
            settings = tool_settings(method.name, arguments)
        inputs = {name: image for name, image in zip(names, images) if image is not None}
        started = time.perf_counter()
        on_step = common.progress_callback(progress, method.name)
        with studio.cancellations.job(common.session_of(request)) as cancel, common.user_errors(method.name):
            try:
                # Inside the job's switch: a method's result may be made as it is read (generate).
                pictures = method.pictures(studio.runner.run(Job(method.name, settings, inputs), on_step, cancel))
            except Cancelled:
                raise gr.Error(f"cancelled: {method.name} was stopped before it finished; nothing was made.") from None
        folder = studio.history.folder(common.session_of(request))
        payload = {"method": f"tool: {method.name}", **settings.to_dict()}
        for number, picture in enumerate(pictures, start=1):
            save_image(picture, payload, folder, f"{method.name}-{number}")
        log.info("tool %s finished: %d image(s) in %.1f s", method.name, len(pictures), time.perf_counter() - started)
        return shown(pictures)

    positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
    parameters = [
        inspect.Parameter("settings", positional, annotation=dict),
        inspect.Parameter("request", positional, annotation=gr.Request),
        *(inspect.Parameter(name, positional, default=None, annotation=Image.Image | None) for name in names),
        inspect.Parameter("progress", positional, default=gr.Progress()),
    ]
    run_tool.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    run_tool.__annotations__ = {item.name: item.annotation for item in parameters if item.name != "progress"}
    arguments = "".join(f"\n    {name}: {what}" for name, what in method.inputs.items())
    run_tool.__doc__ = f"{method.summary}\n\nArgs:\n    settings: the tool's settings, a JSON object{arguments}"
    # MCP names a tool after its function.
    run_tool.__name__ = method.name
    return run_tool


TOOL_PREFIX = "tool_"


def programs_see_only_tools(demo: gr.Blocks) -> None:
    """The tabs' own endpoints leave the API page and the MCP tool list (they stay callable): a
    program connecting over MCP is offered the studio's tools, not the page's buttons."""
    for fn in demo.fns.values():
        if fn.api_visibility == "public" and not str(fn.api_name or "").startswith(TOOL_PREFIX):
            fn.api_visibility = "undocumented"


def build(studio: StudioContext) -> None:
    """One endpoint per method, on components no one sees (the tabs are the UI)."""
    with gr.Column(visible=False):
        for method in tools().values():
            settings = settings_input(settings_schema(studio, method))
            images = [gr.Image(type="pil", label=name, format="png") for name in method.inputs]
            result = gr.Image(type="pil", label="image", format="png")
            trigger = gr.Button(visible=False)
            common.in_gpu_slot(
                trigger.click,
                tool_handler(studio, method),
                [settings, *images],
                result,
                api_name=f"{TOOL_PREFIX}{method.name}",
                api_description=description(method),
            )
