"""Checkers for the book's exercises: they say what is wrong, not only that something is.

``check(exercise, answer, **given)`` prints one line of feedback and returns ``True`` when the
answer is right. Exercises are named ``"chapter.number"``; ``exercises()`` lists them.

>>> import torch
>>> w = torch.tensor([[4.0, -1.0, 0.5, 3.0]])
>>> check("1.1", torch.tensor([[1.0, 0.0, 0.0, 0.0]]), weight=w)
✅ 1.1: right: a 1:4 mask keeping the largest weight of each group (sparsity 75 %).
True
>>> check("1.1", torch.tensor([[1.0, 0.0, 0.0, 1.0]]), weight=w)
❌ 1.1: row 0, group 0 keeps 2 weights; a 1:4 mask keeps exactly 1 of every 4.
False
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

_CHECKS: dict[str, tuple[str, Callable]] = {}


class Wrong(Exception):
    """Raised inside a checker with the message the learner sees."""


def exercise(name: str, title: str):
    """Register a checker ``fn(answer, **given) -> str`` (the success message) under ``name``.

    >>> @exercise("0.1", "say hello")
    ... def _(answer):
    ...     if answer != "hello":
    ...         raise Wrong(f"you said {answer!r}")
    ...     return "hello to you too"
    >>> check("0.1", "hello")
    ✅ 0.1: right: hello to you too
    True
    >>> _ = _CHECKS.pop("0.1")  # (only an example)
    """
    def register(fn: Callable) -> Callable:
        _CHECKS[name] = (title, fn)
        return fn
    return register


def exercises() -> dict[str, str]:
    """``{exercise: title}`` of every exercise that has a checker.

    >>> "1.1" in exercises()
    True
    """
    return {name: title for name, (title, _) in sorted(_CHECKS.items())}


def check(name: str, answer, **given) -> bool:
    """Check ``answer`` to exercise ``name``; print what is right or wrong; return whether right."""
    if name not in _CHECKS:
        raise ValueError(f"no checker for exercise {name!r}; known: {sorted(_CHECKS)}")
    _, fn = _CHECKS[name]
    try:
        message = fn(answer, **given)
    except Wrong as wrong:
        print(f"❌ {name}: {wrong}")
        return False
    print(f"✅ {name}: right: {message}")
    return True


def _binary_tensor(answer, like: torch.Tensor, what: str = "the mask") -> torch.Tensor:
    if not isinstance(answer, torch.Tensor):
        raise Wrong(f"{what} should be a torch.Tensor, got {type(answer).__name__}")
    if answer.shape != like.shape:
        raise Wrong(f"{what} has shape {tuple(answer.shape)}; the weight has {tuple(like.shape)}")
    if not ((answer == 0) | (answer == 1)).all():
        raise Wrong(f"{what} holds values other than 0 and 1; threshold it, e.g. (x > t).float()")
    return answer.detach().to(like.device, like.dtype)


@exercise("1.1", "a 1:4 mask of the first layer")
def _one_of_four(answer, weight: torch.Tensor) -> str:
    weight = weight.detach()
    mask = _binary_tensor(answer, weight)
    groups, kept = weight.abs().reshape(weight.shape[0], -1, 4), mask.reshape(weight.shape[0], -1, 4)
    counts = kept.sum(dim=2)
    bad = (counts != 1).nonzero()
    if len(bad):
        row, group = bad[0].tolist()
        raise Wrong(f"row {row}, group {group} keeps {int(counts[row, group])} weights; "
                    "a 1:4 mask keeps exactly 1 of every 4.")
    chosen = (groups * kept).amax(dim=2)
    if (chosen < groups.amax(dim=2)).any():
        row, group = (chosen < groups.amax(dim=2)).nonzero()[0].tolist()
        raise Wrong(f"row {row}, group {group} keeps a weight that is not the largest "
                    "in magnitude; rank by weight.abs().")
    return "a 1:4 mask keeping the largest weight of each group (sparsity 75 %)."


@exercise("1.2", "global magnitude masks at 80 % sparsity")
def _global_magnitude(answer, model: nn.Module, sparsity: float = 0.8) -> str:
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not isinstance(answer, (list, tuple)) or len(answer) != len(layers):
        raise Wrong(f"give one mask per Linear layer, in order: {len(layers)} masks")
    weights = [layer.weight.detach() for layer in layers]
    masks = [_binary_tensor(a, w, f"mask {i}") for i, (a, w) in enumerate(zip(answer, weights))]
    total = sum(w.numel() for w in weights)
    removed = sum(int((m == 0).sum()) for m in masks)
    if abs(removed - sparsity * total) > 0.005 * total:
        raise Wrong(f"the masks remove {removed / total:.1%} of all weights, not {sparsity:.0%}.")
    kept_min = min(float(w[m == 1].abs().min()) for w, m in zip(weights, masks) if m.any())
    removed_max = max(float(w[m == 0].abs().max()) for w, m in zip(weights, masks) if (m == 0).any())
    if removed_max > kept_min:
        raise Wrong("a removed weight is larger than a kept one in another layer: use one "
                    "threshold for all layers (global), not one per layer.")
    per_layer = ", ".join(f"{float((m == 0).float().mean()):.0%}" for m in masks)
    return f"one threshold for all layers; per-layer sparsity {per_layer}."


@exercise("1.3", "sparsity of two random 50 % masks applied together")
def _two_random_masks(answer) -> str:
    if not isinstance(answer, (int, float)):
        raise Wrong("answer with a number: the expected fraction of weights removed")
    if abs(answer - 0.75) > 0.02:
        hint = " (that is the fraction kept)" if abs(answer - 0.25) <= 0.02 else ""
        raise Wrong(f"{answer:.2f} is off{hint}: a weight survives only if both masks keep it.")
    return "an entry survives with probability 0.5 × 0.5, so about 75 % is removed."
