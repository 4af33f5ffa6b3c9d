"""The doctest examples in models/ are documentation: keep them true."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "models.evaluation",
    "models.inputs",
    "models.segments",
    "models.snapshot",
]


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name))
    assert result.failed == 0
    assert result.attempted > 0
