"""Language models for the agent's planning: any OpenAI-compatible chat endpoint (OpenAI, vLLM,
Ollama, a llama.cpp server) through the `openai` package, and the planner that asks one for a
JSON answer, checks it, and asks again with the reason when it fails (three tries at most)."""

from __future__ import annotations

import base64
import io
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
from PIL import Image

from studio.agent.schema import MAX_OUTPUTS, Answer, parse_answer
from studio.agent.tools import describe_tools
from studio.errors import InvalidRequest, LoadFailed, StudioError
from studio.registry import Registry

TRIES = 3
# The user's images are shown to a vision model at most this large (their longer side, pixels).
SHOWN_SIDE = 512
Message = dict[str, Any]

SYSTEM = """You are the planner of DiT Studio, an image studio. Turn the user's message into images.
Answer with one JSON object only:
{{"reply": "what you will do, one sentence",
  "overview": "what the whole set of images shows (for in-context generation)",
  "outputs": ["one prompt per image to make", ...],
  "calls": [{{"tool": "a tool name", "arguments": {{...its settings...}}, "images": {{"input name": "output-1"}}}}]}}
  "inputs": {{"input-1": "what the user's image shows, one sentence", ...}}}}
Give either "outputs" (1 to {max_outputs} prompts, made together in context, as ChatDiT does) or "calls"
(tool calls, when the message asks for an edit of an earlier image or a tool's own task), never both.
Describe every image the user attached in "inputs" (later panels refer to it by that description).
Images are named by id: "input-N" for the user's images, "output-N" for images made in this chat.
The images so far: {images}.
The tools and their settings:
{tools}"""


class ChatBackend(Protocol):
    def complete(self, messages: Sequence[Message]) -> str: ...


@dataclass
class OpenAICompatible:
    """A chat-completions endpoint. The key is read from the caller (an environment variable or a
    password box), kept in memory only, never logged or saved."""

    base_url: str
    model: str
    api_key: str = ""
    timeout: float = 60.0

    def __repr__(self) -> str:  # the key never reaches a log line
        return f"OpenAICompatible(base_url={self.base_url!r}, model={self.model!r})"

    def complete(self, messages: Sequence[Message]) -> str:
        try:
            import openai
        except ImportError:
            raise StudioError("The OpenAI client is not installed: pip install openai.") from None
        client = openai.OpenAI(
            base_url=self.base_url, api_key=self.api_key or "none", timeout=self.timeout, max_retries=0
        )
        arguments: dict[str, Any] = {"model": self.model, "messages": list(messages)}
        try:
            try:
                reply = client.chat.completions.create(**arguments, response_format={"type": "json_object"})
            except openai.BadRequestError:
                # Servers without JSON mode refuse the response format: ask again without it.
                reply = client.chat.completions.create(**arguments)
        except openai.AuthenticationError:
            raise StudioError("The language model refused the key: check it in the agent's settings.") from None
        except (openai.APIConnectionError, openai.APITimeoutError):
            raise StudioError(f"The language model at {self.base_url} cannot be reached.") from None
        except openai.APIError as error:
            raise StudioError(f"The language model failed: {error.message}") from None
        if not reply.choices:
            raise StudioError("The language model answered with no message.")
        return reply.choices[0].message.content or ""


class InProcessModel:
    """An instruct model run in this process by hub id (e.g. Qwen/Qwen2.5-1.5B-Instruct):
    transformers, safetensors only, never remote code, offline from the local cache when the
    studio is offline; its memory is counted in the registry's budget (idle image models make
    room for it). One is kept loaded at a time. It reads text only: attached images are named to
    it, not shown (an OpenAI-compatible endpoint with a vision model sees them)."""

    # repo -> (model, tokenizer, the registry whose budget counts it)
    _loaded: ClassVar[dict[str, tuple[Any, Any, Registry]]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, repo: str, registry: Registry, max_new_tokens: int = 768) -> None:
        self.repo, self.registry, self.max_new_tokens = repo, registry, max_new_tokens

    def __repr__(self) -> str:
        return f"InProcessModel({self.repo!r})"

    def complete(self, messages: Sequence[Message]) -> str:
        model, tokenizer = self._model()
        prompt = tokenizer.apply_chat_template(
            [text_only(message) for message in messages], add_generation_prompt=True, return_dict=True,
            return_tensors="pt",
        )  # fmt: skip
        prompt = {name: tensor.to(model.device) for name, tensor in prompt.items()}
        with torch.no_grad():
            output = model.generate(
                **prompt, max_new_tokens=self.max_new_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id
            )
        return str(tokenizer.decode(output[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True))

    def _model(self) -> tuple[Any, Any]:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        with self._lock:
            if self.repo in self._loaded:
                model, tokenizer, _ = self._loaded[self.repo]
                return model, tokenizer
            for name, (_, _, counted_by) in list(self._loaded.items()):  # one language model at a time
                del self._loaded[name]
                counted_by.models.release(name)
            offline = self.registry.offline_only
            try:
                tokenizer = AutoTokenizer.from_pretrained(self.repo, local_files_only=offline)
                model = AutoModelForCausalLM.from_pretrained(
                    self.repo, dtype=self.registry.dtype, use_safetensors=True, local_files_only=offline
                )
            except (OSError, ValueError) as error:
                where = "in the local cache (the studio is offline)" if offline else "on the hub or on this disk"
                raise LoadFailed(
                    f"The language model {self.repo} cannot be loaded: not found {where} ({error})."
                ) from None
            if tokenizer.chat_template is None:
                raise LoadFailed(f"{self.repo} has no chat template: pick an instruct (chat) model.")
            size = sum(parameter.numel() * parameter.element_size() for parameter in model.parameters())
            self.registry.models.reserve(self.repo, size)
            model = model.to(self.registry.device).eval()
            self._loaded[self.repo] = (model, tokenizer, self.registry)
            return model, tokenizer


def text_only(message: Message) -> Message:
    """A message for a text model: its text parts, its images named."""
    content = message["content"]
    if isinstance(content, str):
        return message
    texts = [part["text"] for part in content if part.get("type") == "text"]
    return {"role": message["role"], "content": "\n".join(texts)}


def system_prompt(images: Sequence[str]) -> str:
    """The planner's instructions; `images`: one line per image of the chat ("output-1: a red circle")."""
    return SYSTEM.format(max_outputs=MAX_OUTPUTS, images="; ".join(images) or "none", tools=describe_tools())


def data_url(image: Image.Image) -> str:
    """An image as a PNG data URL, at most SHOWN_SIDE on its longer side (what a vision model reads)."""
    shown = image.convert("RGB")
    shown.thumbnail((SHOWN_SIDE, SHOWN_SIDE))
    buffer = io.BytesIO()
    shown.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def user_message(text: str, attached: Sequence[tuple[str, Image.Image]]) -> Message:
    """The user's turn: plain text, or text and the attached images by id (OpenAI's vision parts)."""
    if not attached:
        return {"role": "user", "content": text}
    parts: list[dict[str, Any]] = [{"type": "text", "text": f"{text}\n(Attached: {', '.join(i for i, _ in attached)})"}]
    parts += [{"type": "image_url", "image_url": {"url": data_url(image)}} for _, image in attached]
    return {"role": "user", "content": parts}


def ask(
    backend: ChatBackend,
    history: Sequence[Message],
    message: str,
    images: Sequence[str],
    attached: Sequence[tuple[str, Image.Image]] = (),
    check: Callable[[Answer], None] = lambda answer: None,
) -> Answer:
    """The model's checked answer: parsed against the schema, then `check`ed (tool settings against
    their types, image ids against the chat); a failing one is sent back with the reason, up to
    TRIES times, then refused (nothing runs on an unchecked answer)."""
    messages = [{"role": "system", "content": system_prompt(images)}, *history, user_message(message, attached)]
    problem = ""
    for _ in range(TRIES):
        text = backend.complete(messages)
        try:
            answer = parse_answer(text)
            check(answer)
            return answer
        except InvalidRequest as error:
            problem = str(error)
            messages += [
                {"role": "assistant", "content": text},
                {
                    "role": "user",
                    "content": f"That answer cannot be used: {problem} Answer again with the JSON object only.",
                },
            ]
    raise InvalidRequest(f"The language model gave no usable plan in {TRIES} tries (last problem: {problem})")
