"""Reporting results: a mean and its range over seeds, and numbers glued into the prose.

The book shows every headline comparison as mean with min–max over seeds, so that a reader
sees the spread a verdict has to survive; ``glue`` hands a computed value to the page's
prose (myst-nb's ``{glue:text}`` role), so that no number in a sentence is typed by hand.

>>> from maskutils import mean_range
>>> mean_range([0.95, 0.97, 0.96])
'96.0% (95.0-97.0%)'
>>> mean_range([1.04, 0.97, 1.12], ".2f")
'1.04 (0.97-1.12)'
"""
from __future__ import annotations

import math


def mean_range(values, fmt: str = ".1%") -> str:
    """``"mean (min-max)"`` of ``values`` (numbers or one-element tensors), each as ``fmt``.

    With a percent format the sign is written once, after the range.
    """
    try:
        numbers_ = [float(v) for v in values]
    except (TypeError, ValueError) as err:
        raise TypeError(f"values must be numbers (one per seed), got {values!r}") from err
    if not numbers_:
        raise ValueError("values is empty: pass one number per seed")
    if any(math.isnan(v) for v in numbers_):
        raise ValueError(f"values contain NaN: {numbers_}")
    if not isinstance(fmt, str):
        raise TypeError(f"fmt must be a format spec such as '.1%' or '.2f', got {fmt!r}")
    mean = math.fsum(numbers_) / len(numbers_)
    low, high = (format(v, fmt) for v in (min(numbers_), max(numbers_)))
    if fmt.endswith("%"):
        low = low[:-1]
    return f"{format(mean, fmt)} ({low}-{high})"


GLUE_PREFIX = "application/papermill.record/"  # the hidden mime type myst-nb reads


def glue(name: str, value):
    """Store ``value`` under ``name`` for the rendered page, and return it.

    The prose then quotes it with ``{glue:text}`name``` (or, from another page,
    ``{glue:text}`03_learnable_masks.ipynb::name```). It writes the same hidden output as
    ``myst_nb.glue(name, value, display=False)`` but needs no myst-nb, so a chapter runs in
    Colab as it does in the book build. Outside IPython it only returns ``value``. Glue a
    formatted string (``f"{x:.1%}"``) to control how the number reads.

    >>> glue("sparsity", "50.0%")
    '50.0%'
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"name must be a Python identifier such as 'margin_3e4', got {name!r}")
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        return value
    shell = get_ipython()
    if shell is None:
        return value
    bundle, metadata = shell.display_formatter.format(value)
    metadata["scrapbook"] = {"name": name, "mime_prefix": GLUE_PREFIX}
    display({GLUE_PREFIX + mime: data for mime, data in bundle.items()}, raw=True,
            metadata=metadata)
    return value


__all__ = ["glue", "mean_range"]
