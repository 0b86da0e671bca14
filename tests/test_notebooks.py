"""Checks of the chapter notebooks as files (tests/test_chapters.py executes them)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())
NOTEBOOKS = sorted((ROOT / "book").glob("*.ipynb"))
# The short answer is a page of three plain-PyTorch recipes, not a chapter: no maskutils, so
# no setup cell, no exercises. Every other notebook follows the chapter conventions.
SHORT_ANSWER = ROOT / "book" / "00_short_answer.ipynb"
CHAPTERS = [p for p in NOTEBOOKS if p != SHORT_ANSWER]


def cells(path: Path, kind: str | None = None) -> list[dict]:
    found = json.loads(path.read_text())["cells"]
    return [c for c in found if kind is None or c["cell_type"] == kind]


def source(cell: dict) -> str:
    return "".join(cell["source"])


def toc_files() -> list[str]:
    files = [TOC["root"]]
    for entry in TOC.get("chapters", []):
        files.append(entry["file"])
    return files


def test_there_are_chapters():
    assert NOTEBOOKS, "no notebooks found under book/"


def test_toc_and_notebooks_agree():
    listed = {f for f in toc_files() if re.match(r"book/\d\d_", f)}
    on_disk = {f"book/{p.stem}" for p in NOTEBOOKS}
    assert listed == on_disk
    for f in toc_files():
        assert (ROOT / f"{f}.ipynb").exists() or (ROOT / f"{f}.md").exists(), f


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(path):
    for i, cell in enumerate(cells(path, "code")):
        assert cell.get("outputs") == [], f"{path.name} cell {i} has outputs: clear them"
        assert cell.get("execution_count") is None, f"{path.name} cell {i} has a count"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_setup_cell_installs_from_the_configured_repository(path):
    setup = source(cells(path, "code")[0])
    urls = re.findall(r'REPOSITORY = "([^"]+)"', setup)
    assert urls == [CONFIG["repository"]["url"]], "setup cell and _config.yml disagree"
    assert 'find_spec("maskutils") is None' in setup, "install only when missing"
    assert "MASKUTILS_SOURCE" in setup, "the install source can be redirected"
    pip_lines = [line for line in setup.splitlines() if '"install"' in line]
    assert pip_lines and not any("torch" in line for line in pip_lines), "never reinstall torch"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_second_cell_seeds_and_names_the_device(path):
    second = source(cells(path, "code")[1])
    for call in ("seed_everything(", "get_device()", "banner(device)"):
        assert call in second, f"{path.name}: the second cell lacks {call}"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_claims_are_asserted(path):
    code = "\n".join(source(c) for c in cells(path, "code"))
    assert len(re.findall(r"^\s*assert ", code, flags=re.M)) >= 5


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_skips_are_explained(path):
    for i, cell in enumerate(cells(path, "code")):
        if "nbval-skip" in cell.get("metadata", {}).get("tags", []):
            assert "# nbval-skip:" in source(cell), f"cell {i}: say why it is skipped"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_code_fits_the_page(path):
    for i, cell in enumerate(cells(path, "code")):
        for line in source(cell).splitlines():
            assert len(line) <= 79, f"{path.name} cell {i}: wrap {line!r}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_figures_have_alt_text(path):
    for i, cell in enumerate(cells(path, "code")):
        if re.search(r"^fig = ", source(cell), flags=re.M):
            alt = cell["metadata"].get("mystnb", {}).get("image", {}).get("alt", "")
            assert len(alt) > 20, f"{path.name} cell {i}: describe the figure in alt text"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_chapter_ends_with_summary_exercises_and_references(path):
    text = "\n".join(source(c) for c in cells(path, "markdown"))
    for heading in ("## Summary", "## Exercises", "## References"):
        assert heading in text, f"{path.name} lacks {heading}"
    assert text.count("<details>") >= 2, "2-4 exercises, solutions hidden in <details>"
    assert text.count("<details>") == text.count("</details>")
    assert "{footbibliography}" in text


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_cell_ends_in_a_matplotlib_call_that_prints_its_return_value(path):
    # e.g. a cell ending in fig.suptitle(...) shows "Text(0.5, 0.98, ...)" in the page
    setter = re.compile(r"^((fig|ax|axes)\S*\.(suptitle|set_\w+|legend|colorbar|text|plot)"
                        r"|glue)\(")  # glue returns its value, which would show too
    for i, cell in enumerate(cells(path, "code")):
        statements = [line for line in source(cell).splitlines()
                      if line.strip() and not line.startswith((" ", "\t", ")", "]", "}"))]
        if statements and setter.match(statements[-1]):
            pytest.fail(f"{path.name} cell {i} ends in {statements[-1]!r}: assign it")


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_every_chapter_has_the_same_setup_cell(path):
    first = source(cells(CHAPTERS[0], "code")[0])
    assert source(cells(path, "code")[0]) == first, "copy chapter 1's setup cell verbatim"


def test_the_short_answer_comes_first_and_uses_plain_pytorch_only():
    assert toc_files()[1] == "book/00_short_answer", "the short answer follows the intro"
    code = "\n".join(source(c) for c in cells(SHORT_ANSWER, "code"))
    assert "maskutils" not in code, "the short answer needs nothing but torch and sklearn"
    assert len(re.findall(r"^assert ", code, flags=re.M)) >= 3, "each recipe asserts its promise"
    text = "\n".join(source(c) for c in cells(SHORT_ANSWER, "markdown"))
    for chapter in ("02_gradient_flow", "03_learnable_masks", "04_swa_with_masks"):
        assert f"({chapter}.ipynb)" in text, f"a recipe links to {chapter}"
    intro = (ROOT / "book" / "intro.md").read_text()
    first_screen = intro[:1500]
    assert "(00_short_answer.ipynb)" in first_screen, "the intro's first screen points to it"


def test_recipes_are_short():
    # three recipes of about 10-15 lines each: the cells between the setup and the end
    recipe_cells = cells(SHORT_ANSWER, "code")[2:]
    assert all(len(source(c).splitlines()) <= 20 for c in recipe_cells)
