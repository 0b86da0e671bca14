"""Applying, reading and removing masks (maskutils.apply), and masked models in the wider torch."""
from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import parametrize, prune
from torch.optim.swa_utils import AveragedModel

from maskutils import (apply_mask, digits_mlp, get_mask, masked_parameters, random_mask,
                       remove_mask, seed_everything)


def _mask(shape, sparsity=0.5, seed=0):
    return random_mask(torch.empty(shape), sparsity, generator=torch.Generator().manual_seed(seed))


def _masked_linear(seed=0):
    torch.manual_seed(seed)
    layer = nn.Linear(6, 4)
    return apply_mask(layer, _mask((4, 6), seed=seed))


def _masked_mlp(hidden=(16,), seed=0, mask_seed=1):
    seed_everything(seed)
    model = digits_mlp(hidden=hidden)
    for i, layer in enumerate(model.linears()):
        apply_mask(layer, _mask(layer.weight.shape, 0.6, seed=mask_seed + i))
    return model


class Double(nn.Module):
    """A parametrization that is not a mask."""

    def forward(self, x):
        return 2 * x


# --- bad input: a clear error, and the module left exactly as it was ------------------------

BAD_MASKS = [
    pytest.param(torch.ones(3, 3), ValueError, r"shape \(3, 3\) but the parameter has shape \(4, 6\)",
                 id="wrong-shape"),
    pytest.param(torch.ones(4, 6).T, ValueError, r"shape \(6, 4\)", id="transposed"),
    pytest.param(torch.full((4, 6), 0.5), ValueError, r"only 0s and 1s.*0\.5", id="not-binary"),
    pytest.param(torch.full((4, 6), 2.0), ValueError, r"only 0s and 1s", id="two"),
    pytest.param(torch.ones(4, 6).index_put_((torch.tensor([1]), torch.tensor([2])), torch.tensor(float("nan"))),
                 ValueError, "NaN", id="nan"),
    pytest.param([[1.0] * 6] * 4, TypeError, r"mask must be a torch\.Tensor", id="list"),
]


@pytest.mark.parametrize("bad, error, message", BAD_MASKS)
def test_bad_mask_on_a_plain_layer_is_rejected_and_changes_nothing(left_alone, bad, error, message):
    torch.manual_seed(0)
    layer = nn.Linear(6, 4)
    with left_alone(layer), pytest.raises(error, match=message):
        apply_mask(layer, bad)
    assert not parametrize.is_parametrized(layer)


@pytest.mark.parametrize("bad, error, message", BAD_MASKS)
def test_bad_second_mask_leaves_the_first_mask_untouched(left_alone, bad, error, message):
    layer = _masked_linear()
    first = get_mask(layer).clone()
    with left_alone(layer), pytest.raises(error, match=message):
        apply_mask(layer, bad)
    assert torch.equal(get_mask(layer), first)
    assert len(layer.parametrizations.weight) == 1


@pytest.mark.parametrize("masked", [False, True], ids=["plain", "masked"])
def test_unknown_parameter_name_is_named_in_the_error(left_alone, masked):
    layer = _masked_linear() if masked else nn.Linear(6, 4)
    for call in (lambda: apply_mask(layer, torch.ones(4, 6), name="wieght"),
                 lambda: get_mask(layer, name="wieght"),
                 lambda: remove_mask(layer, name="wieght")):
        with left_alone(layer), pytest.raises(ValueError, match=r"no parameter 'wieght'.*'bias'.*'weight'"):
            call()


def test_a_buffer_is_not_a_parameter_to_mask(left_alone):
    bn = nn.BatchNorm1d(4)
    with left_alone(bn), pytest.raises(ValueError, match="no parameter 'running_mean'"):
        apply_mask(bn, torch.ones(4), name="running_mean")


def test_name_must_be_a_string(left_alone):
    layer = nn.Linear(6, 4)
    with left_alone(layer), pytest.raises(TypeError, match="name must be a str"):
        apply_mask(layer, torch.ones(4, 6), name=0)


@pytest.mark.parametrize("call", [
    lambda x: apply_mask(x, torch.ones(2, 2)),
    lambda x: get_mask(x),
    lambda x: remove_mask(x),
    lambda x: masked_parameters(x),
], ids=["apply_mask", "get_mask", "remove_mask", "masked_parameters"])
def test_non_module_argument_is_a_type_error(call):
    with pytest.raises(TypeError, match=r"expected a torch\.nn\.Module, got Tensor"):
        call(torch.ones(2, 2))


def test_remove_mask_without_a_mask_is_a_value_error(left_alone):
    layer = nn.Linear(6, 4)
    with left_alone(layer), pytest.raises(ValueError, match=r"Linear\.weight has no mask to remove"):
        remove_mask(layer)


def test_remove_mask_of_an_unmasked_bias_is_a_value_error(left_alone):
    layer = _masked_linear()
    with left_alone(layer), pytest.raises(ValueError, match=r"Linear\.bias has no mask to remove"):
        remove_mask(layer, name="bias")


def test_remove_mask_without_a_mask_but_another_parametrization_is_a_value_error(left_alone):
    layer = nn.Linear(6, 4)
    parametrize.register_parametrization(layer, "weight", Double())
    with left_alone(layer), pytest.raises(ValueError, match="no mask to remove"):
        remove_mask(layer)


@pytest.mark.parametrize("bake", [True, False])
def test_remove_mask_refuses_when_another_parametrization_is_stacked(left_alone, bake):
    layer = _masked_linear()
    parametrize.register_parametrization(layer, "weight", Double())
    with left_alone(layer), pytest.raises(ValueError, match=r"other parametrizations \(Double\)"):
        remove_mask(layer, bake=bake)
    assert len(layer.parametrizations.weight) == 2


# --- what apply_mask does -------------------------------------------------------------------

def test_weight_reads_original_times_mask_on_every_access():
    layer = _masked_linear()
    original, mask = layer.parametrizations.weight.original, get_mask(layer)
    assert torch.equal(layer.weight, original * mask)
    with torch.no_grad():
        original.add_(1.0)
    assert torch.equal(layer.weight, original * mask)
    assert (layer.weight[mask == 0] == 0).all()


def test_apply_mask_returns_the_module_and_keeps_the_parameter_object():
    layer = nn.Linear(6, 4)
    weight = layer.weight
    assert apply_mask(layer, _mask((4, 6))) is layer
    assert layer.parametrizations.weight.original is weight


def test_masked_entries_get_zero_gradient():
    layer = _masked_linear()
    layer(torch.randn(5, 6)).square().sum().backward()
    grad, mask = layer.parametrizations.weight.original.grad, get_mask(layer)
    assert (grad[mask == 0] == 0).all()
    assert (grad[mask == 1] != 0).any()


def test_mask_is_a_buffer_in_the_state_dict():
    layer = _masked_linear()
    buffers = dict(layer.named_buffers())
    assert buffers["parametrizations.weight.0.mask"] is get_mask(layer)
    assert torch.equal(layer.state_dict()["parametrizations.weight.0.mask"], get_mask(layer))


def test_to_float64_moves_the_mask_and_keeps_the_parameter_object():
    layer = _masked_linear()
    original, values = layer.parametrizations.weight.original, get_mask(layer).clone()
    layer.to(torch.float64)
    assert get_mask(layer).dtype == torch.float64
    assert torch.equal(get_mask(layer), values.double())
    assert layer.parametrizations.weight.original is original
    assert original.dtype == torch.float64 and layer.weight.dtype == torch.float64


def test_masking_twice_intersects_the_masks():
    layer = nn.Linear(6, 4)
    a, b = _mask((4, 6), seed=1), _mask((4, 6), seed=2)
    apply_mask(layer, a)
    apply_mask(layer, b)
    assert torch.equal(get_mask(layer), a * b)
    assert len(layer.parametrizations.weight) == 1
    assert torch.equal(layer.weight, layer.parametrizations.weight.original * a * b)


def test_bool_mask_is_accepted_as_weight_dtype():
    layer = nn.Linear(6, 4).double()
    keep = _mask((4, 6)).bool()
    apply_mask(layer, keep)
    assert get_mask(layer).dtype == torch.float64
    assert torch.equal(get_mask(layer), keep.double())
    assert (layer.weight[~keep] == 0).all()


def test_mask_is_copied_so_later_changes_to_the_users_tensor_do_not_leak_in():
    layer = nn.Linear(6, 4)
    users = _mask((4, 6))
    kept = users.clone()
    apply_mask(layer, users)
    users.fill_(1.0)
    assert get_mask(layer) is not users
    assert torch.equal(get_mask(layer), kept)
    assert (layer.weight[kept == 0] == 0).all()


def test_get_mask_is_none_for_an_unmasked_weight_and_for_an_unmasked_bias():
    assert get_mask(nn.Linear(6, 4)) is None
    assert get_mask(_masked_linear(), name="bias") is None


def test_a_bias_can_be_masked_too():
    layer = apply_mask(nn.Linear(6, 4), torch.tensor([1.0, 0.0, 1.0, 0.0]), name="bias")
    assert layer.bias.tolist()[1] == 0.0 and layer.bias.tolist()[3] == 0.0
    assert get_mask(layer) is None


def test_remove_mask_bake_true_leaves_the_same_plain_parameter_with_masked_values():
    layer = _masked_linear()
    original, mask = layer.parametrizations.weight.original, get_mask(layer).clone()
    expected = (original * mask).detach().clone()
    assert remove_mask(layer) is layer
    assert not parametrize.is_parametrized(layer)
    assert type(layer.weight) is nn.Parameter and layer.weight is original
    assert torch.equal(layer.weight, expected)


def test_baked_state_dict_loads_into_a_fresh_unmasked_linear():
    layer = remove_mask(_masked_linear(), bake=True)
    fresh = nn.Linear(6, 4)
    fresh.load_state_dict(layer.state_dict())  # strict: same keys as the plain architecture
    x = torch.randn(3, 6)
    torch.testing.assert_close(fresh(x), layer(x), rtol=0, atol=0)
    assert sorted(layer.state_dict()) == ["bias", "weight"]


def test_remove_mask_bake_false_gives_back_what_weight_decay_did_to_masked_entries():
    torch.manual_seed(0)
    layer = nn.Linear(6, 4)
    start = layer.weight.detach().clone()
    opt = torch.optim.SGD(layer.parameters(), lr=0.1, weight_decay=0.5)
    mask = _mask((4, 6))
    apply_mask(layer, mask)
    for _ in range(3):
        opt.zero_grad()
        layer(torch.randn(8, 6)).square().mean().backward()
        opt.step()
    original = layer.parametrizations.weight.original
    raw = original.detach().clone()
    removed = mask == 0
    # weight decay shrank the raw masked entries although their gradient was zero
    torch.testing.assert_close(raw[removed], start[removed] * (1 - 0.1 * 0.5) ** 3)
    assert (raw[removed] != 0).all()
    remove_mask(layer, bake=False)
    assert not parametrize.is_parametrized(layer)
    assert layer.weight is original
    assert torch.equal(layer.weight, raw)


def test_masked_parameters_maps_original_parameters_to_mask_buffers():
    model = digits_mlp(hidden=(8,))
    first, last = model.linears()
    apply_mask(first, _mask(first.weight.shape))
    apply_mask(last, torch.ones(10), name="bias")
    found = masked_parameters(model)
    assert len(found) == 2
    assert found[first.parametrizations.weight.original] is get_mask(first)
    assert found[last.parametrizations.bias.original] is get_mask(last, name="bias")
    assert masked_parameters(digits_mlp(hidden=(8,))) == {}


# --- the optimizer keeps training the original ----------------------------------------------

OPTIMIZERS = {
    "sgd-momentum-wd": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-2),
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-2),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-2),
}


@settings(max_examples=40, deadline=None)
@given(kind=st.sampled_from(sorted(OPTIMIZERS)), steps=st.integers(0, 15),
       s=st.floats(0.0, 0.9), seed=st.integers(0, 2**16))
def test_optimizer_built_before_masking_trains_the_original_and_masked_entries_stay_zero(kind, steps, s, seed):
    g = torch.Generator().manual_seed(seed)
    layer = nn.Linear(6, 4)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(4, 6, generator=g))
    weight = layer.weight
    opt = OPTIMIZERS[kind](layer.parameters())
    mask = random_mask(weight, s, generator=g)
    apply_mask(layer, mask)
    original = layer.parametrizations.weight.original
    start = original.detach().clone()
    x, y = torch.randn(16, 6, generator=g), torch.randn(16, 4, generator=g)
    for _ in range(steps):
        opt.zero_grad()
        F.mse_loss(layer(x), y).backward()
        opt.step()
    assert original is weight and opt.param_groups[0]["params"][0] is original
    assert torch.equal(layer.weight, original * get_mask(layer))
    assert (layer.weight[mask == 0] == 0).all()
    kept = mask == 1
    if steps and kept.any():  # the optimizer really trained the parameter the layer reads
        assert not torch.equal(original[kept], start[kept])


# --- the same as torch.nn.utils.prune -------------------------------------------------------

def test_apply_mask_trains_exactly_like_prune_custom_from_mask():
    seed_everything(0)
    ours = digits_mlp(hidden=(32, 16))
    theirs = copy.deepcopy(ours)
    for i, (a, b) in enumerate(zip(ours.linears(), theirs.linears())):
        mask = _mask(a.weight.shape, 0.7, seed=10 + i)
        apply_mask(a, mask)
        prune.custom_from_mask(b, "weight", mask)
    opt_a = torch.optim.SGD(ours.parameters(), lr=0.05, momentum=0.9)
    opt_b = torch.optim.SGD(theirs.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    for _ in range(10):
        x, y = torch.randn(32, 64, generator=g), torch.randint(0, 10, (32,), generator=g)
        out_a, out_b = ours(x), theirs(x)
        torch.testing.assert_close(out_a, out_b)
        for opt, out in ((opt_a, out_a), (opt_b, out_b)):
            opt.zero_grad()
            F.cross_entropy(out, y).backward()
        for a, b in zip(ours.linears(), theirs.linears()):
            torch.testing.assert_close(a.parametrizations.weight.original.grad, b.weight_orig.grad)
            torch.testing.assert_close(a.bias.grad, b.bias.grad)
        opt_a.step()
        opt_b.step()
    for a, b in zip(ours.linears(), theirs.linears()):
        torch.testing.assert_close(a.weight, b.weight_orig * b.weight_mask)
        assert not torch.equal(a.parametrizations.weight.original, a.weight)  # masked raw values live on


# --- masked models in the wider torch -------------------------------------------------------

def test_deepcopy_of_a_masked_model_is_independent():
    model = _masked_mlp()
    twin = copy.deepcopy(model)
    x = torch.randn(4, 64)
    torch.testing.assert_close(twin(x), model(x), rtol=0, atol=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first = twin.linears()[0]
    apply_mask(first, torch.zeros_like(get_mask(first)))
    with torch.no_grad():
        for p in twin.parameters():
            p.add_(1.0)
    assert (first.weight == 0).all()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not (model.linears()[0].weight == 0).all()


def test_averaged_model_keeps_masked_effective_weights_exactly_zero():
    model = _masked_mlp()
    avg = AveragedModel(model)
    g = torch.Generator().manual_seed(0)
    seen = []
    for _ in range(4):
        with torch.no_grad():
            for layer in model.linears():
                layer.parametrizations.weight.original.copy_(
                    torch.randn(layer.weight.shape, generator=g) + 0.5)
        seen.append([layer.parametrizations.weight.original.detach().clone() for layer in model.linears()])
        avg.update_parameters(model)
    for i, (layer, source) in enumerate(zip(avg.module.linears(), model.linears())):
        mask = get_mask(layer)
        assert torch.equal(mask, get_mask(source))
        assert (layer.weight[mask == 0] == 0).all()
        mean = torch.stack([s[i] for s in seen]).mean(dim=0)
        torch.testing.assert_close(layer.parametrizations.weight.original, mean)
        torch.testing.assert_close(layer.weight, mean * mask)


def test_state_dict_round_trip_loads_the_saved_mask_into_a_model_masked_the_same_way():
    saved = _masked_mlp(seed=0, mask_seed=1)
    buffer = io.BytesIO()
    torch.save(saved.state_dict(), buffer)
    buffer.seek(0)
    loaded = _masked_mlp(seed=5, mask_seed=50)  # different weights AND different masks
    for a, b in zip(saved.linears(), loaded.linears()):
        assert not torch.equal(get_mask(a), get_mask(b))
    loaded.load_state_dict(torch.load(buffer))
    for a, b in zip(saved.linears(), loaded.linears()):
        assert torch.equal(get_mask(b), get_mask(a))
        assert torch.equal(b.weight, a.weight)
    x = torch.randn(4, 64)
    torch.testing.assert_close(loaded(x), saved(x), rtol=0, atol=0)


def test_torch_compile_of_a_masked_model_matches_eager_forward_and_backward():
    # The default backend (inductor) is used: a cold compile of forward and backward took
    # about 11 s on the 2-core CI-like machine (3 s with a warm cache), under the ~20 s at which
    # we would fall back to backend="aot_eager" (same Dynamo/AOTAutograd capture, ~1 s).
    torch._dynamo.reset()
    model = _masked_mlp()
    eager = copy.deepcopy(model)
    compiled = torch.compile(model)
    x = torch.randn(8, 64)
    out = compiled(x)
    torch.testing.assert_close(out, eager(x))
    out.square().sum().backward()
    eager(x).square().sum().backward()
    for a, b in zip(model.linears(), eager.linears()):
        grad = a.parametrizations.weight.original.grad
        assert grad is not None
        assert (grad[get_mask(a) == 0] == 0).all()
        torch.testing.assert_close(grad, b.parametrizations.weight.original.grad)


def test_remove_mask_on_a_deepcopy_leaves_the_other_copies_working():
    layer = nn.Linear(4, 3)
    apply_mask(layer, random_mask(layer.weight, 0.5))
    twin = copy.deepcopy(layer)
    remove_mask(twin)
    assert get_mask(layer) is not None
    assert torch.equal(layer.weight, layer.parametrizations.weight.original * get_mask(layer))
    out = layer(torch.randn(2, 4))
    assert out.shape == (2, 3)
    remove_mask(layer, bake=False)
    assert isinstance(layer.weight, nn.Parameter)


# --- mask_layers on real architectures: coverage, report, include/exclude -----------------------

from maskutils import (CharTransformerLM, MaskedLayers, load_dense_state_dict,  # noqa: E402
                       mask_layers, remove_masks, sparsity)
from maskutils.apply import Mask  # noqa: E402


def _zoo():
    torch.manual_seed(0)
    return nn.ModuleDict({
        "conv": nn.Conv2d(4, 8, 3), "convt": nn.ConvTranspose2d(8, 4, 3),
        "bilinear": nn.Bilinear(4, 5, 3), "mha": nn.MultiheadAttention(8, 2),
        "mha_kv": nn.MultiheadAttention(8, 2, kdim=4, vdim=4),
        "lstm": nn.LSTM(4, 8), "gru": nn.GRU(4, 8, bidirectional=True), "rnn": nn.RNN(4, 4),
        "norm": nn.LayerNorm(8), "linear": nn.Linear(8, 2), "embed": nn.Embedding(10, 4),
    })


def _weights_2d(model):
    return {n for n, p in model.named_parameters() if p.dim() >= 2}


def test_mask_layers_masks_every_weight_of_every_module_kind_and_names_the_embedding():
    model = _zoo()
    weights = _weights_2d(model)
    with pytest.warns(UserWarning, match=r"left out 1 weight.*embed\.weight: an embedding"):
        result = mask_layers(model, 0.5)
    assert isinstance(result, MaskedLayers)
    assert set(result) == weights - {"embed.weight"}
    assert {"mha.in_proj_weight", "mha.out_proj.weight", "mha_kv.q_proj_weight",
            "mha_kv.k_proj_weight", "lstm.weight_hh_l0", "gru.weight_ih_l0_reverse",
            "convt.weight", "bilinear.weight"} <= set(result)
    assert result.left_out == {"embed.weight": "an embedding (pass embeddings=True to mask it)"}
    for name in result:
        module_name, _, pname = name.rpartition(".")
        layer = model.get_submodule(module_name)
        assert torch.equal(get_mask(layer, pname), result[name])
        assert sparsity(getattr(layer, pname)) == pytest.approx(0.5, abs=0.01)
    assert len(masked_parameters(model)) == len(result)
    assert "mha.in_proj_weight (24, 8): 50% of 192 removed" in str(result)


def test_mask_layers_embeddings_true_masks_them_and_false_leaves_them_quietly():
    import warnings as w

    model = _zoo()
    weights = _weights_2d(model)
    with w.catch_warnings():
        w.simplefilter("error")
        quiet = mask_layers(copy.deepcopy(model), 0.5, embeddings=False)
    assert "embed.weight" not in quiet and "embed.weight" in quiet.left_out
    loud = mask_layers(model, 0.5, embeddings=True)
    assert set(loud) == weights and get_mask(model["embed"]) is not None
    with pytest.raises(TypeError, match="embeddings must be True, False or None"):
        mask_layers(nn.Linear(4, 4), 0.5, embeddings="yes")


def test_mask_layers_include_and_exclude_by_pattern_or_predicate():
    model = _zoo()
    only = mask_layers(model, 0.5, include="mha*", embeddings=False)
    assert set(only) == {"mha.in_proj_weight", "mha.out_proj.weight", "mha_kv.q_proj_weight",
                         "mha_kv.k_proj_weight", "mha_kv.v_proj_weight", "mha_kv.out_proj.weight"}
    assert only.left_out["conv.weight"] == "not matched by include"
    model = _zoo()
    some = mask_layers(model, 0.5, exclude=["lstm", "gru.*"], embeddings=False)
    assert not any(n.startswith(("lstm.", "gru.")) for n in some)
    assert "rnn.weight_ih_l0" in some
    model = _zoo()
    convs = mask_layers(model, 0.5, include=lambda name, module: isinstance(module, nn.Conv2d),
                        embeddings=False)
    assert list(convs) == ["conv.weight"]
    with pytest.raises(TypeError, match="include must be a parameter-name pattern"):
        mask_layers(model, 0.5, include=3)


def test_mask_layers_result_still_answers_to_a_layer_name():
    model = digits_mlp(hidden=(8,))
    result = mask_layers(model, 0.5)
    assert list(result) == ["layers.0.weight", "layers.2.weight"]
    assert result["layers.0"] is result["layers.0.weight"]
    assert "layers.2" in result and result.get("layers.2") is result["layers.2.weight"]
    assert "layers.1" not in result and result.get("layers.1") is None
    with pytest.raises(KeyError):
        result["layers.1"]


def test_mask_layers_on_a_model_without_weights_is_a_value_error(left_alone):
    model = nn.Sequential(nn.ReLU(), nn.LayerNorm(3))
    with left_alone(model), pytest.raises(ValueError, match="no weight to mask"):
        mask_layers(model, 0.5)
    embed = nn.Embedding(4, 3)
    with left_alone(embed), pytest.raises(ValueError, match=r"left out: \['weight'\]"):
        mask_layers(embed, 0.5, embeddings=False)


# --- all or nothing -------------------------------------------------------------------------

def _module_classes(model):
    return [type(m) for m in model.modules()]


@pytest.mark.parametrize("bad", [
    dict(sparsity=1.5), dict(how="largest"), dict(include=[1]), dict(embeddings=1)])
def test_mask_layers_bad_arguments_change_nothing(left_alone, bad):
    model = _zoo()
    kwargs = {"sparsity": 0.5, **bad}
    classes = _module_classes(model)
    with left_alone(model), pytest.raises((ValueError, TypeError)):
        mask_layers(model, **kwargs)
    assert _module_classes(model) == classes


def test_mask_layers_failing_half_way_leaves_the_model_exactly_as_it_was(left_alone, monkeypatch):
    import maskutils.apply as apply_module

    model = _zoo()
    mask_layers(model, 0.3, include="conv", embeddings=False)   # one mask already there
    classes = _module_classes(model)
    calls = []
    real = apply_module._register

    def fail_on_the_fifth(places, mask):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("disk full")
        return real(places, mask)

    monkeypatch.setattr(apply_module, "_register", fail_on_the_fifth)
    with left_alone(model), pytest.raises(RuntimeError, match="disk full"):
        mask_layers(model, 0.6, embeddings=False)
    assert len(calls) == 5
    assert _module_classes(model) == classes
    assert list(masked_parameters(model)) == [model["conv"].parametrizations.weight.original]


def test_apply_mask_on_a_tied_parameter_masked_in_one_place_only_is_refused(left_alone):
    model = _tied()
    apply_mask(model["head"], _mask((6, 4)))          # without model=: only the head sees it
    with left_alone(model), pytest.raises(ValueError, match=r"not masked alike.*embed\.weight"):
        apply_mask(model["head"], _mask((6, 4), seed=3), model=model)
    with left_alone(model), pytest.raises(ValueError, match=r"not masked alike"):
        mask_layers(model, 0.5, embeddings=True)


# --- tied parameters ------------------------------------------------------------------------

def _tied():
    torch.manual_seed(0)
    model = nn.ModuleDict({"embed": nn.Embedding(6, 4), "head": nn.Linear(4, 6, bias=False)})
    model["head"].weight = model["embed"].weight
    return model


def test_a_tied_parameter_is_masked_once_and_every_place_reads_the_mask():
    model = _tied()
    with pytest.raises(ValueError, match=r"no weight to mask.*left out: \['embed\.weight'\]"):
        mask_layers(model, 0.5)                       # the tie is an embedding: left out
    result = mask_layers(model, 0.5, embeddings=True)
    assert list(result) == ["embed.weight"] and result.tied == {"embed.weight": ["head.weight"]}
    assert get_mask(model["embed"]) is get_mask(model["head"])
    assert torch.equal(model["embed"].weight, model["head"].weight)
    assert len(masked_parameters(model)) == 1
    assert sparsity(model) == 0.5
    ids = torch.tensor([0, 1, 2, 3, 4, 5])
    logits = model["head"](model["embed"](ids))
    logits.sum().backward()
    original = model["embed"].parametrizations.weight.original
    assert original is model["head"].parametrizations.weight.original
    assert (original.grad[result["embed.weight"] == 0] == 0).all()


def test_apply_mask_with_model_masks_every_place_of_a_tied_parameter():
    model = _tied()
    mask = _mask((6, 4))
    apply_mask(model["head"], mask, model=model)
    assert torch.equal(get_mask(model["embed"]), mask)
    assert (model["embed"].weight[mask == 0] == 0).all()


def test_baking_a_tied_mask_keeps_the_tie_and_changes_no_unmasked_place():
    model = _tied()
    mask_layers(model, 0.5, embeddings=True)
    expected = model["embed"].weight.detach().clone()
    remove_mask(model["head"])                        # bake in one place: the other agrees
    assert torch.equal(model["embed"].weight, expected)
    assert torch.equal(model["head"].weight, expected)
    assert remove_masks(model) == ["embed.weight"]
    assert model["head"].weight is model["embed"].weight
    assert torch.equal(model["embed"].weight, expected)


def test_bake_false_on_one_place_of_a_tie_needs_the_model(left_alone):
    model = _tied()
    mask_layers(model, 0.5, embeddings=True)
    with left_alone(model), pytest.raises(ValueError, match="pass model=model"):
        remove_mask(model["head"], bake=False)
    remove_mask(model["head"], bake=False, model=model)
    assert not parametrize.is_parametrized(model["embed"])
    assert model["head"].weight is model["embed"].weight and sparsity(model) == 0.0


def test_baking_a_tie_masked_in_one_place_is_refused_with_the_model(left_alone):
    model = _tied()
    apply_mask(model["head"], _mask((6, 4)))          # the embedding reads it unmasked
    with left_alone(model), pytest.raises(ValueError, match=r"tied to \['embed\.weight'\]"):
        remove_mask(model["head"], model=model)
    dense = model["embed"].weight.detach().clone()
    remove_mask(model["head"], bake=False, model=model)
    assert torch.equal(model["embed"].weight, dense)


# --- mask_layers names every >= 2-D weight it leaves, and handles reparametrized layers -------

class _FrozenAndTokens(nn.Module):
    """A frozen weight kept as a buffer, and torchvision-style class token and positions."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(8, 8)
        self.register_buffer("frozen", torch.randn(8, 8))
        self.register_buffer("steps", torch.zeros(2, 2, dtype=torch.long))   # not a weight
        self.class_token = nn.Parameter(torch.zeros(1, 1, 8))
        self.pos_embedding = nn.Parameter(torch.randn(1, 5, 8))
        self.embed = nn.Embedding(10, 8)


def test_mask_layers_names_buffers_tokens_positions_and_embeddings_it_leaves():
    model = _FrozenAndTokens()
    with pytest.warns(UserWarning, match=r"left out 4 weight") as warned:
        result = mask_layers(model, 0.5)
    message = str(warned[0].message)
    for words in ("frozen: a buffer", "class_token: a class token or position embedding",
                  "pos_embedding: a class token", "embed.weight: an embedding"):
        assert words in message
    assert list(result) == ["linear.weight"]
    assert set(result.left_out) == {"frozen", "class_token", "pos_embedding", "embed.weight"}
    assert "nn.Parameter(tensor, requires_grad=False)" in result.left_out["frozen"]
    assert "pass embeddings=True" in result.left_out["pos_embedding"]
    assert "frozen: a buffer" in result.report()
    assert torch.count_nonzero(model.class_token) == 0 and sparsity(model.pos_embedding) == 0


def test_mask_layers_names_what_it_leaves_out_quietly_too():
    model = _FrozenAndTokens()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        with pytest.raises(UserWarning, match="frozen: a buffer"):
            mask_layers(copy.deepcopy(model), 0.5, embeddings=False)
    quiet = mask_layers(model, 0.5, embeddings=False, exclude="frozen")
    assert set(quiet.left_out) == {"frozen", "class_token", "pos_embedding", "embed.weight"}
    assert quiet.left_out["frozen"] == "matched by exclude"


def test_mask_layers_with_embeddings_masks_tokens_and_positions_too():
    model = _FrozenAndTokens()
    with pytest.warns(UserWarning, match="frozen: a buffer"):
        result = mask_layers(model, 0.5, embeddings=True)
    assert set(result) == {"linear.weight", "class_token", "pos_embedding", "embed.weight"}


def test_mask_layers_leaves_a_hugging_face_vit_class_token_and_positions_dense():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=64, image_size=8, patch_size=4,
                                    num_channels=1)
    vit = transformers.ViTModel(config).eval()
    before = {n: p.detach().clone() for n, p in vit.embeddings.named_parameters()}
    with pytest.warns(UserWarning, match=r"embeddings\.cls_token.*embeddings\.position_embeddings"):
        result = mask_layers(vit, 0.5)
    assert {"embeddings.cls_token", "embeddings.position_embeddings"} == set(result.left_out)
    assert "embeddings.patch_embeddings.projection.weight" in result      # a Conv2d: masked
    for name in ("cls_token", "position_embeddings"):
        assert torch.equal(getattr(vit.embeddings, name), before[name])
    blocks = [n for n in result if "layer." in n or "layers." in n]
    assert blocks and all(sparsity(result[n]) == 0.5 for n in blocks)


@pytest.mark.parametrize("wrap", [torch.nn.utils.parametrizations.weight_norm,
                                  torch.nn.utils.parametrizations.spectral_norm],
                         ids=["weight_norm", "spectral_norm"])
def test_mask_layers_masks_on_top_of_weight_norm_and_spectral_norm(wrap):
    """The layer ends at the requested sparsity (it was skipped silently under weight_norm)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), wrap(nn.Linear(8, 8)))
    result = mask_layers(model, 0.5)
    assert set(result) == {"0.weight", "1.weight"}
    assert sparsity(model[1].weight) == 0.5 and sparsity(model) == 0.5
    assert torch.equal(model[1].weight == 0, get_mask(model[1]) == 0)
    model(torch.randn(3, 8)).sum().backward()
    with pytest.raises(ValueError, match="other parametrizations"):
        remove_masks(model)
    apply_mask(model[1], torch.zeros(8, 8), model=model)     # model= finds it too: no tie
    assert (model[1].weight == 0).all()


def test_char_transformer_lm_tie_is_masked_once():
    lm = CharTransformerLM(vocab_size=12, d_model=8, n_heads=2, n_layers=1, max_len=6)
    result = mask_layers(lm, 0.5, embeddings=True)
    assert result.tied == {"embed.weight": ["head.weight"]}
    assert torch.equal(lm.head.weight, lm.embed.weight)
    assert "blocks.layers.0.self_attn.in_proj_weight" in result


# --- copies, assignment, initialisation ----------------------------------------------------

@pytest.mark.parametrize("kind", [nn.LSTM, nn.GRU, nn.RNN])
def test_deepcopy_and_averaged_model_of_a_masked_rnn_after_a_training_forward(kind):
    torch.manual_seed(0)
    rnn = kind(4, 8, num_layers=2)
    mask_layers(rnn, 0.5)
    out = rnn(torch.randn(5, 3, 4))[0]
    out.square().mean().backward()
    twin = copy.deepcopy(rnn)
    avg = AveragedModel(rnn)
    x = torch.randn(5, 3, 4)
    torch.testing.assert_close(twin(x)[0], rnn(x)[0], rtol=0, atol=0)
    torch.testing.assert_close(avg.module(x)[0], rnn(x)[0], rtol=0, atol=0)
    with torch.no_grad():
        twin.parametrizations.weight_ih_l0.original.add_(1.0)
    assert not torch.equal(twin(x)[0], rnn(x)[0])                 # independent
    assert (twin.weight_ih_l0[get_mask(twin, "weight_ih_l0") == 0] == 0).all()
    out = rnn(x)[0]                                               # the source still trains
    out.sum().backward()


def test_assigning_a_masked_weight_sets_the_stored_original():
    layer = _masked_linear()
    mask = get_mask(layer)
    new = torch.randn(4, 6)
    layer.weight = new
    original = layer.parametrizations.weight.original
    assert torch.equal(original, new) and original.data_ptr() != new.data_ptr()
    assert torch.equal(layer.weight, new * mask)
    with pytest.raises(ValueError, match=r"shape \(4, 6\) to a tensor of shape \(3, 3\)"):
        layer.weight = torch.randn(3, 3)


# --- in-place writes into the computed weight: an error that names the original -----------

IN_PLACE_WRITES = {
    "nn.init.zeros_": lambda layer: nn.init.zeros_(layer.weight),
    "nn.init.kaiming_uniform_": lambda layer: nn.init.kaiming_uniform_(layer.weight),
    "nn.init.trunc_normal_": lambda layer: nn.init.trunc_normal_(layer.weight),
    "nn.init.orthogonal_": lambda layer: nn.init.orthogonal_(layer.weight),
    "reset_parameters": lambda layer: layer.reset_parameters(),
    "copy_": lambda layer: layer.weight.copy_(torch.zeros(4, 6)),
    "mul_": lambda layer: layer.weight.mul_(2),
    "item assignment": lambda layer: layer.weight.__setitem__((0, 0), 1.0),
    ".data.zero_()": lambda layer: layer.weight.data.zero_(),
    ".data = ...": lambda layer: setattr(layer.weight, "data", torch.zeros(4, 6)),
    ".detach().fill_()": lambda layer: layer.weight.detach().fill_(1.0),
    "a view: w.t().zero_()": lambda layer: layer.weight.t().zero_(),
    "a row: w[0].fill_()": lambda layer: layer.weight[0].fill_(1.0),
    "out=": lambda layer: torch.add(torch.ones(4, 6), 1, out=layer.weight),
    "inplace=True": lambda layer: F.relu(layer.weight, inplace=True),
    "+=": lambda layer: layer.weight.__iadd__(1.0),
}


@pytest.mark.parametrize("grad_mode", [False, True], ids=["no_grad", "grad"])
@pytest.mark.parametrize("write", IN_PLACE_WRITES.values(), ids=IN_PLACE_WRITES.keys())
def test_an_in_place_write_into_a_masked_weight_raises_and_names_the_original(
        left_alone, write, grad_mode):
    """It used to change a temporary (original * mask) and leave the layer as it was."""
    layer = _masked_linear()
    with left_alone(layer), torch.set_grad_enabled(grad_mode), pytest.raises(
            RuntimeError, match=r"layer\.weight of this masked Linear is computed .*"
                                r"temporary copy.*parametrizations\.weight\.original"):
        write(layer)


def test_the_in_place_message_says_what_to_do_instead():
    layer = _masked_linear()
    with pytest.raises(RuntimeError) as caught:
        layer.reset_parameters()
    message = str(caught.value)
    assert "kaiming_uniform_" in message
    assert "with torch.no_grad(): nn.init.normal_(layer.parametrizations.weight.original)" in message
    assert "assign layer.weight = new_values" in message
    with torch.no_grad():                           # the way the message points to
        nn.init.zeros_(layer.parametrizations.weight.original)
    assert (layer.weight == 0).all()


def test_in_place_writes_into_other_parametrized_tensors_are_refused_too():
    from maskutils.learnable import apply_learnable_mask

    lstm = nn.LSTM(4, 8)
    mask_layers(lstm, 0.5)
    with pytest.raises(RuntimeError, match=r"parametrizations\.weight_hh_l0\.original"):
        nn.init.orthogonal_(lstm.weight_hh_l0)
    gated = apply_learnable_mask(nn.Linear(4, 3))
    with pytest.raises(RuntimeError, match=r"original \* gate.*parametrizations\.weight\.original"):
        nn.init.zeros_(gated.weight)


def test_the_computed_weight_reads_like_a_plain_tensor():
    layer = _masked_linear()
    weight = layer.weight
    expected = layer.parametrizations.weight.original.detach() * get_mask(layer)
    for value in (weight * 2, weight.abs(), weight.sum(), weight @ torch.ones(6), weight.clone()):
        assert type(value) is torch.Tensor
    assert torch.equal(weight.detach(), expected) and torch.equal(weight.clone(), expected)
    assert repr(weight).startswith("tensor([[")
    torch.testing.assert_close(weight, expected)
    torch.testing.assert_close(weight, nn.Parameter(expected))   # a Parameter compares too
    with torch.no_grad():
        copied = copy.deepcopy(layer.weight)
    assert type(copied) is torch.Tensor and torch.equal(copied, expected)
    buffer = io.BytesIO()
    torch.save(weight.detach(), buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    assert type(loaded) is torch.Tensor and torch.equal(loaded, expected)
    with torch.no_grad():                            # reading into another tensor is fine
        target = torch.empty(4, 6)
        target.copy_(layer.weight)
    assert torch.equal(target, expected)


def test_a_forward_pass_reads_a_plain_tensor():
    """No guard on the hot path: forwards (and fused kernels that refuse tensor subclasses)
    get the plain tensor."""
    seen = []

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = _masked_linear()

        def forward(self, x):
            seen.append(type(self.layer.weight))
            return self.layer(x)

    Probe()(torch.randn(2, 6)).sum().backward()
    assert seen == [torch.Tensor]


# --- a masked entry reads exactly 0, whatever its original holds ---------------------------

def _with_non_finite_originals(layer):
    mask = get_mask(layer)
    with torch.no_grad():
        original = layer.parametrizations.weight.original
        masked = (mask == 0).nonzero()
        kept = (mask == 1).nonzero()
        original[tuple(masked[0])] = float("inf")
        original[tuple(masked[1])] = float("-inf")
        original[tuple(masked[2])] = float("nan")
        original[tuple(kept[0])] = float("inf")      # a kept inf stays inf
    return tuple(kept[0])


def test_a_masked_entry_reads_exactly_zero_whatever_its_original():
    layer = _masked_linear()
    kept_inf = _with_non_finite_originals(layer)
    mask = get_mask(layer)
    weight = layer.weight.detach()
    assert (weight[mask == 0] == 0).all()            # inf * 0 would be nan
    assert weight[kept_inf] == float("inf")
    finite = torch.isfinite(layer.parametrizations.weight.original.detach())
    assert torch.equal(weight[finite], (layer.parametrizations.weight.original.detach()
                                        * mask)[finite])
    with torch.no_grad():
        out = layer(torch.zeros(1, 6))               # 0 * inf = nan only through the kept inf
    assert torch.isnan(out).sum() == 1


def test_a_masked_entry_reads_exactly_zero_in_the_selection_path_too():
    """Under torch.func transforms (and on GPUs, and compiled) the selection runs directly."""
    layer = _masked_linear()
    _with_non_finite_originals(layer)
    mask = get_mask(layer)
    selected = torch.func.vmap(lambda m: layer.weight * m)(torch.ones(2, 1, 1))
    assert (selected[:, mask == 0] == 0).all()


def test_gradients_are_exactly_zero_at_masked_entries_and_unchanged_at_kept_ones():
    torch.manual_seed(0)
    layer = _masked_linear()
    mask = get_mask(layer)
    dense = nn.Linear(6, 4)
    with torch.no_grad():
        dense.weight.copy_(layer.parametrizations.weight.original * mask)
        dense.bias.copy_(layer.bias)
    x = torch.randn(5, 6)
    layer(x).square().sum().backward()
    dense(x).square().sum().backward()
    grad = layer.parametrizations.weight.original.grad
    assert (grad[mask == 0] == 0).all()
    assert torch.equal(grad[mask == 1], dense.weight.grad[mask == 1])
    _with_non_finite_originals(layer)                # an inf under the mask: still zero there
    layer.parametrizations.weight.original.grad = None
    x = torch.randn(5, 6)
    layer.bias.grad = None
    out = layer(x)
    finite_rows = torch.isfinite(out).all(dim=0)
    out[:, finite_rows].sum().backward()
    assert (layer.parametrizations.weight.original.grad[mask == 0] == 0).all()


# --- the eval fast path, checkpoints --------------------------------------------------------

def test_transformer_encoder_eval_fast_path_honours_the_mask():
    torch.manual_seed(0)
    block = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    encoder = nn.TransformerEncoder(block, 2, enable_nested_tensor=False).eval()
    result = mask_layers(encoder, 0.5)
    assert "layers.0.self_attn.in_proj_weight" in result
    x = torch.randn(3, 5, 16)
    slow = encoder(x)                                  # grad enabled: the Python path
    with torch.no_grad(), torch.profiler.profile() as prof:
        fast = encoder(x)
    ops = {e.key for e in prof.key_averages()}
    assert "aten::_transformer_encoder_layer_fwd" in ops   # the fused fast path ran
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    with torch.no_grad():                              # masked raw values must not leak in
        for param, mask in masked_parameters(encoder).items():
            param.add_(1e3 * (1 - mask))
        again = encoder(x)
    torch.testing.assert_close(again, fast, rtol=0, atol=0)


def test_a_dense_checkpoint_loads_into_a_masked_model_and_keeps_the_masks(left_alone):
    torch.manual_seed(0)
    dense = _tied()
    masked = _tied()
    mask_layers(masked, 0.5, embeddings=True)
    masks = {k: v.clone() for k, v in masked.state_dict().items() if k.endswith(".mask")}
    checkpoint = dense.state_dict()
    del checkpoint["head.weight"]                      # a tied name may be given once
    load_dense_state_dict(masked, checkpoint)
    for key, mask in masks.items():
        assert torch.equal(masked.state_dict()[key], mask)
    assert torch.equal(masked["head"].weight, dense["head"].weight * get_mask(masked["head"]))
    bad = dict(checkpoint, **{"embed.weight": torch.zeros(5, 4)})
    with left_alone(masked), pytest.raises(ValueError, match=r"nothing loaded; shapes differ"):
        load_dense_state_dict(masked, bad)
    with left_alone(masked), pytest.raises(ValueError, match=r"unexpected keys: \['extra'\]"):
        load_dense_state_dict(masked, dict(checkpoint, extra=torch.zeros(1)))
    with left_alone(masked), pytest.raises(ValueError, match=r"missing keys: \['embed\.weight'"):
        load_dense_state_dict(masked, {})


def test_a_plain_load_state_dict_of_a_dense_checkpoint_into_a_masked_model_fails_loudly():
    masked = _masked_mlp()
    with pytest.raises(RuntimeError, match="Missing key"):
        masked.load_state_dict(digits_mlp(hidden=(16,)).state_dict())


def test_pickling_a_whole_masked_model_is_refused_and_the_state_dict_route_works():
    model = _masked_mlp()
    with pytest.raises(RuntimeError, match="only supported through state_dict"):
        torch.save(model, io.BytesIO())
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    twin = _masked_mlp(seed=3, mask_seed=9)
    twin.load_state_dict(torch.load(buffer))
    x = torch.randn(2, 64)
    assert torch.equal(twin(x), model(x))



def test_direct_registration_of_a_mask_keeps_the_original_and_its_storage():
    layer = nn.Linear(6, 4)
    weight, storage = layer.weight, layer.weight.data_ptr()
    parametrize.register_parametrization(layer, "weight", Mask(_mask((4, 6))))
    assert layer.parametrizations.weight.original is weight
    assert weight.data_ptr() == storage
