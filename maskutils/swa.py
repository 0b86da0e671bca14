"""Stochastic weight averaging (SWA) for masked models, on top of ``torch.optim.swa_utils``.

SWA averages the weights visited late in training, with a constant or cyclic learning rate
(Izmailov et al., 2018). For a model masked with ``apply_mask`` it is safe as it is:
``AveragedModel`` averages the *parameters* (the dense originals) and, with the default
``use_buffers=False``, copies the *buffers* (the masks) from the model at every update, so
``averaged original * mask`` is exactly zero wherever the mask is. Two cases are not safe:

- ``use_buffers=True`` averages the buffers too: a mask that changed inside the averaging
  window becomes fractions, not 0s and 1s.
- learnable gates (``maskutils.learnable``) are parameters: their logits get averaged
  separately from the weights, and the averaged model binarizes to a denser mask. Binarize
  first, then run the SWA phase with the mask fixed. ``fit_swa`` refuses such a model.

>>> from maskutils import digits_loaders, digits_mlp, mask_layers, sparsity
>>> from maskutils.swa import fit_swa
>>> train, test = digits_loaders()
>>> model = digits_mlp()
>>> _ = mask_layers(model, 0.8)
>>> swa_model, history = fit_swa(model, train, epochs=4, swa_start=2, swa_lr=0.05,
...                              test_loader=test, progress=False)
>>> sparsity(swa_model.module) == sparsity(model)
True
"""
from __future__ import annotations

import math
import numbers
from typing import Callable

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.optim.swa_utils import SWALR, AveragedModel, update_bn

from .train import check_loader, evaluate, evaluate_loss, fit


def learnable_parametrizations(model: nn.Module) -> list[str]:
    """Names (``"layers.0.weight"``) of parametrized tensors whose parametrization has
    parameters of its own, such as learnable gates; fixed masks have none.

    >>> from maskutils import digits_mlp, mask_layers
    >>> from maskutils.learnable import apply_learnable_mask
    >>> model = digits_mlp()
    >>> _ = mask_layers(model, 0.5)              # fixed masks: buffers, not parameters
    >>> learnable_parametrizations(model)
    []
    >>> _ = apply_learnable_mask(model.layers[0])
    >>> learnable_parametrizations(model)
    ['layers.0.weight']
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
    found = []
    for module_name, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for tensor_name, plist in module.parametrizations.items():
            if any(True for p in plist if any(True for _ in p.parameters())):
                found.append(f"{module_name}.{tensor_name}".lstrip("."))
    return found


def check_fixed_masks(model: nn.Module) -> None:
    """Raise a ``ValueError`` if ``model`` still has learnable gates (binarize them first).

    Fixed masks (``apply_mask``) pass: they are buffers, which ``AveragedModel`` copies.
    Learnable gates are parameters, which it would average apart from the weights.

    >>> from maskutils import digits_mlp
    >>> from maskutils.learnable import binarize, learnable_mask_layers
    >>> model = digits_mlp()
    >>> _ = learnable_mask_layers(model)
    >>> check_fixed_masks(model)
    Traceback (most recent call last):
    ...
    ValueError: layers.0.weight, ... Binarize first ...
    >>> _ = binarize(model)
    >>> check_fixed_masks(model)                  # passes: fixed 0/1 masks now
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
    learnable = learnable_parametrizations(model)
    if learnable:
        raise ValueError(
            f"{', '.join(learnable)} still carry learnable gates; averaging their logits apart "
            "from the weights gives a denser mask. Binarize first "
            "(maskutils.learnable.binarize(model)), then run the SWA phase with the mask fixed."
        )


def has_batchnorm(model: nn.Module) -> bool:
    """Whether ``model`` has a BatchNorm layer (whose statistics ``update_bn`` must recompute).

    >>> from maskutils import digits_mlp
    >>> has_batchnorm(digits_mlp()), has_batchnorm(digits_mlp(batchnorm=True))
    (False, True)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _positive_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{what} must be a positive int, got {value!r}")
    return int(value)


def _positive_real(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0 \
            or not math.isfinite(value):
        raise ValueError(f"{what} must be a positive number, got {value!r}")
    return float(value)


def fit_swa(model: nn.Module, train_loader, epochs: int, swa_start: int, swa_lr: float,
            optimizer: torch.optim.Optimizer | None = None, lr: float = 0.05,
            test_loader=None, anneal_epochs: int = 1, progress: bool = True,
            on_epoch: Callable[[int, nn.Module], None] | None = None, val_loader=None):
    """Train ``model`` and average its weights once per epoch from epoch ``swa_start`` on.

    - ``optimizer``: defaults to SGD with momentum 0.9 at ``lr``.
    - From ``swa_start`` (epochs count from 1), ``SWALR`` anneals the learning rate of every
      parameter group to ``swa_lr`` over ``anneal_epochs`` epochs (it is stepped once per
      epoch; ``swa_lr`` is an absolute rate, not a factor) and ``AveragedModel`` takes one
      snapshot per epoch; masks are copied, never averaged (``use_buffers=False``), so the
      average always carries the model's latest masks.
    - ``on_epoch(epoch, model)``: called after every epoch, before the snapshot is taken
      (to prune gradually, or to keep a copy of each epoch's weights).
    - When the model has BatchNorm, ``update_bn`` recomputes the averaged model's statistics
      with ``train_loader`` before each evaluation and at the end.

    ``model`` must not have learnable gates (``check_fixed_masks``): binarize first. All
    arguments are checked before anything is trained.

    Returns ``(swa_model, history)``: ``swa_model.module`` is the averaged copy of ``model``.
    The history has what ``fit`` records plus ``lr`` (group 0's rate during each epoch);
    when ``val_loader`` is given, ``val_acc`` of the last iterate and ``swa_val_acc`` of the
    average (choose ``swa_start``, learning rates and epochs on these); when ``test_loader``
    is given, ``test_loss`` of the last iterate and ``swa_test_acc`` / ``swa_test_loss`` of
    the average (for reporting only). Averages are NaN before ``swa_start``.

    >>> from maskutils import digits_loaders, digits_mlp
    >>> train, test = digits_loaders()
    >>> swa_model, history = fit_swa(digits_mlp(), train, epochs=3, swa_start=2,
    ...                              swa_lr=0.05, test_loader=test, progress=False)
    >>> history["swa_test_acc"][0]            # no average before swa_start
    nan
    >>> int(swa_model.n_averaged)             # epochs 2 and 3
    2
    >>> train, val, test = digits_loaders(validation=True)
    >>> _, history = fit_swa(digits_mlp(), train, epochs=2, swa_start=2, swa_lr=0.05,
    ...                      val_loader=val, progress=False)
    >>> sorted(history)
    ['epoch', 'lr', 'swa_val_acc', 'train_loss', 'val_acc']
    """
    check_fixed_masks(model)
    epochs = _positive_int(epochs, "epochs")
    swa_start = _positive_int(swa_start, "swa_start")
    anneal_epochs = _positive_int(anneal_epochs, "anneal_epochs")
    if swa_start > epochs:
        raise ValueError(f"swa_start ({swa_start}) is after the last epoch ({epochs}); "
                         "choose swa_start <= epochs, so that at least one epoch is averaged")
    swa_lr = _positive_real(swa_lr, "swa_lr")
    if on_epoch is not None and not callable(on_epoch):
        raise TypeError(f"on_epoch must be a function (epoch, model) -> None, got {on_epoch!r}")
    check_loader(train_loader)
    for name, other in (("val_loader", val_loader), ("test_loader", test_loader)):
        if other is not None:
            check_loader(other, name)
    if optimizer is None:
        lr = _positive_real(lr, "lr")
    elif not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    else:
        own = {id(p) for p in model.parameters()}
        if not any(id(p) in own for g in optimizer.param_groups for p in g["params"]):
            raise ValueError("optimizer does not hold any parameter of model; build it from "
                             "model.parameters() (of this model, not of a copy)")
    if optimizer is None:
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    swa_model = AveragedModel(model, use_buffers=False)
    scheduler = SWALR(optimizer, swa_lr=swa_lr, anneal_epochs=anneal_epochs)
    bn = has_batchnorm(model)
    extra = {"lr": [], "swa_val_acc": [], "test_loss": [], "swa_test_acc": [],
             "swa_test_loss": []}

    def after_epoch(epoch: int, trained: nn.Module) -> None:
        extra["lr"].append(optimizer.param_groups[0]["lr"])
        if on_epoch is not None:
            on_epoch(epoch, trained)
        averaging = epoch >= swa_start
        if averaging:
            swa_model.update_parameters(trained)
            scheduler.step()
            if bn and (val_loader is not None or test_loader is not None):
                update_bn(train_loader, swa_model)
        if val_loader is not None:
            extra["swa_val_acc"].append(
                evaluate(swa_model, val_loader) if averaging else math.nan)
        if test_loader is None:
            return
        extra["test_loss"].append(evaluate_loss(trained, test_loader))
        if averaging:
            extra["swa_test_acc"].append(evaluate(swa_model, test_loader))
            extra["swa_test_loss"].append(evaluate_loss(swa_model, test_loader))
        else:
            extra["swa_test_acc"].append(math.nan)
            extra["swa_test_loss"].append(math.nan)

    history = fit(model, train_loader, epochs=epochs, optimizer=optimizer,
                  val_loader=val_loader, test_loader=test_loader, on_epoch=after_epoch,
                  progress=progress)
    if bn:
        update_bn(train_loader, swa_model)
    history.update({k: v for k, v in extra.items() if v})
    return swa_model, history
