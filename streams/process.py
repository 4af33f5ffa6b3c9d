"""Run a stream worker as a child process: for benchmarks, tests and the demo.

`WorkerProcess(settings, web_port=...)` starts `nudge worker` with the given
settings as env vars, waits until it serves /metrics and its consumer has
partitions, reads its counters, and stops it gracefully (SIGTERM) or kills
it (SIGKILL) to simulate a crash.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from nudge.errors import NudgeError
from nudge.settings import Settings

__all__ = ["WorkerProcess", "parse_metrics"]

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+([-+0-9.eEinfNa]+)$")


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format -> {'name{labels}': value} (comments skipped)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        m = _SAMPLE.match(line)
        if m:
            out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


class WorkerProcess:
    """One `nudge worker` child process."""

    def __init__(self, settings: Settings, *, web_port: int, log_path: Path, loglevel: str = "info") -> None:
        self.settings = settings
        self.web_port = web_port
        self.log_path = log_path
        self.loglevel = loglevel
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self._log_start = 0  # this run's output starts here in a reused log

    def start(self) -> WorkerProcess:
        env = {**os.environ, **self.settings.to_env()}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.started_at = time.monotonic()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "nudge", "worker", "--web-port", str(self.web_port), "-l", self.loglevel],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        return self

    def metrics(self) -> dict[str, float]:
        url = f"http://127.0.0.1:{self.web_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return parse_metrics(response.read().decode())

    def offsets(self) -> dict[str, dict[str, Any]]:
        """The worker's /offsets report (per input partition it owns)."""
        url = f"http://127.0.0.1:{self.web_port}/offsets"
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())  # type: ignore[no-any-return]

    def total(self, name: str, metrics: dict[str, float] | None = None) -> float:
        """Sum of every sample of a metric (all label sets)."""
        metrics = self.metrics() if metrics is None else metrics
        return sum(v for k, v in metrics.items() if k == name or k.startswith(name + "{"))

    def wait_ready(self, timeout: float = 120.0) -> float:
        """Wait until the worker logged 'Worker ready'; return seconds since start."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            if b"Worker ready" in self._log():
                return time.monotonic() - self.started_at
            time.sleep(0.1)
        raise NudgeError(f"worker on port {self.web_port} not ready after {timeout:.0f}s; see {self.log_path}")

    def wait_processed(self, count: int, timeout: float = 300.0, poll: float = 0.2) -> float:
        """Wait until the worker has consumed `count` input messages; return the time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                if self.total("nudge_stream_events_total") >= count:
                    return time.monotonic()
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(poll)
        raise NudgeError(f"worker on port {self.web_port} did not process {count} messages in {timeout:.0f}s")

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            tail = self._log().decode(errors="replace").splitlines()[-20:]
            raise NudgeError(f"worker exited with {self.proc.returncode}:\n" + "\n".join(tail))

    def _log(self) -> bytes:
        with self.log_path.open("rb") as log:
            log.seek(self._log_start)
            return log.read()

    def kill(self) -> None:
        """SIGKILL: a crash, nothing flushed."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM and wait (then SIGKILL past the timeout)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        return self.proc.returncode

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
