"""Examples and other presets kept as data under presets/; a broken entry is refused with one
sentence naming the file, the entry and the field."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from studio.catalogue import PROJECT_ROOT, CatalogueError

PRESETS_DIR = PROJECT_ROOT / "presets"
EXAMPLES = PRESETS_DIR / "examples.toml"


def read_examples(tab: str, path: Path = EXAMPLES) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle).get(tab, {})
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise CatalogueError(f"{path.name}: cannot be read as TOML: {error}") from None


def example_prompts(tab: str, path: Path = EXAMPLES) -> list[str]:
    prompts = read_examples(tab, path).get("prompts", [])
    if not all(isinstance(prompt, str) for prompt in prompts):
        raise CatalogueError(f"{path.name}: [{tab}], field 'prompts': a list of texts")
    return list(prompts)


def example_rows(tab: str, fields: list[str], path: Path = EXAMPLES) -> list[list]:
    """The tab's structured examples as rows of the given fields."""
    rows = []
    for number, row in enumerate(read_examples(tab, path).get("examples", []), start=1):
        missing = [name for name in fields if name not in row]
        if missing:
            raise CatalogueError(f"{path.name}: [{tab}] example {number}, field '{missing[0]}': missing")
        rows.append([row[name] for name in fields])
    return rows


def layout_examples(path: Path = EXAMPLES) -> list[dict]:
    """Layout scenes: {"caption": str, "regions": [{"caption": str, "box": [x1, y1, x2, y2]}]}."""
    scenes = example_rows("layout", ["caption", "regions"], path)
    for number, (_, regions) in enumerate(scenes, start=1):
        for region in regions:
            box = region.get("box", [])
            if "caption" not in region or len(box) != 4:
                raise CatalogueError(
                    f"{path.name}: [layout] example {number}, field 'regions': each has a caption and a box of four"
                )
    return [{"caption": caption, "regions": regions} for caption, regions in scenes]
