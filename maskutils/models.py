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

import torch
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


class CharTransformerLM(nn.Module):
    """A tiny character-level transformer language model (chapters 7 and 8).

    Token and position embeddings, ``n_layers`` pre-norm ``nn.TransformerEncoderLayer`` blocks
    (``nn.MultiheadAttention`` inside, causal mask) and an output head whose weight is tied to
    the token embedding, as in GPT-2. ``forward(ids)`` maps ``(batch, seq)`` int64 ids to
    ``(batch, seq, vocab)`` logits.

    >>> import torch
    >>> lm = CharTransformerLM(vocab_size=50, d_model=32, n_heads=2, n_layers=1, max_len=16)
    >>> lm(torch.zeros(3, 16, dtype=torch.long)).shape
    torch.Size([3, 16, 50])
    >>> lm.head.weight is lm.embed.weight
    True
    """

    def __init__(self, vocab_size: int, d_model: int = 128, n_heads: int = 4, n_layers: int = 2,
                 max_len: int = 128, dropout: float = 0.0):
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("d_model", d_model),
                            ("n_heads", n_heads), ("n_layers", n_layers), ("max_len", max_len)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        self.max_len = max_len
        self.embed = nn.Embedding(vocab_size, d_model)
        self.position = nn.Embedding(max_len, d_model)
        block = nn.TransformerEncoderLayer(d_model, n_heads, 4 * d_model, dropout,
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self.head.weight = self.embed.weight  # tied, as in GPT-2

    def forward(self, ids):
        seq = ids.shape[1]
        if seq > self.max_len:
            raise ValueError(f"sequence of length {seq} is longer than max_len={self.max_len}")
        positions = torch.arange(seq, device=ids.device)
        causal = nn.Transformer.generate_square_subsequent_mask(seq, device=ids.device)
        h = self.embed(ids) + self.position(positions)
        h = self.blocks(h, mask=causal, is_causal=True)
        return self.head(self.norm(h))
