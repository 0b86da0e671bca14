"""maskutils.oneshot: input norms through hooks, Wanda masks, SparseGPT, whole-model pruning."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from maskutils import CharTransformerLM, apply_mask, get_mask, magnitude_mask, nm_mask
from maskutils.oneshot import (input_norms, layer_inputs, one_shot_prune, prunable_weights,
                               sparsegpt_prune, wanda_mask)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def lm():
    torch.manual_seed(0)
    return CharTransformerLM(40, d_model=16, n_heads=2, n_layers=2, max_len=8).eval()


@pytest.fixture
def ids():
    return [torch.randint(0, 40, (4, 8), generator=gen(s)) for s in range(2)]


def row_magnitude(weight, sparsity):
    return torch.stack([magnitude_mask(row, sparsity) for row in weight])


# ---------------------------------------------------------------- input_norms

def test_input_norms_cover_every_block_linear_and_both_attention_projections(lm, ids):
    """By default the blocks only: the tied head (the embedding) stays out."""
    norms = input_norms(lm, ids)
    expected = []
    for i in range(2):
        block = f"blocks.layers.{i}."
        expected += [block + "self_attn.in_proj_weight", block + "self_attn.out_proj.weight",
                     block + "linear1.weight", block + "linear2.weight"]
    assert list(norms) == expected
    assert list(input_norms(lm, ids, layers=["head"])) == ["head.weight"]
    assert norms["blocks.layers.0.linear2.weight"].shape == (64,)
    assert all((v > 0).all() for v in norms.values())


def test_input_norms_match_the_inputs_each_layer_really_sees(lm, ids):
    """out_proj's input is what the attention computes before its output projection."""
    xs = layer_inputs(lm, ids)
    norms = input_norms(lm, ids)
    for key, x in xs.items():
        assert torch.allclose(norms[key], x.pow(2).sum(0).sqrt(), rtol=1e-5)
    block = lm.blocks.layers[0]
    h = lm.embed(ids[0]) + lm.position(torch.arange(8))
    h = block.norm1(h)
    causal = nn.Transformer.generate_square_subsequent_mask(8)
    with torch.no_grad():
        out, _ = block.self_attn(h, h, h, attn_mask=causal, need_weights=False, is_causal=True)
        z = xs["blocks.layers.0.self_attn.out_proj.weight"][:32]
        assert torch.allclose(block.self_attn.out_proj(z), out.reshape(-1, 16), atol=1e-5)
        assert torch.allclose(xs["blocks.layers.0.self_attn.in_proj_weight"][:32],
                              h.reshape(-1, 16), atol=1e-6)


def test_input_norms_of_a_plain_linear_are_the_column_norms_of_its_input():
    x = torch.randn(3, 5, 6, generator=gen())
    norms = input_norms(nn.Sequential(nn.Linear(6, 2)), [x[0], x[1], x[2]])
    assert torch.allclose(norms["0.weight"], x.reshape(-1, 6).pow(2).sum(0).sqrt())


def test_input_norms_take_a_subset_and_x_y_batches(lm, ids):
    attention = lm.blocks.layers[1].self_attn
    norms = input_norms(lm, [(x, x) for x in ids],
                        layers=[attention, attention.out_proj, "blocks.layers.0.linear1"])
    assert list(norms) == ["blocks.layers.0.linear1.weight",
                           "blocks.layers.1.self_attn.in_proj_weight",
                           "blocks.layers.1.self_attn.out_proj.weight"]


def test_input_norms_see_masked_layers_and_leave_the_model_as_it_was(lm, ids):
    out_proj = lm.blocks.layers[0].self_attn.out_proj
    before = layer_inputs(lm, ids)
    apply_mask(out_proj, magnitude_mask(out_proj.weight, 0.5))
    lm.train()
    after = layer_inputs(lm, ids)
    key = "blocks.layers.0.self_attn.out_proj.weight"
    assert torch.allclose(before[key], after[key], atol=1e-6)  # its input is upstream of it
    assert lm.training and out_proj is lm.blocks.layers[0].self_attn.out_proj
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in lm.modules())
    assert torch.backends.mha.get_fastpath_enabled()


def test_hooks_are_removed_and_the_fast_path_restored_even_on_error(lm):
    with pytest.raises(ValueError, match=r"calibration batch 0 \(shape \(2, 8\) int64\): "
                                         "IndexError"):
        input_norms(lm, [torch.full((2, 8), 99)])  # token 99 is outside the vocabulary
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in lm.modules())
    assert torch.backends.mha.get_fastpath_enabled()
    assert not lm.training


def test_input_norms_bad_input(lm, ids):
    with pytest.raises(ValueError, match="yielded nothing"):
        input_norms(lm, [])
    with pytest.raises(TypeError, match="nn.Linear, transformers Conv1D or nn.MultiheadAtt"):
        input_norms(lm, ids, layers=[lm.norm])
    with pytest.raises(ValueError, match="not a module of this model"):
        input_norms(lm, ids, layers=[nn.Linear(16, 16)])
    with pytest.raises(ValueError, match="no module or prunable weight named 'blocks.nope'"):
        input_norms(lm, ids, layers=["blocks.nope"])
    with pytest.raises(ValueError, match="never reached"):
        unused = nn.ModuleDict({"used": nn.Linear(3, 3), "unused": nn.Linear(3, 3)})
        unused.forward = lambda x: unused["used"](x)
        input_norms(unused, [torch.ones(2, 3)])


def test_cross_attention_is_refused_clearly():
    attention = nn.MultiheadAttention(8, 2, batch_first=True)

    class Cross(nn.Module):
        def __init__(self):
            super().__init__()
            self.attention = attention

        def forward(self, x):
            return self.attention(x, x.flip(1), x.flip(1))[0]

    with pytest.raises(ValueError, match="cross-attention"):
        input_norms(Cross(), [torch.randn(2, 5, 8, generator=gen())])
    assert input_norms(Cross(), [torch.randn(2, 5, 8)], layers=[attention.out_proj])


# ---------------------------------------------------------------- wanda_mask

@pytest.mark.parametrize("sparsity", [0.0, 0.25, 0.5, 0.7, 0.9])
def test_wanda_removes_exactly_the_same_number_in_every_row(sparsity):
    w = torch.randn(12, 20, generator=gen())
    norms = torch.rand(20, generator=gen(1)) * 10
    mask = wanda_mask(w, norms, sparsity)
    assert mask.dtype == w.dtype and set(mask.unique().tolist()) <= {0.0, 1.0}
    assert ((mask == 0).sum(dim=1) == round(sparsity * 20)).all()


def test_wanda_keeps_the_highest_scores_of_each_row():
    w = torch.randn(6, 10, generator=gen())
    norms = torch.rand(10, generator=gen(1))
    mask = wanda_mask(w, norms, 0.4)
    score = w.abs() * norms
    kept = score.masked_fill(mask == 0, float("inf")).min(dim=1).values
    removed = score.masked_fill(mask == 1, -float("inf")).max(dim=1).values
    assert (kept >= removed).all()


def test_wanda_with_equal_norms_is_magnitude_pruning():
    w = torch.randn(8, 16, generator=gen())
    for norm in (torch.ones(16), torch.full((16,), 3.7)):
        assert torch.equal(wanda_mask(w, norm, 0.5), row_magnitude(w, 0.5))
        assert torch.equal(wanda_mask(w, norm, n=2, m=4), nm_mask(w, n=2, m=4))


def test_wanda_n_m_keeps_n_of_every_m():
    w = torch.randn(5, 12, generator=gen())
    mask = wanda_mask(w, torch.rand(12, generator=gen(1)), n=1, m=3)
    assert (mask.view(5, 4, 3).sum(dim=2) == 1).all()


def test_a_large_input_norm_protects_a_small_weight():
    w = torch.tensor([[0.01, 1.0, 2.0, 3.0]])
    assert wanda_mask(w, torch.tensor([1000.0, 1, 1, 1]), 0.5)[0, 0] == 1
    assert magnitude_mask(w, 0.5)[0, 0] == 0


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(input_norm=torch.ones(15), sparsity=0.5), ValueError, "input_norm has shape"),
    (dict(input_norm=torch.ones(16), sparsity=1.0), ValueError, r"\[0, 1\)"),
    (dict(input_norm=torch.ones(16), sparsity=-0.1), ValueError, r"\[0, 1\]"),
    (dict(input_norm=torch.ones(16), sparsity=float("nan")), ValueError, "sparsity"),
    (dict(input_norm=torch.ones(16), n=2, m=5), ValueError, "not divisible by m=5"),
    (dict(input_norm=torch.ones(16), n=3, m=2), ValueError, "1 <= n <= m"),
    (dict(input_norm=torch.ones(16), sparsity=0.5, n=2, m=4), ValueError, "not both"),
    (dict(input_norm=torch.ones(16)), ValueError, "either sparsity"),
    (dict(input_norm=-torch.ones(16), sparsity=0.5), ValueError, "non-negative"),
    (dict(input_norm=[1.0] * 16, sparsity=0.5), TypeError, "torch.Tensor"),
])
def test_wanda_bad_input(kwargs, error, match):
    w = torch.randn(4, 16, generator=gen())
    kept = w.clone()
    with pytest.raises(error, match=match):
        wanda_mask(w, **kwargs)
    assert torch.equal(w, kept)


# ---------------------------------------------------------------- sparsegpt_prune

def output_error(weight, x, reference):
    return float(((x @ weight.T - x @ reference.T) ** 2).sum())


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("pattern", [dict(sparsity=0.5), dict(sparsity=0.7), dict(n=2, m=4)])
def test_sparsegpt_reconstructs_no_worse_than_masking_alone(seed, pattern):
    torch.manual_seed(seed)
    layer = nn.Linear(32, 16)
    dense = layer.weight.detach().clone()
    mix = torch.randn(32, 32, generator=gen(seed))  # correlated inputs, as in a network
    x = torch.randn(512, 32, generator=gen(seed + 10)) @ mix
    mask = sparsegpt_prune(layer, x, block_size=8, **pattern)
    assert torch.equal(get_mask(layer), mask)
    assert torch.equal(layer.weight == 0, mask == 0)
    masked = output_error(dense * mask, x, dense)
    updated = output_error(layer.weight.detach(), x, dense)
    assert updated <= masked
    assert updated < 0.8 * masked  # the update is not a rounding error away from masking


def test_sparsegpt_exact_sparsity_and_patterns():
    layer, x = nn.Linear(20, 6), torch.randn(200, 20, generator=gen())
    mask = sparsegpt_prune(layer, x, 0.35, block_size=7)
    assert int((mask == 0).sum()) == round(0.35 * 120)
    layer = nn.Linear(16, 6)
    mask = sparsegpt_prune(layer, [x[:100, :16], x[100:, :16]], n=2, m=4, block_size=8)
    assert (mask.view(6, 4, 4).sum(dim=2) == 2).all()
    bias = layer.bias.detach().clone()
    assert torch.equal(layer.bias, bias)


def test_sparsegpt_zero_sparsity_changes_nothing():
    layer, x = nn.Linear(8, 4), torch.randn(64, 8, generator=gen())
    dense = layer.weight.detach().clone()
    sparsegpt_prune(layer, x, 0.0)
    assert torch.allclose(layer.weight, dense) and get_mask(layer).all()


def test_sparsegpt_prunes_attention_in_proj_as_three_projections():
    attention = nn.MultiheadAttention(8, 2)
    x = torch.randn(100, 8, generator=gen())
    mask = sparsegpt_prune(attention, x, n=2, m=4)
    assert mask.shape == (24, 8) and torch.equal(get_mask(attention, "in_proj_weight"), mask)
    assert (mask.view(24, 2, 4).sum(dim=2) == 2).all()


def test_sparsegpt_keeps_an_existing_mask():
    layer, x = nn.Linear(8, 4), torch.randn(64, 8, generator=gen())
    first = magnitude_mask(layer.weight, 0.25)
    apply_mask(layer, first)
    mask = sparsegpt_prune(layer, x, 0.5)
    assert ((first == 0) <= (get_mask(layer) == 0)).all()
    assert int((layer.weight == 0).sum()) == 16 and int((mask == 0).sum()) == 16


def test_sparsegpt_dead_inputs_are_pruned_first():
    layer = nn.Linear(8, 4)
    x = torch.randn(64, 8, generator=gen())
    x[:, :2] = 0
    mask = sparsegpt_prune(layer, x, 0.25)
    assert (mask[:, :2] == 0).all()


@pytest.mark.parametrize("call, error, match", [
    (lambda l, x: sparsegpt_prune(l, x[:, :15], 0.5), ValueError, "in_features"),
    (lambda l, x: sparsegpt_prune(l, x, 1.0), ValueError, r"\[0, 1\)"),
    (lambda l, x: sparsegpt_prune(l, x, 1.5), ValueError, r"\[0, 1\]"),
    (lambda l, x: sparsegpt_prune(l, x, n=2, m=3), ValueError, "not divisible by m=3"),
    (lambda l, x: sparsegpt_prune(l, x, n=2, m=4, block_size=6), ValueError, "multiple of m"),
    (lambda l, x: sparsegpt_prune(l, x, 0.5, damp=-1), ValueError, "damp"),
    (lambda l, x: sparsegpt_prune(l, x, 0.5, block_size=0), ValueError, "block_size"),
    (lambda l, x: sparsegpt_prune(l, x * float("nan"), 0.5), ValueError, "NaN"),
    (lambda l, x: sparsegpt_prune(l, x[:0], 0.5), ValueError, "no rows"),
    (lambda l, x: sparsegpt_prune(l, x.long(), 0.5), TypeError, "floating-point"),
    (lambda l, x: sparsegpt_prune(l, x.numpy(), 0.5), TypeError, "tensor"),
    (lambda l, x: sparsegpt_prune(nn.Conv1d(16, 4, 1), x, 0.5), TypeError, "nn.Linear"),
    (lambda l, x: sparsegpt_prune(l, x[:10], 0.5, damp=0), ValueError,
     "positive definite"),
])
def test_sparsegpt_bad_input_leaves_the_layer_alone(left_alone, call, error, match):
    layer, x = nn.Linear(16, 4), torch.randn(64, 16, generator=gen())
    with left_alone(layer), pytest.raises(error, match=match):
        call(layer, x)


# ---------------------------------------------------------------- one_shot_prune

def block_layers(model):
    return [name for name in prunable_weights(model) if name.startswith("blocks.")]


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("sequential", [True, False])
def test_one_shot_prune_masks_every_block_layer(lm, ids, method, sequential):
    masks = one_shot_prune(lm, ids, method, 0.6, layers=block_layers(lm),
                           sequential=sequential)
    assert list(masks) == block_layers(lm)
    weights = prunable_weights(lm)
    for key, mask in masks.items():
        module, name = weights[key]
        assert torch.equal(get_mask(module, name), mask)
        if method == "wanda":  # per output row
            assert ((mask == 0).sum(dim=1) == round(0.6 * mask.shape[1])).all()
        else:                  # per layer
            assert int((mask == 0).sum()) == round(0.6 * mask.numel())
    assert get_mask(lm.head) is None
    copy.deepcopy(lm)(ids[0])
    lm.load_state_dict(lm.state_dict())


def test_one_shot_wanda_equals_wanda_mask_from_input_norms(lm, ids):
    layer = lm.blocks.layers[0].linear1
    norms = input_norms(lm, ids, layers=[layer])["blocks.layers.0.linear1.weight"]
    expected = wanda_mask(layer.weight, norms, n=2, m=4)
    masks = one_shot_prune(lm, ids, "wanda", n=2, m=4, layers=[layer])
    assert torch.equal(masks["blocks.layers.0.linear1.weight"], expected)


def test_one_shot_sparsegpt_beats_masking_alone_on_the_model(lm, ids):
    layers = ["blocks.layers.0.linear1", "blocks.layers.0.linear2"]
    dense_out = lm(ids[0]).detach()
    pruned = copy.deepcopy(lm)
    masks = one_shot_prune(pruned, ids, "sparsegpt", 0.5, layers=layers)
    masked = copy.deepcopy(lm)
    for key, mask in masks.items():
        module, name = prunable_weights(masked)[key]
        apply_mask(module, mask, name=name)
    with torch.no_grad():
        err = {n: float(((m(ids[0]) - dense_out) ** 2).sum()) for n, m in
               (("updated", pruned), ("masked", masked))}
    assert err["updated"] < err["masked"]


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(method="obs", sparsity=0.5), ValueError, "method must be one of"),
    (dict(method="wanda", sparsity=1.0), ValueError, r"\[0, 1\)"),
    (dict(method="wanda", n=2, m=3), ValueError, "not divisible by m=3"),
    (dict(method="sparsegpt", sparsity=0.5, damp=-0.1), ValueError, "damp"),
    (dict(method="wanda", sparsity=0.5, sequential="yes"), TypeError, "sequential"),
])
def test_one_shot_prune_bad_input_leaves_the_model_alone(lm, ids, left_alone, kwargs, error,
                                                         match):
    with left_alone(lm), pytest.raises(error, match=match):
        one_shot_prune(lm, ids, **kwargs)


def test_one_shot_prune_failing_midway_changes_nothing(lm, left_alone):
    bad = [torch.randint(0, 40, (2, 8), generator=gen()), torch.full((2, 8), 99)]
    with left_alone(lm), pytest.raises(ValueError, match="failed on calibration batch 1"):
        one_shot_prune(lm, bad, "sparsegpt", 0.5)
    with left_alone(lm), pytest.raises(ValueError, match="needs calibration batches"):
        one_shot_prune(lm, None, "wanda", 0.5)


# ---------------------------------------------------------------- exercise 8.1

def test_exercise_8_1_accepts_a_layer_wise_wanda_mask_and_explains_mistakes(capsys):
    from maskutils.exercises import check

    w = torch.randn(16, 8, generator=gen())
    norm = torch.rand(8, generator=gen(1)) * 3
    given = dict(weight=w, input_norm=norm, sparsity=0.5)
    assert check("8.1", magnitude_mask(w.abs() * norm, 0.5), **given)
    for wrong, says in ((wanda_mask(w, norm, 0.5), "per-row"),
                        (magnitude_mask(w, 0.5), "|W_ij| alone"),
                        (magnitude_mask(w, 0.25), "removes 32 weights")):
        assert not check("8.1", wrong, **given)
        assert says in capsys.readouterr().out


# ---------------------------------------------------------------- the default targets

def test_default_targets_are_the_block_layers_of_a_transformer(lm):
    assert list(prunable_weights(lm)) == block_layers(lm)
    assert "head.weight" not in prunable_weights(lm)
    assert list(prunable_weights(lm, layers=["head"])) == ["head.weight"]


def test_a_model_without_blocks_keeps_every_linear():
    from maskutils import digits_mlp

    mlp = digits_mlp()
    assert list(prunable_weights(mlp)) == ["layers.0.weight", "layers.2.weight",
                                           "layers.4.weight"]
    plain = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    assert list(prunable_weights(plain)) == ["0.weight", "2.weight"]
    # a ModuleList of plain Linear layers is not a stack of blocks: the head stays a target
    listed = nn.ModuleDict({"layers": nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)]),
                            "head": nn.Linear(4, 2)})
    assert list(prunable_weights(listed)) == ["layers.0.weight", "layers.1.weight",
                                              "head.weight"]


def test_blocks_are_found_in_an_encoder_and_outside_stacks_stay_dense():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)
    model = nn.ModuleDict({"stem": nn.Linear(4, 8),
                           "encoder": nn.TransformerEncoder(layer, 2, enable_nested_tensor=False),
                           "head": nn.Linear(8, 3)})
    keys = list(prunable_weights(model))
    assert len(keys) == 8 and all(k.startswith("encoder.layers.") for k in keys)


def test_a_model_with_nothing_to_prune_says_what_it_holds(left_alone):
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    with left_alone(model), pytest.raises(ValueError, match=r"nothing|no nn.Linear.*it holds "
                                                            r"Conv2d x1, BatchNorm2d x1"):
        one_shot_prune(model, [torch.randn(1, 1, 5, 5)], "wanda", 0.5)
    with pytest.raises(ValueError, match="no nn.Linear, transformers Conv1D"):
        prunable_weights(model)


def test_one_shot_prune_by_default_prunes_the_blocks_and_reports_them(lm, ids):
    head = lm.head.weight.detach().clone()
    masks = one_shot_prune(lm, ids, "wanda", 0.5)
    assert list(masks) == block_layers(lm) and get_mask(lm.head) is None
    assert torch.equal(lm.head.weight, head) and lm.head.weight is lm.embed.weight
    assert dict(masks) == {k: masks[k] for k in masks}           # still a dict {key: mask}
    text = masks.report()
    assert "wanda, 50 % unstructured, 8 layers\n" \
        "targets: every linear-like layer in the blocks of blocks.layers\n" in text
    assert "left dense: embed.weight (= head.weight), position.weight" in text
    assert "attention in_proj" in text and "192" not in text     # d_model 16: 48 x 16
    assert "48 x 16" in text


# ---------------------------------------------------------------- ties (the book's LM)

def test_the_tied_head_alone_is_refused_and_pruned_as_one_when_both_are_named(lm, ids,
                                                                             left_alone):
    with left_alone(lm), pytest.raises(ValueError, match=r"head\.weight is tied: it is the "
                                                         r"same tensor as embed\.weight"):
        one_shot_prune(lm, ids, "sparsegpt", 0.5, layers=["head"])
    masks = one_shot_prune(lm, ids, "sparsegpt", 0.5, layers=["head", "embed"])
    assert masks.tied == {"head.weight": ["embed.weight"]}
    assert lm.head.weight is lm.embed.weight or torch.equal(lm.head.weight, lm.embed.weight)
    assert get_mask(lm.head) is get_mask(lm.embed)


# ---------------------------------------------------------------- bad calibration batches

def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))


@pytest.mark.parametrize("sequential", [True, False])
def test_sparsegpt_with_batches_of_the_wrong_width_says_so(left_alone, sequential):
    model = mlp()
    with left_alone(model), pytest.raises(ValueError, match=r"calibration batch 0 \(shape "
                                                            r"\(32, 15\) float32\): layer '0' "
                                                            r"\(Linear with 16 input features\) "
                                                            r"received inputs 15 wide"):
        one_shot_prune(model, [torch.randn(32, 15)], "sparsegpt", 0.5, sequential=sequential)


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_a_nan_in_a_calibration_batch_is_named_not_blamed_on_damping(left_alone, method):
    model = mlp()
    batch = torch.randn(32, 16, generator=gen())
    batch[3, 4] = float("nan")
    with left_alone(model), pytest.raises(ValueError) as err:
        one_shot_prune(model, [torch.randn(32, 16), batch], method, 0.5)
    assert "calibration batch 1: a calibration batch holds NaN or infinity (1 of 512" in \
        str(err.value)
    assert "damp" not in str(err.value)


def test_a_nan_made_inside_the_model_is_named_with_its_layer(left_alone):
    model = mlp()
    with torch.no_grad():
        model[0].bias[2] = float("inf")          # the first layer's output is not finite
    with left_alone(model), pytest.raises(ValueError, match=r"2\.weight: its inputs on "
                                                            r"calibration batch 0 hold NaN"):
        one_shot_prune(model, [torch.randn(8, 16)], "sparsegpt", 0.5, layers=["2"])


def test_2_4_on_a_width_not_divisible_by_4_is_refused(left_alone):
    model = nn.Sequential(nn.Linear(30, 8), nn.ReLU(), nn.Linear(8, 4))
    with left_alone(model), pytest.raises(ValueError, match=r"0\.weight has 30 input channels, "
                                                            r"not divisible by m=4"):
        one_shot_prune(model, [torch.randn(8, 30)], "wanda", n=2, m=4)


# ---------------------------------------------------------------- weights that are computed

def test_a_weight_norm_layer_is_named_not_written_through(left_alone):
    model = mlp()
    torch.nn.utils.parametrizations.weight_norm(model[0])
    with left_alone(model), pytest.raises(ValueError, match=r"0\.weight is reparametrized by "
                                                            r"_WeightNorm"):
        one_shot_prune(model, [torch.randn(8, 16)], "sparsegpt", 0.5)


def test_a_layer_pruned_by_torch_prune_is_named(left_alone):
    model = mlp()
    torch.nn.utils.prune.l1_unstructured(model[2], "weight", amount=0.25)
    with left_alone(model), pytest.raises(ValueError, match=r"2\.weight is computed by a "
                                                            r"forward pre-hook from "
                                                            r"\['weight_orig'\]"):
        one_shot_prune(model, [torch.randn(8, 16)], "wanda", 0.5)


def test_maskutils_never_imports_transformers_itself():
    import subprocess
    import sys

    code = ("import sys, maskutils, maskutils.oneshot as o; from torch import nn; "
            "o.prunable_weights(nn.Linear(2, 2)); "
            "assert 'transformers' not in sys.modules, 'imported'")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
