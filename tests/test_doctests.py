"""The examples in maskutils' docstrings run and print what they show."""
import doctest
import importlib
import pkgutil

import pytest

import maskutils

MODULES = sorted(m.name for m in pkgutil.iter_modules(maskutils.__path__)
                 if not m.name.startswith("_"))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(f"maskutils.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0


def test_every_public_function_has_an_example():
    missing = []
    for name in MODULES:
        module = importlib.import_module(f"maskutils.{name}")
        for attr in getattr(module, "__all__", None) or dir(module):
            obj = getattr(module, attr)
            if attr.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            if callable(obj) and ">>>" not in (obj.__doc__ or "") and ">>>" not in (module.__doc__ or ""):
                missing.append(f"{name}.{attr}")
    assert not missing, f"docstrings without an example: {missing}"
