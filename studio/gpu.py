"""Hugging Face Spaces (ZeroGPU) support: `spaces.GPU` where the package exists, a no-op elsewhere.

`spaces` must be imported before anything starts CUDA, so `studio/__init__` imports this module
before any torch import.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

try:
    import spaces
except ImportError:
    spaces = None

F = TypeVar("F", bound=Callable)


GPU_MARK = "gpu_duration"


def gpu_task(duration: int = 120) -> Callable[[F], F]:
    """ZeroGPU's decorator where it runs, nothing elsewhere; either way the handler is marked, so
    a test can check that every handler in the GPU slot has it."""

    def wrap(function: F) -> F:
        wrapped = function if spaces is None else spaces.GPU(duration=duration)(function)
        setattr(wrapped, GPU_MARK, duration)
        return wrapped

    return wrap
