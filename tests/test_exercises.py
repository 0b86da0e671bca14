import copy
import json
import re
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from maskutils import apply_mask, digits_mlp, magnitude_mask, nm_mask, random_mask
from maskutils.exercises import check, exercises
from maskutils.learnable import binarize, learnable_mask_layers

BOOK = Path(__file__).resolve().parents[1] / "book"


@pytest.fixture
def weight():
    return torch.randn(8, 16, generator=torch.Generator().manual_seed(0))


def test_every_chapter_one_exercise_has_a_checker():
    assert {"1.1", "1.2", "1.3"} <= set(exercises())


def test_a_right_one_of_four_mask_passes(weight, capsys):
    assert check("1.1", nm_mask(weight, n=1, m=4), weight=weight)
    assert capsys.readouterr().out.startswith("✅ 1.1")


@pytest.mark.parametrize("answer, says", [
    (lambda w: nm_mask(w, n=2, m=4), "keeps 2 weights"),
    (lambda w: 1 - nm_mask(w, n=3, m=4), "not the largest"),
    (lambda w: nm_mask(w, n=1, m=4) * 0.5, "other than 0 and 1"),
    (lambda w: nm_mask(w, n=1, m=4)[:4], "has shape"),
    (lambda w: nm_mask(w, n=1, m=4).tolist(), "torch.Tensor"),
])
def test_a_wrong_one_of_four_mask_says_what_is_wrong(weight, capsys, answer, says):
    assert not check("1.1", answer(weight), weight=weight)
    out = capsys.readouterr().out
    assert out.startswith("❌ 1.1") and says in out


def test_global_masks_pass_and_layer_wise_masks_fail(capsys):
    model = digits_mlp()
    weights = [layer.weight.detach() for layer in model.linears()]
    threshold = torch.cat([w.abs().flatten() for w in weights]).quantile(0.8)
    assert check("1.2", [(w.abs() > threshold).float() for w in weights], model=model)
    layer_wise = [magnitude_mask(w, 0.8) for w in weights]
    assert not check("1.2", layer_wise, model=model)
    assert "one threshold for all layers" in capsys.readouterr().out


def test_the_expected_sparsity_of_two_masks(capsys):
    assert check("1.3", 0.75)
    assert not check("1.3", 0.25)
    assert "fraction kept" in capsys.readouterr().out


def test_an_unknown_exercise_is_a_value_error():
    with pytest.raises(ValueError, match="no checker for exercise '9.9'"):
        check("9.9", None)


def wrong(capsys, name, answer, says, **given):
    """The answer fails, with one line starting ❌ that contains ``says``."""
    assert not check(name, answer, **given)
    out = capsys.readouterr().out
    assert out.startswith(f"❌ {name}:") and says in out, out
    assert "Traceback" not in out
    return out


def right(capsys, name, answer, says="", **given):
    assert check(name, answer, **given)
    out = capsys.readouterr().out
    assert out.startswith(f"✅ {name}: right:") and says in out, out


@pytest.fixture
def masked_mlp():
    """An untrained MLP whose weights are zero wherever its 80 % magnitude masks are."""
    model = digits_mlp()
    masks = [magnitude_mask(layer.weight.detach(), 0.8) for layer in model.linears()]
    with torch.no_grad():
        for layer, mask in zip(model.linears(), masks):
            layer.weight.mul_(mask)
    return model, masks


def test_2_1_masked_weights_at_zero_pass(masked_mlp, capsys):
    model, masks = masked_mlp
    right(capsys, "2.1", model, "0 / (0 + eps)", masks=masks)


def test_2_1_a_few_moved_weights_get_the_moments_hint(masked_mlp, capsys):
    model, masks = masked_mlp
    hidden = (masks[0] == 0).nonzero()[:3]
    with torch.no_grad():
        model.layers[0].weight[hidden[:, 0], hidden[:, 1]] = 0.01
    n_masked = sum(int((mask == 0).sum()) for mask in masks)
    out = wrong(capsys, "2.1", model, f"3 of {n_masked:,} masked weights moved", masks=masks)
    assert "zero both exp_avg and exp_avg_sq" in out and "after mask_gradients" in out


def test_2_1_an_unmasked_model_is_told_to_mask_first(capsys):
    model = digits_mlp()
    masks = [magnitude_mask(layer.weight.detach(), 0.8) for layer in model.linears()]
    wrong(capsys, "2.1", model, "call mask_gradients", masks=masks)


@pytest.mark.parametrize("answer, masks, says", [
    ("a model", None, "torch.nn.Module"),
    (nn.ReLU(), None, "no nn.Linear"),
    (digits_mlp(), "one mask", "one 0/1 mask per Linear layer"),
    (digits_mlp(), [torch.ones(3, 3)] * 3, "has shape"),
])
def test_2_1_bad_input_says_what_to_pass(capsys, answer, masks, says):
    if masks is None:
        masks = [torch.ones(1)]
    wrong(capsys, "2.1", answer, says, masks=masks)


ADAMW = dict(lr=1e-3, weight_decay=0.1, steps=230)


def test_2_2_the_compounded_decay_passes(capsys):
    right(capsys, "2.2", (1 - 1e-4) ** 230 * 1.005, "0.97", **ADAMW)
    right(capsys, "2.2", torch.tensor((1 - 1e-4) ** 230), **ADAMW)


@pytest.mark.parametrize("answer, says", [
    (1 - 1e-4, "raise it to the power k"),
    (0.9 ** 230, "multiplies the decay by the learning rate"),
    (1 - (1 - 1e-4) ** 230, "fraction lost"),
    (0.5, "What does one step multiply it by?"),
    ("0.97", "answer with a number"),
    (None, "answer with a number"),
])
def test_2_2_common_mistakes_get_their_hint(capsys, answer, says):
    wrong(capsys, "2.2", answer, says, **ADAMW)


def test_2_2_a_forgotten_power_is_caught_even_within_one_percent(capsys):
    wrong(capsys, "2.2", 1 - 1e-5, "power k", lr=1e-3, weight_decay=1e-2, steps=92)
    right(capsys, "2.2", (1 - 1e-5) ** 92, lr=1e-3, weight_decay=1e-2, steps=92)


def test_2_2_bad_steps_are_a_message(capsys):
    wrong(capsys, "2.2", 0.9, "whole number", lr=1e-3, weight_decay=0.1, steps=2.5)


def test_3_1_one_half_passes(capsys):
    right(capsys, "3.1", 0.5, "sigmoid(0) = 0.5")
    right(capsys, "3.1", torch.tensor(0.49))


@pytest.mark.parametrize("answer, says", [
    (0.0, "L1 pulls the *logit* to 0"),
    (0.05, "L1 pulls the *logit* to 0"),
    (0.69, "on their way"),
    (1.5, "not a gate value"),
    (0.3, "is off"),
    ("half", "answer with a number"),
    (True, "answer with a number"),
])
def test_3_1_wrong_values_get_their_hint(capsys, answer, says):
    wrong(capsys, "3.1", answer, says)


def gated(seed=0):
    """An untrained MLP with sigmoid gates whose logits are standard normal."""
    torch.manual_seed(seed)
    model = digits_mlp()
    learnable_mask_layers(model)
    with torch.no_grad():
        for layer in model.linears():
            layer.parametrizations.weight[0].logits.normal_()
    return model


def test_4_2_the_same_budget_passes_and_other_budgets_say_which_way(capsys):
    last = gated(0)
    shuffled = copy.deepcopy(last)                  # same gate values, other places
    with torch.no_grad():
        for layer in shuffled.linears():
            logits = layer.parametrizations.weight[0].logits
            logits.copy_(logits.flatten()[torch.randperm(logits.numel())].view_as(logits))
    binarize(last)
    binarize(shuffled)
    right(capsys, "4.2", shuffled, "same budget", last=last)
    denser, sparser = gated(1), gated(1)
    binarize(denser, threshold=0.3)
    binarize(sparser, threshold=0.7)
    wrong(capsys, "4.2", denser, "raise the threshold", last=last)
    wrong(capsys, "4.2", sparser, "lower the threshold", last=last)


def test_4_2_learnable_gates_are_refused(capsys):
    last = gated(0)
    binarize(last)
    wrong(capsys, "4.2", gated(1), "binarize it first at your threshold", last=last)
    wrong(capsys, "4.2", last, "pass the binarized last iterate", last=gated(1))


@pytest.mark.parametrize("answer, says", [
    ({"layers.0.weight": torch.ones(2)}, "torch.nn.Module"),
    (nn.Sequential(nn.Linear(3, 2)), "compare the averaged network"),
])
def test_4_2_bad_input_says_what_to_pass(capsys, answer, says):
    last = gated(0)
    binarize(last)
    wrong(capsys, "4.2", answer, says, last=last)


@pytest.fixture
def pruned_setup():
    torch.manual_seed(0)
    base = digits_mlp()
    pruned = copy.deepcopy(base)
    for layer in pruned.linears():
        prune.l1_unstructured(layer, "weight", amount=0.9)
    return base, pruned, torch.randn(8, 64)


def convert(base, pruned, masks=None):
    converted = copy.deepcopy(base)
    for i, (old, new) in enumerate(zip(pruned.linears(), converted.linears())):
        apply_mask(new, old.weight_mask if masks is None else masks[i])
    return converted


def test_5_1_a_converted_model_passes(pruned_setup, capsys):
    base, pruned, x = pruned_setup
    right(capsys, "5.1", convert(base, pruned), "copy.deepcopy", pruned=pruned, x=x)


def test_5_1_each_mistake_gets_its_hint(pruned_setup, capsys):
    base, pruned, x = pruned_setup
    wrong(capsys, "5.1", pruned, "start from a fresh copy of the unpruned model",
          pruned=pruned, x=x)
    wrong(capsys, "5.1", copy.deepcopy(base), "use maskutils.apply_mask", pruned=pruned, x=x)
    random = [random_mask(layer.weight, 0.9) for layer in base.linears()]
    wrong(capsys, "5.1", convert(base, pruned, random), "use each layer's weight_mask",
          pruned=pruned, x=x)
    stuck = convert(base, pruned)
    stuck.layers[0].cache = torch.ones(2, requires_grad=True) * 2  # not a leaf
    wrong(capsys, "5.1", stuck, "copy.deepcopy(converted) fails", pruned=pruned, x=x)


@pytest.mark.parametrize("answer, x, says", [
    ("converted", torch.zeros(2, 64), "torch.nn.Module"),
    (None, [[0.0] * 64], "a torch.Tensor"),
    (None, torch.zeros(2, 5), "running the models on x fails"),
])
def test_5_1_bad_input_says_what_to_pass(pruned_setup, capsys, answer, x, says):
    base, pruned, _ = pruned_setup
    answer = convert(base, pruned) if answer is None else answer
    wrong(capsys, "5.1", answer, says, pruned=pruned, x=x)


def test_check_turns_an_unexpected_error_into_a_message(capsys):
    # given arguments of the wrong kind reach the checker; it answers, it does not crash
    wrong(capsys, "1.2", [torch.ones(2)], "one mask per Linear layer", model=digits_mlp())
    wrong(capsys, "2.2", 0.9, "could not check this answer", lr=1e-3, weight_decay=0.1)


NOTEBOOKS = sorted(p for p in BOOK.glob("[0-9][0-9]_*.ipynb")
                   if p.name != "00_short_answer.ipynb")  # a page of recipes, no exercises


def check_calls(path: Path) -> list[str]:
    cells = json.loads(path.read_text())["cells"]
    text = "\n".join("".join(cell["source"]) for cell in cells)
    return re.findall(r'check\("(\d+\.\d+)"', text)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_check_call_in_the_book_names_a_checker(path):
    names = check_calls(path)
    assert names, f"{path.name} names no check(...) call"
    unknown = sorted(set(names) - set(exercises()))
    assert not unknown, f"{path.name} calls check with unknown exercises {unknown}"
    chapter = str(int(path.name[:2]))
    assert all(name.split(".")[0] == chapter for name in names), names


def test_every_chapter_has_a_checker():
    assert len(NOTEBOOKS) >= 5
    chapters = {name.split(".")[0] for name in exercises()}
    assert {"1", "2", "3", "4", "5"} <= chapters


@pytest.mark.parametrize("answer, says", [
    ([0.0, 0.0, 0.0], "never differ"),
    ([3e-3, 1e-3], "do not grow"),
    ([1e-3], "at least two"),
    ([1e-3, float("nan")], "non-negative"),
    ("apart", "list"),
])
def test_drifting_ranks_checker_says_what_is_wrong(answer, says, capsys):
    assert not check("9.1", answer)
    assert says in capsys.readouterr().out


def test_drifting_ranks_checker_accepts_a_growing_spread(capsys):
    assert check("9.1", [2.0e-3, 4.0e-3, 5.9e-3, 7.6e-3])
    assert capsys.readouterr().out.startswith("✅ 9.1")


@pytest.mark.parametrize("answer, two, says", [
    (3.6e-3, "2e-8", "two_processes"),
    (-1.0, 2.2e-8, "never negative"),
    (2.2e-8, 2.2e-8, "no clear gap"),
    (float("nan"), 2.2e-8, "answer with a number"),
])
def test_uneven_shares_checker_says_what_is_wrong(answer, two, says, capsys):
    assert not check("9.2", answer, two_processes=two)
    assert says in capsys.readouterr().out


def test_uneven_shares_checker_accepts_a_gap_of_orders_of_magnitude(capsys):
    assert check("9.2", torch.tensor(3.6e-3), two_processes=2.2e-8)
    assert capsys.readouterr().out.startswith("✅ 9.2: right: 3.6e-03 against 2.2e-08")
