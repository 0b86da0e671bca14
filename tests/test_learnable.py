"""Learnable masks (maskutils.learnable): gates, penalties, optimizer groups, binarize."""
from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import parametrize

from maskutils import apply_mask, get_mask, sparsity
from maskutils.learnable import (BETA, GAMMA, GATES, ZETA, LearnableGate, apply_learnable_mask,
                                 binarize, gate_penalty, gate_sparsity, gate_values,
                                 learnable_mask_layers, mask_parameters, weight_parameters)

FAST = settings(max_examples=30, deadline=None)


def _model(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).to(dtype)


def _gate(layer, name="weight") -> LearnableGate:
    return [p for p in layer.parametrizations[name] if isinstance(p, LearnableGate)][0]


def _set_logits(model, seed, scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for logits in mask_parameters(model):
            logits.copy_(torch.randn(logits.shape, generator=gen, dtype=logits.dtype) * scale)


def _original(layer, name="weight"):
    return layer.parametrizations[name].original


# --- gate values ----------------------------------------------------------------------------

@FAST
@given(gate=st.sampled_from(GATES), seed=st.integers(0, 2**16),
       scale=st.sampled_from([0.1, 3.0, 50.0, 1e4]))
def test_gate_values_and_samples_lie_in_0_1(gate, seed, scale):
    model = _model()
    learnable_mask_layers(model, gate=gate)
    _set_logits(model, seed, scale)
    for values in gate_values(model).values():
        assert torch.isfinite(values).all()
        assert ((values >= 0) & (values <= 1)).all()
    for layer in (model[0], model[2]):
        for training in (True, False):
            _gate(layer).train(training)
            sample = _gate(layer).sample()
            assert torch.isfinite(sample).all()
            assert ((sample >= 0) & (sample <= 1)).all()


@pytest.mark.parametrize("gate", GATES)
def test_effective_weight_is_original_times_gate_in_eval_mode(gate):
    model = _model()
    learnable_mask_layers(model, gate=gate)
    _set_logits(model, 1)
    model.eval()
    gates = gate_values(model)
    for name, layer in (("0.weight", model[0]), ("2.weight", model[2])):
        assert torch.equal(layer.weight, _original(layer) * gates[name])


def test_sigmoid_gate_is_the_sigmoid_of_the_logits_and_never_exactly_0_or_1():
    layer = apply_learnable_mask(nn.Linear(4, 3), gate="sigmoid", init_logit=0.7)
    assert torch.allclose(_gate(layer).values(), torch.sigmoid(torch.full((3, 4), 0.7)))
    with torch.no_grad():
        _gate(layer).logits.copy_(torch.linspace(-15, 15, 12).view(3, 4))
    values = _gate(layer).values()
    assert ((values > 0) & (values < 1)).all()
    assert sparsity(layer) == 0.0


def test_straight_through_forward_is_exactly_binary_and_backward_is_the_sigmoid_gradient():
    layer = apply_learnable_mask(nn.Linear(4, 3), gate="ste")
    logits = _gate(layer).logits
    with torch.no_grad():
        logits.copy_(torch.linspace(-3, 3, 12).view(3, 4))
    values = _gate(layer).values()
    assert set(values.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(values, (torch.sigmoid(logits) >= 0.5).float())
    values.sum().backward()
    s = torch.sigmoid(logits.detach())
    assert torch.allclose(logits.grad, s * (1 - s))


def test_hard_concrete_is_stochastic_in_training_and_deterministic_in_eval():
    torch.manual_seed(0)
    layer = apply_learnable_mask(nn.Linear(20, 10), gate="hard_concrete", init_logit=0.0)
    layer.train()
    first, second = layer.weight.detach().clone(), layer.weight.detach().clone()
    assert not torch.equal(first, second)
    layer.eval()
    assert torch.equal(layer.weight, layer.weight)
    expected = (torch.sigmoid(torch.zeros(10, 20)) * (ZETA - GAMMA) + GAMMA).clamp(0, 1)
    assert torch.allclose(_gate(layer).values(), expected)


def test_hard_concrete_eval_gates_are_exactly_0_or_1_away_from_the_middle():
    layer = apply_learnable_mask(nn.Linear(2, 2), gate="hard_concrete")
    with torch.no_grad():
        _gate(layer).logits.copy_(torch.tensor([[-5.0, -2.5], [2.5, 5.0]]))
    assert _gate(layer).values().tolist() == [[0.0, 0.0], [1.0, 1.0]]


def test_hard_concrete_samples_hit_exact_zeros_and_ones_in_training():
    torch.manual_seed(0)
    layer = apply_learnable_mask(nn.Linear(50, 40), gate="hard_concrete", init_logit=0.0)
    sample = _gate(layer).sample()
    assert (sample == 0).any() and (sample == 1).any()


@pytest.mark.parametrize("init", [-2.0, 0.0, 3.0])
def test_init_logit_sets_every_logit(init):
    layer = apply_learnable_mask(nn.Linear(3, 2), init_logit=init)
    assert torch.equal(_gate(layer).logits, torch.full((2, 3), init))


def test_default_init_opens_every_gate():
    for gate in GATES:
        model = _model()
        learnable_mask_layers(model, gate=gate)
        model.eval()
        assert gate_sparsity(model) == 0.0
        if gate != "sigmoid":  # the hard gates start exactly open: the dense model
            assert torch.equal(model[0].weight, _original(model[0]))


# --- penalties ------------------------------------------------------------------------------

def test_sigmoid_penalty_is_the_sum_of_all_gate_values():
    model = _model()
    learnable_mask_layers(model, gate="sigmoid")
    _set_logits(model, 2)
    expected = sum(torch.sigmoid(l).sum() for l in mask_parameters(model))
    assert torch.allclose(gate_penalty(model), expected)


def test_ste_penalty_counts_open_gates_with_the_sigmoid_gradient():
    model = _model()
    learnable_mask_layers(model, gate="ste")
    _set_logits(model, 3)
    logits = mask_parameters(model)
    penalty = gate_penalty(model)
    assert penalty.item() == sum(int((l >= 0).sum()) for l in logits)
    penalty.backward()
    for l in logits:
        s = torch.sigmoid(l.detach())
        assert torch.allclose(l.grad, s * (1 - s))


def test_hard_concrete_penalty_is_the_expected_number_of_nonzero_gates():
    torch.manual_seed(0)
    layer = apply_learnable_mask(nn.Linear(40, 25), gate="hard_concrete")
    with torch.no_grad():
        _gate(layer).logits.copy_(torch.linspace(-4, 4, 1000).view(25, 40))
    expected = gate_penalty(layer).item()
    assert math.isclose(
        expected, torch.sigmoid(_gate(layer).logits - BETA * math.log(-GAMMA / ZETA)).sum().item(),
        rel_tol=1e-6)
    nonzero = torch.stack([(_gate(layer).sample() > 0).float().sum() for _ in range(400)])
    assert abs(nonzero.mean().item() - expected) < 0.01 * layer.weight.numel()


def test_penalty_with_adam_closes_gates_and_binarize_gives_that_sparsity():
    torch.manual_seed(0)
    model = _model()
    learnable_mask_layers(model, gate="sigmoid")
    x, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
    opt = torch.optim.Adam([{"params": weight_parameters(model), "lr": 1e-3},
                            {"params": mask_parameters(model), "lr": 0.1}])
    for _ in range(60):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y) + 0.01 * gate_penalty(model)
        loss.backward()
        opt.step()
    closed = gate_sparsity(model)
    assert closed > 0.5
    binarize(model)
    assert sparsity(model) == closed


# --- parameter groups -----------------------------------------------------------------------

def test_parameter_groups_are_disjoint_and_cover_the_model():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    apply_mask(model[0], torch.ones(4, 4))  # a fixed mask too
    apply_learnable_mask(model[0], gate="ste")
    apply_learnable_mask(model[4], gate="hard_concrete")
    masks, weights = mask_parameters(model), weight_parameters(model)
    ids = lambda ps: [id(p) for p in ps]  # noqa: E731
    assert len(set(ids(masks))) == len(masks) == 2
    assert not set(ids(masks)) & set(ids(weights))
    assert sorted(ids(masks) + ids(weights)) == sorted(ids(model.parameters()))
    assert all(p is _gate(layer).logits for p, layer in zip(masks, (model[0], model[4])))
    torch.optim.Adam([{"params": weights}, {"params": masks, "lr": 0.1}])  # valid groups


def test_gradients_reach_both_the_weights_and_the_logits():
    model = _model()
    learnable_mask_layers(model, gate="sigmoid")
    model(torch.randn(8, 6)).sum().backward()
    for p in mask_parameters(model) + [_original(model[0]), _original(model[2])]:
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_weight_parameters_of_a_plain_model_are_all_its_parameters():
    model = _model()
    assert [id(p) for p in weight_parameters(model)] == [id(p) for p in model.parameters()]


# --- binarize -------------------------------------------------------------------------------

@FAST
@given(gate=st.sampled_from(GATES), seed=st.integers(0, 2**16),
       threshold=st.sampled_from([0.5, 0.25, 0.9]))
def test_binarize_leaves_fixed_masks_equal_to_the_thresholded_gates(gate, seed, threshold):
    model = _model()
    learnable_mask_layers(model, gate=gate)
    _set_logits(model, seed)
    gates = gate_values(model)
    originals = {n: _original(model[i]) for n, i in (("0.weight", 0), ("2.weight", 2))}
    masks = binarize(model, threshold=threshold)
    assert sorted(masks) == ["0.weight", "2.weight"]
    assert not any(isinstance(m, LearnableGate) for m in model.modules())
    with pytest.raises(ValueError, match="no learnable mask"):
        mask_parameters(model)
    for name, i in (("0.weight", 0), ("2.weight", 2)):
        keep = (gates[name] >= threshold).float()
        assert torch.equal(masks[name], keep)
        assert torch.equal(get_mask(model[i]), keep)
        assert _original(model[i]) is originals[name], "the raw Parameter object is kept"
        assert torch.equal(model[i].weight, originals[name] * keep)


def test_binarize_keeps_a_gate_exactly_at_the_threshold():
    layer = apply_learnable_mask(nn.Linear(2, 1), init_logit=0.0)  # sigmoid(0) == 0.5
    assert binarize(layer)["weight"].tolist() == [[1.0, 1.0]]


def test_binarize_of_a_straight_through_model_does_not_change_its_outputs():
    model = _model()
    learnable_mask_layers(model, gate="ste")
    _set_logits(model, 5)
    x = torch.randn(16, 6)
    before = model(x)
    binarize(model)
    assert torch.equal(model(x), before)


def test_binarize_intersects_with_a_fixed_mask_already_there():
    layer = nn.Linear(3, 2)
    fixed = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    apply_mask(layer, fixed)
    apply_learnable_mask(layer)
    with torch.no_grad():
        _gate(layer).logits.copy_(torch.tensor([[1.0, 1.0, -1.0], [1.0, -1.0, -1.0]]))
    masks = binarize(layer)
    expected = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    assert torch.equal(masks["weight"], expected)
    assert torch.equal(get_mask(layer), expected)
    assert len(layer.parametrizations.weight) == 1


def test_binarize_on_a_deepcopy_leaves_the_original_working():
    # parametrize shares one injected class between a module and its deepcopy
    model = _model()
    learnable_mask_layers(model)
    twin = copy.deepcopy(model)
    binarize(twin)
    x = torch.randn(4, 6)
    model(x)  # the original still has its learnable masks
    assert len(mask_parameters(model)) == 2
    binarize(model)
    assert torch.equal(get_mask(model[0]), get_mask(twin[0]))


def test_an_optimizer_built_before_binarize_keeps_training_the_weights():
    model = _model()
    learnable_mask_layers(model)
    opt = torch.optim.SGD(weight_parameters(model), lr=0.1)
    binarize(model)
    before = _original(model[0]).detach().clone()
    model(torch.randn(4, 6)).sum().backward()
    opt.step()
    assert not torch.equal(_original(model[0]), before)


def test_gate_sparsity_predicts_the_sparsity_after_binarize():
    model = _model()
    learnable_mask_layers(model, gate="hard_concrete")
    _set_logits(model, 7)
    predicted = gate_sparsity(model)
    binarize(model)
    assert sparsity(model) == predicted


# --- state_dict, copies, dtype ----------------------------------------------------------------

@pytest.mark.parametrize("gate", GATES)
def test_learnable_masks_survive_a_state_dict_round_trip(gate):
    source = _model(seed=0)
    learnable_mask_layers(source, gate=gate)
    _set_logits(source, 11)
    buffer = io.BytesIO()
    torch.save(source.state_dict(), buffer)
    buffer.seek(0)
    target = _model(seed=1)
    learnable_mask_layers(target, gate=gate)
    target.load_state_dict(torch.load(buffer))
    source.eval()
    target.eval()
    x = torch.randn(5, 6)
    assert torch.equal(source(x), target(x))
    for a, b in zip(gate_values(source).values(), gate_values(target).values()):
        assert torch.equal(a, b)
    assert any(k.endswith("parametrizations.weight.0.logits") for k in source.state_dict())


def test_deepcopy_gives_independent_learnable_masks():
    model = _model()
    learnable_mask_layers(model)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        mask_parameters(twin)[0].fill_(-5.0)
    assert (mask_parameters(model)[0] == 3.0).all()


def test_logits_follow_the_weight_dtype():
    model = _model(dtype=torch.float64)
    learnable_mask_layers(model, gate="hard_concrete")
    assert all(p.dtype == torch.float64 for p in mask_parameters(model))
    assert model(torch.randn(2, 6, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_to_moves_the_logits():
    model = _model()
    learnable_mask_layers(model)
    model.to("cuda")
    assert all(p.device.type == "cuda" for p in mask_parameters(model))
    assert gate_penalty(model).device.type == "cuda"


def test_learnable_mask_layers_masks_linear_and_conv_layers():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 2))
    assert learnable_mask_layers(model, gate="ste") == ["0", "2"]
    assert len(mask_parameters(model)) == 2
    assert tuple(mask_parameters(model)[0].shape) == (2, 1, 3, 3)


def test_masking_a_bias():
    layer = apply_learnable_mask(nn.Linear(3, 2), name="bias", init_logit=-4.0)
    assert binarize(layer)["bias"].tolist() == [0.0, 0.0]
    assert torch.equal(layer.bias, torch.zeros(2))


# --- bad input: clear errors, module untouched ------------------------------------------------

@pytest.mark.parametrize("kwargs, error, words", [
    ({"gate": "relu"}, ValueError, "gate must be one of"),
    ({"gate": None}, ValueError, "gate must be one of"),
    ({"name": "weights"}, ValueError, "no parameter 'weights'"),
    ({"name": 3}, TypeError, "name must be a str"),
    ({"init_logit": float("nan")}, ValueError, "init_logit must be finite"),
    ({"init_logit": float("inf")}, ValueError, "init_logit must be finite"),
    ({"init_logit": "3"}, TypeError, "init_logit must be a real number"),
    ({"init_logit": True}, TypeError, "init_logit must be a real number"),
])
def test_apply_learnable_mask_rejects_bad_input_and_leaves_the_module_alone(
        kwargs, error, words, left_alone):
    layer = nn.Linear(3, 2)
    with left_alone(layer), pytest.raises(error, match=words):
        apply_learnable_mask(layer, **kwargs)


def test_apply_learnable_mask_twice_is_refused(left_alone):
    layer = apply_learnable_mask(nn.Linear(3, 2))
    with left_alone(layer), pytest.raises(ValueError, match="already has a learnable mask"):
        apply_learnable_mask(layer, gate="ste")


def test_a_non_module_is_refused():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        apply_learnable_mask(torch.zeros(3))
    with pytest.raises(TypeError, match="torch.nn.Module"):
        gate_penalty("model")


def test_learnable_mask_layers_validates_before_changing_anything(left_alone):
    model = _model()
    apply_learnable_mask(model[2])
    with left_alone(model), pytest.raises(ValueError, match="already have a learnable mask"):
        learnable_mask_layers(model)
    with left_alone(model), pytest.raises(ValueError, match="gate must be one of"):
        learnable_mask_layers(model, gate="tanh")
    with pytest.raises(ValueError, match="no Linear or Conv layer"):
        learnable_mask_layers(nn.Sequential(nn.ReLU()))


@pytest.mark.parametrize("threshold, error", [
    (0.0, ValueError), (1.0, ValueError), (-0.1, ValueError), (1.5, ValueError),
    (float("nan"), ValueError), ("0.5", TypeError), (True, TypeError), (None, TypeError),
])
def test_binarize_rejects_a_threshold_outside_0_1_and_leaves_the_model_alone(
        threshold, error, left_alone):
    model = _model()
    learnable_mask_layers(model)
    with left_alone(model), pytest.raises(error, match="threshold"):
        binarize(model, threshold=threshold)
    with left_alone(model), pytest.raises(error, match="threshold"):
        gate_sparsity(model, threshold=threshold)


def test_binarize_refuses_unknown_parametrizations_before_touching_any_layer(left_alone):
    class Double(nn.Module):
        def forward(self, x):
            return 2 * x

    model = _model()
    learnable_mask_layers(model)
    parametrize.register_parametrization(model[2], "weight", Double())
    with left_alone(model), pytest.raises(ValueError, match="other parametrizations"):
        binarize(model)
    assert len(mask_parameters(model)) == 2, "layer 0 was not binarized either"


@pytest.mark.parametrize("call", [gate_penalty, binarize, mask_parameters, gate_values,
                                  gate_sparsity])
def test_functions_that_need_learnable_masks_say_so(call, left_alone):
    model = _model()
    apply_mask(model[0], torch.ones(5, 6))
    with left_alone(model), pytest.raises(ValueError, match="apply_learnable_mask"):
        call(model)


def test_integer_parameters_cannot_get_a_learnable_mask(left_alone):
    module = nn.Module()
    module.register_parameter("counts", nn.Parameter(torch.ones(3, dtype=torch.long),
                                                     requires_grad=False))
    with left_alone(module), pytest.raises(TypeError, match="floating-point"):
        apply_learnable_mask(module, name="counts")


# --- unit gates (structure="unit"): one gate per output row ---------------------------------

@pytest.mark.parametrize("gate", GATES)
def test_unit_gates_have_one_logit_per_row_and_gate_whole_rows(gate):
    layer = apply_learnable_mask(nn.Linear(6, 4), gate=gate, structure="unit")
    g = _gate(layer)
    assert g.logits.shape == (4, 1) and g.structure == "unit"
    with torch.no_grad():
        g.logits.copy_(torch.tensor([[4.0], [-4.0], [4.0], [-4.0]]))
    layer.eval()
    w = layer.weight.detach()
    assert (w[[1, 3]] == 0).all() if gate != "sigmoid" else (w[[1, 3]].abs() > 0).all()
    expected = _original(layer) * g.values()  # broadcast over the row
    assert torch.allclose(w, expected.detach())


def test_unit_gates_of_a_convolution_gate_output_channels():
    conv = apply_learnable_mask(nn.Conv2d(2, 3, 3), gate="ste", structure="unit")
    assert _gate(conv).logits.shape == (3, 1, 1, 1)
    with torch.no_grad():
        _gate(conv).logits[1] = -1.0
    assert (conv.weight[1] == 0).all() and (conv.weight[[0, 2]] != 0).all()


def test_hard_concrete_unit_gates_sample_one_value_per_row_in_training():
    torch.manual_seed(0)
    layer = apply_learnable_mask(nn.Linear(5, 8), gate="hard_concrete", init_logit=0.0,
                                 structure="unit")
    layer.train()
    ratios = layer.weight.detach() / _original(layer).detach()
    assert torch.allclose(ratios, ratios[:, :1].expand_as(ratios))  # constant along a row
    assert len(set(ratios[:, 0].tolist())) > 1  # rows get their own samples


@pytest.mark.parametrize("gate", GATES)
def test_unit_gate_penalty_counts_units_like_the_weight_penalty_counts_weights(gate):
    unit = apply_learnable_mask(nn.Linear(7, 3), gate=gate, init_logit=0.5, structure="unit")
    each = apply_learnable_mask(nn.Linear(1, 3), gate=gate, init_logit=0.5)
    assert gate_penalty(unit).item() == pytest.approx(gate_penalty(each).item())
    gate_penalty(unit).backward()
    assert _gate(unit).logits.grad.shape == (3, 1)


def test_gate_values_and_sparsity_of_unit_gates_are_per_weight():
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2))
    apply_learnable_mask(model[0], gate="sigmoid", structure="unit")
    with torch.no_grad():
        _gate(model[0]).logits[:2] = -1.0
    values = gate_values(model)["0.weight"]
    assert values.shape == (5, 4)
    assert gate_sparsity(model) == pytest.approx(2 / 5)


def test_binarize_turns_unit_gates_into_whole_row_masks():
    model = _model()
    apply_learnable_mask(model[0], gate="hard_concrete", structure="unit")
    with torch.no_grad():
        _gate(model[0]).logits[[0, 3]] = -5.0
    masks = binarize(model)
    mask = masks["0.weight"]
    assert mask.shape == (5, 6) and mask.is_contiguous()
    assert mask.sum(dim=1).tolist() == [0.0, 6.0, 6.0, 0.0, 6.0]
    assert torch.equal(get_mask(model[0]), mask)


def test_unit_gates_survive_a_state_dict_round_trip_and_deepcopy():
    torch.manual_seed(0)
    a = _model()
    apply_learnable_mask(a[0], gate="ste", structure="unit")
    _set_logits(a, seed=3)
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    b = _model(seed=1)
    apply_learnable_mask(b[0], gate="ste", structure="unit")
    buffer.seek(0)
    b.load_state_dict(torch.load(buffer))
    x = torch.randn(2, 6)
    assert torch.equal(a(x), b(x)) and torch.equal(copy.deepcopy(a)(x), a(x))
    c = _model()
    apply_learnable_mask(c[0], gate="ste")  # per-weight logits do not fit
    with pytest.raises(RuntimeError, match="size mismatch"):
        c.load_state_dict(a.state_dict())


@pytest.mark.parametrize("structure", ["row", "units", None, 1])
def test_an_unknown_structure_is_refused_and_the_module_left_alone(structure, left_alone):
    layer = nn.Linear(3, 2)
    with left_alone(layer), pytest.raises(ValueError, match="structure must be"):
        apply_learnable_mask(layer, structure=structure)


def test_unit_gates_with_adam_close_units_and_shrink_removes_them():
    from maskutils.structured import dead_units, shrink

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 2))
    apply_learnable_mask(model[0], gate="hard_concrete", structure="unit")
    optimizer = torch.optim.Adam([{"params": weight_parameters(model), "lr": 1e-2},
                                  {"params": mask_parameters(model), "lr": 0.2}])
    x, y = torch.randn(64, 6), torch.randn(64, 2)
    for _ in range(60):
        optimizer.zero_grad()
        loss = (model(x) - y).pow(2).mean() + 0.05 * gate_penalty(model)
        loss.backward()
        optimizer.step()
    closed = int((_gate(model[0]).values() == 0).sum())
    assert 0 < closed < 12
    model.eval()
    assert len(dead_units(model)["0"]) == closed
    assert shrink(model)[0].out_features == 12 - closed
