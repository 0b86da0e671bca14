"""One execution of a chapter serves three checks: its asserts, its solutions and the book.

A chapter is executed once, top to bottom, in a fresh kernel, exactly as the book build does
it (jupyter-cache's executor, the notebook's folder as working directory, `_config.yml`'s
timeout, errors only in cells tagged `raises-exception`), with the code of every hidden
solution appended as extra cells in the chapter's namespace. The chapter's own cells, with
their outputs, then go into the book's cache (`_build/.jupyter_cache`), so `jupyter-book
build .` renders the very outputs the tests checked instead of executing the chapter again.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import nbformat
import yaml
from jupyter_cache import get_cache
from jupyter_cache.base import CacheBundleIn
from jupyter_cache.executors.utils import single_nb_execution

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
BOOK_CACHE = ROOT / "_build" / ".jupyter_cache"  # where jupyter-book 1.x looks by default
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


def refusals(cell) -> list[str]:
    """The lines a checker printed to refuse an answer (they start with ❌)."""
    text = "".join(out.get("text", "") for out in cell.get("outputs", [])
                   if out.get("output_type") == "stream")
    return [line for line in text.splitlines() if line.startswith("❌")]


@dataclass
class ChapterRun:
    path: Path
    notebook: nbformat.NotebookNode  # executed: the chapter's cells, then one per solution
    first_solution: int              # index of the first appended cell
    failed_cell: int | None          # index of the cell that raised, None if none did
    error: str                       # the executor's traceback, "" when nothing raised
    chapter_seconds: float           # kernel start to the chapter's last cell, solutions excluded

    @property
    def chapter_failed(self) -> bool:
        return self.failed_cell is not None and self.failed_cell < self.first_solution

    def solution_cells(self) -> list:
        return self.notebook.cells[self.first_solution:]


def _seconds(cell) -> float:
    timing = cell.metadata.get("execution", {})
    start, end = timing.get("iopub.execute_input"), timing.get("shell.execute_reply")
    if not (start and end):
        return 0.0
    parse = lambda stamp: datetime.fromisoformat(stamp.replace("Z", "+00:00"))  # noqa: E731
    return (parse(end) - parse(start)).total_seconds()


def _failed_cell(notebook) -> int | None:
    for index, cell in enumerate(notebook.cells):
        on_purpose = "raises-exception" in cell.metadata.get("tags", [])
        if not on_purpose and any(out.get("output_type") == "error"
                                  for out in cell.get("outputs", [])):
            return index
    return None


def _unexecuted_cell(notebook) -> int | None:
    return next((i for i, cell in enumerate(notebook.cells)
                 if cell.cell_type == "code" and cell.get("execution_count") is None), None)


def execute(path: Path, cache: Path = BOOK_CACHE) -> ChapterRun:
    """Run the chapter at ``path`` with its solutions appended; if the chapter itself passed,
    store it in the jupyter-cache at ``cache`` (the book's by default)."""
    notebook = nbformat.read(path, as_version=4)
    first_solution = len(notebook.cells)
    notebook.cells += [nbformat.v4.new_code_cell(code) for code in solutions(notebook)]
    result = single_nb_execution(notebook, cwd=str(path.parent),
                                 timeout=CONFIG["execute"]["timeout"],
                                 allow_errors=CONFIG["execute"]["allow_errors"],
                                 record_timing=True)
    failed = _failed_cell(notebook)
    if result.err is not None and failed is None:  # a timeout can leave no error output
        failed = _unexecuted_cell(notebook)
    solution_seconds = sum(_seconds(cell) for cell in notebook.cells[first_solution:])
    run = ChapterRun(path, notebook, first_solution, failed, result.exc_string or "",
                     result.time - solution_seconds)
    if not run.chapter_failed:
        _store(run, cache)
    return run


def _store(run: ChapterRun, cache: Path) -> None:
    """Store the chapter's executed cells where `jupyter-book build .` finds them.

    jupyter-cache matches a notebook by the hash of its code cells (source and metadata)
    and its kernelspec, so the stored copy drops the solutions and the timing metadata,
    and keeps only the widget state the chapter's own outputs use.
    """
    chapter = copy.deepcopy(run.notebook)
    chapter.cells = chapter.cells[:run.first_solution]
    for cell in chapter.cells:
        cell.metadata.pop("execution", None)
    _keep_chapter_widgets(chapter)
    get_cache(str(cache)).cache_notebook_bundle(
        CacheBundleIn(chapter, str(run.path), data={"execution_seconds": run.chapter_seconds}),
        check_validity=False, overwrite=True)


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_REFERENCE = re.compile(r"IPY_MODEL_([0-9a-f]+)")


def _keep_chapter_widgets(chapter) -> None:
    """Drop the saved widget models that no chapter output shows (a solution's, say)."""
    state = chapter.metadata.get("widgets", {}).get(
        "application/vnd.jupyter.widget-state+json", {}).get("state", {})
    wanted = [out["data"][WIDGET_VIEW]["model_id"] for cell in chapter.cells
              for out in cell.get("outputs", []) if WIDGET_VIEW in out.get("data", {})]
    kept: dict = {}
    while wanted:
        model = wanted.pop()
        if model in state and model not in kept:
            kept[model] = state[model]
            wanted += WIDGET_REFERENCE.findall(repr(state[model]))
    if kept:
        chapter.metadata.widgets["application/vnd.jupyter.widget-state+json"]["state"] = kept
    else:
        chapter.metadata.pop("widgets", None)
