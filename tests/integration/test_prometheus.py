"""Dashboards and alerts against a real Prometheus scraping the live loop.

Debian's prometheus scrapes every process of a running loop (simulator ->
worker -> trainer -> triggers -> delivery, the collector and the campaign
figures) with the project's scrape config and alert rules; then every PromQL
expression of every dashboard panel and every alert goes through Prometheus's
HTTP API. Each dashboard query must return data; each alert must load and
evaluate without error, and every series it selects must exist; no
expression may name a metric that no process exports.

The same run checks `nudge top --once` (another process, pointed at the
run's endpoints): while events flow, every process up and events counted;
once deliveries settled, the campaign figures and the trainer's snapshot.

A second test runs the "no events" alert end to end: Prometheus evaluates it
(windows shortened to seconds), Alertmanager routes it to a webhook of ours,
and it arrives once the worker is stopped.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import orjson
import pytest

from bench.loop import LoopOptions, LoopRun, run_loop
from nudge.settings import Settings
from ops.dashboards import Window, expand_builtins, metric_names, queries
from ops.render import Prometheus
from producers.simulator import send_events
from streams.process import WorkerProcess
from tests.integration.promstack import (
    PROMETHEUS_DIR,
    Webhook,
    alertmanager,
    api,
    fast_rules,
    free_port,
    prometheus,
    scrape_config,
)

SCRAPED_FOR_S = 25.0  # seconds of 1 s scrapes before the queries: enough points for every rate window
_SELECTOR = re.compile(r"\b(?:nudge_[a-z0-9_]+|up)\s*(?:\{[^}]*\})?")


def _app_open(user: str, ts_ms: int) -> dict[str, Any]:
    return {"event_id": f"{user}-{ts_ms}", "type": "app_open", "user_id": user, "ts": ts_ms, "schema_version": 1}


def _post(url: str, events: list[dict[str, Any]]) -> int:
    request = urllib.request.Request(
        url, data=orjson.dumps(events), method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return int(response.status)


def _top_once(run: LoopRun) -> subprocess.CompletedProcess[str]:
    targets = [arg for name, url in run.endpoints.items() for arg in ("--target", f"{name}={url}")]
    return subprocess.run(
        [sys.executable, "-m", "nudge.cli", "top", "--once", "--interval", "1", *targets],
        cwd=PROMETHEUS_DIR.parents[1],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _has_data(series: list[Any]) -> bool:
    return any(math.isfinite(v) for s in series for v in s.values)


@pytest.mark.timeout(900)
def test_every_dashboard_and_alert_query_returns_data_from_the_live_loop(settings: Settings, tmp_path: Path) -> None:
    all_queries = queries()
    alerts_file = PROMETHEUS_DIR / "alerts.yml"
    found: dict[str, Any] = {}
    frames: dict[str, subprocess.CompletedProcess[str]] = {}
    stack = ExitStack()
    threads: list[threading.Thread] = []

    def on_running(run: LoopRun) -> None:
        config = scrape_config(run.endpoints, alerts_file, interval_s=1.0)
        found["prometheus"] = stack.enter_context(prometheus(config, tmp_path / "prometheus"))
        found["started"] = time.monotonic()
        # the collector is the apps' front door; the loop's simulator writes to Kafka directly
        base = run.endpoints["collector"].removesuffix("/metrics")
        now = int(time.time() * 1000)
        found["collector_status"] = _post(f"{base}/v1/events", [_app_open(f"{run.tag}-c{i}", now) for i in range(5)])

        def look() -> None:
            time.sleep(2.0)  # the simulator starts right after this callback
            frames["running"] = _top_once(run)

        threads.append(threading.Thread(target=look, daemon=True))
        threads[0].start()

    def before_stop(run: LoopRun) -> None:
        url = found["prometheus"]
        threads[0].join(60)
        frames["settled"] = _top_once(run)
        time.sleep(max(0.0, SCRAPED_FOR_S - (time.monotonic() - found["started"])))
        targets = api(url, "/api/v1/targets")["activeTargets"]
        found["targets"] = {t["labels"]["job"]: t["health"] for t in targets}
        found["exported"] = set(api(url, "/api/v1/label/__name__/values"))
        client = Prometheus(url)
        window = Window.ending_now(range_s=60, step_s=2)
        found["dashboards"] = {
            (q.file, q.panel, q.ref_id): _has_data(client.query_range(expand_builtins(q.expr, window), window))
            for q in all_queries
        }
        rules = [r for g in api(url, "/api/v1/rules")["groups"] for r in g["rules"]]
        found["rules"] = {r["name"]: (r["health"], r.get("lastError", ""), r["query"]) for r in rules}
        found["selectors"] = {
            selector: bool(api(url, "/api/v1/query?" + urllib.parse.urlencode({"query": selector}))["result"])
            for _, _, query in found["rules"].values()
            for selector in _SELECTOR.findall(query)
        }

    options = LoopOptions(
        users=300, days=35, rate=4000, seed=7, progress=False, on_running=on_running, before_stop=before_stop
    )
    with stack:
        run = run_loop(options, settings, say=lambda _: None)
    assert all(status == 0 for status in run.statuses.values()), run.statuses
    assert found["collector_status"] == 200

    # every process the loop runs was scraped, and was up
    assert found["targets"] == {f"nudge-{name}": "up" for name in run.endpoints}, found["targets"]
    # every dashboard panel's every query returned data
    empty = [key for key, has in found["dashboards"].items() if not has]
    assert not empty, f"{len(empty)} of {len(found['dashboards'])} dashboard queries returned no data: {empty}"
    # every alert loaded and evaluated without error, and every series it selects exists
    assert len(found["rules"]) >= 10
    broken = {name: (health, error) for name, (health, error, _) in found["rules"].items() if health != "ok"}
    assert not broken, broken
    missing = [selector for selector, has in found["selectors"].items() if not has]
    assert not missing, missing
    # no expression names a metric that no process exports
    named = {n for q in all_queries for n in metric_names(q.expr)}
    named |= {n for _, _, query in found["rules"].values() for n in metric_names(query)}
    named = {re.sub(r"_(bucket|count|sum)$", "", n) for n in named}
    exported = {re.sub(r"_(bucket|count|sum|created|total)$", "", n) for n in found["exported"]}
    unknown = {n for n in named if re.sub(r"_total$", "", n) not in exported}
    assert not unknown, f"named by a dashboard or an alert, exported by no process: {sorted(unknown)}"

    # `nudge top` saw the live loop: every process up and events flowing, then the campaigns and the models
    n = len(run.endpoints)
    running, settled = frames["running"], frames["settled"]
    assert running.returncode == 0, running.stderr
    assert f"{n} of {n} processes up" in running.stdout, running.stdout
    events = re.search(r"events in\s+([\d,.]+)/s", running.stdout)
    assert events and float(events.group(1).replace(",", "")) > 0, running.stdout
    assert "dependencies  all up (kafka, redis" in running.stdout
    assert settled.returncode == 0, settled.stderr
    assert f"{n} of {n} processes up" in settled.stdout
    assert "campaigns (nudge report)" in settled.stdout, settled.stdout
    assert re.search(r"snapshot\s+v\d+", settled.stdout), settled.stdout
    assert re.search(r"decisions\s+\S+\s+\(total [1-9]", settled.stdout), settled.stdout


@pytest.mark.timeout(300)
def test_the_no_events_alert_reaches_alertmanager_s_webhook_when_the_worker_stops(
    unique_topics: Settings, tmp_path: Path
) -> None:
    s = unique_topics
    webhook = Webhook()
    stop_traffic = threading.Event()

    def traffic() -> Iterator[dict[str, Any]]:
        i = 0
        while not stop_traffic.is_set():
            i += 1
            yield _app_open(f"am-u{i % 50}", int(time.time() * 1000))
            time.sleep(0.05)

    port = free_port()
    worker = WorkerProcess(s, web_port=port, log_path=tmp_path / "worker.log").start()
    sender = threading.Thread(target=send_events, args=(traffic(), s), kwargs={"client_id": "am-test"}, daemon=True)
    try:
        worker.wait_ready(90)
        sender.start()
        rules = fast_rules(tmp_path / "alerts.fast.yml", window="10s", hold="2s")
        with alertmanager(webhook.url, tmp_path / "alertmanager") as am:
            config = scrape_config({"worker": f"http://127.0.0.1:{port}/metrics"}, rules, alertmanager=am)
            with prometheus(config, tmp_path / "prometheus") as url:
                # events flow: the alert stays quiet
                time.sleep(15)
                firing = {
                    a["labels"]["alertname"] for a in api(url, "/api/v1/alerts")["alerts"] if a["state"] == "firing"
                }
                assert "NudgeNoEvents" not in firing, firing
                assert not webhook.alerts("NudgeNoEvents")
                # the worker stops: no events are consumed, and the page arrives at the webhook
                worker.stop(30.0)
                deadline = time.monotonic() + 90
                while not webhook.alerts("NudgeNoEvents") and time.monotonic() < deadline:
                    time.sleep(0.5)
                delivered = webhook.alerts("NudgeNoEvents")
                assert delivered, f"no NudgeNoEvents notification in 90 s; got {webhook.notifications}"
                alert = delivered[0]
                assert alert["labels"]["severity"] == "page"
                assert alert["annotations"]["runbook"].startswith("Is the worker up")
    finally:
        stop_traffic.set()
        worker.stop(30.0)
        webhook.close()
