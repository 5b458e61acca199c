"""Rectified-flow sampling and inversion against the families' own pipelines."""

import pytest
import torch
from support import joint, pipeline_of, random_per_family, trained

from studio import flow
from studio.inversion import invert_latents

FLOW_MODELS = [*random_per_family(joint), *trained(joint)]


def flow_model(registry, model_id, prompt="a red circle", guidance=None):
    spec = registry.catalogue.get(model_id)
    family = spec.family
    pipe = pipeline_of(registry, model_id)
    scale = spec.guidance_scale if guidance is None else guidance
    model = flow.FlowModel(pipe, family, [prompt], flow.Guidance(spec.guidance, scale), spec.max_sequence_length)
    return pipe, family, spec, model


@pytest.mark.parametrize("model_id", random_per_family(joint))
def test_euler_sampling_is_the_pipelines_own(registry, model_id):
    pipe, family, spec, model = flow_model(registry, model_id)
    noise = flow.initial_noise(pipe, seed=3, width=64, height=64)
    sigmas = flow.schedule(pipe, family, 4, noise.shape[-2], noise.shape[-1])
    ours = flow.integrate(model.velocity, noise, sigmas)[-1]

    if family.name == "flux":
        packed = pipe._pack_latents(noise, 1, noise.shape[1], noise.shape[2], noise.shape[3])
        arguments = dict(latents=packed, guidance_scale=spec.guidance_scale)
    else:
        arguments = dict(latents=noise, guidance_scale=spec.guidance_scale, negative_prompt="")
    theirs = pipe(
        "a red circle",
        num_inference_steps=4,
        width=64,
        height=64,
        output_type="latent",
        max_sequence_length=spec.max_sequence_length,
        **arguments,
    ).images
    if family.name == "flux":
        theirs = pipe._unpack_latents(theirs, 64, 64, pipe.vae_scale_factor)
    assert sigmas[0] == pytest.approx(1.0) and sigmas[-1] == 0.0 and len(sigmas) == 5
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("model_id", FLOW_MODELS)
def test_inversion_then_sampling_returns_the_latents(registry, model_id):
    """The round trip's error shrinks with steps (first order for Euler, second for FireFlow)."""
    pipe, family, _spec, model = flow_model(registry, model_id, guidance=1.0)
    image = flow.decode(pipe, flow.initial_noise(pipe, seed=5, width=64, height=64))[0]
    latents = flow.encode_image(pipe, image, 64, 64)
    errors = {}
    for solver in flow.SOLVERS:
        errors[solver] = []
        for steps in (4, 16, 48):
            sigmas = flow.schedule(pipe, family, steps, latents.shape[-2], latents.shape[-1])
            inversion = invert_latents(model, latents, sigmas, solver)
            assert len(inversion.latents) == steps + 1 and inversion.sigmas[0] == 0.0
            assert inversion.noise.shape == latents.shape
            reconstructed = flow.integrate(model.velocity, inversion.noise, sigmas, solver)[-1]
            errors[solver].append(((reconstructed - latents).abs().mean() / latents.abs().mean()).item())
        assert errors[solver][0] > errors[solver][1] > errors[solver][2], errors
    assert errors["euler"][2] < 0.1 and errors["fireflow"][2] < 0.005, errors
    assert errors["fireflow"][1] < errors["euler"][1] / 3, errors


def test_unknown_solver_is_a_clear_error(registry):
    from studio.errors import InvalidRequest

    _, _, _, model = flow_model(registry, "tiny-sd3")
    with pytest.raises(InvalidRequest, match="solver"):
        flow.integrate(model.velocity, torch.zeros(1, 16, 8, 8), [1.0, 0.0], solver="heun")


@pytest.mark.parametrize("model_id", random_per_family(joint))
def test_two_models_beside_each_other_give_each_ones_velocity(registry, model_id):
    """`beside` batches two encoded models without encoding again: the same velocities as each alone."""
    _, _, _, red = flow_model(registry, model_id, "a red circle")
    _, _, _, blue = flow_model(registry, model_id, "a blue square")
    latents = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    both = red.beside(blue).velocity(torch.cat([latents, latents]), 0.6)
    torch.testing.assert_close(both[0:1], red.velocity(latents, 0.6), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(both[1:2], blue.velocity(latents, 0.6), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(both[0], both[1])
