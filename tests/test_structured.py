"""maskutils.structured: prune_units, dead_units and shrink.

shrink must give the same outputs in eval mode, exactly the parameter count it promises, a
plain model whose state_dict loads into a freshly built model of the smaller shape, and a
clear error (with the model untouched) for whatever it cannot cut exactly.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from maskutils import apply_learnable_mask, apply_mask, binarize, digits_mlp
from maskutils.models import DigitsMLP
from maskutils.structured import count_parameters, dead_units, prune_units, shrink


def seeded(seed=0):
    torch.manual_seed(seed)


def expected_count(model_sizes, removed, bias=True, batchnorm=False):
    """Parameters of an MLP of ``model_sizes`` after removing ``removed[i]`` units of hidden
    layer i: every unit takes its row, its bias, its column in the next layer (and two BN
    parameters)."""
    sizes = list(model_sizes)
    for i, r in enumerate(removed):
        sizes[i + 1] -= r
    total = 0
    for a, b in zip(sizes, sizes[1:]):
        total += a * b + (b if bias else 0)
    if batchnorm:
        total += 2 * sum(sizes[1:-1])
    return total


# ---------------------------------------------------------------- equal outputs, exact counts
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.75])
def test_shrink_after_prune_units_keeps_outputs_and_counts(seed, fraction):
    seeded(seed)
    model = digits_mlp(hidden=(20, 12))
    prune_units(model, fraction)
    small = shrink(model)
    removed = [round(fraction * 20), round(fraction * 12)]
    assert [m.out_features for m in small.linears()] == [20 - removed[0], 12 - removed[1], 10]
    assert count_parameters(small) == expected_count([64, 20, 12, 10], removed)
    x = torch.randn(7, 64)
    model.eval(), small.eval()
    assert torch.allclose(small(x), model(x), atol=1e-5)


def test_shrink_result_is_plain_and_loads_into_a_fresh_model():
    seeded()
    model = digits_mlp(hidden=(16, 16))
    prune_units(model, 0.5)
    small = shrink(model)
    assert type(small) is DigitsMLP
    assert not any(parametrize.is_parametrized(m) for m in small.modules())
    fresh = digits_mlp(hidden=(8, 8))
    fresh.load_state_dict(small.state_dict())  # strict: same keys and shapes
    x = torch.randn(3, 64)
    assert torch.equal(fresh(x), small(x))


def test_shrink_never_changes_the_model():
    seeded()
    model = digits_mlp(hidden=(10, 10))
    prune_units(model, 0.4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    small = shrink(model)
    assert model.training and small.training  # the mode is kept on both
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        small.layers[0].weight.add_(1.0)  # no storage is shared
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_shrink_of_a_sequential_returns_a_sequential_of_the_same_layout():
    seeded()
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 9), nn.GELU(), nn.Dropout(0.1),
                          nn.Linear(9, 5), nn.Tanh(), nn.Linear(5, 2))
    with torch.no_grad():
        model[1].weight[[0, 4]] = 0.0
        model[1].bias[[0, 4]] = 0.0
        model[6].weight[:, 3] = 0.0   # unit 3 of the second hidden layer is never read
    small = shrink(model)
    assert [type(m) for m in small] == [type(m) for m in model]
    assert (small[1].out_features, small[4].out_features) == (7, 4)
    assert dead_units(model) == {"1": [0, 4], "4": [3]}
    assert count_parameters(small) == expected_count([6, 9, 5, 2], [2, 1])
    x = torch.randn(4, 2, 3)
    model.eval(), small.eval()
    assert torch.allclose(small(x), model(x), atol=1e-6)


def test_a_zero_row_with_a_live_bias_is_folded_into_the_next_bias():
    """relu(bias) of a unit with no weights is a constant the next layer reads: kept exactly."""
    seeded()
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        model[0].weight[1] = 0.0
        model[0].bias[1] = 0.7
    small = shrink(model)
    assert small[0].out_features == 2
    x = torch.randn(5, 4)
    assert torch.allclose(small(x), model(x), atol=1e-6)
    assert not torch.allclose(small[2].bias, model[2].bias[:])  # the constant moved there


def test_sigmoid_between_layers_folds_its_constant_too():
    seeded()
    model = nn.Sequential(nn.Linear(4, 3), nn.Sigmoid(), nn.Linear(3, 2))
    prune_units(model, 0.34)  # one unit; its output is sigmoid(0) = 0.5, not 0
    small = shrink(model)
    x = torch.randn(5, 4)
    assert small[0].out_features == 2
    assert torch.allclose(small(x), model(x), atol=1e-6)


def test_batchnorm_between_layers_is_cut_with_its_units():
    seeded()
    model = digits_mlp(hidden=(12, 8), batchnorm=True)
    model.train()
    for _ in range(3):  # running statistics that are not the defaults
        model(torch.randn(32, 64) * 2 + 1)
    prune_units(model, 0.5)
    small = shrink(model)
    assert [m.num_features for m in small.layers if isinstance(m, nn.BatchNorm1d)] == [6, 4]
    assert count_parameters(small) == expected_count([64, 12, 8, 10], [6, 4], batchnorm=True)
    model.eval(), small.eval()
    x = torch.randn(9, 64)
    assert torch.allclose(small(x), model(x), atol=1e-5)
    digits_mlp(hidden=(6, 4), batchnorm=True).load_state_dict(small.state_dict())


def test_shrink_reads_unit_gates_in_eval_mode():
    seeded()
    model = digits_mlp(hidden=(10, 10))
    for layer in model.linears()[:-1]:
        apply_learnable_mask(layer, gate="hard_concrete", structure="unit")
    with torch.no_grad():
        model.layers[0].parametrizations.weight[0].logits[:4] = -6.0  # four units closed
    model.train()  # training mode samples; shrink must read the deterministic gates
    small = shrink(model)
    assert small.linears()[0].out_features == 6 and model.training
    model.eval(), small.eval()
    x = torch.randn(3, 64)
    assert torch.allclose(small(x), model(x), atol=1e-5)


def test_binarized_unit_gates_shrink_to_the_units_left_open():
    seeded()
    model = digits_mlp(hidden=(8, 8))
    layer = model.linears()[1]
    apply_learnable_mask(layer, gate="sigmoid", structure="unit")
    with torch.no_grad():
        layer.parametrizations.weight[0].logits[[1, 2, 5]] = -1.0
    binarize(model)
    assert dead_units(model)["layers.2"] == [1, 2, 5]
    assert shrink(model).linears()[1].out_features == 5


def test_partial_rows_stay_as_zeros_and_nothing_is_removed():
    seeded()
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    apply_mask(model[0], torch.tensor([[1.0, 0, 0, 0]] * 4))
    small = shrink(model)
    assert dead_units(model) == {"0": []}
    assert small[0].weight.shape == (4, 4) and int((small[0].weight == 0).sum()) == 12


def test_the_output_layer_keeps_its_units():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 3))
    with torch.no_grad():
        model[2].weight[1] = 0.0
    assert shrink(model)[2].out_features == 3


# ---------------------------------------------------------------- what shrink refuses
class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))

    def forward(self, x):
        return x + self.inner(x)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, x):
        return x + self.linear(x)


class DigitsWithSkip(DigitsMLP):
    def forward(self, x):
        return self.layers(x) + x[:, :10]


@pytest.mark.parametrize("make, words", [
    (Residual, "residual connection"),
    (lambda: nn.Sequential(nn.Linear(4, 4), Block(), nn.Linear(4, 2)), "forward of its own"),
    (lambda: nn.Sequential(nn.Linear(4, 4), nn.Softmax(dim=1), nn.Linear(4, 2)),
     "does not know"),
    (lambda: nn.Sequential(nn.Linear(4, 4), nn.PReLU(4), nn.Linear(4, 2)), "single slope"),
    (lambda: DigitsWithSkip(hidden=(4,)), "overrides DigitsMLP.forward"),
])
def test_models_shrink_cannot_cut_get_a_type_error(make, words, left_alone):
    model = make()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.weight[0] = 0.0
    with left_alone(model), pytest.raises(TypeError, match=words):
        shrink(model)


def test_a_unit_removed_in_one_layer_only_is_explained(left_alone):
    """Zero weights, a live bias, and a next layer with no bias to take the constant."""
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2, bias=False))
    apply_mask(model[0], torch.tensor([[1.0] * 4, [0.0] * 4, [1.0] * 4]))
    with torch.no_grad():
        model[0].bias.fill_(0.5)
    with left_alone(model), pytest.raises(ValueError, match="removed in that layer only"):
        shrink(model)
    with left_alone(model), pytest.raises(ValueError, match="unit 1 of layer '0'"):
        dead_units(model)


def test_a_layer_with_every_unit_dead_is_refused(left_alone):
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    apply_mask(model[0], torch.zeros(3, 4))
    apply_mask(model[0], torch.zeros(3), name="bias")
    with left_alone(model), pytest.raises(ValueError, match="every unit"):
        shrink(model)


@pytest.mark.parametrize("bad, error, words", [
    ("model", TypeError, "torch.nn.Module"),
    (nn.Sequential(nn.ReLU()), ValueError, "no nn.Linear"),
    (nn.Sequential(nn.Linear(4, 3), nn.Linear(5, 2)), ValueError, "takes 5 features"),
])
def test_bad_models_get_clear_errors(bad, error, words):
    with pytest.raises(error, match=words):
        shrink(bad)


# ---------------------------------------------------------------- prune_units
def test_prune_units_removes_the_smallest_rows_with_their_biases():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[3.0, 0, 0], [0.1, 0, 0], [2.0, 0, 0],
                                            [0.0, 0.2, 0]]))
    keep = prune_units(model, 0.5)
    assert keep["0"].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert (model[0].weight[[1, 3]] == 0).all() and (model[0].bias[[1, 3]] == 0).all()
    assert "2" not in keep  # the output layer keeps its units


def test_prune_units_masks_hold_during_training():
    seeded()
    model = digits_mlp(hidden=(8, 8))
    prune_units(model, 0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    for _ in range(3):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(torch.randn(16, 64)),
                                    torch.randint(0, 10, (16,))).backward()
        optimizer.step()
    assert [len(v) for v in dead_units(model).values()] == [4, 4]


@pytest.mark.parametrize("sparsity, error", [
    (1.0, ValueError), (-0.1, ValueError), ("half", TypeError), (True, TypeError),
    (0.99, ValueError),
])
def test_prune_units_rejects_bad_sparsity_and_leaves_the_model_alone(sparsity, error,
                                                                     left_alone):
    model = digits_mlp(hidden=(4, 4))
    with left_alone(model), pytest.raises(error, match="sparsity"):
        prune_units(model, sparsity)


def test_prune_units_needs_a_hidden_layer(left_alone):
    model = nn.Sequential(nn.Linear(4, 2))
    with left_alone(model), pytest.raises(ValueError, match="no hidden unit"):
        prune_units(model, 0.5)


def test_prune_units_refuses_a_residual_model(left_alone):
    model = Residual()
    with left_alone(model), pytest.raises(TypeError, match="residual"):
        prune_units(model, 0.5)


def test_deepcopy_of_a_unit_pruned_model_shrinks_alike():
    seeded()
    model = digits_mlp(hidden=(6, 6))
    prune_units(model, 0.5)
    clone = copy.deepcopy(model)
    x = torch.randn(2, 64)
    assert torch.equal(shrink(clone)(x), shrink(model)(x))


def test_prune_units_can_rank_by_given_scores(left_alone):
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(),
                          nn.Linear(4, 2))
    scores = {"0": torch.tensor([4.0, 3.0, 2.0, 1.0]), "2": torch.tensor([0.0, 9.0, 1.0, 2.0])}
    keep = prune_units(model, 0.5, scores=scores)
    assert keep["0"].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert keep["2"].tolist() == [0.0, 1.0, 0.0, 1.0]
    fresh = digits_mlp(hidden=(4, 4))
    wrong_length = {"layers.0": torch.ones(3), "layers.2": torch.ones(4)}
    for bad in ({"layers.0": torch.ones(4)}, wrong_length, [torch.ones(4)]):
        with left_alone(fresh), pytest.raises(ValueError, match="scores"):
            prune_units(fresh, 0.5, scores=bad)
