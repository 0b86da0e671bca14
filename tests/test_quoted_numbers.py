"""A number quoted in a chapter's summary or in the intro is one the chapter computed.

Measured numbers (those with a decimal point, a percent sign or a "×") in a chapter's
``## Summary``, and in the intro's rows, must either be glued (``{glue:text}`key```, which the
book build fills in from the executed notebook) or appear in what the chapter printed when
it ran. A number typed by hand that the chapter no longer prints fails here.
"""
from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
CHAPTERS = sorted(p for p in BOOK.glob("[0-9][0-9]_*.ipynb") if p.name != "00_short_answer.ipynb")

GLUE = re.compile(r"\{glue(?::\w+)?\}`[^`]*`")
CODE = re.compile(r"`[^`]*`")
LINK = re.compile(r"\]\([^)]*\)")
CITE = re.compile(r"\{foot\w*\}`[^`]*`|\{term\}`[^`]*`")
REFERENCE = re.compile(r"\b(?:chapters?|sections?|fig\.|figures?|exercises?|solutions?)\s+"
                       r"\d+(?:\.\d+)?", flags=re.I)  # "chapter 3", "exercise 4.2"
MEASURED = re.compile(r"(?<![\w.])[+−-]?\d+(?:\.\d+)?(?:\s?%|×|x\b)|(?<![\w.])[+−-]?\d+\.\d+")


def measured_numbers(markdown: str) -> list[str]:
    """The measured-looking numbers of ``markdown`` outside glue roles, code, links,
    citations and references to chapters or exercises, as bare digits ("96.4 %" -> "96.4")."""
    for pattern in (GLUE, CODE, LINK, CITE, REFERENCE):
        markdown = pattern.sub(" ", markdown)
    found = []
    for match in MEASURED.finditer(markdown):
        digits = re.sub(r"[^\d.]", "", match.group()).strip(".")
        found.append(digits)
    return found


def unprinted(markdown: str, printed: str) -> list[str]:
    """The measured numbers of ``markdown`` that ``printed`` does not contain."""
    return [n for n in measured_numbers(markdown) if n not in printed]


def summary(notebook) -> str:
    text = "\n".join(c.source for c in notebook.cells if c.cell_type == "markdown")
    match = re.search(r"^## Summary\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    return match.group(1) if match else ""


def printed_text(notebook) -> str:
    """Everything the executed chapter showed as text, glued values included."""
    parts = []
    for cell in notebook.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                parts.append(out.get("text", ""))
            for mime, data in out.get("data", {}).items():
                if mime.endswith("text/plain") or mime.endswith("text/html"):
                    parts.append(data if isinstance(data, str) else "".join(data))
    return "\n".join(parts)


def test_measured_numbers_are_found_outside_glue_code_and_links():
    text = ("Learned masks lead by {glue:text}`margin` points, 96.4 % sparse, 8.6× smaller, "
            "wobble 0.51, `lr=0.05` in [chapter 3.1](03_x.ipynb), 3 seeds, +1.2 points.")
    assert measured_numbers(text) == ["96.4", "8.6", "0.51", "1.2"]
    assert unprinted(text, "sparsity 96.4%  ratio 8.6x  wobble 0.51  gap +1.2") == []
    assert unprinted(text, "sparsity 96.4%") == ["8.6", "0.51", "1.2"]


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_summary_quotes_only_numbers_the_chapter_printed_or_glued(path, chapter_run):
    run = chapter_run(path)
    if run.chapter_failed:
        pytest.skip("the chapter itself failed (see test_chapters.py)")
    chapter = nbformat.read(path, as_version=4)
    missing = unprinted(summary(chapter), printed_text(run.notebook))
    assert not missing, (f"{path.name}'s summary quotes {missing}, which the chapter neither "
                         "prints nor glues: glue them ({glue:text}`key`) or print them")


def test_intro_quotes_only_numbers_its_chapters_printed_or_glued(chapter_run):
    intro = (BOOK / "intro.md").read_text()
    rows = [line for line in intro.splitlines() if line.startswith("|")]
    printed = "\n".join(printed_text(chapter_run(p).notebook) for p in CHAPTERS)
    missing = unprinted("\n".join(rows), printed)
    assert not missing, (f"the intro's tables quote {missing}, which no chapter prints or "
                         "glues: glue them from the chapter ({glue:text}`NN_name.ipynb::key`)")
