import threading
import time

import pytest
import torch
from support import pipeline_of

from studio.catalogue import Catalogue
from studio.errors import LoadFailed, ModelUnavailable, StudioError, UnknownModel
from studio.loading import load_pipeline, pipeline_bytes
from studio.registry import ModelState, Registry

ISSUE_ENTRIES = {
    "flux-dev": "black-forest-labs/FLUX.1-dev",
    "flux-schnell": "black-forest-labs/FLUX.1-schnell",
    "sd3-medium": "stabilityai/stable-diffusion-3-medium-diffusers",
    "sd3.5-medium": "stabilityai/stable-diffusion-3.5-medium",
    "sd3.5-large": "stabilityai/stable-diffusion-3.5-large",
    "sd3.5-large-turbo": "stabilityai/stable-diffusion-3.5-large-turbo",
    "pixart-alpha": "PixArt-alpha/PixArt-XL-2-1024-MS",
    "pixart-sigma": "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS",
    "pixart-lcm": "PixArt-alpha/PixArt-LCM-XL-2-1024-MS",
    "sana-600m": "Efficient-Large-Model/Sana_600M_1024px_diffusers",
    "sana-1.6b": "Efficient-Large-Model/Sana_1600M_1024px_BF16_diffusers",
    "sana-1.5-1.6b": "Efficient-Large-Model/SANA1.5_1.6B_1024px_diffusers",
    "sana-sprint-0.6b": "Efficient-Large-Model/Sana_Sprint_0.6B_1024px_diffusers",
    "sana-sprint-1.6b": "Efficient-Large-Model/Sana_Sprint_1.6B_1024px_diffusers",
}


def counting_loader(counter: list, delay: float = 0.0, fail_for: str | None = None):
    def loader(spec, dtype, offline_only):
        counter.append(spec.id)
        time.sleep(delay)
        if spec.id == fail_for:
            raise OSError("disk read error")
        return load_pipeline(spec, dtype, offline_only)

    return loader


def test_catalogue_lists_real_hub_models_with_defaults(catalogue):
    for model_id, repo in ISSUE_ENTRIES.items():
        spec = catalogue.get(model_id)
        assert spec.repo == repo
        assert spec.steps > 0 and spec.width >= 512 and spec.memory_gb > 1
    assert catalogue.get("flux-dev").gated and not catalogue.get("flux-schnell").gated
    assert {s.id for s in catalogue if s.mode == "one-step"} >= {
        "flux-schnell",
        "sd3.5-large-turbo",
        "pixart-lcm",
        "sana-sprint-0.6b",
        "sana-sprint-1.6b",
    }
    assert catalogue.get("sana-sprint-0.6b").call_for(2)["intermediate_timesteps"] == 1.3


def test_task_variants_share_the_same_tensors(registry):
    base = pipeline_of(registry, "tiny-flux-dev", "t2i")
    img2img = pipeline_of(registry, "tiny-flux-dev", "img2img")
    inpaint = pipeline_of(registry, "tiny-flux-dev", "inpaint")
    assert type(img2img).__name__ == "FluxImg2ImgPipeline" and type(inpaint).__name__ == "FluxInpaintPipeline"
    for variant in (img2img, inpaint):
        assert variant.transformer is base.transformer and variant.vae is base.vae
        base_weights = dict(base.transformer.named_parameters())
        for name, parameter in variant.transformer.named_parameters():
            assert parameter.data_ptr() == base_weights[name].data_ptr()
    assert pipeline_of(registry, "tiny-flux-dev", "img2img") is img2img


def test_a_task_the_model_lacks_is_a_clear_error(registry):
    with pytest.raises(StudioError, match="has no 'img2img' mode"):
        pipeline_of(registry, "tiny-pixart-sigma", "img2img")


def test_least_recently_used_model_is_evicted_under_the_budget(catalogue):
    sizes = {}
    for model_id in ("tiny-flux-dev", "tiny-sd3", "tiny-sana"):
        sizes[model_id] = pipeline_bytes(load_pipeline(catalogue.get(model_id), torch.float32, True))
    budget = (sizes["tiny-flux-dev"] + sizes["tiny-sd3"] + sizes["tiny-sana"] - 1) / 1024**3
    registry = Registry(catalogue, device="cpu", memory_budget_gb=budget)
    pipeline_of(registry, "tiny-flux-dev")
    pipeline_of(registry, "tiny-sd3")
    pipeline_of(registry, "tiny-flux-dev")  # now tiny-sd3 is the least recently used
    pipeline_of(registry, "tiny-sana")
    assert registry.models.ids() == ["tiny-flux-dev", "tiny-sana"]
    assert registry.state("tiny-sd3") is ModelState.BUILTIN
    assert registry.models.used_bytes() <= registry.budget_bytes


def test_video_and_image_models_share_one_budget_and_evict_each_other(catalogue):
    sizes = {
        m: pipeline_bytes(load_pipeline(catalogue.get(m), torch.float32, True))
        for m in ("tiny-flux-dev", "tiny-cogvideox", "tiny-wan")
    }
    budget = (sum(sizes.values()) - 1) / 1024**3  # any two fit, not all three
    registry = Registry(catalogue, device="cpu", memory_budget_gb=budget)
    pipeline_of(registry, "tiny-cogvideox")
    pipeline_of(registry, "tiny-flux-dev")
    pipeline_of(registry, "tiny-wan")  # the least recently used, the CogVideoX one, makes room
    assert registry.models.ids() == ["tiny-flux-dev", "tiny-wan"]
    assert registry.models.used_bytes() <= registry.budget_bytes


def test_a_model_in_use_is_not_evicted(catalogue):
    registry = Registry(catalogue, device="cpu", memory_budget_gb=1e-9)
    with registry.use("tiny-flux-dev") as in_use:
        pipeline_of(registry, "tiny-sd3")
        assert "tiny-flux-dev" in registry.models.ids()
        assert in_use.transformer is not None


def test_concurrent_requests_load_a_model_once(catalogue):
    loads: list[str] = []
    registry = Registry(catalogue, device="cpu", loader=counting_loader(loads, delay=0.3))
    results = []
    threads = [threading.Thread(target=lambda: results.append(pipeline_of(registry, "tiny-sd3"))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert loads == ["tiny-sd3"]
    assert len(results) == 4 and all(r is results[0] for r in results)


def test_a_failing_load_leaves_the_registry_unchanged(catalogue):
    loads: list[str] = []
    registry = Registry(catalogue, device="cpu", loader=counting_loader(loads, fail_for="tiny-sana"))
    kept = pipeline_of(registry, "tiny-flux-dev")
    before = (registry.models.ids(), registry.models.used_bytes())
    with pytest.raises(LoadFailed, match="Tiny SANA .* could not be loaded: OSError: disk read error"):
        pipeline_of(registry, "tiny-sana")
    assert (registry.models.ids(), registry.models.used_bytes()) == before
    assert pipeline_of(registry, "tiny-flux-dev") is kept
    # Marked failed with its reason, and not read again on every request for a while.
    assert registry.state("tiny-sana") is ModelState.FAILED
    tries = loads.count("tiny-sana")
    with pytest.raises(LoadFailed, match="disk read error .*not tried again for 5 minutes"):
        pipeline_of(registry, "tiny-sana")
    assert loads.count("tiny-sana") == tries


def test_a_failed_model_is_tried_again_after_the_pause(catalogue, monkeypatch):
    import studio.registry

    loads: list[str] = []
    registry = Registry(catalogue, device="cpu", loader=counting_loader(loads, fail_for="tiny-sana"))
    with pytest.raises(LoadFailed):
        pipeline_of(registry, "tiny-sana")
    monkeypatch.setattr(studio.registry, "FAILURE_PAUSE_SECONDS", 0.0)
    assert registry.state("tiny-sana") is ModelState.BUILTIN
    with pytest.raises(LoadFailed, match="could not be loaded"):
        pipeline_of(registry, "tiny-sana")
    assert loads.count("tiny-sana") == 2


def test_unknown_and_unavailable_models_raise_clear_errors(registry):
    with pytest.raises(UnknownModel, match="no model 'flux-ultra'"):
        pipeline_of(registry, "flux-ultra")
    assert registry.state("flux-dev") is ModelState.UNAVAILABLE
    with pytest.raises(ModelUnavailable, match="offline") as raised:
        pipeline_of(registry, "flux-dev")
    assert "hf download black-forest-labs/FLUX.1-dev" in str(raised.value)
    assert "flux-dev" not in registry.models.ids()


def test_catalogue_rejects_an_entry_with_both_repo_and_builtin(tmp_path):
    bad = tmp_path / "models.toml"
    bad.write_text(
        '[[model]]\nid="x"\nname="x"\nfamily="flux"\npipeline="FluxPipeline"\nrepo="a/b"\nbuiltin="flux-random"\n'
        'mode="standard"\nguidance="cfg"\nsteps=1\nguidance_scale=1.0\nwidth=64\nheight=64\nsize_multiple=8\n'
        'max_sequence_length=8\ngated=false\nmemory_gb=1.0\nlicence="x"\n'
    )
    with pytest.raises(ValueError, match="exactly one of repo and builtin"):
        Catalogue.load(bad)


GOOD_ENTRY = {
    "id": '"x"',
    "name": '"x"',
    "family": '"flux"',
    "pipeline": '"FluxPipeline"',
    "builtin": '"flux-random"',
    "mode": '"standard"',
    "guidance": '"cfg"',
    "steps": "1",
    "guidance_scale": "1.0",
    "width": "64",
    "height": "64",
    "size_multiple": "8",
    "max_sequence_length": "8",
    "gated": "false",
    "memory_gb": "1.0",
    "licence": '"x"',
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"stepz": "4"}, "model 'x', field 'stepz': is not a catalogue field"),
        ({"steps": '"many"'}, "model 'x', field 'steps': 'many' should be int"),
        ({"family": '"dalle"'}, "model 'x', field 'family': 'dalle' is not a family"),
        ({"licence": None}, "model 'x', field 'licence': is missing"),
        ({"layout_branch": '{ repo = "a/b" }'}, "model 'x', field 'layout_branch': is not a catalogue field"),
        ({"controlnets": '[{ kind = "doodle", builtin = true }]'}, "model 'x', field 'controlnets': kind must be"),
        ({"kind": '"fill"'}, "model 'x', field 'kind': a Fill pipeline is kind 'fill'"),
        ({"pipeline": '"FluxFillPipeline"'}, "model 'x', field 'kind': a Fill pipeline is kind 'fill'"),
    ],
)
def test_catalogue_errors_name_the_file_the_entry_and_the_field(tmp_path, change, message):
    entry = {**GOOD_ENTRY, **change}
    bad = tmp_path / "models.toml"
    bad.write_text("[[model]]\n" + "".join(f"{key} = {value}\n" for key, value in entry.items() if value))
    with pytest.raises(ValueError, match=f"^models.toml: {message}"):
        Catalogue.load(bad)


def test_an_sd3_entry_takes_layout_branches_from_its_family(tmp_path):
    entry = {
        **GOOD_ENTRY,
        "family": '"sd3"',
        "pipeline": '"StableDiffusion3Pipeline"',
        "builtin": '"sd3-random"',
        "layout_branch": '{ repo = "a/b", subfolder = "s", grounding_fraction = 0.5 }',
    }
    good = tmp_path / "models.toml"
    good.write_text("[[model]]\n" + "".join(f"{key} = {value}\n" for key, value in entry.items()))
    from studio.families.siamlayout import LayoutBranch, layout_branch

    assert layout_branch(Catalogue.load(good).get("x")) == LayoutBranch("a/b", "s", None, 0.5)
    good.write_text(good.read_text().replace('subfolder = "s"', 'subfolder = "s", colour = 1'))
    with pytest.raises(ValueError, match="field 'layout_branch': unknown key colour"):
        Catalogue.load(good)


def test_example_errors_name_the_file_the_entry_and_the_field(tmp_path):
    from studio.presets import example_rows, layout_examples

    broken = tmp_path / "examples.toml"
    broken.write_text('[[colour_edit.examples]]\nsource = "a red circle"\nword = "circle"\n')
    with pytest.raises(ValueError, match=r"^examples.toml: \[colour_edit\] example 1, field 'colour': missing"):
        example_rows("colour_edit", ["source", "word", "colour"], broken)
    broken.write_text('[[layout.examples]]\ncaption = "c"\nregions = [{ caption = "r", box = [0, 0, 1] }]\n')
    with pytest.raises(ValueError, match=r"^examples.toml: \[layout\] example 1, field 'regions'"):
        layout_examples(broken)
    assert example_rows("colour_edit", ["source", "word", "colour"])  # the shipped file reads
