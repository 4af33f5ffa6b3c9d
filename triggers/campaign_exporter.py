"""`nudge report --serve`: the campaign report as Prometheus gauges, for the Campaigns dashboard.

Conversions and the uplift against a holdout are not counts any one process
sees: they join the trigger service's decisions with purchases that arrive
days later. `nudge report` makes that join once; this process keeps it live.
It tails the decisions, purchases and app-events topics (from their
beginning, no consumer group, nothing committed), keeps the records
`build_report` reads, rebuilds the report every `--every` seconds and
exports its figures at /metrics:

- `nudge_campaign_sends{rule}`, `nudge_campaign_decisions{rule}`
- `nudge_campaign_conversion_ratio{rule, group}`: group "treated" (sends
  followed by a purchase within the attribution window) or "holdout"
- `nudge_campaign_uplift_ratio{rule, bound}`: bound "estimate", "low",
  "high" (the report's 95 % Newcombe interval)
- `nudge_campaign_revenue_eur{rule}`, `nudge_campaign_offer_cost_eur{rule}` (what redeemed
  offers gave away), `nudge_campaign_roi_ratio{rule}` (only once an offer cost something)
- `nudge_campaign_report_timestamp_seconds`, `nudge_campaign_report_build_seconds`
- `nudge_consumer_lag_messages{topic, partition}`: what it has not read yet.

A figure the report cannot give (no holdout yet, no offer cost for an ROI)
is absent rather than zero, so a panel shows "no data", not a false 0.

Memory: the decisions of the last `--hours` (event time, counted back from
the newest decision; 168 by default, so the figures are the last week's), and
the purchases and feedback events since then of users those decisions name,
at about 200 bytes each. Without that window the process grew with every
decision ever made, and its rebuilds with it (a 10-minute soak: +124 % RSS,
its lag growing).
A purchase read before its user's first decision is dropped: in live traffic
it came before the decision, so the report would not attribute it anyway.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from models.offers import Offer
from nudge.settings import Settings
from nudge.stopping import stop_on_signals
from triggers.report import build_report, decision_record, feedback_record, purchase_record

__all__ = ["CampaignRecords", "ReportCollector", "serve"]

log = logging.getLogger(__name__)

POLL_MS: Final = 500
SERVE_HOURS: Final = 168.0  # the window of decisions the live figures cover, unless --hours says otherwise


@dataclass(slots=True)
class CampaignRecords:
    """The records `build_report` reads, grown message by message (the pure part of the exporter)."""

    decisions: list[dict[str, Any]] = field(default_factory=list)
    purchases: list[dict[str, Any]] = field(default_factory=list)
    app_events: list[dict[str, Any]] = field(default_factory=list)
    users: set[str] = field(default_factory=set)
    rejected: int = 0

    def add(self, kind: str, raw: bytes | None) -> None:
        """One message of the decisions, purchases or app-events topic (`kind`)."""
        if kind == "decisions":
            record = decision_record(raw)
            self.decisions.append(record)
            user = record.get("user_id")
            if isinstance(user, str):
                self.users.add(user)
            return
        parsed = purchase_record(raw) if kind == "purchases" else feedback_record(raw)
        if parsed is None:
            self.rejected += kind == "purchases"
        elif parsed["user_id"] in self.users:
            (self.purchases if kind == "purchases" else self.app_events).append(parsed)

    def forget_before(self, ts_ms: int) -> None:
        """Drop decisions made before `ts_ms`, and every purchase or feedback event that no decision kept
        can claim: of a user none names any more, or older than `ts_ms` (a message is never sent before
        its decision, and only what follows a send is attributed to it)."""
        self.decisions = [d for d in self.decisions if _int(d.get("decided_at")) >= ts_ms]
        self.users = {d["user_id"] for d in self.decisions if isinstance(d.get("user_id"), str)}
        self.purchases = [p for p in self.purchases if p["user_id"] in self.users and p["ts"] >= ts_ms]
        self.app_events = [e for e in self.app_events if e["user_id"] in self.users and e["ts"] >= ts_ms]

    def newest_decision_ms(self) -> int:
        return max((_int(d.get("decided_at")) for d in self.decisions), default=0)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


class ReportCollector(Collector):
    """Yields the latest report's figures; a rebuilt report replaces every series at once (no stale rules)."""

    def __init__(
        self, report: Callable[[], Mapping[str, Any] | None], lag: Callable[[], Mapping[tuple[str, int], int]]
    ):
        self._report = report
        self._lag = lag
        self.built_at = 0.0
        self.build_seconds = 0.0

    def collect(self) -> Iterator[GaugeMetricFamily]:
        report = self._report()
        sends = GaugeMetricFamily("nudge_campaign_sends", "Messages sent per campaign (rule)", labels=["rule"])
        decisions = GaugeMetricFamily("nudge_campaign_decisions", "Decisions per campaign (rule)", labels=["rule"])
        conversion = GaugeMetricFamily(
            "nudge_campaign_conversion_ratio",
            "Share converting within the attribution window: sends (treated) or holdout decisions (holdout)",
            labels=["rule", "group"],
        )
        uplift = GaugeMetricFamily(
            "nudge_campaign_uplift_ratio",
            "Treated minus holdout conversion, with its 95 % Newcombe interval (bound low/high)",
            labels=["rule", "bound"],
        )
        revenue = GaugeMetricFamily("nudge_campaign_revenue_eur", "Revenue of converting purchases", labels=["rule"])
        cost = GaugeMetricFamily("nudge_campaign_offer_cost_eur", "What redeemed offers gave away", labels=["rule"])
        roi = GaugeMetricFamily(
            "nudge_campaign_roi_ratio", "(incremental revenue - offer cost) / cost", labels=["rule"]
        )
        for row in (report or {}).get("rules", ()):
            rule = str(row["rule"])
            sends.add_metric([rule], row["sends"])
            decisions.add_metric([rule], row["decisions"])
            revenue.add_metric([rule], row["revenue_eur"])
            cost.add_metric([rule], row["offer_cost_eur"])
            if row["conversion_rate"] is not None:
                conversion.add_metric([rule, "treated"], row["conversion_rate"])
            if row["holdout"]["conversion_rate"] is not None:
                conversion.add_metric([rule, "holdout"], row["holdout"]["conversion_rate"])
            if row["uplift"] is not None:
                low, high = row["uplift_ci"]
                for bound, value in (("estimate", row["uplift"]), ("low", low), ("high", high)):
                    uplift.add_metric([rule, bound], value)
            if row["roi"] is not None:
                roi.add_metric([rule], row["roi"])
        yield from (sends, decisions, conversion, uplift, revenue, cost, roi)
        yield GaugeMetricFamily(
            "nudge_campaign_report_timestamp_seconds", "When the figures were last rebuilt", value=self.built_at
        )
        yield GaugeMetricFamily(
            "nudge_campaign_report_build_seconds", "How long the last rebuild took", value=self.build_seconds
        )
        lag = GaugeMetricFamily(
            "nudge_consumer_lag_messages", "Messages not consumed yet", labels=["topic", "partition"]
        )
        for (topic, partition), behind in sorted(self._lag().items()):
            lag.add_metric([topic, str(partition)], behind)
        yield lag


def serve(args: argparse.Namespace, settings: Settings, offers: Mapping[str, Offer]) -> int:
    """Tail the three topics and serve the figures until interrupted (SIGINT/SIGTERM)."""
    from kafka import KafkaConsumer, TopicPartition

    from nudge.errors import ConfigError
    from nudge.kafka_clients import connect

    kinds = {
        settings.topic_decisions: "decisions",
        settings.topic_purchases: "purchases",
        settings.topic_app_events: "app_events",
    }
    consumer = connect(
        KafkaConsumer,
        settings,
        client_id="nudge-report-serve",
        group_id=None,
        enable_auto_commit=False,
        max_poll_records=5000,
        fetch_max_wait_ms=POLL_MS,
        max_partition_fetch_bytes=settings.max_message_bytes,
    )
    partitions: list[Any] = []
    for topic in kinds:
        ids = consumer.partitions_for_topic(topic)
        if not ids:
            consumer.close()
            raise ConfigError(
                f"topic {topic} does not exist on {settings.kafka_bootstrap}; create it with `nudge topics`"
            )
        partitions.extend(TopicPartition(topic, p) for p in sorted(ids))
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    records = CampaignRecords()
    latest: dict[str, Any] = {}
    lag: dict[tuple[str, int], int] = {}
    collector = ReportCollector(lambda: latest, lambda: lag)
    registry = CollectorRegistry()
    registry.register(collector)
    port = args.metrics_port or settings.report_metrics_port
    server, _ = start_http_server(port, registry=registry)
    print(f"nudge report --serve: campaign figures on http://127.0.0.1:{port}/metrics, rebuilt every {args.every:g} s")
    try:
        with stop_on_signals() as stop:
            while not stop.is_set():
                until = time.monotonic() + args.every
                while time.monotonic() < until and not stop.is_set():
                    for tp, messages in consumer.poll(timeout_ms=POLL_MS).items():
                        kind = kinds[tp.topic]
                        for m in messages:
                            records.add(kind, m.value)
                hours = SERVE_HOURS if args.hours is None else args.hours
                records.forget_before(records.newest_decision_ms() - round(hours * 3_600_000))
                began = time.perf_counter()
                latest = build_report(
                    records.decisions, records.purchases, records.app_events, offers, settings.attribution_window_ms
                )
                collector.build_seconds = time.perf_counter() - began
                collector.built_at = time.time()
                ends = consumer.end_offsets(partitions)
                lag = {(tp.topic, tp.partition): max(0, ends[tp] - consumer.position(tp)) for tp in partitions}
                log.info(
                    "report rebuilt: %d rules, %d decisions, %d purchases kept, %.2f s",
                    len(latest["rules"]),
                    len(records.decisions),
                    len(records.purchases),
                    collector.build_seconds,
                )
    finally:
        server.shutdown()
        consumer.close()
    return 0
