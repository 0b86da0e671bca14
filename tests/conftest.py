"""Shared test setup: one CPU thread, a headless matplotlib, figures closed after each test."""
from __future__ import annotations

import contextlib
import sys

import matplotlib
import pytest
import torch

matplotlib.use("Agg")  # only the tests force a backend; the package never does
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")


def snapshot(module: torch.nn.Module) -> dict:
    """Everything a failed call must leave alone: state_dict, parameter objects, parametrization."""
    from torch.nn.utils import parametrize

    return {
        "state": {k: v.detach().clone() for k, v in module.state_dict().items()},
        "params": dict(module.named_parameters()),
        "parametrized": parametrize.is_parametrized(module),
        "class": type(module),
    }


def assert_unchanged(module: torch.nn.Module, before: dict) -> None:
    after = snapshot(module)
    assert list(after["state"]) == list(before["state"])
    for key, value in before["state"].items():
        assert after["state"][key].dtype == value.dtype, key
        assert torch.equal(after["state"][key], value), key
    assert after["params"].keys() == before["params"].keys()
    for name, p in before["params"].items():
        assert after["params"][name] is p, name
    assert after["parametrized"] == before["parametrized"]
    assert after["class"] is before["class"]


@contextlib.contextmanager
def _left_alone(module: torch.nn.Module):
    before = snapshot(module)
    yield
    assert_unchanged(module, before)


@pytest.fixture
def left_alone():
    """``with left_alone(module), pytest.raises(...): bad_call(module)`` checks the call failed
    AND left the module exactly as it was (state_dict, Parameter objects, parametrization)."""
    return _left_alone


@pytest.fixture(scope="session")
def chapter_run():
    """``chapter_run(path)``: the chapter's one execution in this session (see chapter_run.py);
    the first call runs it, later calls (the asserts, the solutions, the book) reuse it."""
    from chapter_run import execute

    runs = {}

    def _run(path):
        if path not in runs:
            runs[path] = execute(path)
        return runs[path]

    return _run
