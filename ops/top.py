"""`nudge top`: the dashboards' numbers, live in a terminal, for developers without Grafana.

Every `--interval` seconds (default 1) it scrapes each process's /metrics (the
stream worker, the collector, the trainer, the trigger service, the delivery
worker and `nudge report --serve`) and shows what the Grafana dashboards in
deploy/grafana/dashboards show, from the same metrics: the pipeline, the
models, the campaigns, and which processes answer. Rates, quantiles and sums
are computed as PromQL computes them (ops/scrape.py says how). A rare event (a
refused snapshot, a prevented duplicate) would flicker by in a one-second
rate, so counters show their total since the process started too.

`build_view` (two rounds of readings -> `View`, plain numbers) and `render`
(`View` -> a rich renderable) are pure. The shell: `run` redraws with
rich.live until Ctrl-C, or prints one frame with `--once`; `watch` does the
same in a thread until told to stop (`python -m bench.loop --top`). A
process that does not answer within the time-out is shown DOWN, never an
error.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import re
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

from rich import box
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from nudge.args import number
from nudge.errors import DependencyUnavailable
from nudge.settings import Settings
from nudge.text import printable, quoted
from ops.scrape import NO_COUNT, Count, Reading, Sampler, Window

__all__ = [
    "PORT_SETTINGS",
    "SECTIONS",
    "Campaigns",
    "Channel",
    "Models",
    "OfferFigures",
    "Pipeline",
    "ProcessState",
    "RuleFigures",
    "View",
    "WatchThread",
    "build_view",
    "configure",
    "default_targets",
    "render",
    "run",
    "watch",
]

SECTIONS: Final = ("pipeline", "models", "campaigns")
# Each process, and the setting that names the port of its /metrics.
PORT_SETTINGS: Final[Mapping[str, str]] = {
    "worker": "worker_metrics_port",
    "collector": "collector_port",
    "trainer": "trainer_metrics_port",
    "triggers": "triggers_metrics_port",
    "deliver": "delivery_metrics_port",
    "report": "report_metrics_port",
}
log = logging.getLogger(__name__)

_NAME: Final = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_WILDCARD_HOSTS: Final = frozenset({"", "0.0.0.0", "::"})
# Column order of the outcomes (README "Operations"); any other comes after, by name.
_EVENT_OUTCOMES: Final = ("applied", "late", "duplicate", "rejected", "rekeyed", "refused", "expired", "system")
_DECISION_OUTCOMES: Final = ("sent", "suppressed", "delayed")


# --------------------------------------------------------------------------
# The view: plain numbers
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProcessState:
    name: str
    url: str
    up: bool
    error: str = ""  # why it is down
    restarted: bool = False  # its counters went down since the last scrape


@dataclass(frozen=True, slots=True)
class Pipeline:
    events: Count = NO_COUNT  # input messages, every outcome
    events_by_topic: Mapping[tuple[str, str], Count] = field(default_factory=dict)  # (topic, outcome)
    late: Count = NO_COUNT
    dead_letters: Count = NO_COUNT
    dead_letters_by_reason: Mapping[str, Count] = field(default_factory=dict)
    freshness_p50: float | None = None
    freshness_p99: float | None = None
    batch_p99: float | None = None
    stage_p99: Mapping[str, float | None] = field(default_factory=dict)
    users_written: Count = NO_COUNT
    redis_errors: Count = NO_COUNT
    collector_events: Mapping[str, Count] = field(default_factory=dict)  # status
    lag: Mapping[tuple[str, str], float] = field(default_factory=dict)  # (process, topic): over its partitions
    dependencies: Mapping[tuple[str, str], bool] = field(default_factory=dict)  # (process, dependency): up
    recovery_s: float | None = None  # the worker's last table recovery


@dataclass(frozen=True, slots=True)
class OfferFigures:
    chosen: Count = NO_COUNT  # by the worker's bandit
    rewards: Count = NO_COUNT  # outcomes the trainer learned, converted or not
    converted: Count = NO_COUNT  # of which rewarded (reward="1")

    @property
    def conversion(self) -> float | None:
        return self.converted.total / self.rewards.total if self.rewards.total else None


@dataclass(frozen=True, slots=True)
class Models:
    quality: Mapping[tuple[str, str], float] = field(default_factory=dict)  # (model, metric)
    snapshot_version: float | None = None  # the trainer's latest
    snapshot_age_s: float | None = None
    worker_version: float | None = None  # the oldest a worker scores with
    refused: Mapping[tuple[str, str], float] = field(default_factory=dict)  # (process, reason): since it started
    examples: Mapping[str, Count] = field(default_factory=dict)  # target
    scores: Mapping[str, Count] = field(default_factory=dict)  # model
    offers: Mapping[str, OfferFigures] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Channel:
    calls: Count = NO_COUNT  # provider calls
    failed: Count = NO_COUNT  # of which not ok
    latency_p99: float | None = None
    duplicates_prevented: Count = NO_COUNT


@dataclass(frozen=True, slots=True)
class RuleFigures:
    """One campaign as `nudge report --serve` exports it: since the topics began."""

    decisions: float | None = None
    sends: float | None = None
    treated: float | None = None  # conversion rate of the sends
    holdout: float | None = None  # conversion rate of the holdout
    uplift: float | None = None
    uplift_low: float | None = None  # the 95 % interval
    uplift_high: float | None = None
    revenue_eur: float | None = None
    roi: float | None = None


@dataclass(frozen=True, slots=True)
class Campaigns:
    decisions: Count = NO_COUNT
    sends: Count = NO_COUNT  # decisions to send
    by_rule: Mapping[tuple[str, str], Count] = field(default_factory=dict)  # (rule, outcome)
    suppressions: Mapping[str, Count] = field(default_factory=dict)  # reason
    channels: Mapping[str, Channel] = field(default_factory=dict)
    delivery_dead_letters: Mapping[str, Count] = field(default_factory=dict)  # reason
    rules: Mapping[str, RuleFigures] = field(default_factory=dict)
    revenue_eur: float | None = None


@dataclass(frozen=True, slots=True)
class View:
    processes: tuple[ProcessState, ...]
    interval_s: float | None  # seconds between the two scrapes (None: one round so far)
    taken_at: float  # wall clock, epoch seconds
    pipeline: Pipeline = field(default_factory=Pipeline)
    models: Models = field(default_factory=Models)
    campaigns: Campaigns = field(default_factory=Campaigns)


def _first(counts: Mapping[tuple[str, ...], Count]) -> dict[str, Count]:
    return {key[0]: count for key, count in counts.items()}


def _pairs(values: Mapping[tuple[str, ...], float]) -> dict[tuple[str, str], float]:
    return {(key[0], key[1]): value for key, value in values.items()}


def _pipeline(w: Window) -> Pipeline:
    events = {(k[0], k[1]): c for k, c in w.counts("nudge_stream_events_total", ("topic", "outcome")).items()}
    return Pipeline(
        events=Count.sum(events.values()),
        events_by_topic=events,
        late=Count.sum(c for (_, outcome), c in events.items() if outcome == "late"),
        dead_letters=w.count("nudge_stream_dlq_total"),
        dead_letters_by_reason=_first(w.counts("nudge_stream_dlq_total", ("reason",))),
        freshness_p50=w.quantile(0.5, "nudge_stream_freshness_seconds"),
        freshness_p99=w.quantile(0.99, "nudge_stream_freshness_seconds"),
        batch_p99=w.quantile(0.99, "nudge_stream_batch_seconds"),
        stage_p99={k[0]: v for k, v in w.quantiles(0.99, "nudge_stream_batch_stage_seconds", ("stage",)).items()},
        users_written=w.count("nudge_redis_users_written_total"),
        redis_errors=w.count("nudge_redis_write_errors_total"),
        collector_events=_first(w.counts("nudge_collector_events_total", ("status",))),
        lag=_pairs(w.gauges("nudge_consumer_lag_messages", ("process", "topic"), combine=sum)),
        dependencies={
            key: up >= 1 for key, up in _pairs(w.gauges("nudge_dependency_up", ("process", "dependency"))).items()
        },
        recovery_s=w.gauge("nudge_stream_recovery_seconds"),
    )


def _models(w: Window, now: float) -> Models:
    snapshot_at = w.gauge("nudge_trainer_snapshot_timestamp_seconds")
    refused = {
        **_pairs(w.gauges("nudge_worker_snapshots_refused_total", ("process", "reason"), combine=sum)),
        **_pairs(w.gauges("nudge_trainer_snapshots_refused_total", ("process", "reason"), combine=sum)),
    }
    chosen = _first(w.counts("nudge_worker_offer_choices_total", ("offer",)))
    rewards = w.counts("nudge_trainer_rewards_learned_total", ("offer", "reward"))
    offers = {
        offer: OfferFigures(
            chosen=chosen.get(offer, NO_COUNT),
            rewards=Count.sum(c for (o, _), c in rewards.items() if o == offer),
            converted=rewards.get((offer, "1"), NO_COUNT),
        )
        for offer in sorted(set(chosen) | {o for o, _ in rewards})
    }
    return Models(
        quality=_pairs(w.gauges("nudge_model_quality", ("model", "metric"))),
        snapshot_version=w.gauge("nudge_trainer_snapshot_version"),
        snapshot_age_s=None if not snapshot_at else max(0.0, now - snapshot_at),
        worker_version=w.gauge("nudge_worker_model_version", combine=min),
        refused={key: n for key, n in refused.items() if n > 0},
        examples=_first(w.counts("nudge_trainer_examples_learned_total", ("target",))),
        scores=_first(w.counts("nudge_worker_scores_count", ("model",))),
        offers=offers,
    )


def _campaigns(w: Window) -> Campaigns:
    decisions = {(k[0], k[1]): c for k, c in w.counts("nudge_triggers_decisions_total", ("rule", "outcome")).items()}
    calls = w.counts("nudge_delivery_sends_total", ("channel", "outcome"))
    latency = w.quantiles(0.99, "nudge_delivery_provider_latency_seconds", ("channel",))
    duplicates = _first(w.counts("nudge_delivery_duplicates_prevented_total", ("channel",)))
    channels = {
        channel: Channel(
            calls=Count.sum(n for (c, _), n in calls.items() if c == channel),
            failed=Count.sum(n for (c, outcome), n in calls.items() if c == channel and outcome != "ok"),
            latency_p99=latency.get((channel,)),
            duplicates_prevented=duplicates.get(channel, NO_COUNT),
        )
        for channel in sorted({c for c, _ in calls} | set(duplicates))
    }

    def by_rule(metric: str, label: str = "", value: str = "") -> dict[str, float]:
        return {k[0]: v for k, v in w.gauges(metric, ("rule",), {label: (value,)} if label else None).items()}

    decided, sent = by_rule("nudge_campaign_decisions"), by_rule("nudge_campaign_sends")
    treated = by_rule("nudge_campaign_conversion_ratio", "group", "treated")
    holdout = by_rule("nudge_campaign_conversion_ratio", "group", "holdout")
    uplift = {bound: by_rule("nudge_campaign_uplift_ratio", "bound", bound) for bound in ("estimate", "low", "high")}
    revenue, roi = by_rule("nudge_campaign_revenue_eur"), by_rule("nudge_campaign_roi_ratio")
    rules = {
        rule: RuleFigures(
            decisions=decided.get(rule),
            sends=sent.get(rule),
            treated=treated.get(rule),
            holdout=holdout.get(rule),
            uplift=uplift["estimate"].get(rule),
            uplift_low=uplift["low"].get(rule),
            uplift_high=uplift["high"].get(rule),
            revenue_eur=revenue.get(rule),
            roi=roi.get(rule),
        )
        for rule in sorted(set(decided) | set(sent) | set(treated) | set(revenue))
    }
    return Campaigns(
        decisions=Count.sum(decisions.values()),
        sends=Count.sum(c for (_, outcome), c in decisions.items() if outcome == "sent"),
        by_rule=decisions,
        suppressions=_first(w.counts("nudge_triggers_decisions_total", ("reason",), {"outcome": ("suppressed",)})),
        channels=channels,
        delivery_dead_letters=_first(w.counts("nudge_delivery_dead_letters_total", ("reason",))),
        rules=rules,
        revenue_eur=sum(revenue.values()) if revenue else None,
    )


def build_view(previous: Mapping[str, Reading] | None, current: Mapping[str, Reading], now: float) -> View:
    """The numbers of one refresh: the `current` readings against the `previous` round (None: the first).

    `now` is the wall clock (epoch seconds), for the snapshot's age.
    """
    w = Window(previous, current)
    processes = tuple(
        ProcessState(name, r.url, r.scrape is not None, r.error, name in w.restarted) for name, r in current.items()
    )
    return View(processes, w.seconds, now, _pipeline(w), _models(w, now), _campaigns(w))


# --------------------------------------------------------------------------
# Rendering: View -> rich
# --------------------------------------------------------------------------


def _number(value: float) -> str:
    size = abs(value)
    if size >= 100 or value == int(value):
        return f"{value:,.0f}"
    return f"{value:.1f}" if size >= 10 else f"{value:.2f}" if size >= 0.01 else f"{value:.1g}"


def _per_s(count: Count | None) -> str:
    if count is None:
        return ""
    return "—" if count.rate is None else f"{_number(count.rate)}/s"


def _total(count: Count) -> str:
    return f"{count.total:,.0f}"


def _seconds(value: float | None) -> str:
    if value is None:
        return "—"
    if value < 1:
        return f"{value * 1000:.3g} ms"
    if value < 120:
        return f"{value:.3g} s"
    return f"{value / 60:.0f} min" if value < 7200 else f"{value / 3600:.1f} h"


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f} %"


def _points(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:+.1f}"


def _share(part: Count, whole: Count) -> str:
    return f"{part.rate / whole.rate * 100:.1f} %" if part.rate is not None and whole.rate else "—"


def _quality(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _plain(value: str) -> Text:
    """A label value from a scrape: shown as it is, never read as rich markup or a terminal escape."""
    return Text(printable(value, limit=48))


def _ordered(names: Iterable[str], first: Sequence[str]) -> list[str]:
    known = set(names)
    return [n for n in first if n in known] + sorted(known - set(first))


def _table(title: str, *columns: str) -> Table:
    table = Table(title=title, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD, show_edge=False)
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right", no_wrap=i > 0, overflow="fold")
    return table


def _facts(rows: Iterable[tuple[str, str]]) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    for name, value in rows:
        grid.add_row(name, Text(printable(value)))  # label values (reasons, stages) are in it
    return grid


def _panel(title: str, parts: Sequence[RenderableType]) -> Panel:
    spaced: list[RenderableType] = []
    for part in parts:
        spaced += [Text(""), part] if spaced else [part]
    return Panel(Group(*spaced), title=f"[b]{title}[/b]", title_align="left")


def _dependencies(deps: Mapping[tuple[str, str], bool]) -> str:
    if not deps:
        return "—"
    down = [f"{process} {dependency} DOWN" for (process, dependency), up in sorted(deps.items()) if not up]
    names = ", ".join(sorted({d for _, d in deps}))
    return " · ".join(down) if down else f"all up ({names}; seen by {', '.join(sorted({p for p, _ in deps}))})"


def _pipeline_panel(p: Pipeline) -> Panel:
    stages = " · ".join(f"{stage} {_seconds(v)}" for stage, v in sorted(p.stage_p99.items()))
    parts: list[RenderableType] = [
        _facts(
            [
                ("events in", f"{_per_s(p.events)}  (total {_total(p.events)})"),
                ("dead letters", f"{_per_s(p.dead_letters)}  {_share(p.dead_letters, p.events)} of input"),
                ("late", f"{_per_s(p.late)}  {_share(p.late, p.events)} of input  (total {_total(p.late)})"),
                ("freshness", f"p50 {_seconds(p.freshness_p50)}  p99 {_seconds(p.freshness_p99)}"),
                ("batch p99", _seconds(p.batch_p99) + (f"  ({stages})" if stages else "")),
                ("redis", f"{_per_s(p.users_written)} users written, {_per_s(p.redis_errors)} errors"),
                ("recovery", _seconds(p.recovery_s) + ("  (last table recovery)" if p.recovery_s is not None else "")),
                ("dependencies", _dependencies(p.dependencies)),
            ]
        )
    ]
    outcomes = _ordered((o for (_, o), c in p.events_by_topic.items() if c.total > 0), _EVENT_OUTCOMES)
    if outcomes:
        table = _table("events/s by topic and outcome", "topic", *outcomes)
        for topic in sorted({t for (t, o), c in p.events_by_topic.items() if c.total > 0}):
            table.add_row(_plain(topic), *(_per_s(p.events_by_topic.get((topic, o))) for o in outcomes))
        parts.append(table)
    reasons = {reason: c for reason, c in sorted(p.dead_letters_by_reason.items()) if c.total > 0}
    if reasons:
        table = _table("dead letters by reason", "reason", "per s", "total")
        for reason, c in reasons.items():
            table.add_row(_plain(reason), _per_s(c), _total(c))
        parts.append(table)
    if any(c.total for c in p.collector_events.values()):
        table = _table("collector events", "status", "per s", "total")
        for status, c in sorted(p.collector_events.items()):
            table.add_row(_plain(status), _per_s(c), _total(c))
        parts.append(table)
    if p.lag:
        table = _table("consumer lag", "process", "messages", "most behind")
        for process in sorted({name for name, _ in p.lag}):
            mine = {topic: lag for (name, topic), lag in p.lag.items() if name == process}
            worst = max(mine, key=lambda topic: (mine[topic], topic))
            table.add_row(_plain(process), f"{sum(mine.values()):,.0f}", _plain(worst) if mine[worst] else "")
        parts.append(table)
    return _panel("Pipeline", parts)


def _models_panel(m: Models) -> Panel:
    q = m.quality
    version = "—" if m.snapshot_version is None else f"v{m.snapshot_version:.0f}"
    if m.worker_version is not None:
        version += f", the worker scores with v{m.worker_version:.0f}"
    parts: list[RenderableType] = [
        _facts(
            [
                (
                    "churn AUC",
                    f"{_quality(q.get(('churn', 'auc')))}  (baseline {_quality(q.get(('churn', 'baseline_auc')))})",
                ),
                ("churn log loss", _quality(q.get(("churn", "log_loss")))),
                (
                    "CLV 30d MAE",
                    f"{_quality(q.get(('clv_30d', 'mae')))}  (baseline {_quality(q.get(('clv_30d', 'baseline_mae')))})",
                ),
                ("offer reward rate", _quality(q.get(("nbo", "reward_rate")))),
                ("snapshot", f"{version}; age {_seconds(m.snapshot_age_s)}"),
                (
                    "refused snapshots",
                    " · ".join(f"{p} {r} {n:,.0f}" for (p, r), n in sorted(m.refused.items())) or "none",
                ),
                ("examples learned", " · ".join(f"{t} {_per_s(c)}" for t, c in sorted(m.examples.items())) or "—"),
                ("scores written", " · ".join(f"{k} {_per_s(c)}" for k, c in sorted(m.scores.items())) or "—"),
            ]
        )
    ]
    if m.offers:
        table = _table("offers", "offer", "chosen/s", "chosen", "rewards", "converted")
        for offer, o in m.offers.items():
            table.add_row(_plain(offer), _per_s(o.chosen), _total(o.chosen), _total(o.rewards), _percent(o.conversion))
        parts.append(table)
    return _panel("Models", parts)


def _campaigns_panel(c: Campaigns) -> Panel:
    suppressions = " · ".join(
        f"{r or '?'} {_per_s(n)} ({_total(n)})" for r, n in sorted(c.suppressions.items()) if n.total
    )
    dead = " · ".join(f"{r} {_total(n)}" for r, n in sorted(c.delivery_dead_letters.items()) if n.total)
    parts: list[RenderableType] = [
        _facts(
            [
                ("decisions", f"{_per_s(c.decisions)}  (total {_total(c.decisions)})"),
                ("sends", f"{_per_s(c.sends)}  (total {_total(c.sends)})"),
                ("suppressed", suppressions or "none"),
                ("dead letters", dead or "none"),
                ("revenue", "—" if c.revenue_eur is None else f"{c.revenue_eur:,.0f} EUR attributed"),
            ]
        )
    ]
    outcomes = _ordered((o for (_, o), n in c.by_rule.items() if n.total > 0), _DECISION_OUTCOMES)
    if outcomes:
        table = _table("decisions/s by rule and outcome", "rule", *outcomes)
        for rule in sorted({r for (r, o), n in c.by_rule.items() if n.total > 0}):
            table.add_row(_plain(rule), *(_per_s(c.by_rule.get((rule, o))) for o in outcomes))
        parts.append(table)
    if c.channels:
        table = _table("delivery by channel", "channel", "sends/s", "sends", "failed", "p99", "dupes stopped")
        for channel, ch in c.channels.items():
            failed = ch.failed.total / ch.calls.total if ch.calls.total else None
            table.add_row(
                _plain(channel),
                _per_s(ch.calls),
                _total(ch.calls),
                _percent(failed),
                _seconds(ch.latency_p99),
                _total(ch.duplicates_prevented),
            )
        parts.append(table)
    if c.rules:
        table = _table(
            "campaigns (nudge report)", "rule", "sends", "treated", "holdout", "uplift", "95 % interval", "EUR", "ROI"
        )
        for rule, r in c.rules.items():
            interval = (
                ""
                if r.uplift_low is None or r.uplift_high is None
                else f"{_points(r.uplift_low)} .. {_points(r.uplift_high)}"
            )
            table.add_row(
                _plain(rule),
                "—" if r.sends is None else f"{r.sends:,.0f}",
                _percent(r.treated),
                _percent(r.holdout),
                _points(r.uplift),
                interval,
                "—" if r.revenue_eur is None else f"{r.revenue_eur:,.0f}",
                "—" if r.roi is None else f"{r.roi:.2f}",
            )
        parts.append(table)
    return _panel("Campaigns", parts)


def _header(view: View) -> Text:
    up = sum(p.up for p in view.processes)
    when = datetime.fromtimestamp(view.taken_at, UTC).astimezone().strftime("%H:%M:%S")  # local time
    over = "first scrape: totals only" if view.interval_s is None else f"rates over {view.interval_s:.1f} s"
    text = Text.assemble(("nudge top", "bold"), f"  {when}  {up} of {len(view.processes)} processes up  ({over})\n")
    for i, p in enumerate(view.processes):
        text.append("  " if i else "")
        if p.up:
            text.append(f"{p.name} up" + (" (restarted)" if p.restarted else ""), style="green")
        else:
            text.append(f"{p.name} DOWN ({printable(p.error, limit=60)})", style="bold red")
    return text


# Narrowest each section reads well at; sections share a row while they fit.
_MIN_WIDTH: Final[Mapping[str, int]] = {"pipeline": 62, "models": 62, "campaigns": 96}


class _Sections:
    """The sections side by side while the terminal is wide enough, the rest below."""

    def __init__(self, panels: Sequence[tuple[str, Panel]]) -> None:
        self.panels = panels

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        rows: list[list[tuple[str, Panel]]] = []
        for name, panel in self.panels:
            row = rows[-1] if rows else None
            if row is not None and sum(_MIN_WIDTH[n] + 1 for n, _ in row) + _MIN_WIDTH[name] <= options.max_width:
                row.append((name, panel))
            else:
                rows.append([(name, panel)])
        for row in rows:
            grid = Table.grid(expand=True, padding=(0, 1))
            for name, _ in row:
                grid.add_column(ratio=_MIN_WIDTH[name])
            grid.add_row(*(panel for _, panel in row))
            yield grid


def render(view: View, sections: Sequence[str] = SECTIONS) -> RenderableType:
    """One frame: which processes answer, then the chosen sections."""
    makers: Mapping[str, Callable[[], Panel]] = {
        "pipeline": lambda: _pipeline_panel(view.pipeline),
        "models": lambda: _models_panel(view.models),
        "campaigns": lambda: _campaigns_panel(view.campaigns),
    }
    return Group(_header(view), _Sections([(name, makers[name]()) for name in sections]))


# --------------------------------------------------------------------------
# The shell: the live view, one frame, the CLI
# --------------------------------------------------------------------------


def default_targets(settings: Settings) -> dict[str, str]:
    """Each process's /metrics URL on this machine, at the port its setting names."""
    host = settings.collector_host
    collector = "127.0.0.1" if host in _WILDCARD_HOSTS else f"[{host}]" if ":" in host else host
    return {
        name: f"http://{collector if name == 'collector' else '127.0.0.1'}:{getattr(settings, setting)}/metrics"
        for name, setting in PORT_SETTINGS.items()
    }


def _timeout(interval: float) -> float:
    # Long enough for a worker busy with a batch to answer, short enough to keep the pace.
    return min(max(interval * 0.8, 0.3), 2.0)


def _frames(sampler: Sampler, interval: float, stop: threading.Event | None = None) -> Iterator[View]:
    """A view every `interval` seconds (the first at once, with totals only) until `stop` is set."""
    previous: dict[str, Reading] | None = None
    while True:
        began = time.monotonic()
        current = sampler.round()
        yield build_view(previous, current, time.time())
        previous = current
        pause = max(0.0, interval - (time.monotonic() - began))
        if stop is not None and stop.wait(pause):
            return
        if stop is None:
            time.sleep(pause)


def watch(
    targets: Mapping[str, str],
    stop: threading.Event,
    *,
    interval: float = 1.0,
    sections: Sequence[str] = SECTIONS,
    console: Console | None = None,
) -> None:
    """Redraw the view every `interval` seconds until `stop` is set; the last frame stays on the screen."""
    with Sampler(targets, _timeout(interval)) as sampler, Live(console=console, auto_refresh=False) as live:
        for view in _frames(sampler, interval, stop):
            live.update(render(view, sections), refresh=True)


class WatchThread:
    """`watch` in a background thread, from `start(targets)` until `stop()`: the live view of a run
    whose processes the caller started (`python -m bench.loop --top`)."""

    def __init__(
        self, *, interval: float = 1.0, sections: Sequence[str] = SECTIONS, console: Console | None = None
    ) -> None:
        self.interval = interval
        self.sections = sections
        self.console = console
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, targets: Mapping[str, str]) -> None:
        self._thread = threading.Thread(target=self._watch, args=(dict(targets),), name="nudge-top", daemon=True)
        self._thread.start()

    def _watch(self, targets: Mapping[str, str]) -> None:
        try:
            watch(targets, self._stop, interval=self.interval, sections=self.sections, console=self.console)
        except Exception:  # the view is a convenience: the run it watches goes on without it
            log.warning("nudge top: the live view stopped", exc_info=True)

    def stop(self) -> None:
        """Stop redrawing (idempotent); the last frame stays on the screen."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None


def _once(targets: Mapping[str, str], interval: float, sections: Sequence[str]) -> int:
    with Sampler(targets, _timeout(interval)) as sampler:
        frames = _frames(sampler, interval)
        next(frames)
        view = next(frames)
    if not any(p.up for p in view.processes):
        tried = ", ".join(f"{p.name} {p.url} ({p.error})" for p in view.processes)
        raise DependencyUnavailable(f"no process answered; tried {tried}. Is a loop running (`make demo`)?")
    tty = sys.stdout.isatty()
    Console(file=sys.stdout, width=None if tty else 120, no_color=not tty).print(render(view, sections))
    return 0


def _target(text: str) -> tuple[str, str]:
    """argparse type: NAME=URL, a process name and the http(s) URL of its /metrics."""
    example = "e.g. worker=http://127.0.0.1:6066/metrics"
    name, sep, url = text.partition("=")
    if not sep or not _NAME.fullmatch(name):
        raise argparse.ArgumentTypeError(f"expected NAME=URL ({example}; NAME: a-z, 0-9, _, -), got {quoted(text)}")
    if printable(url) != url or any(c.isspace() for c in url):
        raise argparse.ArgumentTypeError(f"{name}: the URL {quoted(url)} holds a space or a control character")
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        raise argparse.ArgumentTypeError(f"{name}: the URL {quoted(url)} has a bad port (1..65535)") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or port == 0:
        raise argparse.ArgumentTypeError(
            f"{name}: expected an http:// or https:// URL with a host ({example}), got {quoted(url)}"
        )
    return name, url


def _sections(text: str) -> tuple[str, ...]:
    """argparse type: some of SECTIONS, comma-separated."""
    names = tuple(dict.fromkeys(part.strip() for part in text.split(",")))
    if any(name not in SECTIONS for name in names):
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of {', '.join(SECTIONS)}, got {quoted(text)}"
        )
    return names


def _epilog() -> str:
    from nudge.cli import settings_epilog

    urls = default_targets(Settings())
    env = {d.name: d.env for d in Settings.declarations()}
    lines = [
        "examples:",
        "  nudge top                                  every process on this machine, refreshed every second",
        "  nudge top --only pipeline,campaigns --interval 2",
        "  nudge top --target worker=http://10.0.0.5:6066/metrics --target worker2=http://10.0.0.6:6066/metrics",
        "  nudge top --once > frame.txt               one frame (rates over --interval), then exit",
        "",
        "processes and their /metrics by default (--target NAME=URL replaces one, or adds one):",
        *(f"  {name:10} {urls[name]:32} port: {env[setting]}" for name, setting in PORT_SETTINGS.items()),
        "",
        "A process that does not answer is shown DOWN. `python -m bench.loop` and `make demo` run every",
        "process on these ports when they are free, so `nudge top` in another terminal shows the loop live;",
        "`python -m bench.loop --top` shows this view of its own run instead of a progress bar.",
        "",
        settings_epilog(*PORT_SETTINGS.values(), "collector_host"),
    ]
    return "\n".join(lines)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "A live terminal view of what the Grafana dashboards show, for developers without Grafana: the\n"
        "pipeline (events/s, dead letters, late events, freshness, batch time, consumer lag, dependencies),\n"
        "the models (quality against baselines, snapshots, offers) and the campaigns (decisions,\n"
        "suppressions, sends, provider latency and failures, uplift against the holdout, revenue), from each\n"
        "process's /metrics every --interval seconds. Ctrl-C quits."
    )
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--interval",
        type=number(0.1, 3600, unit=" s"),
        default=1.0,
        metavar="S",
        help="seconds between refreshes, 0.1..3600 [1]",
    )
    parser.add_argument(
        "--target",
        type=_target,
        action="append",
        default=[],
        metavar="NAME=URL",
        help="scrape URL as process NAME; replaces that process's default URL or adds one (repeatable)",
    )
    parser.add_argument(
        "--once",
        action="store_true",
        help="scrape twice, --interval apart, print one frame and exit (plain text when not a terminal); "
        "exit status 1 when no process answered",
    )
    parser.add_argument(
        "--only",
        type=_sections,
        default=SECTIONS,
        metavar="LIST",
        help=f"the sections to show, comma-separated: {','.join(SECTIONS)} [all]",
    )
    parser.epilog = _epilog()
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    targets = {**default_targets(settings), **dict(args.target)}
    if args.once:
        return _once(targets, args.interval, args.only)
    with contextlib.suppress(KeyboardInterrupt):  # how one leaves a live view: not an error
        watch(targets, threading.Event(), interval=args.interval, sections=args.only)
    return 0
