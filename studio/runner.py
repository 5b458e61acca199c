"""One way to run a job: a tab (or the agent, or an API client) submits (method, settings, inputs)
to a runner, which streams progress through `on_step(done, total)` and honours `cancel`.

Today the only runner is `LocalRunner`, in-process on the registry. It is the seam where a remote
runner (replicas that each hold models, for deployments that outgrow one GPU) plugs in without
touching tabs or methods: settings are dataclasses of plain values (`to_dict`), inputs and results
are images and numbers, never live pipelines or tensors.

A method declares itself once with `register(Method(...))` in its own module; the table is read
from every module of `studio.methods` (and `studio.generation`), so a new method touches only
its own module.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Protocol

import torch
from PIL import Image

from studio.device import release_memory
from studio.errors import InvalidRequest
from studio.params import SamplingSettings, StepCallback, params
from studio.previews import Preview
from studio.registry import Registry

log = logging.getLogger(__name__)

# (registry, settings, inputs, on_step, cancel) -> the method's result
MethodCall = Callable[[Registry, Any, Mapping[str, Any], StepCallback | None, threading.Event | None], Any]


@dataclass(frozen=True)
class Method:
    name: str
    settings_type: type[SamplingSettings]
    call: MethodCall
    # What it does, for API and tool descriptions.
    summary: str
    # Inputs beside the settings (images), by name, with what each is.
    inputs: Mapping[str, str] = field(default_factory=dict)
    # For a method that yields results one at a time: the settings for what is left after
    # `done` results (so an interrupted run resumes instead of starting over).
    remaining: Callable[[Any, int], Any] | None = None
    # The images of a result (what an agent shows for a tool call): its `image` unless said.
    pictures: Callable[[Any], list[Image.Image]] = lambda result: [result.image]

    def describe(self) -> str:
        """The method and every declared setting, one line each."""
        lines = [f"{self.name}: {self.summary}"]
        declared = params(self.settings_type)
        for item in fields(self.settings_type):
            if item.name in declared:
                lines.append(f"- {item.name}: {declared[item.name].describe()}")
            elif item.default is MISSING and item.default_factory is MISSING:
                lines.append(f"- {item.name}: required")
        lines += [f"- {name} (input): {what}" for name, what in self.inputs.items()]
        return "\n".join(lines)


_METHODS: dict[str, Method] = {}
_loaded = threading.Lock()
_all_imported = False


def register(method: Method) -> Method:
    _METHODS[method.name] = method
    return method


def methods() -> dict[str, Method]:
    """Every registered method (importing every method module once: a module imported on its own
    before this registers only its own method)."""
    global _all_imported
    with _loaded:
        if not _all_imported:
            import studio.methods

            importlib.import_module("studio.generation")
            for info in pkgutil.iter_modules(studio.methods.__path__):
                importlib.import_module(f"studio.methods.{info.name}")
            _all_imported = True
    return dict(_METHODS)


@dataclass(frozen=True)
class Job:
    """What a tab submits: a method's name, its settings and its inputs (images), plain data."""

    method: str
    settings: SamplingSettings
    inputs: Mapping[str, Any] = field(default_factory=dict)


class Runner(Protocol):
    def run(self, job: Job, on_step: StepCallback | None = None, cancel: threading.Event | None = None) -> Any: ...


def work(settings: SamplingSettings) -> int:
    """A job's size: denoising steps times images times pixels."""
    return int(settings.steps) * int(getattr(settings, "count", 1)) * int(settings.width) * int(settings.height)


class LocalRunner:
    """Runs jobs in this process, on this registry; with a `work_budget`, a job larger than it
    (steps x images x pixels) is refused before anything runs (shared studios: one visitor's
    100-step batch of eight 2048² images would hold the GPU for everyone)."""

    def __init__(self, registry: Registry, work_budget: int | None = None):
        self.registry = registry
        self.work_budget = work_budget

    def run(self, job: Job, on_step: StepCallback | None = None, cancel: threading.Event | None = None) -> Any:
        table = methods()
        if job.method not in table:
            raise InvalidRequest(f"There is no method {job.method!r}; there are {', '.join(sorted(table))}.")
        chosen = table[job.method]
        if not isinstance(job.settings, chosen.settings_type):
            raise InvalidRequest(
                f"{job.method} takes {chosen.settings_type.__name__}, not {type(job.settings).__name__}."
            )
        unknown = set(job.inputs) - set(chosen.inputs)
        if unknown:
            raise InvalidRequest(f"{job.method} takes no input {', '.join(sorted(unknown))}.")
        self._check_work(job.settings)

        def attempt(settings: Any) -> Any:
            return chosen.call(self.registry, settings, dict(job.inputs), on_step, cancel)

        if chosen.remaining is not None:
            return self._resuming(chosen.remaining, job, attempt)
        try:
            return attempt(job.settings)
        except torch.OutOfMemoryError:
            self._recover(job)
        try:
            return attempt(job.settings)
        except torch.OutOfMemoryError:
            raise InvalidRequest(out_of_memory(job)) from None

    def _check_work(self, settings: SamplingSettings) -> None:
        if self.work_budget is None:
            return
        try:
            size = work(settings)
        except (TypeError, ValueError):
            return  # the method refuses bad numbers itself, with their own message
        if size > self.work_budget:
            raise InvalidRequest(
                "This job is larger than one visitor may ask of this shared studio (steps × images × pixels "
                f"{size:,} over {self.work_budget:,}): fewer steps, images or pixels."
            )

    def _resuming(self, remaining: Callable[[Any, int], Any], job: Job, attempt: Callable[[Any], Any]) -> Iterator[Any]:
        """Results one at a time; out of memory once, the run resumes where it stopped."""
        done, retried = 0, False
        settings = job.settings
        while True:
            try:
                for result in attempt(settings):
                    # A preview of an image still forming is not a result to resume after.
                    done += not isinstance(result, Preview)
                    yield result
                return
            except torch.OutOfMemoryError:
                if retried:
                    raise InvalidRequest(out_of_memory(job)) from None
                retried = True
                self._recover(job)
                settings = remaining(job.settings, done)

    def _recover(self, job: Job) -> None:
        """After running out of memory: free the step's tensors and every other idle model."""
        log.warning("%s ran out of memory; freeing memory and other models, then trying once more", job.method)
        release_memory()
        self.registry.models.evict_idle(keep=job.settings.model)
        release_memory()


def out_of_memory(job: Job) -> str:
    return (
        f"Not enough memory for this {job.method.replace('_', ' ')} even after freeing the other models: "
        "try a smaller size or fewer images."
    )
