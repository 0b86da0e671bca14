"""Reporting a result measured over several seeds: its mean and its range.

The book shows every headline comparison as mean with min–max over seeds, so that a reader
sees the spread a verdict has to survive.

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


__all__ = ["mean_range"]
