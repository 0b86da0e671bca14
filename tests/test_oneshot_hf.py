"""maskutils.oneshot on the transformers models readers bring, built from tiny configs (random
weights, nothing downloaded): GPT-2 (Conv1D), LLaMA (grouped-query attention), Qwen2 (tied
embeddings), OPT and GPT-NeoX. The papers' targets by default, Conv1D read as (out, in), ties,
and bad input that leaves the model as it was."""
from __future__ import annotations

import copy
import functools

import pytest
import torch
from torch import nn

pytest.importorskip("transformers")
from transformers.pytorch_utils import Conv1D  # noqa: E402

from maskutils import get_mask, remove_masks  # noqa: E402
from maskutils.oneshot import (input_norms, one_shot_prune, prunable_weights,  # noqa: E402
                               sparsegpt_prune, wanda_mask)

from tiny_hf import tiny_model  # noqa: E402

NAMES = ["gpt2", "llama", "qwen2", "opt", "neox"]
BLOCKS = {"gpt2": "transformer.h", "llama": "model.layers", "qwen2": "model.layers",
          "opt": "model.decoder.layers", "neox": "gpt_neox.layers"}
TIED = {"gpt2": "transformer.wte", "qwen2": "model.embed_tokens", "opt": "model.decoder.embed_tokens"}
IDS = [torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(s)) for s in range(2)]


@functools.lru_cache(maxsize=None)
def _built(name):
    return tiny_model(name)


def build(name):
    """A fresh copy of the tiny model (built once per session)."""
    return copy.deepcopy(_built(name))


def block_layers(model, name):
    """Every Linear / Conv1D inside the blocks, found here independently of maskutils."""
    prefix = BLOCKS[name] + "."
    return [f"{n}.weight" for n, m in model.named_modules()
            if n.startswith(prefix) and isinstance(m, (nn.Linear, Conv1D))]


def effective(module):
    return module.weight.detach().T if isinstance(module, Conv1D) else module.weight.detach()


def outside_blocks(model, name):
    return {k: v.detach().clone() for k, v in model.named_parameters()
            if not k.startswith(BLOCKS[name] + ".")}


# ---------------------------------------------------------------- the papers' targets

def test_the_tiny_configs_are_what_the_tests_claim():
    llama = _built("llama")
    attention = llama.model.layers[0].self_attn
    assert attention.k_proj.weight.shape[0] < attention.q_proj.weight.shape[0]   # GQA
    for name in TIED:
        model = _built(name)
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    for name in ("llama", "neox"):
        model = _built(name)
        assert model.get_output_embeddings().weight is not model.get_input_embeddings().weight
    assert len(block_layers(_built("gpt2"), "gpt2")) == 8
    assert all(isinstance(_built("gpt2").get_submodule(k[:-7]), Conv1D)
               for k in block_layers(_built("gpt2"), "gpt2"))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
@pytest.mark.parametrize("pattern", [dict(sparsity=0.5), dict(n=2, m=4)], ids=["50%", "2:4"])
def test_every_block_layer_pruned_and_embeddings_and_head_left_dense(name, method, pattern):
    model = build(name)
    expected = block_layers(model, name)
    assert list(prunable_weights(model)) == expected
    kept = outside_blocks(model, name)
    masks = one_shot_prune(model, IDS, method, **pattern)
    assert list(masks) == expected
    for key in expected:
        layer = model.get_submodule(key[:-len(".weight")])
        w = effective(layer)
        assert torch.equal(get_mask(layer), masks[key])
        assert masks[key].shape == layer.weight.shape        # stored layout (Conv1D: in, out)
        zero = (w == 0)
        if "n" in pattern:      # 2 of every 4 consecutive inputs of each output row
            assert (zero.reshape(w.shape[0], -1, 4).sum(dim=2) == 2).all(), key
        elif method == "wanda":  # per output row
            assert (zero.sum(dim=1) == w.shape[1] // 2).all(), key
        else:                    # per layer
            assert int(zero.sum()) == w.numel() // 2, key
    for key, value in kept.items():   # embeddings, head, norms: untouched and unmasked
        assert torch.equal(dict(model.named_parameters())[key], value), key
    assert get_mask(model.get_output_embeddings()) is None
    assert get_mask(model.get_input_embeddings()) is None


def test_the_report_names_every_pruned_layer_with_its_sparsity_and_what_stayed_dense():
    model = build("llama")
    masks = one_shot_prune(model, IDS, "sparsegpt", 0.6)
    text = masks.report()
    assert text.startswith("one_shot_prune: sparsegpt, 60 % unstructured, 14 layers\n"
                           "targets: every linear-like layer in the blocks of model.layers\n")
    for key in block_layers(model, "llama"):
        line = next(line for line in text.splitlines() if line.split()[:1] == [key])
        assert line.rstrip().endswith("60.0%"), line
    assert "16 x 32" in text                         # k_proj of GQA: 2 heads of 8
    assert "left dense: model.embed_tokens.weight, lm_head.weight" in text
    assert repr(masks) == text and all(r[3] == pytest.approx(0.6, abs=1e-3) for r in masks.rows)
    assert isinstance(masks, dict) and set(masks) == set(block_layers(model, "llama"))


def test_gpt2_report_says_conv1d_and_shows_the_effective_shape():
    masks = one_shot_prune(build("gpt2"), IDS, "wanda", 0.5)
    row = next(r for r in masks.rows if r[0] == "transformer.h.0.attn.c_attn.weight")
    assert row[1:] == ("Conv1D", (96, 32), 0.5)
    assert "left dense: transformer.wte.weight (= lm_head.weight), transformer.wpe.weight" \
        in masks.report()


def test_tokenizer_style_dict_batches_give_the_same_masks():
    batches = [{"input_ids": x, "attention_mask": torch.ones_like(x)} for x in IDS]
    by_dict = one_shot_prune(build("llama"), batches, "wanda", 0.5)
    by_tensor = one_shot_prune(build("llama"), IDS, "wanda", 0.5)
    assert all(torch.equal(by_dict[k], by_tensor[k]) for k in by_tensor)


def test_the_output_head_is_pruned_when_named_and_untied():
    model = build("llama")
    embedding = model.model.embed_tokens.weight.detach().clone()
    masks = one_shot_prune(model, IDS, "sparsegpt", 0.5, layers=["lm_head"])
    assert list(masks) == ["lm_head.weight"]
    assert int((model.lm_head.weight == 0).sum()) == model.lm_head.weight.numel() // 2
    assert torch.equal(model.model.embed_tokens.weight, embedding)


# ---------------------------------------------------------------- Conv1D == transposed Linear

def conv1d_and_linear(seed=0, n_in=16, n_out=8):
    torch.manual_seed(seed)
    conv = Conv1D(n_out, n_in)                     # weight (in, out)
    nn.init.normal_(conv.weight)
    nn.init.normal_(conv.bias)
    linear = nn.Linear(n_in, n_out)
    with torch.no_grad():
        linear.weight.copy_(conv.weight.T)
        linear.bias.copy_(conv.bias)
    x = torch.randn(200, n_in, generator=torch.Generator().manual_seed(seed + 1)) @ \
        torch.randn(n_in, n_in, generator=torch.Generator().manual_seed(seed + 2))
    assert torch.allclose(conv(x), linear(x), atol=1e-4)
    return conv, linear, x


@pytest.mark.parametrize("pattern", [dict(sparsity=0.5), dict(sparsity=0.3), dict(n=2, m=4)])
def test_wanda_on_a_conv1d_is_wanda_on_the_transposed_linear(pattern):
    conv, linear, x = conv1d_and_linear()
    norms = x.norm(dim=0)
    mask = wanda_mask(conv, norms, **pattern)
    assert mask.shape == conv.weight.shape == (16, 8)
    assert torch.equal(mask, wanda_mask(linear.weight, norms, **pattern).T)
    assert torch.equal(wanda_mask(linear, norms, **pattern), wanda_mask(linear.weight, norms,
                                                                        **pattern))
    if "n" in pattern:                              # groups of 4 run along the inputs (dim 0)
        assert (mask.reshape(4, 4, 8).sum(dim=1) == 2).all()


def test_wanda_on_a_conv1d_weight_tensor_is_refused_where_the_shape_gives_it_away():
    conv, _, x = conv1d_and_linear()
    with pytest.raises(ValueError, match="Conv1D .*pass the layer itself"):
        wanda_mask(conv.weight, x.norm(dim=0), 0.5)    # (16, 8) read as 16 rows of 8 inputs


@pytest.mark.parametrize("pattern", [dict(sparsity=0.5), dict(sparsity=0.7), dict(n=2, m=4)])
def test_sparsegpt_on_a_conv1d_is_sparsegpt_on_the_transposed_linear(pattern):
    conv, linear, x = conv1d_and_linear()
    mask_c = sparsegpt_prune(conv, x, block_size=8, **pattern)
    mask_l = sparsegpt_prune(linear, x, block_size=8, **pattern)
    assert mask_c.shape == (16, 8) and torch.equal(get_mask(conv), mask_c)
    assert torch.equal(mask_c, mask_l.T)
    assert torch.equal(conv.weight, linear.weight.T)            # the same updated weights
    assert torch.equal(conv.parametrizations.weight.original,
                       linear.parametrizations.weight.original.T)
    assert torch.allclose(conv(x), linear(x), atol=1e-4)


def as_linear(model):
    """The same model with every Conv1D replaced by the nn.Linear it computes."""
    model = copy.deepcopy(model)
    for name, module in list(model.named_modules()):
        if isinstance(module, Conv1D):
            n_in, n_out = module.weight.shape
            linear = nn.Linear(n_in, n_out)
            with torch.no_grad():
                linear.weight.copy_(module.weight.T)
                linear.bias.copy_(module.bias)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, linear)
    return model


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("pattern", [dict(sparsity=0.5), dict(n=2, m=4)], ids=["50%", "2:4"])
def test_gpt2_with_conv1d_prunes_like_the_same_gpt2_with_linear_layers(method, pattern):
    conv_model = build("gpt2")
    linear_model = as_linear(conv_model)
    assert not any(isinstance(m, Conv1D) for m in linear_model.modules())
    masks_c = one_shot_prune(conv_model, IDS, method, **pattern)
    masks_l = one_shot_prune(linear_model, IDS, method, **pattern)
    assert list(masks_c) == list(masks_l)
    for key in masks_c:
        assert torch.equal(masks_c[key], masks_l[key].T), key
        layer_c = conv_model.get_submodule(key[:-7])
        layer_l = linear_model.get_submodule(key[:-7])
        assert torch.allclose(layer_c.weight.T, layer_l.weight, atol=1e-5), key
    with torch.no_grad():
        assert torch.allclose(conv_model(IDS[0]).logits, linear_model(IDS[0]).logits,
                              atol=1e-4)


def test_input_norms_see_conv1d_inputs():
    model = build("gpt2")
    norms = input_norms(model, IDS)
    assert list(norms) == block_layers(model, "gpt2")
    assert norms["transformer.h.0.mlp.c_proj.weight"].shape == (128,)   # c_proj's inputs


# ---------------------------------------------------------------- ties

@pytest.mark.parametrize("name", list(TIED))
def test_a_tied_head_named_alone_is_refused_naming_both_places(name, left_alone):
    model = build(name)
    head = [n for n, m in model.named_modules() if m is model.get_output_embeddings()][0]
    with left_alone(model), pytest.raises(ValueError) as err:
        one_shot_prune(model, IDS, "sparsegpt", 0.5, layers=[head])
    assert f"{head}.weight is tied" in str(err.value)
    assert f"{TIED[name]}.weight" in str(err.value)


@pytest.mark.parametrize("name", list(TIED))
@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_a_tied_head_named_with_its_embedding_is_pruned_as_one(name, method):
    model = build(name)
    masks = one_shot_prune(model, IDS, method, 0.5, layers=["lm_head", TIED[name]])
    head, embedding = model.get_output_embeddings(), model.get_input_embeddings()
    assert list(masks) == ["lm_head.weight"]
    assert masks.tied == {"lm_head.weight": [f"{TIED[name]}.weight"]}
    assert get_mask(head) is get_mask(embedding)
    assert torch.equal(head.weight, embedding.weight)
    assert int((get_mask(embedding) == 0).sum()) == embedding.weight.numel() // 2
    assert "tied, pruned alike: " + TIED[name] + ".weight" in masks.report()
    remove_masks(model)
    assert torch.equal(head.weight, embedding.weight)


def test_a_tied_head_may_be_named_by_its_parameter_keys_too():
    model = build("qwen2")
    masks = one_shot_prune(model, IDS, "wanda", 0.5,
                           layers=["lm_head.weight", "model.embed_tokens.weight"])
    assert torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)
    assert masks.tied == {"lm_head.weight": ["model.embed_tokens.weight"]}


def test_sparsegpt_by_default_never_writes_into_the_tied_embedding():
    model = build("qwen2")
    embedding = model.model.embed_tokens.weight.detach().clone()
    one_shot_prune(model, IDS, "sparsegpt", 0.5)
    assert torch.equal(model.model.embed_tokens.weight, embedding)
    assert model.lm_head.weight is model.model.embed_tokens.weight


# ---------------------------------------------------------------- bad input

def test_a_layer_name_that_matches_nothing_is_refused_with_a_suggestion(left_alone):
    model = build("llama")
    with left_alone(model), pytest.raises(ValueError) as err:
        one_shot_prune(model, IDS, "wanda", 0.5, layers=["model.layers.0.mlp.up_prj"])
    message = str(err.value)
    assert "no module or prunable weight named 'model.layers.0.mlp.up_prj'" in message
    assert "did you mean 'model.layers.0.mlp.up_proj'" in message


def test_2_4_on_a_width_not_divisible_by_4_is_refused_naming_the_layer(left_alone):
    model = tiny_model("llama", hidden_size=30, intermediate_size=60, num_hidden_layers=1,
                       num_attention_heads=3, num_key_value_heads=1)
    with left_alone(model), pytest.raises(ValueError,
                                          match=r"model\.layers\.0\.self_attn\.q_proj\.weight "
                                                r"has 30 input channels, not divisible by m=4"):
        one_shot_prune(model, IDS, "sparsegpt", n=2, m=4)


@pytest.mark.parametrize("layers, error, match", [
    (["model.norm"], TypeError, "'model.norm' is not a linear layer"),
    ([], ValueError, "names no prunable layer"),
    (["lm_head", "model.norm"], TypeError, "not a linear layer"),
])
def test_other_layer_choices_are_refused(left_alone, layers, error, match):
    model = build("llama")
    with left_alone(model), pytest.raises(error, match=match):
        one_shot_prune(model, IDS, "wanda", 0.5, layers=layers)


def test_a_nan_calibration_batch_is_named_not_blamed_on_damping(left_alone):
    model = build("llama")
    embeds = model.model.embed_tokens(IDS[0]).detach()
    embeds[0, 3, 5] = float("nan")
    with left_alone(model), pytest.raises(ValueError, match=r"batch 0: a calibration batch "
                                                            r"holds NaN or infinity \(1 of"):
        one_shot_prune(model, [{"inputs_embeds": embeds}], "sparsegpt", 0.5)


def test_token_ids_outside_the_vocabulary_are_named(left_alone):
    model = build("opt")
    with left_alone(model), pytest.raises(ValueError, match=r"failed on calibration batch 1 "
                                                            r"\(shape \(2, 12\) int64\)"):
        one_shot_prune(model, [IDS[0], IDS[1] + 64], "wanda", 0.5)
