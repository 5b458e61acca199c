"""Helpers the test modules share."""

from __future__ import annotations

from diffusers import DiffusionPipeline

from studio.registry import Registry


def pipeline_of(registry: Registry, model_id: str, task: str = "t2i") -> DiffusionPipeline:
    """A model's pipeline to inspect after its lease ends: the tests' registries have no memory
    budget (or one the test itself controls), so nothing evicts it while the test reads it."""
    with registry.use(model_id, task) as pipe:
        return pipe
