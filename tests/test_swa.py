"""Stochastic weight averaging of masked models (maskutils.swa)."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.optim.swa_utils import AveragedModel

from maskutils import (apply_mask, digits_mlp, evaluate, get_mask, magnitude_mask, mask_layers,
                       random_mask, seed_everything, sparsity)
from maskutils.learnable import apply_learnable_mask, binarize, learnable_mask_layers
from maskutils.swa import (check_fixed_masks, fit_swa, has_batchnorm,
                           learnable_parametrizations)

HISTORY_KEYS = {"epoch", "train_loss", "test_acc", "lr", "test_loss", "swa_test_acc",
                "swa_test_loss"}


def tiny_data(n_batches=3, batch=16, seed=0):
    """A few batches of a 10-class problem on 64 features: a list works as a loader."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 64, generator=g), torch.randint(0, 10, (batch,), generator=g))
            for _ in range(n_batches)]


def tiny_model(batchnorm=False, sparsity_=0.7, seed=0):
    seed_everything(seed)
    model = digits_mlp(hidden=(16, 16), batchnorm=batchnorm)
    mask_layers(model, sparsity_, how="random", generator=torch.Generator().manual_seed(seed))
    return model


def masked_entries_are_zero(model: nn.Module) -> bool:
    for layer in model.modules():
        if isinstance(layer, nn.Linear) and get_mask(layer) is not None:
            if not torch.equal(layer.weight[get_mask(layer) == 0],
                               torch.zeros_like(layer.weight[get_mask(layer) == 0])):
                return False
    return True


# ---------------------------------------------------------------- fixed masks survive averaging

@pytest.mark.parametrize("batchnorm", [False, True])
def test_fixed_mask_sparsity_is_preserved_exactly(batchnorm):
    data = tiny_data()
    model = tiny_model(batchnorm=batchnorm)
    masks_before = [get_mask(layer).clone() for layer in model.linears()]
    swa_model, _ = fit_swa(model, data, epochs=5, swa_start=2, swa_lr=0.1, lr=0.1,
                           test_loader=data, progress=False)
    averaged = swa_model.module
    assert sparsity(averaged) == sparsity(model)
    assert masked_entries_are_zero(averaged)
    for layer, mask in zip(averaged.linears(), masks_before):
        assert torch.equal(get_mask(layer), mask), "masks are copied, not averaged"
        original = layer.parametrizations.weight.original
        assert (original[mask == 0] != 0).any(), "the dense originals were averaged"


def test_update_bn_recomputes_statistics_and_keeps_the_mask():
    data = tiny_data(n_batches=4)
    model = tiny_model(batchnorm=True)
    assert has_batchnorm(model)
    swa_model, _ = fit_swa(model, data, epochs=4, swa_start=1, swa_lr=0.2, lr=0.2,
                           progress=False)
    ours = swa_model.module.layers[1]
    theirs = model.layers[1]
    assert isinstance(ours, nn.BatchNorm1d)
    assert not torch.allclose(ours.running_var, theirs.running_var), \
        "update_bn recomputed the averaged model's statistics"
    # The statistics are those of the averaged network's own activations.
    with torch.no_grad():
        first = swa_model.module.layers[0]
        acts = torch.cat([first(x) for x, _ in data])
    torch.testing.assert_close(ours.running_mean, acts.mean(0), rtol=1e-4, atol=1e-5)
    assert masked_entries_are_zero(swa_model.module)
    assert sparsity(swa_model.module) == sparsity(model)


@settings(max_examples=10, deadline=None)
@given(level=st.floats(0.0, 0.95), seed=st.integers(0, 1000))
def test_masked_weights_stay_exactly_zero_at_any_sparsity(level, seed):
    data = tiny_data(n_batches=2, seed=seed)
    model = tiny_model(sparsity_=level, seed=seed)
    swa_model, _ = fit_swa(model, data, epochs=3, swa_start=1, swa_lr=0.3, lr=0.3,
                           progress=False)
    assert masked_entries_are_zero(swa_model.module)
    assert sparsity(swa_model.module) == sparsity(model)


def test_the_average_is_the_mean_of_the_snapshots_in_the_window():
    data = tiny_data()
    model = tiny_model()
    snapshots = []

    def keep(epoch, m):
        snapshots.append(m.layers[0].parametrizations.weight.original.detach().clone())

    swa_model, history = fit_swa(model, data, epochs=6, swa_start=3, swa_lr=0.1, lr=0.1,
                                 progress=False, on_epoch=keep)
    assert len(snapshots) == 6 and int(swa_model.n_averaged) == 4
    expected = torch.stack(snapshots[2:]).mean(0)      # epochs 3, 4, 5, 6
    got = swa_model.module.layers[0].parametrizations.weight.original
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------- masks that change in the window

def prune_more(levels):
    """on_epoch callback: tighten each layer's mask to the next sparsity of ``levels``."""
    def step(epoch, model):
        for layer in model.linears():
            apply_mask(layer, magnitude_mask(layer.weight.detach(), levels[epoch - 1]))
    return step


def test_use_buffers_false_keeps_the_latest_mask_when_it_changes():
    data = tiny_data()
    model = tiny_model(sparsity_=0.0)
    levels = [0.2, 0.4, 0.6, 0.8]
    swa_model, _ = fit_swa(model, data, epochs=4, swa_start=1, swa_lr=0.1, lr=0.1,
                           progress=False, on_epoch=prune_more(levels))
    for ours, theirs in zip(swa_model.module.linears(), model.linears()):
        mask = get_mask(ours)
        assert torch.equal(mask, get_mask(theirs)), "the latest mask, copied"
        assert set(mask.unique().tolist()) <= {0.0, 1.0}, "still binary"
        assert float((mask == 0).float().mean()) == pytest.approx(0.8, abs=0.01)
    assert masked_entries_are_zero(swa_model.module)


def test_use_buffers_true_averages_a_changing_mask_into_fractions():
    """The pitfall fit_swa avoids: AveragedModel(use_buffers=True) averages the masks."""
    model = tiny_model(sparsity_=0.0)
    averaged = AveragedModel(model, use_buffers=True)
    for level in (0.25, 0.5, 0.75):
        for layer in model.linears():
            apply_mask(layer, magnitude_mask(layer.weight.detach(), level))
        averaged.update_parameters(model)
    mask = get_mask(averaged.module.layers[0])
    torch.testing.assert_close(torch.unique(mask), torch.tensor([0.0, 1 / 3, 2 / 3, 1.0]))
    latest = get_mask(model.layers[0])
    leaked = averaged.module.layers[0].weight[latest == 0]
    assert (leaked != 0).any(), "weights the latest mask removed are back, scaled"


def test_use_buffers_true_with_a_constant_mask_stays_binary():
    model = tiny_model(sparsity_=0.6)
    averaged = AveragedModel(model, use_buffers=True)
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        averaged.update_parameters(model)
    for ours, theirs in zip(averaged.module.linears(), model.linears()):
        assert torch.equal(get_mask(ours), get_mask(theirs))


# ------------------------------------------------------------------------ learnable gates

def test_refuses_learnable_gates_says_binarize_and_leaves_the_model(left_alone):
    data = tiny_data()
    model = digits_mlp(hidden=(16, 16))
    learnable_mask_layers(model)
    with left_alone(model), pytest.raises(ValueError, match="[Bb]inarize first") as err:
        fit_swa(model, data, epochs=3, swa_start=1, swa_lr=0.1, progress=False)
    assert "layers.0.weight" in str(err.value)
    with left_alone(model), pytest.raises(ValueError, match="binarize"):
        check_fixed_masks(model)
    binarize(model)
    check_fixed_masks(model)
    swa_model, _ = fit_swa(model, data, epochs=2, swa_start=1, swa_lr=0.1, progress=False)
    assert sparsity(swa_model.module) == sparsity(model)


def test_learnable_parametrizations_names_only_the_gated_tensors():
    model = digits_mlp(hidden=(16, 16))
    mask_layers(model, 0.5)
    assert learnable_parametrizations(model) == []
    apply_learnable_mask(model.layers[2])
    assert learnable_parametrizations(model) == ["layers.2.weight"]


def test_a_gate_on_a_masked_layer_is_still_refused(left_alone):
    model = tiny_model()
    apply_learnable_mask(model.layers[0])
    with left_alone(model), pytest.raises(ValueError, match="layers.0.weight"):
        fit_swa(model, tiny_data(), epochs=2, swa_start=1, swa_lr=0.1, progress=False)


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("kwargs, match", [
    ({"epochs": 3, "swa_start": 4}, "swa_start .*after the last epoch"),
    ({"epochs": 0}, "epochs must be a positive int"),
    ({"epochs": 2.5}, "epochs must be a positive int"),
    ({"swa_start": 0}, "swa_start must be a positive int"),
    ({"swa_lr": 0.0}, "swa_lr must be a positive number"),
    ({"swa_lr": -0.01}, "swa_lr must be a positive number"),
    ({"swa_lr": math.nan}, "swa_lr must be a positive number"),
    ({"swa_lr": True}, "swa_lr must be a positive number"),
    ({"swa_lr": "0.01"}, "swa_lr must be a positive number"),
    ({"anneal_epochs": 0}, "anneal_epochs must be a positive int"),
    ({"lr": 0.0}, "lr must be a positive number"),
])
def test_bad_numbers_are_refused_clearly(kwargs, match, left_alone):
    model = tiny_model()
    args = {"epochs": 3, "swa_start": 1, "swa_lr": 0.1, "progress": False, **kwargs}
    with left_alone(model), pytest.raises(ValueError, match=match):
        fit_swa(model, tiny_data(), **args)


def test_non_module_and_wrong_types_are_refused(left_alone):
    with pytest.raises(TypeError, match="torch.nn.Module"):
        fit_swa({"weight": torch.ones(2)}, tiny_data(), 3, 1, 0.1)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        check_fixed_masks("model")
    with pytest.raises(TypeError, match="torch.nn.Module"):
        has_batchnorm(None)
    model = tiny_model()
    with left_alone(model), pytest.raises(TypeError, match="optimizer must be"):
        fit_swa(model, tiny_data(), 3, 1, 0.1, optimizer="sgd", progress=False)
    with left_alone(model), pytest.raises(TypeError, match="on_epoch must be"):
        fit_swa(model, tiny_data(), 3, 1, 0.1, on_epoch=1, progress=False)
    with left_alone(model), pytest.raises(TypeError, match="train_loader must be an iterable"):
        fit_swa(model, None, 3, 1, 0.1, progress=False)
    with left_alone(model), pytest.raises(ValueError, match="train_loader is empty"):
        fit_swa(model, [], 3, 1, 0.1, progress=False)
    with left_alone(model), pytest.raises(TypeError, match="test_loader must be an iterable"):
        fit_swa(model, tiny_data(), 3, 1, 0.1, test_loader=0, progress=False)


def test_an_optimizer_of_another_model_is_refused(left_alone):
    model = tiny_model()
    other = copy.deepcopy(model)
    optimizer = torch.optim.SGD(other.parameters(), lr=0.1)
    with left_alone(model), pytest.raises(ValueError, match="not hold any parameter"):
        fit_swa(model, tiny_data(), 3, 1, 0.1, optimizer=optimizer, progress=False)


# ------------------------------------------------------------------------------- history

def test_history_keys_lengths_and_nan_before_the_window():
    data = tiny_data()
    model = tiny_model()
    swa_model, history = fit_swa(model, data, epochs=5, swa_start=3, swa_lr=0.02, lr=0.1,
                                 test_loader=data, progress=False)
    assert set(history) == HISTORY_KEYS
    assert all(len(v) == 5 for v in history.values())
    assert history["epoch"] == [1, 2, 3, 4, 5]
    assert all(math.isnan(v) for v in history["swa_test_acc"][:2] + history["swa_test_loss"][:2])
    assert all(0.0 <= v <= 1.0 for v in history["swa_test_acc"][2:])
    assert all(v > 0 for v in history["swa_test_loss"][2:] + history["test_loss"])
    # lr is the rate used during each epoch: base until the first SWALR step, then swa_lr
    assert history["lr"][:3] == [0.1, 0.1, 0.1]
    assert history["lr"][3:] == pytest.approx([0.02, 0.02])
    assert int(swa_model.n_averaged) == 3


def test_history_without_a_test_loader():
    _, history = fit_swa(tiny_model(), tiny_data(), epochs=3, swa_start=3, swa_lr=0.1,
                         progress=False)
    assert set(history) == {"epoch", "train_loss", "lr"}
    assert all(len(v) == 3 for v in history.values())


def test_anneal_epochs_spreads_the_change_over_epochs():
    model = tiny_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    _, history = fit_swa(model, tiny_data(), epochs=8, swa_start=2, swa_lr=1e-2,
                         optimizer=optimizer, anneal_epochs=4, progress=False)
    lr = history["lr"]
    assert lr[:2] == [1e-3, 1e-3]
    assert all(a < b for a, b in zip(lr[1:6], lr[2:6])), "rising over 4 epochs"
    assert lr[6:] == pytest.approx([1e-2, 1e-2]), "swa_lr replaces the base rate"


def test_the_swa_model_lives_where_the_model_lives():
    model = tiny_model()
    swa_model, _ = fit_swa(model, tiny_data(), epochs=2, swa_start=1, swa_lr=0.1,
                           progress=False)
    ref = next(model.parameters())
    assert all(p.device == ref.device for p in swa_model.parameters())
    assert all(get_mask(layer).device == ref.device for layer in swa_model.module.linears())


def test_random_masks_too():
    model = digits_mlp(hidden=(16, 16))
    for layer in model.linears():
        apply_mask(layer, random_mask(layer.weight, 0.5,
                                      generator=torch.Generator().manual_seed(1)))
    swa_model, _ = fit_swa(model, tiny_data(), epochs=2, swa_start=1, swa_lr=0.1,
                           progress=False)
    assert masked_entries_are_zero(swa_model.module)


# --------------------------------------------------------------------- validation history

def test_val_loader_records_iterate_and_average_for_choosing_settings():
    data, val = tiny_data(), tiny_data(n_batches=2, seed=1)
    model = tiny_model()
    swa_model, history = fit_swa(model, data, epochs=5, swa_start=3, swa_lr=0.1, lr=0.1,
                                 val_loader=val, test_loader=data, progress=False)
    assert set(history) == HISTORY_KEYS | {"val_acc", "swa_val_acc"}
    assert all(len(v) == 5 for v in history.values())
    assert all(math.isnan(v) for v in history["swa_val_acc"][:2])
    assert history["val_acc"][-1] == evaluate(model, val)
    assert history["swa_val_acc"][-1] == evaluate(swa_model, val)
    assert history["swa_test_acc"][-1] == evaluate(swa_model, data)


def test_val_loader_alone_gives_no_test_keys():
    _, history = fit_swa(tiny_model(), tiny_data(), epochs=3, swa_start=2, swa_lr=0.1,
                         val_loader=tiny_data(seed=2), progress=False)
    assert set(history) == {"epoch", "train_loss", "lr", "val_acc", "swa_val_acc"}
    assert math.isnan(history["swa_val_acc"][0])
    assert all(0.0 <= v <= 1.0 for v in history["swa_val_acc"][1:])


def test_val_accuracy_of_a_batchnorm_average_uses_recomputed_statistics(monkeypatch):
    import maskutils.swa as swa
    data, val = tiny_data(n_batches=4), tiny_data(n_batches=2, seed=3)
    model = tiny_model(batchnorm=True)
    seen = []

    def spy(net, loader):
        if loader is val and isinstance(net, AveragedModel):
            with torch.no_grad():       # the statistics the average is evaluated with
                acts = torch.cat([net.module.layers[0](x) for x, _ in data])
            seen.append(torch.allclose(net.module.layers[1].running_mean, acts.mean(0),
                                       rtol=1e-4, atol=1e-5))
        return evaluate(net, loader)

    monkeypatch.setattr(swa, "evaluate", spy)
    _, history = fit_swa(model, data, epochs=4, swa_start=2, swa_lr=0.2, lr=0.2,
                         val_loader=val, progress=False)
    assert seen == [True, True, True], "update_bn before every validation of the average"
    assert len(history["swa_val_acc"]) == 4
