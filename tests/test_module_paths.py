"""Every module path the book names resolves with the packages installed here.

A reader who copies `torch.ao.pruning`, `torch.sparse.to_sparse_semi_structured` or
`transformers.pytorch_utils.Conv1D` from a page must find it. This test reads every page
(book/*.md, and the markdown and code cells of book/*.ipynb, hidden solutions included),
collects

- every dotted path that starts with a package name (`torch.…`, `torchao.…`, `transformers.…`,
  `maskutils.…`, …; the roots are listed in ROOTS, plus every package a page imports), and
- every `import a.b` and `from a.b import c, d` (which names `a.b.c` and `a.b.d`),

and resolves each: the longest prefix that imports, then attributes. A path that does not
resolve fails the test, unless the sentence that names it marks it as gone: the sentence (in
code, the line) contains the word "removed" or "deleted", as in "PyTorch's `ao` repository
deleted the `torchao.sparsity` module in August 2026". Addresses (http…) are not paths.
"""
from __future__ import annotations

import importlib
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "book").glob("*.md")) + sorted((ROOT / "book").glob("*.ipynb"))

# Packages whose paths the pages name; not all of them are installed here (that is the point).
ROOTS = {"torch", "torchao", "torchvision", "transformers", "torch_pruning", "maskutils",
         "sklearn", "numpy", "scipy", "matplotlib", "ipywidgets", "pydoc_data", "nbformat",
         "myst_nb", "safetensors", "accelerate", "vllm", "llmcompressor", "sparseml"}
GONE = re.compile(r"\b(removed|deleted)\b", re.IGNORECASE)
ADDRESS = re.compile(r"\b(?:https?://|www\.|github\.com/)\S*")
DOTTED = re.compile(r"(?<![\w.])([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+)")
IMPORT = re.compile(r"^\s*import\s+([\w.]+(?:\s+as\s+\w+)?(?:\s*,\s*[\w.]+(?:\s+as\s+\w+)?)*)",
                    re.M)
FROM_IMPORT = re.compile(r"^\s*from\s+([\w.]+)\s+import\s+(\([^)]*\)|[^\n#]*)", re.M)
SENTENCE_END = re.compile(r"(?<=[.!?:])\s+(?=[A-Z`*(\[])|\n\s*\n|\n\s*[-*] |\n\s*\d+\. ")


def _sentences(page: Path) -> list[tuple[str, str, str]]:
    """(where, kind, text) for every sentence of prose and every line of code on a page."""
    if page.suffix == ".md":
        cells = [("markdown", page.read_text())]
    else:
        notebook = nbformat.read(page, as_version=4)
        cells = [(cell.cell_type, cell.source) for cell in notebook.cells]
    found = []
    for index, (kind, source) in enumerate(cells):
        where = page.name if page.suffix == ".md" else f"{page.name} cell {index}"
        if kind == "code":
            found += [(where, "code", source)]
        elif kind == "markdown":
            code = "\n".join(re.findall(r"```python\n(.*?)```", source, re.S))
            prose = re.sub(r"```.*?```", " ", source, flags=re.S)
            found += [(where, "code", code)] if code else []
            found += [(where, "prose", text) for text in SENTENCE_END.split(prose)
                      if text and text.strip()]
    return found


def _imports(code: str) -> list[str]:
    """The paths that the import statements of ``code`` name."""
    named = []
    for match in IMPORT.finditer(code):
        named += [part.split()[0] for part in match.group(1).split(",")]
    for match in FROM_IMPORT.finditer(code):
        module, names = match.group(1), match.group(2).strip("() \n")
        if module.startswith("."):
            continue
        for name in re.split(r"[,\n]", names):
            name = name.split("#")[0].strip().split(" as ")[0].strip()
            named.append(f"{module}.{name}" if re.fullmatch(r"\w+", name) else module)
    return named


def named_paths(text: str, kind: str, roots: set[str]) -> list[tuple[str, str]]:
    """(path, the sentence or line it is named in) for every path ``text`` names."""
    found = []
    units = text.splitlines() if kind == "code" else [text]
    for unit in units:
        unit_text = ADDRESS.sub(" ", unit)
        found += [(path, unit) for path in DOTTED.findall(unit_text)
                  if path.split(".")[0] in roots]
        if kind == "code":
            found += [(path, unit) for path in _imports(unit_text)]
    if kind == "code":  # statements split over lines: `from x import (\n a,\n b)`
        multi = [m.group(0) for m in FROM_IMPORT.finditer(text) if "(" in m.group(0)]
        for statement in multi:
            found += [(path, statement) for path in _imports(statement)]
    return found


def resolves(path: str) -> bool:
    """Does ``path`` import, or is it an attribute chain of something that imports?"""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        except Exception:  # a module that exists but fails to import does not work either
            return False
        for attribute in parts[cut:]:
            if not hasattr(found, attribute):
                return False
            found = getattr(found, attribute)
        return True
    return False


def _book_roots() -> set[str]:
    roots = set(ROOTS)
    for page in PAGES:
        for _, kind, text in _sentences(page):
            if kind == "code":
                roots |= {path.split(".")[0] for path in _imports(text)}
    return roots


def broken_paths(pages=PAGES) -> list[str]:
    """``"page cell N: path"`` for every named path that does not resolve, nor is marked gone."""
    roots, broken, checked = _book_roots(), [], {}
    for page in pages:
        for where, kind, text in _sentences(page):
            for path, sentence in named_paths(text, kind, roots):
                if path not in checked:
                    checked[path] = resolves(path)
                if not checked[path] and not GONE.search(sentence):
                    broken.append(f"{where}: {path}")
    return sorted(set(broken))


def test_every_module_path_the_book_names_resolves_here():
    broken = broken_paths()
    assert not broken, ("the book names module paths that do not import here (mark one that "
                        "is gone with 'removed' or 'deleted' in its sentence):\n"
                        + "\n".join(broken))


@pytest.mark.parametrize("text, kind, expected", [
    ("Use `torch.sparse.to_sparse_semi_structured` on the weight.", "prose",
     ["torch.sparse.to_sparse_semi_structured"]),
    ("See https://pytorch.org/docs/torch.nn.utils.prune.html for more.", "prose", []),
    ("from transformers.pytorch_utils import Conv1D, foo as bar", "code",
     ["transformers.pytorch_utils", "transformers.pytorch_utils.Conv1D",
      "transformers.pytorch_utils.foo"]),
    ("from maskutils.distributed import (launch,\n    broadcast_masks)\n", "code",
     ["maskutils.distributed", "maskutils.distributed.launch",
      "maskutils.distributed.broadcast_masks"]),
    ("import torch.nn.functional as F\nx = model.torch.thing", "code",
     ["torch.nn.functional"]),
])
def test_paths_are_found_in_prose_and_code(text, kind, expected):
    found = [path for path, _ in named_paths(text, kind, ROOTS)]
    assert sorted(set(found)) == sorted(expected)


def test_a_path_that_does_not_resolve_fails_unless_marked_gone(tmp_path):
    assert resolves("torch.sparse.to_sparse_semi_structured")
    assert resolves("transformers.pytorch_utils.Conv1D") and resolves("torch.ao.pruning")
    assert not resolves("torch.sparse.no_such_function")
    assert not resolves("maskutils.no_such_module.thing")
    page = tmp_path / "page.md"
    page.write_text("Call `torch.sparse.no_such_function` first. PyTorch deleted "
                    "`torch.no_such_module` in 2026.\n\n- `maskutils.apply_mask` works.\n")
    assert broken_paths([page]) == ["page.md: torch.sparse.no_such_function"]
    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("from maskutils import apply_mask, not_there\n"),
        nbformat.v4.new_markdown_cell("<details>\n\n```python\nimport torchao.sparsity\n"
                                      "```\n</details>")])
    nbformat.write(notebook, tmp_path / "chapter.ipynb")
    assert broken_paths([tmp_path / "chapter.ipynb"]) == [
        "chapter.ipynb cell 0: maskutils.not_there", "chapter.ipynb cell 1: torchao.sparsity"]
