"""Language models for the agent's planning: any OpenAI-compatible chat endpoint (OpenAI, vLLM,
Ollama, a llama.cpp server) through the `openai` package, and the planner that asks one for a
JSON answer, checks it, and asks again with the reason when it fails (three tries at most)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from studio.agent.schema import MAX_OUTPUTS, Answer, parse_answer
from studio.agent.tools import describe_tools
from studio.errors import InvalidRequest, StudioError

TRIES = 3

SYSTEM = """You are the planner of DiT Studio, an image studio. Turn the user's message into images.
Answer with one JSON object only:
{{"reply": "what you will do, one sentence",
  "overview": "what the whole set of images shows (for in-context generation)",
  "outputs": ["one prompt per image to make", ...],
  "calls": [{{"tool": "a tool name", "arguments": {{...its settings...}}, "images": {{"input name": "output-1"}}}}]}}
Give either "outputs" (1 to {max_outputs} prompts, made together in context, as ChatDiT does) or "calls"
(tool calls, when the message asks for an edit of an earlier image or a tool's own task), never both.
Images are named by id: "input-N" for the user's images, "output-N" for images made in this chat.
The images so far: {images}.
The tools and their settings:
{tools}"""


class ChatBackend(Protocol):
    def complete(self, messages: Sequence[dict[str, str]]) -> str: ...


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

    def complete(self, messages: Sequence[dict[str, str]]) -> str:
        try:
            import openai
        except ImportError:
            raise StudioError("The OpenAI client is not installed: pip install openai.") from None
        client = openai.OpenAI(
            base_url=self.base_url, api_key=self.api_key or "none", timeout=self.timeout, max_retries=0
        )
        arguments = {"model": self.model, "messages": list(messages), "response_format": {"type": "json_object"}}
        try:
            reply = client.chat.completions.create(**arguments)
        except openai.BadRequestError:
            # Servers without JSON mode refuse the response format: ask again without it.
            arguments.pop("response_format")
            reply = self._call(client, arguments)
        except openai.AuthenticationError:
            raise StudioError("The language model refused the key: check it in the agent's settings.") from None
        except (openai.APIConnectionError, openai.APITimeoutError):
            raise StudioError(f"The language model at {self.base_url} cannot be reached.") from None
        except openai.APIError as error:
            raise StudioError(f"The language model failed: {error.message}") from None
        return reply.choices[0].message.content or ""

    def _call(self, client, arguments):
        import openai

        try:
            return client.chat.completions.create(**arguments)
        except openai.APIError as error:
            raise StudioError(f"The language model failed: {error.message}") from None


def system_prompt(image_ids: Sequence[str]) -> str:
    return SYSTEM.format(max_outputs=MAX_OUTPUTS, images=", ".join(image_ids) or "none", tools=describe_tools())


def ask(backend: ChatBackend, history: Sequence[dict[str, str]], message: str, image_ids: Sequence[str]) -> Answer:
    """The model's checked answer; a malformed one is sent back with the reason, up to TRIES times,
    then refused (nothing runs on an unchecked answer)."""
    messages = [{"role": "system", "content": system_prompt(image_ids)}, *history, {"role": "user", "content": message}]
    problem = ""
    for _ in range(TRIES):
        text = backend.complete(messages)
        try:
            return parse_answer(text)
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
