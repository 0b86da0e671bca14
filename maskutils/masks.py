"""Building binary masks and measuring sparsity.

A mask is a tensor of 0s and 1s with the weight's shape: 1 keeps an entry, 0 removes it.
``sparsity`` always means the fraction of entries *removed*.

>>> import torch
>>> from maskutils import magnitude_mask, sparsity
>>> w = torch.tensor([[0.1, -2.0], [0.5, 3.0]])
>>> magnitude_mask(w, 0.5)
tensor([[0., 1.],
        [0., 1.]])
>>> sparsity(w * magnitude_mask(w, 0.5))
0.5
"""
from __future__ import annotations

import math
import numbers

import torch
from torch import nn


def check_sparsity(value, what: str = "sparsity", below_one: bool = False) -> float:
    """Return ``value`` as a float after checking it is a number in [0, 1].

    ``below_one=True`` also refuses 1, as every function that prunes a whole model does
    (``mask_layers``, ``gradual_magnitude_prune``, ``one_shot_prune``, ``prune_units``):
    removing every weight leaves a model that computes only from its biases.

    >>> check_sparsity(0.5)
    0.5
    >>> check_sparsity(1, below_one=True)
    Traceback (most recent call last):
    ...
    ValueError: sparsity must be in [0, 1) (the fraction of weights removed; 1 would remove ...
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        interval = "[0, 1)" if below_one else "[0, 1]"
        raise TypeError(f"{what} must be a number in {interval} (the fraction removed), "
                        f"got {value!r}")
    value = float(value)
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise ValueError(
            f"{what} must be in {'[0, 1)' if below_one else '[0, 1]'} (the fraction of entries "
            f"removed), got {value}"
        )
    if below_one and value == 1.0:
        raise ValueError(
            f"{what} must be in [0, 1) (the fraction of weights removed; 1 would remove every "
            f"weight and leave a model that computes only from its biases), got 1.0"
        )
    return value


def check_generator(generator):
    """Return ``generator`` after checking it is a ``torch.Generator`` or None.

    >>> check_generator(0)
    Traceback (most recent call last):
    ...
    TypeError: generator must be a torch.Generator or None, got int 0; for a seed pass ...
    """
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator or None, got {type(generator).__name__} "
            f"{generator!r}; for a seed pass torch.Generator().manual_seed(seed)"
        )
    return generator


def _check_tensor(x, what: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if x.device.type == "meta":
        raise ValueError(
            f"{what} is on the meta device, so it has no values (and a mask made from it would "
            f"hold none); use a tensor on a real device, e.g. the loaded weight or "
            f"torch.empty(shape)"
        )
    if x.numel() == 0:
        raise ValueError(f"{what} is empty; a mask needs at least one entry")
    return x


def _mask_dtype(like: torch.Tensor) -> torch.dtype:
    return like.dtype if like.is_floating_point() else torch.get_default_dtype()


def _n_removed(numel: int, sparsity: float) -> int:
    return int(round(sparsity * numel))


def _remove(like: torch.Tensor, order: torch.Tensor, k: int) -> torch.Tensor:
    """Mask of ``like``'s shape with the first ``k`` flat positions of ``order`` removed."""
    mask = torch.ones(like.numel(), dtype=_mask_dtype(like), device=like.device)
    mask[order[:k].to(like.device)] = 0
    return mask.view(like.shape)


def random_mask(like: torch.Tensor, sparsity: float, generator: torch.Generator | None = None):
    """A mask removing exactly ``round(sparsity * numel)`` entries chosen uniformly at random.

    >>> m = random_mask(torch.empty(4, 5), 0.25, generator=torch.Generator().manual_seed(0))
    >>> int((m == 0).sum())
    5
    """
    like = _check_tensor(like, "like")
    s = check_sparsity(sparsity)
    generator = check_generator(generator)
    where = generator.device if generator is not None else torch.device("cpu")
    order = torch.randperm(like.numel(), generator=generator, device=where)
    return _remove(like, order, _n_removed(like.numel(), s))


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """A mask removing the ``round(sparsity * numel)`` entries of smallest magnitude.

    Ties are broken by position, so exactly that many entries are removed.

    >>> magnitude_mask(torch.tensor([3.0, -1.0, 2.0, 0.5]), 0.5)
    tensor([1., 0., 1., 0.])
    """
    weight = _check_tensor(weight, "weight")
    s = check_sparsity(sparsity)
    if weight.is_floating_point() and torch.isnan(weight).any():
        raise ValueError("weight contains NaN; magnitudes cannot be ranked")
    order = torch.argsort(weight.detach().abs().flatten(), stable=True)
    return _remove(weight, order, _n_removed(weight.numel(), s))


def nm_mask(weight: torch.Tensor, n: int = 2, m: int = 4, dim: int = 1) -> torch.Tensor:
    """An N:M mask: in every group of ``m`` consecutive entries along dimension ``dim``,
    keep the ``n`` of largest magnitude (2:4 is what sparse tensor cores accelerate).

    The groups must run along the input (reduction) dimension of the layer's matmul: that is
    ``dim=1`` for ``nn.Linear`` (out, in) and ``nn.Conv*d`` (out, in, *kernel) weights, the
    default, so a 3x3 convolution groups across input channels, not across its kernel width.
    A layout that stores (in, out), such as ``transformers``' ``Conv1D``, passes ``dim=0``.

    >>> nm_mask(torch.tensor([[4.0, -1.0, 0.5, 3.0]]))
    tensor([[1., 0., 0., 1.]])
    >>> conv = torch.randn(8, 4, 3, 3)                 # (out, in, kh, kw)
    >>> bool((nm_mask(conv).sum(dim=1) == 2).all())   # 2 of every 4 input channels
    True
    """
    weight = _check_tensor(weight, "weight")
    for name, value in (("n", n), ("m", m), ("dim", dim)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be an int, got {value!r}")
    if not 1 <= n <= m:
        raise ValueError(f"need 1 <= n <= m for an N:M mask, got n={n}, m={m}")
    shape = tuple(weight.shape)
    if not -weight.dim() <= dim < weight.dim():
        raise ValueError(
            f"dim={dim} is out of range for a weight of shape {shape} ({weight.dim()} "
            f"dimension(s)); pass the input dimension, e.g. dim=0 for a 1-D tensor"
        )
    if weight.shape[dim] % m:
        raise ValueError(
            f"dimension dim={dim} of weight {shape} has size {weight.shape[dim]}, which is not "
            f"divisible by m={m}; choose a dim whose size is a multiple of {m} (the input "
            f"dimension: 1 for Linear and Conv weights, 0 for an (in, out) layout)"
        )
    if weight.is_floating_point() and torch.isnan(weight).any():
        raise ValueError("weight contains NaN; magnitudes cannot be ranked")
    moved = weight.detach().abs().movedim(dim, -1)
    groups = moved.reshape(-1, m)
    keep = torch.topk(groups, n, dim=1).indices
    mask = torch.zeros_like(groups, dtype=_mask_dtype(weight))
    mask.scatter_(1, keep, 1.0)
    return mask.view(moved.shape).movedim(-1, dim).contiguous()


def _is_parametrized(module: nn.Module) -> bool:
    return isinstance(getattr(module, "parametrizations", None), nn.ModuleDict)


def _pruned_original(module: nn.Module, name: str) -> bool:
    """Is ``name`` the dense ``<x>_orig`` that ``torch.nn.utils.prune`` keeps beside ``<x>``?"""
    base = name[: -len("_orig")]
    return (name.endswith("_orig") and hasattr(module, base + "_mask")
            and isinstance(getattr(module, base, None), torch.Tensor))


def _measured(module: nn.Module):
    """Every tensor ``sparsity(module)`` measures, once each (tied parameters count once).

    The ``weight`` of every layer that has one, every parameter with at least two dimensions
    (``in_proj_weight``, ``weight_ih_l0``, ...) and every parametrized (masked) tensor whatever
    its name, all as the layer reads them (masks applied). Parametrization internals (the stored
    ``original``, mask buffers, gate logits) and ``torch.nn.utils.prune``'s dense ``weight_orig``
    are not what the layer computes with and are not measured.
    """
    seen: set[int] = set()
    stack = [module]
    while stack:
        sub = stack.pop()
        parametrized = _is_parametrized(sub)
        names = [n for n, p in sub.named_parameters(recurse=False)
                 if p.dim() >= 2 and not _pruned_original(sub, n)]
        if isinstance(getattr(sub, "weight", None), torch.Tensor):
            names.append("weight")
        if parametrized:
            names += list(sub.parametrizations.keys())
        for name in dict.fromkeys(names):
            if parametrized and name in sub.parametrizations:
                plist = sub.parametrizations[name]
                key = id(plist.original) if hasattr(plist, "original") else id(plist)
            else:
                key = id(getattr(sub, name))
            if key in seen:
                continue
            seen.add(key)
            value = getattr(sub, name)
            if isinstance(value, torch.Tensor):
                yield value
        stack.extend(child for cname, child in reversed(list(sub.named_children()))
                     if not (parametrized and cname == "parametrizations"))


def sparsity(x) -> float:
    """Fraction of exact zeros.

    For a tensor: over its entries. For a module: over the effective ``weight`` of every
    layer that has one, every other weight with at least two dimensions (attention
    ``in_proj_weight``, recurrent ``weight_ih_l0``, ...) and every masked parameter whatever
    its name, all with masks applied; biases are excluded unless masked, and a parameter tied
    between several layers counts once.

    >>> sparsity(torch.tensor([0.0, 1.0, 0.0, 2.0]))
    0.5
    >>> sparsity(nn.Linear(3, 2))
    0.0
    """
    if isinstance(x, nn.Module):
        zeros = total = 0
        with torch.no_grad():
            for w in _measured(x):
                if w.device.type == "meta":
                    raise ValueError(
                        f"{type(x).__name__} has weights on the meta device, with no values "
                        f"to count; load its weights first (model.to_empty(device=...) and "
                        f"load_state_dict)")
                zeros += int((w == 0).sum())
                total += w.numel()
        if total == 0:
            raise ValueError(f"{type(x).__name__} has no layer with a weight to measure")
        return zeros / total
    x = _check_tensor(x, "x")
    return int((x == 0).sum()) / x.numel()
