"""Mask builders and sparsity (maskutils.masks)."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from maskutils import apply_mask, magnitude_mask, nm_mask, random_mask, sparsity

FAST = settings(max_examples=40, deadline=None)

shapes = st.lists(st.integers(1, 5), min_size=1, max_size=4).map(tuple)
fractions = st.floats(0.0, 1.0, allow_nan=False)
seeds = st.integers(0, 2**16)


def _weight(shape, seed, dtype=torch.float32):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def _is_binary(mask):
    return bool(((mask == 0) | (mask == 1)).all())


# --- exact counts, dtype, device ------------------------------------------------------------

@FAST
@given(shape=shapes, s=fractions, seed=seeds,
       dtype=st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]))
def test_random_mask_removes_exactly_round_sparsity_times_numel(shape, s, seed, dtype):
    like = torch.empty(shape, dtype=dtype)
    mask = random_mask(like, s, generator=torch.Generator().manual_seed(seed))
    assert mask.shape == like.shape
    assert mask.dtype == dtype and mask.device == like.device
    assert _is_binary(mask)
    assert int((mask == 0).sum()) == round(s * like.numel())


@FAST
@given(shape=shapes, s=fractions, seed=seeds,
       dtype=st.sampled_from([torch.float32, torch.float64, torch.float16]))
def test_magnitude_mask_removes_exactly_the_smallest_magnitudes(shape, s, seed, dtype):
    w = _weight(shape, seed, dtype)
    mask = magnitude_mask(w, s)
    assert mask.shape == w.shape and mask.dtype == dtype and mask.device == w.device
    assert _is_binary(mask)
    assert int((mask == 0).sum()) == round(s * w.numel())
    removed, kept = w.abs()[mask == 0], w.abs()[mask == 1]
    if removed.numel() and kept.numel():
        assert removed.max() <= kept.min()


def test_magnitude_mask_breaks_ties_and_still_removes_exactly_k():
    mask = magnitude_mask(torch.ones(10), 0.3)
    assert int((mask == 0).sum()) == 3


def test_builders_return_default_float_dtype_for_integer_weights():
    w = torch.arange(8).reshape(2, 4)
    for mask in (random_mask(w, 0.5), magnitude_mask(w, 0.5), nm_mask(w)):
        assert mask.dtype == torch.get_default_dtype()


def test_random_mask_is_reproducible_with_a_generator_and_varies_without_reuse():
    like = torch.empty(20, 20)
    a = random_mask(like, 0.5, generator=torch.Generator().manual_seed(1))
    b = random_mask(like, 0.5, generator=torch.Generator().manual_seed(1))
    c = random_mask(like, 0.5, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_builders_do_not_modify_the_weight():
    w = torch.randn(4, 8)
    before = w.clone()
    magnitude_mask(w, 0.5), nm_mask(w), random_mask(w, 0.5)
    assert torch.equal(w, before)


def test_magnitude_mask_of_a_parameter_is_not_part_of_the_graph():
    w = nn.Parameter(torch.randn(3, 4))
    mask = magnitude_mask(w, 0.5)
    assert not mask.requires_grad


# --- N:M ------------------------------------------------------------------------------------

@st.composite
def nm_cases(draw):
    m = draw(st.integers(1, 8))
    n = draw(st.integers(1, m))
    shape = draw(st.lists(st.integers(1, 4), min_size=0, max_size=3))
    dim = draw(st.integers(0, len(shape)))
    shape.insert(dim, draw(st.integers(1, 4)) * m)
    if draw(st.booleans()):
        dim -= len(shape)                      # the same dimension, counted from the end
    return tuple(shape), n, m, dim, draw(seeds)


@FAST
@given(nm_cases(), st.sampled_from([torch.float32, torch.float64, torch.float16]))
def test_nm_mask_keeps_exactly_n_largest_in_every_group_of_m_along_dim(case, dtype):
    shape, n, m, dim, seed = case
    w = _weight(shape, seed, dtype)
    mask = nm_mask(w, n=n, m=m, dim=dim)
    assert mask.shape == w.shape and mask.dtype == dtype and _is_binary(mask)
    groups = w.abs().movedim(dim, -1).reshape(-1, m)
    kept = mask.movedim(dim, -1).reshape(-1, m)
    assert torch.equal(kept.sum(dim=1), torch.full((groups.shape[0],), float(n), dtype=dtype))
    for g, k in zip(groups, kept):
        if n < m:
            assert g[k == 0].max() <= g[k == 1].min()


def test_nm_mask_of_a_linear_weight_groups_its_input_dimension():
    w = torch.tensor([[4.0, -1.0, 0.5, 3.0, 0.1, 0.2, 9.0, -8.0]])   # (out=1, in=8)
    assert nm_mask(w).tolist() == [[1, 0, 0, 1, 0, 0, 1, 1]]
    assert torch.equal(nm_mask(w), nm_mask(w, dim=-1))


def test_nm_mask_of_a_3x3_conv_groups_input_channels_not_the_kernel_width():
    conv = nn.Conv2d(8, 4, kernel_size=3)          # weight (out=4, in=8, 3, 3)
    mask = nm_mask(conv.weight, n=2, m=4)
    assert mask.shape == conv.weight.shape
    by_channel = mask.reshape(4, 2, 4, 3, 3).sum(dim=2)   # groups of 4 input channels
    assert (by_channel == 2).all()
    # every (out, kh, kw) position keeps half of its input channels
    assert (mask.sum(dim=1) == 4).all()


def test_nm_mask_dim_0_serves_an_in_out_layout_like_conv1d():
    w = torch.randn(8, 6)                          # transformers' Conv1D: (in=8, out=6)
    mask = nm_mask(w, dim=0)
    assert torch.equal(mask, nm_mask(w.t().contiguous()).t())
    assert (mask.reshape(2, 4, 6).sum(dim=1) == 2).all()


def test_nm_mask_of_a_transposed_weight_follows_its_logical_layout():
    w = torch.randn(8, 4)
    assert torch.equal(nm_mask(w.t()), nm_mask(w.t().contiguous()))


def test_nm_mask_names_the_dimension_that_is_not_divisible_by_m():
    with pytest.raises(ValueError, match=r"dimension dim=1 of weight \(3, 6\) has size 6.*m=4"):
        nm_mask(torch.randn(3, 6), n=2, m=4)
    with pytest.raises(ValueError, match=r"dim=1 of weight \(4, 3, 3, 3\) has size 3"):
        nm_mask(torch.randn(4, 3, 3, 3))            # a conv with 3 input channels


def test_nm_mask_rejects_a_dim_out_of_range_and_a_non_integer_dim():
    with pytest.raises(ValueError, match=r"dim=1 is out of range.*shape \(8,\)"):
        nm_mask(torch.randn(8))
    assert nm_mask(torch.tensor([3.0, 1.0, 2.0, 0.0]), dim=0).tolist() == [1, 0, 1, 0]
    with pytest.raises(TypeError, match="dim must be an int"):
        nm_mask(torch.randn(4, 8), dim=1.0)


@pytest.mark.parametrize("n, m", [(5, 4), (0, 4), (-1, 4)])
def test_nm_mask_rejects_n_outside_1_to_m(n, m):
    with pytest.raises(ValueError, match=r"1 <= n <= m"):
        nm_mask(torch.randn(2, 8), n=n, m=m)


@pytest.mark.parametrize("n, m", [(2.0, 4), (2, "4"), (True, 4)])
def test_nm_mask_rejects_non_integer_n_or_m(n, m):
    with pytest.raises(TypeError, match="must be an int"):
        nm_mask(torch.randn(2, 8), n=n, m=m)


# --- bad input ------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), float("inf")])
@pytest.mark.parametrize("builder", [random_mask, magnitude_mask])
def test_sparsity_outside_0_1_or_nan_is_a_value_error(builder, bad):
    with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\]"):
        builder(torch.randn(3, 4), bad)


@pytest.mark.parametrize("bad", [True, False, "0.5", None, torch.tensor(0.5)])
@pytest.mark.parametrize("builder", [random_mask, magnitude_mask])
def test_sparsity_that_is_not_a_real_number_is_a_type_error(builder, bad):
    with pytest.raises(TypeError, match="sparsity must be a number"):
        builder(torch.randn(3, 4), bad)


@pytest.mark.parametrize("builder", [lambda w: magnitude_mask(w, 0.5), nm_mask])
def test_nan_weights_cannot_be_ranked(builder):
    w = torch.randn(2, 4)
    w[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        builder(w)


@pytest.mark.parametrize("builder", [lambda w: random_mask(w, 0.5),
                                     lambda w: magnitude_mask(w, 0.5), nm_mask, sparsity])
def test_builders_reject_non_tensors_and_empty_tensors(builder):
    with pytest.raises(TypeError, match="torch.Tensor"):
        builder([[1.0, 2.0, 3.0, 4.0]])
    with pytest.raises(ValueError, match="empty"):
        builder(torch.empty(0, 4))


# --- sparsity() -----------------------------------------------------------------------------

@FAST
@given(st.lists(st.sampled_from([0.0, -0.0, 1.0, -2.5, 1e-30, float("nan")]), min_size=1, max_size=40))
def test_sparsity_of_a_tensor_is_the_fraction_of_exact_zeros(values):
    expected = sum(v == 0 for v in values) / len(values)
    assert sparsity(torch.tensor(values)) == expected


def test_sparsity_of_a_tensor_examples():
    assert sparsity(torch.tensor([0.0, 1.0, 0.0, 2.0])) == 0.5
    assert sparsity(torch.zeros(3, 3)) == 1.0
    assert sparsity(torch.tensor([True, False])) == 0.5


@FAST
@given(sizes=st.lists(st.integers(1, 6), min_size=2, max_size=4),
       fracs=st.lists(fractions, min_size=3, max_size=3), seed=seeds)
def test_sparsity_of_a_module_counts_effective_weights_only(sizes, fracs, seed):
    layers = [nn.Linear(a, b) for a, b in zip(sizes, sizes[1:])]
    model = nn.Sequential(*[m for layer in layers for m in (layer, nn.ReLU())])
    g = torch.Generator().manual_seed(seed)
    removed = total = 0
    with torch.no_grad():
        for layer, s in zip(layers, fracs):
            layer.weight.uniform_(1.0, 2.0)   # no zeros of its own: only the mask adds zeros
            layer.bias.zero_()                # all-zero biases: counted, they would change the answer
            mask = random_mask(layer.weight, s, generator=g)
            apply_mask(layer, mask)
            removed += int((mask == 0).sum())
            total += mask.numel()
    assert sparsity(model) == pytest.approx(removed / total, abs=1e-12)


def test_sparsity_of_a_module_without_weights_is_a_value_error():
    with pytest.raises(ValueError, match="no layer with a weight"):
        sparsity(nn.Sequential(nn.ReLU(), nn.Flatten()))


def test_sparsity_of_an_unmasked_linear_is_zero():
    assert sparsity(nn.Linear(5, 3)) == 0.0


def test_sparsity_means_removed_fraction_not_kept_fraction():
    w = torch.randn(10, 10).abs() + 0.1
    assert math.isclose(sparsity(w * magnitude_mask(w, 0.9)), 0.9)


def test_sparsity_of_a_module_counts_a_masked_in_proj_weight():
    mha = nn.MultiheadAttention(8, 2)
    apply_mask(mha, torch.zeros(24, 8), name="in_proj_weight")
    total = 24 * 8 + 8 * 8                      # in_proj_weight and out_proj.weight
    assert sparsity(mha) == pytest.approx(24 * 8 / total)


def test_sparsity_of_an_lstm_counts_its_weights_masked_or_not():
    lstm = nn.LSTM(4, 4)
    assert sparsity(lstm) == 0.0                # no error: weight_ih/hh are weights
    apply_mask(lstm, torch.zeros(16, 4), name="weight_ih_l0")
    assert sparsity(lstm) == pytest.approx(0.5)


def test_sparsity_counts_any_masked_parameter_and_a_tied_one_once():
    model = nn.ModuleDict({"embed": nn.Embedding(6, 4), "head": nn.Linear(4, 6, bias=False)})
    model["head"].weight = model["embed"].weight
    with torch.no_grad():
        model["embed"].weight.uniform_(1.0, 2.0)
    assert sparsity(model) == 0.0
    keep = torch.ones(6, 4)
    keep[:3] = 0
    apply_mask(model["head"], keep, model=model)
    assert sparsity(model) == 0.5               # 24 entries once, not 48
    bias = nn.Linear(3, 2)
    with torch.no_grad():
        bias.weight.fill_(1.0)
    apply_mask(bias, torch.tensor([0.0, 1.0]), name="bias")
    assert sparsity(bias) == pytest.approx(1 / 8)   # a masked bias counts


def test_sparsity_ignores_parametrization_internals():
    from maskutils.learnable import apply_learnable_mask

    layer = nn.Linear(4, 3)
    with torch.no_grad():
        layer.weight.fill_(1.0)
    apply_learnable_mask(layer, gate="ste", init_logit=-3.0)   # every gate closed
    assert sparsity(layer) == 1.0               # the logits (non-zero) are not a layer weight


def test_sparsity_of_a_model_pruned_with_torch_prune_measures_the_effective_weights():
    from torch.nn.utils import prune

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 10))
    layers = [(model[0], "weight"), (model[2], "weight")]
    prune.global_unstructured(layers, pruning_method=prune.L1Unstructured, amount=0.9)
    assert sparsity(model) == pytest.approx(0.9, abs=1 / 900)   # not the dense weight_orig too
    extra = nn.Module()
    extra.weight_orig = nn.Parameter(torch.ones(3, 3))   # a name alone is not prune's
    assert sparsity(extra) == 0.0
