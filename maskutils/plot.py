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
from matplotlib.ticker import MaxNLocator, MultipleLocator

MASK_CMAP = ListedColormap(plt.get_cmap("cividis")([0.0, 1.0]), name="mask")
SIGNED_CMAP = "RdBu_r"  # ColorBrewer RdBu: diverging and colour-blind safe
_KINDS = {
    "mask": "",  # the ticks say kept / removed
    "weight": "weight value",
    "gradient": "gradient (loss per unit of weight)",
}


def _figure_and_axes(ax, figsize):
    """``ax`` and its figure, or a new figure of ``figsize`` with one axes when ``ax`` is None."""
    if ax is None:
        return plt.subplots(figsize=figsize, constrained_layout=True)
    return ax.figure, ax


def _as_2d(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    x = np.asarray(x, dtype=float)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        x = x.reshape(x.shape[0], -1)  # conv kernels: one row per output channel
    return x


GROUP_LINE_COLOUR = "0.55"  # mid grey: visible on cividis' navy and yellow, and on white


def _check_column_group(column_group):
    """Refuse a bad ``column_group`` before anything is drawn."""
    if column_group is None:
        return
    if isinstance(column_group, bool) or not isinstance(column_group, (int, np.integer)) \
            or column_group < 2:
        raise ValueError(f"column_group must be an int >= 2, the width of a group of columns "
                         f"(4 for a 2:4 mask), or None for no lines; got {column_group!r}")


def _check_legend_loc(legend_loc):
    if legend_loc is not None and not isinstance(legend_loc, str):
        raise TypeError(f"legend_loc must be a matplotlib location such as 'best' or "
                        f"'lower right', 'outside' (right of the axes) or None (no legend); "
                        f"got {legend_loc!r}")


def _legend(ax, legend_loc, **kwargs):
    """The axes' legend at ``legend_loc``; ``"outside"`` puts it right of the axes."""
    if legend_loc is None:
        return None
    if legend_loc == "outside":
        return ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
                         **kwargs)
    return ax.legend(loc=legend_loc, **kwargs)


def _draw(ax, data: np.ndarray, kind: str, title: str | None, vmax: float | None,
          column_group: int | None = None):
    if kind == "mask":
        im = ax.imshow(data, cmap=MASK_CMAP, norm=BoundaryNorm([-0.5, 0.5, 1.5], 2),
                       interpolation="nearest", aspect="auto")
    else:
        lim = vmax if vmax is not None else float(np.abs(data).max()) or 1.0
        im = ax.imshow(data, cmap=SIGNED_CMAP, vmin=-lim, vmax=lim,
                       interpolation="nearest", aspect="auto")
    if column_group:  # a thin line between groups, e.g. the groups of four of a 2:4 mask
        for edge in range(column_group, data.shape[1], column_group):
            ax.axvline(edge - 0.5, color=GROUP_LINE_COLOUR, linewidth=1.0)
    ax.set_xlabel("input unit (column)")
    ax.set_ylabel("output unit (row)")
    if column_group:  # ticks at the start of a group (every group, or every k-th)
        every = max(1, -(-data.shape[1] // (column_group * 6)))
        ax.xaxis.set_major_locator(MultipleLocator(column_group * every))
    else:  # as many ticks as the panel's width has room for (3-digit labels do not touch)
        ax.xaxis.set_major_locator(MaxNLocator(nbins="auto", integer=True))
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
             shared_scale: bool = True, ncols: int | None = None, size: float = 3.2,
             column_group: int | None = None):
    """Side-by-side heatmaps of 2-D tensors: ``{panel title: tensor}``.

    ``kind`` is ``"mask"``, ``"weight"`` or ``"gradient"`` (sets the colour map and bar label),
    or a dict ``{panel title: kind}`` to mix kinds (each panel then gets its own colour bar).
    With ``shared_scale`` signed panels share one colour scale, so they compare directly.
    ``column_group`` draws a thin grey line every that many columns, so that groups along
    the input dimension show (``column_group=4`` for the groups of a 2:4 mask).

    >>> import torch
    >>> fig = heatmaps({"2:4": torch.tensor([[1., 0., 1., 0., 0., 1., 1., 0.]])},
    ...                column_group=4)
    >>> [line.get_xdata()[0] for line in fig.axes[0].lines]
    [3.5]
    """
    if not isinstance(tensors, dict) or not tensors:
        raise ValueError("tensors must be a non-empty dict {panel title: 2-D tensor}")
    _check_column_group(column_group)
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
        im = _draw(ax, data, kinds[title], title, vmax, column_group)
        if mixed:
            _colorbar(fig, im, ax, kinds[title])
    for ax in list(axes.flat)[len(arrays):]:
        ax.axis("off")
    if not mixed:
        _colorbar(fig, im, axes, kinds[next(iter(tensors))])
    if suptitle:
        fig.suptitle(suptitle)
    return fig


def heatmap(tensor, kind: str = "mask", title: str | None = None, ax=None, vmax: float | None = None,
            column_group: int | None = None):
    """One heatmap; draws on ``ax`` if given, else on a new figure. Returns the figure.

    ``column_group`` draws a thin line every that many columns, as in ``heatmaps``.
    """
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {sorted(_KINDS)}, got {kind!r}")
    _check_column_group(column_group)
    fig, ax = _figure_and_axes(ax, figsize=(4.5, 3.5))
    im = _draw(ax, _as_2d(tensor), kind, title, vmax, column_group)
    _colorbar(fig, im, ax, kind)
    return fig


def _whole_numbers(xs: np.ndarray) -> bool:
    return bool(xs.size) and bool(np.all(np.isfinite(xs))) and bool(np.all(xs == np.round(xs)))


def curves(x, ys: dict, xlabel: str, ylabel: str, title: str | None = None,
           spread: dict | None = None, ax=None, percent_x: bool = False, percent_y: bool = False,
           integer_x: bool | None = None, legend_loc: str | None = "best"):
    """Line plot of ``{label: y values}`` against ``x``; ``spread`` = ``{label: (low, high)}``
    draws a shaded band. Returns the figure.

    ``integer_x``: ticks only at whole numbers (epochs, steps). By default (``None``) they are
    when every x is a whole number and ``percent_x`` is off, so an epoch axis never reads 2.5.
    ``legend_loc``: where the legend goes, a matplotlib location (``"best"``, ``"lower
    right"``...), ``"outside"`` (right of the axes, covering nothing) or ``None`` (none).

    >>> fig = curves([1, 2, 3], {"loss": [0.9, 0.5, 0.4]}, "epoch", "training loss")
    >>> [float(t) for t in fig.axes[0].get_xticks() if 1 <= t <= 3]
    [1.0, 2.0, 3.0]
    """
    if not isinstance(ys, dict) or not ys:
        raise ValueError("ys must be a non-empty dict {label: values}")
    _check_legend_loc(legend_loc)
    xs = np.asarray(x, dtype=float)
    for label, y in ys.items():
        if np.shape(np.asarray(y, dtype=float)) != xs.shape:
            raise ValueError(f"{label!r} has {np.size(y)} values but x has {xs.size}")
    fig, ax = _figure_and_axes(ax, figsize=(6, 3.8))
    for label, y in ys.items():
        y = np.asarray(y, dtype=float)
        (line,) = ax.plot(xs, y, marker="o", markersize=3, label=label)
        if spread and label in spread:
            low, high = spread[label]
            ax.fill_between(xs, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if percent_x:
        ax.xaxis.set_major_formatter(plt.matplotlib.ticker.PercentFormatter(1.0))
    if integer_x or (integer_x is None and not percent_x and _whole_numbers(xs)):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if percent_y:
        ax.yaxis.set_major_formatter(plt.matplotlib.ticker.PercentFormatter(1.0))
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    _legend(ax, legend_loc)
    return fig


def layer_curves(x, runs: dict, xlabel: str, ylabel: str, title: str | None = None,
                 logy: bool = False, size: float = 3.4, legend_loc: str | None = "best",
                 integer_x: bool | None = None, ncols: int | None = None):
    """Small multiples, one panel per layer: ``runs`` = ``{run label: {layer: y values}}``.

    Every run draws one line in each panel, in the same colour throughout, so runs compare
    layer by layer (for example per-layer gradient norms of a masked and a dense model).
    ``logy`` puts the y axis on a log scale. ``ncols`` panels per row (default: all in one
    row; ``ncols=2`` keeps three layers within a page column). The legend goes in the first
    panel at ``legend_loc``; ``"outside"`` puts it where it covers no line: in the grid's
    first empty cell, or else right of the first row. ``None`` leaves it out. ``integer_x``
    as in ``curves``. Returns the figure.

    >>> fig = layer_curves([1, 2, 3], {"dense": {"layer 0": [3, 2, 1]},
    ...                                "masked": {"layer 0": [2, 1, 1]}}, "step", "norm")
    """
    if not isinstance(runs, dict) or not runs or not all(isinstance(v, dict) and v for v in runs.values()):
        raise ValueError("runs must be a non-empty dict {run label: {layer: values}}")
    _check_legend_loc(legend_loc)
    layers = list(dict.fromkeys(layer for per_layer in runs.values() for layer in per_layer))
    if ncols is not None and (isinstance(ncols, bool) or not isinstance(ncols, int) or ncols < 1):
        raise ValueError(f"ncols must be an int >= 1 (panels per row), got {ncols!r}")
    xs = np.asarray(x, dtype=float)
    for label, per_layer in runs.items():
        for layer, y in per_layer.items():
            if np.shape(np.asarray(y, dtype=float)) != xs.shape:
                raise ValueError(f"{label!r}, {layer!r} has {np.size(y)} values but x has "
                                 f"{xs.size}")
    ncols = min(ncols or len(layers), len(layers))
    nrows = -(-len(layers) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * 0.85 * nrows),
                             squeeze=False, constrained_layout=True, sharey=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    whole = integer_x or (integer_x is None and _whole_numbers(xs))
    for ax, layer in zip(axes.flat, layers):
        for i, (label, per_layer) in enumerate(runs.items()):
            if layer not in per_layer:
                continue
            y = np.asarray(per_layer[layer], dtype=float)
            ax.plot(xs, y, label=label, color=colours[i % len(colours)], linewidth=1.2)
        ax.set_title(str(layer))
        ax.set_xlabel(xlabel)
        if whole:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if logy:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    spare = list(axes.flat)[len(layers):]
    for ax in spare:
        ax.axis("off")
    for row in axes:
        row[0].set_ylabel(ylabel)
    first = axes.flat[0]
    if legend_loc == "outside":
        handles, labels = [], []
        for ax in list(axes.flat)[:len(layers)]:  # every run, even one missing in panel 0
            for handle, label in zip(*ax.get_legend_handles_labels()):
                if label not in labels:
                    handles.append(handle)
                    labels.append(label)
        if spare:
            spare[0].legend(handles, labels, loc="center")
        else:
            axes[0, -1].legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                               borderaxespad=0.0)
    else:
        _legend(first, legend_loc)
    if title:
        fig.suptitle(title)
    return fig


def speed_curves(x, seconds: dict, xlabel: str, title: str | None = None,
                 mark: tuple | None = None, percent_x: bool = False, ax=None):
    """Timings against ``x`` on a log scale: ``seconds`` = ``{label: seconds per call}``.

    The y axis shows milliseconds. ``mark`` = ``(x value, label)`` draws a dashed vertical
    line there (for example where a sparse kernel starts to beat the dense one).
    Returns the figure.

    >>> fig = speed_curves([0.5, 0.9], {"dense": [1e-3, 1e-3], "sparse": [2e-3, 4e-4]},
    ...                    "sparsity", mark=(0.7, "crossover"))
    """
    if not isinstance(seconds, dict) or not seconds:
        raise ValueError("seconds must be a non-empty dict {label: seconds per call}")
    millis = {}
    for label, ys in seconds.items():
        ys = np.asarray(ys, dtype=float)
        if (ys <= 0).any():
            raise ValueError(f"{label!r} has a time <= 0; timings must be positive")
        millis[label] = ys * 1e3
    fig = curves(x, millis, xlabel, "time per call (ms, log scale)", title=title, ax=ax,
                 percent_x=percent_x)
    ax = fig.axes[0] if ax is None else ax
    if mark is not None:
        where, text = mark
        ax.axvline(where, color="0.3", linestyle="--", linewidth=1, label=text)
    ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return fig


def grouped_bars(groups: dict, ylabel: str, title: str | None = None,
                 reference: float | None = None, ax=None):
    """Grouped bar chart: ``groups`` = ``{group: {bar label: value}}``, one colour per bar label.

    ``reference`` draws a horizontal dashed line (for example 1.0 for ratios to a baseline).
    Returns the figure.

    >>> fig = grouped_bars({"batch 32": {"dense": 1.0, "masked": 1.2}}, "time / dense",
    ...                    reference=1.0)
    """
    if not isinstance(groups, dict) or not groups or not all(
            isinstance(v, dict) and v for v in groups.values()):
        raise ValueError("groups must be a non-empty dict {group: {bar label: value}}")
    labels = list(dict.fromkeys(k for bars in groups.values() for k in bars))
    fig, ax = _figure_and_axes(ax, figsize=(2.8 + 0.45 * len(labels) * len(groups), 3.8))
    width = 0.8 / len(labels)
    centres = np.arange(len(groups))
    for i, label in enumerate(labels):
        values = [groups[g].get(label, np.nan) for g in groups]
        ax.bar(centres + (i - (len(labels) - 1) / 2) * width, values, width, label=label)
    if reference is not None:
        ax.axhline(reference, color="0.3", linestyle="--", linewidth=1)
    ax.set_xticks(centres, [str(g) for g in groups])
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig


def gate_histograms(gates: dict, title: str | None = None, ax=None, bins: int = 40,
                    logy: bool = True, threshold: float | None = 0.5):
    """Overlaid histograms of gate values in [0, 1]: ``gates`` = ``{label: tensor(s)}``.

    A value may be a tensor or a dict/list of tensors (for example ``gate_values(model)``);
    all entries are pooled. Labels are drawn in order with viridis colours (early to late,
    small to large), as step outlines so overlapping histograms stay readable. ``logy``
    counts on a log scale, so a handful of undecided gates between two large peaks still
    shows. ``threshold`` draws the dashed line where ``binarize`` cuts. Returns the figure.

    >>> import torch
    >>> fig = gate_histograms({"start": torch.full((100,), 0.95), "end": torch.rand(100)})
    """
    if not isinstance(gates, dict) or not gates:
        raise ValueError("gates must be a non-empty dict {label: tensor of gate values}")
    fig, ax = _figure_and_axes(ax, figsize=(6, 3.6))
    colours = plt.get_cmap("viridis")(np.linspace(0.0, 0.9, len(gates)))
    edges = np.linspace(0.0, 1.0, bins + 1)
    for colour, (label, value) in zip(colours, gates.items()):
        parts = value.values() if isinstance(value, dict) else (
            value if isinstance(value, (list, tuple)) else [value])
        data = np.concatenate([_as_2d(p).ravel() for p in parts])
        if data.size and (data.min() < 0 or data.max() > 1):
            raise ValueError(f"{label!r} has values outside [0, 1]; gates live in [0, 1]")
        ax.hist(data, bins=edges, histtype="step", linewidth=1.6, color=colour,
                label=str(label))
    if threshold is not None:
        ax.axvline(threshold, color="0.3", linestyle="--", linewidth=1)
    if logy:
        ax.set_yscale("log")
    ax.set_xlim(-0.02, 1.02)
    ax.set_xlabel("gate value (0 = weight removed, 1 = kept)")
    ax.set_ylabel("number of gates" + (" (log scale)" if logy else ""))
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def tradeoff(series: dict, reference: float | None = None, reference_label: str = "dense",
             title: str | None = None, ax=None,
             xlabel: str = "sparsity (fraction of weights removed)",
             ylabel: str = "test accuracy"):
    """Accuracy against sparsity, one line per method: ``series`` = ``{label: (xs, ys)}``.

    Unlike ``curves``, every series has its own x values (each run lands at its own
    sparsity); points are joined in order of x. ``reference`` draws a dashed horizontal
    line (for example the dense model's accuracy). Both axes are in percent. Returns the figure.

    >>> fig = tradeoff({"learned": ([0.5, 0.9], [0.97, 0.95])}, reference=0.97)
    """
    if not isinstance(series, dict) or not series:
        raise ValueError("series must be a non-empty dict {label: (sparsities, accuracies)}")
    fig, ax = _figure_and_axes(ax, figsize=(6.4, 4))
    markers = "osD^vP*X"
    for i, (label, pair) in enumerate(series.items()):
        xs, ys = (np.asarray(v, dtype=float) for v in pair)
        if xs.shape != ys.shape:
            raise ValueError(f"{label!r} has {xs.size} sparsities but {ys.size} accuracies")
        order = np.argsort(xs, kind="stable")
        ax.plot(xs[order], ys[order], marker=markers[i % len(markers)], markersize=5, label=label)
    if reference is not None:
        ax.axhline(reference, color="0.3", linestyle="--", linewidth=1, label=reference_label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_formatter(plt.matplotlib.ticker.PercentFormatter(1.0, decimals=0))
    ax.yaxis.set_major_formatter(plt.matplotlib.ticker.PercentFormatter(1.0, decimals=0))
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig
