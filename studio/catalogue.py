"""The model catalogue (presets/models.toml) as typed entries."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from studio.errors import UnknownModel
from studio.families import Family, all_families

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CATALOGUE = PROJECT_ROOT / "presets" / "models.toml"
GUIDANCE_KINDS = ("cfg", "embedded", "true-cfg", "none")
MODES = ("standard", "one-step")
# The step ceiling of a standard (not distilled) model; one-step entries name their own.
STANDARD_MAX_STEPS = 100
# What a ControlNet reads, and so which preprocessor makes its control image.
CONTROL_KINDS = ("canny", "softedge", "scribble", "depth", "pose", "tile")


@dataclass(frozen=True)
class ControlSpec:
    """A ControlNet for one catalogue model: a diffusers-format safetensors model on the hub
    (`repo`, optional `subfolder` and `variant`) or a built-in one (random weights, built from
    the base model's transformer). `component` says which pipeline component it is: a ControlNet
    beside the transformer, or (BFL's FLUX.1 Canny/Depth) a whole control transformer that
    replaces it."""

    name: str
    kind: str
    repo: str | None = None
    subfolder: str | None = None
    variant: str | None = None
    builtin: bool = False
    # A built-in's trained weights (a saved diffusers model), replacing the random ones.
    path: Path | None = None
    component: str = "controlnet"
    # The diffusers pipeline class; None: the family's ControlNet pipeline.
    pipeline: str | None = None
    # Extra keyword arguments for the pipeline call (a Union ControlNet's control_mode).
    call: dict[str, Any] = field(default_factory=dict)

    @property
    def task(self) -> str:
        return f"controlnet:{self.name}"

    @property
    def config_file(self) -> str:
        """Its config.json inside the repo."""
        return f"{self.subfolder}/config.json" if self.subfolder else "config.json"

    @property
    def random_weights(self) -> bool:
        """A built-in without trained weights: it runs the code path and draws noise."""
        return self.builtin and not (self.path is not None and (self.path / "config.json").is_file())

    @property
    def source(self) -> str:
        return self.repo or ("built-in (random weights)" if self.random_weights else "built-in (trained)")


@dataclass(frozen=True)
class ModelSpec:
    id: str
    name: str
    family: Family
    pipeline: str
    mode: str
    guidance: str
    steps: int
    guidance_scale: float
    width: int
    height: int
    size_multiple: int
    max_sequence_length: int | None
    gated: bool
    memory_gb: float
    licence: str
    repo: str | None = None
    variant: str | None = None
    builtin: str | None = None
    path: Path | None = None
    max_steps: int = STANDARD_MAX_STEPS
    call: dict[str, Any] = field(default_factory=dict)
    # Call arguments for particular step counts (step count -> arguments), over `call`.
    call_by_steps: dict[int, dict[str, Any]] = field(default_factory=dict)
    # CreatiLayout SiamLayout branches on an SD3 transformer: {repo, subfolder} of their weights,
    # {path} of a built-in's trained branches, or {} for fresh ones (zero-initialised fuse layers).
    layout_branch: dict[str, Any] | None = None
    controlnets: tuple[ControlSpec, ...] = ()

    @property
    def random_weights(self) -> bool:
        """A built-in without trained weights: it runs the code path and draws noise."""
        return self.builtin is not None and not (self.path is not None and (self.path / "model_index.json").is_file())

    @property
    def layout_repo(self) -> str | None:
        return (self.layout_branch or {}).get("repo")

    @property
    def layout_path(self) -> Path | None:
        """The folder of a built-in's trained branches."""
        path = (self.layout_branch or {}).get("path")
        return PROJECT_ROOT / path if path else None

    @property
    def layout_grounding(self) -> float:
        """The share of the steps the layout branches act in by default (the paper's 30%)."""
        return float((self.layout_branch or {}).get("grounding_fraction", 0.3))

    def layout_file(self, name: str) -> str:
        """`name` inside the layout weights' subfolder, as a hub path."""
        subfolder = (self.layout_branch or {}).get("subfolder", "")
        return f"{subfolder}/{name}" if subfolder else name

    def controlnet(self, name: str) -> ControlSpec:
        for control in self.controlnets:
            if control.name == name:
                return control
        raise UnknownModel(
            f"{self.name} has no ControlNet '{name}'"
            + (f"; it has {', '.join(c.name for c in self.controlnets)}." if self.controlnets else ".")
        )

    def call_for(self, steps: int) -> dict[str, Any]:
        """The extra call arguments at `steps` steps. An argument the catalogue gives only for
        some step counts is passed as None at the others: a pipeline may default it to a value
        it then refuses there (SanaSprintPipeline's intermediate_timesteps, valid at 2 steps)."""
        unset = {name: None for arguments in self.call_by_steps.values() for name in arguments}
        return {**unset, **self.call, **self.call_by_steps.get(steps, {})}

    @property
    def text_length(self) -> int:
        """The text sequence length the transformer is called with: the catalogue's, else CLIP's 77."""
        return self.max_sequence_length or 77

    @property
    def accepts_negative_prompt(self) -> bool:
        return self.guidance in ("cfg", "true-cfg")

    @property
    def tasks(self) -> tuple[str, ...]:
        return self.family.tasks(self.pipeline) + tuple(control.task for control in self.controlnets)

    @property
    def source(self) -> str:
        return self.repo or f"built-in {self.builtin}"


class Catalogue:
    def __init__(self, specs: list[ModelSpec]):
        self._specs = {spec.id: spec for spec in specs}
        if len(self._specs) != len(specs):
            raise ValueError("duplicate model ids in the catalogue")

    def __iter__(self):
        return iter(self._specs.values())

    def __len__(self) -> int:
        return len(self._specs)

    def __contains__(self, model_id: str) -> bool:
        return model_id in self._specs

    def get(self, model_id: str) -> ModelSpec:
        try:
            return self._specs[model_id]
        except KeyError:
            raise UnknownModel(f"There is no model '{model_id}' in the catalogue.") from None

    @classmethod
    def load(cls, path: Path = DEFAULT_CATALOGUE) -> Catalogue:
        families = all_families()
        with open(path, "rb") as handle:
            entries = tomllib.load(handle)["model"]
        specs = []
        for entry in entries:
            entry = dict(entry)
            family = families[entry.pop("family")]
            if entry["guidance"] not in GUIDANCE_KINDS or entry["mode"] not in MODES:
                raise ValueError(f"catalogue entry {entry['id']}: unknown guidance or mode")
            if ("repo" in entry) == ("builtin" in entry):
                raise ValueError(f"catalogue entry {entry['id']}: give exactly one of repo and builtin")
            if "builtin" in entry and entry["builtin"] not in family.builtin_builders:
                raise ValueError(f"catalogue entry {entry['id']}: unknown built-in {entry['builtin']}")
            layout_keys = {"repo", "subfolder", "path", "grounding_fraction"}
            if "layout_branch" in entry and (family.name != "sd3" or set(entry["layout_branch"]) - layout_keys):
                raise ValueError(
                    f"catalogue entry {entry['id']}: layout_branch is for SD3, with repo and "
                    "subfolder, or path (and grounding_fraction)"
                )
            if "path" in entry:
                entry["path"] = PROJECT_ROOT / entry["path"]
            entry["call_by_steps"] = step_table(entry)
            entry["controlnets"] = tuple(
                parse_controlnet(entry["id"], family, control) for control in entry.get("controlnets", ())
            )
            if len({control.name for control in entry["controlnets"]}) != len(entry["controlnets"]):
                raise ValueError(f"catalogue entry {entry['id']}: two ControlNets share a name")
            specs.append(ModelSpec(family=family, **entry))
        return cls(specs)


def step_table(entry: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """An entry's call_by_steps with step counts as numbers, after checking its step fields. A
    one-step entry must name its max_steps: the standard ceiling would offer a distilled model
    step counts it was never trained for."""
    if entry["mode"] == "one-step" and "max_steps" not in entry:
        raise ValueError(f"catalogue entry {entry['id']}: a one-step model names its max_steps")
    max_steps = entry.get("max_steps", STANDARD_MAX_STEPS)
    if not 1 <= entry["steps"] <= max_steps:
        raise ValueError(f"catalogue entry {entry['id']}: steps must be between 1 and max_steps ({max_steps})")
    table = entry.get("call_by_steps", {})
    if not all(key.isdigit() and 1 <= int(key) <= max_steps for key in table):
        raise ValueError(f"catalogue entry {entry['id']}: call_by_steps is keyed by step counts from 1 to {max_steps}")
    return {int(key): arguments for key, arguments in table.items()}


def parse_controlnet(model_id: str, family: Family, entry: dict[str, Any]) -> ControlSpec:
    entry = dict(entry)
    entry.setdefault("name", entry.get("kind"))
    if entry.get("kind") not in CONTROL_KINDS:
        raise ValueError(f"catalogue entry {model_id}: ControlNet kind must be one of {', '.join(CONTROL_KINDS)}")
    if ("repo" in entry) == bool(entry.get("builtin")):
        raise ValueError(f"catalogue entry {model_id}: a ControlNet has a repo or is built-in")
    if "path" in entry:
        if not entry.get("builtin"):
            raise ValueError(f"catalogue entry {model_id}: a ControlNet path names a built-in's trained weights")
        entry["path"] = PROJECT_ROOT / entry["path"]
    if entry.get("pipeline") is None and family.controlnet_pipeline is None:
        raise ValueError(f"catalogue entry {model_id}: {family.label} has no ControlNet pipeline in diffusers")
    return ControlSpec(**entry)
