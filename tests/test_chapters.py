"""Every chapter runs top to bottom, its asserts hold, and its hidden solutions pass their checks.

Each chapter is executed once (tests/chapter_run.py): in a fresh kernel, as the book build
executes it, with the code of every solution (the ```python blocks inside its <details>
blocks) appended as extra cells in the chapter's namespace, which is what a reader gets by
pasting a solution at the end of the notebook. The notebook's own asserts are the checks of
its claims; a solution fails when it raises or when its ``check(...)`` refuses (prints ❌).
The executed chapter goes into the book's cache, so the book build shows these outputs.

To run one chapter cell by cell instead, with nbval: ``pytest book/03_learnable_masks.ipynb``.
"""
from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from jupyter_cache import get_cache

from chapter_run import WIDGET_VIEW, _keep_chapter_widgets, execute, refusals, solutions

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "book").glob("*.ipynb"))


def _where(run) -> str:
    cell = run.notebook.cells[run.failed_cell]
    if run.chapter_failed:
        code_cells = [c for c in run.notebook.cells[:run.first_solution] if c.cell_type == "code"]
        head = cell.source.strip().splitlines()[0] if cell.source.strip() else ""
        return f"code cell {code_cells.index(cell)} ({head!r})"
    return f"solution {run.failed_cell - run.first_solution + 1}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_chapter_runs_top_to_bottom_and_its_asserts_hold(path, chapter_run):
    run = chapter_run(path)
    if run.chapter_failed:
        pytest.fail(f"{path.name}: {_where(run)} raised:\n{run.error[-3000:]}")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_solution_runs_and_its_check_passes(path, chapter_run):
    run = chapter_run(path)
    if run.chapter_failed:
        pytest.fail(f"{path.name}: the chapter itself failed, so its solutions did not run")
    if run.failed_cell is not None:
        pytest.fail(f"{path.name}: {_where(run)} raised:\n{run.error[-3000:]}")
    for number, cell in enumerate(run.solution_cells(), 1):
        assert not refusals(cell), f"{path.name} solution {number}: {refusals(cell)}"


def test_solutions_are_found():
    chapters = [p for p in NOTEBOOKS if p.name != "00_short_answer.ipynb"]  # no exercises
    with_code = [p.name for p in chapters if solutions(nbformat.read(p, as_version=4))]
    assert with_code == [p.name for p in chapters], "every chapter's solutions have code"


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


def _toy_chapter(tmp_path, chapter_code: str, solution_code: str) -> Path:
    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell(chapter_code),
        nbformat.v4.new_code_cell("1 / 0", metadata={"tags": ["raises-exception"]}),
        nbformat.v4.new_markdown_cell(f"<details>\n\n```python\n{solution_code}\n```\n</details>")])
    notebook.metadata.kernelspec = {"name": "python3", "display_name": "Python 3",
                                    "language": "python"}
    path = tmp_path / "toy.ipynb"
    nbformat.write(notebook, path)
    return path


def test_a_failing_solution_is_reported_and_the_chapter_still_goes_to_the_book_cache(tmp_path):
    path = _toy_chapter(tmp_path, "answer = 42\nprint(answer)", "assert answer == 41")
    run = execute(path, cache=tmp_path / "cache")
    assert not run.chapter_failed and run.failed_cell == run.first_solution == 3
    assert "AssertionError" in run.error
    assert 0 < run.chapter_seconds < 60
    # The book build reads the source notebook and finds its outputs by hash.
    cache = get_cache(str(tmp_path / "cache"))
    record = cache.match_cache_notebook(nbformat.read(path, as_version=4))
    assert record.data["execution_seconds"] == run.chapter_seconds
    cached = cache.get_cache_bundle(record.pk).nb
    assert [cell.source for cell in cached.cells] == ["answer = 42\nprint(answer)", "1 / 0"]
    assert cached.cells[0].outputs[0]["text"] == "42\n"
    assert cached.cells[1].outputs[0]["ename"] == "ZeroDivisionError"
    assert all("execution" not in cell.metadata for cell in cached.cells)


def test_a_failing_chapter_cell_is_reported_and_nothing_is_cached(tmp_path):
    path = _toy_chapter(tmp_path, "assert 1 == 2, 'the claim'", "x = 1")
    run = execute(path, cache=tmp_path / "cache")
    assert run.chapter_failed and run.failed_cell == 0
    assert "the claim" in run.error
    assert get_cache(str(tmp_path / "cache")).list_cache_records() == []


def _with_widgets(shown: list[str], state: dict):
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("w")])
    notebook.cells[0].outputs = [nbformat.v4.new_output(
        "display_data", data={WIDGET_VIEW: {"model_id": m}, "text/plain": "w"}) for m in shown]
    notebook.metadata.widgets = {"application/vnd.jupyter.widget-state+json":
                                 {"state": state, "version_major": 2, "version_minor": 0}}
    return notebook


def test_the_cached_chapter_keeps_only_the_widgets_its_outputs_show():
    state = {"aa": {"state": {"layout": "IPY_MODEL_bb"}}, "bb": {"state": {}},
             "cc": {"state": {"layout": "IPY_MODEL_dd"}}, "dd": {"state": {}}}
    shown = _with_widgets(["aa"], state)
    _keep_chapter_widgets(shown)   # aa and the layout it references stay; a solution's go
    kept = shown.metadata.widgets["application/vnd.jupyter.widget-state+json"]["state"]
    assert sorted(kept) == ["aa", "bb"]
    none_shown = _with_widgets([], state)
    _keep_chapter_widgets(none_shown)
    assert "widgets" not in none_shown.metadata
