"""Figures for the book: heatmaps of masks, weights and gradients, and curves.

Each function returns a matplotlib ``Figure`` (and draws on ``ax`` when one is given).
Masks use cividis (colour-blind safe, perceptually uniform); signed weights and gradients
use a diverging map centred on zero.

>>> import torch
>>> from maskutils.plot import heatmaps
>>> fig = heatmaps({"a mask": torch.ones(4, 8)}, kind="mask")
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.ticker import MaxNLocator

MASK_CMAP = ListedColormap(plt.get_cmap("cividis")([0.0, 1.0]), name="mask")
SIGNED_CMAP = "RdBu_r"  # ColorBrewer RdBu: diverging and colour-blind safe
_KINDS = {
    "mask": "",  # the ticks say kept / removed
    "weight": "weight value",
    "gradient": "gradient (loss per unit of weight)",
}


def _as_2d(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    x = np.asarray(x, dtype=float)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        x = x.reshape(x.shape[0], -1)  # conv kernels: one row per output channel
    return x


def _draw(ax, data: np.ndarray, kind: str, title: str | None, vmax: float | None):
    if kind == "mask":
        im = ax.imshow(data, cmap=MASK_CMAP, norm=BoundaryNorm([-0.5, 0.5, 1.5], 2),
                       interpolation="nearest", aspect="auto")
    else:
        lim = vmax if vmax is not None else float(np.abs(data).max()) or 1.0
        im = ax.imshow(data, cmap=SIGNED_CMAP, vmin=-lim, vmax=lim,
                       interpolation="nearest", aspect="auto")
    ax.set_xlabel("input unit (column)")
    ax.set_ylabel("output unit (row)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        ax.set_title(title)
    return im


def _colorbar(fig, im, axes, kind: str):
    bar = fig.colorbar(im, ax=axes, shrink=0.8, label=_KINDS[kind])
    if kind == "mask":
        bar.set_ticks([0, 1], labels=["removed", "kept"])
    return bar


def heatmaps(tensors: dict, kind="mask", suptitle: str | None = None,
             shared_scale: bool = True, ncols: int | None = None, size: float = 3.2):
    """Side-by-side heatmaps of 2-D tensors: ``{panel title: tensor}``.

    ``kind`` is ``"mask"``, ``"weight"`` or ``"gradient"`` (sets the colour map and bar label),
    or a dict ``{panel title: kind}`` to mix kinds (each panel then gets its own colour bar).
    With ``shared_scale`` signed panels share one colour scale, so they compare directly.
    """
    if not isinstance(tensors, dict) or not tensors:
        raise ValueError("tensors must be a non-empty dict {panel title: 2-D tensor}")
    kinds = dict(kind) if isinstance(kind, dict) else {title: kind for title in tensors}
    for title in tensors:
        if kinds.get(title) not in _KINDS:
            raise ValueError(f"kind of panel {title!r} must be one of {sorted(_KINDS)}, "
                             f"got {kinds.get(title)!r}")
    arrays = {k: _as_2d(v) for k, v in tensors.items()}
    signed = [a for t, a in arrays.items() if kinds[t] != "mask"]
    vmax = None
    if signed and shared_scale:
        vmax = max(float(np.abs(a).max()) for a in signed) or 1.0
    ncols = ncols or len(arrays)
    nrows = -(-len(arrays) // ncols)
    mixed = len(set(kinds[t] for t in tensors)) > 1
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols + 0.8 + 0.6 * mixed * ncols,
                                                    size * nrows),
                             squeeze=False, constrained_layout=True)
    for ax, (title, data) in zip(axes.flat, arrays.items()):
        im = _draw(ax, data, kinds[title], title, vmax)
        if mixed:
            _colorbar(fig, im, ax, kinds[title])
    for ax in list(axes.flat)[len(arrays):]:
        ax.axis("off")
    if not mixed:
        _colorbar(fig, im, axes, kinds[next(iter(tensors))])
    if suptitle:
        fig.suptitle(suptitle)
    return fig


def heatmap(tensor, kind: str = "mask", title: str | None = None, ax=None, vmax: float | None = None):
    """One heatmap; draws on ``ax`` if given, else on a new figure. Returns the figure."""
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {sorted(_KINDS)}, got {kind!r}")
    if ax is None:
        fig, ax = plt.subplots(figsize=(4.5, 3.5), constrained_layout=True)
    else:
        fig = ax.figure
    im = _draw(ax, _as_2d(tensor), kind, title, vmax)
    _colorbar(fig, im, ax, kind)
    return fig


def curves(x, ys: dict, xlabel: str, ylabel: str, title: str | None = None,
           spread: dict | None = None, ax=None, percent_x: bool = False, percent_y: bool = False):
    """Line plot of ``{label: y values}`` against ``x``; ``spread`` = ``{label: (low, high)}``
    draws a shaded band. Returns the figure."""
    if not isinstance(ys, dict) or not ys:
        raise ValueError("ys must be a non-empty dict {label: values}")
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 3.8), constrained_layout=True)
    else:
        fig = ax.figure
    xs = np.asarray(x, dtype=float)
    for label, y in ys.items():
        y = np.asarray(y, dtype=float)
        if y.shape != xs.shape:
            raise ValueError(f"{label!r} has {y.size} values but x has {xs.size}")
        (line,) = ax.plot(xs, y, marker="o", markersize=3, label=label)
        if spread and label in spread:
            low, high = spread[label]
            ax.fill_between(xs, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if percent_x:
        ax.xaxis.set_major_formatter(plt.matplotlib.ticker.PercentFormatter(1.0))
    if percent_y:
        ax.yaxis.set_major_formatter(plt.matplotlib.ticker.PercentFormatter(1.0))
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return fig
