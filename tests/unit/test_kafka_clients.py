"""The command-line Kafka clients: kafka-python's retry lines kept out of the
terminal at default verbosity (and shown with -v), the one line that replaces
them, and Kafka's topic name rule."""

from __future__ import annotations

import doctest
import logging

import pytest

import nudge.kafka_clients
import nudge.topics
from nudge.kafka_clients import QuietKafkaLogs, quiet_kafka_logs, unreachable
from nudge.settings import Settings
from nudge.topics import topic_name_problem

# Lines kafka-python 3.0 logs while a broker at 127.0.0.1:1 refuses connections.
RETRY_LINES = [
    (logging.ERROR, "kafka.net.manager", "Connection failed: KafkaConnectionError: 111 ECONNREFUSED"),
    (logging.WARNING, "kafka.net.manager", "Bootstrap bootstrap-0 not ready; waiting 0.11 secs"),
    (logging.ERROR, "kafka.cluster", "Topic no-such-topic not found in cluster metadata"),
    (logging.ERROR, "kafka.net.manager", "Bootstrap failed: KafkaTimeoutError: Unable to bootstrap from 127.0.0.1:1"),
    # its I/O loop's watchdog on a busy machine (a soak run printed dozens)
    (
        logging.WARNING,
        "kafka.net.selector",
        "Task <kafka.net.selector.Task object at 0x7f83> ran for 0.171s (>0.100s threshold). It is blocking the "
        "event loop -- likely a tight sync loop inside a coroutine. Other pollers will time out.",
    ),
]


@pytest.mark.parametrize("module", [nudge.kafka_clients, nudge.topics])
def test_doctests(module: object) -> None:
    result = doctest.testmod(module)  # type: ignore[arg-type]
    assert result.failed == 0 and result.attempted > 0


def test_retry_lines_are_dropped_at_default_verbosity_and_remembered(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logging.getLogger(), "level", logging.WARNING)
    quiet = QuietKafkaLogs()
    for level, name, message in RETRY_LINES:
        record = logging.LogRecord(name, level, __file__, 1, message, None, None)
        assert quiet.filter(record) is False, message
    assert quiet.dropped == len(RETRY_LINES)
    assert quiet.cause == "KafkaConnectionError: 111 ECONNREFUSED"  # not the time-out that follows it
    other = logging.LogRecord("kafka.producer", logging.WARNING, __file__, 1, "something else", None, None)
    assert quiet.filter(other) is True


def test_retry_lines_show_with_verbose(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logging.getLogger(), "level", logging.INFO)
    level, name, message = RETRY_LINES[0]
    assert QuietKafkaLogs().filter(logging.LogRecord(name, level, __file__, 1, message, None, None)) is True


def test_the_filter_sits_on_every_kafka_logger() -> None:
    import kafka.net.manager  # noqa: F401 - creates the library's loggers

    quiet = quiet_kafka_logs()
    assert quiet in logging.getLogger("kafka").filters
    assert quiet in logging.getLogger("kafka.net.manager").filters


def test_the_unreachable_line_names_the_address_and_what_to_do() -> None:
    settings = Settings.from_env({"NUDGE_KAFKA_BOOTSTRAP": "10.0.0.1:9092"})
    line = unreachable(settings)
    assert "\n" not in line
    assert "10.0.0.1:9092" in line and "nudge stack up" in line and "NUDGE_KAFKA_BOOTSTRAP" in line


@pytest.mark.parametrize(
    ("name", "says"),
    [("", "empty"), ("a" * 250, "250 characters"), (".", "reserves"), ("b=c", "('=')"), ("my\tclicks", "'\\t'")],
)
def test_topic_name_problem(name: str, says: str) -> None:
    problem = topic_name_problem(name)
    assert problem is not None and says in problem
    assert topic_name_problem("a" * 249) is None
