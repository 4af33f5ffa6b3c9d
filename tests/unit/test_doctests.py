"""The doctest examples in the pure modules are documentation: keep them true."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "nudge.args",
    "nudge.events",
    "nudge.kafka_security",
    "nudge.layout",
    "nudge.logs",
    "nudge.notifications",
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
    "triggers.rules",
    "triggers.guardrails",
    "triggers.why",
    "triggers.report",
    "delivery.ledger",
    "delivery.policy",
    "delivery.plan",
    "delivery.results",
    "delivery.fcm",
    "delivery.twilio",
    "delivery.webhook",
    "delivery.mock_providers",
]


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name))
    assert result.failed == 0
    assert result.attempted > 0 or name == "features.definitions"
