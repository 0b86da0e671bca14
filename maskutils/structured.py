"""Structured pruning: remove whole units, and build the smaller model that results.

A mask of single weights leaves every matrix its full size. Removing a *unit* (a hidden
neuron of an MLP, a channel of a CNN, an attention head) removes a slice of every tensor
that writes or reads it, so the matrices get smaller and the smaller dense model is faster
everywhere. The book does it in two steps a reader can see: **mask** whole units (and
fine-tune with them held at zero), then **shrink** the masked model into a smaller plain one.

- ``prune_units(model, sparsity)`` masks the rows (and bias entries) of the hidden units
  with the smallest row norm, in every hidden ``Linear`` of an MLP (all but the last).
- ``dead_units(model)`` lists the hidden units of an MLP that carry nothing.
- ``shrink(model)`` returns a new, plain model (no parametrizations) without those units;
  in eval mode it computes the same outputs up to float rounding.

With ``example_inputs`` (a batch the model takes), both work on any architecture: the model
is traced once by Torch-Pruning (Fang et al. 2023), whose dependency graph finds the
*dependency groups*, the slices of all tensors that must go together. The conv whose output
channels feed a residual sum, every other conv that writes into that sum, their BatchNorms,
the next convs' input channels and the classifier's input features are one group; a
transformer's up (and gate) projection and the down projection that reads it are another.
``unit_groups`` lists them; ``count_macs`` counts multiply-accumulates (both live in
``maskutils.depgroups``, with the traced work, and are importable from here).

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

from .apply import _check_module, _check_name, apply_mask, check_mask
from .depgroups import UnitGroup, _prune_units_traced, _shrink_traced, count_macs, unit_groups
from .models import DigitsMLP
from .storage import _EvalNoGrad

__all__ = ["ELEMENTWISE", "UnitGroup", "count_macs", "count_parameters", "dead_units",
           "prune_units", "shrink", "unit_groups"]

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
_TRACE_HINT = ("pass example_inputs=<a batch the model takes> and {fn} traces the model with "
               "Torch-Pruning, which finds the layers tied together (residual sums, "
               "attention, BatchNorm) in any architecture")


def _sequence(model: nn.Module, fn: str = "shrink") -> nn.Sequential:
    """The ``nn.Sequential`` that computes ``model``, or a clear error in ``fn``'s name."""
    _check_module(model)
    hint = _TRACE_HINT.format(fn=fn)
    if isinstance(model, DigitsMLP):
        if type(model).forward is not DigitsMLP.forward:
            raise TypeError(
                f"{type(model).__name__} overrides DigitsMLP.forward, so {fn} cannot tell "
                f"how its layers connect without example_inputs; {hint}")
        return model.layers
    if type(model) is nn.Sequential:
        return model
    raise TypeError(
        f"{fn} cannot see how {type(model).__name__}.forward connects its layers: a "
        "residual connection (x + f(x)) or any other wiring ties the widths of the layers "
        "it joins, and removing a unit on one side would break it. Without example_inputs "
        f"{fn} handles nn.Sequential MLPs (Linear, BatchNorm1d and elementwise activations) "
        f"and maskutils.DigitsMLP; {hint}")


def _plan(model: nn.Module, fn: str = "shrink"):
    """``(sequence, linear positions)`` after checking every module is one ``fn`` knows."""
    seq = _sequence(model, fn)
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
                f"own (a residual block, say): {fn} cannot see how units flow through it; "
                "without example_inputs it handles flat MLPs of Linear, BatchNorm1d and "
                f"elementwise activations; {_TRACE_HINT.format(fn=fn)}")
        raise TypeError(
            f"module {i} of the Sequential is a {type(m).__name__}, which {fn} does not "
            "know how to cut without example_inputs; it handles Linear, BatchNorm1d between "
            "Linear layers, elementwise activations, Dropout, and Flatten before the first "
            f"Linear; {_TRACE_HINT.format(fn=fn)}")
    for a, b in zip(where, where[1:]):
        if mods[b].in_features != mods[a].out_features:
            raise ValueError(f"module {b} takes {mods[b].in_features} features but module {a} "
                             f"gives {mods[a].out_features}")
    return seq, where


def _effective(layer: nn.Linear):
    weight = layer.weight.detach().clone()
    bias = None if layer.bias is None else layer.bias.detach().clone()
    return weight, bias


def _analyse(model: nn.Module):
    """Everything ``shrink`` needs, read in eval mode; raises before anything is built."""
    seq, where = _plan(model)
    mods = list(seq)
    prefix = "layers." if seq is not model else ""
    with _EvalNoGrad(model):
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
                    f"unit {j} of layer '{prefix}{a}' is removed in that layer only: its "
                    f"weight row is zero, but it still sends the constant "
                    f"{float(constant[j]):.4g} (its bias after the activation) to layer "
                    f"'{prefix}{b}', which has no bias to absorb it. Zero that unit's bias too "
                    f"(prune_units does), or its column in layer '{prefix}{b}', so that the "
                    f"unit is dead on both sides")
            remove = row_dead | col_dead
            if remove.all():
                raise ValueError(
                    f"every unit of layer '{prefix}{a}' is dead, so the model's output no longer "
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


def _shrink_mlp(model: nn.Module) -> nn.Module:
    """``shrink`` without example_inputs: the exact MLP path (see ``shrink``)."""
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
def _check_fraction(sparsity, what: str = "sparsity", units: str = "units") -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real):
        raise TypeError(f"{what} must be a number in [0, 1) (the fraction of {units} "
                        f"removed), got {sparsity!r}")
    value = float(sparsity)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{what} must be in [0, 1) (the fraction of {units} removed; "
                         f"1 would remove every one), got {value}")
    return value


def _prune_units_mlp(model: nn.Module, sparsity: float,
                     scores: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """``prune_units`` without example_inputs: the hidden units of an MLP."""
    seq, where = _plan(model, "prune_units")
    prefix = "layers." if seq is not model else ""
    mods = list(seq)
    plans = []
    names = [f"{prefix}{a}" for a in where[:-1]]
    if scores is not None:
        if not isinstance(scores, dict) or sorted(scores) != sorted(names):
            got = sorted(scores) if isinstance(scores, dict) else type(scores).__name__
            raise ValueError(f"scores must be a dict with one entry per hidden layer, "
                             f"{names}; got {got}")
    with _EvalNoGrad(model):
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
    checked = []  # validate every layer first, then mask: on an error nothing changes
    for a, keep in plans:
        layer = mods[a]
        weight = keep[:, None].expand_as(layer.weight).contiguous()
        checked.append((layer, "weight", check_mask(weight, _check_name(layer, "weight"))))
        if layer.bias is not None:
            checked.append((layer, "bias", check_mask(keep.clone(), _check_name(layer, "bias"))))
    for layer, name, mask in checked:
        apply_mask(layer, mask, name=name)
    return {f"{prefix}{a}": keep for a, keep in plans}


# ---------------------------------------------------------------- the public entry points
def prune_units(model: nn.Module, sparsity: float,
                scores: dict[str, torch.Tensor] | None = None, *, example_inputs=None,
                head_sparsity: float = 0.0) -> dict[str, torch.Tensor]:
    """Mask whole units of ``model``: in each group, the ``round(sparsity * size)`` units with
    the smallest L2 norm (or ``scores``). Returns ``{group name: 1-D keep mask over its
    units}``. Validates everything before changing anything.

    **Without** ``example_inputs``: an MLP (``nn.Sequential`` or ``DigitsMLP``); the units
    are the hidden units of every hidden ``Linear`` (every Linear but the last), ranked by
    their weight row's norm; rows and bias entries are masked.

    **With** ``example_inputs`` (a batch the model takes: a tensor, a tuple of positional
    arguments or a dict of keyword arguments): any architecture. The model is traced once by
    Torch-Pruning and the groups are its dependency groups (``unit_groups`` lists them): a
    unit is an output channel or feature together with every slice coupled to it (the
    BatchNorm entries after it, the next layers' input columns, the other convolutions that
    write into the same residual sum). Units are ranked by the L2 norm of all their slices,
    and every slice is masked (weights, biases, norm parameters), so the masked model
    computes exactly what ``shrink`` returns; that is checked on ``example_inputs`` before
    anything is masked. The model's outputs (a classifier's classes, a language model's
    vocabulary) and embeddings are never units; nor are channels that a LayerNorm or an
    attention split mixes (``unit_groups`` says why). ``head_sparsity``: also remove that
    fraction of the attention heads of every attention module with ``q_proj``, ``k_proj``,
    ``v_proj``, ``o_proj`` and a ``head_dim`` (LLaMA, Mistral, Qwen2, ...); a unit is one
    key/value head with the query heads that read it (one head without grouped-query
    attention). Other attention modules are refused with the reason.

    ``scores``: ``{group name: one score per unit}`` to rank by instead (for example
    learned unit-gate logits); the lowest go. Give one entry for every group (the names are
    the keys of the returned dict). Masks stack on any already there (``apply_mask``), so
    the model can be fine-tuned with the units held at zero; ``shrink`` then cuts them out.
    Norms are those of the effective (masked) weights; ties go to the lower index.

    >>> model = nn.Sequential(nn.Linear(4, 10), nn.ReLU(), nn.Linear(10, 2))
    >>> keep = prune_units(model, 0.3)
    >>> int(keep["0"].sum()), int((model[0].weight.abs().sum(dim=1) == 0).sum())
    (7, 3)
    >>> from maskutils.models import DigitsResNet
    >>> net = DigitsResNet(channels=8)
    >>> keep = prune_units(net, 0.5, example_inputs=torch.zeros(2, 64))
    >>> {name: int(k.sum()) for name, k in keep.items()}
    {'stem.0': 4, 'blocks.0.conv1': 4, 'blocks.1.conv1': 4}
    """
    sparsity = _check_fraction(sparsity)
    head_sparsity = _check_fraction(head_sparsity, "head_sparsity", "attention heads")
    if example_inputs is None:
        if head_sparsity:
            raise ValueError("head_sparsity needs example_inputs: pass a batch the model "
                             "takes, so that prune_units can trace where the heads go")
        return _prune_units_mlp(model, sparsity, scores)
    _check_module(model)
    return _prune_units_traced(model, sparsity, scores, example_inputs, head_sparsity)


def shrink(model: nn.Module, *, example_inputs=None) -> nn.Module:
    """A new, plain, smaller model without the units of ``model`` that are zero everywhere;
    in eval mode it computes the same outputs as ``model`` (up to float rounding).
    ``model`` itself is never changed; the result has no parametrizations (masks and
    learnable gates are read as they act in eval mode; remaining single zeros stay zeros).

    **Without** ``example_inputs``: an MLP (``nn.Sequential`` of ``Linear``,
    ``BatchNorm1d`` between Linear layers, elementwise activations, ``Dropout``, ``Flatten``
    first; or a ``DigitsMLP``). The dead hidden units (``dead_units``) are cut out: rows and
    bias entries, the next layer's columns, the BatchNorm entries in between. A unit whose
    row is zero but whose bias is not sends a constant to the next layer, which is added to
    the next layer's bias. The result has the same class, built fresh, so its
    ``state_dict`` loads into a model built with the new sizes.

    **With** ``example_inputs``: any architecture. Torch-Pruning's dependency graph finds
    the groups (``unit_groups``); every unit whose slices are all zero, in every member of
    its group, is cut out, and attention heads (of modules with ``q_proj``/``k_proj``/
    ``v_proj``/``o_proj``) whose slices are all zero too. The result is a deep copy of
    ``model`` with smaller layers; its outputs on ``example_inputs`` are checked against the
    masked model's (atol 1e-4 of their scale). A Hugging Face model's config gets the new
    widths (``intermediate_size``, ``n_inner``, ``ffn_dim``, heads), so ``save_pretrained``
    and ``from_pretrained`` rebuild the smaller model; when layers end up with different
    widths, which one config number cannot say, a warning says what is needed. An
    unstructured mask leaves nothing to cut: the same parameter count, the same outputs.

    Anything that cannot be cut exactly raises a ``TypeError``/``ValueError`` that says why:
    without ``example_inputs``, a residual connection or an unknown module (the message says
    to pass ``example_inputs``); with them, all-zero units in a group that a LayerNorm or an
    attention split mixes, or a group with every unit zero.

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
    >>> from maskutils.models import DigitsResNet
    >>> net = DigitsResNet(channels=8)
    >>> x = torch.zeros(2, 64)
    >>> _ = prune_units(net, 0.5, example_inputs=x)
    >>> small = shrink(net, example_inputs=x)
    >>> small.head, count_parameters(small) < count_parameters(net) / 3
    (Linear(in_features=4, out_features=10, bias=True), True)
    """
    if example_inputs is None:
        return _shrink_mlp(model)
    _check_module(model)
    return _shrink_traced(model, example_inputs)
