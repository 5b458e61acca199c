"""Reading models from disk or the hub: pipelines, ControlNets and their family's extensions.

Weights are safetensors only and no remote code ever runs. A failure becomes one sentence a user
can act on (`explain_load_failure`); nothing here keeps state: residency is `studio.residency`.
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import DiffusionPipeline, ModelMixin

from studio import offline
from studio.catalogue import ControlSpec, ModelSpec
from studio.errors import InvalidRequest


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def in_local_cache(repo: str, marker: str = "model_index.json") -> bool:
    """Whether the hub cache holds `repo` (judged by its `marker` file); a catalogue repo may also
    be a local folder in diffusers format."""
    from huggingface_hub import try_to_load_from_cache

    if Path(repo).is_dir():
        return (Path(repo) / marker).is_file()
    return isinstance(try_to_load_from_cache(repo, marker), str)


def required_repos(spec: ModelSpec) -> list[tuple[str, str]]:
    """(repo, marker file) of everything a hub model needs: the pipeline and its extensions."""
    repos = [(spec.repo, "model_index.json")] if spec.repo else []
    for extension in spec.family.extensions:
        if extension.field in spec.extensions:
            repos += extension.repos(spec.extensions[extension.field])
    return repos


def module_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def pipeline_bytes(pipe: DiffusionPipeline) -> int:
    return sum(module_bytes(c) for c in pipe.components.values() if isinstance(c, torch.nn.Module))


def saved_model_class(config: str | Path) -> type[ModelMixin]:
    """The diffusers model class a saved model's config.json names; only diffusers' own model
    classes (no remote code)."""
    name = json.loads(Path(config).read_text()).get("_class_name", "")
    model_class = getattr(diffusers, name, None)
    if not (isinstance(model_class, type) and issubclass(model_class, diffusers.ModelMixin)):
        raise InvalidRequest(f"{config} names no diffusers model class ({name!r}).")
    return model_class


def _builtin_control(spec: ModelSpec, control: ControlSpec, base: DiffusionPipeline) -> Path:
    builder = spec.family.controlnet_builder
    if builder is None:
        raise InvalidRequest(f"{spec.family.label} has no built-in ControlNet.")
    return offline.ensure_builtin(
        f"{spec.id}-controlnet-{control.name}",
        lambda target: builder(base.transformer, seed=zlib.crc32(control.name.encode())).save_pretrained(target),
        trained_dir=control.path,
        marker="config.json",
    )


def load_control(
    spec: ModelSpec, control: ControlSpec, base: DiffusionPipeline, dtype: torch.dtype, offline_only: bool
) -> ModelMixin:
    """Read a ControlNet (or a control transformer) for a loaded model: from the hub, safetensors
    only, or for a built-in control its trained weights, else the small random one built from the
    base's transformer, saved once and read back through the same `from_pretrained`."""
    module_class = type(base.transformer) if control.component == "transformer" else None
    if control.builtin:
        folder = _builtin_control(spec, control, base)
        module_class = module_class or saved_model_class(folder / "config.json")
        return module_class.from_pretrained(folder, dtype=dtype, use_safetensors=True, local_files_only=True)
    if control.repo is None:
        raise InvalidRequest(f"The {control.name} ControlNet names no repository.")
    kwargs: dict[str, Any] = {"dtype": dtype, "use_safetensors": True, "local_files_only": offline_only}
    if control.subfolder:
        kwargs["subfolder"] = control.subfolder
    if control.variant:
        kwargs["variant"] = control.variant
    if module_class is None:
        from huggingface_hub import hf_hub_download

        local = Path(control.repo, control.config_file)
        config = (
            local
            if local.is_file()
            else hf_hub_download(control.repo, control.config_file, local_files_only=offline_only)
        )
        module_class = saved_model_class(config)
    return module_class.from_pretrained(control.repo, **kwargs)


def load_pipeline(
    spec: ModelSpec, dtype: torch.dtype, offline_only: bool, quantization_config: Any = None
) -> DiffusionPipeline:
    """Read a model's weights into host memory (safetensors only, no remote code), quantized where
    its memory plan says (diffusers' PipelineQuantizationConfig), with the extensions its family
    attaches (SD3's SiamLayout branches)."""
    pipeline_class = spec.family.pipeline_class(spec.pipeline, "t2i")
    quantized = {"quantization_config": quantization_config} if quantization_config is not None else {}
    if spec.builtin:
        source = offline.ensure_builtin(spec.builtin, spec.family.builtin_builders[spec.builtin], spec.path)
        pipe = pipeline_class.from_pretrained(
            source, dtype=dtype, use_safetensors=True, local_files_only=True, **quantized
        )
    else:
        kwargs: dict[str, Any] = {
            "dtype": dtype,
            "use_safetensors": True,
            "local_files_only": offline_only,
            **quantized,
        }
        if spec.variant:
            kwargs["variant"] = spec.variant
        pipe = pipeline_class.from_pretrained(spec.repo, **kwargs)
    for extension in spec.family.extensions:
        if extension.field in spec.extensions:
            extension.attach(pipe, spec.extensions[extension.field], offline_only)
    return pipe


def explain_load_failure(spec: ModelSpec, error: BaseException) -> str:
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    if isinstance(error, GatedRepoError):
        return (
            f"{spec.name} is gated: accept its licence on https://huggingface.co/{spec.repo} "
            "and log in with `hf auth login`, then try again."
        )
    if isinstance(error, RepositoryNotFoundError):
        return f"The hub has no repository {spec.repo} (or it is private), so {spec.name} cannot load."
    if isinstance(error, LocalEntryNotFoundError) or "offline" in str(error).lower():
        return (
            f"{spec.name} is not fully in the local cache and the hub cannot be reached; "
            f"download it once with `hf download {spec.repo}`."
        )
    if isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower():
        return f"Not enough memory to load {spec.name} (it needs about {spec.memory_gb:g} GB)."
    return f"{spec.name} could not be loaded: {type(error).__name__}: {error}"
