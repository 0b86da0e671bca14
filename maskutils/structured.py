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
``unit_groups`` lists them; ``count_macs`` counts multiply-accumulates.

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

import contextlib
import copy
import inspect
import io
import numbers
import sys
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from .apply import (_check_module, _check_name, _computed_by_hooks, _refuse_if_ddp_wrapped,
                    apply_mask, check_mask)
from .models import DigitsMLP
from .storage import _EvalNoGrad, plain_copy

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


# ================================================================ any architecture (traced)
def _torch_pruning():
    """Torch-Pruning, imported on first use (so ``import maskutils`` stays fast)."""
    try:
        import torch_pruning
    except ImportError as err:  # pragma: no cover - it is in the requirements
        raise ImportError("example_inputs needs Torch-Pruning: pip install torch-pruning") from err
    return torch_pruning


def _takes_use_cache(model: nn.Module) -> bool:
    try:
        return "use_cache" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _call(model: nn.Module, example_inputs):
    """``model`` on ``example_inputs`` (a tensor, a tuple/list of them, or a dict of keyword
    arguments); a Hugging Face model is called without its key/value cache."""
    extra = {"use_cache": False} if _takes_use_cache(model) else {}
    if isinstance(example_inputs, dict):
        return model(**{**extra, **example_inputs})
    if isinstance(example_inputs, (tuple, list)):
        return model(*example_inputs, **extra)
    return model(example_inputs, **extra)


def _output(out) -> torch.Tensor:
    """The tensor a model's output stands for: itself, ``.logits`` (Hugging Face), or the
    first tensor of a tuple or dict."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(getattr(out, "logits", None), torch.Tensor):
        return out.logits
    values = out.values() if isinstance(out, dict) else out if isinstance(out, (tuple, list)) \
        else ()
    for value in values:
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError(f"the model returned a {type(out).__name__}, with no tensor to compare; "
                    "pass a model that returns a tensor, a tuple/dict of tensors or .logits")


def _check_traceable(model: nn.Module, fn: str) -> None:
    """Refuse tensors that a forward pre-hook recomputes (``torch.nn.utils.prune``, the old
    ``weight_norm``): the model cannot be copied and traced as it is."""
    _check_module(model)
    _refuse_if_ddp_wrapped(model)
    for name, module in model.named_modules():
        for tensor, (tool, stored, fix) in _computed_by_hooks(module).items():
            where = f"{name}.{tensor}" if name else tensor
            raise ValueError(f"{fn}: {where} is computed by {tool} from {', '.join(stored)} "
                             f"before every forward; {fix}")


def _check_inputs(example_inputs) -> None:
    tensors = (list(example_inputs.values()) if isinstance(example_inputs, dict)
               else list(example_inputs) if isinstance(example_inputs, (tuple, list))
               else [example_inputs])
    if not any(isinstance(t, torch.Tensor) for t in tensors):
        raise TypeError(
            "example_inputs must be a batch the model takes: a tensor, a tuple of tensors "
            "(positional arguments) or a dict (keyword arguments, e.g. {'input_ids': ids}), "
            f"got {type(example_inputs).__name__}")


def _run(model: nn.Module, example_inputs, fn: str) -> torch.Tensor:
    """Eval-mode output of ``model`` (modes restored), with a clear error in ``fn``'s name."""
    with _EvalNoGrad(model):
        try:
            return _output(_call(model, example_inputs)).detach().clone()
        except (RuntimeError, TypeError, ValueError, IndexError) as err:
            raise ValueError(
                f"{fn}: the model raised {type(err).__name__} on example_inputs "
                f"({str(err).splitlines()[0][:200]}); pass a batch the model takes, as in "
                "model(example_inputs) (a tuple for several arguments, a dict for keyword "
                "arguments)") from err


def _conv1d_class():
    """``transformers``' ``Conv1D`` (GPT-2's linear layer, weight stored (in, out)) when
    transformers is already imported, else None (a model holding one has imported it)."""
    module = sys.modules.get("transformers.pytorch_utils")
    return getattr(module, "Conv1D", None)


def _conv1d_pruner(tp):
    """A Torch-Pruning pruner for ``Conv1D``: output features are the weight's columns."""

    class Conv1DPruner(tp.pruner.BasePruningFunc):
        TARGET_MODULES = _conv1d_class()

        def prune_out_channels(self, layer, idxs):
            keep = sorted(set(range(layer.nf)) - set(idxs))
            layer.nf = len(keep)
            layer.weight = self._prune_parameter_and_grad(layer.weight, keep, 1)
            if layer.bias is not None:
                layer.bias = self._prune_parameter_and_grad(layer.bias, keep, 0)
            return layer

        def prune_in_channels(self, layer, idxs):
            keep = sorted(set(range(layer.weight.shape[0])) - set(idxs))
            layer.weight = self._prune_parameter_and_grad(layer.weight, keep, 0)
            return layer

        def get_out_channels(self, layer):
            return layer.nf

        def get_in_channels(self, layer):
            return layer.weight.shape[0]

    return Conv1DPruner()


@dataclass(eq=False)
class UnitGroup:
    """One dependency group: ``size`` units, each a slice of every tensor in ``members``.

    - ``name``: the first layer (in the model's order) whose outputs the group's units are;
      for attention heads, the attention module.
    - ``kind``: ``"channels"`` (output channels or features, with everything coupled to them)
      or ``"heads"`` (a key/value head with the query heads that read it).
    - ``members``: the coupled slices, as text: ``stem.0.weight[c]`` is output channel ``c``
      of that convolution, ``head.weight[:, c]`` its input feature ``c``.
    - ``reason``: ``None`` for a group of units that ``prune_units`` and ``shrink`` remove;
      otherwise why the group is never cut (the model's outputs, an embedding, a norm over
      these channels, ...).
    """

    name: str
    size: int
    kind: str
    members: list[str]
    reason: str | None = None
    slices: list = field(default_factory=list, repr=False)  # (module, param, dim, idx, unit)
    root: tuple | None = field(default=None, repr=False)     # (module, handler) for cutting
    shape: dict = field(default_factory=dict, repr=False)    # heads: q_per_kv, head_dim

    def indices(self, units) -> list[tuple[str, str, int, torch.Tensor]]:
        """``(module name, parameter name, dim, indices)`` of the slices of ``units``."""
        units = torch.as_tensor(list(units), dtype=torch.long)
        return [(m, p, d, idx[torch.isin(unit, units)]) for m, p, d, idx, unit in self.slices]


_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)
_RNNS = (nn.RNNBase,)
_ATTENTION_OPS = ("scaleddotproduct", "softmax", "bmm", "baddbmm")


def _where(names: dict, module) -> str:
    return names.get(module, type(module).__name__)


def _slice_dims(module: nn.Module, out: bool) -> tuple[list[tuple[str, int]], str | None]:
    """``([(parameter name, dim)], reason)``: the slices of one channel of ``module``
    (``out``: an output channel, else an input channel), or why it cannot be masked."""
    conv1d = _conv1d_class()
    if isinstance(module, nn.Linear):
        return ([("weight", 0), ("bias", 0)] if out else [("weight", 1)]), None
    if conv1d is not None and isinstance(module, conv1d):
        return ([("weight", 1), ("bias", 0)] if out else [("weight", 0)]), None
    if isinstance(module, nn.modules.conv._ConvNd):
        if module.groups > 1 and module.groups == module.out_channels:  # depthwise
            return [("weight", 0), ("bias", 0)], None
        if module.groups > 1:
            return [], (f"a grouped convolution ({module.groups} groups) reads these channels "
                        "in groups")
        row, col = (1, 0) if module.transposed else (0, 1)
        return ([("weight", row), ("bias", 0)] if out else [("weight", col)]), None
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return ([("weight", 0), ("bias", 0)] if module.affine else []), None
    if isinstance(module, nn.PReLU):
        return ([("weight", 0)] if module.num_parameters > 1 else []), None
    if isinstance(module, nn.Embedding):
        return [], "an nn.Embedding writes these features: embeddings are never units"
    if isinstance(module, _NORMS):
        return [], (f"a {type(module).__name__} normalizes over these channels together, so "
                    "removing one, even an all-zero one, changes the others")
    if isinstance(module, nn.MultiheadAttention):
        return [], ("an nn.MultiheadAttention reads them, whose q, k and v must be as wide as "
                    "its input")
    if isinstance(module, _RNNS):
        return [], f"an {type(module).__name__} reads them through its gates"
    if isinstance(module, nn.Parameter):
        return [], ("a parameter outside any layer Torch-Pruning knows reads them (an "
                    "RMSNorm's weight, a class token): it normalizes or mixes them")
    if isinstance(module, nn.Module) and any(True for _ in module.parameters(recurse=False)):
        return [], f"maskutils does not know how to mask one channel of a {type(module).__name__}"
    return [], None  # an operation without parameters


def _op_reason(module) -> str | None:
    """Why an operation (not a layer) in a group stops its channels from being units."""
    kind = type(module).__name__
    name = str(getattr(module, "_grad_fn", "")).lower()
    if kind in ("_SplitOp", "_UnbindOp", "_ExpandOp", "_SliceOp") \
            or any(op in name for op in _ATTENTION_OPS):
        return ("these channels are split into attention heads (queries, keys, values): "
                "single channels cannot go, only whole heads (head_sparsity)")
    if kind == "_OutputOp":
        return "its channels are the model's outputs"
    return None


def _channel_group(group, dg, names, order, shared) -> UnitGroup:
    """A Torch-Pruning group as a ``UnitGroup``."""
    items = list(group)
    size = len(items[0].idxs)
    reasons, slices, writers = [], {}, []
    for item in items:
        module, handler = item.dep.target.module, item.dep.handler
        out = dg.is_out_channel_pruning_fn(handler)
        dims, why = [], _op_reason(module)
        if isinstance(module, (nn.Module, nn.Parameter)) and module in names:
            if out and isinstance(module, nn.Module) and not item.dep.target.outputs:
                why = "its channels are the model's outputs (classes, a vocabulary)"
            dims, why_not = _slice_dims(module, out)
            why = why or why_not
            if out and isinstance(module, nn.Module):
                writers.append(names[module])
        if why is not None:
            reasons.append(why)
        idx = torch.as_tensor(list(item.idxs), dtype=torch.long)
        unit = torch.as_tensor(list(item.root_idxs), dtype=torch.long)
        for pname, dim in dims:
            if getattr(module, pname, None) is None:
                continue
            if id(getattr(module, pname)) in shared:
                reasons.append(f"{names[module]}.{pname} is a tied parameter (shared with "
                               "another layer)")
            key = (names[module], pname, dim)
            if key in slices:
                idx, unit = torch.cat([slices[key][0], idx]), torch.cat([slices[key][1], unit])
            slices[key] = (idx, unit)
    out_slices, members = [], []
    names_to_modules = [(n, m) for m, n in names.items() if isinstance(m, nn.Module)]
    for (name, pname, dim), (idx, unit) in sorted(slices.items(),
                                                  key=lambda kv: order.get(kv[0][0], 0)):
        pairs = torch.unique(torch.stack([unit, idx]), dim=1)
        length = getattr(dict(names_to_modules)[name], pname).shape[dim]
        inside = (pairs[1] >= 0) & (pairs[1] < length)
        if not bool(inside.all()):  # a mapping Torch-Pruning got wrong: not a unit
            reasons.append(f"Torch-Pruning maps these channels outside {name}.{pname}")
            pairs = pairs[:, inside]
        out_slices.append((name, pname, dim, pairs[1], pairs[0]))
        per = pairs.shape[1] // max(size, 1)
        where = ":, " * dim
        members.append(f"{name}.{pname}[{where}c]" if per == 1
                       else f"{name}.{pname}[{where}{per} per c]")
    # the rule (outputs, embeddings) first, then what stops an exact cut
    reasons.sort(key=lambda r: 0 if "outputs" in r else 1 if "mbedding" in r else 2)
    writers.sort(key=lambda n: order.get(n, 0))
    root = (items[0].dep.target.module, items[0].dep.handler)
    title = writers[0] if writers else _where(names, root[0])
    return UnitGroup(title, size, "channels", members, reasons[0] if reasons else None,
                     out_slices, root)


def _head_groups(model: nn.Module) -> tuple[list[UnitGroup], list[tuple[str, str]]]:
    """Attention modules with separate ``q_proj``/``k_proj``/``v_proj``/``o_proj`` and a
    ``head_dim`` (LLaMA, Mistral, Qwen2, ...), one group each whose units are key/value heads
    with their query heads; and ``(name, why)`` of the attention modules whose heads
    maskutils cannot cut (``nn.MultiheadAttention``, GPT-2's packed ``c_attn``, ...)."""
    groups, refused = [], []
    for name, m in model.named_modules():
        projections = [getattr(m, k, None) for k in ("q_proj", "k_proj", "v_proj", "o_proj")]
        head_dim = getattr(m, "head_dim", None)
        if all(isinstance(p, nn.Linear) for p in projections) and isinstance(head_dim, int):
            q, k, v, o = projections
            n_q, n_kv = q.out_features // head_dim, k.out_features // head_dim
            if (q.out_features % head_dim or k.out_features % head_dim or n_q % n_kv
                    or v.out_features != k.out_features or o.in_features != q.out_features):
                refused.append((name, f"its projections do not split into heads of "
                                      f"head_dim={head_dim}"))
                continue
            per_q = n_q // n_kv * head_dim  # query rows per key/value head
            slices, members = [], []
            for proj, width, dim in (("q_proj", per_q, 0), ("k_proj", head_dim, 0),
                                     ("v_proj", head_dim, 0), ("o_proj", per_q, 1)):
                layer = getattr(m, proj)
                n = layer.weight.shape[dim]
                idx = torch.arange(n)
                pnames = ["weight"] + (["bias"] if dim == 0 and layer.bias is not None else [])
                for pname in pnames:
                    slices.append((f"{name}.{proj}", pname, dim if pname == "weight" else 0,
                                   idx, idx // width))
                    where = ":, " if pname == "weight" and dim == 1 else ""
                    members.append(f"{name}.{proj}.{pname}[{where}{width} per head]")
            groups.append(UnitGroup(name, n_kv, "heads", members, None, slices, None,
                                    {"q_per_kv": n_q // n_kv, "head_dim": head_dim}))
        elif isinstance(m, nn.MultiheadAttention):
            refused.append((name, "nn.MultiheadAttention packs q, k and v in in_proj_weight "
                                  "and needs them as wide as its input"))
        elif hasattr(m, "c_attn") and "attention" in type(m).__name__.lower():
            refused.append((name, f"{type(m).__name__} packs q, k and v in one c_attn layer"))
    return groups, refused


def _graph(plain: nn.Module, example_inputs):
    """Torch-Pruning's dependency graph of ``plain`` (a model without parametrizations)."""
    tp = _torch_pruning()
    conv1d = _conv1d_class()
    custom = {conv1d: _conv1d_pruner(tp)} if conv1d is not None and any(
        isinstance(m, conv1d) for m in plain.modules()) else None
    flags = [(p, p.requires_grad) for p in plain.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(True)  # the graph is read from autograd
        with torch.enable_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its notes on unwrapped parameters
            dg = tp.DependencyGraph().build_dependency(
                plain, example_inputs=example_inputs, forward_fn=_call,
                output_transform=_output, customized_pruners=custom, verbose=False)
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
    roots = (nn.modules.conv._ConvNd, nn.Linear) + ((conv1d,) if custom else ())
    return dg, roots


def _groups(plain: nn.Module, example_inputs) -> list[UnitGroup]:
    dg, roots = _graph(plain, example_inputs)
    names = {m: n for n, m in plain.named_modules()}
    names.update({p: n for n, p in plain.named_parameters(remove_duplicate=False)})
    order = {n: i for i, (n, _) in enumerate(plain.named_modules())}
    seen, shared = set(), set()
    for _, p in plain.named_parameters(remove_duplicate=False):
        (shared if id(p) in seen else seen).add(id(p))
    heads, _ = _head_groups(plain)
    # the query/key/value features are units only as whole heads (the head groups); their
    # own groups are not asked for (Torch-Pruning 1.6 loops on LLaMA's with grouped queries)
    projections = [plain.get_submodule(f"{g.name}.{p}") for g in heads
                   for p in ("q_proj", "k_proj", "v_proj")]
    groups = [_channel_group(g, dg, names, order, shared)
              for g in dg.get_all_groups(ignored_layers=projections, root_module_types=roots)]
    groups.sort(key=lambda g: order.get(g.name, len(order)))
    return groups + heads, dg


def unit_groups(model: nn.Module, example_inputs) -> dict[str, UnitGroup]:
    """Every dependency group of ``model``, traced on ``example_inputs`` with Torch-Pruning,
    and its attention heads: ``{name: UnitGroup}`` in the model's order.

    A group whose ``reason`` is ``None`` is a group of units: ``prune_units`` masks its
    units and ``shrink`` cuts them. The others are never cut, and ``reason`` says why.
    ``model`` is not changed.

    >>> from maskutils.models import DigitsResNet
    >>> groups = unit_groups(DigitsResNet(channels=4), torch.zeros(2, 64))
    >>> [(name, g.size, g.reason is None) for name, g in groups.items()]
    [('stem.0', 4, True), ('blocks.0.conv1', 4, True), ('blocks.1.conv1', 4, True), \
('head', 10, False)]
    >>> groups["blocks.0.conv1"].members
    ['blocks.0.conv1.weight[c]', 'blocks.0.bn1.weight[c]', 'blocks.0.bn1.bias[c]', \
'blocks.0.conv2.weight[:, c]']
    """
    _check_traceable(model, "unit_groups")
    _check_inputs(example_inputs)
    plain = plain_copy(model)
    _run(plain, example_inputs, "unit_groups")
    groups, _ = _groups(plain, example_inputs)
    return {g.name: g for g in groups}


def count_macs(model: nn.Module, example_inputs) -> int:
    """Multiply-accumulates of one forward pass on the first example of ``example_inputs``
    (every tensor's first row), as Torch-Pruning's ``count_ops_and_params`` counts them:
    convolutions, linear layers, norms and pooling (a product of two activations, as in
    attention, is not counted).

    >>> count_macs(nn.Linear(8, 4), torch.zeros(3, 8))   # 8 x 4 products, 4 biases
    36
    """
    _check_traceable(model, "count_macs")
    _check_inputs(example_inputs)
    tp = _torch_pruning()

    def first(t):
        return t[:1] if isinstance(t, torch.Tensor) and t.dim() else t

    if isinstance(example_inputs, dict):
        inputs = {k: first(v) for k, v in example_inputs.items()}
    elif isinstance(example_inputs, (tuple, list)):
        inputs = [first(t) for t in example_inputs]
    else:
        inputs = first(example_inputs)
    plain = plain_copy(model)
    if _takes_use_cache(plain):  # a Hugging Face model: no key/value cache
        inputs = dict(inputs) if isinstance(inputs, dict) else {"input_ids": inputs}
        inputs.setdefault("use_cache", False)
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):  # its notes on batches
        macs, _ = tp.utils.count_ops_and_params(plain, inputs)
    return round(macs)


# ---------------------------------------------------------------- cutting and checking
def _zero_units(plain: nn.Module, group: UnitGroup, units) -> None:
    with torch.no_grad():
        for mname, pname, dim, idx in group.indices(units):
            tensor = getattr(plain.get_submodule(mname), pname)
            tensor.index_fill_(dim, idx.to(tensor.device), 0.0)


def _cut_heads(plain: nn.Module, group: UnitGroup, units) -> None:
    tp = _torch_pruning()
    rows = {}
    for mname, pname, dim, idx in group.indices(units):
        if pname == "weight":
            rows[mname] = (dim, idx.tolist())
    for mname, (dim, idx) in rows.items():
        layer = plain.get_submodule(mname)
        (tp.prune_linear_out_channels if dim == 0 else tp.prune_linear_in_channels)(layer, idx)


def _cut(plain: nn.Module, dg, plan: dict) -> None:
    """Remove ``plan[group] = units`` from ``plain``, in place (Torch-Pruning for channels)."""
    for group, units in plan.items():
        if not len(units):
            continue
        if group.kind == "heads":
            _cut_heads(plain, group, units)
        else:
            module, handler = group.root
            dg.get_pruning_group(module, handler, [int(u) for u in units]).prune()


def _same(expected: torch.Tensor, actual: torch.Tensor) -> tuple[bool, float]:
    if expected.shape != actual.shape:
        return False, float("inf")
    gap = float((expected - actual).abs().max()) if expected.numel() else 0.0
    scale = max(1.0, float(expected.abs().max())) if expected.numel() else 1.0
    return gap <= 1e-4 * scale, gap


def _check_heads_request(model: nn.Module, head_sparsity: float) -> None:
    if not head_sparsity:
        return
    groups, refused = _head_groups(model)
    if refused:
        name, why = refused[0]
        raise ValueError(
            f"head_sparsity={head_sparsity}: the heads of {name} cannot be cut out: {why}. "
            "prune_units removes heads of attention modules with separate q_proj, k_proj, "
            "v_proj and o_proj layers and a head_dim (LLaMA, Mistral, Qwen2, ...); leave "
            "head_sparsity at 0 for this model")
    if not groups:
        raise ValueError(f"head_sparsity={head_sparsity}, but the model has no attention "
                         "module with q_proj, k_proj, v_proj and o_proj layers and a head_dim")


def _norms(plain: nn.Module, group: UnitGroup) -> torch.Tensor:
    """The L2 norm of each unit over all its slices (effective weights)."""
    total = None
    for mname, pname, dim, idx, unit in group.slices:
        t = getattr(plain.get_submodule(mname), pname).detach()
        squares = t.index_select(dim, idx.to(t.device)).movedim(dim, 0).pow(2)
        per_entry = squares.reshape(len(idx), -1).sum(dim=1).double().cpu()
        part = torch.zeros(group.size, dtype=torch.float64).index_add_(0, unit, per_entry)
        total = part if total is None else total + part
    return torch.zeros(group.size, dtype=torch.float64) if total is None else total.sqrt()


def _dead(plain: nn.Module, group: UnitGroup) -> torch.Tensor:
    """The units of ``group`` whose every slice is zero (a unit with no slice is not dead)."""
    live = torch.zeros(group.size, dtype=torch.bool)
    seen = torch.zeros(group.size, dtype=torch.bool)
    for mname, pname, dim, idx, unit in group.slices:
        t = getattr(plain.get_submodule(mname), pname).detach()
        values = t.index_select(dim, idx.to(t.device)).movedim(dim, 0).reshape(len(idx), -1)
        nonzero = (values != 0).any(dim=1).cpu()
        live[unit[nonzero]] = True
        seen[unit] = True
    return (seen & ~live).nonzero().flatten()


def _keep_whole(group: UnitGroup) -> bool:
    """Groups that are never units by the rule (outputs, embeddings), whatever they hold."""
    return group.reason is not None and ("outputs" in group.reason
                                         or "embedding" in group.reason.lower())


def _restore_modes(plain: nn.Module, model: nn.Module) -> None:
    modes = {name: m.training for name, m in model.named_modules()}
    for name, m in plain.named_modules():
        if name in modes:
            m.training = modes[name]


def _check_scores(scores, names: list[str]) -> None:
    if scores is None:
        return
    if not isinstance(scores, dict) or sorted(scores) != sorted(names):
        got = sorted(scores) if isinstance(scores, dict) else type(scores).__name__
        raise ValueError(f"scores must be a dict with one entry per group of units, "
                         f"{names}; got {got}")


def _prune_units_traced(model, sparsity, scores, example_inputs, head_sparsity):
    _check_traceable(model, "prune_units")
    _check_inputs(example_inputs)
    _check_heads_request(model, head_sparsity)
    plain = plain_copy(model)
    _run(plain, example_inputs, "prune_units")
    groups, dg = _groups(plain, example_inputs)
    units = [g for g in groups if g.reason is None and (g.kind == "channels" or head_sparsity)]
    if not units:
        why = "; ".join(f"{g.name}: {g.reason}" for g in groups) or "no layer found"
        raise ValueError(f"prune_units found no group of units to remove in "
                         f"{type(model).__name__} ({why})")
    _check_scores(scores, [g.name for g in units])
    plan, keep = {}, {}
    for g in units:
        fraction, what = ((head_sparsity, "head_sparsity") if g.kind == "heads"
                          else (sparsity, "sparsity"))
        drop = round(fraction * g.size)
        kind = "key/value heads" if g.kind == "heads" else "units"
        if drop >= g.size:
            raise ValueError(f"{what}={fraction} removes all {g.size} {kind} of {g.name}; "
                             "keep at least one")
        if g.kind == "heads" and fraction and not drop:
            raise ValueError(
                f"head_sparsity={fraction} removes round({fraction} * {g.size}) = 0 of the "
                f"{g.size} key/value heads of {g.name}: a unit is one key/value head with the "
                "query heads that read it (grouped-query attention); ask for at least "
                f"{1 / g.size:.3g}")
        score = _norms(plain, g)
        if scores is not None:
            given = scores[g.name]
            if not isinstance(given, torch.Tensor) or given.numel() != g.size:
                raise ValueError(f"scores[{g.name!r}] must be a tensor of {g.size} scores, "
                                 f"one per unit, got {getattr(given, 'shape', given)}")
            score = given.detach().flatten().double().cpu()
        plan[g] = torch.sort(score, stable=True).indices[:drop]
        keep[g.name] = torch.ones(g.size).index_fill_(0, plan[g], 0.0)
    masks = {}
    for g, drop in plan.items():
        for mname, pname, dim, idx in g.indices(drop.tolist()):
            key = (mname, pname)
            if key not in masks:
                masks[key] = torch.ones_like(getattr(plain.get_submodule(mname), pname),
                                             dtype=torch.float32)
            masks[key].index_fill_(dim, idx.to(masks[key].device), 0.0)
    checked = []
    for (mname, pname), mask in masks.items():  # validate everything, then act
        module = model.get_submodule(mname)
        checked.append((module, pname, check_mask(mask, _check_name(module, pname),
                                                   f"the mask of {mname}.{pname}")))
    for g, drop in plan.items():
        _zero_units(plain, g, drop.tolist())
    expected = _run(plain, example_inputs, "prune_units")
    _cut(plain, dg, plan)
    same, gap = _same(expected, _run(plain, example_inputs, "prune_units"))
    if not same:
        raise ValueError(
            f"prune_units: cutting the chosen units out would change the outputs by up to "
            f"{gap:.3g}, so their masks would not compute what shrink gives; an operation "
            f"between the layers of one of these groups mixes its channels: "
            f"{[g.name for g in plan]}. Nothing was masked")
    for module, pname, mask in checked:
        apply_mask(module, mask, name=pname)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    return {name: k.to(device) for name, k in keep.items()}


def _update_config(plain: nn.Module, widths: list[tuple[str, int, int, UnitGroup]]) -> None:
    """After cutting: the Hugging Face config's widths, so that ``save_pretrained`` and
    ``from_pretrained`` rebuild the smaller model; a warning where one number cannot say it."""
    config = getattr(plain, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        return
    notes = []
    channels = [(old, new) for kind, old, new, _ in widths if kind == "channels"]
    for key in ("intermediate_size", "n_inner", "ffn_dim"):
        if not hasattr(config, key):
            continue
        old = getattr(config, key)
        if old is None and key == "n_inner" and isinstance(getattr(config, "n_embd", None), int):
            old = 4 * config.n_embd  # GPT-2: None means 4 x n_embd
        news = sorted({new for o, new in channels if o == old})
        if len(news) == 1:
            setattr(config, key, news[0])
        elif len(news) > 1:
            notes.append(f"{key} is now one of {news} depending on the layer")
    heads = [(new, g) for kind, _, new, g in widths if kind == "heads"]
    if heads and hasattr(config, "num_key_value_heads"):
        news = sorted({new for new, _ in heads})
        if len(news) == 1:
            shape = heads[0][1].shape
            config.num_key_value_heads = news[0]
            config.num_attention_heads = news[0] * shape["q_per_kv"]
            config.head_dim = shape["head_dim"]
        else:
            notes.append(f"num_key_value_heads is now one of {news} depending on the layer")
    if notes:
        warnings.warn(
            f"shrink: {type(config).__name__} holds one width for all layers, but "
            f"{'; '.join(notes)}, so from_pretrained cannot rebuild this model from its "
            "config; save the whole module (torch.save(model)) or prune the same fraction in "
            "every layer (prune_units does by default)", stacklevel=3)


def _shrink_traced(model: nn.Module, example_inputs) -> nn.Module:
    _check_traceable(model, "shrink")
    _check_inputs(example_inputs)
    plain = plain_copy(model)
    expected = _run(plain, example_inputs, "shrink")
    groups, dg = _groups(plain, example_inputs)
    plan, widths = {}, []
    for g in groups:
        dead = _dead(plain, g)
        if len(dead) and g.reason is not None and not _keep_whole(g):
            raise ValueError(
                f"shrink: units {dead.tolist()[:8]} of {g.name} are zero in every member "
                f"({', '.join(g.members[:4])}{', ...' if len(g.members) > 4 else ''}), but "
                f"they cannot be cut out exactly: {g.reason}. Nothing was cut")
        if g.reason is not None:
            continue
        if len(dead) == g.size:
            raise ValueError(f"shrink: every unit of {g.name} is zero, so nothing would flow "
                             "through it; keep at least one")
        if len(dead):
            plan[g] = dead
        widths.append((g.kind, g.size, g.size - len(dead), g))
    _cut(plain, dg, plan)
    same, gap = _same(expected, _run(plain, example_inputs, "shrink"))
    if not same:
        raise ValueError(
            f"shrink: cutting the all-zero units of {[g.name for g in plan]} would change "
            f"the outputs by up to {gap:.3g}: an operation between their layers mixes "
            "channels. Nothing was returned")
    _update_config(plain, widths)
    _restore_modes(plain, model)
    return plain


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
