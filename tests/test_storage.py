"""maskutils.storage: the effective tensors of a masked model, a plain copy, sparse formats
on disk and CSR weights for inference."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from maskutils import apply_learnable_mask, apply_mask
from maskutils.storage import (FORMATS, CSRLinear, csr_model, plain_copy, plain_state,
                               storage_bytes, storage_sizes)


def test_plain_state_reads_masks_and_gates_and_keeps_the_dense_keys():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    dense_keys = list(model.state_dict())
    apply_mask(model[0], (torch.rand(3, 4) > 0.5).float())
    apply_learnable_mask(model[2], gate="hard_concrete", structure="unit")
    model.train()
    state = plain_state(model)
    assert sorted(state) == sorted(dense_keys) and model.training
    assert torch.equal(state["0.weight"], model[0].weight.detach())
    model.eval()
    assert torch.equal(state["2.weight"], model[2].weight.detach())


def test_storage_bytes_orders_the_formats_at_high_sparsity():
    torch.manual_seed(0)
    w = torch.randn(200, 200)
    w[torch.rand(200, 200) < 0.95] = 0.0
    state = {"w": w, "b": torch.randn(200)}
    dense, csr, bits = (storage_bytes(state, f) for f in FORMATS)
    assert bits < csr < dense
    assert storage_bytes(state, "dense", compress=True) < dense
    # CSR with int32 indices: 4 bytes per value and per column index, 4 per row pointer
    nnz = int((w != 0).sum())
    assert csr < 8 * nnz + 4 * 201 + 4 * 200 + 4000  # a little room for the pickle
    with pytest.raises(ValueError, match="fmt"):
        storage_bytes(state, "coo")
    with pytest.raises(TypeError, match="model_or_state"):
        storage_bytes([w])


def test_storage_bytes_of_a_module_counts_effective_weights_not_masks():
    layer = nn.Linear(50, 40)
    masked = apply_mask(copy_of(layer), torch.ones(40, 50))
    assert storage_bytes(masked) == storage_bytes(layer)
    assert storage_bytes(masked.state_dict()) > storage_bytes(layer.state_dict())


def copy_of(module):
    import copy
    return copy.deepcopy(module)


def test_csr_model_computes_the_same_and_leaves_the_model_alone(left_alone):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    apply_mask(model[0], (torch.rand(5, 6) > 0.7).float())
    x = torch.randn(4, 6)
    with left_alone(model):
        fast = csr_model(model)
    assert isinstance(fast[0], CSRLinear) and isinstance(fast[2], CSRLinear)
    assert fast[0].weight.layout == torch.sparse_csr
    assert torch.allclose(fast(x), model(x), atol=1e-6)
    assert torch.allclose(model(x), model(x))  # the original still works
    assert torch.allclose(CSRLinear(nn.Linear(6, 2, bias=False))(x).sum(dim=0) * 0,
                          torch.zeros(2))
    with pytest.raises(ValueError, match="no nn.Linear"):
        csr_model(nn.ReLU())
    with pytest.raises(TypeError, match="nn.Linear"):
        CSRLinear(nn.ReLU())


def test_storage_sizes_agree_with_storage_bytes():
    torch.manual_seed(0)
    w = torch.randn(30, 30)
    w[torch.rand(30, 30) < 0.8] = 0.0
    state = {"w": w}
    sizes = storage_sizes(state)
    assert sorted(sizes) == sorted((f, z) for f in FORMATS for z in (False, True))
    for (fmt, z), n in sizes.items():
        assert n == storage_bytes(state, fmt, compress=z)
    assert list(storage_sizes(state, "csr")) == [("csr", False), ("csr", True)]



def test_plain_state_is_on_the_cpu_unwraps_data_parallel_and_skips_transient_buffers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    model[1].register_buffer("scratch", torch.ones(3), persistent=False)
    apply_mask(model[0], torch.ones(3, 4))
    state = plain_state(nn.DataParallel(model))
    assert list(state) == list(nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)).state_dict())
    assert all(t.device.type == "cpu" for t in state.values())


def test_plain_state_reads_a_masked_infinite_original_as_zero():
    layer = nn.Linear(2, 1)
    apply_mask(layer, torch.tensor([[1.0, 0.0]]))
    with torch.no_grad():
        layer.parametrizations.weight.original[0, 1] = float("inf")
    assert plain_state(layer)["weight"][0, 1].item() == 0.0


def test_a_model_with_a_submodule_called_module_is_not_unwrapped():
    holder = nn.Module()
    holder.module = nn.Linear(2, 2)
    holder.extra = nn.Linear(2, 1)
    assert sorted(plain_state(holder)) == ["extra.bias", "extra.weight", "module.bias",
                                            "module.weight"]


def test_the_distributed_module_uses_the_same_plain_state():
    import maskutils.distributed as distributed

    assert distributed.plain_state is plain_state


def test_plain_copy_bakes_masks_and_gates_and_leaves_the_model_alone(left_alone):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    apply_mask(model[0], (torch.rand(3, 4) > 0.5).float())
    apply_learnable_mask(model[2], gate="hard_concrete", structure="unit")
    model.train()
    with left_alone(model):
        plain = plain_copy(model)
    assert not any(parametrize.is_parametrized(m) for m in plain.modules())
    assert plain.training and model.training
    assert all(isinstance(p, nn.Parameter) for p in plain.parameters())
    x = torch.randn(5, 4)
    model.eval(), plain.eval()
    assert torch.equal(plain(x), model(x))
    with torch.no_grad():
        plain[0].weight.add_(1.0)  # shares no storage with the model
    assert not torch.equal(plain(x), model(x))


def test_plain_copy_keeps_a_tie():
    emb = nn.Embedding(5, 3)
    head = nn.Linear(3, 5, bias=False)
    head.weight = emb.weight
    model = nn.ModuleDict({"embed": emb, "head": head})
    apply_mask(model["head"], (torch.rand(5, 3) > 0.5).float(), model=model)
    plain = plain_copy(model)
    assert plain["head"].weight is plain["embed"].weight
    assert torch.equal(plain["head"].weight, model["head"].weight)
