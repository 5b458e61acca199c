"""What every tab shares: the model picker's labels and turning failures into UI messages."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import gradio as gr

from studio.catalogue import ModelSpec
from studio.context import StudioContext
from studio.errors import StudioError

log = logging.getLogger(__name__)


def model_choices(studio: StudioContext, serves: Callable[[ModelSpec], bool] = lambda spec: True) -> list[tuple[str, str]]:
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
