"""The small model every chapter uses: an MLP for the 8x8 digits (64 inputs, 10 classes).

>>> from maskutils import digits_mlp
>>> digits_mlp()
DigitsMLP(
  (layers): Sequential(
    (0): Linear(in_features=64, out_features=128, bias=True)
    (1): ReLU()
    (2): Linear(in_features=128, out_features=128, bias=True)
    (3): ReLU()
    (4): Linear(in_features=128, out_features=10, bias=True)
  )
)
"""
from __future__ import annotations

from torch import nn


class DigitsMLP(nn.Module):
    """Linear layers with ReLU (optionally BatchNorm) in between."""

    def __init__(self, hidden=(128, 128), batchnorm: bool = False, n_in: int = 64, n_out: int = 10):
        super().__init__()
        sizes = [n_in, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(sizes, sizes[1:]):
            layers.append(nn.Linear(a, b))
            if batchnorm:
                layers.append(nn.BatchNorm1d(b))
            layers.append(nn.ReLU())
        layers.append(nn.Linear(sizes[-1], n_out))
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(x)

    def linears(self) -> list[nn.Linear]:
        """The Linear layers, input to output (the ones the book masks)."""
        return [m for m in self.layers if isinstance(m, nn.Linear)]


def digits_mlp(hidden=(128, 128), batchnorm: bool = False) -> DigitsMLP:
    """A fresh MLP for the digits data set (initialised from torch's global generator)."""
    hidden = tuple(hidden)
    if not hidden or any(not isinstance(h, int) or h < 1 for h in hidden):
        raise ValueError(f"hidden must be a non-empty sequence of positive ints, got {hidden!r}")
    return DigitsMLP(hidden, batchnorm)
