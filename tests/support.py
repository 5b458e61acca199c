"""Helpers the test modules share: models chosen by what they can do (so a new model or family
in the catalogue gets the tests of its capabilities), and a pipeline to inspect."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
from diffusers import DiffusionPipeline

from studio.catalogue import Catalogue, ModelSpec
from studio.registry import Registry

CATALOGUE = Catalogue.load()
Capability = Callable[[ModelSpec], bool]


def joint(spec: ModelSpec) -> bool:
    """Makes images from text with text and image tokens in one attention and samples as a
    rectified flow (FLUX, SD3; not a TrigFlow student)."""
    return image(spec) and spec.flow is not None and spec.family.token_order in ("text-image", "image-text")


def cross(spec: ModelSpec) -> bool:
    """Makes images from text, reading the text through cross-attention (PixArt, SANA)."""
    return image(spec) and spec.family.token_order == "cross-attention"


def controllable(spec: ModelSpec) -> bool:
    return bool(spec.controlnets)


def image(spec: ModelSpec) -> bool:
    """Makes images (every family but the video ones)."""
    return spec.kind == "image"


def video(spec: ModelSpec) -> bool:
    return spec.kind == "video"


def random_per_family(capability: Capability = image) -> list[str]:
    """One random-weight, standard-mode built-in of each family that has the capability: the
    cheapest model that runs each family's code path."""
    chosen: dict[str, str] = {}
    for spec in CATALOGUE:
        if spec.random_weights and spec.mode == "standard" and capability(spec):
            chosen.setdefault(spec.family.name, spec.id)
    return list(chosen.values())


def trained(capability: Capability = image) -> list[str]:
    """The standard built-ins with trained weights (the shapes world) that have the capability,
    without extensions (a SiamLayout model and the distilled student have their own tests)."""
    return [
        spec.id
        for spec in CATALOGUE
        if spec.builtin
        and not spec.random_weights
        and not spec.extensions
        and spec.mode == "standard"
        and capability(spec)
    ]


def builtins(capability: Capability = image) -> list[str]:
    return [spec.id for spec in CATALOGUE if spec.builtin and not spec.extensions and capability(spec)]


def pipeline_of(registry: Registry, model_id: str, task: str = "t2i") -> DiffusionPipeline:
    """A model's pipeline to inspect after its lease ends: the tests' registries have no memory
    budget (or one the test itself controls), so nothing evicts it while the test reads it."""
    with registry.use(model_id, task) as pipe:
        return pipe


class ChatServer:
    """A real HTTP server speaking OpenAI's chat-completions protocol with scripted answers: each
    request takes the next answer (a text, or an HTTP status for an error) and is kept."""

    def __init__(self, *answers: str | int, key: str = "test-key", json_mode: bool = True) -> None:
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.answers, self.requests = list(answers), []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet test output
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                if self.headers.get("Authorization") != f"Bearer {key}":
                    return self.reply(401, {"error": {"message": "Incorrect API key provided", "type": "auth"}})
                if "response_format" in body and not json_mode:
                    return self.reply(400, {"error": {"message": "response_format is not supported"}})
                answer = server.answers.pop(0)
                if isinstance(answer, int):
                    return self.reply(answer, {"error": {"message": f"scripted failure {answer}"}})
                message = {"role": "assistant", "content": answer}
                self.reply(200, {
                    "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                })  # fmt: skip

            def reply(self, status, payload):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> ChatServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def serve(demo: Any, port: int, **options: Any) -> str:
    """Serves a built studio (a `gr.Blocks`) on 127.0.0.1:`port` in the background, with the
    studio's launch options, and returns its URL once it answers.

    Gradio's own start-up probe gives up when the page takes over 3 s to answer and then refuses
    to serve without a share link; a 2-core CI machine still busy with the previous test's
    threads can take that long, so the probe here waits up to a minute instead."""
    from tabs.app import launch_options

    demo.launch(
        server_name="127.0.0.1",
        server_port=port,
        prevent_thread_lock=True,
        inbrowser=False,
        _frontend=False,  # skips only that 3-second probe (gradio/blocks.py)
        **launch_options(),
        **options,
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 60
    while True:
        try:
            answer = httpx.head(url, timeout=20).status_code
        except httpx.TransportError as error:
            answer = error
        if isinstance(answer, int) and answer < 500:
            return url
        if time.monotonic() > deadline:
            raise RuntimeError(f"the studio at {url} did not answer within a minute: {answer}")
        time.sleep(0.5)
