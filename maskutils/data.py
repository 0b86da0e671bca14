"""The data every chapter uses, all shipped with Python or scikit-learn (no download).

- ``digits_loaders``: scikit-learn's 8x8 digits. 1797 images, 64 pixel features, 10 classes;
  a stratified 80/20 train/test split, and with ``validation=True`` a stratified 20 % of the
  training part held out for choosing hyper-parameters. Standardized with the statistics of
  the images the model trains on. Batches are already on the requested device.
- ``char_corpus`` and ``char_loaders``: the character-level text of chapters 7 and 8, Python's
  own help topics (``pydoc_data.topics``, about 465k characters), split into contiguous
  train / validation / test slices.

>>> from maskutils import digits_loaders
>>> train, test = digits_loaders(batch_size=64)
>>> x, y = next(iter(train))
>>> tuple(x.shape), x.dtype, y.dtype
((64, 64), torch.float32, torch.int64)
>>> train, val, test = digits_loaders(validation=True)
>>> len(train.dataset), len(val.dataset), len(test.dataset)
(1149, 288, 360)
"""
from __future__ import annotations

import numbers
from functools import lru_cache

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, TensorDataset


def _standardizer(x_fit: np.ndarray):
    mean = x_fit.mean(axis=0)
    std = x_fit.std(axis=0)
    std[std == 0] = 1.0  # the always-blank corner pixels
    return lambda x: (x - mean) / std


@lru_cache(maxsize=None)
def _digits(seed: int, validation: bool):
    """``[(x, y) per split]``: train, (validation,) test; the test split ignores ``validation``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=0.2, stratify=y, random_state=seed
    )
    splits = [(x_tr, y_tr), (x_te, y_te)]
    if validation:
        x_fit, x_val, y_fit, y_val = train_test_split(
            x_tr, y_tr, test_size=0.2, stratify=y_tr, random_state=seed
        )
        splits = [(x_fit, y_fit), (x_val, y_val), (x_te, y_te)]
    scale = _standardizer(splits[0][0])  # statistics of the images the model trains on
    return [(scale(xs), ys) for xs, ys in splits]


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
    return DataLoader(data, sampler=_IndexBatches(order, batch_size, drop_last=False), batch_size=None)


class _IndexBatches(BatchSampler):
    """``BatchSampler``'s batches as index tensors: the same order from the same draws of the
    sampler's generator, but a tensor indexes the data several times faster than a list."""

    def __iter__(self):
        order = torch.tensor(list(self.sampler), dtype=torch.long)  # one conversion per epoch
        yield from order.split(self.batch_size)


def _check_batch_and_seed(batch_size, seed) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")


def reshuffle(loader, seed: int):
    """Reseed the shuffling of a training loader from ``digits_loaders`` and return it.

    The loader draws its batch order from a generator of its own, so a run's order depends on
    every run that used the loader before it. Reseeding it at the start of each run makes the
    order depend on the run's seed alone (the same runs in any order, or in other processes).

    >>> train, _ = digits_loaders()
    >>> first = next(iter(reshuffle(train, 1)))[1]
    >>> again = next(iter(reshuffle(train, 1)))[1]
    >>> bool((first == again).all())
    True
    """
    _check_batch_and_seed(1, seed)
    generator = getattr(getattr(getattr(loader, "sampler", None), "sampler", None),
                        "generator", None)
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"reshuffle needs a shuffling loader from digits_loaders (its training "
                        f"loader), got {type(loader).__name__}; for another DataLoader, pass "
                        f"generator=torch.Generator() to its sampler and seed that")
    generator.manual_seed(seed)
    return loader


def digits_loaders(batch_size: int = 64, seed: int = 0, device=None, validation: bool = False):
    """``(train_loader, test_loader)`` over the digits; the training loader reshuffles each epoch.

    With ``validation=True``: ``(train_loader, val_loader, test_loader)``. The test loader is
    the same 360 images in the same order as without it; the validation loader holds a
    stratified 20 % of the former training images (288), the model trains on the other 1149,
    and standardization uses those 1149 only. Choose hyper-parameters, epochs and "the best
    run" on ``val_loader``; read ``test_loader`` only to report.

    ``seed`` fixes the splits and the shuffling order; ``device`` (default: CPU) is where
    the batches live.
    """
    _check_batch_and_seed(batch_size, seed)
    if not isinstance(validation, bool):
        raise TypeError(f"validation must be True or False, got {validation!r}")
    device = torch.device("cpu") if device is None else torch.device(device)
    *fitting, (x_te, y_te) = _digits(int(seed), validation)
    train = _loader(*fitting[0], int(batch_size), True, int(seed), device)
    test = _loader(x_te, y_te, 512, False, int(seed), device)
    if validation:
        return train, _loader(*fitting[1], 512, False, int(seed), device), test
    return train, test


@lru_cache(maxsize=None)
def char_corpus() -> tuple[str, tuple[str, ...]]:
    """``(text, vocabulary)``: Python's help topics as one string, and its sorted characters.

    The text ships with every CPython (``pydoc_data.topics``), so nothing is downloaded.

    >>> text, vocab = char_corpus()
    >>> len(text) > 100_000 and "def" in text and len(vocab) < 128
    True
    """
    from pydoc_data import topics

    text = "\n\n".join(topics.topics[key] for key in sorted(topics.topics))
    return text, tuple(sorted(set(text)))


def char_loaders(seq_len: int = 64, batch_size: int = 32, seed: int = 0, device=None,
                 fractions=(0.8, 0.1, 0.1)):
    """``(train_loader, val_loader, test_loader)`` of next-character prediction on ``char_corpus``.

    The text is cut into three contiguous slices (``fractions``: train, validation, test), so
    no held-out character appears in a training window. Each batch is ``(x, y)``, two
    ``(batch, seq_len)`` int64 tensors with ``y`` shifted by one character. Training windows
    start at random offsets (drawn from ``seed``, new every epoch, one epoch covers the slice
    once on average); held-out windows tile their slice in order. Token ``i`` is
    ``char_corpus()[1][i]``.

    >>> train, val, test = char_loaders(seq_len=16, batch_size=4)
    >>> x, y = next(iter(train))
    >>> tuple(x.shape), bool((x[:, 1:] == y[:, :-1]).all())
    ((4, 16), True)
    """
    _check_batch_and_seed(batch_size, seed)
    if isinstance(seq_len, bool) or not isinstance(seq_len, numbers.Integral) or seq_len < 1:
        raise ValueError(f"seq_len must be a positive int, got {seq_len!r}")
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(f"fractions must be three positive numbers that sum to 1, got {fractions}")
    device = torch.device("cpu") if device is None else torch.device(device)
    text, vocab = char_corpus()
    index = {ch: i for i, ch in enumerate(vocab)}
    ids = torch.tensor([index[ch] for ch in text], dtype=torch.long)
    ends = np.cumsum([round(f * len(ids)) for f in fractions[:2]])
    pieces = (ids[: ends[0]], ids[ends[0]: ends[1]], ids[ends[1]:])
    return (_RandomWindows(pieces[0], int(seq_len), int(batch_size), int(seed), device),
            _TiledWindows(pieces[1], int(seq_len), 256, device),
            _TiledWindows(pieces[2], int(seq_len), 256, device))


class _RandomWindows:
    """An iterable of ``(x, y)`` batches of windows at random offsets, reshuffled each epoch."""

    def __init__(self, ids, seq_len, batch_size, seed, device):
        self.ids, self.seq_len, self.batch_size, self.device = ids.to(device), seq_len, batch_size, device
        self.generator = torch.Generator().manual_seed(seed)
        self.steps = max(1, (len(ids) - 1) // (seq_len * batch_size))

    def __len__(self):
        return self.steps

    def __iter__(self):
        top = len(self.ids) - self.seq_len - 1
        offsets = torch.arange(self.seq_len + 1, device=self.device)
        for _ in range(self.steps):
            starts = torch.randint(0, top + 1, (self.batch_size, 1), generator=self.generator)
            window = self.ids[starts.to(self.device) + offsets]
            yield window[:, :-1], window[:, 1:]


class _TiledWindows:
    """An iterable of ``(x, y)`` batches that tile a slice with non-overlapping windows, in order."""

    def __init__(self, ids, seq_len, batch_size, device):
        n = (len(ids) - 1) // seq_len
        if n < 1:
            raise ValueError(f"a held-out slice of {len(ids)} characters is shorter than seq_len={seq_len}")
        cut = ids[: n * seq_len + 1].to(device)
        self.x = cut[:-1].view(n, seq_len)
        self.y = cut[1:].reshape(n, seq_len)
        self.batch_size = batch_size

    def __len__(self):
        return -(-len(self.x) // self.batch_size)

    def __iter__(self):
        for i in range(0, len(self.x), self.batch_size):
            yield self.x[i: i + self.batch_size], self.y[i: i + self.batch_size]
