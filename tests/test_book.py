"""The rendered book, checked in a real headless browser with no network.

Builds the book (warnings are errors), opens every page in Debian's Chromium through
Playwright with every non-file request blocked, and checks what a reader sees: figures
load and have alt text, no error or traceback is shown, the Colab button opens this
chapter's notebook, and each kernel-free slider changes the picture when moved.
Screenshots land in _build/screenshots/ for a person to look at.

Needs chromium (apt-get install chromium) and playwright (pip); without them the test is
skipped, unless MASKUTILS_REQUIRE_BROWSER=1 (CI) makes that a failure.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "_build" / "html"
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())
DOCS = [entry["file"] for entry in TOC.get("chapters", [])]
NOTEBOOK_PAGES = [doc for doc in DOCS if (ROOT / f"{doc}.ipynb").exists()]
CHAPTERS = [doc for doc in NOTEBOOK_PAGES if doc != "book/00_short_answer"]  # with figures
PAGES = [TOC["root"], *DOCS]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.book


def _chromium() -> str | None:
    return os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def _unavailable(why: str):
    if os.environ.get("MASKUTILS_REQUIRE_BROWSER") == "1":
        pytest.fail(f"browser test required but {why}")
    pytest.skip(why)


@pytest.fixture(scope="module")
def built_book(chapter_run) -> Path:
    # Each chapter's one execution in this session (tests/chapter_run.py) fills the book's
    # cache, so the build renders the outputs the chapter tests checked.
    failed = [doc for doc in NOTEBOOK_PAGES
              if chapter_run(ROOT / f"{doc}.ipynb").chapter_failed]
    assert not failed, f"chapters that fail their own tests (see test_chapters.py): {failed}"
    cli = Path(sys.executable).with_name("jupyter-book")
    result = subprocess.run([str(cli), "build", str(ROOT), "-W", "-n", "--keep-going"],
                            capture_output=True, text=True, cwd=ROOT)
    log = result.stdout + result.stderr
    # -W turns every Sphinx warning into a failure (the kernel's own log lines are no
    # Sphinx warnings, so the log text is not searched).
    assert result.returncode == 0, f"the book build failed (warnings are errors):\n{log[-4000:]}"
    return HTML


@pytest.fixture(scope="module")
def browser():
    executable = _chromium()
    if executable is None:
        _unavailable("chromium is not installed (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install playwright)")
    with sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def open_page(built_book, browser):
    blocked: list[str] = []
    context = browser.new_context(viewport={"width": 1300, "height": 900})
    # No network: anything that is not a local file is refused, as on an offline laptop.
    context.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file:")
                  else (blocked.append(route.request.url), route.abort()))

    def _open(doc: str):
        page = context.new_page()
        page.goto((built_book / f"{doc}.html").as_uri(), wait_until="load")
        page.wait_for_function("Array.from(document.images).every(i => i.complete)")
        return page

    yield _open
    context.close()


def _shot(page, doc: str) -> None:
    out = HTML.parent / "screenshots"
    out.mkdir(exist_ok=True)
    page.screenshot(path=str(out / f"{Path(doc).name}.png"), full_page=True)


@pytest.mark.parametrize("doc", PAGES)
def test_page_shows_its_figures_and_no_errors(open_page, doc):
    page = open_page(doc)
    _shot(page, doc)
    # A cell tagged raises-exception shows an error on purpose; nothing else may.
    unexpected = page.locator("article .cell:not(.tag_raises-exception)")
    text = " ".join(unexpected.all_inner_texts())
    assert "Traceback (most recent call last)" not in text
    assert page.locator("article .cell:not(.tag_raises-exception) .output.traceback").count() == 0
    assert page.locator("article .cell:not(.tag_raises-exception) .output.error").count() == 0
    stderr = " ".join(page.locator("article .output.stderr").all_inner_texts())
    assert "Error" not in stderr and "Warning" not in stderr, stderr[:500]
    images = page.eval_on_selector_all(
        "article img", "els => els.map(e => ({w: e.naturalWidth, alt: e.alt, src: e.src.slice(0, 80)}))")
    for image in images:
        assert image["w"] > 0, f"image did not load: {image['src']}"
        assert image["alt"].strip(), f"image without alt text: {image['src']}"
    if doc in CHAPTERS:
        assert len(images) >= 3, "a chapter shows its figures"


@pytest.mark.parametrize("doc", NOTEBOOK_PAGES)
def test_colab_button_opens_this_chapter(open_page, doc):
    page = open_page(doc)
    links = page.eval_on_selector_all("a[href*='colab.research.google.com']",
                                      "els => els.map(e => e.href)")
    repo = CONFIG["repository"]["url"].removeprefix("https://github.com/")
    expected = f"https://colab.research.google.com/github/{repo}/blob/main/{doc}.ipynb"
    assert expected in links, links


@pytest.mark.parametrize("doc", CHAPTERS)
def test_every_slider_changes_the_picture(open_page, doc):
    page = open_page(doc)
    sliders = page.locator(".maskutils-slider")
    assert sliders.count() >= 1, "each chapter has a kernel-free slider"
    for i in range(sliders.count()):
        slider = sliders.nth(i)
        slider.scroll_into_view_if_needed()
        knob = slider.locator("input[type=range]")
        last = knob.get_attribute("max")
        start = knob.input_value()
        target = "0" if start != "0" else last
        before = (slider.locator("img").get_attribute("src"), slider.locator("output").inner_text())
        knob.fill(target)
        after = (slider.locator("img").get_attribute("src"), slider.locator("output").inner_text())
        assert after[0] != before[0], f"slider {i} on {doc}: the picture did not change"
        assert after[1] != before[1], f"slider {i} on {doc}: the label did not change"
        assert slider.locator("img").evaluate("i => i.complete && i.naturalWidth > 0")


@pytest.mark.parametrize("doc", NOTEBOOK_PAGES)
def test_printed_output_fits_the_page_without_scrolling(open_page, doc):
    # A reader should not scroll sideways to read a number a claim rests on.
    page = open_page(doc)
    wide = page.eval_on_selector_all(
        "article .cell:not(.tag_raises-exception) .cell_output pre",
        "els => els.filter(e => e.scrollWidth > e.clientWidth + 1)"
        ".map(e => e.innerText.split('\\n').reduce((a, b) => b.length > a.length ? b : a))")
    assert not wide, f"{doc}: output lines too wide for the page: {wide}"
