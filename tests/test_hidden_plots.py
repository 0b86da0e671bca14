"""Plotting code is folded away in the rendered book, so the masking code stays in view.

Every code cell that only draws a figure (tests/code_visibility.py says which) carries
Jupyter Book's ``hide-input`` tag: the page shows the figure and a button for its code. The
notebooks themselves stay complete for Colab and JupyterLab.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from code_visibility import code_cells, draws_only, hidden, plot_only_cells, source

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "book").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_cells_that_only_draw_are_collapsed(path):
    notebook = json.loads(path.read_text())
    cells = code_cells(notebook)
    shown = [i for i in plot_only_cells(notebook) if not hidden(cells[i])]
    heads = [source(cells[i]).strip().splitlines()[0] for i in shown]
    assert not shown, f"{path.name}: tag these plot-only code cells hide-input: " + \
        "; ".join(f"cell {i} ({head[:50]!r})" for i, head in zip(shown, heads))


@pytest.mark.parametrize("code, only_draws", [
    ("fig, ax = plt.subplots()\nax.plot([1, 2])\ntitle = ax.set_title('x')", True),
    ("fig = heatmaps({'mask': mask}, kind='mask')", True),
    ("def render(s):\n    fig, ax = plt.subplots()\n    return fig", True),
    ("model = fit(model, loader)\nfig = curves(range(3), {'a': h})", False),
    ("fig, ax = plt.subplots()\nassert gap > 0\nax.plot(x)", False),
    ("apply_mask(layer, mask)\nfig = heatmaps({'w': layer.weight})", False),
    ("accuracy = evaluate(model, test_loader)\nprint(accuracy)", False),
    ("%%time\nfig, ax = plt.subplots()", True),
])
def test_what_counts_as_only_drawing(code, only_draws):
    assert draws_only(code) is only_draws


def test_a_helper_that_trains_makes_its_caller_do_work():
    notebook = {"cells": [
        {"cell_type": "code", "metadata": {}, "source": "def run(m):\n    return fit(m, l)"},
        {"cell_type": "code", "metadata": {}, "source": "h = run(m)\nfig = curves(x, h)"},
        {"cell_type": "code", "metadata": {}, "source": "fig = curves(x, h)"}]}
    assert plot_only_cells(notebook) == [2]
