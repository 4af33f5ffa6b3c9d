"""`nudge top`: the numbers it computes from two scrapes (worked out by hand below), what it draws,
and the shell against a local fake /metrics server (no network beyond 127.0.0.1)."""

from __future__ import annotations

import contextlib
import http.server
import io
import logging
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from nudge.cli import main
from ops.scrape import Count, Reading, Window, histogram_quantile, parse
from ops.top import PORT_SETTINGS, View, WatchThread, build_view, render

ROOT = Path(__file__).resolve().parents[2]
CLOSED = "http://127.0.0.1:1/metrics"  # nothing listens on port 1: connection refused at once

WORKER_BEFORE = """\
# TYPE nudge_stream_events_total counter
nudge_stream_events_total{topic="clicks",outcome="applied"} 100.0
nudge_stream_events_total{topic="clicks",outcome="late"} 0.0
nudge_stream_events_total{topic="purchases",outcome="applied"} 10.0
# TYPE nudge_stream_dlq_total counter
nudge_stream_dlq_total{reason="not_json"} 1.0
# TYPE nudge_stream_freshness_seconds histogram
nudge_stream_freshness_seconds_bucket{le="0.05"} 1000.0
nudge_stream_freshness_seconds_bucket{le="0.1"} 1000.0
nudge_stream_freshness_seconds_bucket{le="0.25"} 1000.0
nudge_stream_freshness_seconds_bucket{le="+Inf"} 1000.0
nudge_stream_freshness_seconds_count 1000.0
nudge_stream_freshness_seconds_sum 20.0
# TYPE nudge_consumer_lag_messages gauge
nudge_consumer_lag_messages{topic="clicks",partition="0"} 7.0
nudge_consumer_lag_messages{topic="clicks",partition="1"} 5.0
# TYPE nudge_dependency_up gauge
nudge_dependency_up{dependency="kafka"} 1.0
nudge_dependency_up{dependency="redis"} 1.0
"""

# Two seconds later: 60 + 4 clicks and 6 purchases more (35 events/s), 2 more dead letters (1/s), and 100
# freshness observations: 60 up to 50 ms, 30 in (50, 100] ms, 10 in (100, 250] ms. Over the interval the
# p99 (rank 99 of 100) lies 9/10 into (0.1, 0.25]: 0.235 s; the median (rank 50) 50/60 into (0, 0.05]:
# 41.7 ms. Over all time (1,100 observations, 1,000 of them fast) the p99 would be 98.3 ms instead.
WORKER_AFTER = """\
# TYPE nudge_stream_events_total counter
nudge_stream_events_total{topic="clicks",outcome="applied"} 160.0
nudge_stream_events_total{topic="clicks",outcome="late"} 4.0
nudge_stream_events_total{topic="purchases",outcome="applied"} 16.0
# TYPE nudge_stream_dlq_total counter
nudge_stream_dlq_total{reason="not_json"} 3.0
# TYPE nudge_stream_freshness_seconds histogram
nudge_stream_freshness_seconds_bucket{le="0.05"} 1060.0
nudge_stream_freshness_seconds_bucket{le="0.1"} 1090.0
nudge_stream_freshness_seconds_bucket{le="0.25"} 1100.0
nudge_stream_freshness_seconds_bucket{le="+Inf"} 1100.0
nudge_stream_freshness_seconds_count 1100.0
nudge_stream_freshness_seconds_sum 24.0
# TYPE nudge_consumer_lag_messages gauge
nudge_consumer_lag_messages{topic="clicks",partition="0"} 30.0
nudge_consumer_lag_messages{topic="clicks",partition="1"} 12.0
# TYPE nudge_dependency_up gauge
nudge_dependency_up{dependency="kafka"} 1.0
nudge_dependency_up{dependency="redis"} 0.0
"""

DELIVER_BEFORE = """\
# TYPE nudge_delivery_sends_total counter
nudge_delivery_sends_total{channel="push",outcome="ok"} 50.0
nudge_delivery_sends_total{channel="push",outcome="retry"} 0.0
nudge_delivery_sends_total{channel="sms",outcome="ok"} 5.0
# TYPE nudge_delivery_provider_latency_seconds histogram
nudge_delivery_provider_latency_seconds_bucket{channel="push",le="0.01"} 40.0
nudge_delivery_provider_latency_seconds_bucket{channel="push",le="0.1"} 50.0
nudge_delivery_provider_latency_seconds_bucket{channel="push",le="+Inf"} 50.0
nudge_delivery_provider_latency_seconds_bucket{channel="sms",le="0.01"} 5.0
nudge_delivery_provider_latency_seconds_bucket{channel="sms",le="0.1"} 5.0
nudge_delivery_provider_latency_seconds_bucket{channel="sms",le="+Inf"} 5.0
# TYPE nudge_delivery_duplicates_prevented_total counter
nudge_delivery_duplicates_prevented_total{channel="push"} 2.0
"""

# Two seconds later: push made 20 calls, 4 of them retried (20 % failed in the interval; 4 of 74 overall),
# 10 answered within 10 ms and 10 in (10, 100] ms: p99 (rank 19.8) is 9.8/10 into (0.01, 0.1]: 98.2 ms.
# SMS: 2 calls, one past 100 ms: its p99 falls in +Inf, so it is the highest finite bound, 0.1 s.
DELIVER_AFTER = """\
# TYPE nudge_delivery_sends_total counter
nudge_delivery_sends_total{channel="push",outcome="ok"} 66.0
nudge_delivery_sends_total{channel="push",outcome="retry"} 4.0
nudge_delivery_sends_total{channel="sms",outcome="ok"} 7.0
# TYPE nudge_delivery_provider_latency_seconds histogram
nudge_delivery_provider_latency_seconds_bucket{channel="push",le="0.01"} 50.0
nudge_delivery_provider_latency_seconds_bucket{channel="push",le="0.1"} 70.0
nudge_delivery_provider_latency_seconds_bucket{channel="push",le="+Inf"} 70.0
nudge_delivery_provider_latency_seconds_bucket{channel="sms",le="0.01"} 6.0
nudge_delivery_provider_latency_seconds_bucket{channel="sms",le="0.1"} 6.0
nudge_delivery_provider_latency_seconds_bucket{channel="sms",le="+Inf"} 7.0
# TYPE nudge_delivery_duplicates_prevented_total counter
nudge_delivery_duplicates_prevented_total{channel="push"} 3.0
"""

REPORT = """\
# TYPE nudge_campaign_sends gauge
nudge_campaign_sends{rule="cart_abandonment"} 57.0
# TYPE nudge_campaign_conversion_ratio gauge
nudge_campaign_conversion_ratio{group="treated",rule="cart_abandonment"} 0.3508771929824561
nudge_campaign_conversion_ratio{group="holdout",rule="cart_abandonment"} 0.2857142857142857
# TYPE nudge_campaign_uplift_ratio gauge
nudge_campaign_uplift_ratio{bound="estimate",rule="cart_abandonment"} 0.06516290726817042
nudge_campaign_uplift_ratio{bound="low",rule="cart_abandonment"} -0.3070834303157804
nudge_campaign_uplift_ratio{bound="high",rule="cart_abandonment"} 0.306478990114342
# TYPE nudge_campaign_revenue_eur gauge
nudge_campaign_revenue_eur{rule="cart_abandonment"} 2661.6
nudge_campaign_revenue_eur{rule="welcome"} 3618.4
"""

TRAINER = """\
# TYPE nudge_model_quality gauge
nudge_model_quality{metric="auc",model="churn"} 0.812
nudge_model_quality{metric="baseline_auc",model="churn"} 0.701
# TYPE nudge_trainer_snapshot_version gauge
nudge_trainer_snapshot_version 7.0
# TYPE nudge_trainer_snapshot_timestamp_seconds gauge
nudge_trainer_snapshot_timestamp_seconds 1000.0
# TYPE nudge_trainer_rewards_learned_total counter
nudge_trainer_rewards_learned_total{offer="sitewide10",reward="0"} 30.0
nudge_trainer_rewards_learned_total{offer="sitewide10",reward="1"} 10.0
# TYPE nudge_trainer_snapshots_refused_total counter
nudge_trainer_snapshots_refused_total{reason="bad_signature"} 2.0
nudge_trainer_snapshots_refused_total{reason="corrupt"} 0.0
"""


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith("NUDGE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("NUDGE_DATA_DIR", str(tmp_path / "data"))
    # main() installs its own root log handler; later tests must not inherit it.
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


def reading(text: str | None, at: float, url: str = "http://127.0.0.1:9/metrics", error: str = "") -> Reading:
    return Reading(url, at, None if text is None else parse(text), error)


def two_rounds() -> tuple[dict[str, Reading], dict[str, Reading]]:
    before = {
        "worker": reading(WORKER_BEFORE, 10.0),
        "deliver": reading(DELIVER_BEFORE, 10.0),
        "trainer": reading(TRAINER, 10.0),
        "report": reading(REPORT, 10.0),
    }
    after = {
        "worker": reading(WORKER_AFTER, 12.0),
        "deliver": reading(DELIVER_AFTER, 12.0),
        "trainer": reading(TRAINER, 12.0),
        "report": reading(None, 12.0, error="connection refused"),
    }
    return before, after


def text_of(view: View, width: int = 200, sections: tuple[str, ...] = ("pipeline", "models", "campaigns")) -> str:
    console = Console(record=True, width=width, file=io.StringIO())
    console.print(render(view, sections))
    return console.export_text()


# --- the pure core ---------------------------------------------------------------------------------


def test_rates_are_the_increase_over_the_seconds_between_scrapes() -> None:
    view = build_view(*two_rounds(), now=1060.0)
    p = view.pipeline
    assert view.interval_s == 2.0
    assert p.events == Count(pytest.approx(35.0), 180.0)
    assert p.events_by_topic[("clicks", "applied")] == Count(pytest.approx(30.0), 160.0)
    assert p.late == Count(pytest.approx(2.0), 4.0)
    assert p.dead_letters == Count(pytest.approx(1.0), 3.0)
    assert p.lag == {("worker", "clicks"): 42.0}  # summed over partitions
    assert p.dependencies == {("worker", "kafka"): True, ("worker", "redis"): False}
    c = view.campaigns
    assert c.channels["push"].calls == Count(pytest.approx(10.0), 70.0)
    assert c.channels["push"].failed == Count(pytest.approx(2.0), 4.0)
    assert c.channels["push"].duplicates_prevented == Count(pytest.approx(0.5), 3.0)


def test_quantiles_come_from_the_buckets_increase_not_from_all_time() -> None:
    view = build_view(*two_rounds(), now=1060.0)
    assert view.pipeline.freshness_p99 == pytest.approx(0.235)
    assert view.pipeline.freshness_p50 == pytest.approx(0.05 * 50 / 60)
    assert view.campaigns.channels["push"].latency_p99 == pytest.approx(0.01 + 0.09 * 9.8 / 10)
    assert view.campaigns.channels["sms"].latency_p99 == pytest.approx(0.1)
    # the same page alone (all time) would say otherwise: the interval is what is shown
    all_time = Window(None, {"w": reading(WORKER_AFTER, 0.0)})
    assert all_time.quantile(0.99, "nudge_stream_freshness_seconds") is None  # one scrape: no interval
    buckets = [(0.05, 1060.0), (0.1, 1090.0), (0.25, 1100.0), (math.inf, 1100.0)]
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.05 + 0.05 * 29 / 30)


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        (0.5, [(1.0, 0.0), (math.inf, 0.0)], None),  # no observation
        (0.5, [(1.0, 4.0)], None),  # no +Inf bucket
        (0.9, [(1.0, 2.0), (2.0, 2.0), (math.inf, 10.0)], 2.0),  # the rank falls in +Inf
        (0.25, [(2.0, 4.0), (math.inf, 4.0)], 0.5),  # the first bucket starts at 0
        (0.5, [(1.0, 6.0), (2.0, 4.0), (math.inf, 10.0)], 5 / 6),  # read as 6, 6, 10: rank 5 of 6 in (0, 1]
    ],
    ids=["empty", "no-inf", "in-inf", "first-bucket", "non-monotonic-read"],
)
def test_histogram_quantile_edges(q: float, buckets: list[tuple[float, float]], expected: float | None) -> None:
    got = histogram_quantile(q, buckets)
    assert got == (None if expected is None else pytest.approx(expected))


RESTARTED = """\
# TYPE nudge_stream_events_total counter
nudge_stream_events_total{topic="clicks",outcome="applied"} 20.0
nudge_stream_events_total{topic="clicks",outcome="late"} 3.0
nudge_stream_events_total{topic="purchases",outcome="applied"} 18.0
"""


def test_a_restarted_process_counts_everything_since_its_restart() -> None:
    # The worker restarted between the scrapes (clicks went 160 -> 20): every count starts again from 0.
    before = {"worker": reading(WORKER_AFTER, 10.0)}
    view = build_view(before, {"worker": reading(RESTARTED, 12.0)}, now=0.0)
    assert view.processes[0].restarted
    by_topic = view.pipeline.events_by_topic
    assert by_topic[("clicks", "applied")].rate == pytest.approx(10.0)  # 20 since the restart, not -140
    assert by_topic[("clicks", "late")].rate == pytest.approx(1.5)  # 4 -> 3: 3 since the restart
    # purchases went 16 -> 18, yet they too are all new: 18 in 2 s (9/s), not 2 (1/s)
    assert by_topic[("purchases", "applied")].rate == pytest.approx(9.0)
    assert view.pipeline.events.rate == pytest.approx(20.5)
    assert "worker up (restarted)" in text_of(view)
    assert not any(p.restarted for p in build_view(*two_rounds(), now=0.0).processes)


def test_a_series_new_since_the_last_scrape_starts_from_zero() -> None:
    before = {"worker": reading(WORKER_BEFORE, 10.0)}
    line = 'nudge_stream_events_total{topic="purchases",outcome="applied"} 10.0\n'
    page = WORKER_BEFORE.replace(line, line + 'nudge_stream_events_total{topic="app-events",outcome="system"} 8\n')
    after = {"worker": reading(page, 14.0)}
    view = build_view(before, after, now=0.0)
    assert view.pipeline.events_by_topic[("app-events", "system")] == Count(pytest.approx(2.0), 8.0)
    assert view.pipeline.events.rate == pytest.approx(2.0)


def test_first_round_has_totals_but_no_rates() -> None:
    _, after = two_rounds()
    view = build_view(None, after, now=0.0)
    assert view.interval_s is None
    assert view.pipeline.events == Count(None, 180.0)
    assert view.pipeline.freshness_p99 is None
    assert "first scrape: totals only" in text_of(view)


def test_missing_processes_are_down_and_their_numbers_absent() -> None:
    before, after = two_rounds()
    view = build_view(before, after, now=1060.0)
    report = next(p for p in view.processes if p.name == "report")
    assert not report.up and report.error == "connection refused"
    assert view.campaigns.rules == {}  # only the report exports them
    assert view.campaigns.decisions == Count(None, 0.0)  # no trigger service scraped
    nobody = build_view(None, {"worker": reading(None, 0.0, error="no answer within 0.8 s")}, now=0.0)
    assert [p.up for p in nobody.processes] == [False]
    text = text_of(nobody)
    assert "0 of 1 processes up" in text and "worker DOWN (no answer within 0.8 s)" in text


def test_models_and_campaign_figures() -> None:
    before, after = two_rounds()
    after["report"] = reading(REPORT, 12.0)
    view = build_view(before, after, now=1060.0)
    m = view.models
    assert m.quality[("churn", "auc")] == 0.812
    assert m.snapshot_version == 7.0 and m.snapshot_age_s == 60.0
    assert m.refused == {("trainer", "bad_signature"): 2.0}  # a reason never seen is not listed
    assert m.offers["sitewide10"].conversion == pytest.approx(0.25)
    rule = view.campaigns.rules["cart_abandonment"]
    assert rule.sends == 57.0 and rule.uplift_low == pytest.approx(-0.307083, abs=1e-6)
    assert view.campaigns.revenue_eur == pytest.approx(6280.0)


def test_parse_refuses_what_is_not_the_exposition_format() -> None:
    with pytest.raises(ValueError):
        parse("<html>not metrics</html>\n")
    assert parse("").samples == {}


# --- rendering -------------------------------------------------------------------------------------


def test_the_frame_shows_the_key_numbers() -> None:
    before, after = two_rounds()
    after["report"] = reading(REPORT, 12.0)
    text = text_of(build_view(before, after, now=1060.0))
    for expected in (
        "4 of 4 processes up",
        "35/s  (total 180)",  # events in
        "p50 41.7 ms  p99 235 ms",  # freshness over the interval
        "redis DOWN",  # a dependency down is named
        "0.812  (baseline 0.701)",  # churn AUC against its baseline
        "v7",
        "age 60 s",
        "trainer bad_signature 2",
        "25.0 %",  # sitewide10's conversion
        "98.2 ms",  # push p99
        "cart_abandonment",
        "35.1 %",
        "28.6 %",
        "+6.5",
        "-30.7 .. +30.6",
        "6,280 EUR attributed",
    ):
        assert expected in text, expected
    assert re.search(r"worker\s+42\s+clicks", text), text  # consumer lag: the worker's, and where


def test_sections_can_be_chosen_and_narrow_terminals_stack_them() -> None:
    view = build_view(*two_rounds(), now=1060.0)
    only = text_of(view, sections=("campaigns",))
    assert "Campaigns" in only and "Pipeline" not in only and "Models" not in only
    narrow = text_of(view, width=100).splitlines()
    assert max(len(line) for line in narrow) <= 100
    pipeline_top = next(i for i, line in enumerate(narrow) if "Pipeline" in line)
    models_top = next(i for i, line in enumerate(narrow) if "Models" in line)
    assert models_top > pipeline_top  # one under the other
    wide = text_of(view, width=240).splitlines()
    assert any("Pipeline" in line and "Models" in line for line in wide)  # side by side


def test_label_values_are_shown_as_text_never_as_markup_or_escapes() -> None:
    page = '# TYPE nudge_stream_events_total counter\nnudge_stream_events_total{topic="[bold]x\\u001b[2J",outcome="applied"} 1\n'
    page = page.replace("\\u001b", "\x1b")
    text = text_of(build_view(None, {"worker": reading(page, 0.0)}, now=0.0))
    assert "[bold]x\\x1b[2J" in text and "\x1b" not in text


def test_top_reads_only_metrics_some_process_exports() -> None:
    exporters = "".join(
        path.read_text()
        for package in ("streams", "triggers", "delivery", "producers")
        for path in (ROOT / package).rglob("*.py")
    )
    read = set(re.findall(r'"(nudge_[a-z0-9_]+)"', (ROOT / "ops" / "top.py").read_text()))
    assert len(read) > 30
    missing = sorted(n for n in read if f'"{n}"' not in exporters and f'"{n.removesuffix("_count")}"' not in exporters)
    assert missing == []


# --- the shell, against a local fake /metrics server -----------------------------------------------


class _Metrics(http.server.BaseHTTPRequestHandler):
    """Serves a worker page whose counter grows by 10 at each scrape; /slow never answers in time."""

    scrapes = 0

    def do_GET(self) -> None:
        if self.path == "/slow":
            time.sleep(2)
        if self.path == "/broken":
            self.send_error(500)
            return
        type(self).scrapes += 1
        body = (
            b"not metrics at all\n"
            if self.path == "/html"
            else (
                "# TYPE nudge_stream_events_total counter\n"
                f'nudge_stream_events_total{{topic="clicks",outcome="applied"}} {10 * type(self).scrapes}\n'
            ).encode()
        )
        with contextlib.suppress(OSError):  # /slow: the client has long gone
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    _Metrics.scrapes = 0
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Metrics)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _all_closed_but(**targets: str) -> list[str]:
    """--target for every default process: the given URLs, the rest closed (whatever runs on this machine)."""
    urls = {name: CLOSED for name in PORT_SETTINGS} | targets
    return [arg for name, url in urls.items() for arg in ("--target", f"{name}={url}")]


def test_once_prints_one_frame_with_the_numbers(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["top", "--once", "--interval", "0.3", *_all_closed_but(worker=f"{server}/metrics")]
    status = main(argv)
    out, err = capsys.readouterr()
    assert status == 0, err
    assert "1 of 6 processes up" in out and "worker up" in out and "collector DOWN (connection refused)" in out
    assert "(total 20)" in out  # the second scrape's counter
    assert re.search(r"events in\s+\d+(\.\d+)?/s", out)  # 10 more in about 0.3 s
    assert "\x1b" not in out  # plain text when not a terminal


def test_once_names_every_url_tried_when_nobody_answers(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["top", "--once", "--interval", "0.1", *_all_closed_but()])
    out, err = capsys.readouterr()
    assert status == 1 and out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("nudge top: error: no process answered")
    assert lines[0].count(CLOSED) == len(PORT_SETTINGS)


def test_what_answers_wrongly_is_down_with_the_reason(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    targets = _all_closed_but(
        worker=f"{server}/metrics", deliver=f"{server}/broken", report=f"{server}/html", trainer=f"{server}/slow"
    )
    began = time.monotonic()
    assert main(["top", "--once", "--interval", "0.2", "--only", "pipeline", *targets]) == 0
    out = capsys.readouterr().out
    assert time.monotonic() - began < 2.5  # the slow one was given up on (0.3 s each round)
    assert "deliver DOWN (HTTP 500)" in out
    assert "report DOWN (not a /metrics page" in out
    assert "trainer DOWN (no answer within 0.3 s)" in out
    assert "Models" not in out


def test_the_watch_thread_draws_until_stopped(server: str) -> None:
    console = Console(record=True, file=io.StringIO(), width=120)
    top = WatchThread(interval=0.1, sections=("pipeline",), console=console)
    top.start({"worker": f"{server}/metrics"})
    deadline = time.monotonic() + 5
    while _Metrics.scrapes < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    top.stop()
    top.stop()  # idempotent
    scrapes = _Metrics.scrapes
    time.sleep(0.3)
    assert _Metrics.scrapes == scrapes >= 3  # it stopped scraping
    text = console.export_text()
    assert "1 of 1 processes up" in text and "events in" in text


def test_ctrl_c_quits_the_live_view_quietly(server: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUDGE_")} | {"NUDGE_DATA_DIR": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "nudge.cli", "top", "--interval", "0.2", *_all_closed_but(worker=f"{server}/metrics")],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 20
    while _Metrics.scrapes < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert b"Traceback" not in err and err == b""
    assert b"worker up" in out  # the last frame stays


def test_help_lists_the_default_urls_and_their_settings(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["top", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for setting in ("NUDGE_WORKER_METRICS_PORT", "NUDGE_REPORT_METRICS_PORT", "http://127.0.0.1:6066/metrics"):
        assert setting in out
    assert "examples:" in out and "nudge top --once" in out


def test_module_doctests() -> None:
    import doctest

    from ops import scrape

    assert doctest.testmod(scrape).failed == 0
