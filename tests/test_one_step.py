"""One-step / few-step modes: every family's distilled model, real entries and built-in twins."""

import re

import numpy as np
import pytest
from diffusers import FlowMatchEulerDiscreteScheduler, LCMScheduler, SCMScheduler
from support import pipeline_of

from studio.catalogue import Catalogue
from studio.errors import InvalidRequest
from studio.generation import GenerationSettings, call_arguments, generate, validate

ONE_STEP_BUILTINS = [spec.id for spec in Catalogue.load() if spec.mode == "one-step" and spec.builtin]
PROMPT = "a large red circle on the left, gray background"


def settings_for(spec, steps: int) -> GenerationSettings:
    return GenerationSettings(
        model=spec.id, prompt=PROMPT, steps=steps, guidance=spec.guidance_scale, width=64, height=64, seed=7
    )


def test_every_family_has_a_built_in_one_step_model(catalogue):
    assert {catalogue.get(model_id).family.name for model_id in ONE_STEP_BUILTINS} == {"flux", "sd3", "pixart", "sana"}
    assert {"tiny-flux-schnell", "tiny-sd3-turbo", "tiny-pixart-lcm", "tiny-sana-sprint"} <= set(ONE_STEP_BUILTINS)


def test_real_one_step_entries_follow_their_model_cards(catalogue):
    # id: (pipeline, guidance kind, default steps, most steps, guidance scale)
    expected = {
        "flux-schnell": ("FluxPipeline", "none", 4, 4, 0.0),
        "sd3.5-large-turbo": ("StableDiffusion3Pipeline", "none", 4, 4, 0.0),
        "pixart-lcm": ("PixArtAlphaPipeline", "none", 4, 4, 0.0),
        "sana-sprint-0.6b": ("SanaSprintPipeline", "embedded", 2, 4, 4.5),
        "sana-sprint-1.6b": ("SanaSprintPipeline", "embedded", 2, 4, 4.5),
    }
    for model_id, fields in expected.items():
        spec = catalogue.get(model_id)
        assert spec.mode == "one-step"
        assert (spec.pipeline, spec.guidance, spec.steps, spec.max_steps, spec.guidance_scale) == fields, model_id
    sprint = catalogue.get("sana-sprint-0.6b")
    assert sprint.call_for(2) == {"max_timesteps": 1.5708, "intermediate_timesteps": 1.3}
    assert sprint.call_for(1) == {"max_timesteps": 1.5708, "intermediate_timesteps": None}
    assert catalogue.get("sd3.5-large").max_steps == 100


def test_built_ins_carry_the_real_models_schedulers_and_guidance_inputs(registry):
    schnell = pipeline_of(registry, "tiny-flux-schnell")
    assert isinstance(schnell.scheduler, FlowMatchEulerDiscreteScheduler)
    assert schnell.scheduler.config.shift == 1.0 and not schnell.scheduler.config.use_dynamic_shifting
    assert not schnell.transformer.config.guidance_embeds
    turbo = pipeline_of(registry, "tiny-sd3-turbo")
    assert isinstance(turbo.scheduler, FlowMatchEulerDiscreteScheduler) and turbo.scheduler.config.shift == 3.0
    assert turbo.transformer.config.qk_norm == "rms_norm"
    lcm = pipeline_of(registry, "tiny-pixart-lcm")
    assert type(lcm).__name__ == "PixArtAlphaPipeline" and isinstance(lcm.scheduler, LCMScheduler)
    assert lcm.scheduler.config.beta_schedule == "linear"
    sprint = pipeline_of(registry, "tiny-sana-sprint")
    assert isinstance(sprint.scheduler, SCMScheduler) and sprint.transformer.config.guidance_embeds


@pytest.mark.parametrize("model", ONE_STEP_BUILTINS)
@pytest.mark.parametrize("at", ["one step", "most steps"])
def test_each_one_step_model_draws_at_one_step_and_at_its_most(registry, model, at):
    spec = registry.catalogue.get(model)
    steps = 1 if at == "one step" else spec.max_steps
    progress = []
    [result] = generate(registry, settings_for(spec, steps), on_step=lambda done, total: progress.append(done))
    assert result.image.size == (64, 64)
    assert np.asarray(result.image, dtype=np.float32).std() > 1.0  # not a constant image
    assert progress == list(range(steps + 1))  # 0: the model is ready, then each step


@pytest.mark.parametrize("model", [*ONE_STEP_BUILTINS, "tiny-sd3"])
def test_steps_beyond_the_models_most_are_refused_naming_its_range(catalogue, model):
    spec = catalogue.get(model)
    assert validate(settings_for(spec, spec.max_steps), spec).steps == spec.max_steps
    with pytest.raises(
        InvalidRequest, match=re.escape(f"Steps must be between 1 and {spec.max_steps} for {spec.name}.")
    ):
        validate(settings_for(spec, spec.max_steps + 1), spec)


def test_sana_sprint_gets_intermediate_timesteps_at_two_steps_only(registry):
    spec = registry.catalogue.get("tiny-sana-sprint")
    pipe = pipeline_of(registry, spec.id)
    for steps in range(1, spec.max_steps + 1):
        arguments = call_arguments(pipe, spec, settings_for(spec, steps), None)
        assert arguments["max_timesteps"] == 1.5708
        assert arguments["intermediate_timesteps"] == (1.3 if steps == 2 else None)


@pytest.mark.parametrize("steps", [2, 3])
def test_sana_sprint_runs_between_one_step_and_its_most(registry, steps):
    [result] = generate(registry, settings_for(registry.catalogue.get("tiny-sana-sprint"), steps))
    assert result.image.size == (64, 64)


def test_the_catalogue_refuses_unbounded_or_misplaced_step_settings(tmp_path):
    base = (
        '[[model]]\nid="x"\nname="x"\nfamily="flux"\npipeline="FluxPipeline"\nbuiltin="flux-random"\n'
        'guidance="none"\nguidance_scale=0.0\nwidth=64\nheight=64\nsize_multiple=8\nmax_sequence_length=32\n'
        'gated=false\nmemory_gb=0.01\nlicence="x"\nmode="one-step"\nsteps=2\n'
    )
    for extra, message in [
        ("", "names its max_steps"),
        ("max_steps=1\n", "between 1 and max_steps"),
        ("max_steps=4\ncall_by_steps={ 5 = { a = 1 } }\n", "keyed by step counts from 1 to 4"),
    ]:
        path = tmp_path / "models.toml"
        path.write_text(base + extra)
        with pytest.raises(ValueError, match=message):
            Catalogue.load(path)


def test_model_defaults_endpoint_follows_the_guidance_kind_and_step_range(running_app, catalogue):
    client, _ = running_app
    steps, guidance, *_ = client.predict("tiny-pixart-lcm", api_name="/model_defaults")
    assert steps["maximum"] == catalogue.get("tiny-pixart-lcm").max_steps == 4 and guidance["visible"] is False
    steps, guidance, *_ = client.predict("tiny-sana-sprint", api_name="/model_defaults")
    assert steps["maximum"] == 4 and guidance["visible"] is True and guidance["label"] == "Embedded guidance"
    steps, guidance, *_ = client.predict("tiny-sd3", api_name="/model_defaults")
    assert steps["maximum"] == 100 and guidance["visible"] is True and guidance["label"] == "Guidance (CFG)"
