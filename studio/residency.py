"""Which models are resident, where, and for how long: the memory budget, leases and LRU eviction.

A model is leased while a request runs on it and cannot be evicted then. When a load needs room,
the least recently used model without a lease leaves first: to host memory when the device is an
accelerator and the host has room (coming back is then a copy, not a load), freed otherwise.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from diffusers import DiffusionPipeline

from studio.catalogue import ModelSpec
from studio.device import release_memory
from studio.errors import LoadFailed
from studio.loading import explain_load_failure, pipeline_bytes
from studio.memory import MemoryPlan

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    spec: ModelSpec
    pipelines: dict[str, DiffusionPipeline]
    size_bytes: int
    # How its components sit in memory (quantized, offloaded), chosen before it was read.
    plan: MemoryPlan
    on_device: bool = True
    users: int = 0
    # Guards the task variants made from the base pipeline.
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Held while a request runs on a model that has adapters: their activation is per model.
    run_lock: threading.Lock = field(default_factory=threading.Lock)
    adapters_loaded: set[str] = field(default_factory=set)
    # ControlNets loaded for this model (by name): they follow it to the host and back.
    controls: dict[str, torch.nn.Module] = field(default_factory=dict)

    @property
    def base(self) -> DiffusionPipeline:
        return self.pipelines["t2i"]


def host_has_room(size: int) -> bool:
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return False
    return size < available * 0.8


class ResidentModels:
    """Loaded models under a device memory budget (None: unbounded)."""

    def __init__(
        self,
        device: str,
        budget_bytes: int | None,
        read: Callable[[ModelSpec], tuple[DiffusionPipeline, MemoryPlan]],
    ):
        """`read`: a model's pipeline in host memory (quantized as planned) and its memory plan."""
        self.device = device
        self.budget_bytes = budget_bytes
        self._read = read
        # LRU order: the first entry is the least recently used.
        self._loaded: OrderedDict[str, LoadedModel] = OrderedDict()
        self._state_lock = threading.RLock()
        # One model loads at a time: two requests for one model load it once, and two different
        # loads never race for the same device memory.
        self._load_lock = threading.Lock()
        # Memory held by models the registry does not load but must count (a language model the
        # agent runs in-process), by name.
        self._reserved: dict[str, int] = {}

    def ids(self) -> list[str]:
        """Loaded models, least recently used first."""
        with self._state_lock:
            return list(self._loaded)

    def get(self, model_id: str) -> LoadedModel | None:
        with self._state_lock:
            return self._loaded.get(model_id)

    def used_bytes(self) -> int:
        with self._state_lock:
            return sum(m.size_bytes for m in self._loaded.values() if m.on_device) + sum(self._reserved.values())

    def reserve(self, name: str, size: int) -> None:
        """Count `size` bytes held outside the registry's models under `name`: idle models make
        room first; LoadFailed when it cannot fit the budget at all."""
        if self.budget_bytes is not None and size > self.budget_bytes:
            raise LoadFailed(
                f"{name} needs {size / 2**30:.1f} GB, more than the studio's memory budget "
                f"({self.budget_bytes / 2**30:.1f} GB): pick a smaller model or raise --memory-budget."
            )
        self.make_room(size, keep="")
        with self._state_lock:
            self._reserved[name] = size

    def release(self, name: str) -> None:
        with self._state_lock:
            self._reserved.pop(name, None)

    @contextmanager
    def lease(self, spec: ModelSpec) -> Iterator[LoadedModel]:
        """The model on the device, kept there until the block ends."""
        model = self._acquire(spec)
        try:
            yield model
        finally:
            with self._state_lock:
                model.users -= 1

    def add_module(self, model: LoadedModel, name: str, module: torch.nn.Module, size: int) -> None:
        """A ControlNet joins a loaded model: room is made for it as for a model (SD3.5-Large's is
        8 GB), then it lives and moves with the model."""
        self.make_room(size, keep=model.spec.id)
        module.to(self.device)
        with self._state_lock:
            model.controls[name] = module
            model.size_bytes += size

    def _acquire(self, spec: ModelSpec) -> LoadedModel:
        with self._state_lock:
            model = self._loaded.get(spec.id)
            if model is not None and model.on_device:
                self._loaded.move_to_end(spec.id)
                model.users += 1
                return model
        with self._load_lock:
            with self._state_lock:
                model = self._loaded.get(spec.id)
            if model is None:
                model = self._load(spec)
            elif not model.on_device:
                self.make_room(model.size_bytes, keep=spec.id)
                self._to_device(model)
            with self._state_lock:
                self._loaded[spec.id] = model
                self._loaded.move_to_end(spec.id)
                model.users += 1
            return model

    def _load(self, spec: ModelSpec) -> LoadedModel:
        # Plan and read first (the steps that fail: no plan fits, missing files, gated repos, no
        # network), so a failed load evicts nothing.
        pipe, plan = self._read(spec)
        pipe.set_progress_bar_config(disable=True)
        # What a quantized or offloaded model holds on the device is the plan's estimate; a whole
        # one is counted exactly.
        size = pipeline_bytes(pipe) if plan.moves_whole else plan.device_bytes
        model = LoadedModel(spec, {"t2i": pipe}, size, plan)
        self.make_room(model.size_bytes, keep=spec.id)
        try:
            self._to_device(model)
        except Exception as error:
            model.pipelines.clear()
            release_memory()
            raise LoadFailed(explain_load_failure(spec, error)) from error
        return model

    def _to_device(self, model: LoadedModel) -> None:
        if model.plan.moves_whole:
            model.base.to(self.device)
        else:
            model.plan.apply(model.base, self.device)
        for module in model.controls.values():
            module.to(self.device)
        model.on_device = True

    def free(self, model_id: str) -> bool:
        """Free a model that no request is using, so its next use reads it anew; False while in use."""
        with self._state_lock:
            model = self._loaded.get(model_id)
            if model is None:
                return True
            if model.users > 0:
                return False
            del self._loaded[model_id]
            model.pipelines.clear()
        release_memory()
        return True

    def evict_idle(self, keep: str) -> None:
        """Every model but `keep` that no request is using leaves the device."""
        with self._state_lock:
            for model_id, model in list(self._loaded.items()):
                if model_id != keep and model.users == 0 and model.on_device:
                    self._evict(model_id, model)

    def make_room(self, needed: int, keep: str) -> None:
        if self.budget_bytes is None:
            return
        with self._state_lock:
            for model_id in list(self._loaded):
                if self.used_bytes() + needed <= self.budget_bytes:
                    break
                model = self._loaded[model_id]
                if model_id == keep or model.users > 0 or not model.on_device:
                    continue
                self._evict(model_id, model)

    def _evict(self, model_id: str, model: LoadedModel) -> None:
        # Quantized weights and offload hooks do not move as a whole: such a model is freed.
        if self.device != "cpu" and model.plan.moves_whole and host_has_room(model.size_bytes):
            model.base.to("cpu")
            for module in model.controls.values():
                module.to("cpu")
            model.on_device = False
            log.info("moved %s to host memory", model_id)
        else:
            del self._loaded[model_id]
            model.pipelines.clear()
            log.info("freed %s", model_id)
        release_memory()
