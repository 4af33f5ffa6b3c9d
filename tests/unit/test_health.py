"""Dependency health (streams/health.py): one log line per dependency per
interval while it is down, whatever the client libraries print."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry, Gauge

from streams.health import DependencyHealth, QuietClientLogs


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def health(clock: Clock) -> DependencyHealth:
    gauge = Gauge("up", "doc", ["dependency"], registry=CollectorRegistry())
    return DependencyHealth(gauge, interval_s=30.0, clock=clock)


def up(health: DependencyHealth, dependency: str) -> float:
    return float(health.gauge.labels(dependency)._value.get())  # type: ignore[attr-defined]


def test_an_outage_is_logged_once_per_interval_and_its_end_once(
    health: DependencyHealth, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    health.known("kafka", "redis")
    assert up(health, "kafka") == up(health, "redis") == 1
    caplog.set_level(logging.WARNING, logger="nudge.health")
    for second in range(0, 65):  # 10 failures a second for 65 s
        clock.now = float(second)
        for _ in range(10):
            health.failed("kafka", ConnectionRefusedError("refused"))
    assert up(health, "kafka") == 0 and up(health, "redis") == 1
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines  # at 0 s, 30 s and 60 s
    assert "kafka connections failing" in lines[0] and "ConnectionRefusedError: refused" in lines[0]
    assert "still failing after 30 s (300 failed attempts" in lines[1]
    clock.now = 70.0
    assert health.ok("kafka") and not health.ok("kafka")
    assert up(health, "kafka") == 1
    assert caplog.records[-1].getMessage() == "kafka connections work again after 70.0 s"


def test_recovery_by_quiet_needs_no_failure_for_the_whole_quiet_time(health: DependencyHealth, clock: Clock) -> None:
    health.failed("kafka", "refused")
    clock.now = 5.0
    health.failed("kafka", "refused")
    clock.now = 10.0
    assert not health.recover_if_quiet("kafka", quiet_s=6.0)
    clock.now = 11.0
    assert health.recover_if_quiet("kafka", quiet_s=6.0) and health.is_up("kafka")


def test_client_connection_errors_become_reports_not_log_lines(
    health: DependencyHealth, caplog: pytest.LogCaptureFixture
) -> None:
    import aiokafka.consumer.fetcher  # imported before install, as in the worker (faust imports it)

    QuietClientLogs.install(health, "kafka", ("aiokafka",))
    # A child logger: a filter on the parent would not see its records.
    fetcher = logging.getLogger(aiokafka.consumer.fetcher.__name__)
    caplog.set_level(logging.INFO)
    for _ in range(100):
        fetcher.error("Failed fetch messages from 1: NodeNotReadyError: Attempt to send a request")
        logging.getLogger("aiokafka").error("Unable connect to node with id 1: [Errno 111] Connect call failed")
    fetcher.error("Unexpected error in fetcher routine")  # not a connection error: it stays
    fetcher.info("Adding fetch request")  # below WARNING: untouched
    messages = [r.getMessage() for r in caplog.records]
    assert not health.is_up("kafka")
    assert sum("kafka connections failing" in m for m in messages) == 1
    assert not any("NodeNotReady" in m and "failing" not in m for m in messages)
    assert "Unexpected error in fetcher routine" in messages and "Adding fetch request" in messages
