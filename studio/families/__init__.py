"""Model families. Each module knows its pipelines (per task), its call conventions and how to
build its small built-in model; the registry knows nothing family-specific."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import diffusers


@dataclass(frozen=True)
class Family:
    name: str
    label: str
    # Task variants reachable from a text-to-image pipeline class through `from_pipe`.
    task_variants: Mapping[str, Mapping[str, str]]
    # Joint-attention token order, for the attention-control toolkit: "text-image" or "image-text".
    token_order: str
    # Built-in random-weight models of this family: name -> builder writing a saved pipeline.
    builtin_builders: Mapping[str, Callable[[Path], None]] = field(default_factory=dict)

    def pipeline_class(self, t2i_class: str, task: str) -> type[diffusers.DiffusionPipeline]:
        if task == "t2i":
            name = t2i_class
        else:
            name = self.task_variants.get(t2i_class, {}).get(task)
            if name is None:
                raise KeyError(task)
        return getattr(diffusers, name)

    def tasks(self, t2i_class: str) -> tuple[str, ...]:
        return ("t2i", *self.task_variants.get(t2i_class, {}))


def all_families() -> dict[str, Family]:
    from studio.families import flux, pixart, sana, sd3

    return {module.FAMILY.name: module.FAMILY for module in (flux, sd3, pixart, sana)}
