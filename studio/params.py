"""Each setting declared once: its default, range, step and label beside the settings type it
belongs to. The engine's validation, the tabs' sliders and the API's descriptions all read these
(as InvokeAI's InputField serves its nodes and its UI alike).

    @dataclass(frozen=True, kw_only=True)
    class MySettings(SamplingSettings):
        strength: float = setting("Strength", 0.5, 0.0, 1.0, 0.05)

`SamplingSettings` is what every method shares: the model and how it samples.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from studio.errors import Cancelled, InvalidRequest

PARAM = "param"
MAX_SEED = 2**32 - 1


def plain(number: float) -> str:
    """A number as a person writes it: 4294967295, 0.5, 50."""
    return str(int(number)) if float(number).is_integer() else f"{number:g}"


@dataclass(frozen=True)
class Param:
    label: str
    default: Any
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    info: str = ""

    def describe(self) -> str:
        """One line for API and tool descriptions."""
        bounds = ""
        if self.minimum is not None and self.maximum is not None:
            bounds = f" ({plain(self.minimum)} to {plain(self.maximum)})"
        return f"{self.label}{bounds}, default {self.default!r}" + (f": {self.info}" if self.info else "")


def setting(
    label: str,
    default: Any,
    minimum: float | None = None,
    maximum: float | None = None,
    step: float | None = None,
    info: str = "",
) -> Any:
    """A dataclass field that carries its Param."""
    return field(default=default, metadata={PARAM: Param(label, default, minimum, maximum, step, info)})


def params(settings_type: type) -> dict[str, Param]:
    """The declared settings of a settings dataclass, by field name."""
    return {f.name: f.metadata[PARAM] for f in fields(settings_type) if PARAM in f.metadata}


def param(settings_type: type, name: str) -> Param:
    return params(settings_type)[name]


def checked(settings: Any) -> Any:
    """The settings with every declared number finite, of its field's type and within its range,
    or InvalidRequest naming the first that is not (by its label, as the user sees it)."""
    changes = {}
    for f in fields(settings):
        spec = f.metadata.get(PARAM)
        if spec is None or spec.minimum is None:
            continue
        value = getattr(settings, f.name)
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise InvalidRequest(f"{spec.label} must be a number.") from None
        if not math.isfinite(number) or not spec.minimum <= number <= spec.maximum:
            raise InvalidRequest(f"{spec.label} must be between {plain(spec.minimum)} and {plain(spec.maximum)}.")
        changes[f.name] = int(number) if isinstance(spec.default, int) else number
    return dataclasses.replace(settings, **changes)


@dataclass(frozen=True, kw_only=True)
class SamplingSettings:
    """What every method's settings share: the model and how it samples."""

    model: str
    steps: int = setting("Steps", 20, 1, 100, 1)
    guidance: float = setting("Guidance", 4.5, 0.0, 50.0, 0.1)
    width: int = setting("Width", 1024, 16, 4096, 16)
    height: int = setting("Height", 1024, 16, 4096, 16)
    seed: int = setting("Seed", 0, 0, MAX_SEED, 1)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


StepCallback = Callable[[int, int], None]


class StepReporter:
    """Progress and cancel for one job: `step()` after every unit of work (a denoising step, an
    inversion step, an optimisation iteration) reports done/total and stops with Cancelled once
    the job's cancel switch is set. One reporter serves every method."""

    def __init__(self, total: int, on_step: StepCallback | None = None, cancel: threading.Event | None = None):
        self.total = total
        self.done = 0
        self._on_step = on_step
        self._cancel = cancel

    def begin(self) -> None:
        """The model is ready and work starts: nothing done yet (a progress bar can say so, rather
        than 'loading' through a slow first step)."""
        self.check()
        if self._on_step is not None:
            self._on_step(0, self.total)

    def check(self) -> None:
        if self._cancel is not None and self._cancel.is_set():
            raise Cancelled("Cancelled.")

    def step(self, *_: object) -> None:
        """One unit done (extra arguments, such as a step index, are ignored)."""
        self.check()
        self.done += 1
        if self._on_step is not None:
            self._on_step(self.done, self.total)


def redefault(name: str, default: Any, settings_type: type = SamplingSettings) -> Any:
    """A field of `settings_type` with another default and the same range, label and step (a
    method whose paper samples with its own defaults)."""
    return field(default=default, metadata={PARAM: dataclasses.replace(param(settings_type, name), default=default)})


# Prompts far longer than any text encoder reads (T5-XXL takes 512 tokens) are refused, not
# tokenised: a 50,000-character prompt costs time and memory and says nothing more.
MAX_PROMPT_CHARACTERS = 4000


def prompt_text(text: object, what: str = "a prompt") -> str:
    """A prompt trimmed, or InvalidRequest when it is empty, not text or too long."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidRequest(f"Write {what} first.")
    if len(text) > MAX_PROMPT_CHARACTERS:
        raise InvalidRequest(f"{what[0].upper()}{what[1:]} may be at most {MAX_PROMPT_CHARACTERS} characters long.")
    return text.strip()
