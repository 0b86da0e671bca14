"""Gradual magnitude pruning: schedule, exact sparsity, optimizers, bad input."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import maskutils.pruning as pruning
from maskutils import apply_mask, get_mask, gradual_magnitude_prune, masked_parameters, sparsity
from maskutils.pruning import cubic_sparsity


def _data(n=96, seed=0, batch=32):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 12, generator=gen)
    y = (x[:, :4].argmax(dim=1))
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)]


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 9), nn.ReLU(),
                         nn.Linear(9, 4))


def _layers(model):
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def _removed(model):
    return [int((get_mask(layer) == 0).sum()) for layer in _layers(model)]


# --- the schedule ---------------------------------------------------------------------------

def test_cubic_schedule_endpoints_and_shape():
    assert cubic_sparsity(0, 20, 0.95) == 0.0
    assert cubic_sparsity(20, 20, 0.95) == 0.95
    assert cubic_sparsity(25, 20, 0.95) == 0.95
    assert cubic_sparsity(0, 0, 0.95) == 0.95          # no pruning epochs: at once
    levels = [cubic_sparsity(t, 20, 0.95) for t in range(21)]
    steps = [b - a for a, b in zip(levels, levels[1:])]
    assert all(s > 0 for s in steps)
    assert all(a > b for a, b in zip(steps, steps[1:])), "fast first, slow at the end"
    assert levels[10] == pytest.approx(0.95 * (1 - 0.5 ** 3))


@pytest.mark.parametrize("final, total", [(0.95, 20), (0.5, 7), (0.99, 3), (0.0, 5)])
def test_cubic_schedule_equals_torch_ao_cubicsl(final, total):
    """torch.ao.pruning's CubicSL, stepped once per epoch, gives the same level every epoch."""
    cubic = pytest.importorskip("torch.ao.pruning.scheduler.cubic_scheduler")
    from torch.ao.pruning import WeightNormSparsifier

    model = nn.Sequential(nn.Linear(8, 8))
    sparsifier = WeightNormSparsifier(sparsity_level=final, sparse_block_shape=(1, 1),
                                      zeros_per_block=1)
    sparsifier.prepare(model, config=[{"tensor_fqn": "0.weight"}])
    scheduler = cubic.CubicSL(sparsifier, init_sl=0.0, init_t=0, delta_t=1, total_t=total)
    for t in range(total + 4):
        assert scheduler.last_epoch == t
        assert scheduler.get_last_sl()[0] == pytest.approx(cubic_sparsity(t, total, final),
                                                           abs=1e-12)
        assert cubic.CubicSL.sparsity_compute_fn(0.0, final, t, 0, 1, total) == pytest.approx(
            cubic_sparsity(t, total, final), abs=1e-12)
        sparsifier.step()
        scheduler.step()


def test_masks_follow_the_schedule_epoch_by_epoch(monkeypatch):
    """After epoch t the mask removes round(s_t * n) weights, and never fewer than before."""
    seen = []
    real_fit = pruning.fit

    def recording_fit(model, loader, epochs, on_epoch, **kwargs):
        def record(epoch, m):
            on_epoch(epoch, m)
            seen.append(sum(_removed(m)))
        return real_fit(model, loader, epochs, on_epoch=record, **kwargs)

    monkeypatch.setattr(pruning, "fit", recording_fit)
    model = _model()
    n = sum(layer.weight.numel() for layer in _layers(model))
    gradual_magnitude_prune(model, _data(), 0.8, epochs=9, prune_epochs=6, progress=False)
    expected = [round(cubic_sparsity(t, 6, 0.8) * n) for t in range(1, 10)]
    assert seen == expected
    assert seen[5:] == [seen[5]] * 4, "fixed after prune_epochs"


# --- exact final sparsity -------------------------------------------------------------------

@pytest.mark.parametrize("target", [0.0, 0.3, 0.9, 0.95, 0.999])
def test_global_scope_ends_at_exactly_the_target(target):
    model = gradual_magnitude_prune(_model(), _data(), target, epochs=4, progress=False)
    n = sum(layer.weight.numel() for layer in _layers(model))
    assert sum(_removed(model)) == round(target * n)
    assert sparsity(model) == round(target * n) / n
    assert len(masked_parameters(model)) == 3


def test_global_scope_uses_one_threshold_over_all_layers():
    model = gradual_magnitude_prune(_model(), _data(), 0.7, epochs=3, prune_epochs=0,
                                    progress=False)
    # prune_epochs=0 prunes the starting weights at once; then the mask stays fixed
    start = _model()
    kept_min = min(float(layer.weight.detach().abs()[get_mask(p) == 1].min())
                   for layer, p in zip(_layers(start), _layers(model)))
    dropped_max = max(float(layer.weight.detach().abs()[get_mask(p) == 0].max())
                      for layer, p in zip(_layers(start), _layers(model)))
    assert dropped_max <= kept_min
    fractions = [r / layer.weight.numel() for r, layer in zip(_removed(model), _layers(model))]
    assert max(fractions) - min(fractions) > 0.05, "global: layers lose different fractions"


@pytest.mark.parametrize("target", [0.25, 0.9, 0.97])
def test_layer_scope_ends_at_exactly_the_target_in_every_layer(target):
    model = gradual_magnitude_prune(_model(), _data(), target, epochs=4, scope="layer",
                                    progress=False)
    for layer, removed in zip(_layers(model), _removed(model)):
        assert removed == round(target * layer.weight.numel())
        assert int((layer.weight == 0).sum()) == removed


def test_convolutions_are_pruned_too():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    x = torch.randn(12, 1, 6, 6)
    data = [(x, torch.arange(12) % 3)]
    gradual_magnitude_prune(model, data, 0.5, epochs=2, scope="layer", progress=False)
    assert int((get_mask(model[0]) == 0).sum()) == round(0.5 * 36)
    assert int((get_mask(model[3]) == 0).sum()) == round(0.5 * 192)


def test_existing_masks_are_kept_and_count():
    model = _model()
    first = _layers(model)[0]
    prior = torch.ones_like(first.weight)
    prior[:, :3] = 0                       # 48 weights removed before pruning
    apply_mask(first, prior)
    gradual_magnitude_prune(model, _data(), 0.6, epochs=3, progress=False)
    assert (get_mask(first)[:, :3] == 0).all()
    n = sum(layer.weight.numel() for layer in _layers(model))
    assert sum(_removed(model)) == round(0.6 * n)


def test_removed_weights_never_come_back(monkeypatch):
    model = _model()
    history = []
    real_fit = pruning.fit

    def fit_with_snapshots(model, loader, epochs, on_epoch, **kwargs):
        def both(epoch, m):
            on_epoch(epoch, m)
            history.append([get_mask(layer).clone() for layer in _layers(m)])
        return real_fit(model, loader, epochs, on_epoch=both, **kwargs)

    monkeypatch.setattr(pruning, "fit", fit_with_snapshots)
    gradual_magnitude_prune(model, _data(), 0.9, epochs=8, progress=False)
    assert len(history) == 8
    for before, after in zip(history, history[1:]):
        for a, b in zip(before, after):
            assert ((a == 0) <= (b == 0)).all(), "a removed weight came back"


# --- every optimizer keeps the removed weights at zero --------------------------------------

OPTIMIZERS = {
    "sgd momentum": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "adamw weight decay": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
}


@pytest.mark.parametrize("make", OPTIMIZERS.values(), ids=OPTIMIZERS.keys())
@pytest.mark.parametrize("scope", ["global", "layer"])
def test_masked_weights_are_exactly_zero_under_every_optimizer(make, scope):
    model = _model()
    optimizer = make(model.parameters())
    gradual_magnitude_prune(model, _data(), 0.85, epochs=6, prune_epochs=3, scope=scope,
                            optimizer=optimizer, progress=False)
    for layer in _layers(model):
        mask = get_mask(layer)
        assert (layer.weight[mask == 0] == 0).all()
        assert (layer.weight[mask == 1] != 0).all()
    for x, y in _data() * 3:                    # and after more steps of that optimizer
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    for layer in _layers(model):
        assert (layer.weight[get_mask(layer) == 0] == 0).all()


def test_default_optimizer_is_adam_at_lr_and_it_trains():
    data = _data()
    default = gradual_magnitude_prune(_model(), data, 0.5, epochs=5, lr=5e-3, progress=False)
    explicit = _model()
    gradual_magnitude_prune(explicit, data, 0.5, epochs=5, progress=False,
                            optimizer=torch.optim.Adam(explicit.parameters(), lr=5e-3))
    for a, b in zip(default.state_dict().values(), explicit.state_dict().values()):
        assert torch.equal(a, b)
    with torch.no_grad():
        losses = [sum(float(nn.functional.cross_entropy(m(x), y)) for x, y in data)
                  for m in (default, _model())]
    assert losses[0] < losses[1]


def test_returns_the_same_model():
    model = _model()
    assert gradual_magnitude_prune(model, _data(), 0.5, epochs=1, progress=False) is model


# --- bad input: a clear error and the model left alone --------------------------------------

@pytest.mark.parametrize("kwargs, error, match", [
    ({"sparsity": 1.0}, ValueError, r"sparsity must be in \[0, 1\)"),
    ({"sparsity": -0.1}, ValueError, r"sparsity must be in \[0, 1\)"),
    ({"sparsity": float("nan")}, ValueError, r"sparsity must be in \[0, 1\)"),
    ({"sparsity": "0.9"}, TypeError, "sparsity must be a number"),
    ({"sparsity": True}, TypeError, "sparsity must be a number"),
    ({"sparsity": 0.9, "prune_epochs": 5, "epochs": 4}, ValueError,
     "prune_epochs=5 is more than epochs=4"),
    ({"sparsity": 0.9, "prune_epochs": -1}, ValueError, "prune_epochs must be"),
    ({"sparsity": 0.9, "epochs": 2.5}, ValueError, "epochs must be a non-negative int"),
    ({"sparsity": 0.9, "scope": "local"}, ValueError, "scope must be 'global'"),
    ({"sparsity": 0.9, "optimizer": "adam"}, TypeError, "optimizer must be"),
    ({"sparsity": 0.9, "lr": 0}, ValueError, "lr must be a positive number"),
])
def test_bad_input_is_refused_and_the_model_left_alone(left_alone, kwargs, error, match):
    model = _model()
    with left_alone(model), pytest.raises(error, match=match):
        gradual_magnitude_prune(model, _data(), **kwargs)


def test_non_module_is_refused(left_alone):
    layer = nn.Linear(12, 4)
    with left_alone(layer), pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        gradual_magnitude_prune([layer], _data(), 0.5)


def test_model_without_prunable_layers_is_refused(left_alone):
    model = nn.Sequential(nn.Embedding(4, 3))
    with left_alone(model), pytest.raises(ValueError, match="no nn.Linear or nn.Conv"):
        gradual_magnitude_prune(model, _data(), 0.5)


def test_tied_weights_are_refused(left_alone):
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    model[1].weight = model[0].weight
    with left_alone(model), pytest.raises(ValueError, match="tied weights"):
        gradual_magnitude_prune(model, _data(), 0.5)


def test_existing_masks_beyond_the_target_are_refused(left_alone):
    model = _model()
    apply_mask(_layers(model)[0], torch.zeros(16, 12))
    with left_alone(model), pytest.raises(ValueError, match="already"):
        gradual_magnitude_prune(model, _data(), 0.1, scope="layer")
    with left_alone(model), pytest.raises(ValueError, match="already remove"):
        gradual_magnitude_prune(model, _data(), 0.1)
