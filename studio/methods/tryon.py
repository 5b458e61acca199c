"""Virtual try-on, in context on FLUX Fill (catvton-flux's method).

The canvas is [garment | person], each at the model's cell size; the garment half is kept and the
person's clothing area (the agnostic mask) is inpainted by a FLUX Fill model with the in-context
prompt, so the transformer copies the garment from the left panel onto the person on the right.
The result is the right half, brought back to the person photo's size and pasted in the mask
only: every pixel outside the mask is the person's own, bit for bit; inside it, where both the
photo and the result parse as backdrop, the photo's backdrop stays too.

The agnostic mask comes from a human parser (segformer_b2_clothes, ATR labels) by garment kind,
dilated and boxed, and never covers the face, hair, hands or shoes; or it is painted by hand.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

from studio.catalogue import PROJECT_ROOT, ModelSpec
from studio.errors import InvalidRequest, ModelUnavailable
from studio.generation import GenerationSettings, call_arguments, validate_sampling
from studio.methods import incontext
from studio.params import SamplingSettings, StepCallback, StepReporter, redefault, setting
from studio.registry import Registry
from studio.runner import Method, register

# ATR label ids (mattmdjaga/segformer_b2_clothes).
HAIR, UPPER, SKIRT, PANTS, DRESS, FACE = 2, 4, 5, 6, 7, 11
LEGS, ARMS = (12, 13), (14, 15)
# Never inpainted: a try-on changes clothes, not the person (hat, sunglasses, shoes, bag kept too).
KEPT_LABELS = (1, HAIR, 3, 9, 10, FACE, 16)
GARMENT_LABELS: dict[str, tuple[int, ...]] = {
    "upper": (UPPER,),
    "lower": (SKIRT, PANTS),
    "dress": (UPPER, SKIRT, PANTS, DRESS),
}
# Body parts a new garment may cover where the old one did not (sleeves, trouser legs).
LIMB_LABELS: dict[str, tuple[int, ...]] = {"upper": ARMS, "lower": LEGS, "dress": ARMS + LEGS}
KINDS = tuple(GARMENT_LABELS)
KIND_NAMES = {"upper": "a top", "lower": "trousers or a skirt", "dress": "a dress"}
# A hand is about a tenth of a person's height (anthropometric tables give 0.108).
HAND_SHARE_OF_HEIGHT = 0.1
# The mask grows by this share of the figure's height before it is boxed (room for a looser cut).
DILATION_SHARE = 0.03

PROMPT = (
    "The pair of images highlights a clothing and its styling on a model, high resolution, 4K, 8K; "
    "[IMAGE1] Detailed product shot of a {garment} [IMAGE2] The same cloth is worn by a model in a lifestyle setting."
)
HUB_PARSER = "mattmdjaga/segformer_b2_clothes"
BUILTIN_PARSER = PROJECT_ROOT / "assets" / "models" / "dressup-parser"
# catvton-flux's try-on LoRA for FLUX.1 Fill [dev].
TRYON_LORA = ("catvton-flux", "xiaozaa/catvton-flux-lora-alpha", "pytorch_lora_weights.safetensors")
MIN_SIDE, MAX_SIDE = 32, 4096


# --- The mask ---------------------------------------------------------------------------------


def grow(mask: np.ndarray, pixels: int) -> np.ndarray:
    """The mask dilated by `pixels` in every direction (a square neighbourhood)."""
    if pixels <= 0:
        return mask.astype(bool)
    image = Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(2 * pixels + 1))
    return np.asarray(image) > 0


def hands(labels: np.ndarray) -> np.ndarray:
    """The hands: on each arm, the pixels within a hand's length of its far end (the arm pixel
    farthest from the neck, which is the top centre of the clothed torso or, lacking clothes, of
    the figure)."""
    figure = labels > 0
    if not figure.any():
        return np.zeros_like(figure)
    rows = np.nonzero(figure.any(1))[0]
    hand_length = HAND_SHARE_OF_HEIGHT * (rows[-1] - rows[0] + 1)
    torso = np.isin(labels, (UPPER, DRESS))
    anchor = torso if torso.any() else figure
    ys, xs = np.nonzero(anchor)
    neck = np.array([ys.min(), xs.mean()])
    found = np.zeros_like(figure)
    for arm in ARMS:
        ys, xs = np.nonzero(labels == arm)
        if len(ys) == 0:
            continue
        reach = np.hypot(ys - neck[0], xs - neck[1])
        near_end = reach >= reach.max() - hand_length
        found[ys[near_end], xs[near_end]] = True
    return found


def agnostic_mask(labels: np.ndarray, kind: str, dilation: int | None = None) -> np.ndarray:
    """Where the try-on paints, from a label map: the garment kind's clothing and the limbs it may
    cover, grown by `dilation` pixels (default a share of the figure's height) and boxed, less
    the face, hair, hands and worn accessories. InvalidRequest when that clothing is not there."""
    if kind not in GARMENT_LABELS:
        raise InvalidRequest(f"Garment kind must be one of {', '.join(KINDS)}.")
    clothing = np.isin(labels, GARMENT_LABELS[kind])
    if not clothing.any():
        raise InvalidRequest(
            f"The parser found no {KIND_NAMES[kind]} on the person: paint the area to replace with the brush."
        )
    region = clothing | np.isin(labels, LIMB_LABELS[kind])
    if dilation is None:
        rows = np.nonzero((labels > 0).any(1))[0]
        dilation = max(1, round(DILATION_SHARE * (rows[-1] - rows[0] + 1)))
    region = grow(region, dilation)
    ys, xs = np.nonzero(region)
    boxed = np.zeros_like(region)
    boxed[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] = True
    return boxed & ~np.isin(labels, KEPT_LABELS) & ~hands(labels)


def checked_mask(mask: np.ndarray) -> np.ndarray:
    """A painted or automatic mask as booleans, refused when it covers nothing or everything."""
    mask = np.asarray(mask).astype(bool)
    share = mask.mean() if mask.size else 0.0
    if share == 0:
        raise InvalidRequest("The mask covers nothing: paint the clothing to replace, or use the automatic mask.")
    if share > 0.95:
        raise InvalidRequest("The mask covers the whole person: leave the face and the background unpainted.")
    return mask


# --- The human parser -------------------------------------------------------------------------

_parsers: dict[str, tuple[object, torch.nn.Module]] = {}
_parsers_lock = threading.Lock()


def parser_for(spec: ModelSpec) -> str:
    """The built-in models parse with the dress-up world's parser, hub models with the real one."""
    return str(BUILTIN_PARSER) if spec.builtin else HUB_PARSER


def _load_parser(source: str, offline: bool) -> tuple[object, torch.nn.Module]:
    from transformers import SegformerForSemanticSegmentation, SegformerImageProcessor

    with _parsers_lock:
        if source not in _parsers:
            try:
                options = {"local_files_only": offline}
                processor = SegformerImageProcessor.from_pretrained(source, **options)
                model = SegformerForSemanticSegmentation.from_pretrained(
                    source, use_safetensors=True, dtype=torch.float32, **options
                )
            except OSError:
                where = "offline and not in the cache" if offline else "could not be fetched"
                raise ModelUnavailable(
                    f"The human parser {Path(source).name} is {where}: paint the mask with the brush instead."
                ) from None
            _parsers[source] = (processor, model.eval())
        return _parsers[source]


def parse(person: Image.Image, source: str, offline: bool) -> np.ndarray:
    """The person's ATR label map at the photo's size."""
    return parse_with(*_load_parser(source, offline), person)


def parse_with(processor, model: torch.nn.Module, person: Image.Image) -> np.ndarray:
    inputs = processor(images=person.convert("RGB"), return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    logits = torch.nn.functional.interpolate(logits, size=person.size[::-1], mode="bilinear", align_corners=False)
    return logits.argmax(1)[0].numpy().astype(np.uint8)


def automatic_mask(person: Image.Image, kind: str, spec: ModelSpec, offline: bool) -> np.ndarray:
    check_image(person, "person")
    return agnostic_mask(parse(person, parser_for(spec), offline), kind)


# --- Canvas -----------------------------------------------------------------------------------


def check_image(image: Image.Image | None, what: str) -> Image.Image:
    if image is None:
        raise InvalidRequest(f"Give a {what} image.")
    if min(image.size) < MIN_SIDE:
        raise InvalidRequest(f"The {what} image is too small: at least {MIN_SIDE} pixels a side.")
    if max(image.size) > MAX_SIDE:
        raise InvalidRequest(f"The {what} image is too large: at most {MAX_SIDE} pixels a side.")
    return image.convert("RGB")


@dataclass(frozen=True)
class Placement:
    """Where a picture sits inside a cell after fitting: (left, top, width, height)."""

    box: tuple[int, int, int, int]

    def crop(self, cell: Image.Image) -> Image.Image:
        left, top, width, height = self.box
        return cell.crop((left, top, left + width, top + height))


def fit(
    image: Image.Image, cell: tuple[int, int], resample: Image.Resampling = Image.Resampling.LANCZOS
) -> tuple[Image.Image, Placement]:
    """The image scaled to fit the cell whole and centred on its own border colour (the median
    of its edge pixels), so a plain studio backdrop runs on seamlessly."""
    scale = min(cell[0] / image.width, cell[1] / image.height)
    width, height = max(1, round(image.width * scale)), max(1, round(image.height * scale))
    pixels = np.asarray(image)
    edges = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    backdrop = tuple(int(v) for v in np.median(edges.reshape(-1, edges.shape[-1]), axis=0))
    placed = Image.new(image.mode, cell, backdrop if image.mode == "RGB" else backdrop[0])
    left, top = (cell[0] - width) // 2, (cell[1] - height) // 2
    placed.paste(image.resize((width, height), resample), (left, top))
    return placed, Placement((left, top, width, height))


def without_backdrop(garment: Image.Image, tolerance: float = 40.0) -> Image.Image:
    """The garment photo with its plain backdrop made white: the pixels near the border's colour
    that connect to the border (a plain-background threshold, so a white print inside the
    garment stays)."""
    pixels = np.asarray(garment.convert("RGB")).astype(np.float32)
    edges = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    near = np.linalg.norm(pixels - np.median(edges, axis=0), axis=-1) < tolerance
    # A frame of backdrop around the picture joins every border pixel into one flood (on a copy:
    # an image made from an array may share its read-only buffer, and the fill would not land).
    framed = Image.fromarray(np.pad(near, 1, constant_values=True).astype(np.uint8) * 255).copy()
    ImageDraw.floodfill(framed, (0, 0), 128)
    backdrop = np.asarray(framed)[1:-1, 1:-1] == 128
    cleaned = np.asarray(garment.convert("RGB")).copy()
    cleaned[backdrop] = 255
    return Image.fromarray(cleaned)


def compose(garment: Image.Image, person: Image.Image) -> Image.Image:
    """The canvas [garment | person] (both one cell): the in-context toolkit's 1x2 grid."""
    return incontext.compose([garment, person], rows=1, columns=2)


def canvas_mask(person_mask: np.ndarray, cell: tuple[int, int]) -> np.ndarray:
    """Black (kept) over the garment half, the person's mask over the person half."""
    mask = np.zeros((cell[1], 2 * cell[0]), dtype=bool)
    mask[:, cell[0] :] = person_mask
    return mask


def paste_back(person: Image.Image, generated: Image.Image, mask: np.ndarray) -> Image.Image:
    """The generated person inside the mask, the photo's own pixels everywhere else."""
    generated = generated.convert("RGB").resize(person.size, Image.Resampling.LANCZOS)
    return Image.fromarray(np.where(mask[..., None], np.asarray(generated), np.asarray(person.convert("RGB"))))


def prompt_for(description: str) -> str:
    description = " ".join(description.split())
    if len(description) > 200:
        raise InvalidRequest("The garment description is too long: at most 200 characters.")
    return PROMPT.format(garment=description or "clothing")


# --- The try-on -------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class TryOnSettings(SamplingSettings):
    """One try-on; width and height are the whole canvas's ([garment | person])."""

    kind: str = "upper"
    steps: int = redefault("steps", 30)
    guidance: float = redefault("guidance", 30.0)
    lora_scale: float = setting("LoRA scale", 1.0, 0.0, 2.0, 0.05)
    # Words slotted into the prompt's product-shot part ("a red striped top"); empty: "clothing".
    description: str = ""
    # The baseline: inpaint from the prompt alone, the garment panel left blank.
    without_garment: bool = False
    # Inside the mask, where both the photo and the result show backdrop (the parser's label 0),
    # keep the photo's own: the model redraws the person, not the room behind them.
    keep_backdrop: bool = True


@dataclass
class TryOnResult:
    image: Image.Image  # the person wearing the garment, the photo's size
    canvas: Image.Image  # the canvas as generated (for the curious)
    mask: np.ndarray  # the person's mask that was painted
    settings: TryOnSettings
    seconds: float
    notes: list[str] = field(default_factory=list)


def check_model(spec: ModelSpec) -> None:
    if spec.pipeline != "FluxFillPipeline":
        raise InvalidRequest(
            f"{spec.name} is not a FLUX Fill model: try-on needs one (FLUX.1 Fill [dev] or the dress-up built-in)."
        )


def adapters_for(registry: Registry, spec: ModelSpec, scale: float) -> dict[str, float]:
    """catvton-flux's LoRA on hub FLUX Fill models (fetched once); the built-in learnt try-on in
    its own weights."""
    if spec.builtin or scale == 0:
        return {}
    name, repo, file = TRYON_LORA
    if name not in registry.adapters(spec.id):
        registry.fetch_adapter(spec.id, name, repo, file)
    return {name: scale}


def try_on(
    registry: Registry,
    settings: TryOnSettings,
    person: Image.Image | None,
    garment: Image.Image | None,
    mask: np.ndarray | None,
    on_step: StepCallback | None = None,
    cancel: threading.Event | None = None,
) -> TryOnResult:
    """`person` wearing `garment`; `mask` (the person's size) is where to paint, None for the
    automatic one."""
    spec = registry.catalogue.get(settings.model)
    check_model(spec)
    person = check_image(person, "person")
    garment = (
        Image.new("RGB", person.size, (255, 255, 255)) if settings.without_garment else check_image(garment, "garment")
    )
    settings = validate_sampling(settings, spec)
    if settings.width % (2 * spec.size_multiple):
        settings = replace(settings, width=settings.width + spec.size_multiple)
    prompt = prompt_for(settings.description)
    # The person's labels, read once: for the automatic mask and for keeping the backdrop.
    labels: np.ndarray | None = None
    if mask is None:
        labels = parse(person, parser_for(spec), registry.offline_only)
        mask = agnostic_mask(labels, settings.kind)
    elif mask.shape != (person.height, person.width):
        raise InvalidRequest("The mask must be the size of the person image.")
    mask = checked_mask(mask)
    cell = (settings.width // 2, settings.height)
    person_cell, placement = fit(person, cell)
    garment_cell, _ = fit(garment, cell)
    mask_image, _ = fit(Image.fromarray(mask.astype(np.uint8) * 255), cell, Image.Resampling.NEAREST)
    # Grown by a pixel so the fitted mask still covers every masked photo pixel after resizing.
    cell_mask = grow(np.asarray(mask_image) > 0, 1)
    canvas = compose(garment_cell, person_cell)
    full_mask = Image.fromarray(canvas_mask(cell_mask, cell).astype(np.uint8) * 255)
    started = time.perf_counter()
    reporter = StepReporter(settings.steps, on_step, cancel)
    notes = []
    if spec.builtin and not spec.random_weights and settings.guidance != spec.guidance_scale:
        notes.append("The built-in was trained without guidance distillation: its guidance input has no effect.")
    with registry.use(spec.id, "t2i", adapters_for(registry, spec, settings.lora_scale)) as pipe:
        reporter.begin()

        generation = GenerationSettings.sampled_as(settings, prompt, width=canvas.width, height=canvas.height)
        arguments = call_arguments(pipe, spec, generation, reporter.step)
        arguments.update(image=canvas, mask_image=full_mask)
        with torch.no_grad():
            generated = pipe(**arguments).images[0]
    person_half = generated.crop((cell[0], 0, 2 * cell[0], cell[1]))
    image = paste_back(person, placement.crop(person_half), mask)
    if settings.keep_backdrop:
        try:
            source = parser_for(spec)
            backdrop = (parse(person, source, registry.offline_only) == 0) & (
                parse(image, source, registry.offline_only) == 0
            )
        except ModelUnavailable:
            notes.append("The backdrop inside the mask is the model's: no human parser here to tell it apart.")
        else:
            image = paste_back(person, image, mask & ~backdrop)
    return TryOnResult(image, generated, mask, settings, time.perf_counter() - started, notes)


def as_mask(mask: object) -> np.ndarray:
    """A painted mask as booleans: a picture (an API or tool client's) is white where to paint."""
    if isinstance(mask, Image.Image):
        return np.asarray(mask.convert("L")) > 127
    return np.asarray(mask, dtype=bool)


def _run(registry: Registry, settings: TryOnSettings, inputs: Mapping[str, object], on_step, cancel) -> TryOnResult:
    mask = inputs.get("mask")
    return try_on(
        registry,
        settings,
        inputs.get("person"),  # type: ignore[arg-type]
        inputs.get("garment"),  # type: ignore[arg-type]
        None if mask is None else as_mask(mask),
        on_step,
        cancel,
    )


register(
    Method(
        "try_on",
        TryOnSettings,
        _run,
        "virtual try-on: the person wearing the garment, in context on FLUX Fill ([garment | person] canvas, "
        "the clothing area masked automatically by a human parser or by hand)",
        inputs={
            "person": "the person photo",
            "garment": "the garment photo (not needed with without_garment)",
            "mask": "where to paint, the person's size (optional: the parser's automatic mask)",
        },
    )
)
