"""Debian's prometheus and prometheus-alertmanager as child processes of a test, on free ports.

The project's own scrape config and alert rules are used, with the targets of
the processes under test and, where a test needs minutes to pass in seconds,
shorter windows (`fast_rules`).
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def binary(*names: str) -> str:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    raise AssertionError(f"none of {names} is installed: `make system-deps` (or .ci/run) installs them")


def scrape_config(
    endpoints: Mapping[str, str],
    rules: Path,
    *,
    interval_s: float = 1.0,
    alertmanager: str | None = None,
) -> dict[str, Any]:
    """deploy/prometheus/prometheus.local.yml with `endpoints` (process -> /metrics URL) as its targets."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.local.yml").read_text())
    config["global"].update(scrape_interval=f"{interval_s:g}s", evaluation_interval=f"{interval_s:g}s")
    config["global"]["scrape_timeout"] = f"{interval_s:g}s"
    config["rule_files"] = [str(rules)]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    config["scrape_configs"] = []
    for name, url in endpoints.items():
        job = jobs[f"nudge-{name}"]  # a process the shipped config does not scrape is a failure here
        parts = urlsplit(url)
        job["metrics_path"] = parts.path
        job["static_configs"] = [{"targets": [parts.netloc]}]
        config["scrape_configs"].append(job)
    if alertmanager is not None:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
    return config


def fast_rules(path: Path, *, window: str = "10s", hold: str = "2s") -> Path:
    """alerts.yml with every range window `[5m]`/`[15m]` shortened to `window` and every `for:` to `hold`."""
    text = (PROMETHEUS_DIR / "alerts.yml").read_text()
    text = re.sub(r"\[(\d+)m(:\d+s)?\]", lambda m: f"[{window}{':1s' if m.group(2) else ''}]", text)
    text = re.sub(r"(\n\s+for: )\S+", rf"\g<1>{hold}", text)
    path.write_text(text)
    return path


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{url} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} not ready in {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")


@contextmanager
def _child(args: list[str], log: Path, ready_url: str) -> Iterator[None]:
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_ready(ready_url, proc, log)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextmanager
def prometheus(config: Mapping[str, Any], workdir: Path) -> Iterator[str]:
    """A Prometheus with `config`; yields its base URL."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "prometheus.yml"
    path.write_text(yaml.safe_dump(dict(config)))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [
        binary("prometheus"),
        f"--config.file={path}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with _child(args, workdir / "prometheus.log", f"{url}/-/ready"):
        yield url


@contextmanager
def alertmanager(webhook: str, workdir: Path) -> Iterator[str]:
    """An Alertmanager routing every alert to `webhook` at once; yields its host:port."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = {
        "route": {
            "receiver": "webhook",
            "group_by": ["alertname"],
            "group_wait": "1s",
            "group_interval": "1s",
            "repeat_interval": "1h",
        },
        "receivers": [{"name": "webhook", "webhook_configs": [{"url": webhook, "send_resolved": True}]}],
    }
    path = workdir / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    args = [
        binary("prometheus-alertmanager", "alertmanager"),
        f"--config.file={path}",
        f"--storage.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",  # no gossip port: a single, local Alertmanager
    ]
    with _child(args, workdir / "alertmanager.log", f"http://127.0.0.1:{port}/-/ready"):
        yield f"127.0.0.1:{port}"


class Webhook:
    """A local HTTP server recording every Alertmanager webhook notification (JSON bodies)."""

    def __init__(self) -> None:
        self.notifications: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with outer._lock:
                    outer.notifications.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/alerts"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def alerts(self, name: str, status: str = "firing") -> list[dict[str, Any]]:
        with self._lock:
            return [
                alert
                for n in self.notifications
                for alert in n.get("alerts", [])
                if alert["labels"].get("alertname") == name and alert["status"] == status
            ]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def api(url: str, path: str) -> Any:
    with urllib.request.urlopen(f"{url}{path}", timeout=10) as response:
        answer = json.loads(response.read())
    assert answer["status"] == "success", answer
    return answer["data"]
