"""Dependency groups: the slices of a model's tensors that must be cut out together.

Removing one output channel of a convolution also removes the BatchNorm entries after it
and the input channel of every layer that reads it; across a residual sum, the same channel
of every convolution that adds into the sum goes too. Such a set of coupled slices is a
*dependency group*, and its members at one index form a *unit*. Torch-Pruning (Fang et al.
2023) finds the groups by tracing the model once on example inputs; this module reads them
(``unit_groups``), counts multiply-accumulates (``count_macs``), and does the traced work
behind ``maskutils.structured.prune_units`` and ``shrink`` with ``example_inputs``: rank and
mask whole units, then cut the all-zero ones out of a plain copy and check that its outputs
are the masked model's.

>>> import torch
>>> from maskutils.models import DigitsResNet
>>> groups = unit_groups(DigitsResNet(channels=8), torch.zeros(2, 64))
>>> sorted(groups)
['blocks.0.conv1', 'blocks.1.conv1', 'head', 'stem.0']
>>> groups["head"].reason is not None      # the classes are never units
True
"""
from __future__ import annotations

import contextlib
import inspect
import io
import sys
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from .apply import (_check_module, _check_name, _computed_by_hooks, _refuse_if_ddp_wrapped,
                    apply_mask, check_mask)
from .storage import _EvalNoGrad, plain_copy

__all__ = ["UnitGroup", "count_macs", "unit_groups"]


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
