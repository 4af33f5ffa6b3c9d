"""Every metric a delivery worker exports (`nudge_delivery_*`), in one place.

Labels are low-cardinality only (channel, outcome, reason): never a user,
a token or a phone number. Served on `NUDGE_DELIVERY_METRICS_PORT` /metrics.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from delivery.plan import DEAD_LETTER_REASONS

__all__ = ["DeliveryMetrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class DeliveryMetrics:
    """The worker's metrics, registered in `registry` (a fresh one per worker)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.sends = Counter(
            "nudge_delivery_sends_total",
            "Provider calls by channel and outcome (ok, retry, ambiguous, invalid_address, permanent)",
            ["channel", "outcome"],
            registry=r,
        )
        self.messages = Counter(
            "nudge_delivery_messages_total",
            "Outbox messages by final outcome (sent, duplicate, unknown, dead_letter, not_ours)",
            ["channel", "outcome"],
            registry=r,
        )
        self.provider_seconds = Histogram(
            "nudge_delivery_provider_latency_seconds",
            "Time of one provider call (token fetch included), by channel",
            ["channel"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.retries = Counter(
            "nudge_delivery_retries_total", "Sends scheduled again after a failure, by channel", ["channel"], registry=r
        )
        self.dead_letters = Counter(
            "nudge_delivery_dead_letters_total", "Messages sent to the outbox's dead-letter topic, by reason",
            ["reason"], registry=r,
        )  # fmt: skip
        self.duplicates_prevented = Counter(
            "nudge_delivery_duplicates_prevented_total",
            "Messages not sent because the send ledger already had them sent (or unknown)",
            ["channel"],
            registry=r,
        )
        self.unknown = Counter(
            "nudge_delivery_unknown_total",
            "Pushes whose delivery cannot be known (a worker died mid-send, a time-out) and that are never re-sent",
            ["channel", "why"],
            registry=r,
        )
        self.resent_after_crash = Counter(
            "nudge_delivery_resent_after_crash_total",
            "Stale claims taken over and sent again with the same idempotency key",
            ["channel"],
            registry=r,
        )
        self.token_feedback = Counter(
            "nudge_delivery_token_feedback_total",
            "profile_update events produced to clear an invalid push token",
            registry=r,
        )
        self.last_commit = Gauge(
            "nudge_delivery_last_commit_timestamp_seconds", "Wall-clock time of the latest Kafka commit", registry=r
        )
        self.in_flight = Gauge(
            "nudge_delivery_in_flight_messages", "Outbox messages read and not finished (waiting included)", registry=r
        )
        self.lag = Gauge(
            "nudge_consumer_lag_messages",
            "Outbox messages not read yet, by topic and partition this worker owns",
            ["topic", "partition"],
            registry=r,
        )
        self.dependency_up = Gauge(
            "nudge_dependency_up", "1 while the dependency answers, 0 while it fails", ["dependency"], registry=r
        )
        self.up()
        for reason in DEAD_LETTER_REASONS:
            self.dead_letters.labels(reason)
        for channel in ("push", "sms", "webhook"):
            for outcome in ("ok", "retry", "permanent"):
                self.sends.labels(channel, outcome)
            for outcome in ("sent", "duplicate"):
                self.messages.labels(channel, outcome)
            self.duplicates_prevented.labels(channel)
            self.retries.labels(channel)
            self.resent_after_crash.labels(channel)

    def up(self) -> None:
        """A message went through: its ledger (Redis) and its records (Kafka) answered."""
        self.dependency_up.labels("kafka").set(1)
        self.dependency_up.labels("redis").set(1)
