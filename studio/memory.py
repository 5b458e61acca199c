"""How a model fits the memory budget: quantization and offload as registry policies.

A plan gives each pipeline component a placement: kept on the device at the studio's dtype,
quantized (int8 weight-only: bitsandbytes on CUDA, torchao where it is installed; 4-bit NF4:
bitsandbytes on CUDA), or offloaded (kept in host memory and streamed to the device block by
block while it runs: diffusers' group offloading). The policies are tried from the fastest to the
smallest and the first whose estimate fits the budget is chosen, unless the user names one; the
plan is shown before the load ("FLUX.1 [dev]: transformer int8, text encoders offloaded,
≈ 14 GB of 16").

Sizes come from the catalogue's parameter counts (a property of the architecture, so known before
anything downloads; `python -m studio.memory` prints every model's plan at common budgets).
"""

from __future__ import annotations

import argparse
import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from studio.errors import InvalidRequest

if TYPE_CHECKING:  # the command line reads the policy names before the hub's settings are made
    from studio.catalogue import ModelSpec

GB = 1e9
AUTOMATIC = "auto"
PLACEMENTS = ("resident", "int8", "nf4", "offloaded")
# Device bytes a parameter takes in each placement besides "resident" (the dtype's own size):
# int8 weights plus a scale per output row and the layers left unquantized (norms, embeddings);
# NF4 half a byte plus block scales and the same unquantized layers.
BYTES_PER_PARAMETER = {"int8": 1.05, "nf4": 0.6}
# An offloaded component holds one block group (and the next, prefetched) on the device at a
# time: a small share of its weights.
OFFLOADED_SHARE = 0.1
# What a plan leaves free for activations and the allocator's slack.
WORKING_SHARE = 0.1
TEXT_ENCODER_PREFIX = "text_encoder"


@dataclass(frozen=True)
class Policy:
    """Where the transformer, the text encoders and everything else go."""

    name: str
    transformer: str
    text_encoders: str
    others: str = "resident"

    def on(self, device: str) -> Policy:
        """The policy as it runs on `device`: on the CPU the host is the device, so what would be
        offloaded stays where it is."""
        if is_accelerator(device):
            return self

        def kept(placement: str) -> str:
            return "resident" if placement == "offloaded" else placement

        return Policy(self.name, kept(self.transformer), kept(self.text_encoders), kept(self.others))

    def same_placements(self, other: Policy) -> bool:
        return (self.transformer, self.text_encoders, self.others) == (
            other.transformer,
            other.text_encoders,
            other.others,
        )

    def placement(self, component: str) -> str:
        if component == "transformer":
            return self.transformer
        if component.startswith(TEXT_ENCODER_PREFIX):
            return self.text_encoders
        return self.others


# From the fastest to the smallest. Text encoders run once a prompt, so they leave the device
# first; the transformer runs every step, so it is quantized before it is streamed.
POLICIES: tuple[Policy, ...] = (
    Policy("resident", "resident", "resident"),
    Policy("text-encoders-offloaded", "resident", "offloaded"),
    Policy("transformer-int8", "int8", "offloaded"),
    Policy("transformer-nf4", "nf4", "offloaded"),
    Policy("all-offloaded", "offloaded", "offloaded", "offloaded"),
)
RESIDENT = POLICIES[0]
POLICY_NAMES = (AUTOMATIC, *(policy.name for policy in POLICIES))


QUANTIZERS = ("bitsandbytes", "torchao")


def installed_quantizers() -> frozenset[str]:
    """The quantization libraries installed here, found without importing them (torchao's import
    is slow and loud)."""
    return frozenset(name for name in QUANTIZERS if importlib.util.find_spec(name) is not None)


def is_accelerator(device: str) -> bool:
    return not device.startswith("cpu")


def quantization_backend(placement: str, device: str, quantizers: frozenset[str]) -> str | None:
    """The library (of those installed) that quantizes to `placement` on `device`, None where none can."""
    bitsandbytes = device.startswith("cuda") and "bitsandbytes" in quantizers
    if placement == "int8":
        return "bitsandbytes" if bitsandbytes else ("torchao" if "torchao" in quantizers else None)
    if placement == "nf4":
        return "bitsandbytes" if bitsandbytes else None
    return None


def unavailable_reason(policy: Policy, device: str, quantizers: frozenset[str]) -> str | None:
    """Why a policy cannot run on `device` with these quantization libraries, None when it can.
    A policy that only offloads means nothing on the CPU."""
    placed = policy.on(device)
    if policy.name != RESIDENT.name and placed.same_placements(RESIDENT):
        return "offloading moves weights from the host to an accelerator, and this studio runs on the CPU"
    placements = {placed.transformer, placed.text_encoders, placed.others}
    if "int8" in placements and quantization_backend("int8", device, quantizers) is None:
        return "int8 needs bitsandbytes (on CUDA) or torchao: `pip install torchao`"
    if "nf4" in placements and quantization_backend("nf4", device, quantizers) is None:
        return "4-bit needs bitsandbytes on a CUDA device: `pip install bitsandbytes`"
    return None


def policy_named(name: str) -> Policy:
    for policy in POLICIES:
        if policy.name == name:
            return policy
    raise InvalidRequest(f"There is no memory policy '{name}'; the policies are {', '.join(POLICY_NAMES)}.")


def gigabytes(size: float) -> str:
    return f"{size / GB:.1f}".removesuffix(".0") if size >= 0.95 * GB else f"{size / GB:.2f}"


@dataclass(frozen=True)
class MemoryPlan:
    """One model's placements and what they cost on the device."""

    model: str
    policy: Policy
    # Parameters of each component (count).
    parameters: dict[str, float]
    dtype_bytes: int
    budget_bytes: int | None
    quantizers: frozenset[str] = frozenset()
    automatic: bool = True

    def component_bytes(self, component: str) -> float:
        count = self.parameters[component]
        placement = self.policy.placement(component)
        if placement == "offloaded":
            return OFFLOADED_SHARE * count * self.dtype_bytes
        return count * BYTES_PER_PARAMETER.get(placement, self.dtype_bytes)

    @property
    def device_bytes(self) -> int:
        """The weights the device holds under this plan (activations come on top)."""
        return int(sum(self.component_bytes(name) for name in self.parameters))

    @property
    def fits(self) -> bool:
        return self.budget_bytes is None or self.device_bytes <= (1 - WORKING_SHARE) * self.budget_bytes

    @property
    def moves_whole(self) -> bool:
        """Every component plainly on the device: the model can go to host memory and back."""
        return self.policy.name == "resident"

    def placements(self) -> dict[str, str]:
        return {name: self.policy.placement(name) for name in self.parameters}

    def describe(self) -> str:
        """'FLUX.1 [dev]: transformer int8, text encoders offloaded, ≈ 14 GB of 16'."""
        groups: dict[str, list[str]] = {}
        for name, placement in self.placements().items():
            if placement != "resident":
                groups.setdefault(placement, []).append(name)
        parts = []
        for placement, names in groups.items():
            words = sorted({component_word(name, len(names)) for name in names})
            parts.append(f"{' and '.join(words)} {'4-bit' if placement == 'nf4' else placement}")
        if self.policy.others == "offloaded":
            parts = ["every component offloaded"]
        what = ", ".join(parts) if parts else "everything on the device"
        budget = f" of {gigabytes(self.budget_bytes)}" if self.budget_bytes else ""
        chosen = "" if self.automatic else " (chosen by hand)"
        return f"{self.model}: {what}, ≈ {gigabytes(self.device_bytes)} GB{budget}{chosen}"

    def quantization_config(self, device: str):
        """diffusers' PipelineQuantizationConfig for the quantized components, None without any."""
        mapping = {}
        for name, placement in self.placements().items():
            if placement in BYTES_PER_PARAMETER:
                mapping[name] = backend_config(placement, device, self.quantizers)
        if not mapping:
            return None
        from diffusers.quantizers import PipelineQuantizationConfig

        return PipelineQuantizationConfig(quant_mapping=mapping)

    def apply(self, pipe, device: str) -> None:
        """Put a freshly read pipeline on the device as planned: offloaded components get
        group-offload hooks (their weights stay in host memory), the rest move to the device."""
        from diffusers import ModelMixin
        from diffusers.hooks import apply_group_offloading

        for name, component in pipe.components.items():
            if not isinstance(component, torch.nn.Module):
                continue
            if self.policy.placement(name) != "offloaded":
                if not getattr(component, "is_quantized", False) or device_of(component) != torch.device(device):
                    component.to(device)
                continue
            options = dict(
                onload_device=torch.device(device),
                offload_device=torch.device("cpu"),
                offload_type="block_level",
                num_blocks_per_group=1,
                use_stream=device.startswith("cuda"),
            )
            if isinstance(component, ModelMixin):
                component.enable_group_offload(**options)
            else:
                apply_group_offloading(component, **options)


def device_of(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def component_word(name: str, count: int) -> str:
    if name.startswith(TEXT_ENCODER_PREFIX):
        return "text encoders" if count > 1 else "text encoder"
    return name.replace("_", " ")


def backend_config(placement: str, device: str, quantizers: frozenset[str]):
    """The diffusers quantization config of one component."""
    backend = quantization_backend(placement, device, quantizers)
    if backend == "bitsandbytes":
        from diffusers import BitsAndBytesConfig

        if placement == "nf4":
            return BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
            )
        return BitsAndBytesConfig(load_in_8bit=True)
    if backend == "torchao":
        from diffusers import TorchAoConfig
        from torchao.quantization import Int8WeightOnlyConfig

        return TorchAoConfig(Int8WeightOnlyConfig())
    raise InvalidRequest(f"Nothing here can quantize to {placement} on {device}.")


def model_parameters(spec: ModelSpec) -> dict[str, float]:
    """Each component's parameter count: the catalogue's figures, else the whole model (its
    memory figure at 16 bits) counted as its transformer: the small built-ins."""
    if spec.parameters:
        return {name: billions * 1e9 for name, billions in spec.parameters.items()}
    return {"transformer": spec.memory_gb * GB / 2}


def plan_for(
    spec: ModelSpec,
    device: str,
    dtype: torch.dtype,
    budget_bytes: int | None,
    policy: str = AUTOMATIC,
    quantizers: frozenset[str] | None = None,
) -> MemoryPlan:
    """The plan a load of `spec` follows: the named policy, or the first that runs on `device`
    and fits the budget. InvalidRequest for a named policy that cannot run here, or when none fits."""
    quantizers = installed_quantizers() if quantizers is None else quantizers
    parameters = model_parameters(spec)
    dtype_bytes = torch.finfo(dtype).bits // 8

    def plan(candidate: Policy, automatic: bool) -> MemoryPlan:
        placed = candidate.on(device)
        return MemoryPlan(spec.name, placed, parameters, dtype_bytes, budget_bytes, quantizers, automatic)

    def reason(candidate: Policy) -> str | None:
        return unavailable_reason(candidate, device, quantizers)

    if policy != AUTOMATIC:
        chosen = policy_named(policy)
        why = reason(chosen)
        if why is not None:
            raise InvalidRequest(f"The memory policy '{chosen.name}' cannot run here: {why}.")
        return plan(chosen, automatic=False)
    if not spec.parameters:
        # A small built-in, without an architecture's figures: it loads whole and the budget
        # counts what it really takes.
        return plan(RESIDENT, automatic=True)
    runnable = [plan(candidate, True) for candidate in POLICIES if reason(candidate) is None]
    for candidate in runnable:
        if candidate.fits:
            return candidate
    smallest = min(runnable, key=lambda p: p.device_bytes)
    missing = [p.name for p in POLICIES if reason(p) is not None]
    more = f" ({', '.join(missing)} cannot run here)" if missing else ""
    raise InvalidRequest(
        f"{spec.name} needs ≈ {gigabytes(smallest.device_bytes)} GB even as {smallest.policy.name}{more}, "
        f"more than the memory budget ({gigabytes(budget_bytes or 0)} GB): pick a smaller model or raise "
        "--memory-budget."
    )


def main(argv: list[str] | None = None) -> None:
    """Every catalogue model's automatic plan at common budgets, on CUDA with bitsandbytes."""
    from studio.catalogue import Catalogue

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--budgets", type=float, nargs="+", default=[80, 48, 24, 16, 12, 8])
    args = parser.parse_args(argv)
    print("| model | bf16 weights (GB) | " + " | ".join(f"{b:g} GB" for b in args.budgets) + " |")
    print("|---|---|" + "---|" * len(args.budgets))
    for spec in Catalogue.load():
        if not spec.parameters:
            continue
        cells = []
        for budget in args.budgets:
            try:
                chosen = plan_for(spec, "cuda", torch.bfloat16, int(budget * GB), quantizers=frozenset(QUANTIZERS))
                cells.append(f"{chosen.policy.name} ≈ {gigabytes(chosen.device_bytes)}")
            except InvalidRequest:
                cells.append("does not fit")
        total = sum(model_parameters(spec).values()) * 2
        print(f"| {spec.name} | {gigabytes(total)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
