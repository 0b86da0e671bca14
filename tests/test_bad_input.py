"""Bad input to the masking core, case by case (issue 21): a clear error that says what is wrong
and what to do, raised before anything changes (``left_alone`` compares the model before and
after). Each case is one row: what to build, the call, the error, and the words the message
must hold."""
from __future__ import annotations

import copy
import re
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize, prune

from maskutils import (apply_mask, digits_mlp, fit, get_mask, gradual_magnitude_prune,
                       learnable_mask_layers, magnitude_mask, mask_layers, masked_parameters,
                       random_mask, remove_mask, remove_masks, sparsity)
from maskutils.learnable import apply_learnable_mask
from tiny_hf import tiny_model


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))


def _torch_pruned_second_layer():
    model = _mlp()
    prune.l1_unstructured(model[2], "weight", amount=0.3)
    return model


def _old_weight_norm():
    model = _mlp()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # deprecated in favour of the parametrization
        torch.nn.utils.weight_norm(model[2])
    return model


def _old_spectral_norm():
    model = _mlp()
    torch.nn.utils.spectral_norm(model[2])
    return model


def _on_meta():
    with torch.device("meta"):
        return _mlp()


def _weight_norm_then_masked():
    model = _mlp()
    torch.nn.utils.parametrizations.weight_norm(model[2])
    mask_layers(model, 0.5)
    return model


def _digits_batches(width=64, n=2):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(16, width, generator=g), torch.randint(0, 10, (16,), generator=g))
            for _ in range(n)]


# (id, build the model, the call, error, patterns the message must match)
CASES = [
    ("mask_layers sparsity 1.0", _mlp, lambda m: mask_layers(m, 1.0),
     ValueError, [r"sparsity must be in \[0, 1\)", "remove every weight"]),
    ("mask_layers sparsity 1 (int)", _mlp, lambda m: mask_layers(m, 1),
     ValueError, [r"sparsity must be in \[0, 1\)"]),
    ("mask_layers on a torch-pruned layer", _torch_pruned_second_layer,
     lambda m: mask_layers(m, 0.5),
     ValueError, [r"2\.weight is computed by torch\.nn\.utils\.prune", "weight_orig",
                  r"prune\.remove\(layer, 'weight'\)", r"exclude=\['2\.weight'\]",
                  "nothing masked"]),
    ("mask_layers on the old weight_norm", _old_weight_norm, lambda m: mask_layers(m, 0.5),
     ValueError, [r"2\.weight is computed by the old, hook-based torch\.nn\.utils\.weight_norm",
                  "weight_g and weight_v", r"parametrizations\.weight_norm",
                  "remove_weight_norm"]),
    ("mask_layers on the old spectral_norm", _old_spectral_norm, lambda m: mask_layers(m, 0.5),
     ValueError, [r"2\.weight is computed by the old, hook-based torch\.nn\.utils\.spectral_norm",
                  r"parametrizations\.spectral_norm"]),
    ("mask_layers random with generator=0", _mlp,
     lambda m: mask_layers(m, 0.5, how="random", generator=0),
     TypeError, [r"generator must be a torch\.Generator", r"manual_seed\(seed\)"]),
    ("apply_mask with a meta mask", _mlp,
     lambda m: apply_mask(m[0], torch.ones(8, 8, device="meta")),
     ValueError, ["mask is on the meta device", "real device"]),
    ("apply_mask on a torch-pruned layer", _torch_pruned_second_layer,
     lambda m: apply_mask(m[2], torch.ones(4, 8)),
     ValueError, [r"Linear\.weight is not a parameter", "torch.nn.utils.prune",
                  r"prune\.remove\(layer, 'weight'\)"]),
    ("masked_parameters on weight_norm", _weight_norm_then_masked,
     lambda m: masked_parameters(m),
     ValueError, [r"2\.weight is masked on top of a parametrization with several",
                  "weight_norm", "remove_parametrizations"]),
    ("learnable_mask_layers, a later layer torch-pruned", _torch_pruned_second_layer,
     lambda m: learnable_mask_layers(m),
     ValueError, ["nothing changed", "layer '2'", r"prune\.remove"]),
    ("fit with train_loader None", _mlp, lambda m: fit(m, None, epochs=1, progress=False),
     TypeError, ["train_loader must be an iterable of", "DataLoader", "got NoneType"]),
    ("fit with an empty loader", _mlp, lambda m: fit(m, [], epochs=1, progress=False),
     ValueError, ["train_loader is empty", "no batches", "batch size"]),
    ("fit with an optimizer name", _mlp,
     lambda m: fit(m, _digits_batches(8), optimizer="adam", progress=False),
     TypeError, [r"optimizer must be a torch\.optim\.Optimizer", "got str"]),
    ("fit with a val_loader that is a tensor", _mlp,
     lambda m: fit(m, _digits_batches(8), val_loader=torch.ones(3), progress=False),
     TypeError, ["val_loader must be an iterable"]),
]


@pytest.mark.parametrize("build, call, error, patterns",
                         [pytest.param(*case[1:], id=case[0]) for case in CASES])
def test_bad_input_gets_a_clear_error_and_changes_nothing(left_alone, build, call, error,
                                                          patterns):
    model = build()
    modes = [m.training for m in model.modules()]
    with left_alone(model), pytest.raises(error) as caught:
        call(model)
    for pattern in patterns:
        assert re.search(pattern, str(caught.value)), f"{pattern!r} not in: {caught.value}"
    assert [m.training for m in model.modules()] == modes


META_CASES = [
    ("mask_layers", lambda m: mask_layers(m, 0.5), ["0.weight", "meta device", "to_empty"]),
    ("apply_mask", lambda m: apply_mask(m[0], torch.ones(8, 8)),
     ["meta device", "to_empty", "then mask"]),
    ("apply_learnable_mask", lambda m: apply_learnable_mask(m[0]),
     ["meta device", "Load the weights"]),
    ("learnable_mask_layers", lambda m: learnable_mask_layers(m),
     ["nothing changed", "meta device"]),
    ("sparsity", lambda m: sparsity(m), ["meta device", "load its weights"]),
]


@pytest.mark.parametrize("call, patterns", [pytest.param(*c[1:], id=c[0]) for c in META_CASES])
def test_a_meta_model_gets_a_clear_error_and_stays_as_it_was(call, patterns):
    """A model built under torch.device("meta") has no values: masks would be lost (to_empty)."""
    model = _on_meta()
    params = dict(model.named_parameters())
    shapes = {k: (v.shape, v.device.type) for k, v in model.state_dict().items()}
    with pytest.raises(ValueError) as caught:
        call(model)
    for pattern in patterns:
        assert re.search(pattern, str(caught.value)), f"{pattern!r} not in: {caught.value}"
    assert dict(model.named_parameters()) == params
    assert {k: (v.shape, v.device.type) for k, v in model.state_dict().items()} == shapes
    assert not any(parametrize.is_parametrized(m) for m in model.modules())


def test_learnable_mask_layers_gates_no_layer_when_a_later_one_is_torch_pruned():
    model = _torch_pruned_second_layer()
    with pytest.raises(ValueError):
        learnable_mask_layers(model)
    assert not parametrize.is_parametrized(model[0]), "layer 0 was left gated"
    assert type(model[0]) is nn.Linear


# --- builders that refuse bad arguments before building anything ----------------------------

@pytest.mark.parametrize("call, error, pattern", [
    (lambda: random_mask(torch.empty(3, 3), 0.5, generator=0), TypeError,
     r"generator must be a torch\.Generator or None, got int 0; for a seed pass "
     r"torch\.Generator\(\)\.manual_seed\(seed\)"),
    (lambda: random_mask(torch.empty(3, 3), 0.5, generator="cpu"), TypeError,
     r"generator must be a torch\.Generator"),
    (lambda: random_mask(torch.empty(3, 3, device="meta"), 0.5), ValueError,
     "like is on the meta device"),
    (lambda: magnitude_mask(torch.empty(3, 3, device="meta"), 0.5), ValueError,
     "weight is on the meta device"),
    (lambda: sparsity(torch.empty(3, 3, device="meta")), ValueError,
     "x is on the meta device"),
], ids=["random_mask generator=0", "random_mask generator='cpu'", "random_mask meta",
        "magnitude_mask meta", "sparsity of a meta tensor"])
def test_mask_builders_refuse_bad_arguments(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


# --- gradual_magnitude_prune: nothing left behind when the loader fails ---------------------

@pytest.mark.parametrize("loader, error, pattern", [
    ([], ValueError, "train_loader is empty"),
    (None, TypeError, "train_loader must be an iterable"),
    (42, TypeError, "train_loader must be an iterable"),
    (_digits_batches(width=7), RuntimeError, "shapes cannot be multiplied"),
    ([(x, y + 90) for x, y in _digits_batches()], IndexError, "out of bounds"),
], ids=["empty", "None", "int", "wrong width", "labels out of range (after BatchNorm ran)"])
@pytest.mark.parametrize("already_masked", [False, True], ids=["dense", "masked"])
def test_gradual_magnitude_prune_leaves_the_model_as_it_was_when_the_loader_fails(
        left_alone, loader, error, pattern, already_masked):
    torch.manual_seed(0)
    model = digits_mlp(hidden=(16,), batchnorm=True).eval()
    if already_masked:
        mask_layers(model, 0.25)
    masks = [None if get_mask(l) is None else get_mask(l).clone() for l in model.linears()]
    modes = [m.training for m in model.modules()]
    with left_alone(model), pytest.raises(error, match=pattern):
        gradual_magnitude_prune(model, loader, 0.5, epochs=2, progress=False)
    for layer, before in zip(model.linears(), masks):
        after = get_mask(layer)
        assert (after is None) == (before is None), "a mask was added and left behind"
        assert after is None or torch.equal(after, before)
        assert type(layer) is nn.Linear or parametrize.is_parametrized(layer)
    assert [m.training for m in model.modules()] == modes, "eval mode was lost"


def test_gradual_magnitude_prune_still_prunes_after_the_validation():
    torch.manual_seed(0)
    model = digits_mlp(hidden=(16,))
    gradual_magnitude_prune(model, _digits_batches(), 0.5, epochs=2, progress=False)
    assert sparsity(model) == pytest.approx(0.5, abs=1e-3)


# --- ties: baking never writes one place's zeros into another place ------------------------

def _tied_llama(seed=0):
    pytest.importorskip("transformers")
    model = tiny_model("llama", seed, num_hidden_layers=1, tie_word_embeddings=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    return model


IDS = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))


def _logits(model):
    with torch.no_grad():
        return model(IDS).logits


def _head_masked_alone():
    model = _tied_llama()
    apply_mask(model.lm_head, magnitude_mask(model.lm_head.weight.detach(), 0.5))
    return model


def test_baking_a_head_masked_alone_is_refused_naming_both_places(left_alone):
    model = _head_masked_alone()
    embedding = model.model.embed_tokens.weight.detach().clone()
    with left_alone(model), pytest.raises(ValueError) as caught:
        remove_masks(model)
    message = str(caught.value)
    for words in ("model.embed_tokens.weight", "lm_head.weight", "one tied tensor",
                  "Nothing was removed", "bake=False", "untie"):
        assert words in message, (words, message)
    assert torch.equal(model.model.embed_tokens.weight, embedding)
    with left_alone(model), pytest.raises(ValueError, match=r"tied to \['model\.embed_tokens"):
        remove_mask(model.lm_head, model=model)


def test_a_head_masked_alone_can_be_removed_without_baking():
    model = _head_masked_alone()
    embedding = model.model.embed_tokens.weight.detach().clone()
    assert remove_masks(model, bake=False) == ["lm_head.weight"]
    assert torch.equal(model.model.embed_tokens.weight, embedding)
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_a_tie_masked_once_bakes_both_places_alike(tmp_path):
    model = _tied_llama()
    report = mask_layers(model, 0.5, embeddings=True)
    assert report.tied == {"model.embed_tokens.weight": ["lm_head.weight"]}
    masked = _logits(model)
    remove_masks(model)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert sparsity(model.lm_head.weight) == 0.5
    assert torch.equal(_logits(model), masked)


def test_a_tie_already_baked_in_one_place_removes_cleanly():
    """Baking one place of a tie masked once writes zeros the other place reads anyway."""
    model = _tied_llama()
    mask_layers(model, 0.5, embeddings=True, include="*embed_tokens*")
    remove_mask(model.lm_head)                    # bakes: the embedding reads the same values
    expected = model.model.embed_tokens.weight.detach().clone()
    assert remove_masks(model) == ["model.embed_tokens.weight"]
    assert torch.equal(model.lm_head.weight, expected)


def test_baking_refuses_a_head_whose_masked_entries_are_not_yet_zero_even_if_copied():
    """Copies (deepcopy keeps the tie) are checked the same way."""
    model = copy.deepcopy(_head_masked_alone())
    assert model.lm_head.parametrizations.weight.original is model.model.embed_tokens.weight
    with pytest.raises(ValueError, match="one tied tensor"):
        remove_masks(model)
