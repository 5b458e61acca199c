"""Previews while an image forms: every few steps the latents are decoded small (the VAE on
latents pooled so the picture is at most PREVIEW_SIDE pixels: cheap at any size), as the clean
image they predict where the family is a rectified flow (the velocity from two consecutive
steps), else as they stand.

`with_previews` runs a pipeline call on a worker thread and hands the previews to the caller
as they come, so a generator can yield them while the call runs.
"""

from __future__ import annotations

import contextvars
import math
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline
from PIL import Image

from studio.catalogue import ModelSpec

# A preview's longer side at most (pixels): enough to see the picture form, cheap to decode.
PREVIEW_SIDE = 256


@dataclass(frozen=True)
class Preview:
    """What an image looks like after `done` of `total` steps (the `index`-th image of a batch)."""

    image: Image.Image
    done: int
    total: int
    index: int = 0


def unpacked(pipe: DiffusionPipeline, spec: ModelSpec, latents: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """The pipeline's step latents as [B, C, h, w] (FLUX keeps them packed as 2×2 patches)."""
    if latents.dim() == 3:
        return type(pipe)._unpack_latents(latents, height, width, pipe.vae_scale_factor)
    return latents


@torch.no_grad()
def decoded(pipe: DiffusionPipeline, latents: torch.Tensor) -> Image.Image:
    """Normalised latents [1, C, h, w] as a small picture."""
    vae = pipe.vae
    side = max(latents.shape[-2:]) * pipe.vae_scale_factor
    pool = max(1, math.ceil(side / PREVIEW_SIDE))
    if pool > 1:
        latents = F.avg_pool2d(latents, pool)
    latents = latents / vae.config.scaling_factor + (getattr(vae.config, "shift_factor", None) or 0.0)
    pixels = vae.decode(latents.to(vae.device, vae.dtype)).sample
    return pipe.image_processor.postprocess(pixels.float(), output_type="pil")[0]


class Previewer:
    """Turns a pipeline's step-end latents into previews every `every` steps."""

    def __init__(
        self, pipe: DiffusionPipeline, spec: ModelSpec, width: int, height: int, total: int, every: int, index: int = 0
    ) -> None:
        self.pipe, self.spec, self.width, self.height = pipe, spec, width, height
        self.total, self.every, self.index = total, every, index
        self._before: torch.Tensor | None = None

    def __call__(self, done: int, latents: torch.Tensor) -> Preview | None:
        """A preview after step `done` (1-based), or None between previews."""
        now = unpacked(self.pipe, self.spec, latents, self.width, self.height).float()
        before, self._before = self._before, now.clone()
        if done % self.every and done != self.total:
            return None
        return Preview(decoded(self.pipe, self._predicted(now, before)), done, self.total, self.index)

    def _predicted(self, now: torch.Tensor, before: torch.Tensor | None) -> torch.Tensor:
        """The clean image a rectified flow's last step points at: x0 = x - σ·v, v from the step
        just taken ((x_now - x_before) / (σ_now - σ_before)); the latents as they are otherwise."""
        scheduler = self.pipe.scheduler
        sigmas, index = getattr(scheduler, "sigmas", None), getattr(scheduler, "step_index", None)
        if self.spec.flow is None or before is None or sigmas is None or not index:
            return now
        sigma_now, sigma_before = float(sigmas[index]), float(sigmas[index - 1])
        if sigma_now == sigma_before:
            return now
        velocity = (now - before) / (sigma_now - sigma_before)
        return now - sigma_now * velocity


def with_previews(
    call: Callable[[Callable[[int, torch.Tensor], None]], Any], previewer: Previewer
) -> Iterator[Preview | Any]:
    """Runs `call(watch)` on a worker thread — `watch(done, latents)` is its step hook — and
    yields each preview as it comes, then the call's result (last). An exception in the call
    (a cancel, out of memory) is raised here; the call has always ended when this does."""
    items: queue.Queue[tuple[str, Any]] = queue.Queue()

    def watch(done: int, latents: torch.Tensor) -> None:
        preview = previewer(done, latents)
        if preview is not None:
            items.put(("preview", preview))

    def work() -> None:
        try:
            items.put(("result", call(watch)))
        except BaseException as error:  # handed to the caller's thread, raised there
            items.put(("error", error))

    # The caller's context (a request's progress reporting) goes along with the work.
    worker = threading.Thread(target=contextvars.copy_context().run, args=(work,), daemon=True, name="denoise")
    worker.start()
    try:
        while True:
            kind, item = items.get()
            if kind == "preview":
                yield item
                continue
            if kind == "error":
                raise item
            yield item
            return
    finally:
        # A caller that stops early (a closed request) still waits for the call to end: the model's
        # lease and its hooks must outlive the work on it (a cancel ends it at the next step).
        worker.join()
