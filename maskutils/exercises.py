"""Checkers for the book's exercises: they say what is wrong, not only that something is.

``check(exercise, answer, **given)`` prints one line of feedback and returns ``True`` when the
answer is right. Exercises are named ``"chapter.number"``; ``exercises()`` lists them.

>>> import torch
>>> w = torch.tensor([[4.0, -1.0, 0.5, 3.0]])
>>> check("1.1", torch.tensor([[1.0, 0.0, 0.0, 0.0]]), weight=w)
✅ 1.1: right: a 1:4 mask keeping the largest weight of each group (sparsity 75 %).
True
>>> check("1.1", torch.tensor([[1.0, 0.0, 0.0, 1.0]]), weight=w)
❌ 1.1: row 0, group 0 keeps 2 weights; a 1:4 mask keeps exactly 1 of every 4.
False
"""
from __future__ import annotations

import copy
import math
import numbers
from typing import Callable

import torch
from torch import nn
from torch.nn.utils import parametrize, prune

from .apply import get_mask
from .swa import learnable_parametrizations

_CHECKS: dict[str, tuple[str, Callable]] = {}


class Wrong(Exception):
    """Raised inside a checker with the message the learner sees."""


def exercise(name: str, title: str):
    """Register a checker ``fn(answer, **given) -> str`` (the success message) under ``name``.

    >>> @exercise("0.1", "say hello")
    ... def _(answer):
    ...     if answer != "hello":
    ...         raise Wrong(f"you said {answer!r}")
    ...     return "hello to you too"
    >>> check("0.1", "hello")
    ✅ 0.1: right: hello to you too
    True
    >>> _ = _CHECKS.pop("0.1")  # (only an example)
    """
    def register(fn: Callable) -> Callable:
        _CHECKS[name] = (title, fn)
        return fn
    return register


def exercises() -> dict[str, str]:
    """``{exercise: title}`` of every exercise that has a checker.

    >>> "1.1" in exercises()
    True
    """
    return {name: title for name, (title, _) in sorted(_CHECKS.items())}


def check(name: str, answer, **given) -> bool:
    """Check ``answer`` to exercise ``name``; print what is right or wrong; return whether right."""
    if name not in _CHECKS:
        raise ValueError(f"no checker for exercise {name!r}; known: {sorted(_CHECKS)}")
    _, fn = _CHECKS[name]
    try:
        message = fn(answer, **given)
    except Wrong as wrong:
        print(f"❌ {name}: {wrong}")
        return False
    except Exception as error:  # a checker must not end in a traceback
        print(f"❌ {name}: could not check this answer ({type(error).__name__}: {error}); "
              "compare its type and shape with what the exercise asks for.")
        return False
    print(f"✅ {name}: right: {message}")
    return True


def _binary_tensor(answer, like: torch.Tensor, what: str = "the mask") -> torch.Tensor:
    if not isinstance(answer, torch.Tensor):
        raise Wrong(f"{what} should be a torch.Tensor, got {type(answer).__name__}")
    if answer.shape != like.shape:
        raise Wrong(f"{what} has shape {tuple(answer.shape)}; the weight has {tuple(like.shape)}")
    if not ((answer == 0) | (answer == 1)).all():
        raise Wrong(f"{what} holds values other than 0 and 1; threshold it, e.g. (x > t).float()")
    return answer.detach().to(like.device, like.dtype)


def _number(answer, what: str) -> float:
    if isinstance(answer, torch.Tensor) and answer.numel() == 1:
        answer = answer.item()
    if isinstance(answer, bool) or not isinstance(answer, numbers.Real) or math.isnan(answer):
        raise Wrong(f"answer with a number: {what}; got {type(answer).__name__} {answer!r}")
    return float(answer)


def _module(model, what: str) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise Wrong(f"{what} should be a torch.nn.Module (the model itself), "
                    f"got {type(model).__name__}")
    return model


def _linears(model, what: str = "the model") -> list[tuple[str, nn.Linear]]:
    found = [(n, m) for n, m in _module(model, what).named_modules() if isinstance(m, nn.Linear)]
    if not found:
        raise Wrong(f"{what} has no nn.Linear layer; pass the whole network")
    return found


def _kept(model, what: str) -> tuple[int, int]:
    """(weights its masks keep, all weights) over the Linear layers of ``model``."""
    kept = total = 0
    for _, layer in _linears(model, what):
        mask = get_mask(layer)
        kept += layer.weight.numel() if mask is None else int((mask != 0).sum())
        total += layer.weight.numel()
    return kept, total


@exercise("1.1", "a 1:4 mask of the first layer")
def _one_of_four(answer, weight: torch.Tensor) -> str:
    weight = weight.detach()
    mask = _binary_tensor(answer, weight)
    groups, kept = weight.abs().reshape(weight.shape[0], -1, 4), mask.reshape(weight.shape[0], -1, 4)
    counts = kept.sum(dim=2)
    bad = (counts != 1).nonzero()
    if len(bad):
        row, group = bad[0].tolist()
        raise Wrong(f"row {row}, group {group} keeps {int(counts[row, group])} weights; "
                    "a 1:4 mask keeps exactly 1 of every 4.")
    chosen = (groups * kept).amax(dim=2)
    if (chosen < groups.amax(dim=2)).any():
        row, group = (chosen < groups.amax(dim=2)).nonzero()[0].tolist()
        raise Wrong(f"row {row}, group {group} keeps a weight that is not the largest "
                    "in magnitude; rank by weight.abs().")
    return "a 1:4 mask keeping the largest weight of each group (sparsity 75 %)."


@exercise("1.2", "global magnitude masks at 80 % sparsity")
def _global_magnitude(answer, model: nn.Module, sparsity: float = 0.8) -> str:
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not isinstance(answer, (list, tuple)) or len(answer) != len(layers):
        raise Wrong(f"give one mask per Linear layer, in order: {len(layers)} masks")
    weights = [layer.weight.detach() for layer in layers]
    masks = [_binary_tensor(a, w, f"mask {i}") for i, (a, w) in enumerate(zip(answer, weights))]
    total = sum(w.numel() for w in weights)
    removed = sum(int((m == 0).sum()) for m in masks)
    if abs(removed - sparsity * total) > 0.005 * total:
        raise Wrong(f"the masks remove {removed / total:.1%} of all weights, not {sparsity:.0%}.")
    kept_min = min(float(w[m == 1].abs().min()) for w, m in zip(weights, masks) if m.any())
    removed_max = max(float(w[m == 0].abs().max()) for w, m in zip(weights, masks) if (m == 0).any())
    if removed_max > kept_min:
        raise Wrong("a removed weight is larger than a kept one in another layer: use one "
                    "threshold for all layers (global), not one per layer.")
    per_layer = ", ".join(f"{float((m == 0).float().mean()):.0%}" for m in masks)
    return f"one threshold for all layers; per-layer sparsity {per_layer}."


@exercise("1.3", "sparsity of two random 50 % masks applied together")
def _two_random_masks(answer) -> str:
    if not isinstance(answer, (int, float)):
        raise Wrong("answer with a number: the expected fraction of weights removed")
    if abs(answer - 0.75) > 0.02:
        hint = " (that is the fraction kept)" if abs(answer - 0.25) <= 0.02 else ""
        raise Wrong(f"{answer:.2f} is off{hint}: a weight survives only if both masks keep it.")
    return "an entry survives with probability 0.5 × 0.5, so about 75 % is removed."


@exercise("2.1", "zero Adam's moments at the masked entries")
def _moments_zeroed(answer, masks) -> str:
    layers = _linears(answer)
    if not isinstance(masks, (list, tuple)) or len(masks) != len(layers):
        raise Wrong(f"masks: give one 0/1 mask per Linear layer, in order ({len(layers)}), "
                    "e.g. masks=layer_masks")
    moved = total = 0
    for i, ((_, layer), mask) in enumerate(zip(layers, masks)):
        weight = layer.weight.detach()
        hidden = _binary_tensor(mask, weight, f"mask {i}") == 0
        moved += int((weight[hidden] != 0).sum())
        total += int(hidden.sum())
    if moved and moved == total:
        raise Wrong(f"none of the {total:,} masked weights is 0: call mask_gradients on this "
                    "model's weights (it zeroes them) before you train on.")
    if moved:
        raise Wrong(f"{moved:,} of {total:,} masked weights moved away from 0: Adam's moments "
                    "still move them. Right after mask_gradients, before training on, zero "
                    "both exp_avg and exp_avg_sq at the masked entries (multiply by the mask).")
    return (f"all {total:,} masked weights are still exactly 0: with zero moments Adam's "
            "update there is 0 / (0 + eps) = 0.")


@exercise("2.2", "how much of its size a hidden entry keeps under AdamW")
def _adamw_decay(answer, lr, weight_decay, steps) -> str:
    value = _number(answer, "the fraction of its size a hidden entry keeps")
    lr, wd = _number(lr, "lr"), _number(weight_decay, "weight_decay")
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 0:
        raise Wrong(f"steps should be the number of optimizer steps, a whole number, got {steps!r}")
    right = (1 - lr * wd) ** steps
    common = [(1 - lr * wd, "that is one step's factor: the decay compounds, so raise it to "
                            "the power k (the number of steps)."),
              ((1 - wd) ** steps, "AdamW multiplies the decay by the learning rate: each step "
                                  "keeps 1 - lr * weight_decay, not 1 - weight_decay."),
              (1 - right, "that is the fraction lost; the question asks for the fraction kept.")]
    for wrong, hint in common:  # a wrong formula within 1 % of the right one: exact match only
        tight = math.isclose(wrong, right, rel_tol=0.01)
        if not math.isclose(wrong, right, rel_tol=1e-9) and math.isclose(
                value, wrong, rel_tol=1e-6 if tight else 0.01, abs_tol=1e-12):
            raise Wrong(f"{value:.4g}: {hint}")
    if not math.isclose(value, right, rel_tol=0.01):
        raise Wrong(f"{value:.4g} is off: a hidden entry has zero gradient and, with a fresh "
                    "optimizer, zero moments, so only the decoupled decay moves it, once per "
                    "step. What does one step multiply it by?")
    return f"(1 - lr * weight_decay) ** k = {right:.4f}; only the decay moves a hidden entry."


@exercise("3.1", "where L1 on raw logits sends the gates")
def _gates_go_to_half(answer) -> str:
    value = _number(answer, "the gate value the penalty pulls the gates towards")
    if abs(value - 0.5) <= 0.02:
        return ("L1 pulls every logit to 0, and sigmoid(0) = 0.5: the gates stop half open "
                "and nothing is removed.")
    if not 0 <= value <= 1:
        raise Wrong(f"{value:.3g} is not a gate value: a gate is sigmoid(logit), in [0, 1].")
    if value < 0.1:
        raise Wrong(f"{value:.3g}: the penalty is on the logit, not the gate. L1 pulls the "
                    "*logit* to 0, and sigmoid(0) = 0.5.")
    if value > 0.5:
        raise Wrong(f"{value:.3g} is where the gates are on their way; the question is where "
                    "they head: where λ·|logit| is smallest, passed through the sigmoid.")
    raise Wrong(f"{value:.3g} is off: find the logit where λ·|logit| is smallest and apply "
                "the sigmoid to it.")


@exercise("4.2", "binarize the average to keep as many weights as the last iterate")
def _same_budget(answer, last) -> str:
    for model, what, fix in ((answer, "your model", "binarize it first at your threshold"),
                             (last, "last", "pass the binarized last iterate")):
        gates = learnable_parametrizations(_module(model, what))
        if gates:
            raise Wrong(f"{what} still has learnable gates ({', '.join(gates)}): {fix}, "
                        "e.g. binarize(model, threshold=t).")
    (kept, total), (target, other) = _kept(answer, "your model"), _kept(last, "last")
    if total != other:
        raise Wrong(f"your model has {total:,} weights and last has {other:,}: compare the "
                    "averaged network with the last iterate of the same network.")
    if abs(kept - target) > 0.005 * total:
        way = "raise" if kept > target else "lower"
        raise Wrong(f"yours keeps {kept:,} weights, the last iterate {target:,} (of {total:,}): "
                    f"{way} the threshold.")
    return (f"{kept:,} weights kept against the last iterate's {target:,}: the same budget; "
            "now compare which weights each keeps.")


@exercise("5.1", "convert a pruned model to apply_mask")
def _pruned_to_apply_mask(answer, pruned, x) -> str:
    layers = _linears(answer, "the converted model")
    _module(pruned, "pruned")
    if not isinstance(x, torch.Tensor):
        raise Wrong(f"x should be a batch of inputs (a torch.Tensor), got {type(x).__name__}")
    left = [n or "the model" for n, m in answer.named_modules()
            if hasattr(m, "weight_orig") or hasattr(m, "weight_mask")]
    if left or prune.is_pruned(answer):
        raise Wrong(f"{', '.join(left) or 'the model'} still has prune's weight_orig/weight_mask: "
                    "start from a fresh copy of the unpruned model (copy.deepcopy(base)).")
    plain = [n for n, layer in layers if not parametrize.is_parametrized(layer, "weight")]
    if plain:
        raise Wrong(f"the weight of {', '.join(plain)} is not masked through parametrize: use "
                    "maskutils.apply_mask(layer, mask) on every Linear layer.")
    try:
        copy.deepcopy(answer)
    except Exception as error:
        raise Wrong(f"copy.deepcopy(converted) fails ({type(error).__name__}): remove the "
                    "tensor attribute that is not a leaf, or rebuild from copy.deepcopy(base).")
    try:
        with torch.no_grad():
            got, want = answer(x), pruned(x)
    except Exception as error:
        raise Wrong(f"running the models on x fails ({type(error).__name__}: {error}); pass the "
                    "inputs the pruned model takes, on the models' device.")
    if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-4, atol=1e-5):
        raise Wrong("its outputs differ from pruned(x): use each layer's weight_mask as the mask "
                    "and the dense weights from weight_orig (those of the unpruned model).")
    return "it survives copy.deepcopy now, and computes what the pruned model computes."


def _mlp_parameters(sizes) -> int:
    return sum(a * b + b for a, b in zip(sizes, sizes[1:]))


@exercise("6.1", "the parameters shrink removes from an MLP")
def _units_removed(answer, hidden=(128, 128), removed=(32, 64), n_in=64, n_out=10) -> str:
    value = _number(answer, "the number of parameters removed")
    hidden, removed = tuple(hidden), tuple(removed)
    if len(hidden) != len(removed) or any(not 0 <= r < h for h, r in zip(hidden, removed)):
        raise Wrong(f"removed={removed} must give, for each hidden layer of {hidden}, a number "
                    "of units from 0 to one less than its width.")
    before = _mlp_parameters([n_in, *hidden, n_out])
    after = _mlp_parameters([n_in, *(h - r for h, r in zip(hidden, removed)), n_out])
    right = before - after
    sizes = [n_in, *hidden, n_out]
    naive = sum(r * (sizes[i] + 1 + sizes[i + 2]) for i, r in enumerate(removed))
    if value == right:
        return (f"{right:,} of {before:,} parameters: the shrunk model has {after:,}.")
    if value == naive:
        raise Wrong(f"{value:,.0f} counts the weights that join two removed units twice, once "
                    "as a column and once as a row: count what is left instead.")
    if value == after:
        raise Wrong(f"{value:,.0f} is what is left; the question asks for what is removed.")
    no_bias = right - sum(removed)
    if value == no_bias:
        raise Wrong(f"{value:,.0f} forgets the bias entry each removed unit takes with it.")
    raise Wrong(f"{value:,.0f} is off: a removed unit takes its row and bias in its own layer "
                "and its column in the next; the next layer may have lost rows too.")


@exercise("6.3", "the density below which CSR is smaller than dense")
def _csr_break_even(answer, n: int = 1024) -> str:
    value = _number(answer, "the fraction of entries kept")
    right = (4 * n * n - 4 * (n + 1)) / (8 * n * n)
    if not 0 <= value <= 1:
        raise Wrong(f"{value:.3g} is not a fraction of entries kept: give a number in [0, 1].")
    if abs(value - right) <= 0.005:
        return (f"below {right:.2%} of entries kept: 8 bytes per kept entry (value and int32 "
                "column index) against 4 per entry for dense, plus the row pointers.")
    if abs(value - 1 / 3) <= 0.005:
        raise Wrong(f"{value:.3g} holds for int64 indices (12 bytes per kept entry); the "
                    "question stores the indices as int32.")
    if abs(value - (1 - right)) <= 0.005:
        raise Wrong(f"{value:.3g} is the sparsity (the fraction removed); the question asks "
                    "for the fraction kept.")
    if abs(value - 31 / 32) <= 0.005:
        raise Wrong(f"{value:.3g} is the break-even of a bitmask with values, not of CSR.")
    raise Wrong(f"{value:.3g} is off: write the bytes of both formats for a kept fraction d "
                "and solve for where they are equal.")


@exercise("8.1", "Wanda's scores compared across the whole layer instead of per row")
def _wanda_per_layer(answer, weight, input_norm, sparsity: float = 0.5) -> str:
    for label, value in (("weight", weight), ("input_norm", input_norm)):
        if not isinstance(value, torch.Tensor):
            raise Wrong(f"{label} should be a torch.Tensor, got {type(value).__name__}")
    mask = _binary_tensor(answer, weight)
    weight = weight.detach()
    removed, want = int((mask == 0).sum()), round(sparsity * weight.numel())
    if removed != want:
        raise Wrong(f"your mask removes {removed:,} weights; {sparsity:.0%} of the layer's "
                    f"{weight.numel():,} is {want:,}.")
    if removed in (0, weight.numel()):
        return "nothing to rank at this sparsity."

    def ranked(score):  # every removed score <= every kept score
        return float(score[mask == 0].max()) <= float(score[mask == 1].min())

    score = weight.abs() * input_norm.detach().to(weight)
    per_row = (mask == 0).sum(dim=1)
    if ranked(score):
        return (f"one threshold for the layer: rows lose between {int(per_row.min())} and "
                f"{int(per_row.max())} of their {weight.shape[1]} weights, where Wanda's "
                "per-row rule takes the same number from each.")
    if ranked(weight.abs()):
        raise Wrong("your mask ranks |W_ij| alone (magnitude pruning); multiply by the "
                    "input norms ||X_j|| first.")
    if bool((per_row == per_row[0]).all()):
        raise Wrong("every row loses the same number of weights: that is Wanda's per-row "
                    "comparison. Rank |W| * ||X|| over the whole layer at once.")
    raise Wrong("some removed weights score higher than kept ones: remove the lowest "
                "scores |W_ij| * ||X_j|| of the whole layer.")


@exercise("7.1", "the transformer LM masked with its tied embedding")
def _tied_embedding_masked(answer) -> str:
    model = _module(answer, "the model")
    embed, head = getattr(model, "embed", None), getattr(model, "head", None)
    if not isinstance(embed, nn.Embedding) or not isinstance(head, nn.Module):
        raise Wrong("pass the CharTransformerLM itself (it has .embed and .head)")
    mask = get_mask(embed)
    if mask is None and get_mask(head) is None:
        raise Wrong("the token embedding is not masked: mask_layers leaves embeddings out "
                    "unless you pass embeddings=True")
    if mask is None or get_mask(head) is not mask:
        raise Wrong("the head and the embedding do not read one mask: the tie is broken; "
                    "mask with mask_layers(..., embeddings=True) or apply_mask(..., model=)")
    if not torch.equal(head.weight, embed.weight):
        raise Wrong("the head and the embedding read different weights")
    removed = float((mask == 0).float().mean())
    return f"the tied embedding and head read one mask, {removed:.0%} removed."


@exercise("7.2", "2:4 masks on every Conv1D weight of a GPT-2")
def _conv1d_two_four(answer) -> str:
    model = _module(answer, "the model")
    layers = [(n, m) for n, m in model.named_modules()
              if any(c.__name__ == "Conv1D" for c in type(m).__mro__)]
    if not layers:
        raise Wrong("the model has no Conv1D layer; pass the GPT-2 itself")
    for name, layer in layers:
        mask = get_mask(layer)
        if mask is None:
            raise Wrong(f"{name} has no mask; give every Conv1D weight one")
        rows, cols = mask.shape
        if rows % 4 == 0 and bool((mask.reshape(rows // 4, 4, cols).sum(dim=1) == 2).all()):
            continue
        if cols % 4 == 0 and bool((mask.reshape(rows, cols // 4, 4).sum(dim=2) == 2).all()):
            raise Wrong(f"{name}: your groups of four run along dim=1, the outputs; Conv1D "
                        "stores its weight as (in, out), so the inputs are dim=0")
        raise Wrong(f"{name}: some group of four inputs does not keep exactly two weights")
    return (f"all {len(layers)} Conv1D weights keep 2 of every 4 inputs, the pattern "
            "sparse tensor cores need.")


@exercise("9.1", "find_unused_parameters=True hides the error of masking after wrapping")
def _ranks_drift_apart(answer) -> str:
    """``answer``: the largest difference between the ranks' weights after each step."""
    if isinstance(answer, torch.Tensor):
        answer = answer.tolist()
    if not isinstance(answer, (list, tuple)) or not all(
            isinstance(s, numbers.Real) and not isinstance(s, bool) for s in answer):
        raise Wrong("pass the list of the ranks' largest weight difference after each step, "
                    f"e.g. quiet['spread']; got {type(answer).__name__}")
    if len(answer) < 2:
        raise Wrong("pass the difference after every step (at least two steps) to see a trend")
    if any(math.isnan(s) or s < 0 for s in answer):
        raise Wrong("a difference between weights is a non-negative number; check how you "
                    "measured it (the largest absolute difference)")
    if max(answer) == 0:
        raise Wrong("the ranks never differ in this run: was the mask applied after wrapping, "
                    "with find_unused_parameters=True?")
    if not all(b >= a for a, b in zip(answer, answer[1:])):
        raise Wrong("the differences you passed do not grow step by step; pass them in step "
                    "order")
    return (f"no error, and the ranks drift apart at every step ({answer[0]:.1e} to "
            f"{answer[-1]:.1e}): DDP never averages the gradients of the re-masked weights.")



@exercise("9.2", "3 processes against 1: shares of 43, 43 and 42 images")
def _uneven_shares(answer, two_processes) -> str:
    """``answer``: the largest weight difference, 3 processes against 1; ``two_processes``:
    the same for 2 processes (equal shares of 64 images)."""
    three = _number(answer, "the largest weight difference, 3 processes against 1")
    two = _number(two_processes, "two_processes, the same difference for 2 processes")
    if three < 0 or two < 0:
        raise Wrong("a largest absolute difference is never negative; check how you measured it")
    if three <= 100 * max(two, 1e-12):
        raise Wrong(f"3 processes are {three:.1e} from 1 and 2 processes {two:.1e}: no clear "
                    "gap. Did the run use world_size=3 and the same batches of 128?")
    return (f"{three:.1e} against {two:.1e}, {three / max(two, 1e-12):.0e} times larger: each "
            "rank's mean loss counts one third, but 42 images are not a third of 128, so "
            "every step differs from the full-batch step.")

# --- chapter 10 -------------------------------------------------------------------------------

def _resnet_parameters(residual: int, inner: int, blocks: int = 2, n_out: int = 10) -> int:
    """Parameters of a DigitsResNet with ``residual`` stream channels and ``inner`` channels
    inside each block (3x3 convolutions without bias, two BatchNorm parameters a channel)."""
    stem = 9 * residual + 2 * residual
    block = 9 * residual * inner + 2 * inner + 9 * inner * residual + 2 * residual
    return stem + blocks * block + residual * n_out + n_out


@exercise("10.1", "the parameters of a residual CNN after shrink")
def _resnet_shrunk(answer, channels: int = 32, residual: int = 16, inner: int = 8) -> str:
    """``residual`` and ``inner``: the channels kept in the stream and inside each block."""
    value = _number(answer, "the number of parameters of the shrunk model")
    if not (0 < residual <= channels and 0 < inner <= channels):
        raise Wrong(f"residual={residual} and inner={inner} must be channels kept, from 1 to "
                    f"channels={channels}")
    right = _resnet_parameters(residual, inner)
    dense = _resnet_parameters(channels, channels)
    if value == right:
        return (f"{right:,} parameters, {right / dense:.0%} of the dense model's {dense:,}: "
                "the residual channels count in the stem, both sides of every block and the "
                "classifier, the inner ones only inside their block.")
    if value == dense - right:
        raise Wrong(f"{value:,.0f} is what shrink removes; the question asks for what is left.")
    if value == right - 2 * residual * 3 - 2 * inner * 2:
        raise Wrong(f"{value:,.0f} leaves out the BatchNorm weight and bias of every kept "
                    "channel (three BatchNorms on the stream, one inside each block).")
    if value == _resnet_parameters(residual, residual):
        raise Wrong(f"{value:,.0f} keeps {residual} inner channels; each block keeps {inner}.")
    if value == _resnet_parameters(inner, inner) or value == _resnet_parameters(inner, residual):
        raise Wrong(f"{value:,.0f} swaps the two: the stream keeps {residual} channels, each "
                    f"block's inside {inner}.")
    raise Wrong(f"{value:,.0f} is off: list the tensors one channel of the stream lives in "
                "(stem kernel and BatchNorm, each block's conv1 input and conv2 output, its "
                "second BatchNorm, the classifier's column), then those of an inner channel.")


@exercise("10.2", "the groups of units of a GPT-2")
def _gpt2_units(answer, model, example_inputs) -> str:
    from .structured import unit_groups

    if isinstance(answer, str) or not isinstance(answer, (list, tuple, set)) or not all(
            isinstance(name, str) for name in answer):
        raise Wrong("give the names of the groups as a list of str, e.g. "
                    "[name for name, g in groups.items() if g.reason is None]")
    groups = unit_groups(_module(model, "model"), example_inputs)
    right = {name for name, group in groups.items() if group.reason is None}
    given = set(answer)
    for name in sorted(given - right):
        if name not in groups:
            raise Wrong(f"{name!r} is not a group of this model; unit_groups names "
                        f"{sorted(groups)}")
        raise Wrong(f"{name} is never cut: {groups[name].reason}")
    if right - given:
        raise Wrong(f"{sorted(right - given)} are groups of units too: every block has one")
    return (f"{len(right)} groups of units, the feed-forward neurons of each block; the "
            "residual stream starts at an embedding, c_attn's features are split into "
            "heads, and the head's outputs are the vocabulary.")


@exercise("10.3", "a LLaMA shrunk by heads and neurons, saved and reloaded")
def _llama_reloaded(answer, original) -> str:
    model = _module(answer, "the reloaded model")
    config, before = getattr(model, "config", None), getattr(original, "config", None)
    if config is None or before is None:
        raise Wrong("pass the model from_pretrained returned, and original= the dense LLaMA "
                    "(both have a .config)")
    if any(parametrize.is_parametrized(m) for m in model.modules()):
        raise Wrong("the model still has masks: save the plain model that shrink returns")
    want = {"num_key_value_heads": before.num_key_value_heads // 4,
            "intermediate_size": before.intermediate_size // 2}
    want["num_attention_heads"] = want["num_key_value_heads"] * (
        before.num_attention_heads // before.num_key_value_heads)
    for key, value in want.items():
        if getattr(config, key, None) != value:
            raise Wrong(f"config.{key} is {getattr(config, key, None)}; a quarter of the "
                        f"key/value heads and half of the neurons make it {value}")
    head_dim = before.hidden_size // before.num_attention_heads
    for i, layer in enumerate(model.model.layers):
        widths = (layer.mlp.up_proj.out_features, layer.self_attn.k_proj.out_features)
        if widths != (want["intermediate_size"], want["num_key_value_heads"] * head_dim):
            raise Wrong(f"layer {i} has {widths[0]} neurons and {widths[1]} key features; "
                        "were the weights loaded from the shrunk model?")
    kept = sum(p.numel() for p in model.parameters())
    total = sum(p.numel() for p in original.parameters())
    return (f"{config.num_key_value_heads} key/value head(s), {config.num_attention_heads} "
            f"query heads, {config.intermediate_size} neurons per block: {kept:,} of "
            f"{total:,} parameters, rebuilt from the config alone.")
