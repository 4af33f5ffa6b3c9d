"""Every metric the stream worker exports, in one place (names `nudge_*`).

Labels are low-cardinality only (topic, reason, outcome): never a user id.
The worker serves them on /metrics (its Faust web port).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from features.state import Outcome
from models.snapshot import REFUSAL_REASONS
from nudge.events import Rejection

__all__ = ["StreamMetrics"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_FRESHNESS_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_BATCH_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2000, 5000)
_SCORE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
_RECOVERY_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
# The score fields a worker writes (models/bundle.py) whose distribution is watched for drift.
SCORED_FIELDS = {"churn_score": "churn", "nbo_score": "nbo"}


class StreamMetrics:
    """The worker's metrics, registered in `registry` (a fresh one per app)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "nudge_stream_events_total",
            "Input messages by what happened to them (applied, late, duplicate, expired, rejected, rekeyed, refused)",
            ["topic", "outcome"],
            registry=r,
        )
        self.dlq = Counter(
            "nudge_stream_dlq_total", "Messages sent to the dead-letter topic, by reason", ["reason"], registry=r
        )
        self.batch_size = Histogram(
            "nudge_stream_batch_size", "Messages per processed batch", buckets=_BATCH_BUCKETS, registry=r
        )
        self.batch_seconds = Histogram(
            "nudge_stream_batch_seconds",
            "Time to fold, persist and write one batch",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.freshness = Histogram(
            "nudge_stream_freshness_seconds",
            "Kafka message timestamp to Redis write, per message",
            buckets=_FRESHNESS_BUCKETS,
            registry=r,
        )
        self.redis_errors = Counter("nudge_redis_write_errors_total", "Failed Redis writes (retried)", registry=r)
        self.dependency_up = Gauge(
            "nudge_dependency_up",
            "1 while the dependency answers, 0 from its first failed attempt until it answers again",
            ["dependency"],
            registry=r,
        )
        self.stage_seconds = Histogram(
            "nudge_stream_batch_stage_seconds",
            "Time of the worker's stages: step (one batch, pure CPU), redis (its store write), kafka (its "
            "dead letters and re-keyed messages until acked, concurrent with redis), changelog (one flush of "
            "every due changelog entry until acked)",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.users_written = Counter("nudge_redis_users_written_total", "User hashes written", registry=r)
        self.last_commit = Gauge(
            "nudge_stream_last_commit_timestamp_seconds", "Wall time of the last offset commit", registry=r
        )
        self.last_batch = Gauge(
            "nudge_stream_last_batch_timestamp_seconds", "Wall time the last batch finished", registry=r
        )
        self.watermark = Gauge(
            "nudge_stream_event_time_watermark_seconds", "Latest event time folded by this worker", registry=r
        )
        self.model_version = Gauge(
            "nudge_worker_model_version", "Version of the model snapshot this worker scores with", registry=r
        )
        self.snapshots_refused = Counter(
            "nudge_worker_snapshots_refused_total",
            "Model snapshots refused (never unpickled), by reason",
            ["reason"],
            registry=r,
        )
        self.gc_pause_seconds = Histogram(
            "nudge_worker_gc_pause_seconds",
            "Garbage-collection pauses by generation (streams/pauses.py)",
            ["generation"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )

        self.lag = Gauge(
            "nudge_consumer_lag_messages",
            "Messages not consumed yet (log end offset - committed), by topic and partition this worker owns",
            ["topic", "partition"],
            registry=r,
        )
        self.recovery_seconds = Gauge(
            "nudge_stream_recovery_seconds",
            "How long the last rebalance took from the assignment's return to the worker being ready "
            "(table recovery from the changelog, then the seek)",
            registry=r,
        )
        self.rebalances = Histogram(
            "nudge_stream_rebalance_seconds",
            "Whole rebalances: from the start of the rebalance until the worker is ready again",
            buckets=_RECOVERY_BUCKETS,
            registry=r,
        )
        self.scores = Histogram(
            "nudge_worker_scores",
            "Scores written to Redis, by model (churn: churn_score, nbo: the chosen offer's score): "
            "their distribution over time shows drift",
            ["model"],
            buckets=_SCORE_BUCKETS,
            registry=r,
        )
        self.offer_choices = Counter(
            "nudge_worker_offer_choices_total", "Next-best offers chosen and written, by offer", ["offer"], registry=r
        )

    def committed(self) -> None:
        self.last_commit.set(time.time())

    def known(self, input_topics: Iterable[str]) -> None:
        """Start every known (topic, outcome) and dead-letter reason at 0.

        A labelled counter has no series until its first increment, so a panel
        or an alert on, say, late events would show "no data" on a healthy
        worker, indistinguishable from a misspelt metric.
        """
        for topic in input_topics:
            for outcome in (*(o.value for o in Outcome), "rejected", "rekeyed", "refused"):
                self.events.labels(topic, outcome)
        for reason in (*Rejection.REASONS, "too_old", "processing_error"):
            self.dlq.labels(reason)
        for reason in REFUSAL_REASONS:
            self.snapshots_refused.labels(reason)

    def offers(self, offer_ids: Iterable[str]) -> None:
        """Start every catalog offer's choice count at 0 (a panel shows an offer never chosen)."""
        for offer in offer_ids:
            self.offer_choices.labels(offer)

    def scored(self, fields: Mapping[str, str]) -> None:
        """Count what one user's write says about the models: its scores, and the offer chosen."""
        for name, model in SCORED_FIELDS.items():
            value = fields.get(name)
            if value is not None:
                self.scores.labels(model).observe(float(value))
        offer = fields.get("nbo_offer")
        if offer:
            self.offer_choices.labels(offer).inc()
