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


def gpu_task(duration: int = 120) -> Callable[[F], F]:
    if spaces is None:
        return lambda function: function
    return spaces.GPU(duration=duration)
