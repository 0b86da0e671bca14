"""Gradual magnitude pruning: the baseline a learned mask has to beat.

Zhu & Gupta (2017, "To prune, or not to prune") raise the sparsity of a model while it
trains, along the cubic schedule

    s_t = s_f * (1 - (1 - t / T) ** 3),   t = 0, 1, ..., T,

from 0 at ``t = 0`` to the final sparsity ``s_f`` at ``t = T``: fast at first, when many
weights are redundant, and slowly near the end, so the network can recover between
steps. Each step removes the smallest *effective* weights (the masked values), and a
weight once removed stays removed. After ``T`` the mask is fixed and training goes on.

``torch.ao.pruning.scheduler.CubicSL`` computes the same level for PyTorch's own
sparsifiers: with ``init_sl=0, init_t=0, delta_t=1, total_t=T`` its
``sparsity_compute_fn`` equals :func:`cubic_sparsity` (tests/test_pruning.py holds the
two against each other).

>>> import torch
>>> from torch import nn
>>> from maskutils import digits_loaders, get_mask, gradual_magnitude_prune, sparsity
>>> train, test = digits_loaders(batch_size=256)
>>> _ = torch.manual_seed(0)
>>> model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
>>> model = gradual_magnitude_prune(model, train, 0.9, epochs=3, progress=False)
>>> round(sparsity(model), 3)
0.9
>>> int((get_mask(model[0]) == 0).sum()) + int((get_mask(model[2]) == 0).sum())
2131
"""
from __future__ import annotations

import math
import numbers

import torch
from torch import nn

from .apply import _unregister_last, apply_mask, get_mask
from .train import check_loader, fit

#: The layers whose ``weight`` gradual_magnitude_prune masks (biases are never masked).
PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

SCOPES = ("global", "layer")

__all__ = ["PRUNABLE", "SCOPES", "cubic_sparsity", "gradual_magnitude_prune"]


def cubic_sparsity(t: int, total: int, final: float) -> float:
    """The sparsity of Zhu & Gupta's cubic schedule at step ``t`` of ``total``.

    ``final * (1 - (1 - t / total) ** 3)``, clamped to ``[0, final]`` (0 before the first
    step, ``final`` from step ``total`` on); ``total == 0`` means "at once": ``final``.

    >>> [round(cubic_sparsity(t, 4, 0.8), 4) for t in range(6)]
    [0.0, 0.4625, 0.7, 0.7875, 0.8, 0.8]
    """
    if total <= 0 or t >= total:
        return float(final)
    if t <= 0:
        return 0.0
    return float(final) * (1.0 - (1.0 - t / total) ** 3)


def _check_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{what} must be a non-negative int, got {value!r}")
    return int(value)


def _prunable_layers(model: nn.Module) -> list[nn.Module]:
    layers = [m for m in model.modules() if isinstance(m, PRUNABLE)]
    if not layers:
        raise ValueError(
            f"{type(model).__name__} has no nn.Linear or nn.Conv1d/2d/3d layer to prune")
    seen: dict[int, str] = {}
    for name, m in model.named_modules():
        if isinstance(m, PRUNABLE):
            w = _original(m)
            if id(w) in seen:
                raise ValueError(
                    f"layers {seen[id(w)]!r} and {name!r} share one weight (tied weights); "
                    "gradual_magnitude_prune needs each layer to own its weight")
            seen[id(w)] = name
    return layers


def _original(layer: nn.Module) -> torch.Tensor:
    """The stored weight tensor (the parametrization's original when there is one)."""
    parametrizations = getattr(layer, "parametrizations", None)
    if parametrizations is not None and "weight" in parametrizations:
        return parametrizations["weight"].original
    return layer.weight


def _scores(layer: nn.Module) -> torch.Tensor:
    """|effective weight|, flattened, with already removed entries ranked first (-1)."""
    with torch.no_grad():
        scores = layer.weight.detach().abs().flatten().clone()
        mask = get_mask(layer)
        if mask is not None:
            scores[mask.flatten() == 0] = -1.0
    return scores


def _removal(scores: torch.Tensor, k: int) -> torch.Tensor:
    """A flat 0/1 keep-mask with the ``k`` lowest scores removed (ties by position)."""
    keep = torch.ones_like(scores)
    k = max(k, int((scores < 0).sum()))     # never bring a removed weight back
    keep[torch.argsort(scores, stable=True)[:k]] = 0
    return keep


def _prune_to(layers: list[nn.Module], level: float, scope: str) -> None:
    """Intersect each layer's mask with a magnitude mask removing ``level`` of the weights."""
    scores = [_scores(layer) for layer in layers]
    if scope == "layer":
        keeps = [_removal(s, round(level * s.numel())) for s in scores]
    else:  # one ranking (one threshold) over every layer's weights
        flat = torch.cat([s.to(scores[0].device) for s in scores])
        keep = _removal(flat, round(level * flat.numel()))
        keeps = list(keep.split([s.numel() for s in scores]))
    for layer, keep in zip(layers, keeps):
        weight = layer.weight
        apply_mask(layer, keep.to(weight.device).view(weight.shape))


def gradual_magnitude_prune(model: nn.Module, train_loader, sparsity: float, epochs: int = 30,
                            prune_epochs: int | None = None, scope: str = "global",
                            lr: float = 2e-3, optimizer: torch.optim.Optimizer | None = None,
                            progress: bool = True) -> nn.Module:
    """Train ``model`` while pruning it to ``sparsity`` along the cubic schedule; return it.

    - Which weights: the ``weight`` of every ``nn.Linear``, ``nn.Conv1d``, ``nn.Conv2d`` and
      ``nn.Conv3d`` in ``model`` (:data:`PRUNABLE`); biases and other layers stay dense.
      Masks are applied with :func:`maskutils.apply_mask`, so removed weights are exactly
      zero in every forward pass, whatever the optimizer does to the stored values.
    - Schedule: at the end of epoch ``t = 1 .. prune_epochs`` the mask is recomputed at
      sparsity ``cubic_sparsity(t, prune_epochs, sparsity)`` from the magnitudes of the
      *effective* (masked) weights; masks only grow, a removed weight never comes back.
      At ``prune_epochs`` the sparsity is exactly ``sparsity`` (``round(sparsity * n)``
      entries removed) and the mask stays fixed for the remaining epochs.
      ``prune_epochs`` defaults to the first two thirds of ``epochs`` (20 of 30);
      ``prune_epochs=0`` prunes at once before training (one-shot pruning + fine-tuning).
    - ``scope="global"``: one threshold over all those layers; ``"layer"``: every layer
      loses the same fraction.
    - Training: :func:`maskutils.fit` with cross-entropy, ``optimizer`` or by default
      ``Adam(model.parameters(), lr)``. Masks already on the model are kept (they count
      towards ``sparsity``).

    Bad input raises ``ValueError``/``TypeError`` before anything changes. A loader that fails
    on its first batch (inputs of the wrong width, say) leaves the model as it was too: the
    masks added for the first step are taken off again. An error after the first optimizer
    step leaves the model as trained until then. Example: the module docstring of
    ``maskutils.pruning``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real):
        raise TypeError(f"sparsity must be a number in [0, 1) (the fraction removed), "
                        f"got {sparsity!r}")
    sparsity = float(sparsity)
    if math.isnan(sparsity) or not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1) (the fraction of weights removed; 1 "
                         f"would remove every weight), got {sparsity}")
    epochs = _check_int(epochs, "epochs")
    if prune_epochs is None:
        prune_epochs = max(1, 2 * epochs // 3) if epochs else 0
    prune_epochs = _check_int(prune_epochs, "prune_epochs")
    if prune_epochs > epochs:
        raise ValueError(f"prune_epochs={prune_epochs} is more than epochs={epochs}; "
                         "pruning must end within training (use prune_epochs <= epochs)")
    if scope not in SCOPES:
        raise ValueError(f"scope must be 'global' (one threshold for all layers) or "
                         f"'layer' (the same fraction in every layer), got {scope!r}")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer or None, "
                        f"got {type(optimizer).__name__}")
    if optimizer is None and (isinstance(lr, bool) or not isinstance(lr, numbers.Real)
                              or not lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    layers = _prunable_layers(model)
    removed = [int((m == 0).sum()) for m in map(get_mask, layers) if m is not None]
    total = sum(layer.weight.numel() for layer in layers)
    if scope == "global" and sum(removed) > round(sparsity * total):
        raise ValueError(f"the model's masks already remove {sum(removed) / total:.2%} of the "
                         f"prunable weights, more than sparsity={sparsity}")
    if scope == "layer":
        for layer in layers:
            mask = get_mask(layer)
            if mask is not None and int((mask == 0).sum()) > round(sparsity * mask.numel()):
                raise ValueError(f"a {type(layer).__name__} is already masked beyond "
                                 f"sparsity={sparsity}")

    check_loader(train_loader)

    if optimizer is None:
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    undo = _undoable(model, layers)
    _prune_to(layers, cubic_sparsity(0, prune_epochs, sparsity), scope)

    def step(epoch: int, _model: nn.Module) -> None:
        if epoch <= prune_epochs:
            _prune_to(layers, cubic_sparsity(epoch, prune_epochs, sparsity), scope)

    trained = False

    def mark_trained(_step: int, _model: nn.Module) -> None:
        nonlocal trained
        trained = True

    try:
        fit(model, train_loader, epochs, optimizer=optimizer, on_epoch=step, on_step=mark_trained,
            progress=progress)
    except Exception:
        if not trained:  # failed before the first optimizer step (a batch of the wrong width)
            undo()
        raise
    return model


def _undoable(model: nn.Module, layers: list[nn.Module]):
    """Returns a function that puts ``model`` back as it is now: the masks added or changed
    since, the buffers (BatchNorm statistics, mask values) and every module's train/eval mode.
    For a failure before any weight was trained: nothing else has changed."""
    unmasked = [(layer, list(layer._parameters)) for layer in layers if get_mask(layer) is None]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    modes = [(m, m.training) for m in model.modules()]

    def undo() -> None:
        for layer, order in unmasked:
            if get_mask(layer) is not None:
                _unregister_last(layer, "weight")
                layer._parameters = {k: layer._parameters[k] for k in order
                                     if k in layer._parameters} | layer._parameters
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
        for module, training in modes:
            module.training = training
    return undo
