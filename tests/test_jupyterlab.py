"""Chapter 1 in a real JupyterLab with a real kernel, driven by Debian's Chromium.

What a reader does after `pip install -r requirements.txt` and `jupyter lab book/`: open a
chapter, Run All Cells, move a slider, save, come back later. The test starts `jupyter lab`
(127.0.0.1, a token, no browser, a free port, a copy of the chapter in a temporary folder, its
own settings, workspace and runtime folders, so nothing is left in the repository or in the
user's Jupyter settings), blocks every request that does not go to that server (an offline
laptop: no CDN), and checks

- that Run All Cells gives no error output outside the cells tagged `raises-exception`, and
  no "Error displaying widget" or "Javascript Error";
- that a slider changes its figure when dragged with the mouse and moved with an arrow key;
- that after saving, stopping the kernel that made the outputs and reopening the notebook,
  every slider still shows its figure and still moves, with a new kernel and with none.

The server is stopped through its process group even when a check fails. Like
tests/test_book.py, the test is skipped without chromium or playwright, unless
MASKUTILS_REQUIRE_BROWSER=1 (CI) makes that a failure.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from test_book import browser  # noqa: F401  (the fixture: Debian's chromium via Playwright)

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = ROOT / "book" / "01_masks_and_heatmaps.ipynb"  # the cheapest chapter
NAME = CHAPTER.name
WIDGET_ERROR = "Error displaying widget"
TIMINGS: dict[str, float] = {}  # printed at the end of the module (pytest -s shows them)

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX process groups")

# JupyterLab settings for the test's own settings folder: every cell stays in the page
# (the default windowing leaves off-screen cells out of the DOM), and no news or update
# check is fetched from the internet.
SETTINGS = {
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false",
                                                     "checkForUpdates": False},
}

# The notebook's cells as the page shows them: index, type, tags, output text, sliders.
CELLS_JS = """() => {
  const panel = window.jupyterapp.shell.currentWidget;
  return panel.content.widgets.map((cell, index) => ({
    index, type: cell.model.type,
    output: cell.node.querySelector('.jp-OutputArea') ?
            cell.node.querySelector('.jp-OutputArea').innerText : '',
    sliders: cell.node.querySelectorAll('.maskutils-slider').length}));
}"""

KERNEL_IDLE_JS = """() => {
  const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  const session = panel && panel.sessionContext;
  return Boolean(session && session.isReady && session.session && session.session.kernel &&
                 session.session.kernel.status === 'idle');
}"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Lab:
    """A running `jupyter lab`: its URL, token, folder and process."""

    def __init__(self, folder: Path, home: Path):
        self.folder, self.token, self.port = folder, secrets.token_hex(16), _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        settings = home / "settings"
        for plugin, values in SETTINGS.items():
            path = settings / f"{plugin}.jupyterlab-settings"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(values))
        env = dict(os.environ, JUPYTERLAB_SETTINGS_DIR=str(settings),
                   JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"),
                   JUPYTER_RUNTIME_DIR=str(home / "runtime"),
                   JUPYTER_CONFIG_DIR=str(home / "config"),
                   JUPYTER_DATA_DIR=str(home / "data"),   # notebook signatures go here
                   OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        env.pop("MPLBACKEND", None)  # Agg would drop the inline figures
        command = [sys.executable, "-m", "jupyterlab", "--no-browser",
                   "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}",
                   "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}",
                   f"--ServerApp.root_dir={folder}",
                   "--LabApp.expose_app_in_browser=True"]  # window.jupyterapp: its commands
        if os.geteuid() == 0:
            command.append("--allow-root")  # JupyterLab refuses root without it (containers)
        self.log = home / "server.log"
        with open(self.log, "w") as log:
            # A process group of its own, so that stop() ends the server and its children.
            self.process = subprocess.Popen(command, env=env, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)

    def api(self, path: str, method: str = "GET"):
        request = urllib.request.Request(f"{self.url}{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None

    def wait_until_up(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"jupyter lab exited with {self.process.returncode}:\n{self.tail()}")
            try:
                self.api("/api/status")
                return
            except OSError:
                time.sleep(0.3)
        pytest.fail(f"jupyter lab did not answer within {timeout} s:\n{self.tail()}")

    def stop_kernels(self) -> None:
        """End every session (and its kernel): what closing the notebook for good does."""
        for session in self.api("/api/sessions"):
            self.api(f"/api/sessions/{session['id']}", method="DELETE")

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                self.stop_kernels()
            except OSError:
                pass
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def tail(self) -> str:
        return self.log.read_text()[-3000:] if self.log.exists() else ""


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    home = tmp_path_factory.mktemp("jupyterlab")
    folder = home / "notebooks"
    folder.mkdir()
    shutil.copy(CHAPTER, folder / NAME)
    start = time.monotonic()
    server = Lab(folder, home)
    try:
        server.wait_until_up()
        TIMINGS["server start"] = time.monotonic() - start
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def context(browser, lab):  # noqa: F811  (browser first: no server when the test is skipped)
    blocked: list[str] = []
    context = browser.new_context(viewport={"width": 1300, "height": 900})
    # Offline: only the local server answers; a CDN request would fail here as on a laptop.
    context.route("**/*", lambda route: route.continue_()
                  if route.request.url.startswith(lab.url)
                  else (blocked.append(route.request.url), route.abort()))
    context.blocked = blocked
    yield context
    context.close()


def _open(context, lab):
    page = context.new_page()
    page.console_errors = []
    page.on("console", lambda m: m.type == "error" and page.console_errors.append(m.text))
    page.goto(f"{lab.url}/lab/tree/{NAME}?token={lab.token}")
    page.wait_for_function(KERNEL_IDLE_JS, timeout=90_000)
    return page


def _cells(page) -> list[dict]:
    return page.evaluate(CELLS_JS)


def _move_slider(page, index: int = 0) -> list[tuple[str, str]]:
    """Drag slider ``index`` to its left end, then press the right arrow: (label, src) each."""
    slider = page.locator(".maskutils-slider").nth(index)
    slider.scroll_into_view_if_needed()
    knob, picture, label = (slider.locator(s) for s in ("input[type=range]", "img", "output"))

    def seen():
        assert picture.evaluate("i => i.complete && i.naturalWidth > 0"), "the figure shows"
        return label.inner_text(), picture.get_attribute("src")

    states = [seen()]
    box = knob.bounding_box()
    middle = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] / 2, middle)
    page.mouse.down()
    page.mouse.move(box["x"] + 1, middle, steps=4)
    page.mouse.up()
    states.append(seen())
    knob.press("ArrowRight")
    states.append(seen())
    return states


@pytest.fixture(scope="module")
def ran(context, lab):
    """The chapter after Run All Cells and Save, as the page shows it and as saved."""
    start = time.monotonic()
    page = _open(context, lab)
    TIMINGS["open the notebook"] = time.monotonic() - start
    start = time.monotonic()
    # The command behind Run > Run All Cells; it resolves when the last cell has run.
    page.evaluate("""() => Promise.race([
        window.jupyterapp.commands.execute('notebook:run-all-cells'),
        new Promise((_, reject) => setTimeout(() => reject(new Error('over 150 s')), 150000))])""")
    page.wait_for_function(KERNEL_IDLE_JS, timeout=120_000)
    TIMINGS[f"Run All Cells of {NAME}"] = time.monotonic() - start
    page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
    saved = json.loads((lab.folder / NAME).read_text())
    return page, saved


def _raises(cell: dict) -> bool:
    return "raises-exception" in cell["metadata"].get("tags", [])


def test_run_all_cells_shows_no_error_outside_raises_exception_cells(ran, context):
    page, saved = ran
    code = [c for c in saved["cells"] if c["cell_type"] == "code"]
    assert all(c["execution_count"] for c in code), "Run All Cells ran every code cell"
    failed = [i for i, c in enumerate(saved["cells"]) if c["cell_type"] == "code"
              and any(o["output_type"] == "error" for o in c["outputs"]) and not _raises(c)]
    assert not failed, f"error output in cells {failed} (not tagged raises-exception)"
    shown = _cells(page)
    bad = [(c["index"], c["output"][:300]) for c in shown
           if WIDGET_ERROR in c["output"] or "Javascript Error" in c["output"]]
    assert not bad, bad
    assert not page.console_errors, (page.console_errors, context.blocked)


def test_a_slider_changes_its_figure_when_moved(ran):
    page, _ = ran
    assert page.locator(".maskutils-slider").count() >= 1, "the chapter has a slider"
    start, dragged, stepped = _move_slider(page)
    assert dragged != start, "dragging the slider changed neither label nor figure"
    assert dragged[0] != start[0] and dragged[1] != start[1]
    assert stepped[0] != dragged[0] and stepped[1] != dragged[1], "the arrow key moved it"


@pytest.fixture(scope="module")
def reopened(context, lab, ran):
    """The saved notebook opened again after its kernel, with every widget model, is gone."""
    page, saved = ran
    page.close()
    lab.stop_kernels()
    start = time.monotonic()
    page = _open(context, lab)  # a new kernel, which holds none of the old outputs' objects
    page.wait_for_function("() => Array.from(document.querySelectorAll('.maskutils-slider img'))"
                           ".every(i => i.complete)", timeout=30_000)
    TIMINGS["reopen the saved notebook"] = time.monotonic() - start
    return page, saved


def test_reopened_notebook_still_shows_and_moves_its_sliders(reopened):
    page, saved = reopened
    shown = _cells(page)
    with_slider = [c for c in shown if "Slider(" in "".join(saved["cells"][c["index"]]["source"])]
    assert with_slider and all(c["sliders"] == 1 for c in with_slider), with_slider
    assert not [c["index"] for c in with_slider if WIDGET_ERROR in c["output"]]
    start, dragged, stepped = _move_slider(page)
    assert dragged[1] != start[1] and stepped[1] != dragged[1]
    # With no kernel at all, the slider is the same: nothing in it lives in a kernel.
    page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.shutdown()")
    page.wait_for_function("() => !window.jupyterapp.shell.currentWidget.sessionContext"
                           ".session", timeout=30_000)
    start, dragged, stepped = _move_slider(page)
    assert dragged[1] != start[1] and stepped[1] != dragged[1]


def test_reopened_notebook_shows_no_widget_error(reopened):
    page, _ = reopened
    errors = [c["index"] for c in _cells(page) if WIDGET_ERROR in c["output"]]
    assert not errors, f"'{WIDGET_ERROR}' in reopened cells {errors}"


def teardown_module():
    for what, seconds in TIMINGS.items():
        print(f"jupyterlab test: {what}: {seconds:.1f} s")
