"""Multi-prompt video (DiTCtrl): the segment plan's arithmetic, the blending weights, the shared
noise, KV sharing exactly where the paper puts it, one prompt equal to the family's own pipeline,
and the refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from studio.attention import ShareKeysValues
from studio.attention.processors import video_layers
from studio.errors import InvalidRequest
from studio.methods import video
from studio.methods.video import VideoResult, VideoSettings, multi_prompt_video, plan_segments, triangular_weights
from studio.registry import Registry
from tests.support import pipeline_of, random_per_family, trained
from tests.support import video as makes_video

VIDEO_MODELS = random_per_family(makes_video)


@pytest.fixture(scope="module")
def registry(catalogue) -> Registry:
    return Registry(catalogue, device="cpu")


def result_of(registry: Registry, settings: VideoSettings, previous: np.ndarray | None = None) -> VideoResult:
    items = list(multi_prompt_video(registry, settings, previous))
    assert isinstance(items[-1], VideoResult)
    return items[-1]


def small(model: str, prompts: tuple[str, ...], **changes) -> VideoSettings:
    defaults = {"steps": 4, "guidance": 6.0, "width": 64, "height": 64, "seed": 3}
    return VideoSettings(model=model, prompts=prompts, **(defaults | changes))


def test_both_video_families_have_a_random_built_in(catalogue):
    assert {catalogue.get(model).family.name for model in VIDEO_MODELS} == {"cogvideox", "wan"}


@pytest.mark.parametrize("prompts", [1, 2, 3, 4])
@pytest.mark.parametrize("transitions", [0, 1, 2])
def test_segment_counts_and_lengths_follow_the_paper(prompts, transitions):
    plan = plan_segments([1] * prompts, transitions, length=13, overlap=9)
    segments = prompts + transitions * (prompts - 1)
    assert len(plan.segments) == segments
    assert plan.latent_frames == 13 + (segments - 1) * (13 - 9)
    assert [s.start for s in plan.segments] == [4 * k for k in range(segments)]
    # Each prompt's own segment, then its transitions towards the next, interpolating evenly.
    own = [s.first for s in plan.segments if s.first == s.second]
    assert own == list(range(prompts))
    mixes = [round(s.mix, 4) for s in plan.segments if s.first != s.second]
    assert mixes == [round(step / (transitions + 1), 4) for step in range(1, transitions + 1)] * (prompts - 1)
    assert len(plan.groups()) == max(1, segments - 1)


def test_longer_prompts_take_more_segments_of_their_own():
    plan = plan_segments([2, 1, 3], transitions=1, length=5, overlap=3)
    labels = [(s.first, s.second) for s in plan.segments]
    assert labels == [(0, 0), (0, 0), (0, 1), (1, 1), (1, 2), (2, 2), (2, 2), (2, 2)]
    assert plan.latent_frames == 5 + 7 * 2


def test_triangular_weights_are_the_papers_and_blending_sums_to_one_on_every_frame():
    weights = triangular_weights(13)
    assert weights[0] == pytest.approx(1 / 13) and weights[6] == pytest.approx(1.0)
    assert torch.allclose(weights, weights.flip(0))
    for repeats, transitions, overlap in [([1, 1], 2, 9), ([1, 1, 1], 1, 6), ([1], 0, 0), ([2, 1], 2, 12)]:
        plan = plan_segments(repeats, transitions, 13, overlap)
        shares = torch.zeros(plan.latent_frames)
        sums = plan.weight_sums()
        for group in plan.groups():
            for index in group:
                shares[plan.window(index)] += weights / sums[plan.window(index)]
        assert torch.allclose(shares, torch.ones(plan.latent_frames), atol=1e-6)


def test_a_bad_overlap_or_segment_count_is_refused():
    with pytest.raises(InvalidRequest, match="overlap"):
        plan_segments([1, 1], 2, length=5, overlap=5)
    with pytest.raises(InvalidRequest, match="at least one segment"):
        plan_segments([1, 0], 2, length=5, overlap=3)


@pytest.mark.parametrize("model", VIDEO_MODELS)
def test_one_prompt_is_exactly_the_familys_own_text_to_video(registry, model):
    spec = registry.catalogue.get(model)
    result = result_of(registry, small(model, ("a red circle on the left, gray background",)))
    pipe = pipeline_of(registry, model)
    with torch.inference_mode():
        frames = pipe(
            "a red circle on the left, gray background", num_frames=spec.frames, height=64, width=64,
            num_inference_steps=4, guidance_scale=6.0, generator=torch.Generator().manual_seed(3),
            max_sequence_length=spec.text_length, output_type="np",
        ).frames[0]  # fmt: skip
    expected = (np.clip(frames, 0, 1) * 255).round().astype(np.uint8)
    assert result.frames.shape == expected.shape == (spec.frames, 64, 64, 3)
    assert np.abs(result.frames.astype(int) - expected.astype(int)).max() <= 1
    assert len(result.plan.segments) == 1


@pytest.mark.parametrize("model", VIDEO_MODELS)
def test_the_whole_video_starts_from_one_noise_so_overlapping_frames_share_it(registry, model, monkeypatch):
    seen: list[torch.Tensor] = []
    original = video.Sampler.model_output

    def spy(self, latents, timestep, controller):
        if not seen:
            seen.append(latents.clone())
        return original(self, latents, timestep, controller)

    monkeypatch.setattr(video.Sampler, "model_output", spy)
    result = result_of(registry, small(model, ("a red circle", "a blue square"), transitions=1))
    plan = result.plan
    first = seen[0]
    assert first.shape[1] == plan.latent_frames
    for k in range(len(plan.segments) - 1):
        left, right = first[:, plan.window(k)], first[:, plan.window(k + 1)]
        assert torch.equal(left[:, plan.stride :], right[:, : plan.overlap])


@pytest.mark.parametrize("model", VIDEO_MODELS)
def test_kv_sharing_acts_exactly_in_the_papers_layers_and_steps(registry, model, monkeypatch):
    calls: set[tuple[str, int]] = set()
    original = ShareKeysValues.on_qkv

    def spy(self, call, q, k, v):
        calls.add((call.layer, call.step))
        source_k = self.source.get(call, k)[1]
        q, k, v = original(self, call, q, k, v)
        assert torch.equal(k[self.batch], source_k)  # the next segment's rows hold the previous one's keys
        return q, k, v

    monkeypatch.setattr(ShareKeysValues, "on_qkv", spy)
    settings = small(model, ("a red circle", "a blue square"), steps=10)
    shared = result_of(registry, settings)
    layers = video_layers(pipeline_of(registry, model).transformer)
    expected_layers = video.shared_layers(layers)
    assert calls == {(layer, step) for layer in expected_layers for step in video.shared_steps(10)}
    # 2-25 of 50 steps, layers 25-29 of 30, scaled.
    assert list(video.shared_steps(50)) == list(range(2, 25))
    assert video.shared_layers([f"l{i}" for i in range(30)]) == [f"l{i}" for i in range(25, 30)]
    calls.clear()
    unshared = result_of(registry, small(model, ("a red circle", "a blue square"), steps=10, kv_sharing=False))
    assert not calls
    assert not np.array_equal(shared.frames, unshared.frames)


@pytest.mark.parametrize("model", VIDEO_MODELS)
def test_mask_guided_sharing_runs_and_differs_from_plain_sharing(registry, model):
    prompts = ("a red circle on the left", "a red circle on the right")
    plain = result_of(registry, small(model, prompts, steps=6))
    guided = result_of(registry, small(model, prompts, steps=6, subject="red circle"))
    assert guided.frames.shape == plain.frames.shape
    assert not np.array_equal(guided.frames, plain.frames)


def test_the_subject_must_sit_alike_in_every_prompt(registry):
    with pytest.raises(InvalidRequest, match="same place"):
        result_of(registry, small(VIDEO_MODELS[0], ("a red circle", "now a big red circle"), subject="red circle"))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"prompts": ()}, "Write a prompt"),
        ({"prompts": ("a red circle", "  ")}, "Prompt 2 is empty"),
        ({"prompts": ("a", "b"), "seconds": (1.0,)}, "every prompt a duration"),
        ({"prompts": ("a", "b"), "seconds": (0.01, 2.0)}, "less than one segment"),
        ({"prompts": ("a",), "seconds": (-1.0,)}, "positive number"),
        ({"prompts": ("a",), "steps": 0}, "Steps"),
        ({"prompts": ("a",) * 9}, "At most 8 prompts"),
    ],
)
def test_bad_plans_are_refused_in_one_sentence(registry, change, message):
    with pytest.raises(InvalidRequest, match=message):
        result_of(registry, small(VIDEO_MODELS[0], **{"prompts": ("a red circle",)} | change))


def test_an_image_model_is_refused_for_video_and_a_video_model_for_images(registry):
    with pytest.raises(InvalidRequest, match="makes images"):
        result_of(registry, small("tiny-flux-dev", ("a red circle",)))
    from studio.generation import GenerationSettings, generate

    with pytest.raises(InvalidRequest, match="makes videos"):
        list(generate(registry, GenerationSettings(model=VIDEO_MODELS[0], prompt="a red circle")))


def test_a_plan_beyond_the_memory_budget_is_refused_with_the_figure(catalogue):
    tight = Registry(catalogue, device="cpu", memory_budget_gb=0.1)
    with pytest.raises(InvalidRequest, match=r"GiB of working memory"):
        result_of(tight, small(VIDEO_MODELS[0], ("a red circle",) * 4, width=512, height=512))


def test_durations_round_to_whole_segments_and_the_timeline_covers_the_video(registry):
    model = VIDEO_MODELS[0]
    spec = registry.catalogue.get(model)
    settings = small(model, ("a red circle", "a blue square"), seconds=(2.0, 1.0), fps=8, transitions=1)
    result = result_of(registry, settings)
    plan = result.plan
    # A segment adds stride latent frames, 4 frames each, at 8 fps.
    segment_seconds = plan.stride * 4 / 8
    own = [s.first for s in plan.segments if s.first == s.second]
    assert own.count(0) == round(2.0 / segment_seconds) and own.count(1) == round(1.0 / segment_seconds)
    labels = [label for label, _, _ in result.timeline]
    assert labels[0] == "a red circle" and labels[-1] == "a blue square" and "transition 1 → 2" in labels
    assert result.timeline[0][1] == 0.0
    assert result.timeline[-1][2] == pytest.approx(len(result.frames) / 8, abs=4 / 8)
    assert spec.kind == "video"


@pytest.mark.parametrize("model", VIDEO_MODELS)
def test_extend_continues_a_video_keeping_its_frames(registry, model):
    first = result_of(registry, small(model, ("a red circle on the left",)))
    more = result_of(registry, small(model, ("a red circle on the right",), seed=4), previous=first.frames)
    assert np.array_equal(more.frames[: len(first.frames)], first.frames)
    assert len(more.frames) > len(first.frames)
    with pytest.raises(InvalidRequest, match="same size"):
        result_of(registry, small(model, ("x",), width=32, height=32), previous=first.frames)


def test_previews_show_one_frame_per_segment_while_denoising(registry):
    model = "tiny-cogvideox"
    items = list(
        multi_prompt_video(registry, small(model, ("a red circle", "a blue square"), steps=4, preview_every=2))
    )
    previews = [item for item in items if isinstance(item, video.SegmentPreview)]
    result = items[-1]
    assert [p.step for p in previews] == [2]
    assert len(previews[0].frames) == len(result.plan.segments)
    assert previews[0].frames[0].shape == (64, 64, 3) and previews[0].frames[0].dtype == np.uint8


# --- The trained moving-shapes model -----------------------------------------------------------

TRAINED_VIDEO = trained(makes_video)


@pytest.mark.parametrize("model", TRAINED_VIDEO)
def test_the_trained_model_moves_a_held_out_motion_the_asked_way(registry, model):
    """A motion never paired in training, worded by where it goes ("moves to the left"): the
    object of the asked colour starts and ends at the asked sides (its shape, and wordings that
    name both ends, not yet: see the README's table)."""
    from studio.toyworld.motion import HELD_OUT_MOTIONS
    from studio.toyworld.video_eval import base_settings, check_motion, generate, motion_prompt, wordings

    colour, shape, direction = sorted(HELD_OUT_MOTIONS)[0]
    prompt = motion_prompt(colour, shape, direction, "gray", wordings(direction, both_ends=False)[0])
    made = generate(registry, base_settings(model, 30, 0, (prompt,)))
    assert made.frames.shape == (17, 64, 64, 3)
    checks = check_motion(made.frames, colour, shape, direction)
    assert checks["colour"] and checks["start"] and checks["end"] and checks["direction"], (prompt, checks)


@pytest.mark.parametrize("model", TRAINED_VIDEO)
def test_two_prompts_make_one_smooth_video_where_naive_segments_jump(registry, model):
    """A red circle on the left, then on the right: each prompt followed in its own part (colour
    and place), the hand-over spread over the transition (no jump above twice the window's median
    change); the same prompts made apart and cut together jump."""
    from studio.toyworld.video_eval import base_settings, generate, plan_parts, score_pair

    prompts = ("a red circle on the left, gray background", "a red circle on the right, gray background")
    asks = (("red", "left"), ("red", "right"))
    made = generate(registry, base_settings(model, 30, 0, prompts))
    parts, windows = plan_parts(made)
    ditctrl = score_pair(made.frames, parts, windows, asks, "circle")
    assert ditctrl.follows and ditctrl.smooth, ditctrl
    alone = [generate(registry, base_settings(model, 30, 0, (prompt,))).frames for prompt in prompts]
    cut, width = len(alone[0]), max(end - start for start, end in windows)
    naive = score_pair(np.concatenate(alone), [(0, cut), (cut, 2 * cut)], [(cut - width // 2, cut + (width + 1) // 2)],
                       asks, "circle")  # fmt: skip
    assert naive.boundary_jump > ditctrl.boundary_jump
