"""Is each dependency (Kafka, Redis) up? One log line per dependency per
interval while it is down, and a gauge that says which one is.

Client libraries retry on their own and log every failed attempt: aiokafka
printed about 800 "Unable connect" lines in 8 s of broker outage. Here every
failure is *reported* (`failed`), but a warning is logged only when the
dependency goes down and then at most once per `interval_s` while it stays
down (with the number of failures since the last line); `ok` logs once when
it is back. `nudge_dependency_up{dependency}` is 1 or 0 throughout.

`QuietClientLogs` is the logging filter that turns the client libraries'
connection-error lines into `failed` reports instead of log lines.

>>> from prometheus_client import CollectorRegistry, Gauge
>>> gauge = Gauge("up", "doc", ["dependency"], registry=CollectorRegistry())
>>> clock = iter([0.0, 1.0, 2.0, 31.0, 40.0]).__next__
>>> health = DependencyHealth(gauge, interval_s=30.0, clock=clock)
>>> [health.failed("kafka", "refused") for _ in range(4)]
[True, False, False, True]
>>> health.ok("kafka")
True
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import Gauge

__all__ = ["DependencyHealth", "QuietClientLogs"]

log = logging.getLogger("nudge.health")


@dataclass(slots=True)
class _Down:
    since: float
    last_logged: float
    last_failure: float
    failures: int = 0


class DependencyHealth:
    def __init__(self, gauge: Gauge, *, interval_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.gauge = gauge
        self.interval_s = interval_s
        self.clock = clock
        self._down: dict[str, _Down] = {}

    def known(self, *dependencies: str) -> None:
        """Declare dependencies up (so the gauge exports them from the start)."""
        for dependency in dependencies:
            if dependency not in self._down:
                self.gauge.labels(dependency).set(1)

    def is_up(self, dependency: str) -> bool:
        return dependency not in self._down

    def failed(self, dependency: str, error: BaseException | str) -> bool:
        """Report a failed attempt; True when it was logged."""
        now = self.clock()
        down = self._down.get(dependency)
        self.gauge.labels(dependency).set(0)
        if down is None:
            self._down[dependency] = _Down(since=now, last_logged=now, last_failure=now)
            log.warning(
                "%s connections failing (%s); retrying, next report in %.0f s",
                dependency,
                _short(error),
                self.interval_s,
            )
            return True
        down.failures += 1
        down.last_failure = now
        if now - down.last_logged < self.interval_s:
            return False
        log.warning(
            "%s connections still failing after %.0f s (%d failed attempts since the last report; latest: %s)",
            dependency,
            now - down.since,
            down.failures,
            _short(error),
        )
        down.last_logged = now
        down.failures = 0
        return True

    def recover_if_quiet(self, dependency: str, quiet_s: float) -> bool:
        """Declare a dependency back when no failure was reported for `quiet_s`
        (a client that reconnected stops failing; with no traffic, nothing
        else would tell). True when it ended an outage."""
        down = self._down.get(dependency)
        if down is None or self.clock() - down.last_failure < quiet_s:
            return False
        return self.ok(dependency)

    def ok(self, dependency: str) -> bool:
        """Report a success; True when it ended an outage (and was logged)."""
        down = self._down.pop(dependency, None)
        self.gauge.labels(dependency).set(1)
        if down is None:
            return False
        log.warning("%s connections work again after %.1f s", dependency, self.clock() - down.since)
        return True


def _short(error: BaseException | str) -> str:
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    return text.splitlines()[0][:200] if text else "no detail"


# Lines client libraries log on every failed connection attempt or request
# while a broker is unreachable.
_KAFKA_CONNECTION = re.compile(
    r"Unable (?:to )?connect|Unable to update metadata|Connect attempt .* returned error|"
    r"Failed fetch messages from|Got error produce response|Error sending .*Request|"
    r"Heartbeat failed|Coordinator .* is not available|OffsetCommit failed|"
    r"connection (?:was )?(?:refused|closed|reset)|KafkaConnectionError|NodeNotReady|"
    r"Topic .* not found in cluster metadata|RequestTimedOutError|coordinator dead|CoordinatorNotAvailable|"
    r"Group Coordinator Request failed|NotLeaderForPartition|LeaderNotAvailable",
    re.IGNORECASE,
)


class QuietClientLogs(logging.Filter):
    """Turn a client library's connection errors into `DependencyHealth` reports.

    `install` attaches it to every logger of the libraries (`aiokafka`,
    `kafka` and their children: a filter on a parent logger does not see its
    children's records). A record whose message looks like a connection
    failure is reported as a failure of the dependency and dropped; anything
    else passes.
    """

    def __init__(self, health: DependencyHealth, dependency: str) -> None:
        super().__init__()
        self.health = health
        self.dependency = dependency

    @classmethod
    def install(cls, health: DependencyHealth, dependency: str, libraries: tuple[str, ...]) -> QuietClientLogs:
        quiet = cls(health, dependency)
        names = [n for n in logging.root.manager.loggerDict if n.split(".", 1)[0] in libraries]
        for name in {*libraries, *names}:
            logger = logging.getLogger(name)
            if not any(isinstance(f, cls) for f in logger.filters):
                logger.addFilter(quiet)
        return quiet

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        message = record.getMessage()
        if _KAFKA_CONNECTION.search(message):
            self.health.failed(self.dependency, message)
            return False
        return True
