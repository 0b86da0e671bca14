"""The data every chapter uses: scikit-learn's bundled 8x8 digits (no download).

1797 images, 64 pixel features, 10 classes; a stratified 80/20 split, standardized with the
training set's statistics. Batches are already on the requested device.

>>> from maskutils import digits_loaders
>>> train, test = digits_loaders(batch_size=64)
>>> x, y = next(iter(train))
>>> tuple(x.shape), x.dtype, y.dtype
((64, 64), torch.float32, torch.int64)
"""
from __future__ import annotations

import numbers
from functools import lru_cache

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, TensorDataset


@lru_cache(maxsize=None)
def _digits(seed: int):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=0.2, stratify=y, random_state=seed
    )
    mean = x_tr.mean(axis=0)
    std = x_tr.std(axis=0)
    std[std == 0] = 1.0  # the always-blank corner pixels
    return (x_tr - mean) / std, y_tr, (x_te - mean) / std, y_te


def _loader(x: np.ndarray, y: np.ndarray, batch_size: int, shuffle: bool, seed: int, device):
    # torch.tensor copies: editing a loader's tensors (label noise, say) must not
    # change the cached split that later calls share.
    data = TensorDataset(
        torch.tensor(x, dtype=torch.float32, device=device),
        torch.tensor(y, dtype=torch.long, device=device),
    )
    if shuffle:
        order = RandomSampler(data, generator=torch.Generator().manual_seed(seed))
    else:
        order = SequentialSampler(data)
    # Whole batches are indexed at once: far faster than collating single samples.
    return DataLoader(data, sampler=BatchSampler(order, batch_size, drop_last=False), batch_size=None)


def digits_loaders(batch_size: int = 64, seed: int = 0, device=None):
    """``(train_loader, test_loader)`` over the digits; the training loader reshuffles each epoch.

    ``seed`` fixes both the split and the shuffling order; ``device`` (default: CPU) is where
    the batches live.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    device = torch.device("cpu") if device is None else torch.device(device)
    x_tr, y_tr, x_te, y_te = _digits(int(seed))
    train = _loader(x_tr, y_tr, int(batch_size), True, int(seed), device)
    test = _loader(x_te, y_te, 512, False, int(seed), device)
    return train, test
