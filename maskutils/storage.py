"""What a masked model holds, as plain tensors: its effective weights, a plain copy, sparse
formats on disk, and CSR weights for inference.

A mask made by ``apply_mask`` (or a learnable gate) keeps the dense original and the mask
side by side; what the model computes with is their product. This module reads that product
out and stores it:

- ``plain_state(model)``: ``{name: tensor}`` with the keys of the unmasked model's
  ``state_dict`` and the effective values (eval mode), on the CPU; works on a DDP wrapper and
  on a model sharded by FSDP's ``fully_shard`` too.
- ``plain_copy(model)``: a deep copy with the effective values in plain parameters and no
  parametrizations (``model`` untouched).
- ``storage_bytes`` / ``storage_sizes``: bytes of ``torch.save`` in each format of ``FORMATS``
  (dense, CSR, bitmask), raw or deflated.
- ``CSRLinear`` and ``csr_model``: ``nn.Linear`` layers whose weight is a sparse CSR tensor.

>>> import torch
>>> from torch import nn
>>> from maskutils import apply_mask
>>> from maskutils.storage import plain_state, storage_bytes
>>> layer = apply_mask(nn.Linear(100, 100), (torch.rand(100, 100) > 0.95).float())
>>> sorted(plain_state(layer))
['bias', 'weight']
>>> storage_bytes(layer, "csr") < storage_bytes(layer, "dense")
True
"""
from __future__ import annotations

import copy
import io
import warnings
import zipfile

import numpy as np

import torch
from torch import nn
from torch.nn.utils import parametrize

from .apply import _check_module, own_parametrized_class

__all__ = ["FORMATS", "CSRLinear", "csr_model", "plain_copy", "plain_state", "storage_bytes",
           "storage_sizes"]

FORMATS = ("dense", "csr", "bitmask")
"""The storage formats of ``storage_bytes``: every weight of two or more dimensions as a dense
tensor, as CSR (int32 indices), or as a bitmask of the kept entries plus their values."""


# ---------------------------------------------------------------- the effective tensors
class _EvalNoGrad:
    """Eval mode (learnable gates become deterministic) and no autograd; modes restored.
    Also used by maskutils.structured to read a model as it computes."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self):
        self.modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        self.grad = torch.is_grad_enabled()
        torch.set_grad_enabled(False)
        return self

    def __exit__(self, *exc):
        torch.set_grad_enabled(self.grad)
        for m, mode in self.modes:
            m.training = mode
        return False


def _unwrapped(model: nn.Module) -> nn.Module:
    """The model inside a ``DistributedDataParallel``/``DataParallel`` wrapper, else ``model``."""
    wrappers = (nn.DataParallel,) + tuple(
        w for w in (getattr(nn.parallel, "DistributedDataParallel", None),) if w is not None)
    return model.module if isinstance(model, wrappers) else model


def _modules(model: nn.Module):
    """``(name, module)`` for every module except the internals of parametrizations."""
    for name, module in model.named_modules():
        if "parametrizations" not in name.split("."):
            yield name, module


def _whole(tensor: torch.Tensor) -> torch.Tensor:
    """A plain tensor with all the values: an FSDP ``DTensor`` shard is gathered (a
    collective: every rank must get here)."""
    if hasattr(tensor, "full_tensor"):
        tensor = tensor.full_tensor()
    return tensor.detach()


def plain_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{name: tensor}`` of what ``model`` computes with, on the CPU: every parameter and
    persistent buffer, masked or gated tensors as their effective values (read in eval mode),
    no masks and no gate logits. The keys are those of the unmasked model's ``state_dict``, so
    the result loads into the plain architecture.

    Works on a masked model, on its ``DistributedDataParallel`` wrapper, and on a model
    sharded by FSDP's ``fully_shard`` (a collective there: every rank must call it). The
    model's training mode is restored afterwards.

    >>> from maskutils import apply_mask
    >>> layer = apply_mask(nn.Linear(2, 1), torch.tensor([[1.0, 0.0]]))
    >>> sorted(plain_state(layer)), bool(plain_state(layer)["weight"][0, 1] == 0)
    (['bias', 'weight'], True)
    """
    _check_module(model)
    model = _unwrapped(model)
    out = {}
    with _EvalNoGrad(model):
        stored = model.state_dict()
        for prefix, module in _modules(model):
            here = f"{prefix}." if prefix else ""
            if parametrize.is_parametrized(module):
                # a weight before its bias, as in an unmasked state_dict
                for name, chain in module.parametrizations.items():
                    key = f"{here}parametrizations.{name}.original"
                    if key in stored:  # one stored tensor: gather it, then parametrize
                        value = _whole(stored[key])
                        for step in chain:
                            value = step(value)
                    else:  # several stored tensors (weight_norm): read the result
                        value = getattr(module, name)
                    out[here + name] = value.detach().cpu().clone()
            for name in list(module._parameters) + list(module._buffers):
                if here + name in stored:
                    out[here + name] = _whole(stored[here + name]).cpu().clone()
    return out


def plain_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose parameters hold its effective values (masks and gates
    read in eval mode), with no parametrizations left; ``model`` is not changed. Parameters
    stay ``nn.Parameter`` objects (a tied parameter stays tied) and training modes are kept.

    >>> from maskutils import apply_mask
    >>> layer = apply_mask(nn.Linear(2, 1), torch.tensor([[1.0, 0.0]]))
    >>> plain = plain_copy(layer)
    >>> parametrize.is_parametrized(plain), plain.weight[0, 1].item()
    (False, 0.0)
    """
    _check_module(model)
    values = {}
    with _EvalNoGrad(model):
        for prefix, module in _modules(model):
            if parametrize.is_parametrized(module):
                for name in module.parametrizations.keys():
                    values[prefix, name] = getattr(module, name).detach().clone()
    plain = copy.deepcopy(model)
    for prefix, module in list(_modules(plain)):
        if not parametrize.is_parametrized(module):
            continue
        own_parametrized_class(module)  # the copy shares its class with the original
        for name in list(module.parametrizations.keys()):
            parametrize.remove_parametrizations(module, name, leave_parametrized=False)
            with torch.no_grad():
                getattr(module, name).copy_(values[prefix, name])
    return plain


# ---------------------------------------------------------------- sparse storage on disk
def _csr32(t: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta"
        warnings.filterwarnings("ignore", message=".*[Ss]parse")
        csr = t.to_sparse_csr()
        return torch.sparse_csr_tensor(csr.crow_indices().to(torch.int32),
                                       csr.col_indices().to(torch.int32), csr.values(),
                                       t.shape)


def _encode(state: dict, fmt: str) -> dict:
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {list(FORMATS)}, got {fmt!r}")
    out = {}
    for name, t in state.items():
        t = t.detach().cpu()
        if fmt == "dense" or t.dim() < 2 or not t.is_floating_point():
            out[name] = t
        elif fmt == "csr":
            out[name] = _csr32(t.reshape(t.shape[0], -1))
        else:
            keep = t != 0
            bits = np.packbits(keep.flatten().numpy())
            out[name] = {"shape": tuple(t.shape), "bits": torch.from_numpy(bits),
                         "values": t[keep]}
    return out


def storage_bytes(model_or_state, fmt: str = "dense", compress: bool = False) -> int:
    """Bytes of ``torch.save`` of a model's weights in format ``fmt`` (``FORMATS``), written to
    memory; ``compress=True`` then deflates them into a zip file (``zipfile.ZIP_DEFLATED``).

    ``model_or_state``: a module (its ``plain_state``) or a dict of tensors (saved as given, so
    ``storage_bytes(model.state_dict())`` is the size of an ordinary checkpoint, masks and
    all). ``"csr"`` stores each weight of two or more dimensions with ``to_sparse_csr`` and
    int32 indices (4 bytes a value, 4 an index, 4 a row); ``"bitmask"`` stores one bit per
    entry plus the kept values. Biases and buffers stay dense.

    >>> w = {"w": torch.zeros(100, 100)}
    >>> storage_bytes(w) > storage_bytes(w, "csr") > storage_bytes(w, "dense", compress=True)
    True
    """
    raw = _saved(_state_of(model_or_state), fmt)
    return _deflated(raw) if compress else len(raw)


def storage_sizes(model_or_state, formats=FORMATS) -> dict[tuple[str, bool], int]:
    """``{(fmt, compressed): bytes}`` for every format in ``formats``, raw and deflated: what
    ``storage_bytes`` gives for each, with the weights read and saved once per format.

    >>> sizes = storage_sizes({"w": torch.zeros(10, 10)})
    >>> sorted(sizes)[:2], sizes["dense", False] == storage_bytes({"w": torch.zeros(10, 10)})
    ([('bitmask', False), ('bitmask', True)], True)
    """
    state = _state_of(model_or_state)
    if isinstance(formats, str):
        formats = (formats,)
    out = {}
    for fmt in formats:
        raw = _saved(state, fmt)
        out[fmt, False], out[fmt, True] = len(raw), _deflated(raw)
    return out


def _state_of(model_or_state) -> dict:
    state = plain_state(model_or_state) if isinstance(model_or_state, nn.Module) \
        else model_or_state
    if not isinstance(state, dict):
        raise TypeError("model_or_state must be an nn.Module or a dict {name: tensor}")
    return state


def _saved(state: dict, fmt: str) -> bytes:
    buffer = io.BytesIO()
    torch.save(_encode(state, fmt), buffer)
    return buffer.getvalue()


def _deflated(raw: bytes) -> int:
    packed = io.BytesIO()
    with zipfile.ZipFile(packed, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("weights.pt", raw)
    return len(packed.getvalue())


# ---------------------------------------------------------------- CSR weights for inference
class CSRLinear(nn.Module):
    """A ``Linear`` whose weight is a sparse CSR tensor: only the non-zeros are multiplied.

    >>> dense = nn.Linear(4, 3)
    >>> sparse = CSRLinear(dense)
    >>> x = torch.randn(2, 4)
    >>> torch.allclose(sparse(x), dense(x), atol=1e-6)
    True
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"CSRLinear takes an nn.Linear, got {type(linear).__name__}")
        with torch.no_grad():
            self.weight = _csr32(linear.weight.detach().clone())
            self.bias = None if linear.bias is None else linear.bias.detach().clone()
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def extra_repr(self) -> str:
        nnz = int(self.weight.values().numel())
        return f"in_features={self.in_features}, out_features={self.out_features}, nnz={nnz}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        out = (self.weight @ flat.t()).t()
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)


def csr_model(model: nn.Module) -> nn.Module:
    """A copy of ``model`` for inference with every ``nn.Linear`` replaced by a ``CSRLinear``
    holding its effective (masked) weight; ``model`` is not changed.

    >>> from maskutils import apply_mask
    >>> model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> _ = apply_mask(model[0], (torch.rand(4, 4) > 0.5).float())
    >>> x = torch.randn(3, 4)
    >>> torch.allclose(csr_model(model)(x), model(x), atol=1e-6)
    True
    """
    _check_module(model)
    plain = plain_copy(model)
    swaps = {name: CSRLinear(m) for name, m in plain.named_modules()
             if isinstance(m, nn.Linear)}
    if not swaps:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer to store as CSR")
    for name, layer in swaps.items():
        if not name:
            return layer
        parent, _, child = name.rpartition(".")
        setattr(plain.get_submodule(parent), child, layer)
    return plain
