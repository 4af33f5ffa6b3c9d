"""kafka-python clients for the command-line tools: up within seconds, or one line.

kafka-python waits 30 s by default for its first bootstrap and logs every
failed attempt (21 lines for an unreachable broker, 580 for a missing topic).
A tool run from a terminal should instead fail within a few seconds with one
line naming the address. `connect` builds any kafka-python client that way: it
bootstraps eagerly with a short timeout and maps the failure to
`DependencyUnavailable`. `QuietKafkaLogs` keeps the library's connection
retries out of the terminal at default verbosity (with `-v` they show) and
remembers the last one, so the one line can say what went wrong.

The stream worker has its own filter (streams/health.py) that turns aiokafka's
lines into health reports; the layers contract keeps this kernel from
importing it, and a short-lived tool wants them dropped, not reported.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any, TypeVar

from kafka.errors import KafkaError

from nudge.errors import DependencyUnavailable
from nudge.kafka_security import client_config, explain, misconfiguration, probe
from nudge.settings import Settings

__all__ = ["BOOTSTRAP_TIMEOUT_S", "QuietKafkaLogs", "connect", "quiet_kafka_logs", "unreachable"]

BOOTSTRAP_TIMEOUT_S = 5.0

_Client = TypeVar("_Client")

# What kafka-python (3.x) logs on each failed connection attempt, retried request
# or metadata refresh for an unknown topic, and while it retries a refused batch.
_RETRY_NOISE = re.compile(
    r"Connection (?:failed|lost|refused|reset|closed)|Bootstrap|not ready|Unable (?:to )?(?:connect|bootstrap)|"
    r"Unable to update metadata|not found in cluster metadata|KafkaConnectionError|NodeNotReady|"
    r"Got error produce response|Error sending .*Request|RequestTimedOut|ECONNREFUSED|timed out|DNS lookup failed|"
    # a refused batch: split and retried, then failed; the message's future carries the outcome
    r"splitting batch and retrying|Failed to produce messages|Aborting producer batches|"
    # a connection the broker refused: a failed authentication or TLS handshake (named by the one line)
    r"Abort \(|socket disconnected|Handshake failed|Authentication failed|"
    # kafka-python's watchdog on its own I/O loop, when the process is busy: not the user's to act on
    r"ran for [0-9.]+s \(>[0-9.]+s threshold\)",
    re.IGNORECASE,
)


class QuietKafkaLogs(logging.Filter):
    """Drops kafka-python's connection-retry lines while the root level is above INFO.

    Attached to the `kafka` logger and every `kafka.*` logger that exists when
    `install` runs (a filter on a parent logger does not see its children's
    records). `dropped` counts the lines kept out; `cause` is the latest
    connection error among them, without the bootstrap time-out that follows it;
    `security` the latest line saying the security settings are wrong (a failed
    authentication or certificate check), which a retry must not hide.
    """

    def __init__(self) -> None:
        super().__init__()
        self.dropped = 0
        self.cause = ""
        self.security = ""

    def install(self) -> None:
        names = [n for n in logging.root.manager.loggerDict if n.split(".", 1)[0] == "kafka"]
        for name in {"kafka", *names}:
            logger = logging.getLogger(name)
            if self not in logger.filters:
                logger.addFilter(self)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or logging.getLogger().getEffectiveLevel() <= logging.INFO:
            return True
        message = record.getMessage()
        if misconfiguration(message):
            self.security = message[:500]
        if not _RETRY_NOISE.search(message):
            return True
        self.dropped += 1
        cause = _cause(message)
        if cause:
            self.cause = cause
        return False


_QUIET = QuietKafkaLogs()


def quiet_kafka_logs() -> QuietKafkaLogs:
    """The process's filter, installed on every kafka-python logger known by now."""
    _QUIET.install()
    return _QUIET


def _cause(message: str) -> str:
    """The error a retry line reports, e.g. "KafkaConnectionError: 111 ECONNREFUSED".

    >>> _cause("Connection failed: KafkaConnectionError: 111 ECONNREFUSED")
    'KafkaConnectionError: 111 ECONNREFUSED'
    >>> _cause("Bootstrap connection to b-0 failed: KafkaConnectionError: 111 ECONNREFUSED (backoff 0.11 secs)")
    'KafkaConnectionError: 111 ECONNREFUSED'
    >>> _cause("Bootstrap failed: KafkaTimeoutError: Unable to bootstrap from x:1")
    ''
    """
    if message.startswith("DNS lookup failed"):
        return message[:160]
    match = re.search(r"\b(\w+Error: .*)$", message)
    if match is None or match.group(1).startswith("KafkaTimeoutError"):
        return ""
    return re.sub(r"\s*\(backoff [^)]*\)$", "", match.group(1))[:160]


def unreachable(settings: Settings) -> str:
    """The one line saying Kafka cannot be reached at the configured address, and what to do
    (or that it refused the security settings: a wrong password or CA)."""
    refused = explain(settings, _QUIET.security) if _QUIET.security else None
    if refused:
        return refused
    cause = _QUIET.cause
    because = f" ({cause})" if cause else ""
    return (
        f"Kafka is not reachable at {settings.kafka_bootstrap}: no broker answered within "
        f"{BOOTSTRAP_TIMEOUT_S:g} s{because}; start the local stack with `nudge stack up` "
        "or set NUDGE_KAFKA_BOOTSTRAP to your brokers"
    )


def connect(factory: Callable[..., _Client], settings: Settings, **config: Any) -> _Client:
    """`factory(bootstrap_servers=..., **config)` (a kafka-python client class) with the security
    settings (nudge/kafka_security.py), bootstrapped within BOOTSTRAP_TIMEOUT_S or
    `DependencyUnavailable` naming the address."""
    quiet = quiet_kafka_logs()
    quiet.cause = quiet.security = ""
    config.setdefault("bootstrap_timeout_ms", int(BOOTSTRAP_TIMEOUT_S * 1000))
    config = {**client_config(settings), **config}
    try:
        return factory(bootstrap_servers=settings.kafka_bootstrap, **config)
    except KafkaError as exc:
        message = explain(settings, exc) or unreachable(settings)
        if message.startswith("Kafka is not reachable"):
            message = probe(settings) or message  # kafka-python may hide a refused login (see `probe`)
        raise DependencyUnavailable(message) from None
    except ValueError as exc:  # a malformed address, e.g. a port that is not a number
        raise DependencyUnavailable(
            f"Kafka bootstrap address {settings.kafka_bootstrap!r} is not valid ({exc})"
        ) from None
