"""The attention-control toolkit on the built-in FLUX and SD3 models."""

import dataclasses

import pytest
import torch
from support import cross, joint, pipeline_of, random_per_family, trained

from studio import flow
from studio.attention import (
    AttentionController,
    BranchCache,
    CaptureBranch,
    MaskAttention,
    RecordAttention,
    ShareKeysValues,
    controlled,
    joint_layers,
    word_token_indices,
)
from studio.errors import InvalidRequest

JOINT_MODELS = [*random_per_family(joint), *trained(joint)]


def model_for(registry, model_id, prompts=("a red circle on the left",)):
    spec = registry.catalogue.get(model_id)
    pipe = pipeline_of(registry, model_id)
    guidance = flow.Guidance(spec.guidance, spec.guidance_scale)
    return spec, pipe, flow.FlowModel(pipe, spec.family, list(prompts), guidance, spec.max_sequence_length)


def velocity_under(controller, spec, pipe, model, latents, sigma=0.7):
    with controlled(pipe.transformer, controller, spec.family.token_order):
        return model.velocity(latents, sigma)


@pytest.mark.parametrize("model_id", JOINT_MODELS)
def test_controlled_layers_without_edits_match_the_originals(registry, model_id):
    spec, pipe, model = model_for(registry, model_id)
    latents = flow.initial_noise(pipe, 0, 64, 64)
    originals = dict(pipe.transformer.attn_processors)
    expected = model.velocity(latents, 0.7)
    # Recording forces the explicit path on every layer; it must not change the result either.
    record = RecordAttention(keys="image")
    controlled_plain = velocity_under(AttentionController(), spec, pipe, model, latents)
    controlled_explicit = velocity_under(AttentionController([record]), spec, pipe, model, latents)
    torch.testing.assert_close(controlled_plain, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(controlled_explicit, expected, rtol=1e-4, atol=1e-5)
    assert {layer for _, layer in record.maps} == set(joint_layers(pipe.transformer))
    image_tokens = (64 // pipe.vae_scale_factor // 2) ** 2
    for attention in record.maps.values():
        assert attention.shape[-2:] == (image_tokens, image_tokens)
        assert (attention.sum(-1) <= 1 + 1e-5).all() and (attention >= 0).all()
    assert all(pipe.transformer.attn_processors[name] is processor for name, processor in originals.items())


def test_processors_are_restored_after_an_error(registry):
    spec, pipe, model = model_for(registry, "tiny-flux-dev")
    originals = dict(pipe.transformer.attn_processors)
    cache = BranchCache()  # empty: sharing from it fails inside the forward pass
    with pytest.raises(KeyError, match="did not pass"):
        velocity_under(
            AttentionController([ShareKeysValues(source=cache)]), spec, pipe, model, flow.initial_noise(pipe, 0, 64, 64)
        )
    assert all(pipe.transformer.attn_processors[name] is processor for name, processor in originals.items())


def test_flux_layer_groups(registry):
    transformer = pipeline_of(registry, "shapes-flux").transformer
    assert joint_layers(transformer, "double") == ["transformer_blocks.0.attn", "transformer_blocks.1.attn"]
    assert joint_layers(transformer, "single") == [
        "single_transformer_blocks.0.attn",
        "single_transformer_blocks.1.attn",
    ]


@pytest.mark.parametrize("model_id", random_per_family(joint))
def test_mask_blocks_attention_and_sharing_swaps_keys(registry, model_id):
    spec, pipe, model = model_for(registry, model_id)
    latents = flow.initial_noise(pipe, 1, 64, 64)
    probe = AttentionController([record := RecordAttention(keys="image")])
    velocity_under(probe, spec, pipe, model, latents)
    layer = joint_layers(pipe.transformer)[0]
    image_tokens = record.maps[0, layer].shape[-1]
    text_tokens = probe.text_length
    total = image_tokens + text_tokens
    image = slice(0, image_tokens) if spec.family.token_order == "image-text" else slice(text_tokens, total)

    # Image tokens may not see the first half of the image: their attention there must vanish.
    allowed = torch.ones(total, total, dtype=torch.bool)
    blocked_columns = torch.arange(total)[image][: image_tokens // 2]
    allowed[:, blocked_columns] = False
    masked = RecordAttention(keys="image", layers={layer})
    velocity_under(
        AttentionController([MaskAttention(allowed=allowed, layers={layer}), masked]), spec, pipe, model, latents
    )
    attention = masked.maps[0, layer]
    assert attention[..., : image_tokens // 2].abs().max() == 0
    assert attention[..., image_tokens // 2 :].sum(-1).min() > 0

    # A second prompt sharing the first's keys and values on every layer gives the first's output:
    # image tokens then see exactly what they saw under the first prompt. (The pooled vector,
    # which reaches the image through the time embedding instead, is the first's too.)
    cache = BranchCache()
    first = velocity_under(AttentionController([CaptureBranch(cache=cache)]), spec, pipe, model, latents)
    _, _, other = model_for(registry, model_id, prompts=("a blue square at the bottom",))
    other.text = dataclasses.replace(other.text, pooled=model.text.pooled)
    plain_other = other.velocity(latents, 0.7)
    shared = velocity_under(AttentionController([ShareKeysValues(source=cache)]), spec, pipe, other, latents)
    assert (plain_other - first).abs().mean() > 1e-3
    torch.testing.assert_close(shared, first, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("model_id", random_per_family())
def test_word_token_indices(registry, model_id):
    spec = registry.catalogue.get(model_id)
    pipe = pipeline_of(registry, model_id)
    prompt = "a large red circle on the left and a red square"
    indices = word_token_indices(pipe, spec.family, prompt, "red", spec.max_sequence_length)
    for segment in spec.family.text_segments(pipe, spec.max_sequence_length):
        ids = segment.tokenizer(prompt, truncation=True, max_length=segment.length)["input_ids"]
        expected = [
            segment.offset + i for i, token in enumerate(ids) if segment.tokenizer.decode([token]).strip() == "red"
        ]
        assert len(expected) == 2  # both occurrences
        assert [i for i in indices if segment.offset <= i < segment.offset + segment.length] == expected
    with pytest.raises(InvalidRequest, match="not in the prompt"):
        word_token_indices(pipe, spec.family, prompt, "blue", spec.max_sequence_length)
    # "re" is part of "red" and "square", not a word of the prompt.
    with pytest.raises(InvalidRequest, match="not in the prompt"):
        word_token_indices(pipe, spec.family, prompt, "re", spec.max_sequence_length)


def test_a_word_split_into_several_tokens_gets_all_of_them(registry):
    spec = registry.catalogue.get("tiny-sd3")
    pipe = pipeline_of(registry, "tiny-sd3")
    prompt = "a zebra circle"  # "zebra" is outside the built-in vocabulary: CLIP spells it out
    indices = word_token_indices(pipe, spec.family, prompt, "zebra", spec.max_sequence_length)
    clip_pieces = pipe.tokenizer.tokenize("zebra")
    assert len(clip_pieces) > 1
    assert indices[: len(clip_pieces)] == list(range(2, 2 + len(clip_pieces)))  # after <bos> and "a"
    assert all(i >= 77 for i in indices[len(clip_pieces) :])  # then T5's piece(s)


@pytest.mark.parametrize("model_id", random_per_family(cross))
def test_cross_attention_processors_match_the_originals(registry, model_id):
    from studio.attention import cross_layers

    spec = registry.catalogue.get(model_id)
    pipe = pipeline_of(registry, model_id)
    originals = dict(pipe.transformer.attn_processors)

    from studio.generation import GenerationSettings, call_arguments

    settings = GenerationSettings(model=model_id, prompt="a red circle", steps=2, guidance=4.5, width=64, height=64)

    def image(controller=None):
        arguments = {**call_arguments(pipe, spec, settings, None), "output_type": "np"}
        if controller is None:
            return pipe(**arguments).images
        with controlled(pipe.transformer, controller, "cross-attention"):
            return pipe(**arguments).images

    expected = image()
    record = RecordAttention(keys=[0, 1])
    torch.testing.assert_close(
        torch.tensor(image(AttentionController([record]))), torch.tensor(expected), rtol=1e-4, atol=1e-4
    )
    assert {layer for _, layer in record.maps} == set(cross_layers(pipe.transformer))
    assert all(pipe.transformer.attn_processors[n] is p for n, p in originals.items())
