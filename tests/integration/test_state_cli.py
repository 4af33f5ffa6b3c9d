"""`nudge state` against the real Redis, and a smoke run of the demo (`make demo`)
against the real stack with this test's own topics, group and key prefix."""

from __future__ import annotations

import dataclasses
import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from bench import demo
from nudge import cli
from nudge.layout import changes_streams
from nudge.settings import Settings

PHONE = "+447700900123"
TOKEN = "f00dfacecafe0123456789abcdef0123456789abcdef0123456789abcdef0123"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def scoped(unique_topics: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Settings, redis.Redis]]:
    """The test's settings exported as NUDGE_* env vars (what `nudge` reads), a
    Redis client, and the test's keys removed afterwards."""
    for name, value in unique_topics.to_env().items():
        monkeypatch.setenv(name, value)
    client = redis.Redis.from_url(unique_topics.redis_url, decode_responses=True)
    yield unique_topics, client
    doomed = list(client.scan_iter(match=unique_topics.user_key_prefix + "*", count=1000))
    if doomed:
        client.delete(*doomed)
    client.delete(*changes_streams(unique_topics))
    client.close()


def test_state_of_a_stored_user(scoped: tuple[Settings, redis.Redis], capsys: pytest.CaptureFixture[str]) -> None:
    settings, client = scoped
    now_ms = int(time.time() * 1000)
    key = settings.user_key_prefix + "u7"
    client.hset(
        key,
        mapping={
            "user_id": "u7",
            "as_of": str(now_ms - 2 * 3_600_000),
            "last_event_ts": str(now_ms - 2 * 3_600_000),
            "first_seen": str(now_ms - 3 * 86_400_000),
            "events_1h": "0",
            "events_24h": "17",
            "cart_open": "1",
            "cart_value": "42.50",
            "lifecycle": "new",
            "phone": PHONE,
            "push_token": TOKEN,
            "seq": "17",
            "updated_at": str(now_ms - 90_000),
        },
    )
    client.expire(key, 3600)

    assert cli.main(["state", "u7"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"user u7  (key {key})")
    assert re.search(r"^  written +\S+Z \(1 min ago\)   seq 17$", out, re.M)
    assert re.search(r"^  as_of +\S+Z \(2 h ago\)", out, re.M)
    assert re.search(r"^  expires +in (59 min|1 h) \(TTL\)$", out, re.M)
    assert re.search(r"^  events +1h 0 · 24h 17$", out, re.M)
    assert "+44*******123" in out and "f00d…" in out
    assert PHONE not in out and TOKEN not in out
    assert "stale" not in out

    assert cli.main(["state", "u7", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["phone"] == "+44*******123" and data["seq"] == "17"
    assert cli.main(["state", "u7", "--json", "--raw"]) == 0
    assert json.loads(capsys.readouterr().out)["phone"] == PHONE

    # An hour and more without a write: the reader is told.
    client.hset(key, "updated_at", str(now_ms - 2 * 3_600_000))
    assert cli.main(["state", "u7"]) == 0
    assert "! stale: last written 2 h ago" in capsys.readouterr().out


def test_unknown_user(scoped: tuple[Settings, redis.Redis], capsys: pytest.CaptureFixture[str]) -> None:
    settings, _ = scoped
    assert cli.main(["state", "nobody"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"no state for user nobody in Redis at {settings.redis_url} (key {settings.user_key_prefix}nobody)\n"
    )


def test_redis_unreachable(
    scoped: tuple[Settings, redis.Redis], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"redis://127.0.0.1:{closed_port()}/0"
    monkeypatch.setenv("NUDGE_REDIS_URL", url)
    began = time.monotonic()
    assert cli.main(["state", "u7"]) == 1
    assert time.monotonic() - began < 10
    err = capsys.readouterr().err
    assert err.startswith("nudge state: error: ") and err.count("\n") == 1
    assert f"cannot reach Redis at {url}" in err


def test_demo_smoke(
    scoped: tuple[Settings, redis.Redis],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings, client = scoped
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    local = dataclasses.replace(settings, worker_metrics_port=port, data_dir=tmp_path)
    for name, value in local.to_env().items():
        monkeypatch.setenv(name, value)

    began = time.monotonic()
    code = demo.main(["--seconds", "4", "--rate", "1000", "--users", "40", "--seed", "5"])
    elapsed = time.monotonic() - began
    out = capsys.readouterr().out
    assert code == 0, out
    assert elapsed < 60

    header = re.search(r"nudge demo: ([\d,]+) events of (\d+) users .* ids (d\d{6})-u…", out)
    assert header, out
    events, users, tag = int(header[1].replace(",", "")), int(header[2]), header[3]
    assert 2000 <= events <= 6000  # sized to rate x seconds
    rows = re.findall(r"^ *[\d.]+s +[\d,]+ +([\d,]+) +[\d,]+ +(\d+)/(\d+) +(\d+)$", out, re.M)
    assert rows, out
    consumed, in_redis, of, dlq = rows[-1]
    assert int(in_redis) == int(of) == users and dlq == "0"
    assert int(consumed.replace(",", "")) >= events

    # What the table claims is in Redis: every demo user, holding every sent event.
    keys = list(client.scan_iter(match=f"{settings.user_key_prefix}{tag}-u*", count=1000))
    assert len(keys) == users
    assert sum(int(client.hget(k, "events_total") or 0) for k in keys) == events

    assert out.count("── ") == 3  # open cart, buyer, newest user
    assert re.search(r"── open cart: d\d{6}-u\d{5} \(simulated cohort: \w+", out)
    assert "Summary: " in out and "stopped cleanly" in out
    assert not re.search(r"\+\d{8,}", out), "a phone number was printed in clear"
    assert (tmp_path / "logs" / "demo-worker.log").read_bytes().count(b"Worker ready") == 1
