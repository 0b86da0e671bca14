"""Which code cells only draw, and how much code a reader sees on each page.

A cell *only draws* when it makes a figure (``plt.subplots``, ``plt.figure``, a
``maskutils.plot`` helper, or a line starting ``fig = ``), asserts no claim, and calls
nothing that masks, trains, evaluates or computes a result: no ``maskutils`` function outside
``maskutils.plot``, no optimizer or autograd step, no function the notebook defined that
does such work. Such
cells carry the ``hide-input`` tag, so the rendered page shows the figure and a button for
its code, and the masking code stays in view (tests/test_hidden_plots.py checks it).

Run as a script to print the code lines a reader sees per page (cells without
``hide-input``), now or at a git revision::

    python tests/code_visibility.py            # the working tree
    python tests/code_visibility.py 3d722ed    # the book at that commit
"""
from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Functions that make a figure.
FIGURE_MAKERS = {"subplots", "figure", "subplot_mosaic", "heatmaps", "heatmap", "curves",
                 "layer_curves", "speed_curves", "grouped_bars", "gate_histograms",
                 "tradeoff"}
#: Calls that do the work a page is about: masking, training, evaluating, measuring.
WORK = {"backward", "step", "zero_grad", "register_parametrization", "remove_parametrizations",
        "custom_from_mask", "l1_unstructured", "random_unstructured", "global_unstructured",
        "update_parameters", "update_bn", "train_steps", "launch", "prune", "squash_mask",
        "fit", "fit_swa", "evaluate", "evaluate_loss", "apply_mask", "mask_layers",
        "remove_mask", "remove_masks", "one_shot_prune", "prune_units", "shrink",
        "parallel_map", "time_interleaved", "run_benchmark", "inference_times",
        "gradual_magnitude_prune", "learnable_mask_layers", "binarize", "sparsegpt_prune",
        "wanda_mask", "magnitude_mask", "random_mask", "nm_mask", "input_norms",
        "broadcast_masks", "load_state_dict", "save", "load", "compile", "check",
        "mask_gradients", "project_after_step", "apply_learnable_mask", "digits_loaders",
        "char_loaders", "seed_everything"}


def _calls(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute):
                names.add(func.attr)
            elif isinstance(func, ast.Name):
                names.add(func.id)
    return names


def _parse(source: str) -> ast.AST | None:
    code = "\n".join(line for line in source.splitlines()
                     if not line.lstrip().startswith(("%", "!")))
    try:
        return ast.parse(code)
    except SyntaxError:
        return None


def _defined_workers(cells: list[str]) -> set[str]:
    """Functions the notebook defines that call work (directly or through each other)."""
    bodies: dict[str, set[str]] = {}
    for source in cells:
        tree = _parse(source)
        for node in ast.walk(tree) if tree else []:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                bodies[node.name] = _calls(node)
    workers = {name for name, called in bodies.items() if called & WORK}
    grew = True
    while grew:
        more = {name for name, called in bodies.items() if called & workers} - workers
        grew = bool(more)
        workers |= more
    return workers


def draws_only(source: str, workers: frozenset[str] | set[str] = frozenset()) -> bool:
    """True when the cell makes a figure and does no other work (see the module docstring)."""
    tree = _parse(source)
    if tree is None or any(isinstance(node, ast.Assert) for node in ast.walk(tree)):
        return False
    called = _calls(tree)
    makes_figure = bool(called & FIGURE_MAKERS) or re.search(r"^fig = ", source, re.M)
    return bool(makes_figure) and not (called & (WORK | set(workers)))


def code_cells(notebook: dict) -> list[dict]:
    return [c for c in notebook["cells"] if c["cell_type"] == "code"]


def source(cell: dict) -> str:
    return "".join(cell["source"])


def hidden(cell: dict) -> bool:
    tags = cell.get("metadata", {}).get("tags", [])
    return "hide-input" in tags or "remove-input" in tags or "remove-cell" in tags


def plot_only_cells(notebook: dict) -> list[int]:
    """Indices (among code cells) of the cells that only draw."""
    cells = code_cells(notebook)
    workers = _defined_workers([source(c) for c in cells])
    return [i for i, c in enumerate(cells) if draws_only(source(c), workers)]


def visible_lines(notebook: dict) -> tuple[int, int]:
    """``(code lines a reader sees, all code lines)`` of a notebook."""
    cells = code_cells(notebook)
    count = lambda cs: sum(len(source(c).strip().splitlines()) for c in cs)  # noqa: E731
    return count([c for c in cells if not hidden(c)]), count(cells)


def _notebooks(revision: str | None) -> dict[str, dict]:
    if revision is None:
        return {p.name: json.loads(p.read_text())
                for p in sorted((ROOT / "book").glob("*.ipynb"))}
    names = subprocess.run(["git", "ls-tree", "--name-only", revision, "book/"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    return {Path(n).name: json.loads(subprocess.run(
        ["git", "show", f"{revision}:{n}"], cwd=ROOT, capture_output=True, text=True,
        check=True).stdout) for n in names if n.endswith(".ipynb")}


if __name__ == "__main__":
    revision = sys.argv[1] if len(sys.argv) > 1 else None
    print(f"{'page':34} {'visible':>8} {'all':>6}  plot-only cells not hidden")
    for name, notebook in _notebooks(revision).items():
        shown, total = visible_lines(notebook)
        cells = code_cells(notebook)
        open_plots = [i for i in plot_only_cells(notebook) if not hidden(cells[i])]
        print(f"{name:34} {shown:8d} {total:6d}  {len(open_plots)}")
