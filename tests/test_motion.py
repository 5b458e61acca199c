"""The moving-shapes world: clips, captions, held-out motions, and the measures its evaluation
scores generated videos with (checked on drawn clips, where the answer is known)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from studio import offline
from studio.toyworld.grounding import token_labels
from studio.toyworld.motion import (
    CLIP_FRAMES,
    DIRECTION_PHRASES,
    DIRECTIONS,
    HELD_OUT_MOTIONS,
    MOTIONS,
    Clip,
    build_clip_pool,
    caption,
    moving_track,
    random_clip,
    still_track,
    trace_object,
    track_attributes,
    travel_direction,
)
from studio.toyworld.scene import BACKGROUNDS, COLOURS, VOCABULARY, Caption
from studio.toyworld.video_eval import check_motion, frame_changes, score_pair
from tabs.video import prompts_from, settings_with_prompts


def test_a_moving_object_travels_half_the_canvas_at_a_steady_pace():
    clip = Clip((moving_track("red", "circle", 0.3, "right", 0.5),), "gray", Caption(""))
    frames = clip.frames()
    assert frames.shape == (CLIP_FRAMES, 64, 64, 3) and frames.dtype == np.uint8
    trace = trace_object(frames, "red")
    xs = [c[0] for c in trace.centres]
    assert xs[0] == pytest.approx(0.25, abs=0.02) and xs[-1] == pytest.approx(0.75, abs=0.02)
    steps = np.diff(xs)
    assert np.all(steps > 0) and steps.std() < 0.01  # steady, left to right
    assert trace.shape == "circle"


@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_the_measures_read_back_a_drawn_motion(direction):
    clip = Clip((moving_track("blue", "square", 0.3, direction, 0.45),), "white", Caption(""))
    assert check_motion(clip.frames(), "blue", "square", direction) == dict.fromkeys(
        ("colour", "shape", "start", "end", "direction"), True
    )
    opposite = {"right": "left", "left": "right", "up": "down", "down": "up"}[direction]
    assert not check_motion(clip.frames(), "blue", "square", opposite)["direction"]


def test_a_still_object_has_no_direction():
    clip = Clip((still_track("green", "triangle", 0.3, (0.5, 0.5)),), "black", Caption(""))
    assert travel_direction(trace_object(clip.frames(), "green")) is None


def test_captions_say_what_moves_where_in_the_world_vocabulary():
    tracks = (moving_track("red", "circle", 0.3, "right", 0.5), still_track("blue", "square", 0.3, (0.5, 0.25)))
    assert caption(tracks, "gray").text == (
        "a medium red circle moves from the left to the right and a medium blue square at the top, gray background"
    )
    rng = random.Random(1)
    for _ in range(200):
        words = random_clip(rng).caption.replace(",", " ,").split()
        assert set(words) <= set(VOCABULARY)


def test_grounding_labels_a_place_word_with_the_motion_of_its_own_track():
    """ "left" in "from the left to the right" is a rightward motion's word, in "from the right to
    the left" a leftward one's: what the video T5 must learn to tell apart."""
    tracks = (moving_track("red", "circle", 0.3, "right", 0.3), moving_track("blue", "square", 0.3, "left", 0.7))
    described = caption(tracks, "gray")
    assert [described.text[start:end] for start, end, _ in described.spans] == [
        "a medium red circle moves from the left to the right",
        "a medium blue square moves from the right to the left",
    ]
    attributes = [[track_attributes(track) for track in tracks]]
    ids, labels = token_labels(offline.t5_tokenizer(), [described], attributes, 40)
    tokens = offline.t5_tokenizer().convert_ids_to_tokens(ids[0])
    motions = [MOTIONS[labels[0, i, 2]] for i, token in enumerate(tokens) if token == "\u2581left"]
    assert motions == ["right", "left"]


def test_the_video_trainer_grounds_its_t5_and_writes_a_pipeline_the_registry_path_can_load(tmp_path):
    import torch
    from diffusers import CogVideoXPipeline

    from studio.families.cogvideox import build_shapes_random
    from studio.toyworld import train_video

    train_video.main(
        ["--clips", "8", "--vae-steps", "1", "--vae-batch-size", "1", "--transformer-steps", "1", "--batch-size", "2",
         "--checkpoint-every", "0", "--grounding-steps", "3", "--output", str(tmp_path / "trained")]
    )  # fmt: skip
    build_shapes_random(tmp_path / "fresh")
    trained, fresh = (
        CogVideoXPipeline.from_pretrained(tmp_path / name, dtype=torch.float32, local_files_only=True)
        for name in ("trained", "fresh")
    )
    assert set(trained.components) == set(fresh.components)  # the grounding heads stay out
    moved = [
        not torch.allclose(a, b.float(), atol=1e-3)
        for a, b in zip(trained.text_encoder.parameters(), fresh.text_encoder.parameters())
    ]
    assert any(moved)


def test_a_time_budget_cuts_the_transformer_steps_to_what_fits_and_still_saves(tmp_path, monkeypatch, capsys):
    from studio.toyworld import train_video

    assert train_video.steps_within(planned=1000, done=60, seconds_per_step=0.5, seconds_left=100) == 260
    assert train_video.steps_within(planned=100, done=60, seconds_per_step=0.5, seconds_left=100) == 100
    assert train_video.steps_within(planned=1000, done=60, seconds_per_step=0.5, seconds_left=-5) == 60
    # Timed over steps 1-2; a budget long gone by then leaves exactly those two steps.
    monkeypatch.setattr(train_video, "BUDGET_PROBE", (1, 2))
    budgeted_run = ["--clips", "4", "--vae-steps", "1", "--vae-batch-size", "1", "--transformer-steps", "10",
                    "--batch-size", "1", "--checkpoint-every", "0", "--grounding-steps", "0", "--minutes", "0.0001",
                    "--output", str(tmp_path / "m")]  # fmt: skip
    steps_taken = []
    step = train_video.step_with_average
    monkeypatch.setattr(train_video, "step_with_average", lambda *args: steps_taken.append(step(*args)))
    train_video.main(budgeted_run)
    assert "2 steps fit the time budget" in capsys.readouterr().out and len(steps_taken) == 2
    # Should the speed be misjudged (all ten steps taken as fitting), the deadline still stops it.
    monkeypatch.setattr(train_video, "steps_within", lambda planned, *_: planned)
    steps_taken.clear()
    train_video.main(budgeted_run)
    assert "10 steps fit the time budget" in capsys.readouterr().out and len(steps_taken) == 2
    assert (tmp_path / "m" / "transformer" / "diffusion_pytorch_model.safetensors").exists()


def losses_of_a_tiny_run(tmp_path, monkeypatch, *options: str) -> list[tuple]:
    """Trains a tiny moving-shapes model with `options`; for every v-prediction loss taken: the
    latent frames and rows it saw, whether bfloat16 autocast was on, and the loss's dtype."""
    import torch

    from studio.toyworld import train_video

    seen = []
    loss = train_video.velocity_loss

    def recorded(pipe, latents, captions, indices, *rest):
        value = loss(pipe, latents, captions, indices, *rest)
        autocast = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        seen.append((latents.shape[1], len(indices), autocast, value.dtype))
        return value

    monkeypatch.setattr(train_video, "velocity_loss", recorded)
    train_video.main(
        ["--clips", "4", "--vae-steps", "1", "--vae-batch-size", "1", "--batch-size", "2", "--checkpoint-every", "0",
         "--grounding-weight", "0", "--output", str(tmp_path / "m"), *options]
    )  # fmt: skip
    return seen


def test_image_video_joint_training_adds_first_frames_as_one_frame_videos(tmp_path, monkeypatch):
    """`--image-batch-size N`: every step also trains on N first latent frames of clips, each a
    video of one latent frame (the causal VAE encodes a clip's first frame alone)."""
    seen = losses_of_a_tiny_run(tmp_path, monkeypatch, "--transformer-steps", "2", "--image-batch-size", "3")
    assert [(frames, rows) for frames, rows, *_ in seen] == [(5, 2), (1, 3)] * 2
    assert not any(autocast for _, _, autocast, _ in seen)  # float32 unless --bf16 is asked for


def test_bf16_runs_the_forward_in_bfloat16_keeps_the_loss_float32_and_saves_finite_weights(tmp_path, monkeypatch):
    import torch
    from diffusers import CogVideoXPipeline

    seen = losses_of_a_tiny_run(tmp_path, monkeypatch, "--transformer-steps", "1", "--bf16")
    assert [(autocast, dtype) for _, _, autocast, dtype in seen] == [(True, torch.float32)]
    pipe = CogVideoXPipeline.from_pretrained(tmp_path / "m")
    assert all(torch.isfinite(w).all() for w in pipe.transformer.state_dict().values())


def test_decoder_training_keeps_the_latent_space_and_changes_only_the_decoder(tmp_path):
    """`--decoder-steps` teaches the VAE's decoder to see past noisy latents: the encoder, its
    scaling and the transformer stay exactly as the resumed model's."""
    import json

    import torch
    from safetensors.torch import load_file

    from studio.families.cogvideox import build_shapes_random
    from studio.toyworld import train_video

    build_shapes_random(tmp_path / "before")
    # A trained VAE's latent normalisation (the random one's 1.0 would be taken from the data).
    vae_config = tmp_path / "before" / "vae" / "config.json"
    vae_config.write_text(json.dumps(json.loads(vae_config.read_text()) | {"scaling_factor": 0.6}))
    train_video.main(
        ["--resume", str(tmp_path / "before"), "--clips", "4", "--vae-batch-size", "1", "--decoder-steps", "2",
         "--transformer-steps", "0", "--grounding-weight", "0", "--output", str(tmp_path / "after")]
    )  # fmt: skip

    def weights(model: str, component: str) -> dict:
        (file,) = (tmp_path / model / component).glob("*.safetensors")
        return load_file(file)

    configs = [json.loads((tmp_path / model / "vae" / "config.json").read_text()) for model in ("before", "after")]
    assert configs[0]["scaling_factor"] == configs[1]["scaling_factor"] == 0.6
    before, after = weights("before", "vae"), weights("after", "vae")
    encoder = [name for name in before if name.startswith("encoder.")]
    decoder = [name for name in before if name.startswith("decoder.")]
    assert encoder and decoder
    assert all(torch.equal(before[name].half(), after[name]) for name in encoder)
    assert any(not torch.equal(before[name].half(), after[name]) for name in decoder)
    before, after = weights("before", "transformer"), weights("after", "transformer")
    assert all(torch.equal(before[name].half(), after[name]) for name in before)


def test_foreground_weights_cover_the_latent_pixels_an_object_passes_through():
    import torch

    from studio.toyworld.motion import build_clip_pool
    from studio.toyworld.train_video import foreground_weights

    pool = build_clip_pool(3, seed=4)
    weights = foreground_weights(pool, (3, 5, 16, 8, 8), 4.0)
    assert weights.shape == (3, 5, 1, 8, 8)
    assert set(weights.unique().tolist()) == {1.0, 5.0}
    for clip, weight in zip(pool.clips, weights):
        for latent_frame, frames in enumerate([[0], [1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12], [13, 14, 15, 16]]):
            drawn = torch.zeros(8, 8, dtype=torch.bool)
            for frame in frames:
                for track in clip.tracks:
                    x, y = track.centre(frame / 16)
                    drawn[min(int(y * 8), 7), min(int(x * 8), 7)] = True  # the object's centre pixel
            assert (weight[latent_frame, 0][drawn] == 5.0).all()
        assert (weight == 1.0).any()  # the background


def test_a_repatched_transformer_keeps_its_blocks_and_reads_the_latents_in_smaller_patches():
    import torch

    from studio.families.cogvideox import reconfigured, small_transformer

    torch.manual_seed(0)
    coarse = small_transformer(16, 32, num_attention_heads=2, attention_head_dim=16, time_embed_dim=32, num_layers=2)
    fine = reconfigured(coarse, patch_size=1)
    assert (coarse.config.patch_size, fine.config.patch_size) == (2, 1)
    kept = dict(coarse.named_parameters())
    for name, weight in fine.named_parameters():
        if name.startswith("transformer_blocks.") or name.startswith("time_embedding."):
            assert torch.equal(weight, kept[name]), name
    assert fine.patch_embed.proj.weight.shape[-1] == 1 and fine.proj_out.weight.shape[0] == 16
    latents = torch.randn(1, 2, 16, 8, 8)
    text = torch.randn(1, 16, 32)
    out = fine(hidden_states=latents, encoder_hidden_states=text, timestep=torch.tensor([500]), return_dict=False)[0]
    assert out.shape == latents.shape


def test_training_clips_never_move_a_held_out_combination():
    pool = build_clip_pool(400, seed=3)
    assert pool.videos.shape == (400, 3, CLIP_FRAMES, 64, 64)
    moved = {(t.colour, t.shape, t.direction) for clip in pool.clips for t in clip.tracks if t.direction}
    assert moved and not moved & HELD_OUT_MOTIONS
    assert {d for _, _, d in moved} == set(DIRECTIONS)


def still_then_move_then_still() -> np.ndarray:
    left = Clip((still_track("red", "circle", 0.3, (0.25, 0.5)),), "gray", Caption("")).frames(9)
    moving = Clip((moving_track("red", "circle", 0.3, "right", 0.5),), "gray", Caption("")).frames(11)[1:-1]
    right = Clip((still_track("red", "circle", 0.3, (0.75, 0.5)),), "gray", Caption("")).frames(9)
    return np.concatenate([left, moving, right])


def test_a_hand_over_spread_over_frames_is_smooth_and_a_cut_is_not():
    asks = [("red", "left"), ("red", "right")]
    gradual = score_pair(still_then_move_then_still(), [(0, 9), (18, 27)], [(9, 18)], asks, "circle")
    assert gradual.one_shape and gradual.follows and gradual.smooth and gradual.boundary_jump < 1.5
    frames = still_then_move_then_still()
    cut = np.concatenate([frames[:9], frames[18:]])
    abrupt = score_pair(cut, [(0, 9), (9, 18)], [(5, 14)], asks, "circle")
    assert abrupt.follows and not abrupt.smooth and abrupt.boundary_jump > 100
    wrong = score_pair(frames, [(0, 9), (18, 27)], [(9, 18)], [("red", "right"), ("red", "left")], "circle")
    assert not wrong.follows
    assert frame_changes(frames).shape == (len(frames) - 1,)


@pytest.mark.parametrize("background", sorted(BACKGROUNDS))
def test_the_object_measure_sees_an_object_in_any_colour_and_not_one_fading_away(background):
    """An object that passes through a colour of no palette entry (cyan) on its way from red to
    blue: the colour blob loses it there, the object measure (anything apart from the background)
    keeps its area steady; an object fading into the background loses area in both."""
    still = Clip((still_track("red", "circle", 0.3, (0.5, 0.5)),), background, Caption("")).frames(16)
    inside = np.any(still[0] != still[0, 0, 0], axis=-1)
    recoloured, fading = still.copy(), still.copy()
    for index in range(len(still)):
        recoloured[index][inside] = COLOURS["red"] if index < 4 else COLOURS["blue"] if index >= 12 else (40, 200, 200)
        share = index / (len(still) - 1)
        faded = (1 - share) * np.array(COLOURS["red"]) + share * np.array(BACKGROUNDS[background])
        fading[index][inside] = np.round(faded).astype(np.uint8)
    asks = [("red", None), ("blue", None)]
    change = score_pair(recoloured, [(0, 4), (12, 16)], [(4, 12)], asks, "circle")
    assert change.follows and change.object_cv < 0.02 and change.area_cv > 0.5
    fade = score_pair(fading, [(0, 4), (12, 16)], [(4, 12)], asks, "circle")
    assert not fade.follows and fade.object_cv > 0.3 and fade.area_cv > 0.3


def test_the_tab_reads_its_table_and_says_which_row_is_wrong(catalogue):
    assert prompts_from([["a red circle", None], ["a blue square", 2]]) == (
        ("a red circle", "a blue square"),
        (None, 2.0),
    )
    with pytest.raises(Exception, match="Row 2 has no prompt"):
        prompts_from([["a red circle", None], ["  ", None]])
    with pytest.raises(Exception, match="Row 1's seconds must be a number"):
        prompts_from([["a red circle", "soon"]])
    from studio.methods.video import VideoSettings

    spec = catalogue.get("tiny-cogvideox")
    settings = VideoSettings(model=spec.id, prompts=(), fps=8, overlap=0.69)
    plain = settings_with_prompts(settings, spec, [["a", None], ["b", None]])
    assert plain.prompts == ("a", "b") and plain.seconds == ()
    # A blank duration beside a given one is one segment: (3 - 2) latent frames x 4 frames at 8 fps.
    mixed = settings_with_prompts(settings, spec, [["a", None], ["b", 2.0]])
    assert mixed.seconds == (0.5, 2.0)
    in_frames = settings_with_prompts(settings, spec, [["a", 12], ["b", None]], "frames")
    assert in_frames.seconds == (1.5, 0.5)


@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_wordings_that_name_both_ends_name_the_start_first(direction):
    from studio.toyworld.video_eval import wordings

    start, end, _ = DIRECTIONS[direction]
    both, end_only = wordings(direction, True), wordings(direction, False)
    assert both and end_only and set(both) | set(end_only) == set(DIRECTION_PHRASES[direction])
    for phrase in both:
        words = phrase.split()
        assert words.index(start.split()[-1]) < words.index(end.split()[-1]), phrase
    for phrase in end_only:
        assert start not in phrase.split(), phrase
    # Every wording is made of words the world's tokenizers hold.
    assert {word for phrase in both + end_only for word in phrase.split()} <= set(VOCABULARY)


def test_the_moving_shapes_vae_is_4x_in_space_and_time_and_decodes_back_to_the_clip_length():
    """Three blocks: a 64-pixel, 17-frame clip is 5 latent frames of 16x16 (a small object covers
    several latent pixels a side), decoded back to 17 frames of 64 pixels."""
    import torch

    from studio.families.cogvideox import SHAPES_VAE_CHANNELS, small_vae
    from studio.toyworld.motion import build_clip_pool

    torch.manual_seed(0)
    vae = small_vae(SHAPES_VAE_CHANNELS).eval()
    clip = build_clip_pool(1, seed=2).batch(torch.arange(1))
    with torch.no_grad():
        latents = vae.encode(clip).latent_dist.mode()
        decoded = vae.decode(latents).sample
    assert latents.shape == (1, 16, 5, 16, 16)
    assert decoded.shape == clip.shape == (1, 3, 17, 64, 64)
