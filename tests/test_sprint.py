"""SANA-Sprint distillation of the shapes world: TrigFlow, the student's set-up, sCM's JVP, LADD's
discriminator, and the student's one-step sampler."""

import json
import math

import numpy as np
import pytest
import torch
from diffusers import FluxControlNetModel, FluxPipeline
from PIL import Image

from studio.families import TextConditioning, small_controlnet
from studio.families.flux import FluxSprintControlNetPipeline, FluxSprintPipeline, build_random, encode_text
from studio.sprint import SIGMA_DATA, clean_estimate, flow_time, trigflow_velocity
from studio.toyworld import distill
from studio.toyworld.train import MODELS_DIR

TEACHER = MODELS_DIR / "shapes-flux"


@pytest.fixture(scope="module")
def teacher_pipe() -> FluxPipeline:
    pipe = FluxPipeline.from_pretrained(TEACHER, dtype=torch.float32)
    pipe.transformer.requires_grad_(False)
    return pipe


@pytest.fixture(scope="module")
def text(teacher_pipe) -> TextConditioning:
    prompts = ["a large red circle on the left, gray background", "a small blue square at the top, white background"]
    return encode_text(teacher_pipe, prompts, distill.text_length(1))


def test_trigflow_reads_an_exact_flow_model_exactly():
    """A flow model that knows the answer (velocity ε - x0) gives TrigFlow's F = cos s·ε - sin s·x0
    and the clean estimate σ_d·x0, at any time: the reparameterisation needs no retraining."""
    generator = torch.Generator().manual_seed(0)
    latent, noise = torch.randn(3, 16, 8, 8, generator=generator), torch.randn(3, 16, 8, 8, generator=generator)
    s = torch.tensor([0.1, 0.8, 1.5])
    sb = s.view(-1, 1, 1, 1)
    x_s = torch.cos(sb) * SIGMA_DATA * latent + torch.sin(sb) * SIGMA_DATA * noise

    def exact(flow_input: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        tb = t.view(-1, 1, 1, 1)
        # The flow-matching input really is (1 - t)·latent + t·noise.
        torch.testing.assert_close(flow_input, (1 - tb) * latent + tb * noise)
        return noise - latent

    velocity = trigflow_velocity(exact, x_s / SIGMA_DATA, s)
    torch.testing.assert_close(velocity, torch.cos(sb) * noise - torch.sin(sb) * latent)
    torch.testing.assert_close(clean_estimate(x_s, s, velocity), SIGMA_DATA * latent)
    assert flow_time(torch.tensor([0.0, math.pi / 4, math.pi / 2])).tolist() == pytest.approx([0.0, 0.5, 1.0])


def test_the_student_starts_as_the_teacher(teacher_pipe, text):
    """The student adds a guidance embedder, zero-initialised: read at the teacher's own time scale
    its output is the teacher's, whatever the guidance."""
    teacher = teacher_pipe.transformer
    student = distill.student_from(teacher)
    assert student.config.guidance_embeds and not teacher.config.guidance_embeds
    latents = torch.randn(2, 16, 16, 16, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0.3, 0.9])
    with torch.no_grad():
        plain = teacher(**distill.packed_inputs(latents, t, text, None))[0]
        guided = student(**distill.packed_inputs(latents, t, text, torch.tensor([2.0, 4.0]) * 1e-4))[0]
    torch.testing.assert_close(guided, plain)


def test_the_jvp_is_the_students_derivative_along_the_teachers_flow(teacher_pipe, text):
    """sCM's tangent: torch.func.jvp through the student equals a finite difference of F along
    (dx, ds)."""
    student = distill.student_from(teacher_pipe.transformer)
    guidance = torch.tensor([3.0, 3.0])
    flow = distill.student_flow(student, text, guidance)
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(2, 16, 16, 16, generator=generator)
    s = torch.tensor([0.7, 1.1])
    dx, ds = torch.randn(x.shape, generator=generator), torch.tensor([0.3, 0.5])

    def velocity(scaled, times):
        return trigflow_velocity(flow, scaled, times)

    with torch.no_grad(), torch.nn.attention.sdpa_kernel([torch.nn.attention.SDPBackend.MATH]):
        _, derivative = torch.func.jvp(velocity, (x, s), (dx, ds))
        step = 1e-3
        difference = (velocity(x + step * dx, s + step * ds) - velocity(x - step * dx, s - step * ds)) / (2 * step)
    assert torch.allclose(derivative, difference, rtol=0.02, atol=0.02 * difference.abs().mean().item())


def test_scm_and_ladd_losses_train_the_student_and_the_heads_only(teacher_pipe, text):
    teacher = teacher_pipe.transformer
    student = distill.student_from(teacher)
    empty = encode_text(teacher_pipe, ["", ""], distill.text_length(1))
    generator = torch.Generator().manual_seed(3)
    x0 = SIGMA_DATA * torch.randn(2, 16, 16, 16, generator=generator)
    guidance = torch.tensor([2.0, 4.0])
    loss = distill.scm_loss(student, teacher, distill.LogVariance(), x0, text, empty, guidance, 0.5, generator)
    loss.backward()
    assert torch.isfinite(loss) and student.transformer_blocks[0].attn.to_q.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())

    discriminator = distill.Discriminator(teacher)
    fake = distill.one_step_sample(student, x0, text, guidance, generator)
    logits = discriminator(*distill.discriminator_input(fake, generator), text)
    blocks = len(teacher.transformer_blocks) + len(teacher.single_transformer_blocks)
    assert logits.shape == (2, blocks * 64)  # a logit per image token (8 x 8) per block
    student.zero_grad()
    heads_loss = distill.discriminator_loss(discriminator, x0, fake.detach(), text, generator)
    heads_loss.backward()
    assert all(p.grad is not None for p in discriminator.heads.parameters())
    assert all(p.grad is None for p in student.parameters()) and all(p.grad is None for p in teacher.parameters())


@pytest.fixture(scope="module")
def random_student(tmp_path_factory) -> FluxSprintPipeline:
    folder = tmp_path_factory.mktemp("sprint")
    build_random(folder, guidance_embeds=True, sprint=True)
    return FluxSprintPipeline.from_pretrained(folder, dtype=torch.float32)


def transformer_calls(pipe) -> list[float]:
    """The timestep of every transformer call the pipeline makes (a hook records them)."""
    seen: list[float] = []
    pipe.transformer.register_forward_pre_hook(lambda _m, _a, kwargs: seen.append(float(kwargs["timestep"][0])),
                                               with_kwargs=True)  # fmt: skip
    return seen


def test_the_sampler_takes_one_transformer_call_a_step_at_the_scm_times(random_student):
    calls = transformer_calls(random_student)
    arguments = dict(prompt="a red circle", height=64, width=64, max_sequence_length=32, output_type="np")
    one = random_student(**arguments, num_inference_steps=1, generator=torch.Generator().manual_seed(0)).images
    assert one.shape == (1, 64, 64, 3)
    # One call at s = π/2 (flow time 1), read densely: the transformer is given t / 1000.
    assert calls == pytest.approx([1e-3], rel=1e-5)
    calls.clear()
    random_student(**arguments, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert calls == pytest.approx([1e-3, 1e-3 * float(flow_time(torch.tensor(1.3)))], rel=1e-5)
    again = random_student(**arguments, num_inference_steps=1, generator=torch.Generator().manual_seed(0)).images
    np.testing.assert_array_equal(again, one)


def test_the_student_with_a_controlnet_at_scale_zero_is_the_student(random_student):
    controlnet = small_controlnet(random_student.transformer, FluxControlNetModel, 0, num_layers=1, num_single_layers=1)
    with_control = FluxSprintControlNetPipeline.from_pipe(random_student, controlnet=controlnet)
    arguments = dict(prompt="a red circle", height=64, width=64, max_sequence_length=32, output_type="np")
    sketch = np.zeros((64, 64, 3), dtype=np.uint8)
    sketch[20:40, 10:30] = 255

    def controlled(scale: float) -> np.ndarray:
        generator = torch.Generator().manual_seed(5)
        control = dict(control_image=Image.fromarray(sketch), controlnet_conditioning_scale=scale)
        return with_control(**arguments, **control, num_inference_steps=2, generator=generator).images

    plain = random_student(**arguments, num_inference_steps=2, generator=torch.Generator().manual_seed(5)).images
    off, on = controlled(0.0), controlled(1.0)
    np.testing.assert_array_equal(off, plain)
    assert np.abs(on - plain).max() > 0


@pytest.mark.parametrize("model", ["shapes-flux-sprint", "shapes-flux-2-sprint"])
def test_the_distilled_student_draws_what_is_asked_in_one_and_two_steps(registry, model):
    """Each shipped student (world 1's and world 2's), through the studio's generate: colour and place of
    prompts at one and two steps (its teacher needs 24, with two passes a step)."""
    from studio.generation import GenerationSettings, generate
    from studio.toyworld.measure import centroid, colour_mask, largest_blob

    asked = [
        ("a large red circle on the left, gray background", "red", lambda x, y: x < 0.4),
        ("a large blue square at the top, white background", "blue", lambda x, y: y < 0.4),
        ("a large yellow circle in the centre, black background", "yellow", lambda x, y: abs(x - 0.5) < 0.1),
    ]
    for steps in (1, 2):
        for prompt, colour, placed in asked:
            settings = GenerationSettings(model=model, prompt=prompt, steps=steps, guidance=3.0,
                                          width=64, height=64, seed=0)  # fmt: skip
            (result,) = generate(registry, settings)
            blob = largest_blob(colour_mask(result.image, colour))
            assert blob.sum() > 150, (steps, prompt)
            x, y = centroid(blob)
            assert placed(x, y), (steps, prompt, x, y)


def test_the_live_loop_draws_the_sketch_with_the_student_and_its_own_controlnet(registry):
    """World 2's student is the first live target for FLUX, steered by the scribble ControlNet made
    from it (a circle sketched left, then right: the object follows, the caption names no place)."""
    from studio.methods.control import LiveRenderer, LiveRequest, live_targets
    from studio.toyworld.measure import centroid, colour_mask, iou, largest_blob
    from studio.toyworld.sketch_eval import sketch

    target = live_targets(registry, "flux")[0]
    assert target.model == "shapes-flux-2-sprint" and target.control == "scribble"
    (controlnet,) = registry.catalogue.get(target.model).controlnets
    assert json.loads((controlnet.path / "config.json").read_text())["guidance_embeds"] is True
    renderer = LiveRenderer(registry)
    for position, (low, high) in (("left", (0.0, 0.45)), ("right", (0.55, 1.0))):
        drawing, wanted = sketch("circle", position)
        blob = largest_blob(colour_mask(renderer.frame(LiveRequest(target, "a large red circle, gray background",
                                                                   drawing)).image, "red"))  # fmt: skip
        x, _ = centroid(blob)
        assert low <= x <= high and iou(blob, wanted) > 0.5


def test_previews_of_the_student_show_its_clean_estimate(registry):
    """At 4 steps the text-to-image previews decode each step's clean estimate: the last is the image."""
    from studio.generation import GenerationSettings, generate
    from studio.previews import Preview

    settings = GenerationSettings(model="shapes-flux-sprint", prompt="a large red circle on the left, gray background",
                                  steps=4, guidance=3.0, width=64, height=64, seed=0, preview_every=1)  # fmt: skip
    made = list(generate(registry, settings))
    previews, image = [m for m in made if isinstance(m, Preview)], made[-1].image
    assert [p.done for p in previews] == [1, 2, 3, 4]
    final = np.asarray(previews[-1].image.resize(image.size), dtype=float)
    assert np.abs(final - np.asarray(image, dtype=float)).mean() <= 2


def test_the_flow_methods_refuse_the_student_in_one_sentence(registry):
    """Inversion, ColorCtrl and drag read a rectified flow; the TrigFlow student is not one."""
    from studio.errors import InvalidRequest
    from studio.methods.colour import ColourEditSettings, colour_edit
    from tabs import colour_edit as colour_tab
    from tabs import drag as drag_tab

    spec = registry.catalogue.get("shapes-flux-sprint")
    assert spec.flow is None and registry.catalogue.get("shapes-flux").flow is not None
    assert not colour_tab.serves(spec) and not drag_tab.serves(spec)
    settings = ColourEditSettings(model=spec.id, source_prompt="a large red circle on the left, gray background",
                                  target_prompt="a large blue circle on the left, gray background", word="circle",
                                  steps=2, guidance=3.0, width=64, height=64, seed=0)  # fmt: skip
    with pytest.raises(InvalidRequest, match="is a distilled one-step student"):
        colour_edit(registry, settings)


@pytest.mark.parametrize("world", [1, 2])
def test_the_distiller_writes_a_student_of_its_worlds_teacher(tmp_path, world):
    """One adaptation and one sCM + LADD step on each world's shipped teacher: the saved student is
    a one-step FLUX pipeline with an embedded guidance input, SANA-Sprint's scheduler and its
    teacher's text encoders, and it runs at one step."""
    from diffusers import SCMScheduler

    distill.main(["--world", str(world), "--scenes", "8", "--adapt-steps", "1", "--scm-steps", "1",
                  "--batch-size", "2", "--output", str(tmp_path)])  # fmt: skip
    student = FluxSprintPipeline.from_pretrained(tmp_path, dtype=torch.float32)
    assert student.transformer.config.guidance_embeds
    assert isinstance(student.scheduler, SCMScheduler) and student.scheduler.config.prediction_type == "trigflow"
    teacher = FluxPipeline.from_pretrained(MODELS_DIR / distill.TEACHERS[world][0])
    assert student.transformer.config.num_layers == teacher.transformer.config.num_layers
    image = student("a red circle", num_inference_steps=1, guidance_scale=3.0, height=64, width=64,
                    max_sequence_length=distill.text_length(world), output_type="np").images  # fmt: skip
    assert image.shape == (1, 64, 64, 3) and np.isfinite(image).all()
