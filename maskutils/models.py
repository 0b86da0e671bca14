"""The small models of the book: the MLP every chapter uses for the 8x8 digits (64 inputs,
10 classes), the CNN, LSTM and character-level transformer of chapters 7 and 8, and the
residual CNN of chapter 10.

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


class DigitsCNN(nn.Module):
    """A small CNN for the digits as 1x8x8 images (chapter 7): two 3x3 Conv2d + BatchNorm blocks.

    ``forward`` takes the flat 64-pixel rows of ``digits_loaders`` (or ``(batch, 1, 8, 8)``
    images) and returns ``(batch, 10)`` logits. ``channels`` sets the two convolutions'
    output channels; the second one's input channels (``channels[0]``) are the ones a 2:4 mask
    groups, so keep it a multiple of 4.

    >>> import torch
    >>> cnn = DigitsCNN()
    >>> cnn(torch.zeros(5, 64)).shape
    torch.Size([5, 10])
    >>> [tuple(p.shape) for n, p in cnn.named_parameters() if p.dim() >= 2]
    [(8, 1, 3, 3), (16, 8, 3, 3), (10, 256)]
    """

    def __init__(self, channels=(8, 16), n_out: int = 10):
        super().__init__()
        channels = tuple(channels)
        if len(channels) != 2 or any(isinstance(c, bool) or not isinstance(c, int) or c < 1
                                     for c in channels):
            raise ValueError(f"channels must be two positive ints, got {channels!r}")
        a, b = channels
        self.features = nn.Sequential(
            nn.Conv2d(1, a, 3, padding=1, bias=False), nn.BatchNorm2d(a), nn.ReLU(),
            nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Linear(b * 4 * 4, n_out)

    def forward(self, x):
        return self.head(self.features(_digit_images(x)).flatten(1))

    def convs(self) -> list[nn.Conv2d]:
        """The two convolutions, input to output."""
        return [m for m in self.features if isinstance(m, nn.Conv2d)]


class DigitsLSTM(nn.Module):
    """An LSTM that reads a digit row by row (8 steps of 8 pixels) and classifies it (chapter 7).

    >>> import torch
    >>> rnn = DigitsLSTM(hidden=16)
    >>> rnn(torch.zeros(3, 64)).shape
    torch.Size([3, 10])
    >>> sorted(n for n, p in rnn.named_parameters() if p.dim() >= 2)
    ['head.weight', 'lstm.weight_hh_l0', 'lstm.weight_ih_l0']
    """

    def __init__(self, hidden: int = 32, n_layers: int = 1, n_out: int = 10):
        super().__init__()
        for name, value in (("hidden", hidden), ("n_layers", n_layers)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.lstm = nn.LSTM(8, hidden, num_layers=n_layers, batch_first=True)
        self.head = nn.Linear(hidden, n_out)

    def forward(self, x):
        rows = x.reshape(x.shape[0], 8, 8)
        out, _ = self.lstm(rows)
        return self.head(out[:, -1])


def _digit_images(x: torch.Tensor) -> torch.Tensor:
    """Flat 64-pixel rows (or ``(batch, 1, 8, 8)`` images) as ``(batch, 1, 8, 8)`` images."""
    if x.dim() == 2:
        if x.shape[1] != 64:
            raise ValueError(f"expected 64 pixels per digit, got {x.shape[1]}")
        return x.view(-1, 1, 8, 8)
    return x


class ResidualBlock(nn.Module):
    """``relu(x + bn2(conv2(relu(bn1(conv1(x))))))``: two 3x3 convolutions with BatchNorm and
    a skip connection; the sum ties the channels of ``x`` to those of ``conv2``.

    >>> import torch
    >>> ResidualBlock(4)(torch.zeros(2, 4, 8, 8)).shape
    torch.Size([2, 4, 8, 8])
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        inner = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(inner)))


class DigitsResNet(nn.Module):
    """A small residual CNN for the digits as 1x8x8 images (chapter 10).

    A 3x3 stem convolution with BatchNorm and ReLU, ``n_blocks`` residual blocks
    (``ResidualBlock``) at the full 8x8 resolution, global average pooling and a linear head.
    Every block adds its input to its output, so the stem's channels and every block's second
    convolution write into the same channels: pruning one of them means pruning it in all.
    ``forward`` takes the flat 64-pixel rows of ``digits_loaders`` (or ``(batch, 1, 8, 8)``
    images) and returns ``(batch, 10)`` logits.

    >>> import torch
    >>> net = DigitsResNet(channels=8)
    >>> net(torch.zeros(5, 64)).shape
    torch.Size([5, 10])
    >>> sum(p.dim() == 4 for p in net.parameters())  # the stem and two per block
    5
    """

    def __init__(self, channels: int = 32, n_blocks: int = 2, n_out: int = 10):
        super().__init__()
        for name, value in (("channels", channels), ("n_blocks", n_blocks), ("n_out", n_out)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.stem = nn.Sequential(nn.Conv2d(1, channels, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(channels), nn.ReLU())
        self.blocks = nn.Sequential(*(ResidualBlock(channels) for _ in range(n_blocks)))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(channels, n_out)

    def forward(self, x):
        features = self.blocks(self.stem(_digit_images(x)))
        return self.head(self.pool(features).flatten(1))
