"""The worker's consumer lag (`faust_internals.Consumer.lag`): log end minus the next offset it expects."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from faust.types import TP

from streams.faust_internals import Consumer


def test_lag_is_the_log_end_past_the_next_expected_offset_of_each_owned_input_partition() -> None:
    clicks0, clicks1, changelog, fresh = (
        TP("clicks", 0),
        TP("clicks", 1),
        TP("app-user-state-changelog", 0),
        TP("clicks", 2),
    )
    highwaters = {clicks0: 120, clicks1: 50, changelog: 9_999, fresh: None}
    fake: Any = SimpleNamespace(
        assignment=lambda: {clicks0, clicks1, changelog, fresh},
        app=SimpleNamespace(topics=SimpleNamespace(acks_enabled_for=lambda topic: topic == "clicks")),
        highwater=highwaters.get,
        _expect={clicks0: 100, clicks1: 50, fresh: 7},
    )
    # clicks[0]: 20 behind; clicks[1]: caught up; the changelog is not input; clicks[2]: no fetch answered yet
    assert Consumer.lag(fake) == {("clicks", 0): 20, ("clicks", 1): 0}
