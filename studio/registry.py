"""The model registry: the front that joins the catalogue, loading, residency and adapters.

`registry.use(model_id, task)` hands out a ready pipeline. Task variants of one model are made with
`from_pipe`, so they share every component (no weight is loaded twice). The parts each have one
job: `studio.loading` reads weights (safetensors only), `studio.residency` keeps loaded models
under the memory budget with leases and LRU eviction, `studio.adapters` owns LoRA registrations.
Nothing here is family-specific: a family's own load steps are its `extensions`.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from pathlib import Path

import diffusers
import torch
from diffusers import DiffusionPipeline

from studio.adapters import Adapters
from studio.catalogue import Catalogue, ControlSpec, ModelSpec
from studio.device import device_memory_bytes
from studio.errors import InvalidRequest, LoadFailed, ModelUnavailable, StudioError
from studio.loading import (
    explain_load_failure,
    hub_offline,
    in_local_cache,
    load_control,
    load_pipeline,
    module_bytes,
    required_repos,
)
from studio.memory import AUTOMATIC, MemoryPlan, plan_for
from studio.residency import LoadedModel, ResidentModels

log = logging.getLogger(__name__)
GIB = 1024**3


class ModelState(enum.Enum):
    LOADED = "loaded"
    BUILTIN = "built-in"
    CACHED = "in local cache"
    DOWNLOADABLE = "downloads on first use"
    UNAVAILABLE = "unavailable offline"
    FAILED = "failed to load"
    NOT_OFFERED = "not offered by this studio"


# A model whose load failed (corrupt or missing files, no memory) is not tried again on every
# request for this long; its reason is given instead.
FAILURE_PAUSE_SECONDS = 300.0


class Registry:
    def __init__(
        self,
        catalogue: Catalogue,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        memory_budget_gb: float | None = None,
        offline_only: bool | None = None,
        loader=load_pipeline,
        offered: Collection[str] | None = None,
        memory_policy: str = AUTOMATIC,
    ):
        """`offered`: the only models this studio runs (a shared studio's allow-list); None: all.
        `memory_policy`: how every model is placed in memory (studio.memory), automatic by default."""
        self.catalogue = catalogue
        for model_id in offered or ():
            catalogue.get(model_id)  # an unknown id stops the studio with its sentence
        self.offered = None if offered is None else frozenset(offered)
        self.device = device
        self.dtype = dtype
        self.offline_only = hub_offline() if offline_only is None else offline_only
        total = device_memory_bytes(device)
        if memory_budget_gb is not None:
            budget: int | None = int(memory_budget_gb * GIB)
        else:
            # An accelerator's memory is the models'; the host's is shared with everything else,
            # so models may take half of it (and not every model a visitor picks, until it dies).
            budget = int(total * (0.9 if device.startswith("cuda") else 0.5)) if total else None
        self._loader = loader
        self.default_memory_policy = memory_policy
        # Policies chosen for particular models (model id -> policy name), over the default.
        self._memory_policies: dict[str, str] = {}
        self.models = ResidentModels(device, budget, self._read)
        self.adapter_files = Adapters()
        # model id -> (when its load failed, why)
        self._failures: dict[str, tuple[float, str]] = {}

    @property
    def budget_bytes(self) -> int | None:
        return self.models.budget_bytes

    # --- What the UI shows ---------------------------------------------------------------------
    def state(self, model_id: str) -> ModelState:
        spec = self.catalogue.get(model_id)
        if not self.offers(model_id):
            return ModelState.NOT_OFFERED
        if self.models.get(model_id) is not None:
            return ModelState.LOADED
        if self.failure(model_id) is not None:
            return ModelState.FAILED
        if spec.builtin:
            return ModelState.BUILTIN
        if all(in_local_cache(repo, marker) for repo, marker in required_repos(spec)):
            return ModelState.CACHED
        return ModelState.UNAVAILABLE if self.offline_only else ModelState.DOWNLOADABLE

    def control_state(self, model_id: str, name: str) -> ModelState:
        """Whether a model's ControlNet can load now (built-in, cached, downloadable, unavailable)."""
        control = self.catalogue.get(model_id).controlnet(name)
        model = self.models.get(model_id)
        if model is not None and name in model.controls:
            return ModelState.LOADED
        if control.builtin:
            return ModelState.BUILTIN
        if control.repo is not None and in_local_cache(control.repo, control.config_file):
            return ModelState.CACHED
        return ModelState.UNAVAILABLE if self.offline_only else ModelState.DOWNLOADABLE

    # --- Getting pipelines -----------------------------------------------------------------------
    @contextmanager
    def use(
        self, model_id: str, task: str = "t2i", adapters: Mapping[str, float] | None = None
    ) -> Iterator[DiffusionPipeline]:
        """A ready pipeline with exactly `adapters` (name -> scale) active; the model cannot be
        evicted while the block runs."""
        adapters = dict(adapters or {})
        spec = self.catalogue.get(model_id)
        if not self.offers(model_id):
            raise ModelUnavailable(f"{spec.name} is not offered by this studio; pick one of the models in the list.")
        self.adapter_files.check_request(model_id, adapters)
        with self.models.lease(spec) as model:
            has_adapters = self.adapter_files.has_any(model_id)
            with model.run_lock if has_adapters else nullcontext():
                if has_adapters:
                    self.adapter_files.activate(model, adapters)
                yield self._variant(model, task)

    def offers(self, model_id: str) -> bool:
        return self.offered is None or model_id in self.offered

    def failure(self, model_id: str) -> str | None:
        """Why the model's last load failed, while that is recent enough to trust."""
        failed = self._failures.get(model_id)
        if failed is None or time.monotonic() - failed[0] > FAILURE_PAUSE_SECONDS:
            return None
        return failed[1]

    # --- Memory plans ------------------------------------------------------------------------------
    def memory_policy(self, model_id: str) -> str:
        return self._memory_policies.get(model_id, self.default_memory_policy)

    def memory_plan(self, model_id: str) -> MemoryPlan:
        """How the model sits in memory: as loaded, or as its next load will place it (shown
        before the load). InvalidRequest when no plan fits the budget."""
        loaded = self.models.get(model_id)
        if loaded is not None:
            return loaded.plan
        return self._next_plan(self.catalogue.get(model_id))

    def set_memory_policy(self, model_id: str, policy: str) -> MemoryPlan:
        """Place a model by `policy` (or AUTOMATIC) from its next load on; a loaded, idle model is
        freed so its next use loads it so. InvalidRequest for a policy that cannot run here, or
        while a request runs on the model."""
        spec = self.catalogue.get(model_id)
        plan = plan_for(spec, self.device, self.dtype, self.budget_bytes, policy)
        loaded = self.models.get(model_id)
        if loaded is not None:
            if loaded.plan.policy.same_placements(plan.policy):
                loaded.plan = plan  # placed so already: it stays loaded
            elif not self.models.free(model_id):
                raise InvalidRequest(f"{spec.name} is running; change how it sits in memory when it is idle.")
        self._memory_policies[model_id] = policy
        return plan

    def _next_plan(self, spec: ModelSpec) -> MemoryPlan:
        return plan_for(spec, self.device, self.dtype, self.budget_bytes, self.memory_policy(spec.id))

    def _read(self, spec: ModelSpec) -> tuple[DiffusionPipeline, MemoryPlan]:
        reason = self.failure(spec.id)
        if reason is not None:
            raise LoadFailed(f"{reason} (not tried again for {FAILURE_PAUSE_SECONDS / 60:.0f} minutes)")
        try:
            return self._read_now(spec)
        except LoadFailed as error:
            self._failures[spec.id] = (time.monotonic(), str(error))
            raise

    def _read_now(self, spec: ModelSpec) -> tuple[DiffusionPipeline, MemoryPlan]:
        if self.state(spec.id) is ModelState.UNAVAILABLE:
            downloads = " and ".join(f"`hf download {repo}`" for repo, _ in required_repos(spec))
            raise ModelUnavailable(
                f"{spec.name} is not in the local cache and the studio is offline; download it once with "
                f"{downloads} on a machine with network, or start without --offline."
            )
        # Planned before anything downloads: a model that cannot fit is refused first.
        plan = self._next_plan(spec)
        log.info("loading %s from %s as %s", spec.id, spec.source, plan.describe())
        quantization = plan.quantization_config(self.device)
        try:
            if quantization is None:
                return self._loader(spec, self.dtype, self.offline_only), plan
            return self._loader(spec, self.dtype, self.offline_only, quantization_config=quantization), plan
        except StudioError:
            raise
        except Exception as error:  # every load failure becomes one sentence, the registry untouched
            raise LoadFailed(explain_load_failure(spec, error)) from error

    # --- LoRA adapters -----------------------------------------------------------------------------
    def add_adapter(self, model_id: str, name: str, path: str | Path) -> None:
        """Register a LoRA safetensors file for a model under `name` and load it now, so a file
        that does not fit the model is refused here, with a message."""
        self.adapter_files.check_new(self.catalogue.get(model_id), name)
        self.adapter_files.register(model_id, name, Path(path))
        try:
            with self.use(model_id):
                pass
        except StudioError:
            self.adapter_files.forget(model_id, name)
            raise

    def fetch_adapter(self, model_id: str, name: str, repo: str, file: str) -> None:
        """`add_adapter` for a LoRA on the hub (downloaded once into the hub cache)."""
        from huggingface_hub import hf_hub_download

        if not file.endswith(".safetensors"):
            raise InvalidRequest(f"{file}: only .safetensors LoRA files are accepted (pickles are never loaded).")
        self.adapter_files.check_new(self.catalogue.get(model_id), name)
        try:
            path = hf_hub_download(repo, file)
        except Exception:
            raise InvalidRequest(
                f"Cannot fetch {file} from {repo}: check the names, or download it once with "
                f"`hf download {repo} {file}` where there is network."
            ) from None
        self.add_adapter(model_id, name, path)

    def import_adapter(self, model_id: str, name: str, upload: str | Path) -> None:
        """`add_adapter` for a file that may vanish (an upload): the studio keeps its own copy.
        An upload under a name the model already has replaces that adapter's weights."""
        previous = self.adapter_files.file_of(model_id, name)
        kept = self.adapter_files.keep_copy(self.catalogue.get(model_id), name, Path(upload))
        try:
            if previous is None:
                self.add_adapter(model_id, name, kept)
            else:
                self.replace_adapter(model_id, name, kept)
        except StudioError:
            kept.unlink(missing_ok=True)
            raise
        if previous is not None and previous.parent == kept.parent:  # the studio's own earlier copy
            previous.unlink(missing_ok=True)

    def replace_adapter(self, model_id: str, name: str, path: str | Path) -> None:
        """New weights for an adapter, hot-swapped in place where the shapes match."""
        self.adapter_files.replace(self.models.get(model_id), model_id, name, Path(path))

    def remove_adapter(self, model_id: str, name: str) -> None:
        self.adapter_files.forget(model_id, name)
        self.adapter_files.unload(self.models.get(model_id), name)

    def adapters(self, model_id: str) -> list[str]:
        return self.adapter_files.names(model_id)

    # --- Task variants and ControlNets -------------------------------------------------------------
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
                pipe = variant_class.from_pipe(model.base, **components)
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
        try:
            module = load_control(model.spec, control, model.base, self.dtype, self.offline_only)
        except StudioError:
            raise
        except Exception as error:
            raise LoadFailed(
                f"The {control.name} ControlNet for {model.spec.name} could not be loaded "
                f"({control.source}): {type(error).__name__}: {error}"
            ) from error
        self.models.add_module(model, control.name, module, module_bytes(module))
        return module
