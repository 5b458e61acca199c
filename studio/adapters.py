"""LoRA adapters registered for the catalogue's models, and their activation per request.

A registration (model, name, safetensors file) outlives the model's eviction: a model read again
gets its adapters back. A request names the adapters it wants with their scales and exactly those
are active while it runs (`activate`, under the model's run lock).
"""

from __future__ import annotations

import re
import secrets
import shutil
from collections.abc import Mapping
from pathlib import Path

from studio import offline
from studio.catalogue import ModelSpec
from studio.errors import InvalidRequest
from studio.residency import LoadedModel

ADAPTER_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def check_safetensors(path: Path) -> None:
    """InvalidRequest unless `path` is a readable safetensors file (never unpickled)."""
    from safetensors import safe_open

    if path.suffix != ".safetensors":
        raise InvalidRequest(f"{path.name}: only .safetensors LoRA files are accepted (pickles are never loaded).")
    try:
        with safe_open(str(path), framework="pt") as weights:
            if not list(weights.keys()):
                raise InvalidRequest(f"{path.name} holds no weights.")
    except InvalidRequest:
        raise
    except Exception:
        raise InvalidRequest(f"{path.name} is not a safetensors file (pickles are never loaded).") from None


class Adapters:
    def __init__(self) -> None:
        # model id -> adapter name -> safetensors file
        self._files: dict[str, dict[str, Path]] = {}

    def names(self, model_id: str) -> list[str]:
        return list(self._files.get(model_id, {}))

    def file_of(self, model_id: str, name: str) -> Path | None:
        return self._files.get(model_id, {}).get(name)

    def has_any(self, model_id: str) -> bool:
        return bool(self._files.get(model_id))

    def check_request(self, model_id: str, wanted: Mapping[str, float]) -> None:
        unknown = sorted(set(wanted) - set(self._files.get(model_id, {})))
        if unknown:
            raise InvalidRequest(f"No adapter {', '.join(unknown)} for {model_id}; add it first.")

    def check_new(self, spec: ModelSpec, name: str) -> None:
        """InvalidRequest unless `name` may name a new adapter of `spec`'s model. Checked before
        any file is written: the name is data, never part of a path it has not passed."""
        if not hasattr(spec.family.pipeline_class(spec.pipeline, "t2i"), "load_lora_weights"):
            raise InvalidRequest(f"{spec.name}: diffusers has no LoRA loader for {spec.family.label} pipelines.")
        if not ADAPTER_NAME.fullmatch(name or ""):
            raise InvalidRequest("Name the adapter with letters, digits, '-' or '_' (at most 64).")
        if name in self._files.get(spec.id, {}):
            raise InvalidRequest(f"{spec.id} already has an adapter named {name}.")

    def register(self, model_id: str, name: str, path: Path) -> None:
        check_safetensors(path)
        self._files.setdefault(model_id, {})[name] = path

    def forget(self, model_id: str, name: str) -> Path:
        path = self._files.get(model_id, {}).pop(name, None)
        if path is None:
            raise InvalidRequest(f"No adapter {name} for {model_id}.")
        return path

    def keep_copy(self, spec: ModelSpec, name: str, upload: Path) -> Path:
        """The studio's own copy of an upload (which may vanish), after the name has passed: a
        new adapter's, or new weights for one the model has."""
        if name not in self._files.get(spec.id, {}):
            self.check_new(spec, name)
        check_safetensors(upload)
        kept = offline.studio_home() / "loras" / spec.id / f"{name}-{secrets.token_hex(4)}.safetensors"
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(upload, kept)
        return kept

    def replace(self, model: LoadedModel | None, model_id: str, name: str, path: Path) -> None:
        """New weights for an adapter: swapped into the loaded layers in place when the shapes
        match (diffusers' hotswap: no new modules, a compiled transformer stays compiled), else
        unloaded so the next request loads them again."""
        if name not in self._files.get(model_id, {}):
            raise InvalidRequest(f"No adapter {name} for {model_id}.")
        check_safetensors(path)
        if model is not None and name in model.adapters_loaded:
            with model.run_lock:
                try:
                    model.base.load_lora_weights(str(path), adapter_name=name, hotswap=True)
                except Exception:  # other ranks or targets: a plain reload instead
                    model.base.delete_adapters(name)
                    model.adapters_loaded.discard(name)
        self._files[model_id][name] = path

    def unload(self, model: LoadedModel | None, name: str) -> None:
        if model is not None and name in model.adapters_loaded:
            with model.run_lock:
                model.base.delete_adapters(name)
                model.adapters_loaded.discard(name)

    def activate(self, model: LoadedModel, scales: Mapping[str, float]) -> None:
        """Load the model's registered adapters it lacks; make exactly `scales` active."""
        base = model.base
        for name, path in self._files.get(model.spec.id, {}).items():
            if name not in model.adapters_loaded:
                try:
                    base.load_lora_weights(str(path), adapter_name=name)
                except Exception as error:
                    raise InvalidRequest(f"{path.name} does not fit {model.spec.name}: {error}") from None
                # diffusers skips, with a warning, a LoRA whose keys match nothing in the model.
                if not any(name in names for names in base.get_list_adapters().values()):
                    raise InvalidRequest(
                        f"{path.name} does not fit {model.spec.name}: none of its layers are "
                        f"in a {model.spec.family.label} model."
                    )
                model.adapters_loaded.add(name)
        if scales:
            base.enable_lora()
            base.set_adapters(list(scales), adapter_weights=[float(scale) for scale in scales.values()])
        elif model.adapters_loaded:
            base.disable_lora()
