"""Multi-prompt video by DiTCtrl (Cai et al., CVPR 2025; TencentARC/DiTCtrl), training-free on
a video DiT: CogVideoX (one attention over [text, video]) or Wan (video self-attention).

- Segments: P prompts, T transition segments between neighbours, S = P + T(P - 1) segments of
  the model's own length L (latent frames) overlapping by O; the video is L + (S - 1)(L - O)
  latent frames long. A transition's text embedding is the two prompts' linear interpolation.
  A prompt that should last longer takes several segments of its own in a row.
- Latent blending: one noise for the whole video (overlapping frames share it); at every step
  each adjacent pair (k, k + 1) is denoised in one batch and both outputs are accumulated with
  the triangular weights min((i + 1/2) 2/L, 2 - (i + 1/2) 2/L), normalised per frame; the
  scheduler then steps the whole video once. (The model's output and its x0 estimate differ
  per frame by the same affine map at one timestep, so blending either is the same.)
- KV sharing: in the pair's batch the segment k + 1 branch's queries attend the segment k
  branch's keys and values, in the paper's steps and layers (steps 2-25 of 50, layers 25-29 of
  30 on CogVideoX-2B, scaled by step count and depth); optionally mask-guided by the subject
  words' attention. On Wan the same sharing acts on the video self-attention.
- One prompt and one segment is plain text-to-video: the same code, no pairs.
- Extend: a finished video's last frames, encoded, are the first O latent frames of the next
  plan's first segment; they are held (noised to each step's level) while the rest denoises.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from diffusers import CogVideoXDPMScheduler, DiffusionPipeline
from PIL import Image

from studio.attention import (
    AttentionController,
    CaptureBranch,
    MaskGuidedSharing,
    RecordTextAttention,
    ShareKeysValues,
    controlled,
)
from studio.attention.control import AttentionEdit, BranchCache
from studio.attention.processors import video_layers
from studio.attention.tokens import word_token_indices
from studio.catalogue import ModelSpec
from studio.errors import InvalidRequest
from studio.generation import validate_sampling
from studio.params import SamplingSettings, StepCallback, StepReporter, prompt_text, setting
from studio.registry import Registry
from studio.runner import Method, register

MAX_PROMPTS = 8
MAX_SEGMENTS = 48
# DiTCtrl on CogVideoX-2B: 13 latent frames a segment overlapping by 9 ("recommended for future
# comparisons"), KV sharing in steps [2, 25) of 50 and layers [25, 30) of 30.
PAPER_OVERLAP = 9 / 13
PAPER_SHARED_STEPS = (2 / 50, 25 / 50)
PAPER_SHARED_LAYERS = (25 / 30, 1.0)


@dataclass(frozen=True, kw_only=True)
class VideoSettings(SamplingSettings):
    prompts: tuple[str, ...]
    # Seconds each prompt should last (rounded to whole segments); empty: one segment each.
    seconds: tuple[float, ...] = ()
    negative_prompt: str = ""
    fps: int = setting("Frames per second", 8, 1, 60, 1, info="of the written video")
    transitions: int = setting("Transition segments", 2, 0, 4, 1, info="between neighbouring prompts")
    overlap: float = setting(
        "Overlap", round(PAPER_OVERLAP, 2), 0.0, 0.9, 0.01, info="share of a segment the next one overlaps"
    )
    kv_sharing: bool = True
    # Words naming the subject in every prompt: mask-guided KV sharing; empty: plain sharing.
    subject: str = ""
    mask_threshold: float = setting("Mask threshold", 0.3, 0.05, 0.95, 0.05)
    preview_every: int = setting("Preview every", 5, 0, 100, 1, info="steps between previews (0: none)")

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "prompts": list(self.prompts), "seconds": list(self.seconds)}


@dataclass(frozen=True)
class Segment:
    start: int  # first latent frame
    first: int  # prompt index
    second: int  # the next prompt's index; equal to `first` in a prompt's own segment
    mix: float  # the next prompt's share of the text embedding

    def label(self, prompts: Sequence[str]) -> str:
        if self.first == self.second:
            return prompts[self.first]
        return f"transition {self.first + 1} → {self.second + 1}"


@dataclass(frozen=True)
class SegmentPlan:
    segments: tuple[Segment, ...]
    length: int  # latent frames a segment
    overlap: int  # latent frames shared by neighbouring segments

    @property
    def stride(self) -> int:
        return self.length - self.overlap

    @property
    def latent_frames(self) -> int:
        return self.length + (len(self.segments) - 1) * self.stride

    def window(self, index: int) -> slice:
        start = self.segments[index].start
        return slice(start, start + self.length)

    def groups(self) -> list[tuple[int, ...]]:
        """What each transformer call denoises: adjacent pairs, or the lone segment."""
        if len(self.segments) == 1:
            return [(0,)]
        return [(k, k + 1) for k in range(len(self.segments) - 1)]

    def weight_sums(self) -> torch.Tensor:
        """Per latent frame, the sum of the triangular weights every group adds there."""
        sums = torch.zeros(self.latent_frames)
        weights = triangular_weights(self.length)
        for group in self.groups():
            for index in group:
                sums[self.window(index)] += weights
        return sums

    def owners(self) -> list[int]:
        """Per latent frame, the segment whose triangular weight is largest there (earlier wins ties)."""
        weights = triangular_weights(self.length)
        best = [(-1.0, 0)] * self.latent_frames
        for index in range(len(self.segments)):
            for offset, frame in enumerate(range(self.latent_frames)[self.window(index)]):
                if weights[offset] > best[frame][0]:
                    best[frame] = (float(weights[offset]), index)
        return [index for _, index in best]

    def timeline(self, prompts: Sequence[str], fps: int, temporal: int) -> list[tuple[str, float, float]]:
        """(what, start s, end s) for each run of frames one prompt or transition covers."""
        spans: list[tuple[str, float, float]] = []
        for frame, owner in enumerate(self.owners()):
            first, last = latent_to_frames(frame, temporal)
            label = self.segments[owner].label(prompts)
            start, end = first / fps, (last + 1) / fps
            if spans and spans[-1][0] == label:
                spans[-1] = (label, spans[-1][1], end)
            else:
                spans.append((label, start, end))
        return spans


def latent_to_frames(latent: int, temporal: int) -> tuple[int, int]:
    """The first and last video frame a latent frame decodes to (the causal VAE's first latent
    frame is one frame, each later one `temporal` frames)."""
    if latent == 0:
        return 0, 0
    return temporal * (latent - 1) + 1, temporal * latent


def triangular_weights(length: int) -> torch.Tensor:
    position = (torch.arange(length, dtype=torch.float32) + 0.5) * 2.0 / length
    return torch.minimum(position, 2.0 - position)


def plan_segments(repeats: Sequence[int], transitions: int, length: int, overlap: int) -> SegmentPlan:
    """`repeats[p]` segments of prompt p, then `transitions` segments towards p + 1, and so on."""
    if not 0 <= overlap < length:
        raise InvalidRequest(f"The overlap must be at least 0 and less than a segment ({length} latent frames).")
    pieces: list[tuple[int, int, float]] = []
    for prompt, count in enumerate(repeats):
        if count < 1:
            raise InvalidRequest("Every prompt needs at least one segment.")
        if prompt:
            pieces += [(prompt - 1, prompt, step / (transitions + 1)) for step in range(1, transitions + 1)]
        pieces += [(prompt, prompt, 0.0)] * count
    stride = length - overlap
    return SegmentPlan(tuple(Segment(k * stride, a, b, mix) for k, (a, b, mix) in enumerate(pieces)), length, overlap)


def shared_steps(steps: int) -> range:
    start, end = (math.floor(fraction * steps + 0.5) for fraction in PAPER_SHARED_STEPS)
    return range(start, max(end, start + 1))


def shared_layers(layers: Sequence[str]) -> list[str]:
    depth = len(layers)
    start = min(math.floor(PAPER_SHARED_LAYERS[0] * depth + 0.5), depth - 1)
    return list(layers[start:])


# --- Validation and the plan ------------------------------------------------------------------


# Frames a latent frame stands for after the first: CogVideoX's and Wan's VAEs both compress 4x
# in time (a loaded pipeline says so itself, as vae_scale_factor_temporal).
TEMPORAL_COMPRESSION = 4


def segment_length(spec: ModelSpec, temporal: int = TEMPORAL_COMPRESSION) -> int:
    """Latent frames in one segment: the model's own clip length."""
    return (spec.frames - 1) // temporal + 1


def validate(settings: VideoSettings, spec: ModelSpec) -> VideoSettings:
    if spec.kind != "video":
        raise InvalidRequest(f"{spec.name} makes images; pick a video model (CogVideoX or Wan) for video.")
    prompts = tuple(settings.prompts)
    if not prompts or all(not isinstance(p, str) or not p.strip() for p in prompts):
        raise InvalidRequest("Write a prompt first.")
    if len(prompts) > MAX_PROMPTS:
        raise InvalidRequest(f"At most {MAX_PROMPTS} prompts make one video.")
    for number, prompt in enumerate(prompts, start=1):
        if not isinstance(prompt, str) or not prompt.strip():
            raise InvalidRequest(f"Prompt {number} is empty: write it or remove its row.")
    prompts = tuple(prompt_text(p, f"prompt {n}") for n, p in enumerate(prompts, start=1))
    if settings.seconds and len(settings.seconds) != len(prompts):
        raise InvalidRequest("Give every prompt a duration, or none.")
    for number, seconds in enumerate(settings.seconds, start=1):
        if not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds <= 0:
            raise InvalidRequest(f"Prompt {number}'s duration must be a positive number of seconds.")
    negative = prompt_text(settings.negative_prompt, "a negative prompt") if settings.negative_prompt else ""
    return replace(validate_sampling(settings, spec), prompts=prompts, negative_prompt=negative)


def segment_overlap(settings: VideoSettings, length: int) -> int:
    """Latent frames neighbouring segments share: the settings' fraction of a segment."""
    return min(round(settings.overlap * length), length - 1)


def segment_seconds(settings: VideoSettings, spec: ModelSpec, temporal: int = TEMPORAL_COMPRESSION) -> float:
    """How long one more segment makes the video: its stride of latent frames, `temporal` frames each."""
    length = segment_length(spec, temporal)
    return (length - segment_overlap(settings, length)) * temporal / max(settings.fps, 1)


def build_plan(settings: VideoSettings, spec: ModelSpec, temporal: int = TEMPORAL_COMPRESSION) -> SegmentPlan:
    """The segment plan for the settings, durations rounded to whole segments; InvalidRequest
    when a duration is shorter than one segment or the plan is too long."""
    length = segment_length(spec, temporal)
    overlap = segment_overlap(settings, length)
    repeats = [1] * len(settings.prompts)
    if settings.seconds:
        one_segment = segment_seconds(settings, spec, temporal)
        for number, seconds in enumerate(settings.seconds, start=1):
            if seconds < one_segment * 0.5:
                raise InvalidRequest(
                    f"Prompt {number} lasts {seconds:g} s, less than one segment ({one_segment:.2f} s at "
                    f"{settings.fps} fps): make it longer or raise the overlap."
                )
        repeats = [max(1, round(seconds / one_segment)) for seconds in settings.seconds]
    plan = plan_segments(repeats, settings.transitions, length, overlap)
    if len(plan.segments) > MAX_SEGMENTS:
        raise InvalidRequest(
            f"This plan needs {len(plan.segments)} segments; at most {MAX_SEGMENTS} fit one video: shorter "
            "durations, fewer transitions or a smaller overlap."
        )
    return plan


def frame_tokens(pipe: DiffusionPipeline, settings: VideoSettings) -> int:
    """Video tokens a latent frame makes: its latent pixels over the transformer's spatial patch."""
    patch = pipe.transformer.config.patch_size
    patch = patch if isinstance(patch, int) else patch[-1]
    spatial = pipe.vae_scale_factor_spatial
    return (settings.height // spatial // patch) * (settings.width // spatial // patch)


def estimated_bytes(
    pipe: DiffusionPipeline, spec: ModelSpec, plan: SegmentPlan, settings: VideoSettings, rows: int
) -> int:
    """Working memory beyond the weights: one group's activations (tokens x width x rows, about
    twelve tensors of that size live at once, explicit attention when mask-guided), the video's
    latents and the decoded frames."""
    config = pipe.transformer.config
    width = config.num_attention_heads * config.attention_head_dim
    spatial = pipe.vae_scale_factor_spatial
    tokens = plan.length * frame_tokens(pipe, settings) + spec.text_length
    activations = 12 * rows * tokens * width * 4
    if settings.subject:
        activations += rows * 4 * tokens * tokens * 4
    frames = latent_to_frames(plan.latent_frames - 1, pipe.vae_scale_factor_temporal)[1] + 1
    decoded = frames * settings.height * settings.width * 3 * 4 * 3
    latents = 6 * plan.latent_frames * 16 * (settings.height // spatial) * (settings.width // spatial) * 4
    return activations + decoded + latents


# --- Sampling ---------------------------------------------------------------------------------


@dataclass
class SegmentPreview:
    """What the video looks like so far: one predicted frame per segment (the middle of its
    window), after `step` of `steps` denoising steps."""

    step: int
    steps: int
    frames: list[np.ndarray]  # each [H, W, 3] uint8


@dataclass
class VideoResult:
    frames: np.ndarray  # [frames, H, W, 3] uint8
    fps: int
    plan: SegmentPlan
    settings: VideoSettings
    seconds: float
    timeline: list[tuple[str, float, float]] = field(default_factory=list)


def text_embeddings(pipe: DiffusionPipeline, prompts: Sequence[str], length: int) -> torch.Tensor:
    """The family pipeline's own T5 embedding of each prompt, [P, tokens, dim]."""
    return pipe._get_t5_prompt_embeds(
        prompt=list(prompts),
        max_sequence_length=length,
        device=pipe.transformer.device,
        dtype=pipe.transformer.dtype,
    )


def segment_texts(plan: SegmentPlan, embeddings: torch.Tensor) -> torch.Tensor:
    """Each segment's text embedding; transitions interpolate their two prompts'."""
    return torch.stack([(1 - s.mix) * embeddings[s.first] + s.mix * embeddings[s.second] for s in plan.segments])


def sharing_edits(
    settings: VideoSettings,
    all_layers: list[str],
    steps: range,
    guided: bool,
    subject_tokens: list[int],
    tokens_per_frame: int,
) -> list[AttentionEdit]:
    """KV sharing in a pair's batch, [uncond k, uncond k+1, cond k, cond k+1] (or the cond half):
    the k + 1 rows' queries attend the k rows' keys and values in the shared layers and steps;
    with subject tokens, mask-guided by the conditional rows' attention to them."""
    if not settings.kv_sharing:
        return []
    layers = set(shared_layers(all_layers))
    source = [0, 2] if guided else [0]
    target = [1, 3] if guided else [1]
    cache = BranchCache(history=False)
    capture = CaptureBranch(cache=cache, layers=layers, steps=steps, rows=source)
    if not subject_tokens:
        return [capture, ShareKeysValues(source=cache, layers=layers, steps=steps, rows=target)]
    recorder = RecordTextAttention(tokens=subject_tokens, record_rows=[source[-1], target[-1]])
    sharing = MaskGuidedSharing(
        source=cache,
        recorder=recorder,
        threshold=settings.mask_threshold,
        frame_tokens=tokens_per_frame,
        layers=layers,
        steps=steps,
        rows=target,
    )
    return [recorder, capture, sharing]


def scheduler_step(
    pipe: DiffusionPipeline,
    output: torch.Tensor,
    timestep: torch.Tensor,
    latents: torch.Tensor,
    state: dict[str, Any],
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One step of the pipeline's own scheduler on the whole video: the next latents and the
    x0 estimate (where the scheduler gives one)."""
    scheduler = pipe.scheduler
    if isinstance(scheduler, CogVideoXDPMScheduler):  # CogVideoX-5b: second order, keeps its last x0
        latents, x0 = scheduler.step(
            output,
            state.get("old_x0"),
            timestep,
            state.get("previous_t"),
            latents,
            generator=generator,
            return_dict=False,
        )
        state["old_x0"], state["previous_t"] = x0, timestep
        return latents, x0
    result = scheduler.step(output, timestep, latents, return_dict=False)
    return result[0], (result[1] if len(result) > 1 else None)


@dataclass
class Sampler:
    """DiTCtrl's loop over one video: the pipeline's scheduler and transformer, the plan, the
    texts, the sharing edits and the held prefix of an extended video."""

    pipe: DiffusionPipeline
    spec: ModelSpec
    plan: SegmentPlan
    settings: VideoSettings
    texts: torch.Tensor  # [S, tokens, dim]
    negative: torch.Tensor  # [tokens, dim]
    prefix: torch.Tensor | None = None  # [1, O, C, h, w]

    @property
    def guided(self) -> bool:
        return self.settings.guidance > 1.0

    def rows(self, group: tuple[int, ...]) -> torch.Tensor:
        conditional = self.texts[list(group)]
        if not self.guided:
            return conditional
        return torch.cat([self.negative.expand(len(group), -1, -1), conditional])

    def model_output(
        self, latents: torch.Tensor, timestep: torch.Tensor, reporter: StepReporter | None = None
    ) -> torch.Tensor:
        """The blended, guided model output over the whole video at one step (the reporter
        counts each group's call)."""
        plan, video = self.plan, self.spec.family.video
        assert video is not None
        blended = torch.zeros_like(latents)
        weights = triangular_weights(plan.length).to(latents).view(1, -1, 1, 1, 1)
        for group in plan.groups():
            windows = torch.cat([latents[:, plan.window(index)] for index in group])
            if self.guided:
                windows = torch.cat([windows, windows])
            batch = windows.shape[0]
            output = video.predict(self.pipe, windows, timestep.expand(batch), self.rows(group)).float()
            if self.guided:
                uncond, cond = output.chunk(2)
                output = uncond + self.settings.guidance * (cond - uncond)
            for row, index in enumerate(group):
                blended[:, plan.window(index)] += output[row : row + 1] * weights
            if reporter is not None:
                reporter.step()
        sums = plan.weight_sums().to(latents).view(1, -1, 1, 1, 1)
        return blended / sums

    def run(
        self, latents: torch.Tensor, reporter: StepReporter, edits: list[AttentionEdit], generator: torch.Generator
    ) -> Iterator[SegmentPreview | torch.Tensor]:
        """Denoise; yields previews along the way and the final latents last."""
        pipe, settings = self.pipe, self.settings
        pipe.scheduler.set_timesteps(settings.steps, device=latents.device)
        timesteps = pipe.scheduler.timesteps
        controller = AttentionController(edits)
        state: dict[str, Any] = {}
        prefix_noise = None if self.prefix is None else torch.randn(self.prefix.shape, generator=generator)
        with controlled(pipe.transformer, controller, self.spec.family.token_order):
            for index, timestep in enumerate(timesteps):
                controller.set_step(index)
                if self.prefix is not None and prefix_noise is not None:
                    held = self.prefix.shape[1]
                    latents[:, :held] = pipe.scheduler.add_noise(
                        self.prefix, prefix_noise.to(latents), timestep.reshape(1)
                    )
                output = self.model_output(pipe.scheduler.scale_model_input(latents, timestep), timestep, reporter)
                latents, x0 = scheduler_step(pipe, output, timestep, latents, state, generator)
                last = index == len(timesteps) - 1
                if (
                    x0 is not None
                    and settings.preview_every
                    and ((index + 1) % settings.preview_every == 0)
                    and not last
                ):
                    yield self.preview(x0, index + 1)
        if self.prefix is not None:
            latents[:, : self.prefix.shape[1]] = self.prefix
        yield latents

    def preview(self, x0: torch.Tensor, step: int) -> SegmentPreview:
        """The middle latent frame of each segment's window, decoded on its own."""
        video = self.spec.family.video
        assert video is not None
        frames = []
        for index in range(len(self.plan.segments)):
            middle = self.plan.segments[index].start + self.plan.length // 2
            decoded = video.decode(self.pipe, x0[:, middle : middle + 1].clone())
            frames.append(as_frames(decoded)[0])
        return SegmentPreview(step, self.settings.steps, frames)


def as_frames(decoded: np.ndarray) -> np.ndarray:
    return (np.clip(decoded, 0, 1) * 255).round().astype(np.uint8)


def encoded_tail(pipe: DiffusionPipeline, spec: ModelSpec, frames: np.ndarray, latent_frames: int) -> torch.Tensor:
    """The last `latent_frames` latent frames' worth of a video's frames, encoded: what the next
    plan's first segment continues from."""
    video = spec.family.video
    assert video is not None
    count = latent_to_frames(latent_frames - 1, pipe.vae_scale_factor_temporal)[1] + 1
    if len(frames) < count:
        raise InvalidRequest(
            f"The video to extend has {len(frames)} frames; continuing it takes at least {count} (its overlap)."
        )
    tail = torch.from_numpy(np.ascontiguousarray(frames[-count:])).float() / 127.5 - 1.0
    return video.encode(pipe, tail.permute(3, 0, 1, 2).unsqueeze(0).to(pipe.transformer.device))


def check_previous(previous: Any, settings: VideoSettings) -> np.ndarray:
    if not isinstance(previous, np.ndarray) or previous.ndim != 4 or previous.shape[-1] != 3:
        raise InvalidRequest("The video to extend must be frames of RGB pictures.")
    if previous.shape[1:3] != (settings.height, settings.width):
        raise InvalidRequest(
            f"The video to extend is {previous.shape[2]}×{previous.shape[1]}; the new part must be the same size "
            f"(it is set to {settings.width}×{settings.height})."
        )
    return previous.astype(np.uint8)


def multi_prompt_video(
    registry: Registry,
    settings: VideoSettings,
    previous: np.ndarray | None = None,
    on_step: StepCallback | None = None,
    cancel: threading.Event | None = None,
) -> Iterator[SegmentPreview | VideoResult]:
    """One continuous video following `settings.prompts` (DiTCtrl); with `previous` (frames of
    a finished video of the same size), the new part continues it and the result is the whole.
    Yields previews while denoising and the VideoResult last."""
    spec = registry.catalogue.get(settings.model)
    settings = validate(settings, spec)
    if previous is not None:
        previous = check_previous(previous, settings)
    started = time.perf_counter()
    with registry.use(spec.id, "t2i") as pipe:
        plan = build_plan(settings, spec, pipe.vae_scale_factor_temporal)
        rows = 4 if settings.guidance > 1.0 else 2
        needed = estimated_bytes(pipe, spec, plan, settings, rows)
        budget = registry.budget_bytes
        if budget is not None and needed > budget:
            raise InvalidRequest(
                f"This video needs about {needed / 2**30:.1f} GiB of working memory beyond the model and the budget "
                f"is {budget / 2**30:.1f} GiB: fewer segments, a smaller size or no subject mask."
            )
        # Progress counts every group's transformer call: step by step, pair by pair.
        reporter = StepReporter(settings.steps * len(plan.groups()), on_step, cancel)
        reporter.begin()
        yield from _sample(pipe, spec, plan, settings, previous, reporter, started)


def _sample(
    pipe: DiffusionPipeline,
    spec: ModelSpec,
    plan: SegmentPlan,
    settings: VideoSettings,
    previous: np.ndarray | None,
    reporter: StepReporter,
    started: float,
) -> Iterator[SegmentPreview | VideoResult]:
    video = spec.family.video
    assert video is not None
    text_length = spec.text_length
    with torch.inference_mode():
        embeddings = text_embeddings(pipe, [*settings.prompts, settings.negative_prompt], text_length)
        sampler = Sampler(pipe, spec, plan, settings, segment_texts(plan, embeddings[:-1]), embeddings[-1])
        if previous is not None and plan.overlap:
            sampler.prefix = encoded_tail(pipe, spec, previous, plan.overlap)
        spatial = pipe.vae_scale_factor_spatial
        generator = torch.Generator("cpu").manual_seed(settings.seed)
        shape = [
            1,
            plan.latent_frames,
            pipe.transformer.config.in_channels,
            settings.height // spatial,
            settings.width // spatial,
        ]
        if video.channels_first:  # drawn in the family's own order, so one segment is its pipeline's video
            latents = torch.randn([1, shape[2], shape[1], *shape[3:]], generator=generator).transpose(1, 2)
        else:
            latents = torch.randn(shape, generator=generator)
        latents = latents.to(pipe.transformer.device, pipe.transformer.dtype)
        latents = latents * pipe.scheduler.init_noise_sigma
        subject = subject_tokens(pipe, spec, settings) if settings.subject else []
        layers, steps = video_layers(pipe.transformer), shared_steps(settings.steps)
        tokens = frame_tokens(pipe, settings)
        # A lone segment has no neighbour to share with.
        shares = len(plan.segments) > 1
        edits = sharing_edits(settings, layers, steps, sampler.guided, subject, tokens) if shares else []
        final = None
        for item in sampler.run(latents, reporter, edits, generator):
            if isinstance(item, SegmentPreview):
                yield item
            else:
                final = item
        assert final is not None
        frames = as_frames(video.decode(pipe, final))
    if previous is not None and plan.overlap:
        # The held frames are the previous video's own: keep its pixels, add what follows.
        kept = latent_to_frames(plan.overlap - 1, pipe.vae_scale_factor_temporal)[1] + 1
        frames = np.concatenate([previous, frames[kept:]])
    elif previous is not None:
        frames = np.concatenate([previous, frames])
    timeline = plan.timeline(settings.prompts, settings.fps, pipe.vae_scale_factor_temporal)
    yield VideoResult(frames, settings.fps, plan, settings, time.perf_counter() - started, timeline)


def subject_tokens(pipe: DiffusionPipeline, spec: ModelSpec, settings: VideoSettings) -> list[int]:
    """The subject words' token positions, which must be the same in every prompt (mask-guided
    sharing reads the same tokens in neighbouring segments, as DiTCtrl's ref and cur tokens)."""
    positions = [
        word_token_indices(pipe, spec.family, prompt, settings.subject, spec.text_length) for prompt in settings.prompts
    ]
    if any(p != positions[0] for p in positions):
        raise InvalidRequest(
            f"The subject “{settings.subject}” must sit at the same place in every prompt (write the prompts alike up "
            "to it), or leave the subject empty for plain KV sharing."
        )
    return positions[0]


def _run(
    registry: Registry,
    settings: VideoSettings,
    inputs: Mapping[str, Any],
    on_step: StepCallback | None,
    cancel: threading.Event | None,
) -> Iterator[SegmentPreview | VideoResult]:
    return multi_prompt_video(registry, settings, inputs.get("previous"), on_step, cancel)


def key_frames(video: VideoResult, count: int = 3) -> list[Image.Image]:
    """The first, middle and last frames (`count` evenly spaced): a video seen at a glance."""
    last = len(video.frames) - 1
    return [Image.fromarray(video.frames[round(i * last / max(1, count - 1))]) for i in range(count)]


register(
    Method(
        "multi_prompt_video",
        VideoSettings,
        _run,
        "One continuous video following a sequence of prompts (DiTCtrl: latent blending of overlapping segments, "
        "KV sharing between neighbours); one prompt is plain text-to-video; with a previous video, continues it.",
        inputs={"previous": "frames of a finished video to continue (optional)"},
        pictures=lambda items: key_frames(next(item for item in items if isinstance(item, VideoResult))),
    )
)
