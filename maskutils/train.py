"""A small training loop with a progress bar and a history, and test accuracy.

>>> from maskutils import digits_loaders, digits_mlp, fit, evaluate
>>> train, test = digits_loaders()
>>> model = digits_mlp()
>>> history = fit(model, train, epochs=2, test_loader=test, progress=False)
>>> sorted(history)
['epoch', 'test_acc', 'train_loss']
>>> 0.0 <= evaluate(model, test) <= 1.0
True
"""
from __future__ import annotations

import collections.abc
import numbers
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm


def _progress_bar(epochs: int, enabled: bool):
    """A ``tqdm.auto`` bar over the epochs that leaves nothing behind when it closes.

    In a notebook, tqdm's widget bar with ``leave=False`` is hidden on close, but the saved
    output still refers to the closed widget: a reopened notebook shows "Error displaying
    widget" there, and the HTML book a frozen bar. This bar is displayed through a display
    handle and replaced by empty output when it closes.
    """
    bar_class = tqdm
    try:
        from tqdm.notebook import tqdm as notebook_tqdm
    except ImportError:  # pragma: no cover - tqdm without its notebook module
        notebook_tqdm = None
    if enabled and notebook_tqdm is not None and issubclass(tqdm, notebook_tqdm):
        bar_class = _vanishing_notebook_bar(tqdm)  # tqdm.auto chose the widget bar
    # The bar appears only when training takes longer than a second: a digits run of a few
    # hundred milliseconds would otherwise leave a bar in every rendered page.
    return bar_class(range(1, epochs + 1), desc="epochs", disable=not enabled, leave=False,
                     delay=1.0)


def _vanishing_notebook_bar(widget_tqdm):
    from IPython.display import HTML, display

    class VanishingBar(widget_tqdm):
        def display(self, *args, check_delay=True, **kwargs):
            if check_delay and self.delay > 0 and not self.displayed:
                self._handle = display(self.container, display_id=True)
                self.displayed, check_delay = True, False
            return super().display(*args, check_delay=check_delay, **kwargs)

        def close(self):
            super().close()
            handle = getattr(self, "_handle", None)
            if handle is not None:
                handle.update(HTML(""))  # the saved output holds no widget
                self._handle = None

    return VanishingBar


def check_loader(loader, what: str = "train_loader"):
    """Return ``loader`` after checking it is an iterable of ``(inputs, targets)`` batches.

    Nothing is drawn from it (drawing would advance a shuffling loader's random generator):
    ``None`` and non-iterables are refused, and so is a loader with a length of 0.

    >>> check_loader(None)
    Traceback (most recent call last):
    ...
    TypeError: train_loader must be an iterable of (inputs, targets) batches, such as a ...
    """
    if loader is None or not isinstance(loader, collections.abc.Iterable) or isinstance(
            loader, (str, bytes, torch.Tensor)):
        raise TypeError(
            f"{what} must be an iterable of (inputs, targets) batches, such as a "
            f"torch.utils.data.DataLoader or maskutils.digits_loaders()[0], got "
            f"{type(loader).__name__}")
    if isinstance(loader, collections.abc.Sized) and len(loader) == 0:
        raise ValueError(f"{what} is empty (length 0): it yields no batches to train on; check "
                         f"the data set and the batch size (drop_last=True drops a short batch)")
    return loader


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    return torch.device("cpu")


def _mean_over_samples(model: nn.Module, loader, per_batch) -> float:
    """Sum ``per_batch(logits, y)`` over ``loader`` in eval mode (the mode is restored),
    divided by the number of samples."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
    device = _model_device(model)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        with torch.no_grad():
            for x, y in loader:
                x, y = x.to(device), y.to(device)
                total += float(per_batch(model(x), y))
                count += y.numel()
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("the loader yielded no samples")
    return total / count


def evaluate(model: nn.Module, loader) -> float:
    """Accuracy of ``model`` on ``loader`` in [0, 1], computed in eval mode (the mode is restored)."""
    return _mean_over_samples(model, loader, lambda logits, y: (logits.argmax(dim=1) == y).sum())


def evaluate_loss(model: nn.Module, loader) -> float:
    """Mean cross-entropy of ``model`` on ``loader``, in eval mode (the mode is restored)."""
    return _mean_over_samples(
        model, loader, lambda logits, y: nn.functional.cross_entropy(logits, y, reduction="sum"))


def decayed_adam(params, lr: float, steps: int) -> torch.optim.Optimizer:
    """``Adam(params, lr)`` whose learning rate decays to 0 along a cosine over ``steps``
    optimizer steps, stepped by the optimizer itself (pass it to ``fit``): the standard
    decayed schedule that fair comparisons train with. ``params``: parameters or groups.

    >>> model = nn.Linear(2, 1)
    >>> optimizer = decayed_adam(model.parameters(), lr=1e-2, steps=4)
    >>> for _ in range(4):
    ...     optimizer.step()
    >>> round(optimizer.param_groups[0]["lr"], 6)
    0.0
    """
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ValueError(f"steps must be a positive int (epochs * batches per epoch), "
                         f"got {steps!r}")
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not lr > 0:
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    optimizer = torch.optim.Adam(params, lr=lr)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    optimizer.register_step_post_hook(lambda *_: cosine.step())
    return optimizer


def fit(
    model: nn.Module,
    train_loader,
    epochs: int = 20,
    optimizer: torch.optim.Optimizer | None = None,
    lr: float = 1e-3,
    test_loader=None,
    val_loader=None,
    penalty: Callable[[nn.Module], torch.Tensor] | None = None,
    on_step: Callable[[int, nn.Module], None] | None = None,
    on_epoch: Callable[[int, nn.Module], None] | None = None,
    progress: bool = True,
) -> dict[str, list]:
    """Train ``model`` with cross-entropy and return the history of each epoch.

    A ``tqdm.auto`` progress bar over epochs shows when ``progress`` is true and the run
    lasts more than a second.

    - ``optimizer``: defaults to ``Adam(model.parameters(), lr)``.
    - ``penalty(model)``: a scalar added to the loss (e.g. ``lambda m: lam * gate_penalty(m)``).
    - ``on_step(step, model)``: called after every optimizer step (step counts from 1).
    - ``on_epoch(epoch, model)``: called after every epoch (epoch counts from 1).

    The history has ``epoch`` and ``train_loss`` (mean over the epoch's batches),
    ``val_acc`` when ``val_loader`` is given (choose epochs and settings on it) and
    ``test_acc`` when ``test_loader`` is given (for reporting only).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
    if isinstance(epochs, bool) or not isinstance(epochs, numbers.Integral) or epochs < 0:
        raise ValueError(f"epochs must be a non-negative int, got {epochs!r}")
    check_loader(train_loader)
    for name, other in (("val_loader", val_loader), ("test_loader", test_loader)):
        if other is not None:
            check_loader(other, name)
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer or None (Adam), got "
                        f"{type(optimizer).__name__}")
    for name, function in (("penalty", penalty), ("on_step", on_step), ("on_epoch", on_epoch)):
        if function is not None and not callable(function):
            raise TypeError(f"{name} must be a function or None, got {type(function).__name__}")
    if optimizer is None:
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    device = _model_device(model)
    history: dict[str, list] = {"epoch": [], "train_loss": []}
    if val_loader is not None:
        history["val_acc"] = []
    if test_loader is not None:
        history["test_acc"] = []
    bar = _progress_bar(epochs, progress)
    try:
        _train_epochs(model, train_loader, bar, optimizer, device, penalty, on_step, on_epoch,
                      val_loader, test_loader, history)
    finally:
        bar.close()
    return history


def _train_epochs(model, train_loader, bar, optimizer, device, penalty, on_step, on_epoch,
                  val_loader, test_loader, history) -> None:
    loss_fn = nn.CrossEntropyLoss()
    step = 0
    for epoch in bar:
        model.train()
        total, batches = 0.0, 0
        for x, y in train_loader:
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            if penalty is not None:
                loss = loss + penalty(model)
            loss.backward()
            optimizer.step()
            step += 1
            total += float(loss.detach())
            batches += 1
            if on_step is not None:
                on_step(step, model)
        if batches == 0:
            raise ValueError("train_loader yielded no batches; check the data set and batch size")
        history["epoch"].append(epoch)
        history["train_loss"].append(total / batches)
        if val_loader is not None:
            history["val_acc"].append(evaluate(model, val_loader))
            bar.set_postfix(val_acc=f"{history['val_acc'][-1]:.3f}")
        if test_loader is not None:
            history["test_acc"].append(evaluate(model, test_loader))
        if on_epoch is not None:
            on_epoch(epoch, model)
