"""Enforcing masks during training and recording gradients (maskutils.hooks)."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from maskutils import apply_mask, digits_loaders, digits_mlp, fit, masked_parameters, random_mask
from maskutils.hooks import GradientRecorder, MaskHandle, mask_gradients, project_after_step

FAST = settings(max_examples=25, deadline=None)

OPTIMIZERS = {
    "SGD": lambda params: torch.optim.SGD(params, lr=0.1),
    "SGD+momentum": lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9),
    "SGD+weight decay": lambda params: torch.optim.SGD(params, lr=0.1, weight_decay=0.1),
    "Adam": lambda params: torch.optim.Adam(params, lr=0.05),
    "AdamW": lambda params: torch.optim.AdamW(params, lr=0.05, weight_decay=0.1),
}
STATEFUL = {"SGD+momentum", "Adam", "AdamW"}  # keep state built from past gradients


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


def _data(seed=0, n=16):
    g = torch.Generator().manual_seed(seed + 1000)
    return torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def _masks(model, sparsity=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {layer.weight: random_mask(layer.weight, sparsity, generator=g)
            for layer in model if isinstance(layer, nn.Linear)}


def _step(model, optimizer, x, y):
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    optimizer.step()


def _warm_up(model, optimizer, x, y, steps=3):
    for _ in range(steps):
        _step(model, optimizer, x, y)


def _masked_nonzero(masks):
    return sum(int(((p != 0) & (m == 0)).sum()) for p, m in masks.items())


def _params(model):
    return [p.detach().clone() for p in model.parameters()]


# --- project_after_step: exact for every optimizer, fresh or warm ----------------------------

@FAST
@given(name=st.sampled_from(sorted(OPTIMIZERS)), warm=st.booleans(), seed=st.integers(0, 2**16),
       sparsity=st.sampled_from([0.25, 0.5, 0.9]))
def test_projection_keeps_masked_entries_exactly_zero_after_every_step(name, warm, seed, sparsity):
    model = _model(seed)
    x, y = _data(seed)
    optimizer = OPTIMIZERS[name](model.parameters())
    if warm:
        _warm_up(model, optimizer, x, y)
    masks = _masks(model, sparsity, seed)
    bias_before = model[2].bias.detach().clone()
    project_after_step(optimizer, masks)
    assert _masked_nonzero(masks) == 0, "masked entries are zeroed at once"
    for _ in range(4):
        _step(model, optimizer, x, y)
        assert _masked_nonzero(masks) == 0
    assert not torch.equal(model[2].bias, bias_before), "the optimizer did step"


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("warm", [False, True], ids=["fresh", "warm"])
def test_projection_trains_the_same_weights_as_a_forward_mask(name, warm):
    """Both compute with zeros at the masked entries; element-wise optimizers then agree."""
    x, y = _data(3)
    models, optimizers = [], []
    for strategy in ("projection", "forward mask"):
        model = _model(3)
        optimizer = OPTIMIZERS[name](model.parameters())
        if warm:
            _warm_up(model, optimizer, x, y)
        masks = _masks(model, 0.5, seed=7)
        if strategy == "projection":
            project_after_step(optimizer, masks)
        else:
            for layer, mask in zip([model[0], model[2]], masks.values()):
                apply_mask(layer, mask)
        models.append(model)
        optimizers.append(optimizer)
    for _ in range(5):
        for model, optimizer in zip(models, optimizers):
            _step(model, optimizer, x, y)
    for a, b in zip([models[0][0], models[0][2]], [models[1][0], models[1][2]]):
        torch.testing.assert_close(a.weight, b.weight, rtol=0, atol=1e-6)
        torch.testing.assert_close(a.bias, b.bias, rtol=0, atol=1e-6)


def test_projection_accepts_the_originals_of_a_forward_masked_model():
    model = digits_mlp(hidden=(8,))
    for i, layer in enumerate(model.linears()):
        apply_mask(layer, random_mask(layer.weight, 0.5, generator=torch.Generator().manual_seed(i)))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    masks = masked_parameters(model)
    project_after_step(optimizer, masks)
    x, y = torch.randn(8, 64), torch.randint(0, 10, (8,))
    _step(model, optimizer, x, y)
    assert _masked_nonzero(masks) == 0  # the stored originals are sparse too


# --- mask_gradients: exact with a fresh optimizer, not with a warm one -------------------------

@FAST
@given(name=st.sampled_from(sorted(OPTIMIZERS)), seed=st.integers(0, 2**16),
       sparsity=st.sampled_from([0.25, 0.5, 0.9]))
def test_gradient_hook_with_a_fresh_optimizer_keeps_zeros(name, seed, sparsity):
    model = _model(seed)
    x, y = _data(seed)
    masks = _masks(model, sparsity, seed)
    mask_gradients(masks)
    optimizer = OPTIMIZERS[name](model.parameters())  # built after the mask: no old state
    for _ in range(4):
        _step(model, optimizer, x, y)
        for p, m in masks.items():
            assert (p.grad[m == 0] == 0).all()
        assert _masked_nonzero(masks) == 0


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_gradient_hook_with_a_warm_optimizer_fails_exactly_when_it_has_state(name):
    """The documented limitation: momentum and Adam moments move zeroed weights."""
    model = _model(1)
    x, y = _data(1)
    optimizer = OPTIMIZERS[name](model.parameters())
    _warm_up(model, optimizer, x, y)
    masks = _masks(model, 0.5, seed=1)
    mask_gradients(masks)
    _step(model, optimizer, x, y)
    if name in STATEFUL:
        assert _masked_nonzero(masks) > 0
    else:  # plain SGD, and SGD whose weight decay adds wd * 0 = 0
        assert _masked_nonzero(masks) == 0


def test_mask_gradients_zeroes_weights_and_existing_gradients_at_once():
    model = _model(2)
    x, y = _data(2)
    F.cross_entropy(model(x), y).backward()
    masks = _masks(model, 0.5, seed=2)
    kept = {p: (p.detach()[m == 1].clone(), p.grad[m == 1].clone()) for p, m in masks.items()}
    mask_gradients(masks)
    for p, m in masks.items():
        assert (p[m == 0] == 0).all() and (p.grad[m == 0] == 0).all()
        assert torch.equal(p.detach()[m == 1], kept[p][0]) and torch.equal(p.grad[m == 1], kept[p][1])


def test_gradient_hook_on_a_forward_masked_model_changes_nothing():
    """With apply_mask, autograd already zeroes the original's gradient: the hook is redundant."""
    x, y = _data(4)
    models = []
    for hook in (False, True):
        model = _model(4)
        for layer, mask in zip([model[0], model[2]], _masks(model, 0.6, seed=4).values()):
            apply_mask(layer, mask)
        if hook:
            mask_gradients(masked_parameters(model))
        optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
        for _ in range(5):
            _step(model, optimizer, x, y)
        models.append(model)
    for a, b in zip([models[0][0], models[0][2]], [models[1][0], models[1][2]]):
        assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)


def test_masks_are_copied_in_the_parameters_dtype():
    model = _model(5)
    weight = model[0].weight
    mask = (torch.rand(weight.shape, generator=torch.Generator().manual_seed(0)) > 0.5)
    handle = mask_gradients({weight: mask})  # a bool mask is accepted
    assert handle.masks[weight].dtype == weight.dtype
    mask.fill_(True)                          # changing the caller's mask changes nothing
    F.cross_entropy(model(_data(5)[0]), _data(5)[1]).backward()
    assert (weight.grad[handle.masks[weight] == 0] == 0).all()
    assert int((handle.masks[weight] == 0).sum()) > 0


# --- .remove(): plain training again ----------------------------------------------------------

@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_removing_the_gradient_hook_restores_plain_training(name):
    x, y = _data(6)
    model, reference = _model(6), _model(6)
    masks = _masks(model, 0.5, seed=6)
    handle = mask_gradients(masks)
    handle.remove()
    with torch.no_grad():  # the same starting point: the reference is zeroed the same way
        for p, q, m in zip(masks, [reference[0].weight, reference[2].weight], masks.values()):
            q.mul_(m)
    opt, ref_opt = OPTIMIZERS[name](model.parameters()), OPTIMIZERS[name](reference.parameters())
    for _ in range(3):
        _step(model, opt, x, y)
        _step(reference, ref_opt, x, y)
    for p, q in zip(model.parameters(), reference.parameters()):
        assert torch.equal(p, q)
    assert _masked_nonzero(masks) > 0, "without the hook the zeroed weights train again"
    assert not handle.active


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_removing_the_projection_restores_plain_training(name):
    x, y = _data(7)
    model = _model(7)
    optimizer = OPTIMIZERS[name](model.parameters())
    masks = _masks(model, 0.5, seed=7)
    with project_after_step(optimizer, masks) as handle:  # a context manager too
        _step(model, optimizer, x, y)
        assert _masked_nonzero(masks) == 0
    assert not handle.active
    reference = copy.deepcopy(model)
    ref_opt = OPTIMIZERS[name](reference.parameters())
    ref_opt.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    for _ in range(3):
        _step(model, optimizer, x, y)
        _step(reference, ref_opt, x, y)
    for p, q in zip(model.parameters(), reference.parameters()):
        assert torch.equal(p, q)
    assert _masked_nonzero(masks) > 0
    handle.remove()  # a second remove is harmless


def test_handle_reports_what_it_holds():
    model = _model(8)
    handle = mask_gradients(_masks(model))
    assert isinstance(handle, MaskHandle) and handle.active and len(handle.masks) == 2
    assert "2 parameter(s), active" in repr(handle)
    handle.remove()
    assert "removed" in repr(handle)


# --- bad input: a clear error, nothing registered, nothing changed -----------------------------

def _bad_cases():
    """(description, builder(model) -> masks, error, message)."""
    def shape(model):
        return {model[0].weight: torch.ones(3, 3)}

    def binary(model):
        return {model[0].weight: torch.full((5, 6), 0.5)}

    def nan(model):
        m = torch.ones(5, 6)
        m[0, 0] = float("nan")
        return {model[0].weight: m}

    def second_bad(model):  # the first entry is fine: it must not be zeroed either
        return {model[0].weight: torch.zeros(5, 6), model[2].weight: torch.ones(2, 2)}

    def not_tensor_mask(model):
        return {model[0].weight: [[1.0] * 6] * 5}

    def not_tensor_key(model):
        return {"0.weight": torch.ones(5, 6)}

    def not_leaf(model):
        return {model[0].weight * 1: torch.ones(5, 6)}

    def frozen(model):
        return {torch.zeros(5, 6): torch.ones(5, 6)}

    def not_dict(model):
        return [(model[0].weight, torch.ones(5, 6))]

    def empty(model):
        return {}

    return [
        pytest.param(shape, ValueError, r"shape \(3, 3\) but the parameter has shape \(5, 6\)", id="shape"),
        pytest.param(binary, ValueError, r"only 0s and 1s", id="non-binary"),
        pytest.param(nan, ValueError, "NaN", id="nan"),
        pytest.param(second_bad, ValueError, r"masks entry 1.*shape \(2, 2\)", id="second-entry-bad"),
        pytest.param(not_tensor_mask, TypeError, r"must be a torch\.Tensor", id="mask-not-tensor"),
        pytest.param(not_tensor_key, TypeError, r"must be a parameter", id="key-not-tensor"),
        pytest.param(not_leaf, ValueError, r"not a trainable leaf parameter", id="not-leaf"),
        pytest.param(frozen, ValueError, r"not a trainable leaf parameter", id="no-grad"),
        pytest.param(not_dict, TypeError, r"must be a dict", id="not-dict"),
        pytest.param(empty, ValueError, r"masks is empty", id="empty"),
    ]


def _assert_plain(model, before, x, y, optimizer=None):
    """Parameters unchanged, and training behaves as if nothing had been registered."""
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p, b)
    reference = copy.deepcopy(model)
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    F.cross_entropy(reference(x), y).backward()
    for p, q in zip(model.parameters(), reference.parameters()):
        assert torch.equal(p.grad, q.grad), "a gradient hook was registered"
    if optimizer is not None:
        updated = {id(p) for group in optimizer.param_groups for p in group["params"]}
        pairs = [(p, q) for p, q in zip(model.parameters(), reference.parameters()) if id(p) in updated]
        ref_opt = type(optimizer)([q for _, q in pairs], **optimizer.defaults)
        optimizer.step()
        ref_opt.step()
        for p, q in zip(model.parameters(), reference.parameters()):
            assert torch.equal(p, q), "a step hook was registered"


@pytest.mark.parametrize("build, error, message", _bad_cases())
def test_mask_gradients_rejects_bad_input_and_registers_nothing(build, error, message):
    model = _model(9)
    x, y = _data(9)
    masks = build(model)
    before = _params(model)
    with pytest.raises(error, match=message):
        mask_gradients(masks)
    _assert_plain(model, before, x, y)


@pytest.mark.parametrize("build, error, message", _bad_cases())
def test_project_after_step_rejects_bad_input_and_registers_nothing(build, error, message):
    model = _model(10)
    x, y = _data(10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    masks = build(model)
    before = _params(model)
    with pytest.raises(error, match=message):
        project_after_step(optimizer, masks)
    _assert_plain(model, before, x, y, optimizer)


def test_project_after_step_rejects_a_parameter_the_optimizer_does_not_update():
    model = _model(11)
    x, y = _data(11)
    optimizer = torch.optim.SGD(model[2].parameters(), lr=0.1)  # only the second layer
    masks = {model[2].weight: torch.zeros(3, 5), model[0].weight: torch.zeros(5, 6)}
    before = _params(model)
    with pytest.raises(ValueError, match=r"masks entry 1 \(shape \(5, 6\)\) is not one this SGD updates"):
        project_after_step(optimizer, masks)
    _assert_plain(model, before, x, y, optimizer)


def test_project_after_step_rejects_something_that_is_not_an_optimizer():
    model = _model(12)
    before = _params(model)
    with pytest.raises(TypeError, match="torch.optim.Optimizer"):
        project_after_step(model, _masks(model))
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p, b)


def test_the_computed_weight_of_a_masked_layer_is_refused_with_a_pointer_to_the_original():
    layer = apply_mask(nn.Linear(6, 5), torch.ones(5, 6))
    with pytest.raises(ValueError, match=r"parametrizations\.weight\.original"):
        mask_gradients({layer.weight: torch.ones(5, 6)})


# --- GradientRecorder ---------------------------------------------------------------------------

def test_recorder_records_per_layer_norms_and_snapshots():
    model = _model(13)
    x, y = _data(13)
    recorder = GradientRecorder(model, snapshot_layer="2", snapshot_steps=[2])
    assert recorder.layers == ["0", "2"]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    expected = {"0": [], "2": []}
    for step in (1, 2, 3):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        recorder.record()
        expected["0"].append(float(model[0].weight.grad.norm()))
        expected["2"].append(float(model[2].weight.grad.norm()))
        if step == 2:
            snapshot = model[2].weight.grad.clone()
        optimizer.step()
    assert recorder.steps == [1, 2, 3]
    for name in expected:
        assert recorder.norms[name] == pytest.approx(expected[name], rel=1e-6)
    assert sorted(recorder.snapshots) == [2]
    assert torch.equal(recorder.snapshots[2], snapshot)


def test_recorder_reads_the_original_of_a_masked_layer():
    model = _model(14)
    mask = random_mask(model[0].weight, 0.5, generator=torch.Generator().manual_seed(0))
    apply_mask(model[0], mask)
    recorder = GradientRecorder(model, snapshot_layer="0", snapshot_steps=[1])
    assert recorder.layers == ["0", "2"]
    x, y = _data(14)
    F.cross_entropy(model(x), y).backward()
    recorder.record()
    original = model[0].parametrizations.weight.original
    assert recorder.norms["0"][0] == pytest.approx(float(original.grad.norm()), rel=1e-6)
    assert (recorder.snapshots[1][mask == 0] == 0).all()
    assert (recorder.snapshots[1][mask == 1] != 0).any()


def test_recorder_works_as_the_on_step_callback_of_fit():
    model = digits_mlp(hidden=(16,))
    apply_mask(model.layers[0], random_mask(model.layers[0].weight, 0.8,
                                            generator=torch.Generator().manual_seed(0)))
    recorder = GradientRecorder(model, snapshot_layer="layers.0", snapshot_steps=[1, 30])
    train, _ = digits_loaders(batch_size=256)
    fit(model, train, epochs=2, on_step=recorder, progress=False)
    n = 2 * len(train)
    assert recorder.steps == list(range(1, n + 1))
    assert all(len(v) == n for v in recorder.norms.values())
    assert sorted(recorder.snapshots) == [1]  # step 30 never came
    assert all(v > 0 for values in recorder.norms.values() for v in values)


def test_recorder_without_gradients_says_when_to_call_it():
    recorder = GradientRecorder(_model(15))
    with pytest.raises(ValueError, match=r"after loss\.backward\(\)"):
        recorder.record()
    assert recorder.steps == []


def test_recorder_marks_a_layer_without_gradient_with_nan():
    model = _model(16)
    model[0].weight.requires_grad_(False)
    recorder = GradientRecorder(model)
    x, y = _data(16)
    F.cross_entropy(model(x), y).backward()
    recorder.record(step=5)
    assert recorder.steps == [5]
    assert recorder.norms["0"][0] != recorder.norms["0"][0]  # NaN
    assert recorder.norms["2"][0] > 0


@pytest.mark.parametrize("kwargs, error, message", [
    pytest.param({"layers": ["9"]}, ValueError, r"'9' is not a layer with a weight", id="unknown-layer"),
    pytest.param({"layers": "0"}, TypeError, "list of layer names", id="layers-str"),
    pytest.param({"layers": []}, ValueError, "layers is empty", id="layers-empty"),
    pytest.param({"snapshot_layer": "1"}, ValueError, r"snapshot_layer '1'", id="snapshot-relu"),
    pytest.param({"snapshot_layer": "0", "snapshot_steps": [0]}, ValueError, "positive ints", id="step-0"),
    pytest.param({"snapshot_steps": [1]}, ValueError, "without snapshot_layer", id="steps-no-layer"),
])
def test_recorder_rejects_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        GradientRecorder(_model(17), **kwargs)


def test_recorder_rejects_a_model_without_weights_and_a_non_module():
    with pytest.raises(ValueError, match="no Linear or Conv-like layer"):
        GradientRecorder(nn.Sequential(nn.ReLU()))
    with pytest.raises(TypeError, match="torch.nn.Module"):
        GradientRecorder(torch.zeros(3))


# --- gradient clipping: projection alone counts the masked entries' gradients ---------------

def _clipped_training(recipe, max_norm, steps=6):
    """SGD+momentum on a masked copy of one model, clipping before each step."""
    x, y = _data(18)
    model = _model(18)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    masks = _masks(model, 0.5, seed=18)
    if "forward mask" in recipe:
        for layer, mask in zip([model[0], model[2]], masks.values()):
            apply_mask(layer, mask)
    if "projection" in recipe:
        project_after_step(optimizer, masks)
    if "gradient mask" in recipe:
        mask_gradients(masks)
    totals = []
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        if max_norm is not None:
            totals.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)))
        optimizer.step()
    return [model[0].weight.detach(), model[2].weight.detach()], totals


def test_clipping_makes_projection_train_other_weights_than_a_forward_mask():
    reference, masked_totals = _clipped_training({"forward mask"}, max_norm=0.05)
    projected, projected_totals = _clipped_training({"projection"}, max_norm=0.05)
    assert min(masked_totals) > 0.05, "clipping is active in every step of both runs"
    assert projected_totals[0] > masked_totals[0], "the masked entries' gradients add to the norm"
    gap = max(float((a - b).abs().max()) for a, b in zip(projected, reference))
    assert gap > 1e-3


@pytest.mark.parametrize("max_norm", [None, 0.05], ids=["unclipped", "clipped"])
def test_projection_with_masked_gradients_matches_a_forward_mask_even_when_clipped(max_norm):
    reference, _ = _clipped_training({"forward mask"}, max_norm)
    both, _ = _clipped_training({"projection", "gradient mask"}, max_norm)
    for a, b in zip(both, reference):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    if max_norm is None:  # without clipping, projection alone agrees as well
        alone, _ = _clipped_training({"projection"}, max_norm)
        for a, b in zip(alone, reference):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_gradient_recorder_names_a_weight_norm_layer_it_cannot_record(left_alone):
    """weight_norm computes the weight from g and v: no single gradient (it used to crash
    with an AttributeError)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), torch.nn.utils.parametrizations.weight_norm(
        nn.Linear(4, 2)))
    with pytest.warns(UserWarning, match=r"leaves out \['1'\].*weight_norm's g and v"):
        recorder = GradientRecorder(model)
    assert recorder.layers == ["0"]
    with left_alone(model), pytest.raises(ValueError, match=r"'1' is computed from several"):
        GradientRecorder(model, layers=["1"])
