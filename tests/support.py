"""Helpers the test modules share: models chosen by what they can do (so a new model or family
in the catalogue gets the tests of its capabilities), and a pipeline to inspect."""

from __future__ import annotations

from collections.abc import Callable

from diffusers import DiffusionPipeline

from studio.catalogue import Catalogue, ModelSpec
from studio.registry import Registry

CATALOGUE = Catalogue.load()
Capability = Callable[[ModelSpec], bool]


def joint(spec: ModelSpec) -> bool:
    """Makes images from text with text and image tokens in one attention (FLUX, SD3)."""
    return image(spec) and spec.family.token_order in ("text-image", "image-text")


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
    """The built-ins with trained weights (the shapes world) that have the capability, without
    extensions (a SiamLayout model has its own tests)."""
    return [
        spec.id
        for spec in CATALOGUE
        if spec.builtin and not spec.random_weights and not spec.extensions and capability(spec)
    ]


def builtins(capability: Capability = image) -> list[str]:
    return [spec.id for spec in CATALOGUE if spec.builtin and not spec.extensions and capability(spec)]


def pipeline_of(registry: Registry, model_id: str, task: str = "t2i") -> DiffusionPipeline:
    """A model's pipeline to inspect after its lease ends: the tests' registries have no memory
    budget (or one the test itself controls), so nothing evicts it while the test reads it."""
    with registry.use(model_id, task) as pipe:
        return pipe
