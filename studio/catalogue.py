"""The model catalogue (presets/models.toml) as typed entries."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from studio.errors import UnknownModel
from studio.families import Family, all_families

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CATALOGUE = PROJECT_ROOT / "presets" / "models.toml"
GUIDANCE_KINDS = ("cfg", "embedded", "true-cfg", "none")
MODES = ("standard", "one-step")


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
    call: dict[str, Any] = field(default_factory=dict)
    # CreatiLayout SiamLayout branches on an SD3 transformer: {repo, subfolder} of their weights,
    # {path} of a built-in's trained branches, or {} for fresh ones (zero-initialised fuse layers).
    layout_branch: dict[str, str] | None = None

    @property
    def layout_repo(self) -> str | None:
        return (self.layout_branch or {}).get("repo")

    @property
    def layout_path(self) -> Path | None:
        """A built-in's trained branches (absent: fresh ones)."""
        path = (self.layout_branch or {}).get("path")
        return PROJECT_ROOT / path if path else None

    def layout_file(self, name: str) -> str:
        """`name` inside the layout weights' subfolder, as a hub path."""
        subfolder = (self.layout_branch or {}).get("subfolder", "")
        return f"{subfolder}/{name}" if subfolder else name

    @property
    def accepts_negative_prompt(self) -> bool:
        return self.guidance in ("cfg", "true-cfg")

    @property
    def tasks(self) -> tuple[str, ...]:
        return self.family.tasks(self.pipeline)

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
            if "layout_branch" in entry and (family.name != "sd3" or set(entry["layout_branch"]) - {"repo", "subfolder", "path"}):
                raise ValueError(f"catalogue entry {entry['id']}: layout_branch is for SD3, with repo and subfolder, or path")
            if "path" in entry:
                entry["path"] = PROJECT_ROOT / entry["path"]
            specs.append(ModelSpec(family=family, **entry))
        return cls(specs)
