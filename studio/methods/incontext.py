"""In-context image sets (In-Context LoRA, ChatDiT): several panels made as one image on a grid.

Grid geometry, composing panels into a grid and splitting it back, panel tags, the sets'
prompts, group generation (one prompt for the whole set, then split) and conditioned generation
(reference panels pasted into their cells, the other cells generated; the references come back
pixel for pixel). Conditioned generation runs one of two ways: "inpaint", as the In-Context LoRA
paper conditions its sets (SDEdit-style inpainting on the model's own components: the reference
cells re-noised to each step's level, so the model sees them only as clearly as the panels it is
drawing), or "held", for a LoRA trained to read reference cells clean (the reference cells' latents
held clean at every step while the other cells are denoised; `train_incontext --held-references`).
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
import tomllib
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from studio import flow
from studio.catalogue import PROJECT_ROOT, ModelSpec
from studio.errors import InvalidRequest
from studio.generation import GenerationSettings, call_arguments, snap, validate
from studio.params import SamplingSettings, StepCallback, StepReporter, redefault
from studio.registry import Registry
from studio.runner import Method, register

SETS_FILE = PROJECT_ROOT / "presets" / "ic_lora_sets.toml"
MAX_PANELS = 12
REFERENCE_MODES = {
    "inpaint": "reference cells re-noised at every step (In-Context LoRA's SDEdit conditioning)",
    "held": "reference cells held clean at every step (for LoRAs trained with held references)",
}
GREY = 127  # the value unknown cells start from, as In-Context LoRA's conditioned sets use


@dataclass(frozen=True)
class ImageSet:
    id: str
    label: str
    repo: str
    file: str
    width: int
    height: int
    rows: int
    columns: int
    intro: str
    tags: tuple[str, ...]
    caption: str
    panels: tuple[str, ...]
    # The catalogue model its LoRA was trained on; "" for FLUX.1-dev (the paper's LoRAs, which run
    # on hub FLUX models of that architecture).
    model: str = ""
    # How reference panels condition the set when its LoRA is on (a key of REFERENCE_MODES).
    references: str = "inpaint"

    def lora_fits(self, spec: ModelSpec) -> bool:
        return spec.id == self.model if self.model else not spec.builtin

    @property
    def adapter_name(self) -> str:
        """Sets sharing one local LoRA file share one adapter (named after the file)."""
        return self.id if self.repo else Path(self.file).stem

    @property
    def count(self) -> int:
        return self.rows * self.columns

    def prompt(self, caption: str, panels: Sequence[str]) -> str:
        """The tagged prompt: intro, overall caption, then each panel's tag and text."""
        parts = [self.intro.strip(), caption.strip()]
        parts += [f"{tag} {text.strip()}" for tag, text in zip(self.tags, panels) if text and text.strip()]
        return " ".join(part for part in parts if part)


def set_canvas(image_set: ImageSet, spec: ModelSpec) -> tuple[int, int]:
    """The set's canvas for a hub model; for a built-in one, the set's shape at about the model's
    own size per panel (a 2048-pixel canvas would take minutes on a CPU)."""
    if not spec.builtin:
        return image_set.width, image_set.height
    scale = math.sqrt(spec.width * spec.height * image_set.count / (image_set.width * image_set.height))
    return (
        snap(image_set.width * scale / image_set.columns, spec.size_multiple) * image_set.columns,
        snap(image_set.height * scale / image_set.rows, spec.size_multiple) * image_set.rows,
    )


def set_lora(registry: Registry, image_set: ImageSet, spec: ModelSpec) -> tuple[tuple[str, float], ...]:
    """The set's LoRA as the adapters of a request: fetched once from the hub (`repo` + `file`), or
    a local file (`repo` empty; relative to the project, or a path of the user's). None where the
    LoRA was not made for the model."""
    if not image_set.lora_fits(spec):
        return ()
    name = image_set.adapter_name
    if name not in registry.adapters(spec.id):
        if image_set.repo:
            registry.fetch_adapter(spec.id, name, image_set.repo, image_set.file)
        else:
            registry.add_adapter(spec.id, name, PROJECT_ROOT / Path(image_set.file).expanduser())
    return ((name, SET_DEFAULTS.lora_scale),)


@dataclass(frozen=True)
class SetDefaults:
    """The sets file's [defaults]: In-Context LoRA's recommended sampling."""

    steps: int = 20
    guidance: float = 3.5
    lora_scale: float = 1.0
    base_model: str = "flux-dev"


def read_sets_file(path: Path) -> dict:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise InvalidRequest(f"{path.name}: cannot be read as TOML: {error}") from None


def load_set_defaults(path: Path = SETS_FILE) -> SetDefaults:
    table = read_sets_file(path).get("defaults", {})
    known = {f.name for f in dataclasses.fields(SetDefaults)}
    for name in table:
        if name not in known:
            raise InvalidRequest(
                f"{path.name}: [defaults], field '{name}': not a default (there are {', '.join(sorted(known))})."
            )
    return SetDefaults(**table)


def load_sets(path: Path = SETS_FILE) -> dict[str, ImageSet]:
    """The sets in a presets file, each checked; InvalidRequest names the file, set and problem."""
    sets = {}
    fields_needed = {f.name for f in dataclasses.fields(ImageSet)}
    for index, entry in enumerate(read_sets_file(path).get("set", [])):
        name = entry.get("id", f"#{index + 1}")
        unknown, missing = set(entry) - fields_needed, fields_needed - set(entry) - {"model", "references"}
        if unknown or missing:
            field_name = sorted(unknown or missing)[0]
            raise InvalidRequest(
                f"{path.name}: set '{name}', field '{field_name}': {'unknown' if unknown else 'missing'}."
            )
        image_set = ImageSet(**{**entry, "tags": tuple(entry["tags"]), "panels": tuple(entry["panels"])})
        try:
            check_set(image_set)
        except InvalidRequest as error:
            raise InvalidRequest(f"{path.name}: {error}") from None
        sets[image_set.id] = image_set
    return sets


SET_DEFAULTS = load_set_defaults()


def check_set(image_set: ImageSet) -> None:
    name = image_set.id
    if image_set.width % 16 or image_set.height % 16:
        raise InvalidRequest(f"Set {name}: width and height must be multiples of 16.")
    if not 1 <= image_set.count <= MAX_PANELS:
        raise InvalidRequest(f"Set {name}: 1 to {MAX_PANELS} panels.")
    if image_set.width % image_set.columns or image_set.height % image_set.rows:
        raise InvalidRequest(f"Set {name}: the canvas does not divide into {image_set.rows}x{image_set.columns} cells.")
    if len(image_set.tags) != image_set.count or len(image_set.panels) != image_set.count:
        raise InvalidRequest(f"Set {name}: one tag and one example text per panel ({image_set.count}).")
    if len(set(image_set.tags)) != len(image_set.tags):
        raise InvalidRequest(f"Set {name}: panel tags must differ.")
    if image_set.references not in REFERENCE_MODES:
        raise InvalidRequest(f"Set {name}: references must be one of {', '.join(REFERENCE_MODES)}.")


def grid_shape(panels: int) -> tuple[int, int]:
    """Rows and columns closest to square holding `panels` (wider than tall when not square)."""
    if not 1 <= panels <= MAX_PANELS:
        raise InvalidRequest(f"Between 1 and {MAX_PANELS} panels.")
    columns = math.ceil(math.sqrt(panels))
    return math.ceil(panels / columns), columns


def panel_tags(rows: int, columns: int) -> list[str]:
    """The tag of each panel, row by row: [LEFT]/[RIGHT], [TOP]/[BOTTOM], [TOP-LEFT]... on 2x2,
    [PANEL-i] otherwise."""
    if (rows, columns) == (1, 2):
        return ["[LEFT]", "[RIGHT]"]
    if (rows, columns) == (2, 1):
        return ["[TOP]", "[BOTTOM]"]
    if (rows, columns) == (2, 2):
        return ["[TOP-LEFT]", "[TOP-RIGHT]", "[BOTTOM-LEFT]", "[BOTTOM-RIGHT]"]
    return [f"[PANEL-{index}]" for index in range(1, rows * columns + 1)]


def cell_size(width: int, height: int, rows: int, columns: int, multiple: int) -> tuple[int, int]:
    """A cell's size for a canvas of about width x height, snapped so the grid is a multiple."""
    return snap(width / columns, multiple), snap(height / rows, multiple)


def compose(panels: Sequence[Image.Image], rows: int, columns: int) -> Image.Image:
    """Panels (all one size) into a grid, row by row; missing cells stay grey."""
    width, height = panels[0].size
    if any(panel.size != (width, height) for panel in panels):
        raise InvalidRequest("All panels must have the same size.")
    if len(panels) > rows * columns:
        raise InvalidRequest(f"{len(panels)} panels do not fit a {rows}x{columns} grid.")
    grid = Image.new("RGB", (columns * width, rows * height), (GREY,) * 3)
    for index, panel in enumerate(panels):
        grid.paste(panel.convert("RGB"), ((index % columns) * width, (index // columns) * height))
    return grid


def split(grid: Image.Image, rows: int, columns: int) -> list[Image.Image]:
    width, height = grid.width // columns, grid.height // rows
    return [
        grid.crop((column * width, row * height, (column + 1) * width, (row + 1) * height))
        for row in range(rows)
        for column in range(columns)
    ]


def cells_mask(rows: int, columns: int, cell: tuple[int, int], generated: Sequence[int]) -> Image.Image:
    """The inpainting mask: white (255) on the cells to generate, black on the references."""
    width, height = cell
    mask = np.zeros((rows * height, columns * width), dtype=np.uint8)
    for index in generated:
        row, column = divmod(index, columns)
        mask[row * height : (row + 1) * height, column * width : (column + 1) * width] = 255
    return Image.fromarray(mask, mode="L")


def cells_latent_mask(rows: int, columns: int, height: int, width: int, cells: Sequence[int]) -> torch.Tensor:
    """[height, width] booleans over a grid's latents, True inside the given cells."""
    mask = torch.zeros(height, width, dtype=torch.bool)
    cell_height, cell_width = height // rows, width // columns
    for index in cells:
        row, column = divmod(index, columns)
        mask[row * cell_height : (row + 1) * cell_height, column * cell_width : (column + 1) * cell_width] = True
    return mask


@dataclass(frozen=True, kw_only=True)
class SetRequest(SamplingSettings):
    """A set of panels; width and height are the whole grid's."""

    prompt: str
    rows: int
    columns: int
    steps: int = redefault("steps", SET_DEFAULTS.steps)
    guidance: float = redefault("guidance", SET_DEFAULTS.guidance)
    adapters: tuple[tuple[str, float], ...] = ()
    references: dict[int, Image.Image] = field(default_factory=dict)  # panel index -> image
    reference_mode: str = "inpaint"  # a key of REFERENCE_MODES

    def to_dict(self) -> dict:
        return {key: value for key, value in asdict(self).items() if key != "references"} | {
            "reference_panels": sorted(self.references)
        }


@dataclass
class ImageSetResult:
    image: Image.Image
    panels: list[Image.Image]
    mask: Image.Image | None  # the cells generated, when there were references
    request: SetRequest
    seconds: float


def generate_set(
    registry: Registry,
    request: SetRequest,
    on_step: StepCallback | None = None,
    cancel: threading.Event | None = None,
) -> ImageSetResult:
    """The whole set as one image, split into panels. With references, only the other cells
    are generated (inpainting on the model's own components) and the references are pasted back."""
    spec = registry.catalogue.get(request.model)
    count = request.rows * request.columns
    if not 1 <= count <= MAX_PANELS:
        raise InvalidRequest(f"Between 1 and {MAX_PANELS} panels.")
    if any(not 0 <= index < count for index in request.references):
        raise InvalidRequest(f"Reference panels are numbered 1 to {count}.")
    if len(request.references) == count:
        raise InvalidRequest("Every panel has a reference: leave at least one to generate.")
    if request.reference_mode not in REFERENCE_MODES:
        raise InvalidRequest(f"References are held or inpainted ({', '.join(REFERENCE_MODES)}).")
    held = bool(request.references) and request.reference_mode == "held"
    if held and spec.family.flow is None:
        raise InvalidRequest(f"Held references need a rectified-flow model (FLUX, SD3); {spec.name} is not one.")
    cell = cell_size(request.width, request.height, request.rows, request.columns, spec.size_multiple)
    settings = validate(
        GenerationSettings.sampled_as(
            request,
            request.prompt,
            width=cell[0] * request.columns,
            height=cell[1] * request.rows,
            adapters=request.adapters,
        ),
        spec,
    )
    started = time.perf_counter()
    reporter = StepReporter(settings.steps, on_step, cancel)
    mask = None
    task = "inpaint" if request.references and not held else "t2i"
    with registry.use(spec.id, task, dict(settings.adapters)) as pipe:
        reporter.begin()
        step = reporter.step
        arguments = call_arguments(pipe, spec, settings, step)
        if request.references:
            references = {
                index: image.convert("RGB").resize(cell, Image.Resampling.LANCZOS)
                for index, image in request.references.items()
            }
            canvas = compose(
                [references.get(index, Image.new("RGB", cell, (GREY,) * 3)) for index in range(count)],
                request.rows,
                request.columns,
            )
            generated = [index for index in range(count) if index not in references]
            mask = cells_mask(request.rows, request.columns, cell, generated)
        if held:
            image = held_references_sample(pipe, spec, settings, canvas, request, step)
        else:
            if request.references:
                arguments.update(image=canvas, mask_image=mask, strength=1.0)
            with torch.no_grad():
                image = pipe(**arguments).images[0]
    if request.references:
        for index, reference in references.items():
            row, column = divmod(index, request.columns)
            image.paste(reference, (column * cell[0], row * cell[1]))
    return ImageSetResult(
        image, split(image, request.rows, request.columns), mask, request, time.perf_counter() - started
    )


def held_references_sample(
    pipe, spec: ModelSpec, settings: GenerationSettings, canvas: Image.Image, request: SetRequest, step: Callable
) -> Image.Image:
    """The set sampled with the reference cells' latents held clean at every step (the model's
    own flow, guidance and schedule), so that every step reads the references in full."""
    size = (settings.width, settings.height)
    reference = flow.encode_image(pipe, canvas, *size).to(pipe.transformer.device)
    height, width = reference.shape[-2:]
    held = cells_latent_mask(request.rows, request.columns, height, width, list(request.references))
    held = held.to(reference.device)
    latents = flow.sample(
        pipe, spec.family, settings.prompt, flow.Guidance(spec.guidance, settings.guidance), spec.text_length,
        settings.seed, size, settings.steps, settings.negative_prompt,
        adjust=lambda _, latents: torch.where(held, reference, latents), after_step=step,
    )  # fmt: skip
    return flow.decode(pipe, torch.where(held, reference, latents))[0]


def write_panels(panels: Sequence[Image.Image], image_path: Path) -> Path:
    """Each panel as a PNG beside the set's image, and all of them in one zip; returns the zip."""
    archive = image_path.with_suffix(".zip")
    with zipfile.ZipFile(archive, "w") as bundle:
        for index, panel in enumerate(panels, start=1):
            panel_path = image_path.with_name(f"{image_path.stem}-panel-{index}.png")
            panel.save(panel_path)
            bundle.write(panel_path, panel_path.name)
    return archive


register(
    Method(
        "image_set",
        SetRequest,
        lambda registry, settings, inputs, on_step, cancel: generate_set(registry, settings, on_step, cancel),
        "an in-context image set: panels on one grid from one tagged prompt, some panels optionally given",
        pictures=lambda made: list(made.panels),
    )
)
