"""The model catalogue (presets/models.toml) as typed entries."""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from studio.errors import UnknownModel
from studio.families import Family, FlowConvention, all_families

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CATALOGUE = PROJECT_ROOT / "presets" / "models.toml"
GUIDANCE_KINDS = ("cfg", "embedded", "true-cfg", "none")
MODES = ("standard", "one-step")
# What a model makes: images from text, videos, or fills a masked image (FLUX Fill: the try-on).
KINDS = ("image", "video", "fill")
# Where each kind is used, for the one sentence that sends a model to its tab.
KIND_USES = {
    "image": "makes images from text: use it in Text to image",
    "video": "makes videos: use it in the Multi-prompt video tab",
    "fill": "fills a masked image: use it in the Virtual try-on tab",
}
# The step ceiling of a standard (not distilled) model; one-step entries name their own.
STANDARD_MAX_STEPS = 100
# What a ControlNet reads, and so which preprocessor makes its control image.
CONTROL_KINDS = ("canny", "softedge", "scribble", "depth", "pose", "tile")
# The registry task of a model's ControlNet: this prefix and the ControlNet's name.
CONTROLNET_TASK = "controlnet:"


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
        return f"{CONTROLNET_TASK}{self.name}"

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
    controlnets: tuple[ControlSpec, ...] = ()
    # What the family attaches after loading, by catalogue table (see families.Extension).
    extensions: dict[str, Any] = field(default_factory=dict)
    # "image" or "video"; a video model gives its default frame count and frame rate.
    kind: str = "image"
    frames: int = 0
    fps: int = 0
    # Each pipeline component's parameter count in billions (a property of the architecture), so
    # the memory plan is known before anything downloads; {} for the small built-ins.
    parameters: dict[str, float] = field(default_factory=dict)

    @property
    def random_weights(self) -> bool:
        """A built-in without trained weights: it runs the code path and draws noise."""
        return self.builtin is not None and not (self.path is not None and (self.path / "model_index.json").is_file())

    @property
    def flow(self) -> FlowConvention | None:
        """How the studio calls the model as a rectified flow (inversion, ColorCtrl, drag, layout,
        previews): the family's convention, unless the model's own pipeline samples another way (a
        TrigFlow student distilled as SANA-Sprint)."""
        pipeline = self.family.pipeline_class(self.pipeline, "t2i")
        return self.family.flow if getattr(pipeline, "rectified_flow", True) else None

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
        try:
            with open(path, "rb") as handle:
                entries = tomllib.load(handle).get("model", [])
        except (OSError, tomllib.TOMLDecodeError) as error:
            raise CatalogueError(f"{path.name}: cannot be read as TOML: {error}") from None
        specs = [parse_model(path, index, entry, families) for index, entry in enumerate(entries)]
        seen: set[str] = set()
        for spec in specs:
            if spec.id in seen:
                raise CatalogueError(f"{path.name}: model '{spec.id}', field 'id': another entry has this id")
            seen.add(spec.id)
        return cls(specs)


class CatalogueError(ValueError):
    """A catalogue or preset entry that cannot be used, named by file, entry and field."""


# The type a catalogue field's TOML value must have (None: any table or list, checked elsewhere).
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "str | None": (str,),
    "int | None": (int,),
    "Path | None": (str,),
}


def parse_model(path: Path, index: int, entry: dict[str, Any], families: dict[str, Family]) -> ModelSpec:
    """One [[model]] table as a ModelSpec, or CatalogueError naming the file, entry and field."""
    entry = dict(entry)
    model_id = str(entry.get("id") or f"#{index + 1}")

    def problem(field_name: str, text: str) -> CatalogueError:
        return CatalogueError(f"{path.name}: model '{model_id}', field '{field_name}': {text}")

    family_name = entry.pop("family", None)
    if family_name not in families:
        raise problem("family", f"{family_name!r} is not a family (there are {', '.join(families)})")
    family = families[family_name]
    spec_fields = {f.name: f for f in dataclasses.fields(ModelSpec)}
    extension_fields = {extension.field: extension for extension in family.extensions}
    for name, value in entry.items():
        if name in extension_fields:
            continue
        if name not in spec_fields or name in ("family", "extensions"):
            raise problem(name, "is not a catalogue field for this family")
        expected = _FIELD_TYPES.get(str(spec_fields[name].type))
        if expected is not None and (not isinstance(value, expected) or isinstance(value, bool) != (bool in expected)):
            raise problem(name, f"{value!r} should be {str(spec_fields[name].type).replace(' | None', '')}")
    required = [
        name
        for name, f in spec_fields.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and name != "family"
    ]
    for name in required:
        if name not in entry:
            raise problem(name, "is missing")
    if entry["guidance"] not in GUIDANCE_KINDS:
        raise problem("guidance", f"must be one of {', '.join(GUIDANCE_KINDS)}")
    if entry["mode"] not in MODES:
        raise problem("mode", f"must be one of {', '.join(MODES)}")
    kind = entry.get("kind", "image")
    if kind not in KINDS:
        raise problem("kind", f"must be one of {', '.join(KINDS)}")
    if (kind == "video") != (family.video is not None):
        raise problem("kind", f"{family.label} makes {'videos' if family.video else 'images'}")
    if (kind == "fill") != entry["pipeline"].endswith("FillPipeline"):
        raise problem("kind", "a Fill pipeline is kind 'fill', and only a Fill pipeline")
    if kind == "video" and not all(entry.get(name, 0) > 0 for name in ("frames", "fps")):
        raise problem("frames" if entry.get("frames", 0) <= 0 else "fps", "a video model gives its frames and fps")
    if ("repo" in entry) == ("builtin" in entry):
        raise problem("repo", "give exactly one of repo and builtin")
    parameters = entry.get("parameters", {})
    if not isinstance(parameters, dict) or not all(
        isinstance(count, (int, float)) and not isinstance(count, bool) and count > 0 for count in parameters.values()
    ):
        raise problem("parameters", "a table of component = billions of parameters (a positive number)")
    if parameters and "transformer" not in parameters:
        raise problem("parameters", "names the transformer's count among the components")
    if "builtin" in entry and entry["builtin"] not in family.builtin_builders:
        raise problem("builtin", f"{family.label} has no built-in {entry['builtin']!r}")
    extensions = {}
    for name, extension in extension_fields.items():
        if name in entry:
            try:
                extensions[name] = extension.parse(entry.pop(name), PROJECT_ROOT)
            except ValueError as error:
                raise problem(name, str(error)) from None
    if "path" in entry:
        entry["path"] = PROJECT_ROOT / entry["path"]
    try:
        entry["call_by_steps"] = step_table(entry)
        controls = tuple(parse_controlnet(family, control) for control in entry.get("controlnets", ()))
    except ValueError as error:
        field_name, _, text = str(error).partition(": ")
        raise problem(field_name, text) from None
    if len({control.name for control in controls}) != len(controls):
        raise problem("controlnets", "two ControlNets share a name")
    entry["controlnets"] = controls
    return ModelSpec(family=family, extensions=extensions, **entry)


def step_table(entry: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """An entry's call_by_steps with step counts as numbers, after checking its step fields. A
    one-step entry must name its max_steps: the standard ceiling would offer a distilled model
    step counts it was never trained for. Errors read "field: problem"."""
    if entry["mode"] == "one-step" and "max_steps" not in entry:
        raise ValueError("max_steps: a one-step model names its max_steps")
    max_steps = entry.get("max_steps", STANDARD_MAX_STEPS)
    if not 1 <= entry["steps"] <= max_steps:
        raise ValueError(f"steps: must be between 1 and max_steps ({max_steps})")
    table = entry.get("call_by_steps", {})
    if not all(key.isdigit() and 1 <= int(key) <= max_steps for key in table):
        raise ValueError(f"call_by_steps: keyed by step counts from 1 to {max_steps}")
    return {int(key): arguments for key, arguments in table.items()}


def parse_controlnet(family: Family, entry: dict[str, Any]) -> ControlSpec:
    """One ControlNet table; errors read "controlnets: problem"."""
    entry = dict(entry)
    entry.setdefault("name", entry.get("kind"))
    known = {f.name for f in dataclasses.fields(ControlSpec)}
    if set(entry) - known:
        raise ValueError(f"controlnets: {', '.join(sorted(set(entry) - known))} is not a ControlNet field")
    if entry.get("kind") not in CONTROL_KINDS:
        raise ValueError(f"controlnets: kind must be one of {', '.join(CONTROL_KINDS)}")
    if ("repo" in entry) == bool(entry.get("builtin")):
        raise ValueError("controlnets: a ControlNet has a repo or is built-in")
    if "path" in entry:
        if not entry.get("builtin"):
            raise ValueError("controlnets: a ControlNet path names a built-in's trained weights")
        entry["path"] = PROJECT_ROOT / entry["path"]
    if entry.get("pipeline") is None and family.controlnet_pipeline is None:
        raise ValueError(f"controlnets: {family.label} has no ControlNet pipeline in diffusers")
    return ControlSpec(**entry)
