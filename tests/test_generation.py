import threading
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from support import builtins, pipeline_of

from studio.errors import Cancelled, InvalidRequest
from studio.generation import GenerationSettings, call_arguments, generate, size_for_aspect, validate
from studio.metadata import read_settings, save_png
from studio.registry import Registry


def run(registry, **fields):
    spec = registry.catalogue.get(fields["model"])
    settings = GenerationSettings(
        **{
            "prompt": "a large red circle on the left, gray background",
            "steps": 2,
            "guidance": spec.guidance_scale,
            "width": 64,
            "height": 64,
            **fields,
        }
    )
    return list(generate(registry, settings))


def pixels(result) -> np.ndarray:
    return np.asarray(result.image, dtype=np.int16)


@pytest.mark.parametrize("model", builtins())
def test_each_family_makes_the_requested_size_and_the_seed_decides(registry, model):
    wide, tall = (
        run(registry, model=model, width=96, height=64, seed=3)[0],
        run(registry, model=model, width=64, height=96, seed=3)[0],
    )
    assert wide.image.size == (96, 64) and tall.image.size == (64, 96)
    again = run(registry, model=model, width=96, height=64, seed=3)[0]
    other = run(registry, model=model, width=96, height=64, seed=4)[0]
    assert np.array_equal(pixels(wide), pixels(again))
    assert np.abs(pixels(wide) - pixels(other)).mean() > 1.0


def test_several_images_take_consecutive_seeds_and_report_progress(registry):
    progress = []
    results = list(
        generate(
            registry,
            GenerationSettings(
                model="tiny-sd3", prompt="a blue square", steps=3, guidance=5.0, width=64, height=64, seed=10, count=3
            ),
            on_step=lambda done, total: progress.append((done, total)),
        )
    )
    assert [r.settings.seed for r in results] == [10, 11, 12]
    assert all(r.settings.count == 1 and r.seconds > 0 for r in results)
    assert progress == [(i, 9) for i in range(10)]  # 0: the model is ready, then each step
    single = run(registry, model="tiny-sd3", prompt="a blue square", steps=3, seed=11)[0]
    assert np.array_equal(pixels(single), pixels(results[1]))


def test_legacy_callback_pipelines_report_progress_too(registry):
    progress = []
    list(
        generate(
            registry,
            GenerationSettings(model="tiny-pixart-sigma", prompt="a red circle", steps=4, width=64, height=64),
            on_step=lambda d, t: progress.append(d),
        )
    )
    assert progress == [0, 1, 2, 3, 4]


def test_cancel_stops_at_the_next_step_and_keeps_finished_images(registry):
    switch = threading.Event()
    made = []

    def on_step(done, total):
        if done == 6:  # second image, first step
            switch.set()

    with pytest.raises(Cancelled):
        for result in generate(
            registry,
            GenerationSettings(model="tiny-sd3", prompt="a red circle", steps=5, width=64, height=64, count=3),
            on_step,
            switch,
        ):
            made.append(result)
    assert len(made) == 1


def test_bad_requests_are_refused_with_a_reason(registry):
    base = GenerationSettings(model="tiny-sd3", prompt="x", steps=2, width=64, height=64)
    cases = {
        "Write a prompt": dict(prompt="   "),
        "Steps must be between 1 and 100 for Tiny SD3": dict(steps=0),
        "Steps must be a number": dict(steps=None),
        "Steps must be between 1 and 4 for Tiny SD3.5 Large Turbo": dict(model="tiny-sd3-turbo", steps=5),
        "Images must be between 1 and 8": dict(count=9),
        "Width must be between 16 and 4096": dict(width=5000),
        "Height must be a number": dict(height="tall"),
        "Seed must be between 0 and 4294967295": dict(seed=-1),
        "Guidance must be between 0 and 50": dict(guidance=float("nan")),
    }
    for message, change in cases.items():
        settings = GenerationSettings(**{**base.__dict__, **change})
        with pytest.raises(InvalidRequest, match=message):
            validate(settings, registry.catalogue.get(settings.model))


def test_sizes_snap_to_the_family_multiple_and_aspect_presets_keep_the_area(catalogue):
    spec = catalogue.get("flux-dev")
    assert validate(GenerationSettings(model="flux-dev", prompt="x", width=1010, height=770), spec).width == 1008
    width, height = size_for_aspect(spec, "16:9")
    assert width % 16 == 0 and height % 16 == 0 and width > height
    assert abs(width * height - 1024 * 1024) / (1024 * 1024) < 0.05


@pytest.mark.parametrize(
    ("model", "guidance", "expected"),
    [
        # embedded guidance: an input of the distilled model, no negative prompt
        ("tiny-flux-dev", 3.5, {"guidance_scale": 3.5, "negative_prompt": None, "max_sequence_length": 32}),
        # FLUX without a guidance input: true CFG with the negative prompt
        ("shapes-flux", 3.0, {"true_cfg_scale": 3.0, "negative_prompt": "y"}),
        ("tiny-sd3", 5.0, {"guidance_scale": 5.0, "negative_prompt": "y"}),  # classifier-free guidance
    ],
)
def test_guidance_kinds_map_to_each_pipeline_convention(registry, model, guidance, expected):
    settings = GenerationSettings(model=model, prompt="x", negative_prompt="y", guidance=guidance)
    arguments = call_arguments(pipeline_of(registry, model), registry.catalogue.get(model), settings, None)
    assert {name: arguments.get(name) for name in expected} == expected


def test_a_model_without_guidance_runs_with_none(catalogue):
    settings = GenerationSettings(model="tiny-flux-schnell", prompt="x", steps=2, guidance=7, width=64, height=64)
    assert validate(settings, catalogue.get("tiny-flux-schnell")).guidance == 0.0


def test_png_settings_round_trip_remakes_the_same_image(registry, tmp_path):
    first = run(registry, model="tiny-flux-dev", seed=1234, steps=3)[0]
    path = save_png(first, tmp_path)
    settings = read_settings(path)
    assert settings == first.settings
    remade = next(iter(generate(registry, settings)))
    assert np.array_equal(pixels(remade), np.asarray(Image.open(path), dtype=np.int16))


def test_a_png_without_settings_is_refused(tmp_path):
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    with pytest.raises(InvalidRequest, match="carries no DiT Studio settings"):
        read_settings(plain)
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(InvalidRequest, match="not a PNG"):
        read_settings(tmp_path / "junk.png")


def test_settings_are_read_without_decoding_the_image(tmp_path, registry):
    """A PNG that claims 20,000 x 20,000 pixels (a decompression bomb) still has its settings read
    in no time and no memory: the image data is skipped, never inflated."""
    import struct
    import tracemalloc
    import zlib

    made = run(registry, model="tiny-flux-dev", seed=5, steps=2)[0]
    text = Image.open(save_png(made, tmp_path)).text["dit-studio"]

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 20_000, 20_000, 8, 2, 0, 0, 0)
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(2_000_000)))
        + chunk(b"tEXt", b"dit-studio\0" + text.encode()) + chunk(b"IEND", b"")
    )  # fmt: skip
    tracemalloc.start()
    assert read_settings(bomb) == made.settings
    assert tracemalloc.get_traced_memory()[1] < 5 * 2**20
    tracemalloc.stop()
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(bomb.read_bytes()[:40])
    with pytest.raises(InvalidRequest, match="carries no DiT Studio settings"):
        read_settings(truncated)


def test_every_method_refuses_a_prompt_longer_than_any_encoder_reads(registry):
    from PIL import Image as PILImage

    from studio.methods.colour import ColourEditSettings
    from studio.methods.control import ControlSettings
    from studio.methods.layout import LayoutSettings, Region
    from studio.runner import Job, LocalRunner

    huge = "a red circle " * 4000
    sampled = {"model": "tiny-flux-dev", "steps": 2, "width": 64, "height": 64}
    jobs = [
        Job("generate", GenerationSettings(**sampled, prompt=huge)),
        Job("colour_edit", ColourEditSettings(**sampled, source_prompt=huge, target_prompt="x", word="circle")),
        Job("layout", LayoutSettings(**sampled, caption=huge, regions=(Region("a", (0, 0, 1, 1)),))),
        Job("layout", LayoutSettings(**sampled, caption="c", regions=(Region(huge, (0, 0, 1, 1)),))),
        Job("control", ControlSettings(**sampled, prompt=huge, control="scribble"),
            {"control_image": PILImage.new("RGB", (64, 64))}),
    ]  # fmt: skip
    runner = LocalRunner(registry)
    for job in jobs:
        with pytest.raises(InvalidRequest, match="at most 4000 characters"):
            result = runner.run(job)
            list(result) if job.method == "generate" else None


def out_of_memory_hook(registry, model: str, at_calls: set[int]):
    """A forward pre-hook on the model's transformer that runs out of memory at the given calls."""
    calls = [0]

    def hook(*_):
        calls[0] += 1
        if calls[0] in at_calls:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    return pipeline_of(registry, model).transformer.register_forward_pre_hook(hook)


def test_out_of_memory_frees_other_models_and_resumes_where_it_stopped(catalogue):
    from studio.runner import Job, LocalRunner

    registry = Registry(catalogue, device="cpu")
    runner = LocalRunner(registry)
    settings = GenerationSettings(model="tiny-flux-dev", prompt="a red circle", steps=2, width=64, height=64, count=3)
    expected = [pixels(result) for result in generate(registry, settings)]
    pipeline_of(registry, "tiny-sd3")  # another model, idle: it makes room
    handle = out_of_memory_hook(registry, "tiny-flux-dev", {3})  # the second image's first step
    results = list(runner.run(Job("generate", settings)))
    handle.remove()
    assert [r.settings.seed for r in results] == [0, 1, 2]
    assert all(np.array_equal(pixels(r), e) for r, e in zip(results, expected, strict=True))
    assert "tiny-sd3" not in registry.models.ids() and "tiny-flux-dev" in registry.models.ids()


def test_out_of_memory_twice_is_one_sentence_and_the_registry_stays_usable(catalogue):
    from studio.methods.layout import LayoutSettings, Region
    from studio.runner import Job, LocalRunner

    registry = Registry(catalogue, device="cpu")
    runner = LocalRunner(registry)
    layout = LayoutSettings(model="tiny-flux-dev", caption="a red circle", regions=(Region("a", (0, 0, 1, 1)),),
                            steps=2, width=64, height=64)  # fmt: skip
    handle = out_of_memory_hook(registry, "tiny-flux-dev", {1, 2})
    with pytest.raises(InvalidRequest, match="Not enough memory for this layout even after freeing"):
        runner.run(Job("layout", layout))
    handle.remove()
    assert runner.run(Job("layout", layout)).image.size == (64, 64)
    handle = out_of_memory_hook(registry, "tiny-flux-dev", {1})
    assert runner.run(Job("layout", layout)).image.size == (64, 64)  # once: freed and retried
    handle.remove()


def test_models_on_the_cpu_share_half_the_host_memory(catalogue):
    import os

    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert Registry(catalogue, device="cpu").budget_bytes == int(total * 0.5)


def test_a_shared_studio_refuses_a_job_over_its_work_budget(registry):
    from studio.runner import Job, LocalRunner

    runner = LocalRunner(registry, work_budget=2 * 64 * 64 * 4)
    small = GenerationSettings(model="tiny-flux-dev", prompt="x", steps=2, width=64, height=64, count=4)
    assert len(list(runner.run(Job("generate", small)))) == 4
    with pytest.raises(InvalidRequest, match="larger than one visitor may ask"):
        runner.run(Job("generate", replace(small, steps=3)))


@pytest.mark.parametrize("model", ["shapes-flux", "shapes-sd3", "tiny-pixart-sigma"])
def test_previews_show_the_image_forming_and_change_nothing(registry, model):
    """Previews every 4 of 16 steps: the last one is the image itself, each is nearer the image
    than the one before (a rectified flow's previews are its predicted clean image), and the image
    is bit for bit the one made without previews."""
    from studio.previews import Preview

    plain = run(registry, model=model, steps=16)
    items = run(registry, model=model, steps=16, preview_every=4)
    previews = [item for item in items if isinstance(item, Preview)]
    (made,) = [item for item in items if not isinstance(item, Preview)]
    assert [preview.done for preview in previews] == [4, 8, 12, 16] and previews[0].total == 16
    assert np.array_equal(pixels(made), pixels(plain[0])) and made.settings.preview_every == 0
    distances = [np.abs(np.asarray(p.image, np.int16) - pixels(made)).mean() for p in previews]
    assert distances[-1] <= 1.0 and distances == sorted(distances, reverse=True), distances


def test_a_preview_run_cancels_at_the_next_step(registry):
    from studio.previews import Preview

    switch = threading.Event()
    settings = GenerationSettings(model="shapes-flux", prompt="a red circle", steps=12, width=64, height=64,
                                  preview_every=2)  # fmt: skip
    seen = []
    with pytest.raises(Cancelled):
        for item in generate(registry, settings, None, switch):
            seen.append(item)
            switch.set()
    assert len(seen) == 1 and isinstance(seen[0], Preview)


def test_a_preview_run_closed_early_waits_for_its_call_to_end():
    """A request closed while the image forms (the generator closed) returns only once the
    pipeline call has ended, so the model's lease and hooks outlive the work on it."""
    import time

    from studio.previews import Preview, with_previews

    ended = threading.Event()

    class Previewer:
        def __call__(self, done, latents):
            return Preview(Image.new("RGB", (4, 4)), done, 3)

    def call(watch):
        for done in range(1, 4):
            watch(done, None)
            time.sleep(0.05)
        ended.set()
        return "image"

    items = with_previews(call, Previewer())
    assert isinstance(next(items), Preview)
    items.close()
    assert ended.is_set()
