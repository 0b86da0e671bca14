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


def check_sparsity(value, what: str = "sparsity") -> float:
    """Return ``value`` as a float after checking it is a number in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a number in [0, 1] (the fraction removed), got {value!r}")
    value = float(value)
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise ValueError(
            f"{what} must be in [0, 1] (the fraction of entries removed), got {value}"
        )
    return value


def _check_tensor(x, what: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
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


def nm_mask(weight: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """An N:M mask: in every group of ``m`` consecutive entries along the last dimension,
    keep the ``n`` of largest magnitude (2:4 is what sparse tensor cores accelerate).

    >>> nm_mask(torch.tensor([[4.0, -1.0, 0.5, 3.0]]))
    tensor([[1., 0., 0., 1.]])
    """
    weight = _check_tensor(weight, "weight")
    for name, value in (("n", n), ("m", m)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be an int, got {value!r}")
    if not 1 <= n <= m:
        raise ValueError(f"need 1 <= n <= m for an N:M mask, got n={n}, m={m}")
    if weight.dim() == 0 or weight.shape[-1] % m:
        raise ValueError(
            f"the last dimension of weight ({tuple(weight.shape)}) must be divisible by m={m}"
        )
    if weight.is_floating_point() and torch.isnan(weight).any():
        raise ValueError("weight contains NaN; magnitudes cannot be ranked")
    groups = weight.detach().abs().reshape(-1, m)
    keep = torch.topk(groups, n, dim=1).indices
    mask = torch.zeros_like(groups, dtype=_mask_dtype(weight))
    mask.scatter_(1, keep, 1.0)
    return mask.view(weight.shape)


def _weights(module: nn.Module):
    for sub in module.modules():
        w = getattr(sub, "weight", None)
        if isinstance(w, torch.Tensor):
            yield w


def sparsity(x) -> float:
    """Fraction of exact zeros.

    For a tensor: over its entries. For a module: over the effective ``weight`` of every
    layer that has one (masks applied, biases excluded).

    >>> sparsity(torch.tensor([0.0, 1.0, 0.0, 2.0]))
    0.5
    >>> sparsity(nn.Linear(3, 2)) 
    0.0
    """
    if isinstance(x, nn.Module):
        zeros = total = 0
        with torch.no_grad():
            for w in _weights(x):
                zeros += int((w == 0).sum())
                total += w.numel()
        if total == 0:
            raise ValueError(f"{type(x).__name__} has no layer with a weight to measure")
        return zeros / total
    x = _check_tensor(x, "x")
    return int((x == 0).sum()) / x.numel()
