"""The examples in the docstrings run and print what they say (those marked +SKIP need real runs or files)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import mnistlab

MODULES = sorted(m.name for m in pkgutil.walk_packages(mnistlab.__path__, "mnistlab.") if not m.name.endswith("__main__"))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS, report=True)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name} (printed above)"
