"""Speed of the studio's own path against bare diffusers, and hot-swap against cold load.

    python -m studio.bench [--runs 5] [--size 64] [--models shapes-flux tiny-sd3 ...]
    python -m studio.bench --full-size [--size 1024]   # on a GPU: SANA-Sprint / SANA ControlNet / FLUX schnell
    python -m studio.bench --full-size-video           # on a GPU: CogVideoX-2B / Wan 1.3B DiTCtrl steps
    python -m studio.bench --full-size-tryon           # on a GPU: FLUX.1 Fill [dev] try-on steps

Prints a Markdown table. Both paths run the same pipeline class on the same weights with the same
arguments; the studio path adds the registry lookup, validation, the progress callback and the
PNG save that the text-to-image tab does.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import diffusers
import torch
import transformers

from studio import offline
from studio.catalogue import Catalogue
from studio.device import choose_device
from studio.generation import GeneratedImage, GenerationSettings, call_arguments, generate, validate
from studio.metadata import save_png
from studio.methods.colour import ColourEditSettings, colour_edit, source_cache_bytes
from studio.methods.control import LiveRenderer, LiveRequest, live_targets
from studio.methods.drag import Drag, DragSettings, drag_edit
from studio.methods.tryon import TryOnSettings, try_on
from studio.methods.video import VideoResult, VideoSettings, multi_prompt_video
from studio.registry import Registry

VIDEO_MODELS = ["moving-shapes-cogvideox", "tiny-cogvideox", "tiny-wan"]
BUILTIN_MODELS = [
    "shapes-flux",
    "shapes-sd3",
    "tiny-flux-dev",
    "tiny-sd3",
    "tiny-pixart-sigma",
    "tiny-sana",
    "tiny-sana-sprint",
]


def warm(registry: Registry, model_id: str) -> None:
    """Load a model (or find it resident)."""
    with registry.use(model_id):
        pass


def median_seconds(run, runs: int) -> float:
    run()  # warm-up: first-call allocations and lazy initialisation
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        run()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def bare_pipeline(spec, device: str, dtype: torch.dtype):
    source = offline.ensure_builtin(spec.builtin, spec.family.builtin_builders[spec.builtin], spec.path)
    pipe = spec.family.pipeline_class(spec.pipeline, "t2i").from_pretrained(source, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def studio_overhead(registry: Registry, args: argparse.Namespace, device: str, dtype: torch.dtype) -> None:
    """Seconds per image through bare diffusers and through the studio's path (PNG saved)."""
    output = Path(tempfile.mkdtemp(prefix="dit-studio-bench-"))
    print("| model | steps | bare diffusers (s) | studio path (s) | ratio |")
    print("|---|---|---|---|---|")
    for model_id in args.models:
        spec = registry.catalogue.get(model_id)
        prompt = "a large red circle on the left, gray background"
        settings = validate(
            GenerationSettings(
                model=model_id,
                prompt=prompt,
                steps=spec.steps,
                guidance=spec.guidance_scale,
                width=args.size,
                height=args.size,
                seed=0,
            ),
            spec,
        )
        bare = bare_pipeline(spec, device, dtype)
        bare_arguments = call_arguments(bare, spec, settings, None)

        def bare_call():
            bare(**{**bare_arguments, "generator": torch.Generator("cpu").manual_seed(0)})

        def studio_call():
            for result in generate(registry, settings, on_step=lambda done, total: None):
                if isinstance(result, GeneratedImage):
                    save_png(result, output)

        bare_time, studio_time = median_seconds(bare_call, args.runs), median_seconds(studio_call, args.runs)
        print(
            f"| {model_id} | {settings.steps} | {bare_time:.4f} | {studio_time:.4f} | {studio_time / bare_time:.3f} |"
        )


def hot_swap(catalogue: Catalogue, models: list[str], device: str, dtype: torch.dtype) -> None:
    """A cold load, a swap between resident models, a swap under a budget that holds one."""
    first, second = models[0], models[1 % len(models)]
    print("\n| hot swap | seconds |\n|---|---|")
    cold = Registry(catalogue, device=device, dtype=dtype)
    started = time.perf_counter()
    warm(cold, first)
    print(f"| cold load of {first} (from disk) | {time.perf_counter() - started:.3f} |")
    warm(cold, second)
    started = time.perf_counter()
    warm(cold, first)
    print(f"| swap {second} -> {first}, both resident | {time.perf_counter() - started:.6f} |")
    one_slot = Registry(catalogue, device=device, dtype=dtype, memory_budget_gb=1e-6)
    warm(one_slot, first)
    warm(one_slot, second)
    started = time.perf_counter()
    warm(one_slot, first)
    where = "freed, reloaded from disk" if device == "cpu" else "from host memory"
    print(f"| swap {second} -> {first}, budget holds one ({where}) | {time.perf_counter() - started:.3f} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=BUILTIN_MODELS)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--device", default=None)
    parser.add_argument(
        "--full-size",
        action="store_true",
        help="only the full-size SANA-Sprint 0.6B, SANA-600M ControlNet and FLUX.1 [schnell] architectures, "
        "random weights",
    )
    parser.add_argument(
        "--full-size-tryon",
        action="store_true",
        help="only the full-size FLUX.1 Fill [dev] transformer on catvton's canvas: one step, random weights",
    )
    parser.add_argument(
        "--full-size-video",
        action="store_true",
        help="only the full-size CogVideoX-2B and Wan 2.1 1.3B transformers: one DiTCtrl step, random weights",
    )
    parser.add_argument("--live", action="store_true", help="only the live sketch loop's frames per second")
    parser.add_argument(
        "--memory",
        action="store_true",
        help="only the memory policies on FLUX.1 [dev]'s full-size architecture (random weights): peak memory "
        "and seconds per image for each policy that runs here",
    )
    parser.add_argument(
        "--scale", type=int, default=1, help="with --memory or --full-size: divide FLUX's depths (to try it on a CPU)"
    )
    args = parser.parse_args(argv)
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    device, dtype = choose_device(args.device)
    if args.full_size:
        full_size_one_step(device, dtype, args.size if args.size != 64 else 1024, args.runs, args.scale)
        return
    if args.full_size_video:
        full_size_video(device, dtype, max(1, args.runs // 2))
        return
    if args.full_size_tryon:
        full_size_tryon(device, dtype, max(1, args.runs // 2))
        return
    if args.memory:
        memory_policies(device, dtype, args.size if args.size != 64 else 1024, args.scale)
        return
    catalogue = Catalogue.load()
    registry = Registry(catalogue, device=device, dtype=dtype)
    print(
        f"device {device}, dtype {str(dtype).removeprefix('torch.')}, {args.size}x{args.size}, median of {args.runs}\n"
    )
    if args.live:
        live_loop(registry, args)
        return
    studio_overhead(registry, args, device, dtype)
    hot_swap(catalogue, args.models, device, dtype)
    flow_models = [m for m in args.models if catalogue.get(m).flow is not None]
    colour_editing(registry, flow_models, args)
    drag_editing(registry, flow_models, args)
    video_generation(registry, args)
    virtual_try_on(registry, args)
    live_loop(registry, args)


# Full-size joint-attention models, as ColorCtrl edits them at 1024², 28 steps, bf16:
# (attention width, edited layers, batch rows, tokens).
FULL_SIZE_SOURCE_CACHE = {
    "FLUX.1-dev (38 single blocks, embedded guidance)": (3072, 38, 1, 4096 + 512),
    "SD3-medium (24 joint blocks, CFG)": (1536, 24, 2, 4096 + 77 + 256),
    "SD3.5-large (38 joint blocks, CFG)": (2432, 38, 2, 4096 + 77 + 256),
}


def colour_editing(registry: Registry, models: list[str], args: argparse.Namespace) -> None:
    """A ColorCtrl edit against one plain generation, with the source cached or run beside the target."""
    print("\n| colour edit | steps | one generation (s) | edit, source cached (s) | edit, source beside target (s) |")
    print("|---|---|---|---|---|")
    for model_id in models:
        spec = registry.catalogue.get(model_id)
        settings = ColourEditSettings(
            model=model_id,
            source_prompt="a large red circle on the left, gray background",
            target_prompt="a large blue circle on the left, gray background",
            word="circle",
            steps=spec.steps,
            guidance=spec.guidance_scale,
            width=args.size,
            height=args.size,
        )
        plain = GenerationSettings(
            model=model_id,
            prompt=settings.source_prompt,
            steps=spec.steps,
            guidance=spec.guidance_scale,
            width=args.size,
            height=args.size,
        )
        one = median_seconds(lambda: list(generate(registry, plain)), args.runs)
        cached = median_seconds(lambda: colour_edit(registry, settings), args.runs)
        beside = median_seconds(lambda: colour_edit(registry, settings, cache_limit_bytes=0), args.runs)
        print(f"| {model_id} | {spec.steps} | {one:.3f} | {cached:.3f} | {beside:.3f} |")
    print("\n| source cache a whole edit would need | GiB |\n|---|---|")
    for name, (width, layers, rows, tokens) in FULL_SIZE_SOURCE_CACHE.items():
        print(f"| {name} | {source_cache_bytes(width, 2, layers, 28, rows, tokens) / 2**30:.1f} |")


def drag_editing(registry: Registry, models: list[str], args: argparse.Namespace) -> None:
    """One drag (a square region moved a third of the side) per mode, 25 steps of which 6 skipped:
    seconds and, on a GPU, the peak memory of the edit."""
    import numpy as np

    side = args.size
    region = np.zeros((side, side), bool)
    region[side * 5 // 16 : side * 11 // 16, side // 16 : side * 7 // 16] = True
    drag = Drag("move", ((side / 4, side / 2), (side / 4 + side / 3, side / 2)))
    print("\n| drag edit | mode | seconds | peak GPU memory (GiB) |\n|---|---|---|---|")
    for model_id in models:
        spec = registry.catalogue.get(model_id)
        for mode in ("fast", "precise"):
            settings = DragSettings(
                model=model_id, prompt="a large red square on the left, gray background", drags=(drag,), mode=mode,
                guidance=spec.guidance_scale, width=side, height=side,
            )  # fmt: skip
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            seconds = median_seconds(lambda: drag_edit(registry, settings, region), max(1, args.runs // 2))
            peak = f"{torch.cuda.max_memory_allocated() / 2**30:.2f}" if torch.cuda.is_available() else "—"
            print(f"| {model_id} | {mode} | {seconds:.2f} | {peak} |")


class PeakMemory:
    """Peak memory of a block: the accelerator's allocator where there is one, else the process's
    resident memory sampled every few milliseconds (its growth over the block)."""

    def __enter__(self) -> PeakMemory:
        import threading

        self.peak = self.start = self._resident()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._resident())

    @staticmethod
    def _resident() -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * 4096

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def gib(self) -> float:
        if torch.cuda.is_available():
            return torch.cuda.max_memory_allocated() / 2**30
        return (self.peak - self.start) / 2**30


def video_generation(registry: Registry, args: argparse.Namespace) -> None:
    """One prompt (plain text to video) and two prompts (DiTCtrl, two transition segments) on the
    video built-ins at their own sizes and steps: seconds per video and per frame, peak memory."""
    print("\n| video | prompts | segments | frames | seconds per video | seconds per frame | peak memory (GiB) |")
    print("|---|---|---|---|---|---|---|")
    for model_id in VIDEO_MODELS:
        spec = registry.catalogue.get(model_id)
        left, right = "a red circle on the left, gray background", "a red circle on the right, gray background"
        for prompts in ((left,), (left, right)):
            settings = VideoSettings(
                model=model_id, prompts=prompts, steps=spec.steps, guidance=spec.guidance_scale, width=spec.width,
                height=spec.height, fps=spec.fps, preview_every=0,
            )  # fmt: skip
            made: list[VideoResult] = []

            def run(settings: VideoSettings = settings) -> None:
                made[:] = [item for item in multi_prompt_video(registry, settings) if isinstance(item, VideoResult)]

            with PeakMemory() as memory:
                seconds = median_seconds(run, max(1, args.runs // 2))
            frames = len(made[0].frames)
            print(
                f"| {model_id} | {len(prompts)} | {len(made[0].plan.segments)} | {frames} | {seconds:.2f} | "
                f"{seconds / frames:.3f} | {memory.gib:.2f} |"
            )


def virtual_try_on(registry: Registry, args: argparse.Namespace, model_id: str = "dressup-flux-fill") -> None:
    """One try-on on the dress-up built-in at its own canvas and steps, the automatic mask
    included: seconds and peak memory."""
    from studio.toyworld import dressup

    spec = registry.catalogue.get(model_id)
    rng = random.Random(0)
    person, _ = dressup.render_person(dressup.random_person(rng, dress=0.0))
    garment = dressup.render_garment(dressup.random_garment(rng, "upper", held_out=True))
    settings = TryOnSettings(
        model=model_id, steps=spec.steps, guidance=spec.guidance_scale, width=spec.width, height=spec.height
    )
    with PeakMemory() as memory:
        seconds = median_seconds(lambda: try_on(registry, settings, person, garment, None), args.runs)
    print("\n| try-on | canvas | steps | seconds per try-on | peak memory (GiB) |\n|---|---|---|---|---|")
    print(f"| {model_id} | {spec.width}×{spec.height} | {spec.steps} | {seconds:.2f} | {memory.gib:.2f} |")


# FLUX.1 Fill [dev]'s transformer (its repo's config.json): FLUX.1 [dev] with 384 input features
# (latents, the masked image's latents, the 8x8 mask, each packed 2x2).
FLUX_FILL_DEV: dict[str, Any] = {
    "patch_size": 1, "in_channels": 384, "out_channels": 64, "num_layers": 19, "num_single_layers": 38,
    "attention_head_dim": 128, "num_attention_heads": 24, "joint_attention_dim": 4096, "pooled_projection_dim": 768,
    "guidance_embeds": True, "axes_dims_rope": (16, 56, 56),
}  # fmt: skip


def full_size_tryon(device: str, dtype: torch.dtype, runs: int, scale: int = 1) -> None:
    """One denoising step of FLUX.1 Fill [dev] on catvton-flux's canvas (two 576x768 cells,
    3456 image tokens, 512 text tokens) with random weights (`scale` divides the depth, to try
    the code on a CPU): seconds per step, the 30-step try-on's transformer time, peak memory."""
    from diffusers import FluxPipeline, FluxTransformer2DModel

    config = FLUX_FILL_DEV | {
        "num_layers": max(1, FLUX_FILL_DEV["num_layers"] // scale),
        "num_single_layers": max(1, FLUX_FILL_DEV["num_single_layers"] // scale),
    }
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(**config).to(device, dtype).eval()
    tokens_high, tokens_wide, text_tokens = 768 // 16, 1152 // 16, 512
    hidden = torch.randn(1, tokens_high * tokens_wide, 384, device=device, dtype=dtype)
    image_ids = FluxPipeline._prepare_latent_image_ids(1, tokens_high, tokens_wide, device, dtype)

    def step() -> None:
        with torch.inference_mode():
            transformer(
                hidden_states=hidden, timestep=torch.full((1,), 0.5, device=device, dtype=dtype),
                guidance=torch.full((1,), 30.0, device=device, dtype=dtype),
                pooled_projections=torch.randn(1, 768, device=device, dtype=dtype),
                encoder_hidden_states=torch.randn(1, text_tokens, 4096, device=device, dtype=dtype),
                txt_ids=torch.zeros(text_tokens, 3, device=device, dtype=dtype), img_ids=image_ids, return_dict=False,
            )  # fmt: skip

    print(f"device {device}, dtype {str(dtype).removeprefix('torch.')}, median of {runs}\n")
    print("| full-size architecture (random weights) | seconds per step | 30 steps (s) | peak memory (GiB) |")
    print("|---|---|---|---|")
    with PeakMemory() as memory:
        seconds = median_seconds(step, runs)
    name = "FLUX.1 Fill [dev], [garment | person] 1152×768" + (f", depth ÷{scale}" if scale > 1 else "")
    print(f"| {name} | {seconds:.2f} | {30 * seconds:.0f} | {memory.gib:.1f} |")


def full_size_flux_vae() -> diffusers.AutoencoderKL:
    """FLUX.1's 16-channel VAE architecture (random weights)."""
    blocks = {"down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4}
    widths = (128, 256, 512, 512)
    return diffusers.AutoencoderKL(latent_channels=16, block_out_channels=widths, layers_per_block=2, **blocks)


def full_size_flux(folder: Path, scale: int) -> dict[str, float]:
    """FLUX.1 [dev]'s pipeline architecture with random weights, saved in bf16 (depths ÷ `scale`):
    the transformer, T5-XXL's encoder, CLIP-L, the 16-channel VAE; the studio's small tokenizers
    (the ids stay inside the real vocabularies). Returns each component's parameters in billions."""
    from diffusers import FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from studio.families.flux import flow_scheduler

    torch.manual_seed(0)
    layers = {"num_layers": max(1, 19 // scale), "num_single_layers": max(1, 38 // scale)}
    transformer = FluxTransformer2DModel(**(FLUX_FILL_DEV | {"in_channels": 64, "out_channels": None} | layers))
    t5 = T5EncoderModel(T5Config(vocab_size=32128, d_model=4096, d_ff=10240, num_layers=max(1, 24 // scale),
                                 num_heads=64, d_kv=64, feed_forward_proj="gated-gelu"))  # fmt: skip
    clip = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                        num_attention_heads=12, vocab_size=49408, projection_dim=768))  # fmt: skip
    pipe = FluxPipeline(
        flow_scheduler(), full_size_flux_vae(), clip, offline.clip_tokenizer(), t5, offline.t5_tokenizer(), transformer
    )
    pipe.to(dtype=torch.bfloat16).save_pretrained(folder, safe_serialization=True)
    return {name: sum(p.numel() for p in module.parameters()) / 1e9 for name, module in pipe.components.items()
            if isinstance(module, torch.nn.Module)}  # fmt: skip


def memory_policies(device: str, dtype: torch.dtype, size: int, scale: int = 1, steps: int = 4) -> None:
    """Each memory policy that runs here, loaded and placed as the registry does it, on FLUX.1
    [dev]'s architecture with random weights: the plan's estimate, the measured peak and the seconds
    per image (`steps` steps at `size`², the text encoded each time)."""
    from dataclasses import replace

    from studio.device import release_memory
    from studio.loading import load_pipeline
    from studio.memory import POLICIES, installed_quantizers, plan_for, unavailable_reason

    folder = Path(tempfile.mkdtemp(prefix="dit-studio-flux-full-"))
    parameters = full_size_flux(folder, scale)
    spec = replace(Catalogue.load().get("flux-dev"), repo=str(folder), parameters=parameters, gated=False)
    quantizers = installed_quantizers()
    print(f"device {device}, dtype {str(dtype).removeprefix('torch.')}, {size}x{size}, {steps} steps"
          + (f", depths ÷{scale}" if scale > 1 else "") + "\n")  # fmt: skip
    print("| FLUX.1 [dev] architecture, random weights | plan's estimate (GB) | peak memory (GiB) | s / image |")
    print("|---|---|---|---|")
    for policy in POLICIES:
        reason = unavailable_reason(policy, device, quantizers)
        if reason is not None:
            print(f"| {policy.name} | cannot run here: {reason} | | |")
            continue
        plan = plan_for(spec, device, dtype, None, policy.name, quantizers)
        pipe = load_pipeline(spec, dtype, True, plan.quantization_config(device))
        if plan.moves_whole:
            pipe.to(device)
        else:
            plan.apply(pipe, device)
        pipe.set_progress_bar_config(disable=True)

        def image(loaded: Any = pipe) -> None:
            loaded("a red circle", height=size, width=size, num_inference_steps=steps, max_sequence_length=128,
                 generator=torch.Generator("cpu").manual_seed(0), output_type="latent")  # fmt: skip

        with PeakMemory() as memory:
            seconds = median_seconds(image, 1)
        print(f"| {policy.name} | {plan.device_bytes / 1e9:.1f} | {memory.gib:.1f} | {seconds:.2f} |")
        del pipe
        release_memory()


# CogVideoX-2b's and Wan 2.1 T2V 1.3B's transformers (their repos' config.json).
COGVIDEOX_2B: dict[str, Any] = {
    "num_attention_heads": 30, "attention_head_dim": 64, "num_layers": 30, "text_embed_dim": 4096,
    "time_embed_dim": 512, "sample_width": 90, "sample_height": 60, "sample_frames": 49, "max_text_seq_length": 226,
}  # fmt: skip
WAN_1_3B: dict[str, Any] = {
    "patch_size": (1, 2, 2), "num_attention_heads": 12, "attention_head_dim": 128, "in_channels": 16,
    "out_channels": 16, "text_dim": 4096, "freq_dim": 256, "ffn_dim": 8960, "num_layers": 30, "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads", "eps": 1e-6, "rope_max_seq_len": 1024,
}  # fmt: skip


def full_size_video(device: str, dtype: torch.dtype, runs: int, scale: int = 1) -> None:
    """One DiTCtrl step of a two-prompt plan (two transitions: three pairs, each a batch of four
    rows with KV sharing in the last sixth of the layers) on the full-size transformers with
    random weights, at the models' own sizes (`scale` divides sizes and depth, to try the code
    on a CPU). Seconds per step, the 50-step video's transformer time, peak memory."""
    from diffusers import CogVideoXTransformer3DModel, WanTransformer3DModel

    from studio.attention import AttentionController, CaptureBranch, ShareKeysValues, controlled
    from studio.attention.control import BranchCache
    from studio.attention.processors import video_layers
    from studio.methods.video import shared_layers

    cases: dict[str, tuple[Any, dict[str, Any], str, tuple[int, ...], tuple[int, int], bool]] = {
        "CogVideoX-2B, 720×480, 13 latent frames a segment": (
            CogVideoXTransformer3DModel, COGVIDEOX_2B, "text-video", (13, 16, 60, 90), (226, 4096), False),
        "Wan 2.1 1.3B, 832×480, 21 latent frames a segment": (
            WanTransformer3DModel, WAN_1_3B, "video", (21, 16, 60, 104), (512, 4096), True),
    }  # fmt: skip
    print(f"device {device}, dtype {str(dtype).removeprefix('torch.')}, median of {runs}\n")
    print("| full-size architecture (random weights) | seconds per DiTCtrl step (3 pairs) | 50 steps (s) | "
          "peak memory (GiB) |\n|---|---|---|---|")  # fmt: skip
    for name, (model_class, config, order, shape, text_shape, channels_first) in cases.items():
        config = config | {"num_layers": max(2, config["num_layers"] // scale)}
        torch.manual_seed(0)
        transformer = model_class(**config).to(device, dtype).eval()
        frames, channels, height, width = shape
        height, width = max(4, height // scale // 2 * 2), max(4, width // scale // 2 * 2)
        latents = torch.randn(4, frames, channels, height, width, device=device, dtype=dtype)
        if channels_first:
            latents = latents.transpose(1, 2).contiguous()
        text = torch.randn(4, text_shape[0], text_shape[1], device=device, dtype=dtype)
        layers = set(shared_layers(video_layers(transformer)))
        cache = BranchCache(history=False)
        controller = AttentionController(
            [
                CaptureBranch(cache=cache, layers=layers, rows=[0, 2]),
                ShareKeysValues(source=cache, layers=layers, rows=[1, 3]),
            ]
        )

        def step() -> None:
            with torch.inference_mode(), controlled(transformer, controller, order):
                for _ in range(3):
                    transformer(hidden_states=latents, encoder_hidden_states=text,
                                timestep=torch.full((4,), 500, device=device), return_dict=False)  # fmt: skip

        with PeakMemory() as memory:
            seconds = median_seconds(step, runs)
        print(f"| {name} | {seconds:.2f} | {50 * seconds:.0f} | {memory.gib:.1f} |")


def live_loop(registry: Registry, args: argparse.Namespace, frames: int = 12) -> None:
    """Frames per second of the live sketch loop on each family's two fastest targets (for FLUX
    offline: the distilled student, then its teacher): a stroke that grows every frame (as a
    person draws), the prompt cached or encoded for every frame."""
    from PIL import Image, ImageDraw

    def sketch(length: int) -> Image.Image:
        canvas = Image.new("RGB", (args.size, args.size), "white")
        ImageDraw.Draw(canvas).line([(4, args.size // 2), (4 + length, args.size // 3)], fill="black", width=3)
        return canvas

    strokes = [sketch(4 + index * (args.size - 8) // frames) for index in range(frames)]
    print("\n| live loop | frames/s, prompt cached | frames/s, prompt encoded every frame | ms/frame cached |")
    print("|---|---|---|---|")
    prompt = "a large red circle on the left, gray background"
    for family in ("flux", "sd3", "sana"):
        for target in live_targets(registry, family)[:2]:
            rates = []
            for cache_prompts in (True, False):
                renderer = LiveRenderer(registry, cache_prompts=cache_prompts)
                request = LiveRequest(target, prompt, strokes[0], width=args.size, height=args.size)
                renderer.frame(request)  # warm-up: the model and its ControlNet load once
                started = time.perf_counter()
                for drawing in strokes:
                    renderer.frame(LiveRequest(target, prompt, drawing, width=args.size, height=args.size))
                rates.append(frames / (time.perf_counter() - started))
            spec = registry.catalogue.get(target.model)
            print(f"| {target.describe(spec)} | {rates[0]:.1f} | {rates[1]:.1f} | {1000 / rates[0]:.0f} |")


# SANA 600M's transformer (diffusers config of Efficient-Large-Model/Sana_600M_1024px_diffusers):
# 28 blocks of 36 x 32 linear-attention heads, cross-attention to 300 Gemma-2 tokens (2304 wide).
SANA_600M = dict(
    in_channels=32,
    out_channels=32,
    num_attention_heads=36,
    attention_head_dim=32,
    num_layers=28,
    num_cross_attention_heads=16,
    cross_attention_head_dim=72,
    cross_attention_dim=1152,
    caption_channels=2304,
    sample_size=32,
    patch_size=1,
)
# DC-AE f32c32 (SANA 1.0): 32x compression to 32 channels.
DC_AE_F32C32: dict[str, Any] = dict(
    latent_channels=32,
    encoder_block_types=("ResBlock",) * 3 + ("EfficientViTBlock",) * 3,
    decoder_block_types=("ResBlock",) * 3 + ("EfficientViTBlock",) * 3,
    encoder_layers_per_block=(2, 2, 2, 3, 3, 3),
    decoder_layers_per_block=(3, 3, 3, 3, 3, 3),
    upsample_block_type="interpolate",
    downsample_block_type="Conv",
    decoder_norm_types=("batch_norm",) * 3 + ("rms_norm",) * 3,
    decoder_act_fns=("relu",) * 3 + ("silu",) * 3,
    scaling_factor=0.41407,
)


@torch.no_grad()
def full_size_one_step(device: str, dtype: torch.dtype, size: int, runs: int, scale: int = 1) -> None:
    """Latency of the full-size architectures with random weights (the cost is the architecture's):
    SANA-Sprint 0.6B text to image (1 and 2 steps) and SANA 600M with its 7-block ControlNet (one
    step), each with the DC-AE decode, the prompt already encoded (as the live loop has it); then
    FLUX.1 [schnell] at 4 steps, without and with compiled blocks (its depth ÷ `scale`)."""
    from diffusers import AutoencoderDC, SanaControlNetModel, SanaTransformer2DModel

    torch.manual_seed(0)
    sprint = SanaTransformer2DModel(**SANA_600M, guidance_embeds=True, qk_norm="rms_norm_across_heads").to(
        device, dtype
    )
    sana = SanaTransformer2DModel(**SANA_600M).to(device, dtype)
    controlnet = SanaControlNetModel(**{k: v for k, v in SANA_600M.items() if k != "out_channels"}, out_channels=32).to(
        device, dtype
    )
    decoder = AutoencoderDC(**DC_AE_F32C32).to(device, dtype).eval()
    side = size // 32
    latents = torch.randn(1, 32, side, side, device=device, dtype=dtype)
    text = torch.randn(1, 300, 2304, device=device, dtype=dtype)
    mask = torch.ones(1, 300, device=device, dtype=dtype)
    step = torch.full((1,), 0.5, device=device, dtype=dtype)

    def sprint_image(steps: int):
        x = latents
        for _ in range(steps):
            x = sprint(
                x,
                encoder_hidden_states=text,
                encoder_attention_mask=mask,
                timestep=step,
                guidance=torch.full((1,), 4.5, device=device, dtype=dtype),
                return_dict=False,
            )[0]
        return decoder.decode(x / DC_AE_F32C32["scaling_factor"]).sample

    def controlnet_image():
        conditioning = {"encoder_hidden_states": text, "encoder_attention_mask": mask, "timestep": step}
        blocks = controlnet(latents, controlnet_cond=latents, return_dict=False, **conditioning)[0]
        x = sana(latents, controlnet_block_samples=blocks, return_dict=False, **conditioning)[0]
        return decoder.decode(x / DC_AE_F32C32["scaling_factor"]).sample

    print(f"device {device}, dtype {str(dtype).removeprefix('torch.')}, {size}x{size}, median of {runs}\n")
    print("| full-size architecture (random weights) | seconds per image | paper (H100, 1024²) |\n|---|---|---|")
    print(f"| SANA-Sprint 0.6B, 1 step + DC-AE decode | {median_seconds(lambda: sprint_image(1), runs):.3f} | 0.1 |")
    print(f"| SANA-Sprint 0.6B, 2 steps + DC-AE decode | {median_seconds(lambda: sprint_image(2), runs):.3f} | |")
    print(f"| SANA 600M + 7-block ControlNet, 1 step + decode | {median_seconds(controlnet_image, runs):.3f} | 0.25 |")
    for compile_blocks in (False, True):
        seconds, name = full_size_schnell(device, dtype, size, runs, scale, compile_blocks)
        print(f"| {name} | {seconds:.3f} | ~1 |")


def full_size_schnell(
    device: str, dtype: torch.dtype, size: int, runs: int, scale: int, compile_blocks: bool
) -> tuple[float, str]:
    """FLUX.1 [schnell] text to image: 4 steps of its transformer (no guidance input, 512 text
    tokens) and the 16-channel VAE decode, random weights, the prompt already encoded; with
    `compile_blocks` its repeated blocks compiled as the studio's compile option does (the first,
    compiling call is the warm-up). `scale` divides the depth, to run it where 12 B parameters do
    not fit (a CPU); the row says so."""
    from diffusers import FluxTransformer2DModel

    from studio.families import TextConditioning
    from studio.families.flux import packed_inputs, unpacked

    torch.manual_seed(0)
    layers = {"num_layers": max(1, 19 // scale), "num_single_layers": max(1, 38 // scale)}
    config = FLUX_FILL_DEV | {"in_channels": 64, "out_channels": None, "guidance_embeds": False} | layers
    transformer = FluxTransformer2DModel(**config).to(device, dtype).eval()
    if compile_blocks:
        transformer.compile_repeated_blocks(fullgraph=True)
    decoder = full_size_flux_vae().to(device, dtype).eval()
    latents = torch.randn(1, 16, size // 8, size // 8, device=device, dtype=dtype)
    text_tokens = 512
    text = TextConditioning(torch.randn(1, text_tokens, 4096, device=device, dtype=dtype),
                            torch.randn(1, 768, device=device, dtype=dtype),
                            torch.zeros(text_tokens, 3, device=device, dtype=dtype))  # fmt: skip

    def image() -> None:
        with torch.inference_mode():
            x = latents
            for t in (1.0, 0.75, 0.5, 0.25):
                inputs = packed_inputs(x, torch.full((1,), t, device=device, dtype=dtype), text, None)
                x = x - 0.25 * unpacked(transformer(**inputs)[0], x)
            decoder.decode(x)

    seconds = median_seconds(image, runs)
    name = "FLUX.1 [schnell], 4 steps + VAE decode" + (", blocks compiled" if compile_blocks else "")
    if scale > 1:
        name += f" (depth {layers['num_layers']} + {layers['num_single_layers']} of 19 + 38)"
    return seconds, name


if __name__ == "__main__":
    main()
