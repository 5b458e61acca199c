"""Distil the shapes-world FLUX model into a one- to four-step student, as SANA-Sprint does.

    python -m studio.toyworld.distill                        # teacher: world 2's shapes-flux-2
    python -m studio.toyworld.distill --world 1              # world 1's shapes-flux (the shipped student)
    python -m studio.toyworld.distill --world 1 --resume assets/models/shapes-flux-sprint --scm-steps 1000

The teacher (a flow-matching FLUX model with true classifier-free guidance) is read in TrigFlow
(`studio.sprint`) without retraining. The student is the teacher's transformer with two changes
SANA-Sprint makes: a dense time input (its embedder sees t in [0, 1]) and an embedded guidance
input (a new guidance embedder, zero-initialised so the student starts as the teacher).

1. Adaptation: the student learns the teacher's guided velocity with its new inputs (flow matching
   on the teacher's targets), so it starts where sCM expects a pretrained diffusion model.
2. sCM + LADD, alternating with the discriminator:
   - continuous-time consistency (sCM): the JVP of the student along the teacher's guided PF-ODE
     (`torch.func.jvp`), the tangent warmed up, the target normalised per sample (g / (‖g‖ + 0.1)),
     an adaptive weighting (learned log-variance over time) and the 1 / (σ_d tan s) prior weight;
   - latent adversarial distillation (LADD): the frozen teacher's image tokens after each block
     feed trainable heads (the discriminator), real latents against the student's one-step
     samples renoised at a discriminator time; hinge loss, misaligned captions as further fakes.
   The student's loss is sCM + w · adversarial (SANA-Sprint's w = 0.5, `--adversarial-weight`).

Writes a complete pipeline (fp16 safetensors) with SANA-Sprint's SCM scheduler, loaded by the
registry as FluxSprintPipeline.
"""

from __future__ import annotations

import argparse
import copy
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import FluxPipeline, FluxTransformer2DModel
from torch.nn.attention import SDPBackend, sdpa_kernel
from tqdm import tqdm

from studio.catalogue import Catalogue
from studio.families import TextConditioning
from studio.families.flux import encode_text, packed_inputs, unpacked
from studio.sprint import (
    DENSE_TIME,
    GUIDANCE_INPUT,
    MAX_TIME,
    SIGMA_DATA,
    clean_estimate,
    flow_time,
    sprint_scheduler,
    trigflow_velocity,
)
from studio.toyworld.data import HELD_OUT, ScenePool, build_pool, rendered
from studio.toyworld.scene import (
    BACKGROUNDS,
    COLOURS,
    SHAPES,
    SIZES,
    Caption,
    Scene,
    make_object,
    make_scene,
    overlap,
)
from studio.toyworld.train import (
    MODELS_DIR,
    encode_pool,
    noised,
    run_options,
    seeded,
    sigma_shift,
    warmup_cosine,
)

# The places world 1's teacher was trained on: the student learns where the teacher knows.
TEACHER_PLACES = ("left", "right", "top", "bottom", "centre")
# Guidance scales the student learns (the teacher's default, 3, in the middle).
GUIDANCE_SCALES = (2.0, 3.0, 4.0)
# sCM's time distribution: s = atan(exp(N(P_MEAN, P_STD)) / σ_d), SANA-Sprint's logit-normal TrigFlow.
P_MEAN, P_STD = 0.2, 1.6
# LADD's discriminator time: s_D = atan(exp(N(-0.6, 1.0)) / σ_d); the fake is the student's
# sample from pure noise half of the time.
DISCRIMINATOR_MEAN, DISCRIMINATOR_STD = -0.6, 1.0
LARGEST_TIME_SHARE = 0.5
ADVERSARIAL_WEIGHT = 0.5
TANGENT_NORMALISER = 0.1


def teacher_world_pool(count: int, seed: int) -> ScenePool:
    """Scenes of one or two objects at the teacher's named places, captioned as the evaluation and
    the studio's examples write them, the held-out combinations left out."""
    rng = random.Random(seed)
    scenes: list[Scene] = []
    while len(scenes) < count:
        objects = []
        for place in rng.sample(TEACHER_PLACES, rng.randint(1, 2)):
            colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
            if (colour, shape, place) not in HELD_OUT:
                objects.append(make_object(colour, shape, rng.choice(SIZES), place, jitter=0.05, rng=rng))
        if objects and not (len(objects) == 2 and overlap(*objects) > 0.1):
            scenes.append(make_scene(objects, rng.choice(list(BACKGROUNDS))))
    return ScenePool(scenes, rendered(scenes, 64), [Caption(scene.caption) for scene in scenes])


# Each world's teacher (its catalogue id) and the scenes the student learns on: where the teacher knows.
TEACHERS: dict[int, tuple[str, Callable[[int, int], ScenePool]]] = {
    1: ("shapes-flux", teacher_world_pool),
    2: ("shapes-flux-2", build_pool),
}


def text_length(world: int) -> int:
    """The text length the world's teacher is sampled with (its catalogue entry's): FLUX's joint
    attention reads the padding tokens too, so the student learns at the length it runs at."""
    return Catalogue.load().get(TEACHERS[world][0]).text_length


def student_from(teacher: FluxTransformer2DModel) -> FluxTransformer2DModel:
    """The teacher's transformer with an embedded guidance input, zero-initialised so the
    student's output starts as the teacher's."""
    config = dict(teacher.config) | {"guidance_embeds": True}
    student = FluxTransformer2DModel.from_config(config)
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    assert not unexpected and all(name.startswith("time_text_embed.guidance_embedder") for name in missing)
    torch.nn.init.zeros_(student.time_text_embed.guidance_embedder.linear_2.weight)
    torch.nn.init.zeros_(student.time_text_embed.guidance_embedder.linear_2.bias)
    return student


def student_flow(
    student: FluxTransformer2DModel, text: TextConditioning, guidance: torch.Tensor
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The student as a flow-matching velocity function (input, flow time) with its dense time and
    embedded guidance inputs."""

    def velocity(flow_input: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        inputs = packed_inputs(flow_input, t * DENSE_TIME, text, guidance * GUIDANCE_INPUT)
        return unpacked(student(**inputs)[0], flow_input)

    return velocity


def teacher_flow(
    teacher: FluxTransformer2DModel, text: TextConditioning, empty: TextConditioning, guidance: torch.Tensor
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The teacher's velocity with true classifier-free guidance at per-sample scales."""

    def velocity(flow_input: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        both = torch.cat([flow_input, flow_input])
        conditioning = TextConditioning(
            torch.cat([text.embeds, empty.embeds]), torch.cat([text.pooled, empty.pooled]), text.text_ids
        )
        out = unpacked(teacher(**packed_inputs(both, torch.cat([t, t]), conditioning, None))[0], both)
        conditional, unconditional = out.chunk(2)
        return unconditional + guidance.view(-1, 1, 1, 1) * (conditional - unconditional)

    return velocity


class LogVariance(torch.nn.Module):
    """sCM's adaptive weighting: a learned log-variance over TrigFlow time (Fourier features of s)."""

    def __init__(self, features: int = 32):
        super().__init__()
        self.register_buffer("frequencies", torch.randn(features) * 4)
        self.linear = torch.nn.Linear(2 * features, 1)
        torch.nn.init.zeros_(self.linear.weight)
        torch.nn.init.zeros_(self.linear.bias)

    frequencies: torch.Tensor

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        angles = s[:, None] * self.frequencies[None]
        return self.linear(torch.cat([angles.cos(), angles.sin()], dim=1)).squeeze(1)


class Discriminator(torch.nn.Module):
    """LADD's discriminator: the frozen teacher, its image tokens after every block read by a small
    trainable convolutional head on the token grid, per-token logits."""

    def __init__(self, teacher: FluxTransformer2DModel):
        super().__init__()
        self.teacher = teacher.requires_grad_(False)
        self.blocks = [*teacher.transformer_blocks, *teacher.single_transformer_blocks]
        width = teacher.inner_dim
        self.heads = torch.nn.ModuleList(
            torch.nn.Sequential(
                torch.nn.GroupNorm(8, width),
                torch.nn.Conv2d(width, width // 2, 3, padding=1),
                torch.nn.SiLU(),
                torch.nn.Conv2d(width // 2, 1, 1),
            )
            for _ in self.blocks
        )

    def forward(
        self, latents: torch.Tensor, t: torch.Tensor, text: TextConditioning, through: bool = True
    ) -> torch.Tensor:
        """Per-token logits; `through`: gradients reach the latents through the teacher (the
        student's step), else only the heads learn (the discriminator's step)."""
        features: list[torch.Tensor] = []
        hooks = [block.register_forward_hook(lambda _m, _i, out: features.append(out[1])) for block in self.blocks]
        try:
            with torch.set_grad_enabled(through and torch.is_grad_enabled()):
                self.teacher(**packed_inputs(latents, t, text, None))
        finally:
            for hook in hooks:
                hook.remove()
        side = latents.shape[-1] // 2
        # Contiguous: the CPU's channels-last GroupNorm backward crashes on the transposed tokens.
        grids = [
            feature.transpose(1, 2).reshape(feature.shape[0], -1, latents.shape[-2] // 2, side).contiguous()
            for feature in features
        ]
        logits = [head(grid) for head, grid in zip(self.heads, grids)]
        return torch.cat([logit.flatten(1) for logit in logits], dim=1)


def trigflow_times(batch: int, mean: float, std: float, generator: torch.Generator) -> torch.Tensor:
    return torch.atan(torch.exp(mean + std * torch.randn(batch, generator=generator)) / SIGMA_DATA)


@dataclass
class Distillation:
    """What both stages read: the student in training, the teacher's pipeline (its frozen
    transformer and text encoders), the data, and the one random stream."""

    student: FluxTransformer2DModel
    pipe: FluxPipeline
    latents: torch.Tensor
    captions: list[str]
    generator: torch.Generator
    text_length: int

    @property
    def teacher(self) -> FluxTransformer2DModel:
        return self.pipe.transformer

    def batch(self, size: int) -> tuple[torch.Tensor, TextConditioning, torch.Tensor]:
        """Sample indices, their captions encoded, and a guidance scale each."""
        indices = torch.randint(len(self.captions), (size,), generator=self.generator)
        text = encode_text(self.pipe, [self.captions[i] for i in indices.tolist()], self.text_length)
        scales = torch.randint(len(GUIDANCE_SCALES), (size,), generator=self.generator)
        return indices, text, torch.tensor(GUIDANCE_SCALES)[scales]


def adapt(run: Distillation, steps: int, batch_size: int, learning_rate: float) -> None:
    """Stage 1: the student's velocity with its dense time and embedded guidance matches the
    teacher's guided velocity (flow matching on the teacher's targets)."""
    optimiser = torch.optim.AdamW(run.student.parameters(), lr=learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: warmup_cosine(s, steps, 50))
    tokens = (run.latents.shape[-2] // 2) * (run.latents.shape[-1] // 2)
    shift = sigma_shift(tokens, run.pipe.scheduler.config)
    empty = encode_text(run.pipe, [""] * batch_size, run.text_length)
    for _ in (bar := tqdm(range(steps), desc="adapt", mininterval=30)):
        indices, text, guidance = run.batch(batch_size)
        noisy, sigma, _ = noised(run.latents[indices], shift, run.generator)
        with torch.no_grad():
            target = teacher_flow(run.teacher, text, empty, guidance)(noisy, sigma)
        loss = F.mse_loss(student_flow(run.student, text, guidance)(noisy, sigma), target)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(run.student.parameters(), 1.0)
        optimiser.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")


def scm_loss(
    student: FluxTransformer2DModel,
    teacher: FluxTransformer2DModel,
    log_variance: LogVariance,
    x0: torch.Tensor,
    text: TextConditioning,
    empty: TextConditioning,
    guidance: torch.Tensor,
    tangent_share: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """sCM's loss for TrigFlow-scaled clean latents x0 (σ_d · latent)."""
    batch = x0.shape[0]
    s = trigflow_times(batch, P_MEAN, P_STD, generator)
    sb = s.view(-1, 1, 1, 1)
    z = torch.randn(x0.shape, generator=generator) * SIGMA_DATA
    x_s = torch.cos(sb) * x0 + torch.sin(sb) * z
    with torch.no_grad():
        dxds = SIGMA_DATA * trigflow_velocity(teacher_flow(teacher, text, empty, guidance), x_s / SIGMA_DATA, s)
    flow = student_flow(student, text, guidance)

    def student_velocity(scaled: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
        return trigflow_velocity(flow, scaled, times)

    # Forward-mode AD through attention needs the math kernel on the CPU.
    with torch.no_grad(), sdpa_kernel([SDPBackend.MATH]):
        previous, derivative = torch.func.jvp(  # type: ignore[misc]  # (output, tangent) without aux
            student_velocity,
            (x_s / SIGMA_DATA, s),
            (torch.cos(sb) * torch.sin(sb) * dxds / SIGMA_DATA, torch.cos(s) * torch.sin(s)),
        )
    target = -(torch.cos(sb) ** 2) * (SIGMA_DATA * previous - dxds) - tangent_share * (
        torch.cos(sb) * torch.sin(sb) * x_s + SIGMA_DATA * derivative
    )
    norm = target.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    target = target / (norm + TANGENT_NORMALISER)
    current = student_velocity(x_s / SIGMA_DATA, s)
    weight = 1 / (SIGMA_DATA * torch.tan(s))
    log_var = log_variance(s)
    per_sample = ((current - previous - target) ** 2).flatten(1).mean(1)
    return (torch.exp(-log_var) * weight * per_sample + log_var).mean()


def one_step_sample(
    student: FluxTransformer2DModel,
    x0: torch.Tensor,
    text: TextConditioning,
    guidance: torch.Tensor,
    generator: torch.Generator,
) -> torch.Tensor:
    """The student's clean estimate (TrigFlow scale) from pure noise half of the time, else from a
    noisy real sample at an sCM time: LADD's fakes."""
    batch = x0.shape[0]
    s = trigflow_times(batch, P_MEAN, P_STD, generator)
    s = torch.where(torch.rand(batch, generator=generator) < LARGEST_TIME_SHARE, torch.full_like(s, MAX_TIME), s)
    sb = s.view(-1, 1, 1, 1)
    z = torch.randn(x0.shape, generator=generator) * SIGMA_DATA
    x_s = torch.cos(sb) * x0 + torch.sin(sb) * z
    velocity = trigflow_velocity(student_flow(student, text, guidance), x_s / SIGMA_DATA, s)
    return clean_estimate(x_s, s, velocity)


def discriminator_input(x0: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A TrigFlow-scaled clean sample renoised at a discriminator time, as the teacher reads it:
    (flow-matching input, flow time)."""
    s = trigflow_times(x0.shape[0], DISCRIMINATOR_MEAN, DISCRIMINATOR_STD, generator)
    sb = s.view(-1, 1, 1, 1)
    x_s = torch.cos(sb) * x0 + torch.sin(sb) * torch.randn(x0.shape, generator=generator) * SIGMA_DATA
    t = flow_time(s)
    tb = t.view(-1, 1, 1, 1)
    return x_s / SIGMA_DATA * torch.sqrt(tb**2 + (1 - tb) ** 2), t


def distil(
    run: Distillation,
    steps: int,
    batch_size: int,
    learning_rate: float,
    adversarial_weight: float,
    resumed: bool = False,
    checkpoint: Callable[[], None] | None = None,
    checkpoint_every: int = 0,
) -> None:
    """Stage 2: sCM (+ LADD at `adversarial_weight`; 0: sCM alone) with the discriminator's step
    alternating with the student's; `checkpoint` is called every `checkpoint_every` steps."""
    student, teacher, generator = run.student, run.teacher, run.generator
    log_variance = LogVariance()
    student_optimiser = torch.optim.AdamW(
        [*student.parameters(), *log_variance.parameters()], lr=learning_rate, weight_decay=0.0
    )
    discriminator = Discriminator(teacher)
    head_optimiser = torch.optim.AdamW(discriminator.heads.parameters(), lr=learning_rate * 2, weight_decay=0.0)
    empty = encode_text(run.pipe, [""] * batch_size, run.text_length)
    # The tangent term warms up over the first quarter of a fresh run; a resumed run has it whole.
    tangent_warmup = 0 if resumed else max(1, steps // 4)
    adversarial = adversarial_weight > 0
    for step in (bar := tqdm(range(steps), desc="sCM + LADD" if adversarial else "sCM", mininterval=30)):
        indices, text, guidance = run.batch(batch_size)
        x0 = SIGMA_DATA * run.latents[indices]
        tangent_share = min(1.0, (step + 1) / tangent_warmup) if tangent_warmup else 1.0
        student_optimiser.zero_grad(set_to_none=True)
        # The two terms' gradients add up in two passes (one graph each), the JVP's pass apart.
        loss = scm_loss(student, teacher, log_variance, x0, text, empty, guidance, tangent_share, generator)
        loss.backward()
        adversarial_loss = torch.zeros(())
        if adversarial:
            fake = one_step_sample(student, x0, text, guidance, generator)
            adversarial_loss = -discriminator(*discriminator_input(fake, generator), text).mean()
            (adversarial_weight * adversarial_loss).backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 0.1)
        student_optimiser.step()
        head_loss = torch.zeros(())
        if adversarial:
            head_loss = discriminator_loss(discriminator, x0, fake.detach(), text, generator)
            head_optimiser.zero_grad(set_to_none=True)
            head_loss.backward()
            head_optimiser.step()
        bar.set_postfix(scm=f"{loss.item():.3f}", adv=f"{adversarial_loss.item():.3f}", d=f"{head_loss.item():.3f}")
        if checkpoint is not None and checkpoint_every and (step + 1) % checkpoint_every == 0:
            checkpoint()


def discriminator_loss(
    discriminator: Discriminator,
    real: torch.Tensor,
    fake: torch.Tensor,
    text: TextConditioning,
    generator: torch.Generator,
) -> torch.Tensor:
    """Hinge loss: real latents with their captions against the student's samples and against real
    latents with another sample's caption (misaligned pairs)."""
    misaligned = TextConditioning(text.embeds.roll(1, 0), text.pooled.roll(1, 0), text.text_ids)
    real_logits = discriminator(*discriminator_input(real, generator), text, through=False)
    fake_logits = discriminator(*discriminator_input(fake, generator), text, through=False)
    misaligned_logits = discriminator(*discriminator_input(real, generator), misaligned, through=False)
    return (
        F.relu(1 - real_logits).mean()
        + 0.5 * F.relu(1 + fake_logits).mean()
        + 0.5 * F.relu(1 + misaligned_logits).mean()
    )


def save_student(pipe: FluxPipeline, student: FluxTransformer2DModel, output: Path) -> None:
    snapshot = copy.deepcopy(pipe)
    snapshot.transformer = copy.deepcopy(student)
    snapshot.register_modules(scheduler=sprint_scheduler())
    snapshot.to("cpu", torch.float16).save_pretrained(output, safe_serialization=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", type=int, choices=sorted(TEACHERS), default=2, help="the teacher's world")
    parser.add_argument("--teacher", type=Path, default=None, help="default: the world's FLUX model")
    parser.add_argument("--output", type=Path, default=None, help="default: the world's FLUX model's name + -sprint")
    parser.add_argument("--resume", type=Path, default=None, help="a saved student to go on distilling (no stage 1)")
    parser.add_argument("--scenes", type=int, default=16384)
    parser.add_argument("--adapt-steps", type=int, default=500)
    parser.add_argument("--scm-steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument(
        "--adversarial-weight", type=float, default=ADVERSARIAL_WEIGHT, help="LADD's weight beside sCM (0: sCM alone)"
    )
    parser.add_argument("--checkpoint-every", type=int, default=250, help="save the student every N sCM steps")
    run_options(parser)
    args = parser.parse_args(argv)
    seeded(args)
    generator = torch.Generator().manual_seed(args.seed)
    started = time.perf_counter()

    name, world_pool = TEACHERS[args.world]
    teacher_path, output = args.teacher or MODELS_DIR / name, args.output or MODELS_DIR / f"{name}-sprint"
    pipe = FluxPipeline.from_pretrained(teacher_path, dtype=torch.float32)
    pipe.text_encoder.requires_grad_(False)
    pipe.text_encoder_2.requires_grad_(False)
    teacher = pipe.transformer.requires_grad_(False)
    pool = world_pool(args.scenes, args.seed + 1)
    config = pipe.vae.config
    latents = (encode_pool(pipe.vae, pool, "cpu") - config.shift_factor) * config.scaling_factor
    if args.resume:
        student = FluxTransformer2DModel.from_pretrained(args.resume, subfolder="transformer", dtype=torch.float32)
    else:
        student = student_from(teacher)
    run = Distillation(student, pipe, latents, pool.captions, generator, text_length(args.world))
    if not args.resume:
        adapt(run, args.adapt_steps, args.batch_size * 2, args.learning_rate * 5)
        save_student(pipe, student, output)
    distil(
        run,
        args.scm_steps,
        args.batch_size,
        args.learning_rate,
        args.adversarial_weight,
        resumed=args.resume is not None,
        checkpoint=lambda: save_student(pipe, student, output),
        checkpoint_every=args.checkpoint_every,
    )
    save_student(pipe, student, output)
    print(f"saved the student to {output} after {(time.perf_counter() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
