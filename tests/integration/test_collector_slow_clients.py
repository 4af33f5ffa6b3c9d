"""A real `nudge collect` process against slow, idle, greedy and vanishing clients.

Timeouts are shortened through the settings (1 s) so the test is quick; the
process must close what it should, shed load beyond its cap with a 503, count a
hang-up as the client's doing, and still serve a good client at the end.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from nudge.settings import Settings
from tests.integration.test_collector_kafka import ROOT, http
from tests.integration.test_worker import free_port

pytestmark = pytest.mark.integration

TIMEOUT_S = 1.0
MAX_IN_FLIGHT = 3


def event(event_id: str) -> bytes:
    return orjson.dumps(
        [
            {
                "event_id": event_id,
                "type": "app_open",
                "user_id": "u1",
                "ts": int(time.time() * 1000),
                "schema_version": 1,
            }
        ]
    )


@contextlib.contextmanager
def collector(settings: Settings, stderr_path: Path) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    port = free_port()
    env = {
        **os.environ,
        **settings.to_env(),
        "NUDGE_COLLECTOR_API_KEY": "",
        "NUDGE_COLLECTOR_IDLE_TIMEOUT_S": str(TIMEOUT_S),
        "NUDGE_COLLECTOR_BODY_TIMEOUT_S": str(TIMEOUT_S),
        "NUDGE_COLLECTOR_MAX_IN_FLIGHT": str(MAX_IN_FLIGHT),
    }
    with stderr_path.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nudge", "-v", "collect", "--port", str(port)], cwd=ROOT, env=env, stderr=err
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, stderr_path.read_text()
                with contextlib.suppress(OSError):
                    if http("GET", f"http://127.0.0.1:{port}/healthz", timeout=2)[0] == 200:
                        break
                assert time.monotonic() < deadline, "nudge collect did not become healthy"
                time.sleep(0.2)
            yield port, proc
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def closed_within(sock: socket.socket, seconds: float, trickle: bytes = b"") -> tuple[bool, bytes]:
    """Keep sending `trickle` a byte at a time; True when the server closed the connection in time."""
    sock.settimeout(0.2)
    received = b""
    deadline = time.monotonic() + seconds
    sent = 0
    while time.monotonic() < deadline:
        if sent < len(trickle):
            with contextlib.suppress(OSError):
                sock.sendall(trickle[sent : sent + 1])
            sent += 1
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return True, received
        if not chunk:
            return True, received
        received += chunk
    return False, received


def slow_body_socket(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n[{"
    )
    return sock


def metric(port: int, line_start: str) -> float:
    status, body = http("GET", f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    for line in body.decode().splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no metric line starting {line_start}")


def test_slow_idle_greedy_and_vanishing_clients(unique_topics: Settings, tmp_path: Path) -> None:
    stderr_path = tmp_path / "collect.stderr"
    with collector(unique_topics, stderr_path) as (port, proc):
        url = f"http://127.0.0.1:{port}/v1/events"

        # idle: connected, never a byte
        with socket.create_connection(("127.0.0.1", port)) as idle:
            closed, _ = closed_within(idle, TIMEOUT_S + 3)
            assert closed, "an idle connection stayed open"

        # slow headers: a byte every 0.2 s keeps coming, but the headers never complete in time
        with socket.create_connection(("127.0.0.1", port)) as slow:
            headers = b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Pad: " + b"a" * 200
            closed, _ = closed_within(slow, TIMEOUT_S + 3, trickle=headers)
            assert closed, "a slow-header connection stayed open"

        # slow body: headers complete, body never finishes: 408 and closed
        with slow_body_socket(port) as slow_body:
            closed, received = closed_within(slow_body, TIMEOUT_S + 3)
            assert closed and received.startswith(b"HTTP/1.1 408"), received[:200]

        # greedy: MAX_IN_FLIGHT slow bodies hold every slot; the next request is shed with a 503 at once
        holders = [slow_body_socket(port) for _ in range(MAX_IN_FLIGHT)]
        try:
            time.sleep(0.3)
            started = time.monotonic()
            status, body = http("POST", url, event("shed"), timeout=5)
            assert status == 503, body
            assert b"in flight" in body
            assert time.monotonic() - started < TIMEOUT_S
        finally:
            for sock in holders:
                sock.close()
        time.sleep(TIMEOUT_S + 0.5)  # the holders' handlers end (hang-up or body timeout)

        # vanishing: half a body, then the client hangs up
        before = metric(port, 'nudge_collector_requests_total{code="499"}')
        with slow_body_socket(port):
            time.sleep(0.2)
        time.sleep(0.5)
        assert metric(port, 'nudge_collector_requests_total{code="499"}') >= before + 1

        # and a good client is still served
        status, body = http("POST", url, event("after"))
        assert status == 200, body
        assert proc.poll() is None
        assert metric(port, 'nudge_collector_requests_total{code="500"}') == 0

    stderr = stderr_path.read_text()
    assert "Traceback" not in stderr and " ERROR " not in stderr, stderr[-3000:]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_a_crowd_of_large_requests_is_served_or_shed_within_bounded_memory(
    unique_topics: Settings, tmp_path: Path
) -> None:
    """120 clients post ~800 kB each at once: the in-flight cap bounds the memory.

    Unbounded, the decoded batches alone took over 1 GB (2.6 GB for 400 such clients)."""
    import asyncio

    import aiohttp

    now = int(time.time() * 1000)
    body = orjson.dumps(
        [
            {
                "event_id": f"e{j}",
                "type": "search",
                "user_id": f"u{j}",
                "ts": now,
                "schema_version": 1,
                "pad": "p" * 1500,
            }
            for j in range(480)
        ]
    )
    assert 700_000 < len(body) < 1_000_000

    with collector(unique_topics, tmp_path / "collect.stderr") as (port, proc):
        baseline = rss_mb(proc.pid)

        async def crowd() -> list[int]:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

                async def one() -> int:
                    async with session.post(
                        f"http://127.0.0.1:{port}/v1/events", data=body, headers={"Content-Type": "application/json"}
                    ) as resp:
                        await resp.read()
                        return resp.status

                return await asyncio.gather(*(one() for _ in range(120)))

        statuses = asyncio.run(crowd())
        peak = rss_mb(proc.pid)
        # 3 in flight x 1 MB raw, one decoded at a time: far below what 120 decoded batches take
        assert peak - baseline < 300, f"RSS grew from {baseline:.0f} to {peak:.0f} MB"
        assert set(statuses) <= {200, 503}, statuses
        assert statuses.count(200) >= MAX_IN_FLIGHT
        assert proc.poll() is None
