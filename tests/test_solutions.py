"""The hidden solutions of every chapter's exercises run, and their checkers accept them.

Each chapter is executed top to bottom in a fresh kernel with the code of every solution
(the ```python blocks inside its <details> blocks) appended as extra cells, in order, in the
chapter's namespace: exactly what a reader gets by pasting a solution at the end of the
notebook. The test fails when a solution raises or when its ``check(...)`` refuses (prints ❌).
"""
from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "book").glob("*.ipynb"))
DETAILS = re.compile(r"<details>(.*?)</details>", re.S)
PYTHON = re.compile(r"```python\n(.*?)```", re.S)


def solutions(notebook) -> list[str]:
    """The code of every solution, in the order the chapter shows them."""
    found = []
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            for block in DETAILS.findall(cell.source):
                found += [code.strip() for code in PYTHON.findall(block)]
    return found


def test_solutions_are_found():
    with_code = [p.name for p in NOTEBOOKS if solutions(nbformat.read(p, as_version=4))]
    assert with_code == [p.name for p in NOTEBOOKS], "every chapter's solutions have code"


def refusals(cell) -> list[str]:
    text = "".join(out.get("text", "") for out in cell.get("outputs", [])
                   if out.get("output_type") == "stream")
    return [line for line in text.splitlines() if line.startswith("❌")]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_solution_runs_and_its_check_passes(path, tmp_path):
    notebook = nbformat.read(path, as_version=4)
    codes = solutions(notebook)
    first = len(notebook.cells)
    for code in codes:
        notebook.cells.append(nbformat.v4.new_code_cell(code))
    client = NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    try:
        client.execute()
    except CellExecutionError as err:
        failing = next((i - first + 1 for i, c in enumerate(notebook.cells[first:], first)
                        if any(o.get("output_type") == "error" for o in c.get("outputs", []))),
                       None)
        where = f"solution {failing}" if failing else "the chapter itself"
        pytest.fail(f"{path.name}: {where} raised:\n{str(err)[-2000:]}")
    for number, cell in enumerate(notebook.cells[first:], 1):
        assert not refusals(cell), f"{path.name} solution {number}: {refusals(cell)}"


def test_the_harness_finds_solution_code_and_refusals():
    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("## Exercises\n<details>\n<summary>Solution 1</summary>\n\n"
                                      "```python\nx = 1\n```\nIt shows x.\n</details>"),
        nbformat.v4.new_markdown_cell("```python\nnot_a_solution()\n```")])
    assert solutions(notebook) == ["x = 1"]
    cell = nbformat.v4.new_code_cell("check()")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout",
                                           text="✅ 1.1: right\n❌ 1.2: wrong shape\n")]
    assert refusals(cell) == ["❌ 1.2: wrong shape"]
