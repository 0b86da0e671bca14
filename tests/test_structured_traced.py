"""prune_units and shrink with example_inputs: any architecture, through Torch-Pruning.

What users bring: a residual CNN with BatchNorm, the book's CharTransformerLM, and
transformers' LLaMA (grouped-query attention) and GPT-2 (Conv1D) from tiny configs. After
shrink the outputs are the masked model's, the parameter counts are exact, the user's model
is untouched, an unstructured mask cuts nothing, and bad input changes nothing.
"""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from conftest import assert_unchanged, snapshot
from maskutils import (CharTransformerLM, DigitsResNet, apply_mask, count_parameters,
                       digits_mlp, mask_layers, prune_units, shrink)
from maskutils.storage import plain_state
from maskutils.structured import count_macs, unit_groups

transformers = pytest.importorskip("transformers")
from tiny_hf import tiny_model  # noqa: E402

DIGITS = torch.randn(6, 64, generator=torch.Generator().manual_seed(1))
IDS = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(2))


def logits(out):
    return out.logits if hasattr(out, "logits") else out


def outputs(model, x):
    model.eval()
    with torch.no_grad():
        return logits(model(x))


def resnet(channels=8, seed=0):
    torch.manual_seed(seed)
    net = DigitsResNet(channels=channels)
    net.train()
    with torch.no_grad():
        for _ in range(3):  # running statistics that are not the defaults
            net(torch.randn(32, 64) * 2 + 1)
    return net


def resnet_params(c, blocks=2):
    stem = 9 * c + 2 * c
    block = 2 * 9 * c * c + 4 * c
    return stem + blocks * block + 10 * c + 10


def char_lm(seed=0):
    torch.manual_seed(seed)
    return CharTransformerLM(vocab_size=64, d_model=16, n_heads=2, n_layers=2, max_len=8)


def llama(seed=0, **extra):
    return tiny_model("llama", seed, **extra)


def gpt2(seed=0):
    return tiny_model("gpt2", seed, n_head=4)


# ---------------------------------------------------------------- the residual CNN
def test_resnet_groups_tie_the_residual_channels_together():
    groups = unit_groups(resnet(), DIGITS)
    assert [(n, g.size, g.reason is None) for n, g in groups.items()] == [
        ("stem.0", 8, True), ("blocks.0.conv1", 8, True), ("blocks.1.conv1", 8, True),
        ("head", 10, False)]
    residual = groups["stem.0"].members
    for member in ("stem.0.weight[c]", "stem.1.bias[c]", "blocks.0.conv2.weight[c]",
                   "blocks.1.bn2.weight[c]", "blocks.1.conv1.weight[:, c]",
                   "head.weight[:, c]"):
        assert member in residual
    assert "outputs" in groups["head"].reason


@pytest.mark.parametrize("fraction, kept", [(0.5, 4), (0.75, 2), (0.0, 8)])
def test_resnet_shrinks_to_the_kept_channels_with_equal_outputs(fraction, kept):
    net = resnet()
    keep = prune_units(net, fraction, example_inputs=DIGITS)
    assert {k: int(v.sum()) for k, v in keep.items()} == {
        "stem.0": kept, "blocks.0.conv1": kept, "blocks.1.conv1": kept}
    before = snapshot(net)
    small = shrink(net, example_inputs=DIGITS)
    assert_unchanged(net, before)  # the user's model is not touched
    assert count_parameters(small) == resnet_params(kept)
    assert small.head.in_features == kept and small.blocks[1].bn2.num_features == kept
    assert not any(parametrize.is_parametrized(m) for m in small.modules())
    assert torch.allclose(outputs(small, DIGITS), outputs(net, DIGITS), atol=1e-4)


def test_every_coupled_slice_is_masked():
    net = resnet()
    keep = prune_units(net, 0.5, example_inputs=DIGITS)["stem.0"]
    gone = keep == 0
    assert (net.stem[0].weight[gone] == 0).all() and (net.stem[1].bias[gone] == 0).all()
    assert (net.blocks[0].conv2.weight[gone] == 0).all()
    assert (net.blocks[1].bn2.weight[gone] == 0).all()
    assert (net.blocks[0].conv1.weight[:, gone] == 0).all()
    assert (net.head.weight[:, gone] == 0).all()
    assert (net.head.weight[:, ~gone] != 0).all()


def test_the_residual_group_is_ranked_by_its_whole_norm():
    net = resnet()
    with torch.no_grad():  # channel 3 small in the stem but large in a block: kept
        net.stem[0].weight[3] = 0.0
        net.blocks[1].conv2.weight[3] *= 100
    keep = prune_units(net, 0.5, example_inputs=DIGITS)
    assert keep["stem.0"][3] == 1


def test_masks_hold_through_fine_tuning_and_shrink_still_matches():
    net = resnet()
    prune_units(net, 0.5, example_inputs=DIGITS)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    net.train()
    for step in range(4):
        optimizer.zero_grad()
        nn.functional.cross_entropy(net(torch.randn(16, 64)),
                                    torch.randint(0, 10, (16,))).backward()
        optimizer.step()
    small = shrink(net, example_inputs=DIGITS)
    assert count_parameters(small) == resnet_params(4)
    assert small.training  # the user's mode is kept
    assert torch.allclose(outputs(small, DIGITS), outputs(net, DIGITS), atol=1e-4)


def test_count_macs_falls_with_the_square_of_the_channels():
    net = resnet(channels=16)
    prune_units(net, 0.5, example_inputs=DIGITS)
    small = shrink(net, example_inputs=DIGITS)
    ratio = count_macs(small, DIGITS) / count_macs(net, DIGITS)
    assert 0.25 < ratio < 0.3  # the convolutions' c*c terms quarter; the stem halves


def test_prune_units_with_scores_by_group_name(left_alone):
    net = resnet()
    names = ["stem.0", "blocks.0.conv1", "blocks.1.conv1"]
    scores = {n: torch.arange(8.0) for n in names}
    keep = prune_units(net, 0.25, scores, example_inputs=DIGITS)
    assert all(k.tolist() == [0, 0] + [1] * 6 for k in keep.values())
    fresh = resnet()
    for bad in ({"stem.0": torch.ones(8)}, {**scores, "stem.0": torch.ones(3)}):
        with left_alone(fresh), pytest.raises(ValueError, match="scores"):
            prune_units(fresh, 0.5, bad, example_inputs=DIGITS)


# ---------------------------------------------------------------- transformers
def test_char_transformer_loses_ffn_neurons_only():
    lm = char_lm()
    ids = IDS % 64
    keep = prune_units(lm, 0.5, example_inputs=ids)
    assert sorted(keep) == ["blocks.layers.0.linear1", "blocks.layers.1.linear1"]
    small = shrink(lm, example_inputs=ids)
    d = 16
    assert count_parameters(small) == count_parameters(lm) - 2 * (4 * d * d + 2 * d)
    assert small.head.weight is small.embed.weight  # the tie survives
    assert torch.allclose(outputs(small, ids), outputs(lm, ids), atol=1e-4)


def test_char_transformer_heads_are_refused_with_the_reason(left_alone):
    lm = char_lm()
    with left_alone(lm), pytest.raises(ValueError, match="MultiheadAttention"):
        prune_units(lm, 0.5, example_inputs=IDS, head_sparsity=0.5)


def test_llama_with_grouped_queries_loses_ffn_neurons_and_heads(tmp_path):
    model = llama()
    keep = prune_units(model, 0.5, example_inputs=IDS, head_sparsity=0.5)
    assert {k: int(v.sum()) for k, v in keep.items()} == {
        "model.layers.0.mlp.gate_proj": 32, "model.layers.1.mlp.gate_proj": 32,
        "model.layers.0.self_attn": 1, "model.layers.1.self_attn": 1}
    small = shrink(model, example_inputs=IDS)
    attention = small.model.layers[0].self_attn
    assert (attention.q_proj.out_features, attention.k_proj.out_features) == (16, 8)
    per_layer = 3 * 32 * 32 + 2 * (16 * 32) + (16 * 32)  # FFN halved, one kv group of 2
    dense_per_layer = 3 * 32 * 64 + 2 * (32 * 32) + 2 * (16 * 32)
    assert count_parameters(model) - count_parameters(small) == 2 * (dense_per_layer
                                                                      - per_layer)
    assert torch.allclose(outputs(small, IDS), outputs(model, IDS), atol=1e-4)
    config = small.config
    assert (config.intermediate_size, config.num_attention_heads, config.num_key_value_heads,
            config.head_dim) == (32, 2, 1, 8)
    assert model.config.intermediate_size == 64  # the user's config is not touched
    small.save_pretrained(tmp_path)
    loaded = transformers.LlamaForCausalLM.from_pretrained(tmp_path)
    assert count_parameters(loaded) == count_parameters(small)
    assert torch.equal(outputs(loaded, IDS), outputs(small, IDS))


def test_a_gqa_head_fraction_that_removes_nothing_is_refused(left_alone):
    model = llama()
    with left_alone(model), pytest.raises(ValueError, match="key/value head"):
        prune_units(model, 0.5, example_inputs=IDS, head_sparsity=0.25)


def test_gpt2_conv1d_ffn_shrinks_and_reloads(tmp_path, left_alone):
    model = gpt2()
    keep = prune_units(model, 0.5, example_inputs=IDS)
    assert sorted(keep) == ["transformer.h.0.mlp.c_fc", "transformer.h.1.mlp.c_fc"]
    small = shrink(model, example_inputs=IDS)
    assert small.transformer.h[0].mlp.c_fc.weight.shape == (32, 64)
    assert count_parameters(model) - count_parameters(small) == 2 * (64 * 32 * 2 + 64)
    assert torch.allclose(outputs(small, IDS), outputs(model, IDS), atol=1e-4)
    assert small.config.n_inner == 64
    small.save_pretrained(tmp_path)
    loaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path)
    assert torch.equal(outputs(loaded, IDS), outputs(small, IDS))
    fresh = gpt2()
    with left_alone(fresh), pytest.raises(ValueError, match="c_attn"):
        prune_units(fresh, 0.5, example_inputs=IDS, head_sparsity=0.5)


def test_layers_of_different_widths_get_a_warning_and_keep_the_config():
    model = llama()
    prune_units(model, 0.5, example_inputs=IDS)
    mlp = model.model.layers[1].mlp  # one more neuron out of layer 1 only
    row = torch.ones(64, 32)
    row[63] = 0
    for layer in (mlp.gate_proj, mlp.up_proj):
        apply_mask(layer, row)
    apply_mask(mlp.down_proj, torch.ones(32, 64).index_fill_(1, torch.tensor([63]), 0.0))
    with pytest.warns(UserWarning, match="intermediate_size"):
        small = shrink(model, example_inputs=IDS)
    assert small.model.layers[1].mlp.up_proj.out_features == 31
    assert small.config.intermediate_size == 64
    assert torch.allclose(outputs(small, IDS), outputs(model, IDS), atol=1e-4)


# ---------------------------------------------------------------- nothing to cut
@pytest.mark.parametrize("make, x", [(resnet, DIGITS), (llama, IDS)], ids=["resnet", "llama"])
def test_an_unstructured_mask_cuts_nothing(make, x):
    model = make()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="mask_layers left out")  # the embedding
        mask_layers(model, 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and says nothing
        small = shrink(model, example_inputs=x)
    assert count_parameters(small) == count_parameters(model)
    assert torch.allclose(outputs(small, x), outputs(model, x), atol=1e-5)
    zeros = sum(int((t == 0).sum()) for t in plain_state(model).values())
    assert sum(int((t == 0).sum()) for t in small.state_dict().values()) == zeros > 0


# ---------------------------------------------------------------- what is refused
def test_a_residual_model_without_example_inputs_is_told_to_pass_them(left_alone):
    net = resnet()
    with left_alone(net), pytest.raises(TypeError, match="example_inputs") as err:
        prune_units(net, 0.5)
    assert "shrink" not in str(err.value)  # prune_units speaks in its own name
    prune_units(copy.deepcopy(net), 0.5, example_inputs=DIGITS)  # and that works
    with left_alone(net), pytest.raises(TypeError, match="pass example_inputs"):
        shrink(net)


@pytest.mark.parametrize("sparsity, error", [
    (1.0, ValueError), (-0.1, ValueError), (1.5, ValueError), ("half", TypeError),
    (0.99, ValueError),
])
def test_bad_sparsity_is_refused_and_the_model_left_alone(sparsity, error, left_alone):
    net = resnet()
    with left_alone(net), pytest.raises(error, match="sparsity"):
        prune_units(net, sparsity, example_inputs=DIGITS)


@pytest.mark.parametrize("bad, error, words", [
    ("pixels", TypeError, "example_inputs must be a batch"),
    (torch.randn(2, 63), ValueError, "example_inputs"),
])
def test_bad_example_inputs_are_named(bad, error, words, left_alone):
    net = resnet()
    with left_alone(net), pytest.raises(error, match=words):
        prune_units(net, 0.5, example_inputs=bad)
    with left_alone(net), pytest.raises(error, match=words):
        shrink(net, example_inputs=bad)


def test_all_zero_channels_under_a_layernorm_are_refused_with_the_reason(left_alone):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.LayerNorm(5), nn.ReLU(), nn.Linear(5, 2))
    apply_mask(model[0], torch.ones(5, 6).index_fill_(0, torch.tensor([2]), 0.0))
    apply_mask(model[0], torch.ones(5).index_fill_(0, torch.tensor([2]), 0.0), name="bias")
    for name in ("weight", "bias"):
        apply_mask(model[1], torch.ones(5).index_fill_(0, torch.tensor([2]), 0.0), name=name)
    apply_mask(model[3], torch.ones(2, 5).index_fill_(1, torch.tensor([2]), 0.0))
    x = torch.randn(3, 6)
    with left_alone(model), pytest.raises(ValueError, match="LayerNorm"):
        shrink(model, example_inputs=x)
    assert "LayerNorm" in unit_groups(model, x)["0"].reason
    with left_alone(model), pytest.raises(ValueError, match="no group of units"):
        prune_units(model, 0.5, example_inputs=x)


def test_head_sparsity_needs_example_inputs(left_alone):
    model = digits_mlp(hidden=(8, 8))
    with left_alone(model), pytest.raises(ValueError, match="example_inputs"):
        prune_units(model, 0.5, head_sparsity=0.5)


@pytest.mark.parametrize("traced", [False, True])
def test_a_later_layer_under_torch_prune_leaves_every_layer_alone(traced, left_alone):
    """Issue 21: validate first, then act; the error names the later layer's problem."""
    torch.manual_seed(0)
    model = digits_mlp(hidden=(8, 8))
    torch.nn.utils.prune.l1_unstructured(model.layers[2], "weight", amount=0.5)
    inputs = {"example_inputs": DIGITS} if traced else {}
    with left_alone(model), pytest.raises(ValueError, match="torch.nn.utils.prune"):
        prune_units(model, 0.5, **inputs)
    assert not parametrize.is_parametrized(model.layers[0])


@pytest.mark.parametrize("name, heads, key", [
    ("qwen2", 0.5, "intermediate_size"), ("opt", 0.0, "ffn_dim"),
    ("neox", 0.0, "intermediate_size"),
], ids=["qwen2-tied", "opt", "gpt-neox"])
def test_other_causal_lms_shrink_reload_and_keep_their_ties(name, heads, key, tmp_path):
    model = tiny_model(name)
    keep = prune_units(model, 0.5, example_inputs=IDS, head_sparsity=heads)
    assert len(keep) == 2 * (2 if heads else 1)  # the FFN (and the heads) of each block
    small = shrink(model, example_inputs=IDS)
    assert count_parameters(small) < count_parameters(model)
    assert getattr(small.config, key) == 32 and getattr(model.config, key) == 64
    assert torch.allclose(outputs(small, IDS), outputs(model, IDS), atol=1e-4)
    embed, head = small.get_input_embeddings(), small.get_output_embeddings()
    assert (head.weight is embed.weight) == bool(model.config.tie_word_embeddings)
    small.save_pretrained(tmp_path)
    loaded = type(small).from_pretrained(tmp_path)
    assert torch.equal(outputs(loaded, IDS), outputs(small, IDS))
