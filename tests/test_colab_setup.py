"""A chapter runs in Colab-like isolation: maskutils missing, torch present.

A fresh virtual environment sees the test environment's packages (torch, matplotlib, ...)
through a filtered view that leaves maskutils out, as Colab has torch but not maskutils.
The chapter's setup cell must then install maskutils from MASKUTILS_SOURCE (here a copy of
this checkout) without touching torch, and the chapter must run top to bottom.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = ROOT / "book" / "01_masks_and_heatmaps.ipynb"


def _packages_without_maskutils(view: Path) -> None:
    """Symlink every installed package except maskutils into ``view``."""
    site = Path(sysconfig.get_paths()["purelib"])
    view.mkdir()
    for entry in site.iterdir():
        if "maskutils" in entry.name.lower() or entry.suffix == ".pth":
            continue
        (view / entry.name).symlink_to(entry)


def _isolated_python(tmp: Path) -> Path:
    env_dir = tmp / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    inner_site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True).stdout.strip()
    view = tmp / "packages"
    _packages_without_maskutils(view)
    Path(inner_site, "outer-packages.pth").write_text(f"{view}\n")
    return python


def _kernel_spec(tmp: Path, python: Path) -> Path:
    spec_dir = tmp / "jupyter" / "kernels" / "isolated"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "isolated", "language": "python"}))
    return tmp / "jupyter"


def _source_copy(tmp: Path) -> Path:
    copy = tmp / "maskutils-source"
    copy.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, copy / name)
    shutil.copytree(ROOT / "maskutils", copy / "maskutils",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return copy


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX paths and symlinks")
def test_chapter_installs_maskutils_and_runs_in_isolation(tmp_path, monkeypatch):
    python = _isolated_python(tmp_path)
    probe = "import importlib.util as u; print(u.find_spec('maskutils') is None)"
    missing = subprocess.run([str(python), "-c", probe], cwd=tmp_path,
                             capture_output=True, text=True, check=True)
    assert missing.stdout.strip() == "True", "the isolated env must start without maskutils"
    torch_before = subprocess.run([str(python), "-c", "import torch; print(torch.__file__)"],
                                  capture_output=True, text=True, check=True).stdout

    monkeypatch.setenv("JUPYTER_PATH", str(_kernel_spec(tmp_path, python)))
    monkeypatch.setenv("MASKUTILS_SOURCE", str(_source_copy(tmp_path)))
    monkeypatch.setenv("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    monkeypatch.delenv("MPLBACKEND", raising=False)
    notebook = nbformat.read(CHAPTER, as_version=4)
    NotebookClient(notebook, kernel_name="isolated", timeout=600,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()

    installed = subprocess.run([str(python), "-c", "import maskutils; print(maskutils.__file__)"],
                               cwd=tmp_path, capture_output=True, text=True, check=True)
    assert str(tmp_path / "venv") in installed.stdout, "maskutils went into the isolated env"
    torch_after = subprocess.run([str(python), "-c", "import torch; print(torch.__file__)"],
                                 capture_output=True, text=True, check=True).stdout
    assert torch_after == torch_before, "the setup cell must not reinstall torch"
    banner = "".join(o.get("text", "") for o in notebook.cells[2].outputs)
    assert banner.startswith("device: ")


def _setup_cell() -> str:
    notebook = nbformat.read(CHAPTER, as_version=4)
    return next(cell.source for cell in notebook.cells if cell.cell_type == "code")


def test_failed_install_says_what_failed_and_what_to_try(tmp_path):
    missing = tmp_path / "no-such-clone"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_"))}
    env.update(MASKUTILS_SOURCE=str(missing), PIP_DISABLE_PIP_VERSION_CHECK="1",
               PIP_NO_INDEX="1", PIP_NO_INPUT="1")
    # -S: no site-packages, so maskutils is missing as on Colab; the cell's own pip runs
    # as sys.executable without -S and sees its packages.
    run = subprocess.run([sys.executable, "-S", "-c", _setup_cell()], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert f"installing maskutils from {missing}" in run.stdout
    lines = run.stderr.strip().splitlines()
    last = lines[-1]
    assert last.startswith("RuntimeError: pip could not install maskutils from "), last
    assert str(missing) in last
    assert "pip install -r requirements.txt" in last and "clone" in last
    assert "MASKUTILS_SOURCE=/path/to/clone" in last
    # pip's reason is shown, its nested noise is not: one traceback (the cell's), short.
    assert str(missing) in "\n".join(lines[:-1]), run.stderr
    assert run.stderr.count("Traceback") == 1 and "CalledProcessError" not in run.stderr
    assert len(lines) <= 10, run.stderr
