"""The doctest examples in the pure modules are documentation: keep them true."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "nudge.events",
    "nudge.logs",
    "nudge.settings",
    "nudge.topics",
    "producers.collector",
    "features.lifecycle",
    "features.batch",
    "features.definitions",
    "models.evaluation",
    "models.inputs",
    "models.segments",
    "models.snapshot",
    "streams.clock",
    "streams.trainer",
]


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name))
    assert result.failed == 0
    assert result.attempted > 0 or name == "features.definitions"
