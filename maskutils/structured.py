"""Structured pruning: remove whole hidden units, and build the smaller model that results.

A mask of single weights leaves every matrix its full size. Removing a *hidden unit* of an
MLP removes a row of one ``Linear`` (and its bias entry) and the matching column of the next
``Linear``: both matrices get smaller, and the smaller dense model is faster everywhere.

- ``prune_units(model, sparsity)`` masks the rows (and bias entries) of the hidden units
  with the smallest row norm, in every hidden ``Linear`` (all but the last).
- ``dead_units(model)`` lists the hidden units that carry nothing: an all-zero weight row
  (the unit then outputs a constant), or an all-zero column in the next layer (nobody reads
  it).
- ``shrink(model)`` returns a new, plain model (no parametrizations) without those units.
  A unit with an all-zero row but a non-zero bias sends a constant to the next layer;
  ``shrink`` adds that constant to the next layer's bias, so in eval mode the outputs are
  the same up to float rounding.

Learned unit gates are ``apply_learnable_mask(layer, structure="unit")`` (maskutils.learnable).

>>> import torch
>>> from torch import nn
>>> from maskutils.structured import dead_units, prune_units, shrink
>>> _ = torch.manual_seed(0)
>>> model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))
>>> _ = prune_units(model, 0.5)            # 3 of the 6 hidden units
>>> len(dead_units(model)["0"])
3
>>> small = shrink(model).eval()
>>> small
Sequential(
  (0): Linear(in_features=8, out_features=3, bias=True)
  (1): ReLU()
  (2): Linear(in_features=3, out_features=3, bias=True)
)
>>> x = torch.randn(4, 8)
>>> torch.allclose(small(x), model(x), atol=1e-6)
True
"""
from __future__ import annotations

import copy
import numbers

import torch
from torch import nn

from .apply import _check_module, apply_mask
from .models import DigitsMLP

__all__ = ["ELEMENTWISE", "prune_units", "dead_units", "shrink", "count_parameters"]

#: Modules that act on each feature separately (in eval mode): a hidden unit passes through
#: them on its own, so ``shrink`` can remove it on both sides.
ELEMENTWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.GELU, nn.SiLU, nn.Mish,
               nn.ELU, nn.CELU, nn.SELU, nn.Tanh, nn.Sigmoid, nn.Softplus, nn.Hardtanh,
               nn.Hardswish, nn.Hardsigmoid, nn.Identity, nn.Dropout)


def count_parameters(model: nn.Module) -> int:
    """The number of entries of all parameters of ``model`` (a parametrized weight counts once).

    >>> count_parameters(nn.Linear(3, 2))
    8
    """
    _check_module(model)
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- reading the model
def _sequence(model: nn.Module) -> nn.Sequential:
    """The ``nn.Sequential`` that computes ``model``, or a clear error."""
    _check_module(model)
    if isinstance(model, DigitsMLP):
        if type(model).forward is not DigitsMLP.forward:
            raise TypeError(
                f"{type(model).__name__} overrides DigitsMLP.forward, so shrink cannot tell "
                "how its layers connect; it handles DigitsMLP and nn.Sequential MLPs")
        return model.layers
    if type(model) is nn.Sequential:
        return model
    raise TypeError(
        f"shrink cannot see how {type(model).__name__}.forward connects its layers: a "
        "residual connection (x + f(x)) or any other wiring ties the widths of the layers "
        "it joins, and removing a unit on one side would break it. shrink handles "
        "nn.Sequential MLPs (Linear, BatchNorm1d and elementwise activations) and "
        "maskutils.DigitsMLP; rebuild the model as one of those, or remove units by hand")


def _plan(model: nn.Module):
    """``(sequence, linear positions)`` after checking every module is one shrink knows."""
    seq = _sequence(model)
    mods = list(seq)
    where = [i for i, m in enumerate(mods) if isinstance(m, nn.Linear)]
    if not where:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer, so there is no "
                         "hidden unit to remove")
    for i, m in enumerate(mods):
        if isinstance(m, nn.Linear):
            continue
        if isinstance(m, nn.Flatten) and i < where[0]:
            continue
        if isinstance(m, nn.BatchNorm1d) and where[0] < i < where[-1]:
            continue
        if isinstance(m, ELEMENTWISE):
            if isinstance(m, nn.PReLU) and m.num_parameters != 1:
                raise TypeError(f"module {i} is a PReLU with one slope per feature; shrink "
                                "only knows a PReLU with a single slope")
            continue
        if isinstance(m, nn.Sequential) or len(list(m.children())):
            raise TypeError(
                f"module {i} of the Sequential is a {type(m).__name__} with a forward of its "
                "own (a residual block, say): shrink cannot see how units flow through it; "
                "it handles flat MLPs of Linear, BatchNorm1d and elementwise activations")
        raise TypeError(
            f"module {i} of the Sequential is a {type(m).__name__}, which shrink does not "
            "know how to cut; it handles Linear, BatchNorm1d between Linear layers, "
            "elementwise activations, Dropout, and Flatten before the first Linear")
    for a, b in zip(where, where[1:]):
        if mods[b].in_features != mods[a].out_features:
            raise ValueError(f"module {b} takes {mods[b].in_features} features but module {a} "
                             f"gives {mods[a].out_features}")
    return seq, where


class _EvalMode:
    """Put ``model`` in eval mode (learnable gates become deterministic); restore after."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self):
        self.modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        self.grad = torch.is_grad_enabled()
        torch.set_grad_enabled(False)
        return self

    def __exit__(self, *exc):
        torch.set_grad_enabled(self.grad)
        for m, mode in self.modes:
            m.training = mode
        return False


def _effective(layer: nn.Linear):
    weight = layer.weight.detach().clone()
    bias = None if layer.bias is None else layer.bias.detach().clone()
    return weight, bias


def _analyse(model: nn.Module):
    """Everything ``shrink`` needs, read in eval mode; raises before anything is built."""
    seq, where = _plan(model)
    mods = list(seq)
    prefix = "layers." if seq is not model else ""
    with _EvalMode(model):
        eff = {i: _effective(mods[i]) for i in where}
        hidden = []
        for a, b in zip(where, where[1:]):
            (wa, ba), (wb, _) = eff[a], eff[b]
            row_dead = (wa == 0).all(dim=1)
            col_dead = (wb == 0).all(dim=0)
            # what a row-dead unit sends on: the modules in between applied to its bias
            constant = torch.zeros(wa.shape[0], dtype=wa.dtype, device=wa.device)
            if ba is not None:
                constant = ba.clone()
            out = constant[None]
            for m in mods[a + 1:b]:
                out = m(out)
            constant = out[0]
            fold = row_dead & ~col_dead & (constant != 0)
            if fold.any() and mods[b].bias is None:
                j = int(fold.nonzero()[0])
                raise ValueError(
                    f"unit {j} of {prefix}{a} is removed in that layer only: its weight row is "
                    f"zero, but it still sends the constant {float(constant[j]):.4g} (its bias "
                    f"after the activation) to {prefix}{b}, which has no bias to absorb it. "
                    f"Zero that unit's bias too (prune_units does), or its column in "
                    f"{prefix}{b}, so that the unit is dead on both sides")
            remove = row_dead | col_dead
            if remove.all():
                raise ValueError(
                    f"every unit of {prefix}{a} is dead, so the model's output no longer "
                    "depends on its input; keep at least one unit")
            hidden.append((a, b, remove, fold, constant))
    return seq, where, eff, hidden, prefix


def dead_units(model: nn.Module) -> dict[str, list[int]]:
    """``{hidden Linear's name: [unit indices that shrink removes]}``, for every Linear but
    the last (whose outputs are the model's outputs).

    A unit is dead when its weight row is all zero (after any mask, read in eval mode) or
    when the next layer's column for it is all zero.

    >>> model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    >>> with torch.no_grad():
    ...     model[2].weight[0, 1] = 0.0
    >>> dead_units(model)
    {'0': [1]}
    """
    _, _, _, hidden, prefix = _analyse(model)
    return {f"{prefix}{a}": remove.nonzero().flatten().tolist()
            for a, _, remove, _, _ in hidden}


def _cut_batchnorm(bn: nn.BatchNorm1d, keep: torch.Tensor) -> nn.BatchNorm1d:
    k = int(keep.sum())
    ref = bn.running_mean if bn.running_mean is not None else bn.weight
    new = nn.BatchNorm1d(k, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                         track_running_stats=bn.track_running_stats,
                         device=ref.device, dtype=ref.dtype)
    with torch.no_grad():
        if bn.affine:
            new.weight.copy_(bn.weight.detach()[keep])
            new.bias.copy_(bn.bias.detach()[keep])
        if bn.track_running_stats:
            new.running_mean.copy_(bn.running_mean[keep])
            new.running_var.copy_(bn.running_var[keep])
            new.num_batches_tracked.copy_(bn.num_batches_tracked)
    return new


def shrink(model: nn.Module) -> nn.Module:
    """A new, plain, smaller model without the dead hidden units of ``model`` (``dead_units``).

    For each hidden ``Linear`` (every one but the last) the dead units' rows and bias entries
    are cut out, with the matching columns of the next ``Linear`` and the entries of any
    ``BatchNorm1d`` in between. A unit whose row is zero but whose bias is not sends a
    constant (its bias after the activation) to the next layer: that constant is added to
    the next layer's bias. In eval mode the result computes the same outputs as ``model``
    up to float rounding.

    - ``model``: an ``nn.Sequential`` of ``Linear``, ``BatchNorm1d`` (between Linear layers),
      elementwise activations, ``Dropout`` (and ``Flatten`` first), or a ``DigitsMLP``; the
      result has the same class, built fresh (a ``DigitsMLP`` with the new ``hidden``
      sizes), so its ``state_dict`` loads into a model built with those sizes.
    - Masks and learnable gates are read as they act in eval mode and are not carried over:
      the result has no parametrizations. Remaining single zeros stay, as zeros.
    - ``model`` itself is never changed. Anything ``shrink`` cannot cut exactly (a residual
      connection, an unknown module, a unit removed in its own layer whose constant output
      the next layer cannot absorb) raises a ``TypeError``/``ValueError`` that says why.

    >>> model = DigitsMLP(hidden=(4, 4))
    >>> with torch.no_grad():
    ...     model.layers[0].weight[1:] = 0.0      # units 1-3 of the first hidden layer
    >>> shrink(model).layers
    Sequential(
      (0): Linear(in_features=64, out_features=1, bias=True)
      (1): ReLU()
      (2): Linear(in_features=1, out_features=4, bias=True)
      (3): ReLU()
      (4): Linear(in_features=4, out_features=10, bias=True)
    )
    """
    seq, where, eff, hidden, _ = _analyse(model)
    mods = list(seq)
    keep_out = {a: ~remove for a, _, remove, _, _ in hidden}
    keep_in = {b: ~remove for _, b, remove, _, _ in hidden}
    extra_bias = {}
    for a, b, remove, fold, constant in hidden:
        wb = eff[b][0]
        extra_bias[b] = (wb[:, fold] * constant[fold]).sum(dim=1)
    new_mods: list[nn.Module] = []
    with torch.no_grad():
        for i, m in enumerate(mods):
            if isinstance(m, nn.Linear):
                weight, bias = eff[i]
                rows = keep_out.get(i, torch.ones(weight.shape[0], dtype=torch.bool,
                                                  device=weight.device))
                cols = keep_in.get(i, torch.ones(weight.shape[1], dtype=torch.bool,
                                                 device=weight.device))
                weight = weight[rows][:, cols]
                layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None,
                                  device=weight.device, dtype=weight.dtype)
                layer.weight.copy_(weight)
                if bias is not None:
                    if i in extra_bias:
                        bias = bias + extra_bias[i]
                    layer.bias.copy_(bias[rows])
                new_mods.append(layer)
            elif isinstance(m, nn.BatchNorm1d):
                a = max(j for j in where if j < i)
                new_mods.append(_cut_batchnorm(m, keep_out[a]))
            else:
                new_mods.append(copy.deepcopy(m))
    for new, old in zip(new_mods, mods):
        new.train(old.training)
    result = nn.Sequential(*new_mods)
    if seq is model:
        return result.train(model.training)
    sizes = [new_mods[i].out_features for i in where[:-1]]
    bn = any(isinstance(m, nn.BatchNorm1d) for m in mods)
    first, last = new_mods[where[0]], new_mods[where[-1]]
    out = DigitsMLP(hidden=tuple(sizes), batchnorm=bn, n_in=first.in_features,
                    n_out=last.out_features).to(device=first.weight.device,
                                                dtype=first.weight.dtype)
    out.layers.load_state_dict(result.state_dict())
    return out.train(model.training)


# ---------------------------------------------------------------- choosing units by norm
def _check_fraction(sparsity) -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real):
        raise TypeError(f"sparsity must be a number in [0, 1) (the fraction of hidden units "
                        f"removed), got {sparsity!r}")
    value = float(sparsity)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"sparsity must be in [0, 1) (the fraction of hidden units removed; "
                         f"1 would remove every unit), got {value}")
    return value


def prune_units(model: nn.Module, sparsity: float,
                scores: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Mask ``round(sparsity * units)`` hidden units with the smallest weight-row L2 norm in
    every hidden ``Linear`` of ``model`` (every Linear but the last), rows and bias entries.

    ``scores``: ``{layer name: one score per unit}`` to rank by instead of the row norm
    (for example learned unit-gate logits); the lowest scores are removed. Give one entry
    for every hidden layer (the names are the keys of the returned dict).

    Uses ``apply_mask`` on ``weight`` and ``bias``, so masks stack on any already there and
    the model can be fine-tuned with the units held at zero; ``shrink`` then cuts them out.
    The norms are those of the effective (masked) rows; ties go to the lower index.
    Returns ``{layer name: 1-D keep mask over its units}``.
    Validates everything before changing anything.

    >>> model = nn.Sequential(nn.Linear(4, 10), nn.ReLU(), nn.Linear(10, 2))
    >>> keep = prune_units(model, 0.3)
    >>> int(keep["0"].sum()), int((model[0].weight.abs().sum(dim=1) == 0).sum())
    (7, 3)
    """
    sparsity = _check_fraction(sparsity)
    seq, where = _plan(model)
    prefix = "layers." if seq is not model else ""
    mods = list(seq)
    plans = []
    names = [f"{prefix}{a}" for a in where[:-1]]
    if scores is not None:
        if not isinstance(scores, dict) or sorted(scores) != sorted(names):
            got = sorted(scores) if isinstance(scores, dict) else type(scores).__name__
            raise ValueError(f"scores must be a dict with one entry per hidden layer, "
                             f"{names}; got {got}")
    with _EvalMode(model):
        for a in where[:-1]:
            weight, _ = _effective(mods[a])
            norms = weight.norm(dim=1)
            n = weight.shape[0]
            if scores is not None:
                given = scores[f"{prefix}{a}"]
                if not isinstance(given, torch.Tensor) or given.numel() != n:
                    raise ValueError(f"scores[{prefix + str(a)!r}] must be a tensor of {n} "
                                     f"scores, one per unit, got {getattr(given, 'shape', given)}")
                norms = given.detach().flatten().to(weight.device, weight.dtype)
            drop = round(sparsity * n)
            if drop >= n:
                raise ValueError(f"sparsity={sparsity} removes all {n} units of {prefix}{a}; "
                                 "keep at least one")
            keep = torch.ones(n, dtype=weight.dtype, device=weight.device)
            order = torch.sort(norms, stable=True).indices
            keep[order[:drop]] = 0
            plans.append((a, keep))
    if not plans:
        raise ValueError(f"{type(model).__name__} has one Linear layer only, so it has no "
                         "hidden unit to remove")
    result = {}
    for a, keep in plans:
        layer = mods[a]
        apply_mask(layer, keep[:, None].expand_as(layer.weight).contiguous())
        if layer.bias is not None:
            apply_mask(layer, keep.clone(), name="bias")
        result[f"{prefix}{a}"] = keep
    return result
