"""Agent tab (ChatDiT-style): chat in, plan shown, the studio's tools run, images back in the
thread. UI and wiring only; the agent is studio.agent."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
from PIL import Image

from studio.agent.agent import (
    WORLD_BACKGROUND,
    Check,
    Conversation,
    LanguageModelPlanner,
    Planner,
    RulePlanner,
    abandon,
    plan_turn,
    run_turn,
)
from studio.agent.llm import InProcessModel, OpenAICompatible
from studio.agent.schema import Answer, parse_answer
from studio.catalogue import ModelSpec
from studio.context import StudioContext
from studio.errors import InvalidRequest
from studio.metadata import save_image
from tabs import common

RULES, ENDPOINT = "Offline rules (the shapes world)", "OpenAI-compatible endpoint"
IN_PROCESS = "In-process model (transformers)"
KEY_VARIABLE = "DIT_STUDIO_LLM_KEY"
MAX_IMAGES_A_MESSAGE = 11


@dataclass
class AgentTab:
    model: gr.Dropdown
    planner: gr.Radio
    endpoint: gr.Textbox
    llm: gr.Textbox
    key: gr.Textbox
    chat: gr.Chatbot
    message: gr.MultimodalTextbox
    plan: gr.Code
    run_plan: gr.Button
    new_chat: gr.Button
    cancel: gr.Button
    conversation: gr.State


def layout(studio: StudioContext) -> AgentTab:
    default = common.default_model(studio, common.makes_images)
    with gr.Row():
        with gr.Column(scale=3):
            chat = gr.Chatbot(label="Conversation", height=460, elem_id="agent-chat")
            message = gr.MultimodalTextbox(
                placeholder="e.g. three images of a green triangle, on the left, in the centre and on the right",
                file_types=["image"],
                file_count="multiple",
                show_label=False,
                elem_id="agent-message",
            )
            with gr.Row():
                new_chat = gr.Button("New chat", size="sm")
                cancel = gr.Button("Cancel", variant="stop", size="sm", elem_classes=["studio-cancel"])
        with gr.Column(scale=2):
            model = gr.Dropdown(common.model_choices(studio), value=default.id, label="Model the tools use")
            planner = gr.Radio([RULES, ENDPOINT, IN_PROCESS], value=RULES, label="Planner")
            with gr.Accordion("Language model (OpenAI-compatible: OpenAI, vLLM, Ollama, llama.cpp)", open=False):
                endpoint = gr.Textbox(label="Base URL (endpoint only)", placeholder="http://127.0.0.1:11434/v1")
                llm = gr.Textbox(
                    label="Model (the endpoint's name, or a hub id in process)",
                    placeholder="qwen2.5:7b-instruct · Qwen/Qwen2.5-1.5B-Instruct",
                )
                key = gr.Textbox(label=f"Key (empty: ${KEY_VARIABLE}; never saved)", type="password")
            plan = gr.Code(label="Plan of the last turn (edit, then run it again)", language="json", interactive=True)
            run_plan = gr.Button("Run this plan", size="sm")
    return AgentTab(model, planner, endpoint, llm, key, chat, message, plan, run_plan, new_chat, cancel, gr.State(None))


def planner_for(studio: StudioContext, kind: str, endpoint: str, llm: str, key: str, spec: ModelSpec) -> Planner:
    if kind == IN_PROCESS:
        if not (llm or "").strip():
            raise InvalidRequest("Give the hub id of an instruct model to run in process, or use the offline rules.")
        return LanguageModelPlanner(InProcessModel(llm.strip(), studio.registry))
    if kind != ENDPOINT:
        # The built-ins are the shapes world's: prompts in its captions' form.
        return RulePlanner(WORLD_BACKGROUND if spec.builtin else None)
    if not (endpoint or "").strip() or not (llm or "").strip():
        raise InvalidRequest("Give the language model's base URL and model name, or use the offline rules.")
    return LanguageModelPlanner(
        OpenAICompatible(endpoint.strip(), llm.strip(), key or os.environ.get(KEY_VARIABLE, ""))
    )


class Fixed:
    """A planner that answers with a plan the user edited."""

    def __init__(self, answer: Answer) -> None:
        self._answer = answer

    def answer(
        self, message: str, conversation: Conversation, model: str, given: Sequence[str], check: Check
    ) -> Answer:
        return self._answer


def run_turn_handler(studio: StudioContext, from_plan: bool) -> Callable:
    catalogue = studio.registry.catalogue

    def on_turn(request: gr.Request, progress=gr.Progress(), *values):
        model_id, kind, endpoint, llm, key, chat, message, plan_text, conversation = values
        conversation = conversation or Conversation()
        chat = list(chat) if isinstance(chat, list) else []
        message = message or {"text": "", "files": []}
        if not isinstance(message, dict):
            raise gr.Error("A message is text and, optionally, images.")
        text = str(message.get("text") or "").strip() if not from_plan else "(the edited plan)"
        files = [] if from_plan else list(message.get("files") or [])
        if not text and not files:
            raise gr.Error("Write a message first.")
        if len(files) > MAX_IMAGES_A_MESSAGE:
            raise gr.Error(f"At most {MAX_IMAGES_A_MESSAGE} images a message.")
        before = list(chat)
        with common.user_errors("Agent"):
            spec = catalogue.get(model_id)
            if from_plan:
                planner: Planner = Fixed(parse_answer(str(plan_text or "")))
            else:
                planner = planner_for(studio, kind, endpoint, llm, key, spec)
            images = [_opened(path) for path in files]
        chat += [{"role": "user", "content": {"path": path}} for path in files]
        chat.append({"role": "user", "content": text})
        in_context = not spec.builtin
        with common.user_errors("Agent"):
            planned = plan_turn(catalogue, planner, conversation, text, images, spec.id)
        answer = planned.answer
        if answer.inputs:
            parsed = "\n".join(f"{image_id}: {description}" for image_id, description in answer.inputs.items())
            chat.append({"role": "assistant", "content": parsed, "metadata": {"title": "Parsed", "status": "done"}})
        steps = "\n".join(planned.steps(in_context))
        chat.append(
            {"role": "assistant", "content": steps, "metadata": {"title": "Running the plan", "status": "pending"}}
        )
        try:
            yield chat, gr.MultimodalTextbox(), answer.to_json(), conversation
        except GeneratorExit:  # cancelled while the plan was shown: nothing of the turn stays
            abandon(conversation, planned)
            raise
        phase = common.progress_callback(progress, "Running the plan")
        try:
            with studio.cancellations.job(common.session_of(request)) as cancel, common.user_errors("Agent"):
                made = run_turn(
                    studio.runner, catalogue, conversation, planned, spec.id, in_context, on_step=phase, cancel=cancel
                )
        except gr.Error:
            # Nothing of the turn stays: the thread as it was, the message still in the box to send again.
            yield before, gr.MultimodalTextbox(), answer.to_json(), conversation
            raise
        chat[-1] = {"role": "assistant", "content": steps, "metadata": {"title": "Planned and ran", "status": "done"}}
        chat.append({"role": "assistant", "content": answer.reply})
        folder = studio.history.folder(common.session_of(request))
        for item in made:
            payload = {"method": f"agent: {item.record.method}", "id": item.record.id, **item.record.settings}
            path = save_image(item.image, payload, folder, f"agent-{item.record.id}")
            chat.append({"role": "assistant", "content": {"path": str(path), "alt_text": item.record.id}})
        yield chat, gr.MultimodalTextbox(value=None), answer.to_json(), conversation

    return on_turn


def _opened(path: str) -> Image.Image:
    try:
        with Image.open(path) as picture:
            return picture.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError):
        raise InvalidRequest(
            f"{Path(path).name} is not an image the tools can take: attach PNG, JPEG or WebP pictures."
        ) from None


def build(studio: StudioContext) -> None:
    ui = layout(studio)
    inputs = [ui.model, ui.planner, ui.endpoint, ui.llm, ui.key, ui.chat, ui.message, ui.plan, ui.conversation]
    outputs = [ui.chat, ui.message, ui.plan, ui.conversation]
    talk = common.in_gpu_slot(ui.message.submit, run_turn_handler(studio, False), inputs, outputs, api_name="agent")
    rerun = common.in_gpu_slot(
        ui.run_plan.click, run_turn_handler(studio, True), inputs, outputs, api_name="agent_run_plan"
    )
    ui.new_chat.click(lambda: ([], None, "", None), None, outputs, api_name="agent_new_chat")
    common.wire_cancel(studio, ui.cancel, [talk, rerun], "agent_cancel")
