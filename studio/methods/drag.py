"""Drag editing on rectified-flow DiTs (FLUX, SD3): move, rotate or scale painted regions.

Both modes start the same way: the source image's trajectory (FireFlow inversion of an upload,
or the exact sampling run of a seed), of which the edit replaces the part after the first
`skip_steps` denoising steps; the region left behind ("vacated": a source region minus every
target) is re-noised as RegionDrag's handle noise does, so the prior refills it with background;
the denoising runs beside the reconstruction branch, whose keys and values are injected into the
non-rigid blocks (FreeFlux's set, scaled to the model's depth) through the attention toolkit.
Inside the edited area (the regions' paths) the edit keeps its own keys and values: the source's
there would pull the object back to where it was (measured on the shapes world, where the scaled
set covers every block: no drag of four landed with them, three did without).

- **precise** (DragFlow, Zhou et al. 2026): at the first step after the skip, the latent is
  optimised by plain gradient descent for `transport` + `intensify` iterations. The loss is the
  L1 distance between the DiT features of the latent inside each target region and the source
  features warped by the region's affine map at fraction k/K of the drag (1 while intensifying),
  each region weighted by its size; the features are the adaLN-modulated input and the image
  output of the last two double-stream (FLUX) or joint (SD3) blocks. After every iteration the
  latent outside the union of the regions' paths (dilated) is the reconstruction branch's.
- **fast** (RegionDrag, Lu et al. 2024): no optimisation. While denoising, the trajectory's
  latents of each source region are pasted at its target under the affine map for the first
  `paste_fraction` of the steps, the latents outside the regions' paths follow the trajectory at
  every step, and the decoded image keeps the source's pixels there.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline
from PIL import Image

from studio import flow
from studio.attention import AttentionController, CaptureBranch, ShareKeysValues, controlled, joint_layers
from studio.attention.control import BranchCache
from studio.catalogue import ModelSpec
from studio.errors import InvalidRequest
from studio.generation import validate_sampling
from studio.inversion import invert_latents
from studio.params import SamplingSettings, StepCallback, StepReporter, prompt_text, redefault, setting
from studio.registry import Registry
from studio.runner import Method, register

MODES = ("precise", "fast")
KINDS = ("move", "rotate", "scale")
MAX_REGIONS = 8
# FreeFlux's non-rigid ("position-dependent") layers of FLUX.1-dev: 19 double-stream blocks,
# 38 single-stream blocks.
NON_RIGID_DOUBLE, FLUX_DOUBLE_BLOCKS = (0, 7, 8, 9, 10, 18), 19
NON_RIGID_SINGLE, FLUX_SINGLE_BLOCKS = (6, 9, 18, 23, 26, 31, 37), 38
FEATURE_BLOCKS = 2  # the last two double-stream / joint blocks give DragFlow's features


@dataclass(frozen=True)
class Drag:
    """One region's drag, in the pixel coordinates of the painted mask. `points` is (handle,
    target) for a move, (anchor,) for a rotation or scaling about that point; the first point
    lies in the region it drags. Angles are degrees clockwise as seen on screen."""

    kind: str
    points: tuple[tuple[float, float], ...]
    angle: float = 0.0
    scale: float = 1.0

    @classmethod
    def parse(cls, data: Any) -> Drag:
        """A drag from plain data: {"kind", "points", "angle", "scale"} or [kind, points, angle, scale]."""
        if isinstance(data, Drag):
            return data
        if isinstance(data, dict):
            fields = [data.get("kind"), data.get("points"), data.get("angle", 0.0), data.get("scale", 1.0)]
        elif isinstance(data, (list, tuple)) and 2 <= len(data) <= 4:
            fields = list(data) + [0.0, 1.0][len(data) - 2 :]
        else:
            raise InvalidRequest("A drag is (kind, points, angle, scale), e.g. ['move', [[20, 30], [40, 30]], 0, 1].")
        kind, points, angle, scale = fields
        if kind not in KINDS:
            raise InvalidRequest(f"A drag's kind is one of {', '.join(KINDS)}; got {kind!r}.")
        try:
            parsed = tuple((float(x), float(y)) for x, y in points)
            angle, scale = float(angle), float(scale)
        except (TypeError, ValueError):
            raise InvalidRequest("A drag's points are [x, y] pairs and its angle and scale are numbers.") from None
        wanted = 2 if kind == "move" else 1
        if len(parsed) != wanted:
            what = "a handle and a target point" if kind == "move" else "one anchor point"
            raise InvalidRequest(f"A {kind} drag takes {what}.")
        if not all(math.isfinite(v) for point in parsed for v in point) or not math.isfinite(angle + scale):
            raise InvalidRequest("A drag's points, angle and scale must be finite numbers.")
        if kind == "scale" and not 0.2 <= scale <= 5:
            raise InvalidRequest("A scale drag's factor must be between 0.2 and 5.")
        return cls(kind, parsed, angle, scale)

    def as_plain(self) -> list[Any]:
        return [self.kind, [list(point) for point in self.points], self.angle, self.scale]

    @property
    def handle(self) -> tuple[float, float]:
        return self.points[0]

    def is_still(self) -> bool:
        if self.kind == "move":
            return math.dist(*self.points) < 1e-6
        return self.angle % 360 == 0 if self.kind == "rotate" else self.scale == 1.0

    def matrix(self, fraction: float) -> np.ndarray:
        """The 3x3 affine map (pixel coordinates) of `fraction` of this drag."""
        (x, y), moved = self.handle, np.eye(3)
        if self.kind == "move":
            (tx, ty) = self.points[1]
            moved[:2, 2] = fraction * (tx - x), fraction * (ty - y)
            return moved
        if self.kind == "rotate":
            # Image y points down, so a positive angle turns clockwise on screen.
            a = math.radians(fraction * self.angle)
            moved[:2, :2] = [[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]
        else:
            moved[:2, :2] *= 1 + fraction * (self.scale - 1)
        to_anchor, back = np.eye(3), np.eye(3)
        to_anchor[:2, 2], back[:2, 2] = (-x, -y), (x, y)
        return back @ moved @ to_anchor


def warp(grid: torch.Tensor, matrix: np.ndarray, width: float, height: float) -> torch.Tensor:
    """`grid` ([B, C, h, w] over an image of width x height pixels) moved by the affine `matrix`
    (pixel coordinates): the result at q is the grid's bilinear value at matrix⁻¹(q), zero where
    that falls outside. Moves by whole cells and quarter turns about a cell centre are exact."""
    batch, _, rows, columns = grid.shape
    inverse = torch.tensor(np.linalg.inv(matrix), dtype=torch.float64)
    ys = (torch.arange(rows, dtype=torch.float64) + 0.5) * height / rows
    xs = (torch.arange(columns, dtype=torch.float64) + 0.5) * width / columns
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    points = torch.stack([x, y, torch.ones_like(x)], dim=-1) @ inverse.T
    # grid_sample's frame (align_corners=False): -1 and 1 are the outer edges of the outer cells.
    normalised = torch.stack([points[..., 0] / width * 2 - 1, points[..., 1] / height * 2 - 1], dim=-1)
    normalised = normalised.to(grid.device, torch.float32).expand(batch, rows, columns, 2)
    warped = F.grid_sample(grid.float(), normalised, mode="bilinear", padding_mode="zeros", align_corners=False)
    return warped.to(grid.dtype)


@dataclass(frozen=True, kw_only=True)
class DragSettings(SamplingSettings):
    prompt: str  # the source image's prompt
    drags: tuple[Drag, ...]
    mode: str = "fast"
    steps: int = redefault("steps", 25)
    guidance: float = redefault("guidance", 3.5)
    skip_steps: int = setting("Skipped steps (the edit starts after them)", 6, 0, 99, 1)
    transport: int = setting("Transport iterations (precise)", 50, 1, 500, 1)
    intensify: int = setting("Intensify iterations (precise)", 20, 0, 500, 1)
    learning_rate: float = setting(
        "Learning rate (precise)", 1000.0, 0.0, 1e6, 1.0, "plain gradient descent on the latent, as DragFlow"
    )
    handle_noise: float = setting("Noise in the vacated area", 0.3, 0.0, 1.0, 0.05)
    paste_fraction: float = setting("Paste during this fraction of denoising (fast)", 0.4, 0.0, 1.0, 0.05)

    def to_dict(self) -> dict[str, Any]:
        plain = super().to_dict()
        plain["drags"] = [drag.as_plain() for drag in self.drags]
        return plain


@dataclass
class Regions:
    """Each drag's region at latent resolution, the paths the regions sweep, and the fixed area."""

    sources: list[torch.Tensor]  # bool [h, w] each
    drags: list[Drag]
    width: float  # the painted mask's pixel size: the drags' frame
    height: float
    fixed: torch.Tensor  # bool [h, w]: must stay as it is

    def targets(self, fraction: float, shape: tuple[int, int] | None = None) -> list[torch.Tensor]:
        """Each region moved by `fraction` of its drag (at `shape`, default latent resolution)."""
        return [moved_mask(self.resized(source, shape), drag.matrix(fraction), self.width, self.height)
                for source, drag in zip(self.sources, self.drags)]  # fmt: skip

    def resized(self, mask: torch.Tensor, shape: tuple[int, int] | None) -> torch.Tensor:
        if shape is None or tuple(mask.shape) == shape:
            return mask
        return F.adaptive_avg_pool2d(mask[None, None].float(), shape)[0, 0] >= 0.5

    def editable(self, iterations: int) -> torch.Tensor:
        """Where the edit may change the latent: the sources and every target along the way,
        dilated by one image token, less the fixed area."""
        area = torch.stack(self.sources).any(0)
        for k in range(1, iterations + 1):
            area |= torch.stack(self.targets(k / iterations)).any(0)
        area = F.max_pool2d(area[None, None].float(), 5, stride=1, padding=2)[0, 0] > 0
        return area & ~self.fixed

    def vacated(self) -> torch.Tensor:
        return torch.stack(self.sources).any(0) & ~torch.stack(self.targets(1.0)).any(0) & ~self.fixed


def moved_mask(mask: torch.Tensor, matrix: np.ndarray, width: float, height: float) -> torch.Tensor:
    return warp(mask[None, None].float(), matrix, width, height)[0, 0] >= 0.5


def mask_array(mask: Image.Image | np.ndarray) -> np.ndarray:
    """A painted mask as booleans: its alpha where it has some transparency (a painted layer),
    else its non-black pixels (a black-and-white mask)."""
    if isinstance(mask, Image.Image):
        if mask.mode in ("RGBA", "LA", "PA"):
            alpha = np.asarray(mask.getchannel("A"))
            if alpha.min() < 255:
                return alpha > 127
        return np.asarray(mask.convert("L")) > 127
    array = np.asarray(mask)
    if array.ndim == 3:
        array = array.max(-1)
    return array > (0.5 if array.dtype == bool or array.max() <= 1 else 127)


def find_regions(
    painted: np.ndarray, drags: Sequence[Drag], latent_shape: tuple[int, int], fixed: np.ndarray | None = None
) -> Regions:
    """Each drag's region: the painted connected part (at latent resolution, 8-connected) that
    holds its handle or anchor. One sentence for every way the input can be unusable."""
    if not drags:
        raise InvalidRequest("Add a drag: click a handle, then its target (or pick rotate / scale and an anchor).")
    if len(drags) > MAX_REGIONS:
        raise InvalidRequest(f"At most {MAX_REGIONS} regions can be dragged at once; this has {len(drags)}.")
    height, width = painted.shape
    if not painted.any():
        raise InvalidRequest("Paint the region to drag first.")
    rows, columns = latent_shape
    coverage = F.adaptive_avg_pool2d(torch.from_numpy(painted).float()[None, None], latent_shape)[0, 0]
    small = coverage >= 0.5
    if not small.any():
        raise InvalidRequest("The painted region is too small for this image size: paint a larger one.")
    _, labels = cv2.connectedComponents(small.numpy().astype(np.uint8), connectivity=8)
    sources: list[torch.Tensor] = []
    owners: dict[int, int] = {}
    for number, drag in enumerate(drags, start=1):
        for x, y in drag.points:
            if not (0 <= x < width and 0 <= y < height):
                raise InvalidRequest(
                    f"Drag {number}: the point ({x:g}, {y:g}) lies outside the {width}x{height} image."
                )
        if drag.is_still():
            raise InvalidRequest(f"Drag {number} does not move anything: give it a length, an angle or a scale.")
        row = min(int(drag.handle[1] * rows / height), rows - 1)
        column = min(int(drag.handle[0] * columns / width), columns - 1)
        label = int(labels[row, column])
        if label == 0:
            point = "handle" if drag.kind == "move" else "anchor"
            raise InvalidRequest(f"Drag {number}: its {point} is outside every painted region.")
        if label in owners:
            raise InvalidRequest(
                f"Drags {owners[label]} and {number} start in the same region: give each region one drag."
            )
        owners[label] = number
        sources.append(torch.from_numpy(labels == label))
    kept = torch.zeros(latent_shape, dtype=torch.bool)
    if fixed is not None and fixed.any():
        kept = F.adaptive_avg_pool2d(torch.from_numpy(fixed).float()[None, None], latent_shape)[0, 0] >= 0.5
    return Regions(sources, list(drags), float(width), float(height), kept)


def non_rigid_layers(transformer: torch.nn.Module) -> set[str]:
    """FreeFlux's non-rigid blocks scaled to this transformer's depth (all joint blocks, read as
    double-stream ones, for SD3)."""

    def scaled(indices: Sequence[int], reference: int, names: list[str]) -> set[str]:
        if not names:
            return set()
        return {names[round(i * (len(names) - 1) / (reference - 1))] for i in indices}

    return scaled(NON_RIGID_DOUBLE, FLUX_DOUBLE_BLOCKS, joint_layers(transformer, "double")) | scaled(
        NON_RIGID_SINGLE, FLUX_SINGLE_BLOCKS, joint_layers(transformer, "single")
    )


class _FeaturesReady(Exception):
    """Stops the transformer once the last feature block has run: later blocks are not needed."""


class BlockFeatures:
    """DragFlow's features of a latent: for each of the last two double-stream / joint blocks, its
    adaLN-modulated image input and its image output, as [1, C, rows, columns] on the token grid."""

    def __init__(self, pipe: DiffusionPipeline, family_flow: Any, text: Any) -> None:
        self.pipe, self.flow, self.text = pipe, family_flow, text
        self.blocks = list(pipe.transformer.transformer_blocks)[-FEATURE_BLOCKS:]
        self._captured: list[torch.Tensor] = []
        self._live = False

    def _keep_input(self, module, args, output) -> None:
        if self._live:
            self._captured.append(output[0])

    def _keep_output(self, module, args, output) -> None:
        if self._live:
            self._captured.append(output[1])
            if module is self.blocks[-1]:
                self._live = False  # a checkpointed block's recomputation must not stop again
                raise _FeaturesReady

    def __call__(self, latents: torch.Tensor, sigma: float) -> torch.Tensor:
        rows, columns = latents.shape[-2] // 2, latents.shape[-1] // 2
        handles = [block.norm1.register_forward_hook(self._keep_input) for block in self.blocks]
        handles += [block.register_forward_hook(self._keep_output) for block in self.blocks]
        self._captured, self._live = [], True
        sigmas = torch.full((latents.shape[0],), sigma, device=latents.device, dtype=latents.dtype)
        try:
            self.flow.velocity(self.pipe, latents, sigmas, self.text, None)
        except _FeaturesReady:
            pass
        finally:
            self._live = False
            for handle in handles:
                handle.remove()
        tokens = torch.cat(self._captured, dim=-1).float()  # [B, rows*columns, features]
        return tokens.transpose(1, 2).reshape(latents.shape[0], -1, rows, columns)


def transport_loss(
    features: torch.Tensor, source_features: torch.Tensor, regions: Regions, fraction: float
) -> torch.Tensor:
    """Σ over regions, weighted by size, of the mean L1 distance inside the region's target at
    `fraction` of its drag between the features and the source features warped there."""
    grid = (features.shape[-2], features.shape[-1])
    sizes = torch.stack([regions.resized(source, grid).sum() for source in regions.sources]).float()
    weights = sizes / sizes.sum()
    total = features.new_zeros(())
    for weight, drag, target in zip(weights, regions.drags, regions.targets(fraction, grid)):
        if not target.any():
            continue
        wanted = warp(source_features, drag.matrix(fraction), regions.width, regions.height)
        inside = target.to(features.device)
        total = total + weight * (features[..., inside] - wanted[..., inside]).abs().mean()
    return total


@dataclass
class Trajectory:
    """The source's latents at every sigma of the schedule from the edit's start to the image."""

    sigmas: list[float]  # descending
    latents: list[torch.Tensor]
    image: Image.Image


@dataclass
class DragEdit:
    source: Image.Image
    result: Image.Image
    settings: DragSettings
    losses: list[float]  # precise mode's loss per iteration
    seconds: float


def validate(settings: DragSettings, spec: ModelSpec) -> DragSettings:
    if spec.flow is None or spec.family.token_order not in ("text-image", "image-text"):
        raise InvalidRequest(
            f"Drag editing needs a FLUX or SD3 model that samples as a flow; {spec.name} is "
            + ("a distilled one-step student." if spec.family.flow is not None else f"{spec.family.label}.")
        )
    if settings.mode not in MODES:
        raise InvalidRequest(f"The mode is precise or fast, not {settings.mode!r}.")
    settings = validate_sampling(replace(settings, prompt=prompt_text(settings.prompt, "the image's prompt")), spec)
    if settings.skip_steps >= settings.steps:
        raise InvalidRequest(f"Skip fewer steps ({settings.skip_steps}) than the edit has ({settings.steps}).")
    return replace(settings, drags=tuple(Drag.parse(drag) for drag in settings.drags))


def source_trajectory(
    pipe: DiffusionPipeline,
    spec: ModelSpec,
    settings: DragSettings,
    model: flow.FlowModel,
    image: Image.Image | None,
    step: Callable[[int], None],
) -> Trajectory:
    """An upload inverted by FireFlow (guidance 1) up to the edit's start; without one, the seed's
    own sampling run, which remakes the image exactly."""
    shape = (settings.height // pipe.vae_scale_factor, settings.width // pipe.vae_scale_factor)
    sigmas = flow.schedule(pipe, spec.family, settings.steps, *shape)
    kept = sigmas[settings.skip_steps :]
    if image is not None:
        picture = image.convert("RGB").resize((settings.width, settings.height), Image.Resampling.LANCZOS)
        latents = flow.encode_image(pipe, picture, settings.width, settings.height).to(pipe.transformer.device)
        embedded = "embedded" if pipe.transformer.config.get("guidance_embeds") else "none"
        inverter = flow.FlowModel(pipe, spec.family, [settings.prompt], flow.Guidance(embedded, 1.0), spec.text_length)
        inversion = invert_latents(inverter, latents, kept, "fireflow", after_step=step)
        return Trajectory(kept, list(reversed(inversion.latents)), picture)
    noise = flow.initial_noise(pipe, settings.seed, settings.width, settings.height).to(pipe.transformer.device)
    states = flow.integrate(model.velocity, noise, sigmas, "euler", after_step=step)
    return Trajectory(kept, states[settings.skip_steps :], flow.decode(pipe, states[-1])[0])


def optimise(
    features: BlockFeatures,
    start: torch.Tensor,
    reference: torch.Tensor,
    sigma: float,
    regions: Regions,
    settings: DragSettings,
    editable: torch.Tensor,
    step: Callable[[int], None],
    checkpointing: bool,
) -> tuple[torch.Tensor, list[float]]:
    """DragFlow's latent optimisation at one sigma; returns the latent and the loss per iteration."""
    transformer = features.pipe.transformer
    with torch.no_grad():
        source_features = features(reference, sigma)
    outside = (~editable).to(start.device)
    latent = start.detach().clone()
    losses: list[float] = []
    if checkpointing:
        transformer.enable_gradient_checkpointing()
    try:
        for k in range(1, settings.transport + settings.intensify + 1):
            fraction = min(1.0, k / settings.transport)
            latent.requires_grad_(True)
            with torch.enable_grad():
                loss = transport_loss(features(latent, sigma), source_features, regions, fraction)
                (gradient,) = torch.autograd.grad(loss, latent)
            with torch.no_grad():
                latent = latent - settings.learning_rate * gradient
                latent = torch.where(outside, reference, latent)
            losses.append(float(loss.detach()))
            step(k)
    finally:
        if checkpointing:
            transformer.disable_gradient_checkpointing()
    return latent.detach(), losses


def fill_from_surroundings(latent: torch.Tensor, hole: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """`latent` with every cell of `hole` copied from the nearest cell of `known` (a clone-stamp
    fill: what lies around a dragged object is what shows where it was)."""
    if not hole.any() or not known.any():
        return latent
    unknown = (~known).cpu().numpy().astype(np.uint8)
    _, nearest = cv2.distanceTransformWithLabels(unknown, cv2.DIST_L2, 3, labelType=cv2.DIST_LABEL_PIXEL)
    # Labels number the known cells in raster order, from 1.
    known_cells = torch.from_numpy(np.argwhere(unknown == 0))
    source_cells = known_cells[torch.from_numpy(nearest.astype(np.int64) - 1)]  # [h, w, 2]
    filled = latent[..., source_cells[..., 0], source_cells[..., 1]]
    return torch.where(hole.to(latent.device), filled, latent)


def paste_targets(latent: torch.Tensor, source: torch.Tensor, regions: Regions) -> torch.Tensor:
    """`latent` with each region's `source` latents pasted at its target (full drag)."""
    pasted = latent.clone()
    for drag, target in zip(regions.drags, regions.targets(1.0)):
        moved = warp(source, drag.matrix(1.0), regions.width, regions.height)
        pasted[..., target.to(latent.device)] = moved[..., target.to(latent.device)]
    return pasted


def drag_edit(
    registry: Registry,
    settings: DragSettings,
    mask: Image.Image | np.ndarray,
    image: Image.Image | None = None,
    fixed: Image.Image | np.ndarray | None = None,
    on_step: StepCallback | None = None,
    cancel: threading.Event | None = None,
) -> DragEdit:
    """Drag the painted regions of `image` (inverted), or of the seed's image when there is none.
    `mask` is the painted regions (any size: the drags' points are in its pixels), `fixed` an
    optional painted area that must not change."""
    spec = registry.catalogue.get(settings.model)
    settings = validate(settings, spec)
    painted = mask_array(mask)
    kept_area = mask_array(fixed) if fixed is not None else None
    if kept_area is not None and kept_area.shape != painted.shape:
        raise InvalidRequest("The fixed area must be painted on the same image as the regions.")
    started = time.perf_counter()
    edit_steps = settings.steps - settings.skip_steps
    iterations = settings.transport + settings.intensify if settings.mode == "precise" else 0
    source_steps = edit_steps if image is not None else settings.steps
    reporter = StepReporter(source_steps + iterations + edit_steps, on_step, cancel)
    with registry.use(spec.id, "t2i") as pipe:
        latent_shape = (settings.height // pipe.vae_scale_factor, settings.width // pipe.vae_scale_factor)
        regions = find_regions(painted, settings.drags, latent_shape, kept_area)
        reporter.begin()
        device = pipe.transformer.device
        guidance = flow.Guidance(spec.guidance, settings.guidance)
        model = flow.FlowModel(pipe, spec.family, [settings.prompt], guidance, spec.text_length)
        trajectory = source_trajectory(pipe, spec, settings, model, image, reporter.step)
        reference = trajectory.latents[0]
        editable = regions.editable(max(iterations, 1)).to(device)
        vacated = regions.vacated().to(device)
        noise = torch.randn(reference.shape, generator=torch.Generator().manual_seed(settings.seed + 1)).to(device)
        kept_fraction = math.sqrt(max(0.0, 1 - settings.handle_noise**2))
        refilled = fill_from_surroundings(reference, vacated, ~editable)
        start = torch.where(vacated, refilled * kept_fraction + noise * settings.handle_noise, reference)
        losses: list[float] = []
        if settings.mode == "precise":
            conditional = model.text.chunk(2)[-1] if guidance.doubles_batch else model.text
            features = BlockFeatures(pipe, spec.family.flow, conditional)
            start, losses = optimise(
                features,
                start,
                reference,
                trajectory.sigmas[0],
                regions,
                settings,
                editable,
                reporter.step,
                checkpointing=device.type == "cuda",
            )
        result_latent = denoise_beside_source(
            pipe, model, trajectory, start, regions, settings, editable, reporter.step, spec.family.token_order
        )
        result = flow.decode(pipe, result_latent)[0]
        # Fast mode keeps the source's pixels outside the edit (RegionDrag); both keep the fixed area.
        result = keep_outside(result, trajectory.image, editable if settings.mode == "fast" else ~regions.fixed)
    return DragEdit(trajectory.image, result, settings, losses, time.perf_counter() - started)


def remade_source(registry: Registry, settings: DragSettings) -> Image.Image:
    """The image a drag without an upload edits: the seed's run under `settings`, as the edit
    remakes it (so regions can be painted on exactly what will be dragged)."""
    spec = registry.catalogue.get(settings.model)
    settings = validate(settings, spec)
    with registry.use(spec.id, "t2i") as pipe:
        model = flow.FlowModel(
            pipe, spec.family, [settings.prompt], flow.Guidance(spec.guidance, settings.guidance), spec.text_length
        )
        return source_trajectory(pipe, spec, settings, model, None, lambda _: None).image


def denoise_beside_source(
    pipe: DiffusionPipeline,
    model: flow.FlowModel,
    trajectory: Trajectory,
    start: torch.Tensor,
    regions: Regions,
    settings: DragSettings,
    editable: torch.Tensor,
    step: Callable[[int], None],
    token_order: str,
) -> torch.Tensor:
    """The edited latent denoised in one batch with the reconstruction branch, whose keys and
    values the edit's non-rigid layers attend to; in fast mode with RegionDrag's pasting and
    background."""
    pair = model.beside(model)
    source_rows, target_rows = pair.alternating_rows()
    layers = non_rigid_layers(pipe.transformer)
    cache = BranchCache(history=False)
    controller = AttentionController(
        [
            CaptureBranch(cache=cache, layers=layers, rows=source_rows),
            ShareKeysValues(source=cache, layers=layers, rows=target_rows, keep=token_mask(editable)),
        ]
    )
    paste_steps = round(settings.paste_fraction * (len(trajectory.sigmas) - 1))
    outside = ~editable
    vacated = regions.vacated().to(editable.device)

    def fast_mode(index: int, latents: torch.Tensor) -> torch.Tensor:
        source, target = latents[:1], latents[1:]
        followed = trajectory.latents[index]
        if index < paste_steps:
            target = paste_targets(target, followed, regions)
            target = torch.where(vacated, fill_from_surroundings(followed, vacated, outside), target)
        return torch.cat([source, torch.where(outside, followed, target)])

    with controlled(pipe.transformer, controller, token_order):
        states = flow.integrate(
            pair.velocity,
            torch.cat([trajectory.latents[0], start]),
            trajectory.sigmas,
            "euler",
            before_step=controller.set_step,
            after_step=step,
            adjust=fast_mode if settings.mode == "fast" else None,
        )
    return states[-1][1:]


def token_mask(area: torch.Tensor) -> torch.Tensor:
    """A latent-resolution mask over image tokens (2x2 latent cells each; any cell counts)."""
    grid = (area.shape[0] // 2, area.shape[1] // 2)
    return (F.adaptive_max_pool2d(area[None, None].float(), grid)[0, 0] > 0).flatten()


def keep_outside(result: Image.Image, source: Image.Image, editable: torch.Tensor) -> Image.Image:
    """The result inside the editable area, the source's own pixels outside it (RegionDrag)."""
    inside = F.interpolate(editable[None, None].float().cpu(), size=(result.height, result.width), mode="nearest")
    keep = inside[0, 0].numpy()[..., None] > 0
    return Image.fromarray(np.where(keep, np.asarray(result.convert("RGB")), np.asarray(source.convert("RGB"))))


register(
    Method(
        "drag_edit",
        DragSettings,
        lambda registry, settings, inputs, on_step, cancel: drag_edit(
            registry, settings, inputs["mask"], inputs.get("image"), inputs.get("fixed"), on_step, cancel
        ),
        "drag painted regions of an image (DragFlow precise, RegionDrag-style fast): move, rotate or scale each",
        {
            "mask": "the painted regions; each drag's first point picks its region",
            "image": "the image to edit (inverted); without it the seed's image is remade from the prompt",
            "fixed": "an optional painted area that must stay as it is",
        },
        pictures=lambda edit: [edit.result],
    )
)
