"""Every metric the trainer (`nudge trainer`) exports, in one place (names `nudge_trainer_*`, `nudge_model_*`).

The trainer is its own process with its own registry and port
(NUDGE_TRAINER_METRICS_PORT), so its metrics live beside the worker's
(streams/metrics.py) rather than in them. Labels are low-cardinality only:
target, reason, model, metric.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge

from models.snapshot import REFUSAL_REASONS

__all__ = ["QUALITY_METRICS", "TrainerMetrics"]

# quality key of models.bundle -> (model, metric) labels
QUALITY_METRICS: dict[str, tuple[str, str]] = {
    "churn_auc": ("churn", "auc"),
    "churn_baseline_auc": ("churn", "baseline_auc"),
    "churn_log_loss": ("churn", "log_loss"),
    "clv_mae": ("clv_30d", "mae"),
    "clv_baseline_mae": ("clv_30d", "baseline_mae"),
    "nbo_reward_rate": ("nbo", "reward_rate"),
}


class TrainerMetrics:
    """The trainer's metrics, registered in `registry` (a fresh one per trainer)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.examples = Counter(
            "nudge_trainer_examples_learned_total", "Training examples learned, by target", ["target"], registry=r
        )
        self.rewards = Counter(
            "nudge_trainer_rewards_learned_total",
            "Bandit rewards learned, by offer and reward (1: bought within the attribution window, 0: did not)",
            ["offer", "reward"],
            registry=r,
        )
        self.lag = Gauge(
            "nudge_consumer_lag_messages",
            "Messages not consumed yet, by topic and partition",
            ["topic", "partition"],
            registry=r,
        )
        self.skipped = Counter(
            "nudge_trainer_records_skipped_total",
            "Input records not learned, by reason (malformed, duplicate, bad_label, early_label_retired, unknown_offer)",
            ["reason"],
            registry=r,
        )
        self.snapshot_version = Gauge(
            "nudge_trainer_snapshot_version", "Version of the latest snapshot published or resumed from", registry=r
        )
        self.snapshot_timestamp = Gauge(
            "nudge_trainer_snapshot_timestamp_seconds", "Wall time the latest snapshot was sealed", registry=r
        )
        self.snapshot_bytes = Gauge("nudge_trainer_snapshot_bytes", "Size of the latest sealed snapshot", registry=r)
        self.refused = Counter(
            "nudge_trainer_snapshots_refused_total",
            "Snapshots read at start that failed verification (never unpickled), by reason",
            ["reason"],
            registry=r,
        )
        self.quality = Gauge(
            "nudge_model_quality",
            "Latest rolling quality of each model and its baseline (progressive validation)",
            ["model", "metric"],
            registry=r,
        )
        self.input_repairs = Gauge(
            "nudge_trainer_input_repairs",
            "Inputs the models' gate repaired (missing, non_finite, clipped, unknown), by model; "
            "cumulative over the models' life (kept in the snapshot)",
            ["model", "reason"],
            registry=r,
        )
        for reason in REFUSAL_REASONS:
            self.refused.labels(reason)
        for target in ("churn", "churn_7d", "clv_30d"):
            self.examples.labels(target)
        for skip in ("malformed", "duplicate", "bad_label", "early_label_retired", "unknown_offer"):
            self.skipped.labels(skip)

    def offers(self, offer_ids: Iterable[str]) -> None:
        """Start every offer's reward series at 0, so a conversion panel shows an offer before its first reward."""
        for offer in offer_ids:
            for reward in ("0", "1"):
                self.rewards.labels(offer, reward)

    def set_repairs(self, model: str, repairs: Mapping[str, int]) -> None:
        for reason, count in repairs.items():
            self.input_repairs.labels(model, reason).set(count)

    def set_quality(self, quality: Mapping[str, float]) -> None:
        for key, value in quality.items():
            labels = QUALITY_METRICS.get(key)
            if labels is not None:
                self.quality.labels(*labels).set(value)
