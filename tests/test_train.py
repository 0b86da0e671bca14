"""The training loop and accuracy (maskutils.train)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from maskutils import (apply_mask, digits_loaders, digits_mlp, evaluate, fit, get_mask,
                       random_mask, seed_everything)


@pytest.fixture(scope="module")
def loaders():
    return digits_loaders(batch_size=64, seed=0)


class ModeRecorder(nn.Module):
    """Wraps a model and records ``self.training`` at every forward pass."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.modes = inner, []

    def forward(self, x):
        self.modes.append(self.training)
        return self.inner(x)


class AlwaysClass(nn.Module):
    def __init__(self, label):
        super().__init__()
        self.label = label
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        out = torch.zeros(len(x), 10) + 0 * self.dummy
        out[:, self.label] = 1.0
        return out


def _weights(model):
    return torch.cat([layer.weight.detach().flatten() for layer in model.linears()])


# --- fit ------------------------------------------------------------------------------------

def test_fit_reduces_the_training_loss_within_a_few_epochs(loaders):
    seed_everything(0)
    history = fit(digits_mlp(), loaders[0], epochs=3, progress=False)
    assert history["epoch"] == [1, 2, 3]
    assert history["train_loss"][-1] < 0.5 * history["train_loss"][0]


def test_fit_reaches_over_90_percent_test_accuracy_in_15_epochs(loaders):
    seed_everything(0)
    model = digits_mlp()
    history = fit(model, loaders[0], epochs=15, lr=1e-3, test_loader=loaders[1], progress=False)
    assert sorted(history) == ["epoch", "test_acc", "train_loss"]
    assert len(history["test_acc"]) == 15
    assert history["test_acc"][-1] > 0.9
    assert evaluate(model, loaders[1]) == history["test_acc"][-1]


def test_fit_adds_the_penalty_to_the_loss(loaders):
    def run(penalty):
        seed_everything(0)
        model = digits_mlp(hidden=(32,))
        history = fit(model, loaders[0], epochs=1, lr=1e-2, penalty=penalty, progress=False)
        return model, history

    seen = []

    def huge(model):
        seen.append(model)
        return 10.0 * sum(layer.weight.square().sum() for layer in model.linears())

    plain, plain_history = run(None)
    squeezed, squeezed_history = run(huge)
    assert seen and all(m is squeezed for m in seen)
    assert squeezed_history["train_loss"][0] > plain_history["train_loss"][0] + 1.0
    assert _weights(squeezed).norm() < 0.5 * _weights(plain).norm()


def test_fit_calls_on_step_after_every_step_and_on_epoch_after_every_epoch(loaders):
    model = digits_mlp(hidden=(8,))
    steps, epochs = [], []
    fit(model, loaders[0], epochs=2, progress=False,
        on_step=lambda step, m: steps.append((step, m)),
        on_epoch=lambda epoch, m: epochs.append((epoch, m)))
    assert [s for s, _ in steps] == list(range(1, 2 * len(loaders[0]) + 1))
    assert [e for e, _ in epochs] == [1, 2]
    assert all(m is model for _, m in steps + epochs)


def test_fit_uses_the_given_optimizer(loaders):
    model = digits_mlp(hidden=(8,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    history = fit(model, loaders[0], epochs=1, optimizer=torch.optim.SGD(model.parameters(), lr=0.0),
                  progress=False)
    assert history["epoch"] == [1]
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_fit_trains_in_train_mode(loaders):
    model = ModeRecorder(digits_mlp(hidden=(8,))).eval()
    fit(model, loaders[0], epochs=1, progress=False)
    assert model.modes and all(model.modes)


def test_fit_keeps_masked_weights_at_zero(loaders):
    seed_everything(0)
    model = digits_mlp(hidden=(32,))
    for layer in model.linears():
        apply_mask(layer, random_mask(layer.weight, 0.8))
    fit(model, loaders[0], epochs=2, progress=False)
    for layer in model.linears():
        assert (layer.weight[get_mask(layer) == 0] == 0).all()


def test_fit_with_zero_epochs_returns_an_empty_history_and_trains_nothing(loaders):
    model = digits_mlp(hidden=(8,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []
    history = fit(model, loaders[0], epochs=0, test_loader=loaders[1], progress=False,
                  on_step=lambda *a: calls.append(a), on_epoch=lambda *a: calls.append(a))
    assert history == {"epoch": [], "train_loss": [], "test_acc": []}
    assert calls == []
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_fit_with_a_progress_bar_runs(loaders, capsys):
    history = fit(digits_mlp(hidden=(8,)), loaders[0], epochs=1, progress=True)
    assert history["epoch"] == [1]


@pytest.mark.parametrize("epochs", [-1, 1.5, True, "3"])
def test_fit_rejects_epochs_that_are_not_a_non_negative_int(left_alone, loaders, epochs):
    model = digits_mlp(hidden=(8,))
    with left_alone(model), pytest.raises(ValueError, match=r"epochs must be a non-negative int"):
        fit(model, loaders[0], epochs=epochs, progress=False)


@pytest.mark.parametrize("call", [lambda m, l: fit(m, l, epochs=1, progress=False), evaluate])
def test_fit_and_evaluate_reject_a_non_module(loaders, call):
    with pytest.raises(TypeError, match=r"expected a torch\.nn\.Module, got function"):
        call(lambda x: x, loaders[0])


# --- evaluate -------------------------------------------------------------------------------

def test_evaluate_is_the_fraction_of_correct_predictions(loaders):
    labels = torch.cat([y for _, y in loaders[1]])
    for label in (0, 7):
        expected = int((labels == label).sum()) / len(labels)
        assert evaluate(AlwaysClass(label), loaders[1]) == expected


@pytest.mark.parametrize("train_mode", [True, False])
def test_evaluate_runs_in_eval_mode_and_restores_the_mode(loaders, train_mode):
    model = ModeRecorder(digits_mlp(hidden=(8,))).train(train_mode)
    evaluate(model, loaders[1])
    assert model.modes and not any(model.modes)
    assert model.training is train_mode
    assert all(sub.training is train_mode for sub in model.modules())


def test_evaluate_does_not_build_a_graph(loaders):
    outputs = []
    model = digits_mlp(hidden=(8,))
    model.register_forward_hook(lambda mod, inp, out: outputs.append(out))
    evaluate(model, loaders[1])
    assert outputs and not any(o.requires_grad for o in outputs)


def test_evaluate_of_an_empty_loader_is_a_value_error():
    with pytest.raises(ValueError, match="no samples"):
        evaluate(digits_mlp(hidden=(8,)), [])


def test_fit_on_an_empty_loader_is_a_value_error():
    with pytest.raises(ValueError, match="no batches"):
        fit(digits_mlp(), [], epochs=1, progress=False)


def test_progress_bar_leaves_no_widget_in_the_saved_notebook():
    """fit's bar shows in a kernel when training lasts over a second, then leaves no widget
    behind: a reopened notebook would show "Error displaying widget" for a closed one."""
    import nbformat
    from nbclient import NotebookClient

    code = ("import time\nfrom maskutils import digits_loaders, digits_mlp, fit\n"
            "train, _ = digits_loaders(batch_size=512)\n"
            "print('before')\n"
            "h = fit(digits_mlp(), train, epochs=3, on_epoch=lambda e, m: time.sleep(0.7))\n"
            "print('after', len(h['epoch']))")
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    NotebookClient(notebook, timeout=120, kernel_name="python3").execute()
    outputs = notebook.cells[0].outputs
    widgets = [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    shown = [o for o in outputs if o.get("output_type") == "display_data"]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert shown, "the bar was displayed (training took over a second)"
    assert not widgets, "the closed bar's widget is still in the saved output"
    assert "before" in text and "after 3" in text, "the cell's own output stays"


def test_decayed_adam_decays_to_zero_along_a_cosine_and_refuses_bad_steps():
    from maskutils import decayed_adam

    model = nn.Linear(3, 2)
    optimizer = decayed_adam(model.parameters(), lr=0.1, steps=10)
    rates = []
    for _ in range(10):
        optimizer.step()
        rates.append(optimizer.param_groups[0]["lr"])
    assert rates[4] == pytest.approx(0.05)          # half-way: half the rate
    assert rates[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(rates, rates[1:]))
    for steps in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="steps"):
            decayed_adam(model.parameters(), lr=0.1, steps=steps)
    with pytest.raises(ValueError, match="lr"):
        decayed_adam(model.parameters(), lr=0, steps=3)
