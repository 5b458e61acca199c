"""LoRA adapters owned by the registry, on the built-in FLUX model."""

import pickle

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline
from peft import LoraConfig, get_peft_model_state_dict
from support import pipeline_of

from studio.catalogue import Catalogue
from studio.errors import InvalidRequest
from studio.generation import GenerationSettings, generate
from studio.registry import Registry

MODEL = "tiny-flux-dev"


def make_lora(registry, path, seed, targets=("to_q", "to_k", "to_v", "to_out.0")):
    """A LoRA with random A and B on the built-in transformer, saved as diffusers saves LoRAs."""
    transformer = pipeline_of(registry, MODEL).transformer
    torch.manual_seed(seed)
    transformer.add_adapter(
        LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=list(targets)),
        adapter_name="maker",
    )
    with torch.no_grad():  # big enough to move the tiny model's output visibly
        for name, parameter in transformer.named_parameters():
            if "lora_B" in name:
                parameter.mul_(20)
    layers = get_peft_model_state_dict(transformer, adapter_name="maker")
    transformer.delete_adapters("maker")
    FluxPipeline.save_lora_weights(path.parent, transformer_lora_layers=layers, weight_name=path.name)
    return path


@pytest.fixture
def lora_registry(tmp_path):
    """A registry of its own: adapters must not leak into the session's shared models."""
    registry = Registry(Catalogue.load(), device="cpu")
    return (
        registry,
        make_lora(registry, tmp_path / "one.safetensors", 1),
        make_lora(registry, tmp_path / "two.safetensors", 2),
    )


def image(registry, adapters=()):
    settings = GenerationSettings(
        model=MODEL, prompt="a red circle", steps=2, guidance=3.5, width=64, height=64, adapters=tuple(adapters)
    )
    return np.asarray(next(generate(registry, settings)).image, dtype=float)


def test_adapter_changes_scales_and_unloads(lora_registry):
    registry, one, two = lora_registry
    plain = image(registry)
    registry.add_adapter(MODEL, "one", one)
    assert np.array_equal(image(registry), plain)  # registered but not asked for: inactive
    with_one = image(registry, [("one", 1.0)])
    assert np.abs(with_one - plain).mean() > 1
    assert np.array_equal(image(registry, [("one", 0.0)]), plain)  # scale 0 is no LoRA
    half = image(registry, [("one", 0.5)])
    assert 0 < np.abs(half - plain).mean() < np.abs(with_one - plain).mean()

    registry.add_adapter(MODEL, "two", two)
    with_two = image(registry, [("two", 1.0)])
    assert np.abs(with_two - with_one).mean() > 1  # the two adapters swap
    assert np.array_equal(image(registry, [("one", 1.0)]), with_one)
    both = image(registry, [("one", 1.0), ("two", 1.0)])
    assert np.abs(both - with_one).mean() > 1 and np.abs(both - with_two).mean() > 1

    registry.remove_adapter(MODEL, "one")
    registry.remove_adapter(MODEL, "two")
    assert registry.adapters(MODEL) == []
    assert np.array_equal(image(registry), plain)


def test_adapters_come_back_after_eviction(lora_registry):
    registry, one, _ = lora_registry
    registry.add_adapter(MODEL, "one", one)
    with_one = image(registry, [("one", 1.0)])
    registry.models.budget_bytes = 1  # room for one model at a time: the next load evicts this one
    with registry.use("tiny-sd3"):
        assert MODEL not in registry.models.ids()
    assert np.array_equal(image(registry, [("one", 1.0)]), with_one)


def test_bad_adapters_are_refused_clearly(lora_registry, tmp_path):
    registry, one, _ = lora_registry
    pickled = tmp_path / "evil.safetensors"
    pickled.write_bytes(pickle.dumps({"weight": [1, 2, 3]}))
    with pytest.raises(InvalidRequest, match="not a safetensors file"):
        registry.add_adapter(MODEL, "evil", pickled)
    with pytest.raises(InvalidRequest, match="only .safetensors"):
        registry.add_adapter(MODEL, "evil", tmp_path / "lora.bin")
    with pytest.raises(InvalidRequest, match="no LoRA loader for PixArt"):
        registry.add_adapter("tiny-pixart-sigma", "one", one)
    with pytest.raises(InvalidRequest, match="does not fit"):
        registry.add_adapter("tiny-sana", "flux-lora", one)  # a FLUX LoRA has no layer in SANA
    assert registry.adapters("tiny-sana") == []
    with pytest.raises(InvalidRequest, match=f"^No adapter ghost, spook for {MODEL}; add it first.$"):
        image(registry, [("spook", 1.0), ("ghost", 1.0)])
    registry.add_adapter(MODEL, "one", one)
    with pytest.raises(InvalidRequest, match="already has an adapter named one"):
        registry.add_adapter(MODEL, "one", one)


def test_replacing_an_adapter_hot_swaps_its_weights(lora_registry):
    registry, one, two = lora_registry
    fresh = Registry(Catalogue.load(), device="cpu")
    fresh.add_adapter(MODEL, "style", two)
    expected = image(fresh, [("style", 1.0)])
    registry.add_adapter(MODEL, "style", one)
    image(registry, [("style", 1.0)])
    transformer = pipeline_of(registry, MODEL).transformer
    before = {name: module for name, module in transformer.named_modules() if name.endswith("lora_A.style")}
    registry.replace_adapter(MODEL, "style", two)  # same shapes: swapped in place (hotswap)
    after = dict(transformer.named_modules())
    assert before and all(after.get(name) is module for name, module in before.items())  # no reload
    assert registry.models.get(MODEL).adapters_loaded == {"style"}
    assert np.array_equal(image(registry, [("style", 1.0)]), expected)
    with pytest.raises(InvalidRequest, match="No adapter ghost"):
        registry.replace_adapter(MODEL, "ghost", two)


def test_new_weights_on_other_layers_are_loaded_afresh(lora_registry, tmp_path):
    registry, one, _ = lora_registry
    wider = make_lora(
        registry, tmp_path / "wider.safetensors", 5, targets=("to_q", "to_k", "to_v", "to_out.0", "proj_mlp")
    )
    fresh = Registry(Catalogue.load(), device="cpu")
    fresh.add_adapter(MODEL, "style", wider)
    expected = image(fresh, [("style", 1.0)])
    registry.add_adapter(MODEL, "style", one)
    image(registry, [("style", 1.0)])
    registry.replace_adapter(MODEL, "style", wider)  # more layers: no hotswap, unloaded instead
    assert registry.models.get(MODEL).adapters_loaded == set()
    assert np.array_equal(image(registry, [("style", 1.0)]), expected)  # loaded again, the new weights
    registry.remove_adapter(MODEL, "style")
    assert registry.models.get(MODEL).adapters_loaded == set()
    with pytest.raises(InvalidRequest, match=f"^No adapter style for {MODEL}.$"):
        registry.remove_adapter(MODEL, "style")


def test_adapter_refusals_are_exact(lora_registry, tmp_path):
    from safetensors.torch import save_file

    registry, one, _ = lora_registry
    empty = tmp_path / "empty.safetensors"
    save_file({}, empty)
    with pytest.raises(InvalidRequest, match="^empty.safetensors holds no weights.$"):
        registry.add_adapter(MODEL, "empty", empty)
    with pytest.raises(InvalidRequest, match="^Name the adapter with letters, digits, '-' or '_' \\(at most 64\\).$"):
        registry.add_adapter(MODEL, "x" * 65, one)
    unknown = tmp_path / "elsewhere.safetensors"  # keys diffusers skips (with a warning) rather than refuses
    save_file({name: torch.zeros(4, 4) for name in ("foo.bar.lora_A.weight", "foo.bar.lora_B.weight")}, unknown)
    spec = registry.catalogue.get(MODEL)
    with pytest.raises(InvalidRequest) as refused:
        registry.add_adapter(MODEL, "elsewhere", unknown)
    assert (
        str(refused.value) == f"elsewhere.safetensors does not fit {spec.name}: none of its layers are in a FLUX model."
    )


@pytest.mark.parametrize("name", ["../../x", "/tmp/evil", "a/b", "..", ""])
def test_an_adapter_name_never_chooses_a_path(lora_registry, tmp_path, name, monkeypatch):
    """An upload's name is checked before anything is written: no file lands outside the
    studio's own LoRA folder, and nothing is kept for a refused name."""
    registry, one, _ = lora_registry
    home = tmp_path / "home"
    monkeypatch.setenv("DIT_STUDIO_HOME", str(home))
    before = set(tmp_path.rglob("*"))
    with pytest.raises(InvalidRequest, match="Name the adapter"):
        registry.import_adapter(MODEL, name, one)
    assert set(tmp_path.rglob("*")) == before and not home.exists()


def test_in_shared_mode_a_visitors_adapters_are_theirs_alone(lora_registry, tmp_path, monkeypatch):
    from studio.sessions import MAX_SESSION_ADAPTERS, SessionAdapters

    registry, one, two = lora_registry
    monkeypatch.setenv("DIT_STUDIO_HOME", str(tmp_path / "home"))
    visitors = SessionAdapters(registry, shared=True)
    mine = visitors.add("ann", MODEL, "style", str(one), [])
    assert visitors.choices("ann", MODEL) == [("style", mine)]
    assert visitors.choices("bob", MODEL) == []  # not listed to anyone else
    with pytest.raises(InvalidRequest, match="Only the adapters you added"):
        visitors.remove("bob", MODEL, mine)
    theirs = visitors.add("bob", MODEL, "style", str(two), [])  # the same name, another adapter
    assert theirs != mine and sorted(registry.adapters(MODEL)) == sorted([mine, theirs])
    for number in range(1, MAX_SESSION_ADAPTERS):
        visitors.add("ann", MODEL, f"more-{number}", str(one), [])
    with pytest.raises(InvalidRequest, match=f"At most {MAX_SESSION_ADAPTERS} adapters a visitor"):
        visitors.add("ann", MODEL, "one-too-many", str(one), [])
    copies = list((tmp_path / "home").rglob("*.safetensors"))
    visitors.end("ann")  # the visitor left: their adapters and copies go
    assert registry.adapters(MODEL) == [theirs]
    assert len(list((tmp_path / "home").rglob("*.safetensors"))) == len(copies) - MAX_SESSION_ADAPTERS
    local = SessionAdapters(registry, shared=False)
    assert local.registered_name("anyone", "style") == "style"


def test_a_shared_studio_fetches_loras_only_from_allowed_repos(lora_registry, monkeypatch):
    from studio.sessions import SessionAdapters

    registry, _, _ = lora_registry
    monkeypatch.delenv("DIT_STUDIO_ALLOWED_REPOS", raising=False)
    with pytest.raises(InvalidRequest, match="fetches LoRAs only from ali-vilab/In-Context-LoRA"):
        SessionAdapters(registry, shared=True).add("ann", MODEL, "x", None, ["someone/styles", "s.safetensors"])
    monkeypatch.setenv("DIT_STUDIO_ALLOWED_REPOS", "someone/styles")
    with pytest.raises(InvalidRequest, match="Cannot fetch s.safetensors from someone/styles"):  # allowed: tried
        SessionAdapters(registry, shared=True).add("ann", MODEL, "x", None, ["someone/styles", "s.safetensors"])
