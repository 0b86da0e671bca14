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
  layers before it produce.

Prunable layers are ``nn.Linear`` modules and the two projections of ``nn.MultiheadAttention``
(``in_proj_weight``, the stacked query/key/value projection, and ``out_proj.weight``), keyed by
the parameter's qualified name, e.g. ``"blocks.layers.0.self_attn.in_proj_weight"``.
``nn.MultiheadAttention`` never calls its ``out_proj`` Linear's forward, so a hook on that
Linear sees nothing; the hooks here sit on the attention module and recompute its output
before the output projection. Masks are applied with ``maskutils.apply_mask``.

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
import math
import numbers
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from .apply import apply_mask, get_mask
from .masks import check_sparsity, magnitude_mask, nm_mask

__all__ = ["input_norms", "layer_inputs", "one_shot_prune", "prunable_weights",
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
                         f"{columns} or prune this layer unstructured")


def _check_weight(weight, what: str = "weight") -> torch.Tensor:
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(weight).__name__}")
    if weight.dim() != 2 or weight.numel() == 0:
        raise ValueError(f"{what} must be a non-empty 2-D (out_features, in_features) tensor, "
                         f"got shape {tuple(weight.shape)}")
    if not weight.is_floating_point() or not torch.isfinite(weight).all():
        raise ValueError(f"{what} must hold finite floating-point values")
    return weight.detach()


# --------------------------------------------------------------------------- prunable layers

@dataclass
class _Target:
    key: str               # qualified parameter name, e.g. "blocks.layers.0.linear1.weight"
    owner: nn.Module       # the module holding the parameter
    name: str              # "weight" or "in_proj_weight"
    kind: str              # "linear" | "in_proj" | "out_proj"
    hooked: nn.Module      # the module whose forward sees the layer's input


def _attention_parts(model: nn.Module) -> dict[int, tuple[str, nn.MultiheadAttention]]:
    """``{id(out_proj): (its name, its attention module)}``."""
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.MultiheadAttention):
            found[id(module.out_proj)] = (f"{name}.out_proj".lstrip("."), module)
    return found


def _all_targets(model: nn.Module) -> list[_Target]:
    outs = _attention_parts(model)
    targets = []
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, nn.MultiheadAttention):
            if not module._qkv_same_embed_dim:
                raise ValueError(f"{name or 'the model'} is an nn.MultiheadAttention with separate "
                                 "q/k/v weights (kdim/vdim differ from embed_dim); only the "
                                 "stacked in_proj_weight is supported")
            targets.append(_Target(prefix + "in_proj_weight", module, "in_proj_weight",
                                   "in_proj", module))
        elif isinstance(module, nn.Linear):
            if id(module) in outs:
                targets.append(_Target(prefix + "weight", module, "weight", "out_proj",
                                       outs[id(module)][1]))
            else:
                targets.append(_Target(prefix + "weight", module, "weight", "linear", module))
    return targets


def _targets(model: nn.Module, layers=None) -> list[_Target]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    targets = _all_targets(model)
    if layers is None:
        if not targets:
            raise ValueError("the model has no nn.Linear or nn.MultiheadAttention layer to prune")
        return targets
    if isinstance(layers, (nn.Module, str)):
        layers = [layers]
    by_module = {id(t.hooked if t.kind == "in_proj" else t.owner): t for t in targets}
    by_name = dict(model.named_modules())
    by_key = {t.key: t for t in targets}
    chosen: list[_Target] = []
    for layer in layers:
        module = layer
        if isinstance(layer, str) and layer in by_key:  # a key of prunable_weights
            if by_key[layer] not in chosen:
                chosen.append(by_key[layer])
            continue
        if isinstance(layer, str):
            if layer not in by_name:
                raise ValueError(f"the model has no module named {layer!r}")
            module = by_name[layer]
        if not isinstance(module, (nn.Linear, nn.MultiheadAttention)):
            raise TypeError(f"layers must be nn.Linear or nn.MultiheadAttention modules of the "
                            f"model (or their names), got {type(module).__name__}")
        if id(module) not in by_module:
            raise ValueError(f"{type(module).__name__} {module} is not a module of this model")
        if by_module[id(module)] not in chosen:
            chosen.append(by_module[id(module)])
    if not chosen:
        raise ValueError("layers is empty: pass None for every prunable layer")
    order = {t.key: i for i, t in enumerate(targets)}
    return sorted(chosen, key=lambda t: order[t.key])


def prunable_weights(model: nn.Module, layers=None) -> dict[str, tuple[nn.Module, str]]:
    """``{qualified name: (module, parameter name)}`` of the layers this module prunes.

    Every ``nn.Linear`` and, for every ``nn.MultiheadAttention``, its ``in_proj_weight`` and
    its ``out_proj`` Linear, in the order of ``model.named_modules()``. Pass the pair to
    ``apply_mask(module, mask, name=...)``. ``layers`` (modules, module names or these keys)
    selects a subset.

    >>> attention = nn.MultiheadAttention(8, 2)
    >>> list(prunable_weights(attention))
    ['in_proj_weight', 'out_proj.weight']
    """
    return {t.key: (t.owner, t.name) for t in _targets(model, layers)}


# --------------------------------------------------------------------------- hooks

class _Stop(Exception):
    """Raised inside a hook once every wanted input is seen: the rest of the forward is skipped."""


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


def _collect(model: nn.Module, batches, targets: list[_Target], consume, stop: bool) -> int:
    """Run ``model`` on ``batches`` and call ``consume(target, X)`` with every layer input ``X``
    of shape ``(tokens, in_features)``. Hooks, the fast-path flag and the training mode are
    restored whatever happens. Returns the number of batches."""
    handles, seen = [], set()
    wanted = {t.key for t in targets}

    def done(target):
        seen.add(target.key)
        if stop and seen == wanted:
            raise _Stop

    def linear_hook(target):
        def hook(module, args):
            consume(target, args[0].detach().reshape(-1, args[0].shape[-1]))
            done(target)
        return hook

    def attention_hook(in_target, out_target):
        def hook(module, args, kwargs):
            query, key, value = _qkv(args, kwargs)
            if in_target is not None:
                if not (query is key is value or (query.shape == key.shape == value.shape
                                                  and torch.equal(query, key)
                                                  and torch.equal(key, value))):
                    raise ValueError(f"{in_target.key}: query, key and value differ (cross-"
                                     "attention); in_proj_weight is pruned only for "
                                     "self-attention, where all three projections share inputs")
                consume(in_target, query.detach().reshape(-1, query.shape[-1]))
            if out_target is not None:
                z = _pre_projection(module, args, kwargs)
                consume(out_target, z.detach().reshape(-1, z.shape[-1]))
            for target in (in_target, out_target):
                if target is not None:
                    done(target)
            return None
        return hook

    attention: dict[int, list] = {}
    for t in targets:
        if t.kind == "linear":
            continue
        slot = attention.setdefault(id(t.hooked), [t.hooked, None, None])
        slot[1 if t.kind == "in_proj" else 2] = t
    mha = torch.backends.mha
    fast = mha.get_fastpath_enabled() if hasattr(mha, "get_fastpath_enabled") else None
    was_training = model.training
    count = 0
    try:
        for t in targets:
            if t.kind == "linear":
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
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                if not isinstance(x, torch.Tensor):
                    raise TypeError("batches must yield tensors or (x, y) tuples of tensors, "
                                    f"got {type(x).__name__}")
                seen.clear()
                try:
                    model(x.to(device))
                except _Stop:
                    pass
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
    prunable layer over all tokens of ``batches`` (an iterable of input tensors, or of
    ``(x, y)`` tuples whose ``x`` is the input).

    Covers every ``nn.Linear`` and both projections of ``nn.MultiheadAttention`` (whose
    ``out_proj`` forward is never called: the input of ``out_proj`` is recomputed from the
    attention module's own inputs). The model runs in eval mode without gradients and with
    PyTorch's fused transformer fast path off; the hooks, the fast-path setting and the
    training mode are restored afterwards, even on error. ``layers``: modules, module names
    or keys of ``prunable_weights`` to restrict to (an ``nn.MultiheadAttention`` module
    stands for its ``in_proj_weight``).

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
    row per token, ``(tokens, in_features)`` (the hooks of ``input_norms``; mind the memory).

    >>> x = layer_inputs(nn.Sequential(nn.Linear(3, 2)), [torch.ones(5, 3)])["0.weight"]
    >>> tuple(x.shape)
    (5, 3)
    """
    targets = _targets(model, layers)
    found: dict[str, list] = {t.key: [] for t in targets}
    _collect(model, batches, targets, lambda t, x: found[t.key].append(x.clone()), stop=False)
    return {key: torch.cat(xs) for key, xs in found.items()}


# --------------------------------------------------------------------------- Wanda

def wanda_mask(weight: torch.Tensor, input_norm: torch.Tensor, sparsity: float | None = None,
               *, n: int | None = None, m: int | None = None) -> torch.Tensor:
    """The Wanda mask of ``weight`` (``out_features x in_features``): score ``|W_ij| * ||X_j||``,
    remove the ``round(sparsity * in_features)`` lowest scores of every output row (ties by
    position), or with ``n``/``m`` keep the ``n`` highest of every ``m`` consecutive inputs.

    With all norms equal it is per-row magnitude pruning. ``input_norm``: the ``in_features``
    norms from ``input_norms``. Returns a 0/1 mask of the weight's dtype and device.

    >>> w = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    >>> wanda_mask(w, torch.tensor([10.0, 1.0, 1.0, 1.0]), 0.5)
    tensor([[1., 0., 0., 1.]])
    >>> wanda_mask(w, torch.ones(4), n=2, m=4)
    tensor([[0., 0., 1., 1.]])
    """
    weight = _check_weight(weight)
    pattern = _pattern(sparsity, n, m)
    if not isinstance(input_norm, torch.Tensor):
        raise TypeError(f"input_norm must be a torch.Tensor, got {type(input_norm).__name__}")
    rows, cols = weight.shape
    if input_norm.shape != (cols,):
        raise ValueError(f"input_norm has shape {tuple(input_norm.shape)} but the weight has "
                         f"{cols} input channels (shape {tuple(weight.shape)}): pass the norms "
                         "of this layer's inputs, one per input channel")
    norm = input_norm.detach().to(device=weight.device, dtype=torch.float32)
    if not torch.isfinite(norm).all() or (norm < 0).any():
        raise ValueError("input_norm must hold finite, non-negative norms")
    _check_columns(pattern, cols, "weight")
    score = weight.abs().float() * norm
    mask = torch.ones_like(weight)
    if pattern[0] == "unstructured":
        k = int(round(pattern[1] * cols))
        order = torch.argsort(score, dim=1, stable=True)[:, :k]
        mask.scatter_(1, order, 0.0)
        return mask
    _, keep_n, size = pattern
    groups = score.reshape(rows, cols // size, size)
    keep = torch.topk(groups, keep_n, dim=2).indices
    grouped = torch.zeros_like(groups, dtype=weight.dtype).scatter_(2, keep, 1.0)
    return grouped.reshape(rows, cols)


# --------------------------------------------------------------------------- SparseGPT

def _layer_weight(layer) -> tuple[str, torch.Tensor]:
    if isinstance(layer, nn.MultiheadAttention):
        if not layer._qkv_same_embed_dim:
            raise ValueError("nn.MultiheadAttention with separate q/k/v weights (kdim/vdim) is "
                             "not supported; only the stacked in_proj_weight")
        return "in_proj_weight", layer.in_proj_weight
    if isinstance(layer, nn.Linear):
        return "weight", layer.weight
    raise TypeError(f"layer must be an nn.Linear or an nn.MultiheadAttention (its "
                    f"in_proj_weight), got {type(layer).__name__}")


def _hessian(inputs, cols: int, device) -> tuple[torch.Tensor, int]:
    if isinstance(inputs, torch.Tensor):
        inputs = [inputs]
    if not isinstance(inputs, (list, tuple)):
        raise TypeError("inputs must be a tensor (..., in_features) of the layer's inputs or a "
                        f"list of such tensors, got {type(inputs).__name__}")
    hessian = torch.zeros(cols, cols, device=device)
    count = 0
    for x in inputs:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError("inputs must be floating-point tensors of the layer's inputs")
        if x.dim() < 1 or x.shape[-1] != cols:
            raise ValueError(f"inputs have shape {tuple(x.shape)} but the layer has {cols} input "
                             "channels: the last dimension must be in_features")
        if not torch.isfinite(x).all():
            raise ValueError("inputs contain NaN or infinity")
        x = x.detach().reshape(-1, cols).to(device=device, dtype=torch.float32)
        hessian += x.T @ x
        count += x.shape[0]
    if count == 0:
        raise ValueError("inputs hold no rows: pass the layer's inputs on a few batches")
    return hessian, count


def _sparsegpt(weight: torch.Tensor, hessian: torch.Tensor, pattern: tuple, damp: float,
               block_size: int, forced: torch.Tensor | None):
    """``(new weight, keep mask)`` from the effective ``weight`` and ``H = X^T X``; pure."""
    w = weight.detach().to(torch.float32).clone()
    rows, cols = w.shape
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
    total = rows * cols
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


def _write(owner: nn.Module, name: str, new_weight: torch.Tensor | None, keep: torch.Tensor):
    if new_weight is not None:
        if parametrize.is_parametrized(owner, name):
            target = owner.parametrizations[name].original
        else:
            target = getattr(owner, name)
        with torch.no_grad():
            target.copy_(new_weight)
    apply_mask(owner, keep, name=name)


def _forced(owner, name):
    existing = get_mask(owner, name)
    return None if existing is None else existing == 0


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

    - ``layer``: an ``nn.Linear`` (its ``weight``) or an ``nn.MultiheadAttention`` (its
      ``in_proj_weight``: the query, key and value projections share one input, so one Hessian
      serves the stacked ``3 d x d`` matrix, and pruning it is pruning the three
      projections; its ``out_proj`` is an ``nn.Linear``, pruned separately with its own inputs).
    - ``inputs``: the layer's inputs ``(..., in_features)``, a tensor or a list of tensors
      (``layer_inputs`` collects them); the bias is left as it is.
    - An already masked weight is read as it acts (``original * mask``); its removed entries
      stay removed and count towards ``sparsity``.

    The new weights go into the parameter (the same ``Parameter`` object) and the mask is
    applied with ``apply_mask``. Bad input raises before anything is changed.

    >>> torch.manual_seed(0) is not None
    True
    >>> layer, x = nn.Linear(16, 4), torch.randn(256, 16)
    >>> mask = sparsegpt_prune(layer, x, 0.5)
    >>> int((mask == 0).sum()), int((layer.weight == 0).sum())
    (32, 32)
    """
    name, _ = _layer_weight(layer)
    pattern = _pattern(sparsity, n, m)
    weight = _check_weight(getattr(layer, name), f"{type(layer).__name__}.{name}")
    _check_columns(pattern, weight.shape[1], f"{type(layer).__name__}.{name}")
    _check_damp(damp, block_size, pattern)
    hessian, _ = _hessian(inputs, weight.shape[1], weight.device)
    new, keep = _sparsegpt(weight, hessian, pattern, float(damp), int(block_size),
                           _forced(layer, name))
    _write(layer, name, new, keep)
    return keep


# --------------------------------------------------------------------------- whole models

_METHODS = ("magnitude", "wanda", "sparsegpt")


def one_shot_prune(model: nn.Module, batches, method: str = "wanda",
                   sparsity: float | None = None, *, n: int | None = None, m: int | None = None,
                   layers=None, damp: float = 0.01, block_size: int = 128,
                   sequential: bool = True) -> dict[str, torch.Tensor]:
    """Prune every prunable layer of ``model`` (or ``layers``) in one shot; return the masks.

    - ``method``: ``"magnitude"`` (layer-wise ``magnitude_mask``, or ``nm_mask`` for N:M; needs
      no batches), ``"wanda"`` (``wanda_mask`` per output row) or ``"sparsegpt"``
      (``sparsegpt_prune``).
    - ``sparsity`` (a fraction in [0, 1)) or ``n``/``m``.
    - ``sequential=True``: layers are pruned in module order, each calibrated on the inputs it
      receives from the already pruned layers before it (as both papers do, block by block);
      ``False``: every layer's statistics come from the dense model in one pass.

    The work happens on a copy; the model is changed only when every layer succeeded.

    >>> torch.manual_seed(0) is not None
    True
    >>> model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    >>> masks = one_shot_prune(model, [torch.randn(32, 8)], "sparsegpt", n=2, m=4)
    >>> [float(mask.mean()) for mask in masks.values()]
    [0.5, 0.5]
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    pattern = _pattern(sparsity, n, m)
    if not isinstance(sequential, bool):
        raise TypeError(f"sequential must be True or False, got {sequential!r}")
    targets = _targets(model, layers)
    for t in targets:
        w = _check_weight(getattr(t.owner, t.name), t.key)
        _check_columns(pattern, w.shape[1], t.key)
    _check_damp(damp, block_size, pattern)
    if method != "magnitude" and batches is None:
        raise ValueError(f"{method} needs calibration batches")
    if method != "magnitude" and not isinstance(batches, (list, tuple)):
        batches = list(batches)  # iterated once per layer
    work = copy.deepcopy(model)
    work_targets = _targets(work, None)
    keys = [t.key for t in targets]
    work_targets = [t for t in work_targets if t.key in keys]
    results: dict[str, tuple] = {}

    def prune_one(t, stats):
        w = getattr(t.owner, t.name).detach()
        if method == "magnitude":
            keep = magnitude_mask(w, pattern[1]) if pattern[0] == "unstructured" else \
                nm_mask(w, n=pattern[1], m=pattern[2])
            new = None
        elif method == "wanda":
            keep, new = wanda_mask(w, stats.sqrt(), sparsity, n=n, m=m), None
        else:
            new, keep = _sparsegpt(w, stats, pattern, float(damp), int(block_size),
                                   _forced(t.owner, t.name))
        _write(t.owner, t.name, new, keep)
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
    for t in targets:  # every layer succeeded: now change the user's model
        new, keep = results[t.key]
        _write(t.owner, t.name, new, keep)
    return {key: results[key][1] for key in keys}
