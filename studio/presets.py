"""Examples and other presets kept as data under presets/."""

from __future__ import annotations

import tomllib

from studio.catalogue import PROJECT_ROOT

PRESETS_DIR = PROJECT_ROOT / "presets"


def example_prompts(tab: str) -> list[str]:
    with open(PRESETS_DIR / "examples.toml", "rb") as handle:
        return list(tomllib.load(handle).get(tab, {}).get("prompts", []))


def example_rows(tab: str, fields: list[str]) -> list[list]:
    """The tab's structured examples as rows of the given fields."""
    with open(PRESETS_DIR / "examples.toml", "rb") as handle:
        return [[row[name] for name in fields] for row in tomllib.load(handle).get(tab, {}).get("examples", [])]


def layout_examples() -> list[dict]:
    """Layout scenes: {"caption": str, "regions": [{"caption": str, "box": [x1, y1, x2, y2]}]}."""
    with open(PRESETS_DIR / "examples.toml", "rb") as handle:
        return list(tomllib.load(handle).get("layout", {}).get("examples", []))
