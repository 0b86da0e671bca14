"""One-shot pruning from a few calibration batches: magnitude, Wanda and SparseGPT.

No training: each layer's mask (and, for SparseGPT, its remaining weights) is computed from
the trained weights and the inputs the layer sees on a few calibration batches.

- ``input_norms(model, batches)``: ``||X_j||_2`` of every input channel ``j`` of every prunable
  layer, gathered with forward hooks that are always removed afterwards.
- ``wanda_mask(weight, input_norm, sparsity)``: Wanda (Sun et al. 2023) scores
  ``|W_ij| * ||X_j||_2`` and removes the lowest scores of every output row (or, with ``n``/``m``,
  of every group of ``m`` inputs).
- ``sparsegpt_prune(layer, inputs, sparsity)``: SparseGPT (Frantar & Alistarh 2023) prunes
  column by column and, after each column, updates the columns not yet visited with the
  damped inverse Hessian ``H = X^T X`` of the layer's inputs (optimal brain surgeon), so the
  kept weights make up for the removed ones.
- ``one_shot_prune(model, batches, method, sparsity)``: any of the three on every prunable
  layer of a model, layer after layer, each calibrated on the inputs the already pruned
  layers before it produce; it returns the masks with a per-layer report.

**Which layers (the papers' targets).** A linear-like layer is an ``nn.Linear``, a
``transformers`` ``Conv1D`` (GPT-2's layers, which store their weight as ``(in, out)``) or one of
the two projections of an ``nn.MultiheadAttention`` (``in_proj_weight``, the stacked
query/key/value projection, and ``out_proj.weight``). When the model stacks repeated blocks,
the default targets are every linear-like layer inside those blocks, and nothing else: the
blocks are the entries of every outermost ``nn.ModuleList`` whose entries are modules of one
class that hold linear-like layers (Hugging Face's ``model.layers``, ``transformer.h``,
``encoder.block``; ``nn.TransformerEncoder.layers``; the book's ``CharTransformerLM``).
Embeddings, the output head and anything else outside the blocks stay dense, as in the Wanda
and SparseGPT papers, unless named with ``layers=``. A model without such blocks (an MLP, a plain
``nn.Sequential``) has every linear-like layer as a target. Targets are keyed by the
parameter's qualified name, e.g. ``"blocks.layers.0.self_attn.in_proj_weight"``.

Every score is computed on the effective ``(out_features, in_features)`` matrix: a ``Conv1D``'s
weight is read transposed (Wanda compares within an output row, SparseGPT's Hessian is over
input features, N:M groups run along the inputs), and its mask comes back in the layout of the
stored weight, ready for ``apply_mask``. ``nn.MultiheadAttention`` never calls its
``out_proj`` Linear's forward, so a hook on that Linear sees nothing; the hooks here sit on the
attention module and recompute its output before the output projection. Masks are applied
with ``maskutils.apply_mask``.

>>> import torch
>>> from torch import nn
>>> from maskutils.oneshot import input_norms, wanda_mask
>>> layer = nn.Linear(8, 4)
>>> norms = input_norms(nn.Sequential(layer), [torch.randn(16, 8)])
>>> list(norms), tuple(norms["0.weight"].shape)
(['0.weight'], (8,))
>>> mask = wanda_mask(layer.weight, norms["0.weight"], 0.5)
>>> mask.sum(dim=1).tolist()     # every output row keeps exactly half of its weights
[4.0, 4.0, 4.0, 4.0]
"""
from __future__ import annotations

import copy
import difflib
import math
import numbers
import sys
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from .apply import Mask, _places, apply_mask, get_mask
from .masks import check_sparsity, magnitude_mask, nm_mask

__all__ = ["PrunedLayers", "input_norms", "layer_inputs", "one_shot_prune", "prunable_weights",
           "sparsegpt_prune", "wanda_mask"]


# --------------------------------------------------------------------------- validation

def _pattern(sparsity, n, m) -> tuple:
    """``("unstructured", s)`` or ``("nm", n, m)``, or a clear error."""
    if n is None and m is None:
        if sparsity is None:
            raise ValueError("give either sparsity (a fraction in [0, 1)) or n and m for N:M")
        s = check_sparsity(sparsity)
        if s >= 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {s}: removing every weight "
                             "of a layer leaves nothing to compute with")
        return ("unstructured", s)
    if sparsity is not None:
        raise ValueError(f"give sparsity or n/m, not both (got sparsity={sparsity!r}, "
                         f"n={n!r}, m={m!r}); N:M sparsity is 1 - n/m")
    for label, value in (("n", n), ("m", m)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{label} must be an int (N:M keeps n of every m), got {value!r}")
    if not 1 <= n <= m:
        raise ValueError(f"need 1 <= n <= m for an N:M pattern, got n={n}, m={m}")
    return ("nm", int(n), int(m))


def _check_columns(pattern: tuple, columns: int, what: str) -> None:
    if pattern[0] == "nm" and columns % pattern[2]:
        raise ValueError(f"{what} has {columns} input channels, not divisible by m={pattern[2]}: "
                         f"an N:M pattern needs groups of m inputs; choose an m that divides "
                         f"{columns}, or leave this layer out (layers=) or prune it unstructured")


def _check_weight(weight, what: str = "weight") -> torch.Tensor:
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(weight).__name__}")
    if weight.dim() != 2 or weight.numel() == 0:
        raise ValueError(f"{what} must be a non-empty 2-D (out_features, in_features) tensor, "
                         f"got shape {tuple(weight.shape)}")
    if not weight.is_floating_point() or not torch.isfinite(weight).all():
        raise ValueError(f"{what} must hold finite floating-point values")
    return weight.detach().contiguous()      # a Conv1D's (out, in) view is a transpose


# --------------------------------------------------------------------------- prunable layers

def _conv1d_class():
    """``transformers``' ``Conv1D``, or ``None`` when transformers is not imported (then no
    model can hold one): maskutils never imports transformers itself."""
    return getattr(sys.modules.get("transformers.pytorch_utils"), "Conv1D", None)


def _is_conv1d(module: nn.Module) -> bool:
    conv1d = _conv1d_class()
    return conv1d is not None and isinstance(module, conv1d)


def _linear_like(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, nn.MultiheadAttention)) or _is_conv1d(module)


@dataclass
class _Target:
    key: str               # qualified parameter name, e.g. "blocks.layers.0.linear1.weight"
    owner: nn.Module       # the module holding the parameter
    name: str              # "weight" or "in_proj_weight"
    kind: str              # "linear" | "conv1d" | "in_proj" | "out_proj"
    hooked: nn.Module      # the module whose forward sees the layer's input

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        """Between the stored weight and the effective (out, in) matrix, both ways."""
        return x.T if self.kind == "conv1d" else x

    def weight(self) -> torch.Tensor:
        """The effective ``(out_features, in_features)`` weight, as the layer computes with it."""
        return self.layout(getattr(self.owner, self.name))

    def stored(self) -> torch.Tensor:
        """The tensor that holds the values (a masked parameter's original)."""
        if parametrize.is_parametrized(self.owner, self.name):
            return self.owner.parametrizations[self.name].original
        return self.owner._parameters[self.name]

    @property
    def label(self) -> str:
        return {"linear": "Linear", "conv1d": "Conv1D", "in_proj": "attention in_proj",
                "out_proj": "attention out_proj"}[self.kind]


def _attention_parts(model: nn.Module) -> dict[int, tuple[str, nn.MultiheadAttention]]:
    """``{id(out_proj): (its name, its attention module)}``."""
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.MultiheadAttention):
            found[id(module.out_proj)] = (f"{name}.out_proj".lstrip("."), module)
    return found


def _all_targets(model: nn.Module) -> list[_Target]:
    """Every linear-like weight of ``model``, in the order of ``named_modules()``."""
    outs = _attention_parts(model)
    targets = []
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, nn.MultiheadAttention):
            if not module._qkv_same_embed_dim:
                raise ValueError(f"{name or 'the model'} is an nn.MultiheadAttention with "
                                 "separate q/k/v weights (kdim/vdim differ from "
                                 "embed_dim); only the stacked in_proj_weight is supported")
            targets.append(_Target(prefix + "in_proj_weight", module, "in_proj_weight",
                                   "in_proj", module))
        elif isinstance(module, nn.Linear):
            if id(module) in outs:
                targets.append(_Target(prefix + "weight", module, "weight", "out_proj",
                                       outs[id(module)][1]))
            else:
                targets.append(_Target(prefix + "weight", module, "weight", "linear", module))
        elif _is_conv1d(module):
            targets.append(_Target(prefix + "weight", module, "weight", "conv1d", module))
    return targets


def _inside(name: str, prefix: str) -> bool:
    return prefix == "" or name == prefix or name.startswith(prefix + ".")


def _stacks(model: nn.Module) -> list[str]:
    """Names of the outermost ``nn.ModuleList``s that stack blocks: entries of one class,
    each a container holding linear-like layers (not itself one)."""
    found: list[str] = []
    for name, module in model.named_modules():
        if any(_inside(name, p) for p in found) or not isinstance(module, nn.ModuleList):
            continue
        entries = list(module)
        if entries and len({type(e) for e in entries}) == 1 and all(
                not _linear_like(e) and any(_linear_like(m) for m in e.modules())
                for e in entries):
            found.append(name)
    return found


def _module_name(key: str, name: str) -> str:
    return key[: -len(name) - 1] if key.endswith("." + name) else ("" if key == name else key)


def _default_targets(model: nn.Module, targets: list[_Target]) -> list[_Target]:
    stacks = _stacks(model)
    if not stacks:
        return targets
    return [t for t in targets if any(_inside(_module_name(t.key, t.name), p) for p in stacks)]


def _found(model: nn.Module) -> str:
    """What the model is made of, for an error: the module classes with parameters."""
    counts: dict[str, int] = {}
    for module in model.modules():
        if any(True for _ in module.parameters(recurse=False)):
            counts[type(module).__name__] = counts.get(type(module).__name__, 0) + 1
    return ", ".join(f"{n} x{c}" for n, c in counts.items()) or "no parameters at all"


def _unknown(layer: str, targets: list[_Target]) -> ValueError:
    keys = [t.key for t in targets] + [_module_name(t.key, t.name) for t in targets]
    close = difflib.get_close_matches(layer, keys, n=3, cutoff=0.6)
    hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
    listed = ", ".join(t.key for t in targets[:6]) + (
        f" ... ({len(targets)} in all)" if len(targets) > 6 else "")
    return ValueError(f"layers: the model has no module or prunable weight named {layer!r}"
                      f"{hint}; its prunable weights: {listed or 'none'}")


def _not_linear(names: list) -> TypeError:
    return TypeError(f"layers: {', '.join(map(repr, names))} "
                     f"{'is' if len(names) == 1 else 'are'} not a linear layer (nn.Linear, "
                     "transformers Conv1D, nn.MultiheadAttention) nor the other place of a tied "
                     "weight being pruned; leave it out")


def _resolve(model: nn.Module, layers, partners_ok: bool = False):
    """``(targets, partners)``: the chosen targets in module order, and the names in
    ``layers`` that are not linear-like but were named as a tied target's other place
    (only with ``partners_ok``)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    targets = _all_targets(model)
    if layers is None:
        chosen = _default_targets(model, targets)
        if not chosen:
            raise ValueError("the model has no nn.Linear, transformers Conv1D or "
                             f"nn.MultiheadAttention layer to prune; it holds {_found(model)}")
        return chosen, set()
    if isinstance(layers, (nn.Module, str)):
        layers = [layers]
    if not isinstance(layers, (list, tuple, set)):
        raise TypeError("layers must be a module, a name, or a list of modules and names "
                        f"(module names or keys of prunable_weights), got {type(layers).__name__}")
    by_module = {id(t.hooked if t.kind == "in_proj" else t.owner): t for t in targets}
    names = {id(m): n for n, m in model.named_modules()}
    by_name = dict(model.named_modules())
    by_key = {t.key: t for t in targets}
    chosen: list[_Target] = []
    partners: set[str] = set()
    for layer in layers:
        module = layer
        if isinstance(layer, str) and layer in by_key:  # a key of prunable_weights
            if by_key[layer] not in chosen:
                chosen.append(by_key[layer])
            continue
        if isinstance(layer, str):
            if partners_ok and layer not in by_name and layer in dict(
                    model.named_parameters(remove_duplicate=False)):
                partners.add(layer)         # a parameter name: may be a tied weight's place
                continue
            if layer not in by_name:
                raise _unknown(layer, targets)
            module = by_name[layer]
        if not isinstance(module, nn.Module):
            raise TypeError("layers must hold modules of the model or their names, got "
                            f"{type(layer).__name__}")
        if not _linear_like(module):
            if partners_ok and id(module) in names:
                partners.add(names[id(module)])
                continue
            raise TypeError(f"layers must be nn.Linear, transformers Conv1D or "
                            f"nn.MultiheadAttention modules of the model (or their names), "
                            f"got {type(module).__name__}"
                            + (f" {names[id(module)]!r}" if id(module) in names else ""))
        if id(module) not in by_module:
            raise ValueError(f"{type(module).__name__} {module} is not a module of this model")
        if by_module[id(module)] not in chosen:
            chosen.append(by_module[id(module)])
    if not chosen and partners:
        raise _not_linear(sorted(partners))
    if not chosen:
        raise ValueError("layers names no prunable layer: pass None for the default targets "
                         "(every linear-like layer of the model's blocks) or name some")
    order = {t.key: i for i, t in enumerate(targets)}
    return sorted(chosen, key=lambda t: order[t.key]), partners


def _targets(model: nn.Module, layers=None) -> list[_Target]:
    return _resolve(model, layers)[0]


def _refuse_reparametrized(t: _Target) -> None:
    """A weight that is computed (weight_norm, spectral_norm, torch.nn.utils.prune) cannot
    take SparseGPT's new values or be read as stored: named, before anything changes."""
    owner = t.owner
    if parametrize.is_parametrized(owner, t.name):
        others = [type(p).__name__ for p in owner.parametrizations[t.name]
                  if not isinstance(p, Mask)]
        if others:
            raise ValueError(
                f"{t.key} is reparametrized by {', '.join(others)} (weight_norm, spectral_norm "
                "or similar): its weight is computed, so one-shot pruning cannot write it; "
                "remove that first (torch.nn.utils.parametrize.remove_parametrizations(module, "
                f"{t.name!r})) or leave the layer out with layers=")
    elif owner._parameters.get(t.name) is None:
        computed = [n for n in owner._parameters if n.startswith(t.name + "_")]
        raise ValueError(
            f"{t.key} is computed by a forward pre-hook from {computed} (torch.nn.utils.prune "
            "or the old torch.nn.utils.weight_norm), not stored: make it permanent first "
            f"(torch.nn.utils.prune.remove(module, {t.name!r}), or "
            "torch.nn.utils.remove_weight_norm) or leave the layer out with layers=")


def _ties(model: nn.Module, chosen: list[_Target], partners: set[str], default: bool):
    """``(targets, {key: other places})``: a tied weight (one tensor read by several places)
    is pruned once, with one mask for every place, only when every place is named; a second
    target on the same tensor becomes a place of the first. Otherwise a clear error."""
    holders = _places(model)
    full = lambda mod_name, pname: f"{mod_name}.{pname}" if mod_name else pname  # noqa: E731
    targets, ties, seen = [], {}, {}
    keys = {t.key for t in chosen}
    for t in chosen:
        places = [(mod_name, full(mod_name, pname))
                  for mod_name, _, pname in holders.get(id(t.stored()), [])]
        others = [f for _, f in places if f != t.key]
        if id(t.stored()) in seen:           # a second layer on the same tensor
            continue
        seen[id(t.stored())] = t
        missing = [f for mod_name, f in places if f != t.key and f not in keys
                   and mod_name not in partners and f not in partners]
        if missing:
            own = _module_name(t.key, t.name)
            ask = ("name it and them in layers= " if default else "add them to layers= ")
            raise ValueError(
                f"{t.key} is tied: it is the same tensor as {', '.join(missing)}. Pruning "
                f"it would prune {'that' if len(missing) == 1 else 'those'} too (SparseGPT would "
                f"write its update there). Leave {own!r} out, or prune them as one tie: {ask}"
                f"(e.g. layers=[..., {own!r}, "
                f"{', '.join(repr(_module_name(f, f.rsplit('.', 1)[-1])) for f in missing)}])")
        targets.append(t)
        if others:
            ties[t.key] = others
    return targets, ties


def _left_dense(model: nn.Module, targets: list[_Target]) -> list[str]:
    """Every weight with at least two dimensions that is not pruned (embeddings, heads ...)."""
    pruned = {id(t.stored()) for t in targets}
    left = []
    for key, places in _places(model).items():
        mod_name, module, pname = places[0]
        tensor = (module.parametrizations[pname].original
                  if parametrize.is_parametrized(module, pname) else module._parameters[pname])
        if key not in pruned and tensor.dim() >= 2:
            names = [f"{a}.{b}" if a else b for a, _, b in places]
            left.append(names[0] + (f" (= {', '.join(names[1:])})" if names[1:] else ""))
    return left


def prunable_weights(model: nn.Module, layers=None) -> dict[str, tuple[nn.Module, str]]:
    """``{qualified name: (module, parameter name)}`` of the layers this module prunes.

    By default the papers' targets: every linear-like weight (``nn.Linear``, ``transformers``'
    ``Conv1D``, both projections of ``nn.MultiheadAttention``) inside the model's repeated
    blocks, or, in a model without such blocks, every one (the module docstring says how blocks
    are found). Embeddings and the output head of a transformer are not listed. ``layers``
    (modules, module names or these keys) selects others, outside the blocks too. In the order
    of ``model.named_modules()``. Pass the pair to ``apply_mask(module, mask, name=...)``; a
    ``Conv1D`` stores its weight as ``(in, out)``, so its mask has that shape.

    Raises ``ValueError`` when nothing is prunable or a name matches nothing, saying what
    the model holds.

    >>> attention = nn.MultiheadAttention(8, 2)
    >>> list(prunable_weights(attention))
    ['in_proj_weight', 'out_proj.weight']
    >>> lm = nn.ModuleDict({"embed": nn.Embedding(10, 8), "head": nn.Linear(8, 10),
    ...                     "blocks": nn.ModuleList([nn.TransformerEncoderLayer(8, 2, 16)])})
    >>> for key in prunable_weights(lm):   # inside the blocks only: no head
    ...     print(key)
    blocks.0.self_attn.in_proj_weight
    blocks.0.self_attn.out_proj.weight
    blocks.0.linear1.weight
    blocks.0.linear2.weight
    """
    return {t.key: (t.owner, t.name) for t in _targets(model, layers)}


# --------------------------------------------------------------------------- hooks

class _Stop(Exception):
    """Raised inside a hook once every wanted input is seen: the rest of the forward is skipped."""


class _Refusal(ValueError):
    """A clear error raised inside a hook; it leaves ``model(x)`` as it is, unwrapped."""


def _qkv(args, kwargs):
    names = ("query", "key", "value")
    got = list(args[:3]) + [kwargs.get(k) for k in names[len(args[:3]):]]
    return got


def _pre_projection(attention: nn.MultiheadAttention, args, kwargs) -> torch.Tensor:
    """The attention module's output before ``out_proj``: the forward runs once more with
    ``out_proj`` swapped for an identity ``Linear`` (put back afterwards, whatever happens)."""
    proj = attention.out_proj
    weight = proj.weight
    identity = nn.Linear(weight.shape[1], weight.shape[1], bias=proj.bias is not None,
                         device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        identity.weight.copy_(torch.eye(weight.shape[1]))
        if identity.bias is not None:
            identity.bias.zero_()
    attention._modules["out_proj"] = identity
    try:
        return attention.forward(*args, **dict(kwargs, need_weights=False))[0]
    finally:
        attention._modules["out_proj"] = proj


def _describe(batch) -> str:
    if isinstance(batch, Mapping):
        return "{" + ", ".join(f"{k}: {_describe(v)}" for k, v in batch.items()) + "}"
    if isinstance(batch, torch.Tensor):
        return f"shape {tuple(batch.shape)} {str(batch.dtype).replace('torch.', '')}"
    return type(batch).__name__


def _model_call(batch, device):
    """``(args, kwargs)`` for ``model(...)`` from one calibration batch: a tensor, an ``(x, y)``
    pair (``x`` is the input) or a dict of keyword arguments (a tokenizer's output)."""
    if isinstance(batch, (tuple, list)) and batch:
        batch = batch[0]
    if isinstance(batch, Mapping):
        values = dict(batch)
    elif isinstance(batch, torch.Tensor):
        values = {None: batch}
    else:
        raise TypeError("batches must yield tensors, (x, y) tuples of tensors or dicts of "
                        f"keyword arguments (a tokenizer's output), got {type(batch).__name__}")
    for key, value in values.items():
        if isinstance(value, torch.Tensor):
            if value.is_floating_point() and not torch.isfinite(value).all():
                bad = int((~torch.isfinite(value)).sum())
                raise ValueError(
                    f"a calibration batch holds NaN or infinity ({bad} of {value.numel()} "
                    f"entries{'' if key is None else ' of ' + repr(key)}): calibrating on it "
                    "would make every statistic NaN; clean the batch or leave it out")
            values[key] = value.to(device)
    if None in values:
        return (values[None],), {}
    return (), values


def _is_out_of_memory(err: Exception) -> bool:
    kinds = tuple(k for k in (getattr(torch, "OutOfMemoryError", None),
                              getattr(torch.cuda, "OutOfMemoryError", None)) if k)
    return isinstance(err, kinds)


def _width_checks(model: nn.Module, where: list):
    """Forward pre-hooks on every linear-like layer that name a layer fed the wrong width."""
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) or _is_conv1d(module):
            wanted = module.in_features if isinstance(module, nn.Linear) else \
                module.weight.shape[0]

            def hook(mod, args, name=name, wanted=wanted):
                got = args[0].shape[-1] if args and isinstance(args[0], torch.Tensor) else None
                if got is not None and got != wanted:
                    raise _Refusal(
                        f"calibration batch {where[0]} ({where[1]}): layer {name!r} "
                        f"({type(mod).__name__} with {wanted} input features) received "
                        f"inputs {got} wide; the batches must be what model(x) takes, "
                        "with the width the model was built for")
            handles.append(module.register_forward_pre_hook(hook))
    return handles


def _collect(model: nn.Module, batches, targets: list[_Target], consume, stop: bool) -> int:
    """Run ``model`` on ``batches`` and call ``consume(target, X)`` with every layer input ``X``
    of shape ``(tokens, in_features)``. Hooks, the fast-path flag and the training mode are
    restored whatever happens. Returns the number of batches. A batch that the model cannot
    take, or that holds NaN, gets a ``ValueError`` that says so."""
    handles, seen = [], set()
    wanted = {t.key for t in targets}
    where = [0, ""]                           # the batch being run, for error messages

    def take(target, x):
        x = x.detach().reshape(-1, x.shape[-1])
        if not torch.isfinite(x).all():
            raise _Refusal(f"{target.key}: its inputs on calibration batch {where[0]} hold NaN "
                           "or infinity although the batch is finite: the layers before it "
                           "produce them")
        consume(target, x)

    def done(target):
        seen.add(target.key)
        if stop and seen == wanted:
            raise _Stop

    def linear_hook(target):
        def hook(module, args):
            take(target, args[0])
            done(target)
        return hook

    def attention_hook(in_target, out_target):
        def hook(module, args, kwargs):
            query, key, value = _qkv(args, kwargs)
            if in_target is not None:
                if not (query is key is value or (query.shape == key.shape == value.shape
                                                  and torch.equal(query, key)
                                                  and torch.equal(key, value))):
                    raise _Refusal(f"{in_target.key}: query, key and value differ (cross-"
                                   "attention); in_proj_weight is pruned only for "
                                   "self-attention, where all three projections share inputs")
                take(in_target, query)
            if out_target is not None:
                take(out_target, _pre_projection(module, args, kwargs))
            for target in (in_target, out_target):
                if target is not None:
                    done(target)
            return None
        return hook

    attention: dict[int, list] = {}
    for t in targets:
        if t.kind in ("linear", "conv1d"):
            continue
        slot = attention.setdefault(id(t.hooked), [t.hooked, None, None])
        slot[1 if t.kind == "in_proj" else 2] = t
    mha = torch.backends.mha
    fast = mha.get_fastpath_enabled() if hasattr(mha, "get_fastpath_enabled") else None
    was_training = model.training
    count = 0
    try:
        handles += _width_checks(model, where)
        for t in targets:
            if t.kind in ("linear", "conv1d"):
                handles.append(t.owner.register_forward_pre_hook(linear_hook(t)))
        for module, in_t, out_t in attention.values():
            handles.append(module.register_forward_pre_hook(attention_hook(in_t, out_t),
                                                            with_kwargs=True))
        if fast is not None:  # fused kernels skip the submodules' forward (and the hooks)
            mha.set_fastpath_enabled(False)
        model.eval()
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        with torch.no_grad():
            for batch in batches:
                where[:] = [count, _describe(batch[0] if isinstance(batch, (tuple, list))
                                             and batch else batch)]
                try:
                    args, kwargs = _model_call(batch, device)
                except ValueError as err:
                    raise ValueError(f"calibration batch {count}: {err}") from None
                seen.clear()
                try:
                    model(*args, **kwargs)
                except _Stop:
                    pass
                except _Refusal:
                    raise
                except Exception as err:
                    if _is_out_of_memory(err):
                        raise
                    raise ValueError(
                        f"model(x) failed on calibration batch {count} ({where[1]}): "
                        f"{type(err).__name__}: {err}. The batches must be what the model's "
                        "forward takes (token ids for a language model; a dict is passed "
                        "as keyword arguments)") from err
                count += 1
    finally:
        for handle in handles:
            handle.remove()
        if fast is not None:
            mha.set_fastpath_enabled(fast)
        model.train(was_training)
    if count == 0:
        raise ValueError("batches yielded nothing: pass a few calibration batches")
    missing = wanted - seen
    if missing:
        raise ValueError(f"the forward pass never reached {sorted(missing)}: are these layers "
                         "used by model(x)?")
    return count


def input_norms(model: nn.Module, batches, layers=None) -> dict[str, torch.Tensor]:
    """``{qualified weight name: ||X_j||_2}``: the L2 norm of every input channel ``j`` of every
    prunable layer over all tokens of ``batches`` (an iterable of input tensors, of
    ``(x, y)`` tuples whose ``x`` is the input, or of dicts passed as keyword arguments).

    The layers are ``prunable_weights(model, layers)``: by default every linear-like layer
    (``nn.Linear``, ``transformers``' ``Conv1D``, both projections of ``nn.MultiheadAttention``)
    inside the model's repeated blocks, or every one in a model without blocks. The
    ``out_proj`` of an ``nn.MultiheadAttention`` never has its forward called: its input is
    recomputed from the attention module's own inputs. The model runs in eval mode without
    gradients and with PyTorch's fused transformer fast path off; the hooks, the fast-path
    setting and the training mode are restored afterwards, even on error. ``layers``:
    modules, module names or keys of ``prunable_weights`` (an ``nn.MultiheadAttention`` module
    stands for its ``in_proj_weight``). A batch the model cannot take, or one holding NaN,
    raises a ``ValueError`` that says which.

    >>> model = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 1))
    >>> norms = input_norms(model, [torch.ones(4, 3)])
    >>> norms["0.weight"]                       # sqrt(4 * 1**2) per channel
    tensor([2., 2., 2.])
    """
    targets = _targets(model, layers)
    sums = {}

    def consume(target, x):
        square = x.float().pow(2).sum(dim=0)
        sums[target.key] = sums[target.key] + square if target.key in sums else square

    _collect(model, batches, targets, consume, stop=False)
    return {t.key: sums[t.key].sqrt() for t in targets}


def layer_inputs(model: nn.Module, batches, layers=None) -> dict[str, torch.Tensor]:
    """``{qualified weight name: X}``: the inputs of every prunable layer on ``batches``, one
    row per token, ``(tokens, in_features)`` (the hooks and the default layers of
    ``input_norms``; mind the memory).

    >>> x = layer_inputs(nn.Sequential(nn.Linear(3, 2)), [torch.ones(5, 3)])["0.weight"]
    >>> tuple(x.shape)
    (5, 3)
    """
    targets = _targets(model, layers)
    found: dict[str, list] = {t.key: [] for t in targets}
    _collect(model, batches, targets, lambda t, x: found[t.key].append(x.clone()), stop=False)
    return {key: torch.cat(xs) for key, xs in found.items()}


# --------------------------------------------------------------------------- single layers

def _layer_target(layer, function: str) -> _Target:
    """A single layer as a target: its weight, read as the effective (out, in) matrix."""
    if isinstance(layer, nn.MultiheadAttention):
        if not layer._qkv_same_embed_dim:
            raise ValueError("nn.MultiheadAttention with separate q/k/v weights (kdim/vdim) is "
                             "not supported; only the stacked in_proj_weight")
        return _Target("MultiheadAttention.in_proj_weight", layer, "in_proj_weight", "in_proj",
                       layer)
    if isinstance(layer, nn.Linear):
        return _Target("Linear.weight", layer, "weight", "linear", layer)
    if _is_conv1d(layer):
        return _Target("Conv1D.weight", layer, "weight", "conv1d", layer)
    raise TypeError(f"{function} takes an nn.Linear, a transformers Conv1D or an "
                    f"nn.MultiheadAttention (its in_proj_weight), got {type(layer).__name__}")


# --------------------------------------------------------------------------- Wanda

def wanda_mask(weight, input_norm: torch.Tensor, sparsity: float | None = None,
               *, n: int | None = None, m: int | None = None) -> torch.Tensor:
    """The Wanda mask of ``weight`` (``out_features x in_features``): score ``|W_ij| * ||X_j||``,
    remove the ``round(sparsity * in_features)`` lowest scores of every output row (ties by
    position), or with ``n``/``m`` keep the ``n`` highest of every ``m`` consecutive inputs.

    With all norms equal it is per-row magnitude pruning. ``input_norm``: the ``in_features``
    norms from ``input_norms``. Returns a 0/1 mask of the weight's dtype and device.

    ``weight`` may also be the layer itself (``nn.Linear``, ``transformers``' ``Conv1D``, or
    ``nn.MultiheadAttention`` for its ``in_proj_weight``): then the mask comes back in the
    shape of the stored weight, ready for ``apply_mask(layer, mask)``. Pass a ``Conv1D`` this
    way: its weight is stored as ``(in, out)``, and its tensor alone does not say so (a square
    one would be scored along the wrong dimension).

    >>> w = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    >>> wanda_mask(w, torch.tensor([10.0, 1.0, 1.0, 1.0]), 0.5)
    tensor([[1., 0., 0., 1.]])
    >>> wanda_mask(w, torch.ones(4), n=2, m=4)
    tensor([[0., 0., 1., 1.]])
    """
    target = None
    if isinstance(weight, nn.Module):
        target = _layer_target(weight, "wanda_mask")
        weight = _check_weight(target.weight(), target.key)
    else:
        weight = _check_weight(weight)
    pattern = _pattern(sparsity, n, m)
    if not isinstance(input_norm, torch.Tensor):
        raise TypeError(f"input_norm must be a torch.Tensor, got {type(input_norm).__name__}")
    rows, cols = weight.shape
    if input_norm.shape != (cols,):
        raise ValueError(f"input_norm has shape {tuple(input_norm.shape)} but the weight has "
                         f"{cols} input channels (shape {tuple(weight.shape)}, read as (out, in)):"
                         " pass the norms of this layer's inputs, one per input channel; for a "
                         "transformers Conv1D (stored (in, out)) pass the layer itself")
    norm = input_norm.detach().to(device=weight.device, dtype=torch.float32)
    if not torch.isfinite(norm).all() or (norm < 0).any():
        raise ValueError("input_norm must hold finite, non-negative norms")
    _check_columns(pattern, cols, "weight")
    score = weight.abs().float() * norm
    if pattern[0] == "unstructured":
        mask = torch.ones_like(weight)
        k = int(round(pattern[1] * cols))
        order = torch.argsort(score, dim=1, stable=True)[:, :k]
        mask.scatter_(1, order, 0.0)
    else:
        _, keep_n, size = pattern
        groups = score.reshape(rows, cols // size, size)
        keep = torch.topk(groups, keep_n, dim=2).indices
        grouped = torch.zeros_like(groups, dtype=weight.dtype).scatter_(2, keep, 1.0)
        mask = grouped.reshape(rows, cols)
    return mask if target is None else target.layout(mask).contiguous()


# --------------------------------------------------------------------------- SparseGPT

def _hessian(inputs, cols: int, device) -> tuple[torch.Tensor, int]:
    if isinstance(inputs, torch.Tensor):
        inputs = [inputs]
    if not isinstance(inputs, (list, tuple)):
        raise TypeError("inputs must be a tensor (..., in_features) of the layer's inputs or a "
                        f"list of such tensors, got {type(inputs).__name__}")
    hessian = torch.zeros(cols, cols, device=device)
    count = 0
    for i, x in enumerate(inputs):
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError("inputs must be floating-point tensors of the layer's inputs")
        if x.dim() < 1 or x.shape[-1] != cols:
            raise ValueError(f"inputs have shape {tuple(x.shape)} but the layer has {cols} input "
                             "channels: the last dimension must be in_features (a Conv1D's "
                             "in_features is its weight's first dimension)")
        if not torch.isfinite(x).all():
            raise ValueError(f"inputs{'' if len(inputs) == 1 else f'[{i}]'} hold NaN or "
                             "infinity: SparseGPT's Hessian X^T X would be NaN; clean them or "
                             "leave that batch out")
        x = x.detach().reshape(-1, cols).to(device=device, dtype=torch.float32)
        hessian += x.T @ x
        count += x.shape[0]
    if count == 0:
        raise ValueError("inputs hold no rows: pass the layer's inputs on a few batches")
    return hessian, count


def _sparsegpt(weight: torch.Tensor, hessian: torch.Tensor, pattern: tuple, damp: float,
               block_size: int, forced: torch.Tensor | None):
    """``(new weight, keep mask)`` from the effective ``weight`` and ``H = X^T X``; pure."""
    w = weight.detach().to(torch.float32).clone(memory_format=torch.contiguous_format)
    rows, cols = w.shape
    if not torch.isfinite(hessian).all():
        raise ValueError("the Hessian X^T X of the layer's inputs holds NaN or infinity: a "
                         "calibration input is not finite (or overflows in float32)")
    h = hessian.clone()
    dead = torch.diag(h) == 0                       # channels that are always zero
    h[dead, dead] = 1.0
    h += damp * torch.diag(h).mean() * torch.eye(cols, device=h.device)
    chol, info = torch.linalg.cholesky_ex(h)
    if info.item() != 0:
        raise ValueError("the damped Hessian of the inputs is not positive definite; raise damp "
                         "(e.g. damp=0.1) or pass more calibration inputs")
    upper = torch.linalg.cholesky(torch.cholesky_inverse(chol), upper=True)
    pruned = torch.zeros(rows, cols, dtype=torch.bool, device=w.device)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        w1, u1 = w[:, i1:i2].clone(), upper[i1:i2, i1:i2]
        q1, err1 = torch.zeros_like(w1), torch.zeros_like(w1)
        diag = torch.diag(u1)

        def score(a, b):
            s = w1[:, a:b] ** 2 / diag[a:b] ** 2
            s = s.masked_fill(dead[i1 + a:i1 + b], 0.0)
            if forced is not None:
                s = s.masked_fill(forced[:, i1 + a:i1 + b], -1.0)
            return s

        p1 = torch.zeros_like(w1, dtype=torch.bool)
        if pattern[0] == "unstructured":  # the block's share, so the layer total is exact
            k = (int(round(pattern[1] * rows * i2)) - int(round(pattern[1] * rows * i1)))
            if k:
                flat = torch.argsort(score(0, i2 - i1).flatten(), stable=True)[:k]
                p1.view(-1)[flat] = True
        for i in range(i2 - i1):
            if pattern[0] == "nm" and i % pattern[2] == 0:
                _, keep_n, size = pattern
                drop = torch.topk(score(i, i + size), size - keep_n, dim=1, largest=False).indices
                p1[:, i:i + size].scatter_(1, drop, True)
            col = w1[:, i]
            q = col.masked_fill(p1[:, i], 0.0)
            q1[:, i] = q
            err = (col - q) / u1[i, i]
            w1[:, i:] -= err.unsqueeze(1) @ u1[i, i:].unsqueeze(0)
            err1[:, i] = err
        w[:, i1:i2] = q1
        pruned[:, i1:i2] = p1
        w[:, i2:] -= err1 @ upper[i1:i2, i2:]
    return w.to(weight.dtype), (~pruned).to(weight.dtype)


def _check_damp(damp, block_size, pattern):
    if isinstance(damp, bool) or not isinstance(damp, numbers.Real) or not (
            math.isfinite(damp) and damp >= 0):
        raise ValueError(f"damp must be a non-negative number (a fraction of the mean "
                         f"diagonal of the Hessian, 0.01 in the paper), got {damp!r}")
    if isinstance(block_size, bool) or not isinstance(block_size, numbers.Integral) or \
            block_size < 1:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    if pattern[0] == "nm" and block_size % pattern[2]:
        raise ValueError(f"block_size={block_size} must be a multiple of m={pattern[2]} so "
                         "that no group of m inputs straddles two blocks")


def _write(t: _Target, new: torch.Tensor | None, keep: torch.Tensor, model=None) -> None:
    """Put SparseGPT's new effective weight (if any) into the stored tensor and apply the
    mask, both in the stored layout; ``model``: every tied place gets the one mask."""
    if new is not None:
        with torch.no_grad():
            t.stored().copy_(t.layout(new))
    apply_mask(t.owner, t.layout(keep).contiguous(), name=t.name, model=model)


def _forced(t: _Target):
    existing = get_mask(t.owner, t.name)
    return None if existing is None else t.layout(existing) == 0


def sparsegpt_prune(layer: nn.Module, inputs, sparsity: float | None = None, *,
                    n: int | None = None, m: int | None = None, damp: float = 0.01,
                    block_size: int = 128) -> torch.Tensor:
    """Prune ``layer`` with SparseGPT from its ``inputs`` and return the mask it applied.

    ``H = X^T X`` of the inputs, damped by ``damp`` times its mean diagonal, gives the
    inverse Hessian of the layer's squared output error. Columns are visited left to
    right in blocks of ``block_size``: at the start of each block the weights with the
    lowest ``w^2 / [H^-1]_jj^2`` are chosen for removal (``round(sparsity * numel)`` in
    all, the share of each block fixed in advance), or with ``n``/``m`` the ``m - n``
    lowest of every group of ``m`` inputs in each row when the group is reached; each
    removed weight's error is then spread over the columns not yet visited (optimal brain
    surgeon), block by block (lazy batch updates).

    - ``layer``: an ``nn.Linear`` or a ``transformers`` ``Conv1D`` (its ``weight``; a
      ``Conv1D`` stores it ``(in, out)``, and it is pruned as the ``(out, in)`` matrix it
      computes with: the returned mask has the stored shape), or an ``nn.MultiheadAttention``
      (its ``in_proj_weight``: the query, key and value projections share one input, so one
      Hessian serves the stacked ``3 d x d`` matrix, and pruning it is pruning the three
      projections; its ``out_proj`` is an ``nn.Linear``, pruned separately with its own inputs).
    - ``inputs``: the layer's inputs ``(..., in_features)``, a tensor or a list of tensors
      (``layer_inputs`` collects them); the bias is left as it is.
    - An already masked weight is read as it acts (``original * mask``); its removed entries
      stay removed and count towards ``sparsity``.

    The new weights go into the parameter (the same ``Parameter`` object) and the mask is
    applied with ``apply_mask``. Bad input raises before anything is changed. A layer sees
    only itself: if its weight is shared with another module (an output head tied to the
    embedding), that module would read the new values too, so prune tied weights with
    ``one_shot_prune(model, ..., layers=...)``, which finds the ties and refuses or prunes
    every place alike.

    >>> torch.manual_seed(0) is not None
    True
    >>> layer, x = nn.Linear(16, 4), torch.randn(256, 16)
    >>> mask = sparsegpt_prune(layer, x, 0.5)
    >>> int((mask == 0).sum()), int((layer.weight == 0).sum())
    (32, 32)
    """
    t = _layer_target(layer, "sparsegpt_prune")
    pattern = _pattern(sparsity, n, m)
    _refuse_reparametrized(t)
    weight = _check_weight(t.weight(), t.key)
    _check_columns(pattern, weight.shape[1], t.key)
    _check_damp(damp, block_size, pattern)
    hessian, _ = _hessian(inputs, weight.shape[1], weight.device)
    new, keep = _sparsegpt(weight, hessian, pattern, float(damp), int(block_size), _forced(t))
    _write(t, new, keep)
    return t.layout(keep).contiguous()


# --------------------------------------------------------------------------- whole models

_METHODS = ("magnitude", "wanda", "sparsegpt")


class PrunedLayers(dict):
    """What ``one_shot_prune`` did: ``{parameter key: mask}`` (a plain dict of the masks, in
    the stored weights' shapes) with the per-layer report.

    ``rows``: ``(key, kind, (out, in), sparsity reached)`` per pruned layer, the sparsity read
    from the weight as it acts afterwards; ``tied``: ``{key: the other places of that tensor}``;
    ``left_dense``: every other weight with at least two dimensions (embeddings, the head ...);
    ``scope``: which layers were targeted and why. ``report()`` (also its ``repr``) lays it out.
    """

    def __init__(self, masks, rows, tied, left_dense, what, scope):
        super().__init__(masks)
        self.rows, self.tied, self.left_dense = list(rows), dict(tied), list(left_dense)
        self.what, self.scope = what, scope

    def report(self) -> str:
        """One line per pruned layer (name, kind, shape, sparsity reached), then the ties and
        what was left dense."""
        import textwrap

        width = max([len(r[0]) for r in self.rows] + [5])
        kinds = max([len(r[1]) for r in self.rows] + [4])
        count = f"{len(self.rows)} layer{'' if len(self.rows) == 1 else 's'}"
        lines = [f"one_shot_prune: {self.what}, {count}"]
        lines += textwrap.wrap(f"targets: {self.scope}", 88, subsequent_indent="  ")
        lines.append(f"  {'layer':{width}}  {'kind':{kinds}}  {'out x in':>9}  sparsity")
        for key, kind, (rows, cols), reached in self.rows:
            lines.append(f"  {key:{width}}  {kind:{kinds}}  {f'{rows} x {cols}':>9}  "
                         f"{reached:8.1%}")
            if key in self.tied:
                lines.append(f"    tied, pruned alike: {', '.join(self.tied[key])}")
        dense = ", ".join(self.left_dense[:6]) if self.left_dense else "nothing"
        if len(self.left_dense) > 6:
            dense += f" ... ({len(self.left_dense)} in all)"
        lines += textwrap.wrap(f"left dense: {dense}", 88, subsequent_indent="  ",
                               break_on_hyphens=False)
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.report()

    __str__ = __repr__


def one_shot_prune(model: nn.Module, batches, method: str = "wanda",
                   sparsity: float | None = None, *, n: int | None = None, m: int | None = None,
                   layers=None, damp: float = 0.01, block_size: int = 128,
                   sequential: bool = True) -> PrunedLayers:
    """Prune the papers' targets of ``model`` (or ``layers``) in one shot; return the masks.

    - ``method``: ``"magnitude"`` (layer-wise ``magnitude_mask``, or ``nm_mask`` for N:M; needs
      no batches), ``"wanda"`` (``wanda_mask`` per output row) or ``"sparsegpt"``
      (``sparsegpt_prune``).
    - ``sparsity`` (a fraction in [0, 1)) or ``n``/``m``.
    - ``batches``: calibration inputs, what ``model`` takes: tensors, ``(x, y)`` pairs, or dicts
      passed as keyword arguments (a tokenizer's output).
    - ``layers=None``: every linear-like layer (``nn.Linear``, ``transformers``' ``Conv1D``,
      both projections of ``nn.MultiheadAttention``) inside the model's repeated blocks (the
      entries of its outermost ``nn.ModuleList`` of blocks: Hugging Face's ``model.layers`` or
      ``transformer.h``, ``nn.TransformerEncoder.layers``); embeddings and the output head stay
      dense, as in the Wanda and SparseGPT papers. A model without such blocks (an MLP) has
      all its linear-like layers pruned. Otherwise ``layers`` lists modules, module names or
      keys of ``prunable_weights``; a name that matches nothing is an error that lists what
      exists.
    - Tied weights (an output head that is the input embedding): naming one place alone is
      refused with an error naming every place, since pruning it changes them all. Name every
      place (``layers=["lm_head", "model.embed_tokens"]``) to prune the tensor as one: one mask
      on every place, chosen from the linear layer's inputs, and SparseGPT's update written
      into the shared tensor, so all places stay equal.
    - ``sequential=True``: layers are pruned in module order, each calibrated on the inputs it
      receives from the already pruned layers before it (as both papers do, block by block);
      ``False``: every layer's statistics come from the dense model in one pass.

    Returns a ``PrunedLayers``: the dict ``{key: mask}`` (each mask in the stored weight's
    shape, so ``(in, out)`` for a ``Conv1D``), whose ``report()`` (and ``print``) lists each
    pruned layer with its shape and the sparsity it reached, the ties, and what stayed dense.
    The work happens on a deep copy (budget twice the model's memory); the model is changed
    only when every layer succeeded, and bad input (a batch the model cannot take or holding
    NaN, an N:M pattern that does not divide a layer's inputs, an unknown layer name) raises
    before anything changes.

    >>> torch.manual_seed(0) is not None
    True
    >>> model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    >>> masks = one_shot_prune(model, [torch.randn(32, 8)], "sparsegpt", n=2, m=4)
    >>> [float(mask.mean()) for mask in masks.values()]
    [0.5, 0.5]
    >>> print(masks.report())
    one_shot_prune: sparsegpt, 2:4, 2 layers
    targets: every linear-like layer (no repeated blocks)
      layer     kind     out x in  sparsity
      0.weight  Linear      8 x 8     50.0%
      2.weight  Linear      4 x 8     50.0%
    left dense: nothing
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    pattern = _pattern(sparsity, n, m)
    if not isinstance(sequential, bool):
        raise TypeError(f"sequential must be True or False, got {sequential!r}")
    chosen, partners = _resolve(model, layers, partners_ok=True)
    for t in chosen:
        _refuse_reparametrized(t)
    targets, tied = _ties(model, chosen, partners, default=layers is None)
    named = {p for others in tied.values() for p in others}
    unused = [p for p in partners
              if not any(o == p or o.startswith(p + ".") for o in named)]
    if unused:
        raise _not_linear(unused)
    for t in targets:
        w = _check_weight(t.weight(), t.key)
        _check_columns(pattern, w.shape[1], t.key)
    _check_damp(damp, block_size, pattern)
    if method != "magnitude" and batches is None:
        raise ValueError(f"{method} needs calibration batches")
    if method != "magnitude" and not isinstance(batches, (list, tuple)):
        batches = list(batches)  # iterated once per layer
    stacks = _stacks(model)
    scope = ("the layers named" if layers is not None else
             f"every linear-like layer in the blocks of {', '.join(stacks)}" if stacks else
             "every linear-like layer (no repeated blocks)")
    what = (f"{method}, {pattern[1]:.0%} unstructured".replace("%", " %")
            if pattern[0] == "unstructured" else f"{method}, {pattern[1]}:{pattern[2]}")
    work = copy.deepcopy(model)
    work_all = {t.key: t for t in _all_targets(work)}
    work_targets = [work_all[t.key] for t in targets]
    results: dict[str, tuple] = {}

    def prune_one(t, stats):
        w = t.weight().detach().contiguous()
        if method == "magnitude":
            keep = magnitude_mask(w, pattern[1]) if pattern[0] == "unstructured" else \
                nm_mask(w, n=pattern[1], m=pattern[2])
            new = None
        elif method == "wanda":
            keep, new = wanda_mask(w, stats.sqrt(), sparsity, n=n, m=m), None
        else:
            new, keep = _sparsegpt(w, stats, pattern, float(damp), int(block_size), _forced(t))
        _write(t, new, keep, work if t.key in tied else None)
        results[t.key] = (new, keep)

    def statistic(t, x):  # Wanda: diagonal only; SparseGPT: the whole X^T X
        x = x.float()
        value = x.pow(2).sum(dim=0) if method == "wanda" else x.T @ x
        stats[t.key] = stats[t.key] + value if t.key in stats else value

    if method == "magnitude":
        for t in work_targets:
            prune_one(t, None)
    elif sequential:
        for t in work_targets:
            stats: dict = {}
            _collect(work, batches, [t], statistic, stop=True)
            prune_one(t, stats[t.key])
    else:
        stats = {}
        _collect(work, batches, work_targets, statistic, stop=False)
        for t in work_targets:
            prune_one(t, stats[t.key])
    rows = []
    for t in targets:  # every layer succeeded: now change the user's model
        new, keep = results[t.key]
        _write(t, new, keep, model if t.key in tied else None)
        effective = t.weight().detach()
        rows.append((t.key, t.label, tuple(effective.shape),
                     float((effective == 0).float().mean())))
    masks = {t.key: t.layout(results[t.key][1]).contiguous() for t in targets}
    return PrunedLayers(masks, rows, tied, _left_dense(model, targets), what, scope)
