"""Keeping masked weights at zero during training, and recording gradients for plots.

Two ways to enforce a mask on plain (unparametrized) parameters, both taking ``masks`` as a
dict ``{parameter: mask}`` (``maskutils.masked_parameters(model)`` builds it for a model masked
with ``apply_mask``):

- ``mask_gradients(masks)``: a gradient hook multiplies each gradient by its mask. The
  optimizer then sees zero gradient at masked entries; whether the weights stay zero depends
  on the optimizer's *state* (momentum and Adam moments from before the mask move them).
- ``project_after_step(optimizer, masks)``: after every ``optimizer.step()`` the masked
  entries are set back to zero. Exact for every optimizer, whatever its state.

Both zero the masked entries at once and return a handle whose ``.remove()`` undoes the
hooks (the weights keep their current values). ``GradientRecorder`` records per-layer
gradient norms, and snapshots of one layer's gradient, for the plots of chapter 2.

>>> import torch
>>> from torch import nn
>>> from maskutils.hooks import project_after_step
>>> layer = nn.Linear(3, 2)
>>> optimizer = torch.optim.Adam(layer.parameters(), lr=0.1)
>>> mask = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
>>> handle = project_after_step(optimizer, {layer.weight: mask})
>>> layer(torch.randn(5, 3)).sum().backward()
>>> optimizer.step()
>>> bool((layer.weight[mask == 0] == 0).all())
True
>>> handle.remove()
"""
from __future__ import annotations

import numbers
import warnings

import torch
from torch import nn
from torch.nn.utils import parametrize

from .apply import check_mask

__all__ = ["MaskHandle", "mask_gradients", "project_after_step", "GradientRecorder"]


class MaskHandle:
    """What ``mask_gradients`` and ``project_after_step`` return.

    ``.remove()`` removes every hook they registered (calling it twice is harmless); the
    parameters keep their current values. ``.masks`` is the validated ``{parameter: mask}``
    (the masks are copies, in each parameter's dtype and on its device). A handle is also a
    context manager: ``with mask_gradients(masks): ...`` removes the hooks on exit.
    """

    def __init__(self, kind: str, masks: dict, handles: list):
        self.kind = kind
        self.masks = masks
        self._handles = list(handles)

    @property
    def active(self) -> bool:
        """True until ``.remove()`` is called."""
        return bool(self._handles)

    def remove(self) -> None:
        """Remove the hooks; plain training resumes (the weights are not changed)."""
        while self._handles:
            self._handles.pop().remove()

    def __enter__(self) -> "MaskHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "active" if self.active else "removed"
        return f"<{self.kind} on {len(self.masks)} parameter(s), {state}>"


def _check_masks(masks, function: str) -> dict:
    """Validate ``{parameter: mask}`` completely; return ``{parameter: clean mask}``."""
    if not isinstance(masks, dict):
        raise TypeError(
            f"{function}: masks must be a dict {{parameter: mask}}, got {type(masks).__name__}; "
            "for a model masked with apply_mask use maskutils.masked_parameters(model)"
        )
    if not masks:
        raise ValueError(
            f"{function}: masks is empty, so there is nothing to enforce; pass {{parameter: mask}} "
            "(masked_parameters(model) returns {} for a model with no apply_mask mask)"
        )
    clean = {}
    for i, (param, mask) in enumerate(masks.items()):
        where = f"masks entry {i}"
        if not isinstance(param, torch.Tensor):
            raise TypeError(
                f"{function}: the key of {where} must be a parameter (torch.Tensor), "
                f"got {type(param).__name__}"
            )
        if not param.is_leaf or not param.requires_grad:
            raise ValueError(
                f"{function}: the key of {where} is not a trainable leaf parameter "
                f"(is_leaf={param.is_leaf}, requires_grad={param.requires_grad}); pass the "
                "Parameter itself, e.g. layer.weight, or for a parametrized layer "
                "layer.parametrizations.weight.original (masked_parameters(model) does this)"
            )
        clean[param] = check_mask(mask, param, what=f"the mask of {where}")
    return clean


def _zero_masked(masks: dict, grads: bool) -> None:
    with torch.no_grad():
        for param, mask in masks.items():
            param.mul_(mask)
            if grads and param.grad is not None:
                param.grad.mul_(mask)


class _MultiplyGradient:
    """A tensor hook ``grad -> grad * mask`` (a class, so it has a readable repr)."""

    def __init__(self, mask: torch.Tensor):
        self.mask = mask

    def __call__(self, grad: torch.Tensor) -> torch.Tensor:
        return grad * self.mask

    def __repr__(self) -> str:
        return f"MultiplyGradient(kept={int(self.mask.sum())} of {self.mask.numel()})"


def mask_gradients(masks: dict) -> MaskHandle:
    """Zero the masked entries of each parameter and of its gradient, now and on every backward.

    ``masks`` is ``{parameter: mask}``. The parameters and any existing ``.grad`` are zeroed
    at the masked entries at once; then a hook (``Tensor.register_hook``) multiplies every
    incoming gradient by the mask before it is accumulated into ``.grad``.

    This alone does **not** keep masked weights at zero when the optimizer already holds state
    for them (momentum buffers, Adam moments from a dense warm-up): that state keeps moving
    them. Use ``project_after_step`` for a guarantee. On a model masked with ``apply_mask`` the
    hook is redundant: autograd already gives the original parameter zero gradient there.

    Returns a ``MaskHandle``; ``handle.remove()`` removes the hooks.

    >>> layer = nn.Linear(2, 1)
    >>> handle = mask_gradients({layer.weight: torch.tensor([[1.0, 0.0]])})
    >>> layer(torch.ones(1, 2)).sum().backward()
    >>> layer.weight.grad[0, 1].item() == 0, layer.weight[0, 1].item() == 0
    (True, True)
    >>> handle.remove()
    """
    masks = _check_masks(masks, "mask_gradients")
    _zero_masked(masks, grads=True)
    handles = [param.register_hook(_MultiplyGradient(mask)) for param, mask in masks.items()]
    return MaskHandle("mask_gradients", masks, handles)


def project_after_step(optimizer: torch.optim.Optimizer, masks: dict) -> MaskHandle:
    """Zero the masked entries now and after every ``optimizer.step()`` (projection).

    ``masks`` is ``{parameter: mask}``; every parameter must be one the optimizer updates.
    Uses ``optimizer.register_step_post_hook``: whatever the step did to a masked entry
    (gradient, momentum, Adam moments, weight decay), it is set back to exactly zero.
    The optimizer's state is left as it is. Returns a ``MaskHandle``; ``.remove()`` removes
    the hook.

    Between steps the parameter is a plain dense tensor, so its masked entries still receive
    gradients. Anything that reads the whole gradient before the step sees them: with
    ``torch.nn.utils.clip_grad_norm_`` the clip factor, and so every kept entry's update,
    differs from a forward mask's (``apply_mask``). Add ``mask_gradients(masks)`` to zero them
    first; the two then train the same weights again.

    >>> layer = nn.Linear(2, 1)
    >>> sgd = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9)
    >>> handle = project_after_step(sgd, {layer.weight: torch.tensor([[0.0, 1.0]])})
    >>> layer.weight[0, 0].item() == 0
    True
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            "project_after_step: optimizer must be a torch.optim.Optimizer, "
            f"got {type(optimizer).__name__}"
        )
    masks = _check_masks(masks, "project_after_step")
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for i, param in enumerate(masks):
        if id(param) not in optimized:
            raise ValueError(
                f"project_after_step: the parameter of masks entry {i} (shape {tuple(param.shape)}) "
                f"is not one this {type(optimizer).__name__} updates; build the optimizer over "
                "it, or for a parametrized layer pass layer.parametrizations.weight.original"
            )
    _zero_masked(masks, grads=False)

    def project(opt, args, kwargs):
        _zero_masked(masks, grads=False)

    handle = optimizer.register_step_post_hook(project)
    return MaskHandle("project_after_step", masks, [handle])


def _weight_parameter(module: nn.Module, name: str = "weight") -> torch.Tensor | None:
    """The trainable tensor behind ``module.<name>``: the original when parametrized; None when
    there is none, or several (``torch.nn.utils.parametrizations.weight_norm``)."""
    if parametrize.is_parametrized(module, name):
        return getattr(getattr(module.parametrizations, name), "original", None)
    param = module._parameters.get(name)
    return param


def _computed_from_several(module: nn.Module, name: str = "weight") -> bool:
    """Is ``module.<name>`` computed from several stored tensors (``weight_norm``: g and v)?"""
    return parametrize.is_parametrized(module, name) and not hasattr(
        getattr(module.parametrizations, name), "original")


def _is_step(value) -> bool:
    return (not isinstance(value, bool)) and isinstance(value, numbers.Integral) and value >= 1


class GradientRecorder:
    """Record per-layer gradient norms over training, and snapshots of one layer's gradient.

    - ``layers``: names (as in ``model.named_modules()``) of the layers to record; default:
      every module whose ``weight`` has two or more dimensions (Linear, Conv). For a layer masked with ``apply_mask`` the
      gradient of the *original* parameter is recorded (zero at the masked entries).
    - ``snapshot_layer`` and ``snapshot_steps``: store a CPU copy of that layer's weight
      gradient at those steps (counted from 1), for heatmaps and sliders.

    Call ``record()`` after ``loss.backward()`` and before the gradients are cleared; the
    recorder is also an ``on_step(step, model)`` callback for ``maskutils.fit``. After
    training: ``steps`` (list of ints), ``norms`` (``{layer: [L2 norm per step]}``),
    ``snapshots`` (``{step: gradient}``).

    >>> from maskutils import digits_loaders, digits_mlp, fit
    >>> model = digits_mlp()
    >>> recorder = GradientRecorder(model, snapshot_layer="layers.0", snapshot_steps=[1, 5])
    >>> _ = fit(model, digits_loaders()[0], epochs=1, on_step=recorder, progress=False)
    >>> sorted(recorder.norms), len(recorder.steps), sorted(recorder.snapshots)
    (['layers.0', 'layers.2', 'layers.4'], 23, [1, 5])
    """

    def __init__(self, model: nn.Module, layers=None, snapshot_layer: str | None = None,
                 snapshot_steps=()):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        modules = dict(model.named_modules())
        with_weight = [n for n, m in modules.items() if _weight_parameter(m) is not None]
        several = [n for n, m in modules.items() if _computed_from_several(m)]
        if layers is None:
            layers = [n for n in with_weight if _weight_parameter(modules[n]).dim() >= 2]
            if several:
                warnings.warn(
                    f"GradientRecorder leaves out {several}: their weight is computed from "
                    "several stored tensors (weight_norm's g and v), so there is no single "
                    "weight gradient to record", stacklevel=2)
            if not layers:
                raise ValueError(f"{type(model).__name__} has no Linear or Conv-like layer "
                                 "(a weight with two or more dimensions) to record")
        else:
            if isinstance(layers, str) or not all(isinstance(n, str) for n in layers):
                raise TypeError("layers must be a list of layer names such as ['layers.0']")
            layers = list(layers)
            if not layers:
                raise ValueError("layers is empty; leave it out to record every layer")
            for n in layers:
                if n in several:
                    raise ValueError(
                        f"layers: the weight of {n!r} is computed from several stored tensors "
                        "(weight_norm's g and v), so there is no single weight gradient to "
                        f"record; choose from {with_weight}")
                if n not in with_weight:
                    raise ValueError(f"layers: {n!r} is not a layer with a weight; choose from {with_weight}")
        if snapshot_layer is not None and snapshot_layer not in with_weight:
            raise ValueError(
                f"snapshot_layer {snapshot_layer!r} is not a layer with a weight; choose from {with_weight}"
            )
        snapshot_steps = list(snapshot_steps)
        if not all(_is_step(s) for s in snapshot_steps):
            raise ValueError(f"snapshot_steps must be positive ints (steps count from 1), got {snapshot_steps}")
        if snapshot_steps and snapshot_layer is None:
            raise ValueError("snapshot_steps given without snapshot_layer; name the layer to snapshot")
        self.model = model
        self._modules = {n: modules[n] for n in [*layers, snapshot_layer] if n is not None}
        self.layers = layers
        self.snapshot_layer = snapshot_layer
        self.snapshot_steps = set(int(s) for s in snapshot_steps)
        self.steps: list[int] = []
        self.norms: dict[str, list[float]] = {n: [] for n in layers}
        self.snapshots: dict[int, torch.Tensor] = {}

    def gradient(self, layer: str) -> torch.Tensor | None:
        """The current gradient of ``layer``'s weight (of the original when it is masked)."""
        module = self._modules.get(layer)
        param = None if module is None else _weight_parameter(module)
        if param is None:
            raise ValueError(f"{layer!r} is not a layer with a weight")
        return param.grad

    def record(self, step: int | None = None) -> None:
        """Record the gradients as they are now, under ``step`` (default: the next one)."""
        step = (self.steps[-1] + 1 if self.steps else 1) if step is None else step
        if not _is_step(step):
            raise ValueError(f"step must be a positive int, got {step!r}")
        grads = {n: self.gradient(n) for n in self.layers}
        if all(g is None for g in grads.values()):
            raise ValueError("no layer has a gradient: call record() after loss.backward() "
                             "and before optimizer.zero_grad()")
        present = [n for n, g in grads.items() if g is not None]
        values = torch.stack([grads[n].detach().float().norm() for n in present]).tolist()
        found = dict(zip(present, values))
        for n in self.layers:
            self.norms[n].append(found.get(n, float("nan")))
        self.steps.append(int(step))
        if step in self.snapshot_steps:
            grad = self.gradient(self.snapshot_layer)
            if grad is not None:
                self.snapshots[int(step)] = grad.detach().to("cpu", copy=True)

    def __call__(self, step: int, model: nn.Module | None = None) -> None:
        """``on_step`` callback for ``maskutils.fit``: ``fit(..., on_step=recorder)``."""
        self.record(step)
