"""The examples in the public docstrings run and print what they claim."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import bovw

MODULES = sorted(
    m.name for m in pkgutil.walk_packages(bovw.__path__, "bovw.") if m.name not in ("bovw.__main__", "bovw._bovw")
)


@pytest.mark.parametrize("name", ["bovw"] + MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} doctest failures in {name}"
