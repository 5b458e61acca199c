"""Memory plans: quantization and offload chosen from the budget, shown before the load, overridable."""

import numpy as np
import pytest
import torch
from accelerate import init_empty_weights
from diffusers import (
    BitsAndBytesConfig,
    CogVideoXTransformer3DModel,
    FluxTransformer2DModel,
    SanaTransformer2DModel,
    WanTransformer3DModel,
)
from support import pipeline_of

from studio.bench import COGVIDEOX_2B, FLUX_FILL_DEV, SANA_600M, WAN_1_3B
from studio.errors import InvalidRequest
from studio.memory import GB, POLICIES, MemoryPlan, plan_for, policy_named
from studio.registry import Registry

BOTH = frozenset({"bitsandbytes", "torchao"})
NONE = frozenset()


def plan(catalogue, model_id, budget_gb, device="cuda", quantizers=BOTH, policy="auto", dtype=torch.bfloat16):
    return plan_for(catalogue.get(model_id), device, dtype, int(budget_gb * GB), policy, quantizers)


@pytest.mark.parametrize(
    "budget_gb, policy, text",
    [
        (80, "resident", "FLUX.1 [dev]: everything on the device, ≈ 33.7 GB of 80"),
        (36, "text-encoders-offloaded", "FLUX.1 [dev]: text encoders offloaded, ≈ 24.9 GB of 36"),
        (16, "transformer-int8", "FLUX.1 [dev]: transformer int8, text encoders offloaded, ≈ 13.6 GB of 16"),
        (12, "transformer-nf4", "FLUX.1 [dev]: transformer 4-bit, text encoders offloaded, ≈ 8.3 GB of 12"),
        (6, "all-offloaded", "FLUX.1 [dev]: every component offloaded, ≈ 3.4 GB of 6"),
    ],
)
def test_the_fastest_plan_that_fits_the_budget_is_chosen(catalogue, budget_gb, policy, text):
    chosen = plan(catalogue, "flux-dev", budget_gb)
    assert chosen.policy.name == policy
    assert chosen.describe() == text
    assert chosen.device_bytes <= 0.9 * budget_gb * GB
    # Every faster policy would not have fitted.
    faster = POLICIES[: [p.name for p in POLICIES].index(policy)]
    assert all(not plan(catalogue, "flux-dev", budget_gb, policy=p.name).fits for p in faster)


def test_a_budget_nothing_fits_is_refused_before_anything_loads(catalogue):
    with pytest.raises(InvalidRequest, match=r"needs ≈ 3.4 GB even as all-offloaded.*budget \(2 GB\)"):
        plan(catalogue, "flux-dev", 2)


def test_plans_use_only_the_quantizers_installed(catalogue):
    # No quantization library: a 16 GB card streams FLUX rather than quantizing it.
    assert plan(catalogue, "flux-dev", 16, quantizers=NONE).policy.name == "all-offloaded"
    with pytest.raises(InvalidRequest, match="int8 needs bitsandbytes .* or torchao: `pip install torchao`"):
        plan(catalogue, "flux-dev", 16, quantizers=NONE, policy="transformer-int8")
    # torchao alone gives int8 but not NF4 (bitsandbytes only).
    assert plan(catalogue, "flux-dev", 16, quantizers=frozenset({"torchao"})).policy.name == "transformer-int8"
    with pytest.raises(InvalidRequest, match="4-bit needs bitsandbytes on a CUDA device"):
        plan(catalogue, "flux-dev", 16, quantizers=frozenset({"torchao"}), policy="transformer-nf4")


def test_on_the_cpu_nothing_is_offloaded_and_int8_keeps_the_rest_in_place(catalogue):
    with pytest.raises(InvalidRequest, match="offloading moves weights .* runs on the CPU"):
        plan(catalogue, "sd3-medium", 64, device="cpu", policy="text-encoders-offloaded")
    on_cpu = plan(catalogue, "flux-dev", 40, device="cpu", quantizers=frozenset({"torchao"}), dtype=torch.float32)
    assert on_cpu.policy.name == "transformer-int8"
    assert set(on_cpu.placements().values()) == {"int8", "resident"}
    assert on_cpu.describe().startswith("FLUX.1 [dev]: transformer int8, ≈ ")
    # Without torchao the CPU has nothing to make FLUX smaller: refused with what would help.
    with pytest.raises(InvalidRequest, match=r"cannot run here.*--memory-budget"):
        plan(catalogue, "flux-dev", 40, device="cpu", quantizers=NONE, dtype=torch.float32)


def test_a_named_policy_is_kept_and_said_to_be_chosen_by_hand(catalogue):
    forced = plan(catalogue, "sana-600m", 80, policy="text-encoders-offloaded")
    assert forced.policy.name == "text-encoders-offloaded" and not forced.automatic
    assert forced.describe().endswith("(chosen by hand)")
    with pytest.raises(InvalidRequest, match="no memory policy 'fast'"):
        policy_named("fast")


def test_quantized_components_get_diffusers_pipeline_quantization(catalogue):
    int8 = plan(catalogue, "flux-dev", 16).quantization_config("cuda")
    assert list(int8.quant_mapping) == ["transformer"]
    assert isinstance(int8.quant_mapping["transformer"], BitsAndBytesConfig)
    assert int8.quant_mapping["transformer"].load_in_8bit
    assert plan(catalogue, "flux-dev", 40).quantization_config("cuda") is None


@pytest.mark.parametrize(
    "model_id, model_class, config",
    [
        ("flux-fill-dev", FluxTransformer2DModel, FLUX_FILL_DEV),
        ("sana-600m", SanaTransformer2DModel, SANA_600M),
        ("cogvideox-2b", CogVideoXTransformer3DModel, COGVIDEOX_2B),
        ("wan-2.1-t2v-1.3b", WanTransformer3DModel, WAN_1_3B),
    ],
)
def test_the_catalogue_counts_are_the_full_size_architectures(catalogue, model_id, model_class, config):
    with init_empty_weights():
        transformer = model_class(**config)
    counted = sum(p.numel() for p in transformer.parameters()) / 1e9
    assert catalogue.get(model_id).parameters["transformer"] == pytest.approx(counted, rel=0.002)


def hooked(module: torch.nn.Module) -> bool:
    """Whether diffusers' group offloading streams some of the module's blocks."""
    registries = (getattr(sub, "_diffusers_hook", None) for sub in module.modules())
    return any("group_offloading" in registry.hooks for registry in registries if registry is not None)


def test_offloaded_text_encoders_draw_the_same_image(catalogue):
    """The plan's group-offload hooks on the text encoders (onloaded to the CPU here, where the
    code path is the same as onto a GPU) leave the image as the whole model draws it."""
    registry = Registry(catalogue, device="cpu")
    plain = pipeline_of(registry, "shapes-flux")
    arguments = dict(prompt="a large red circle on the left, gray background", height=64, width=64)
    arguments |= dict(num_inference_steps=4, max_sequence_length=32, output_type="np")
    before = plain(**arguments, generator=torch.Generator().manual_seed(3)).images[0]
    spec = catalogue.get("shapes-flux")
    offloaded = MemoryPlan(spec.name, policy_named("text-encoders-offloaded"), {"transformer": 1.0}, 4, None)
    offloaded.apply(plain, "cpu")
    assert hooked(plain.text_encoder) and hooked(plain.text_encoder_2) and not hooked(plain.transformer)
    after = plain(**arguments, generator=torch.Generator().manual_seed(3)).images[0]
    np.testing.assert_array_equal(after, before)


def test_the_registry_shows_the_plan_before_the_load_and_a_new_policy_reloads(catalogue):
    registry = Registry(catalogue, device="cpu", memory_budget_gb=8)
    assert registry.memory_plan("shapes-flux").describe().startswith("Shapes world FLUX")
    assert "everything on the device" in registry.memory_plan("shapes-flux").describe()
    first = pipeline_of(registry, "shapes-flux")
    with pytest.raises(InvalidRequest, match="cannot run here"):
        registry.set_memory_policy("shapes-flux", "all-offloaded")
    assert pipeline_of(registry, "shapes-flux") is first  # a refused policy changes nothing
    assert registry.memory_policy("shapes-flux") == "auto"
    # The same placements again: the loaded model stays, and loads so next time.
    registry.set_memory_policy("shapes-flux", "resident")
    assert pipeline_of(registry, "shapes-flux") is first
    with registry.use("shapes-flux"):
        assert not registry.models.free("shapes-flux")  # never under a running request
    assert registry.models.free("shapes-flux")
    assert registry.memory_plan("shapes-flux").describe().endswith("(chosen by hand)")
    assert pipeline_of(registry, "shapes-flux") is not first
