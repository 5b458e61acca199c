"""The model registry: catalogue + loaded pipelines + memory budget + hot swap.

`registry.use(model_id, task)` hands out a ready pipeline. Task variants of one model are made with
`from_pipe`, so they share every component (no weight is loaded twice). Loaded models live under a
memory budget; the least recently used model that is not in use is evicted first: moved to host
memory when the device is an accelerator and the host has room (swapping back is then a copy,
not a load), freed otherwise. Weights are read (the step that fails: missing files, gated repos,
no network) before anything is evicted, so a failed load leaves the registry exactly as it was.

LoRA adapters belong to the registry too: `add_adapter` registers a safetensors file for a model
(and loads it; a model reloaded after eviction gets its adapters back), and a request names the
adapters it wants with their scales, `use(model_id, task, {"name": 0.8})`: exactly those are
active while it runs, and requests on a model with adapters run one at a time.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import re
import shutil
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import diffusers
import torch
from diffusers import DiffusionPipeline

from studio import offline
from studio.catalogue import Catalogue, ControlSpec, ModelSpec
from studio.device import device_memory_bytes, release_memory
from studio.errors import InvalidRequest, LoadFailed, ModelUnavailable, StudioError
from studio.families import siamlayout

log = logging.getLogger(__name__)
GIB = 1024**3


class ModelState(enum.Enum):
    LOADED = "loaded"
    BUILTIN = "built-in"
    CACHED = "in local cache"
    DOWNLOADABLE = "downloads on first use"
    UNAVAILABLE = "unavailable offline"


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def in_local_cache(repo: str, marker: str = "model_index.json") -> bool:
    """Whether the hub cache holds `repo` (judged by its `marker` file); a catalogue repo may also
    be a local folder in diffusers format."""
    from huggingface_hub import try_to_load_from_cache

    if Path(repo).is_dir():
        return (Path(repo) / marker).is_file()
    return isinstance(try_to_load_from_cache(repo, marker), str)


def module_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def pipeline_bytes(pipe: DiffusionPipeline) -> int:
    return sum(module_bytes(c) for c in pipe.components.values() if isinstance(c, torch.nn.Module))


def saved_model_class(config: str | Path) -> type[torch.nn.Module]:
    """The diffusers model class a saved model's config.json names; only diffusers' own model
    classes (no remote code)."""
    name = json.loads(Path(config).read_text()).get("_class_name", "")
    model_class = getattr(diffusers, name, None)
    if not (isinstance(model_class, type) and issubclass(model_class, diffusers.ModelMixin)):
        raise InvalidRequest(f"{config} names no diffusers model class ({name!r}).")
    return model_class


def load_control(
    spec: ModelSpec, control: ControlSpec, base: DiffusionPipeline, dtype: torch.dtype, offline_only: bool
) -> torch.nn.Module:
    """Read a ControlNet (or a control transformer) for a loaded model: from the hub, safetensors
    only, or for a built-in control its trained weights, else the small random one built from the
    base's transformer, saved once and read back through the same `from_pretrained`."""
    module_class = type(base.transformer) if control.component == "transformer" else None
    if control.builtin:
        builder = spec.family.controlnet_builder
        folder = offline.ensure_builtin(
            f"{spec.id}-controlnet-{control.name}",
            lambda target: builder(base.transformer, seed=zlib.crc32(control.name.encode())).save_pretrained(target),
            trained_dir=control.path,
            marker="config.json",
        )
        module_class = module_class or saved_model_class(folder / "config.json")
        return module_class.from_pretrained(folder, dtype=dtype, use_safetensors=True, local_files_only=True)
    kwargs = {"dtype": dtype, "use_safetensors": True, "local_files_only": offline_only}
    if control.subfolder:
        kwargs["subfolder"] = control.subfolder
    if control.variant:
        kwargs["variant"] = control.variant
    if module_class is None:
        from huggingface_hub import hf_hub_download

        local = Path(control.repo, control.config_file)
        module_class = saved_model_class(
            local
            if local.is_file()
            else hf_hub_download(control.repo, control.config_file, local_files_only=offline_only)
        )
    return module_class.from_pretrained(control.repo, **kwargs)


def load_pipeline(spec: ModelSpec, dtype: torch.dtype, offline_only: bool) -> DiffusionPipeline:
    """Read a model's weights into host memory (safetensors only, no remote code)."""
    pipeline_class = spec.family.pipeline_class(spec.pipeline, "t2i")
    if spec.builtin:
        source = offline.ensure_builtin(spec.builtin, spec.family.builtin_builders[spec.builtin], spec.path)
        pipe = pipeline_class.from_pretrained(source, dtype=dtype, use_safetensors=True, local_files_only=True)
    else:
        kwargs = {"dtype": dtype, "use_safetensors": True, "local_files_only": offline_only}
        if spec.variant:
            kwargs["variant"] = spec.variant
        pipe = pipeline_class.from_pretrained(spec.repo, **kwargs)
    if spec.layout_branch is not None:
        siamlayout.attach_layout_branches(pipe.transformer)
        if spec.layout_path is not None:
            siamlayout.load_layout_weights(pipe.transformer, spec.layout_path)
        elif spec.layout_repo:
            from huggingface_hub import snapshot_download

            folder = snapshot_download(
                spec.layout_repo,
                local_files_only=offline_only,
                allow_patterns=[spec.layout_file("*.safetensors*"), spec.layout_file("*.json")],
            )
            siamlayout.load_layout_weights(pipe.transformer, Path(folder, spec.layout_file("")))
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


@dataclass
class LoadedModel:
    spec: ModelSpec
    pipelines: dict[str, DiffusionPipeline]
    size_bytes: int
    on_device: bool = True
    users: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Held while a request runs on a model that has adapters: their activation is per model.
    run_lock: threading.Lock = field(default_factory=threading.Lock)
    adapters_loaded: set[str] = field(default_factory=set)
    # ControlNets loaded for this model (by name): they follow it to the host and back.
    controls: dict[str, torch.nn.Module] = field(default_factory=dict)


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


Loader = Callable[[ModelSpec, torch.dtype, bool], DiffusionPipeline]


class Registry:
    def __init__(
        self,
        catalogue: Catalogue,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        memory_budget_gb: float | None = None,
        offline_only: bool | None = None,
        loader: Loader = load_pipeline,
    ):
        self.catalogue = catalogue
        self.device = device
        self.dtype = dtype
        self.offline_only = hub_offline() if offline_only is None else offline_only
        total = device_memory_bytes(device)
        if memory_budget_gb is not None:
            self.budget_bytes = int(memory_budget_gb * GIB)
        else:
            self.budget_bytes = int(total * 0.9) if total else None
        self._loader = loader
        # LRU order: the first entry is the least recently used.
        self._loaded: OrderedDict[str, LoadedModel] = OrderedDict()
        self._state_lock = threading.RLock()
        # One model loads at a time: two requests for one model load it once, and two different
        # loads never race for the same device memory.
        self._load_lock = threading.Lock()
        # model id -> adapter name -> safetensors file; outlives evictions.
        self._adapters: dict[str, dict[str, Path]] = {}

    # --- What the UI shows ---------------------------------------------------------------------
    def state(self, model_id: str) -> ModelState:
        spec = self.catalogue.get(model_id)
        if model_id in self._loaded:
            return ModelState.LOADED
        if spec.builtin:
            return ModelState.BUILTIN
        layout_cached = spec.layout_repo is None or in_local_cache(spec.layout_repo, spec.layout_file("config.json"))
        if in_local_cache(spec.repo) and layout_cached:
            return ModelState.CACHED
        return ModelState.UNAVAILABLE if self.offline_only else ModelState.DOWNLOADABLE

    def control_state(self, model_id: str, name: str) -> ModelState:
        """Whether a model's ControlNet can load now (built-in, cached, downloadable, unavailable)."""
        control = self.catalogue.get(model_id).controlnet(name)
        model = self._loaded.get(model_id)
        if model is not None and name in model.controls:
            return ModelState.LOADED
        if control.builtin:
            return ModelState.BUILTIN
        if in_local_cache(control.repo, control.config_file):
            return ModelState.CACHED
        return ModelState.UNAVAILABLE if self.offline_only else ModelState.DOWNLOADABLE

    def loaded_ids(self) -> list[str]:
        """Loaded models, least recently used first."""
        with self._state_lock:
            return list(self._loaded)

    def used_bytes(self) -> int:
        with self._state_lock:
            return sum(m.size_bytes for m in self._loaded.values() if m.on_device)

    # --- Getting pipelines -----------------------------------------------------------------------
    @contextmanager
    def use(
        self, model_id: str, task: str = "t2i", adapters: Mapping[str, float] | None = None
    ) -> Iterator[DiffusionPipeline]:
        """A ready pipeline with exactly `adapters` (name -> scale) active; the model cannot be
        evicted while the block runs."""
        adapters = dict(adapters or {})
        registered = self._adapters.get(model_id, {})
        unknown = sorted(set(adapters) - set(registered))
        if unknown:
            raise InvalidRequest(f"No adapter {', '.join(unknown)} for {model_id}; add it first.")
        model = self._acquire(model_id)
        try:
            with model.run_lock if registered else nullcontext():
                if registered:
                    self._activate(model, adapters)
                yield self._variant(model, task)
        finally:
            with self._state_lock:
                model.users -= 1

    # --- LoRA adapters -----------------------------------------------------------------------------
    def add_adapter(self, model_id: str, name: str, path: str | Path) -> None:
        """Register a LoRA safetensors file for a model under `name` and load it now, so a file
        that does not fit the model is refused here, with a message."""
        spec = self.catalogue.get(model_id)
        if not hasattr(spec.family.pipeline_class(spec.pipeline, "t2i"), "load_lora_weights"):
            raise InvalidRequest(f"{spec.name}: diffusers has no LoRA loader for {spec.family.label} pipelines.")
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name or ""):
            raise InvalidRequest("Name the adapter with letters, digits, '-' or '_' (at most 64).")
        if name in self._adapters.get(model_id, {}):
            raise InvalidRequest(f"{model_id} already has an adapter named {name}.")
        path = Path(path)
        check_safetensors(path)
        self._adapters.setdefault(model_id, {})[name] = path
        try:
            with self.use(model_id):
                pass
        except StudioError:
            self._adapters[model_id].pop(name)
            raise

    def fetch_adapter(self, model_id: str, name: str, repo: str, file: str) -> None:
        """`add_adapter` for a LoRA on the hub (downloaded once into the hub cache)."""
        from huggingface_hub import hf_hub_download

        if not file.endswith(".safetensors"):
            raise InvalidRequest(f"{file}: only .safetensors LoRA files are accepted (pickles are never loaded).")
        try:
            path = hf_hub_download(repo, file)
        except Exception:
            raise InvalidRequest(
                f"Cannot fetch {file} from {repo}: check the names, or download it once with "
                f"`hf download {repo} {file}` where there is network."
            ) from None
        self.add_adapter(model_id, name, path)

    def import_adapter(self, model_id: str, name: str, upload: str | Path) -> None:
        """`add_adapter` for a file that may vanish (an upload): the studio keeps its own copy."""
        upload = Path(upload)
        check_safetensors(upload)
        kept = offline.studio_home() / "loras" / model_id / f"{name}.safetensors"
        if name in self._adapters.get(model_id, {}):
            raise InvalidRequest(f"{model_id} already has an adapter named {name}.")
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(upload, kept)
        self.add_adapter(model_id, name, kept)

    def replace_adapter(self, model_id: str, name: str, path: str | Path) -> None:
        """New weights for an adapter: swapped into the loaded layers in place when the shapes
        match (diffusers' hotswap: no new modules, a compiled transformer stays compiled), else
        unloaded and loaded again."""
        if name not in self._adapters.get(model_id, {}):
            raise InvalidRequest(f"No adapter {name} for {model_id}.")
        path = Path(path)
        check_safetensors(path)
        model = self._loaded.get(model_id)
        if model is not None and name in model.adapters_loaded:
            with model.run_lock:
                base = model.pipelines["t2i"]
                try:
                    base.load_lora_weights(str(path), adapter_name=name, hotswap=True)
                except Exception:  # other ranks or targets: a plain reload instead
                    base.delete_adapters(name)
                    model.adapters_loaded.discard(name)
        self._adapters[model_id][name] = path

    def remove_adapter(self, model_id: str, name: str) -> None:
        path = self._adapters.get(model_id, {}).pop(name, None)
        if path is None:
            raise InvalidRequest(f"No adapter {name} for {model_id}.")
        model = self._loaded.get(model_id)
        if model is not None and name in model.adapters_loaded:
            with model.run_lock:
                model.pipelines["t2i"].delete_adapters(name)
                model.adapters_loaded.discard(name)

    def adapters(self, model_id: str) -> list[str]:
        return list(self._adapters.get(model_id, {}))

    def _activate(self, model: LoadedModel, scales: Mapping[str, float]) -> None:
        base = model.pipelines["t2i"]
        for name, path in self._adapters.get(model.spec.id, {}).items():
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

    def pipeline(self, model_id: str, task: str = "t2i") -> DiffusionPipeline:
        with self.use(model_id, task) as pipe:
            return pipe

    def unload(self, model_id: str) -> None:
        with self._load_lock, self._state_lock:
            model = self._loaded.pop(model_id, None)
        if model is not None:
            model.pipelines.clear()
            release_memory()

    def _acquire(self, model_id: str) -> LoadedModel:
        spec = self.catalogue.get(model_id)
        with self._state_lock:
            model = self._loaded.get(model_id)
            if model is not None and model.on_device:
                self._loaded.move_to_end(model_id)
                model.users += 1
                return model
        with self._load_lock:
            with self._state_lock:
                model = self._loaded.get(model_id)
            if model is None:
                model = self._load(spec)
            elif not model.on_device:
                self._make_room(model.size_bytes, keep=model_id)
                self._to_device(model, self.device)
            with self._state_lock:
                self._loaded[model_id] = model
                self._loaded.move_to_end(model_id)
                model.users += 1
            return model

    def _load(self, spec: ModelSpec) -> LoadedModel:
        if self.state(spec.id) is ModelState.UNAVAILABLE:
            raise ModelUnavailable(
                f"{spec.name} is not in the local cache and the studio is offline; download it once with "
                f"{' and '.join(f'`hf download {repo}`' for repo in (spec.repo, spec.layout_repo) if repo)} "
                "on a machine with network, or start without --offline."
            )
        log.info("loading %s from %s", spec.id, spec.source)
        try:
            pipe = self._loader(spec, self.dtype, self.offline_only)
        except StudioError:
            raise
        except Exception as error:  # every load failure becomes one sentence, the registry untouched
            raise LoadFailed(explain_load_failure(spec, error)) from error
        pipe.set_progress_bar_config(disable=True)
        model = LoadedModel(spec, {"t2i": pipe}, pipeline_bytes(pipe))
        self._make_room(model.size_bytes, keep=spec.id)
        try:
            self._to_device(model, self.device)
        except Exception as error:
            model.pipelines.clear()
            release_memory()
            raise LoadFailed(explain_load_failure(spec, error)) from error
        return model

    def _to_device(self, model: LoadedModel, device: str) -> None:
        base = model.pipelines["t2i"]
        if device != "cpu" and self.budget_bytes is not None and model.size_bytes > self.budget_bytes:
            # Larger than the whole budget: keep it on the host and stream components in turn.
            base.enable_model_cpu_offload(device=device)
        else:
            base.to(device)
        for module in model.controls.values():
            module.to(device)
        model.on_device = True

    def _make_room(self, needed: int, keep: str) -> None:
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
        if self.device != "cpu" and self._host_has_room(model.size_bytes):
            model.pipelines["t2i"].to("cpu")
            for module in model.controls.values():
                module.to("cpu")
            model.on_device = False
            log.info("moved %s to host memory", model_id)
        else:
            del self._loaded[model_id]
            model.pipelines.clear()
            log.info("freed %s", model_id)
        release_memory()

    def _host_has_room(self, size: int) -> bool:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            return False
        return size < available * 0.8

    def _variant(self, model: LoadedModel, task: str) -> DiffusionPipeline:
        with model.lock:
            pipe = model.pipelines.get(task)
            if pipe is None:
                kind, _, control_name = task.partition(":")
                try:
                    variant_class = model.spec.family.pipeline_class(model.spec.pipeline, kind)
                except KeyError:
                    raise StudioError(
                        f"{model.spec.name} has no '{task}' mode; it offers {', '.join(model.spec.tasks)}."
                    ) from None
                components = {}
                if kind == "controlnet":
                    control = model.spec.controlnet(control_name)
                    if control.pipeline:
                        variant_class = getattr(diffusers, control.pipeline)
                    components[control.component] = self._control_model(model, control)
                pipe = variant_class.from_pipe(model.pipelines["t2i"], **components)
                pipe.set_progress_bar_config(disable=True)
                model.pipelines[task] = pipe
            return pipe

    def _control_model(self, model: LoadedModel, control: ControlSpec) -> torch.nn.Module:
        """A model's ControlNet, read once (safetensors only) and kept with the model."""
        if control.name in model.controls:
            return model.controls[control.name]
        if self.control_state(model.spec.id, control.name) is ModelState.UNAVAILABLE:
            raise ModelUnavailable(
                f"The {control.name} ControlNet ({control.repo}) is not in the local cache and the "
                f"studio is offline; download it once with `hf download {control.repo}`."
            )
        base = model.pipelines["t2i"]
        try:
            module = load_control(model.spec, control, base, self.dtype, self.offline_only)
        except StudioError:
            raise
        except Exception as error:
            raise LoadFailed(
                f"The {control.name} ControlNet for {model.spec.name} could not be loaded "
                f"({control.source}): {type(error).__name__}: {error}"
            ) from error
        # A ControlNet can be as large as its base (SD3.5-Large's: 8 GB): room is made for it as
        # for a model, other models' weights leaving the device first.
        self._make_room(module_bytes(module), keep=model.spec.id)
        module.to(base.transformer.device)
        with self._state_lock:
            model.controls[control.name] = module
            model.size_bytes += module_bytes(module)
        return module
