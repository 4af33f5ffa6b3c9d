"""The trigger service against the real Redis and Kafka: caps under racing processes, wait-for across a
restart, replays that publish once, and `nudge why`.

Users' hashes and changes entries are written here exactly as the stream worker writes them (the layout
in docs/contracts.md), so the service is tested on its own input contract.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from kafka import KafkaConsumer

from nudge.layout import changes_streams, user_key
from nudge.notifications import Notification
from nudge.redis_client import sync_client
from nudge.settings import Settings
from tests.integration.conftest import free_port_block, unique_scope
from triggers.rules import parse_rules
from triggers.service import Publisher, TriggerMetrics, TriggerService, load_context
from triggers.store import TriggerStore

NUDGE = str(Path(sys.executable).with_name("nudge"))

# Five rules every change qualifies for, each change a new episode of each (once_per: seq), so every
# evaluation has something to send and only the caps stop it: 2 push messages per user per day, 3 on
# all channels.
BURST_RULES = """
version: 1
guardrails:
  holdout: 0.0
  quiet_hours: {start: "00:00", end: "00:00"}
  caps:
    push: {day: 2, week: 10}
    all: {day: 3, week: 10}
rules:
""" + "".join(
    f"""  - id: every_change_{i}
    priority: {i}
    when: [{{cart_open: {{eq: 1}}}}]
    once_per: [seq]
    cooldown: 1ms
    channels: [push]
    message: {{body: "change {{seq}} rule {i}"}}
"""
    for i in range(1, 6)
)

ONE_RULE = BURST_RULES.split("  - id: every_change_2")[0]

CART_RULES = """
version: 1
guardrails:
  holdout: 0.0
  quiet_hours: {start: "00:00", end: "00:00"}
rules:
  - id: cart
    when:
      - cart_open: {eq: 1}
      - last_add_to_cart_ts: {after: last_purchase_ts}
    wait: {after: last_add_to_cart_ts, for: 3s}
    once_per: [last_add_to_cart_ts]
    cooldown: 1h
    channels: [push]
    message: {body: "your cart"}
"""


@pytest.fixture
def scoped(settings: Settings, tmp_path: Path) -> Iterator[Settings]:
    with unique_scope(settings) as s:
        yield s


def with_rules(s: Settings, tmp_path: Path, text: str) -> Settings:
    import dataclasses

    path = tmp_path / "rules.yaml"
    path.write_text(text)
    return dataclasses.replace(s, rules_path=path)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def write_user(client: object, s: Settings, uid: str, seq: int, **fields: str) -> None:
    """As the worker does: the hash (with seq and updated_at), then a changes entry."""
    values = {
        "user_id": uid,
        "seq": str(seq),
        "updated_at": str(now_ms()),
        "push_opt_in": "1",
        "push_token": f"token-{uid}",
        "timezone": "UTC",
        "cart_open": "1",
        **fields,
    }
    client.hset(user_key(s, uid), mapping=values)  # type: ignore[attr-defined]
    client.xadd(changes_streams(s)[0], {"user_id": uid, "seq": str(seq)})  # type: ignore[attr-defined]


def drained(client: object, s: Settings) -> bool:
    """Every changes entry, on every shard, read and acknowledged by the group (which exists somewhere)."""
    seen = False
    for stream in changes_streams(s):
        try:
            groups = client.xinfo_groups(stream)  # type: ignore[attr-defined]
        except Exception:
            continue  # a shard no user hashes to has no stream
        for g in groups:
            if g["name"].decode() == s.triggers_group:
                seen = True
                if int(g["pending"]) or int(g.get("lag") or 0):
                    return False
    return seen


def read_topic(s: Settings, topic: str, expect_at_least: int = 0, timeout_s: float = 15) -> list[bytes]:
    consumer = KafkaConsumer(
        topic, bootstrap_servers=s.kafka_bootstrap, group_id=None, auto_offset_reset="earliest",
        consumer_timeout_ms=1500,
    )  # fmt: skip
    out: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            out += [m.value for m in consumer]
            if len(out) >= expect_at_least:
                break
    finally:
        consumer.close()
    return out


def start_service(s: Settings, tmp_path: Path, name: str) -> subprocess.Popen[bytes]:
    port = free_port_block(1, 31_000, 32_000)
    env = {**os.environ, **s.to_env(), "NUDGE_TRIGGERS_METRICS_PORT": str(port)}
    err = (tmp_path / f"{name}.err").open("wb")
    return subprocess.Popen([NUDGE, "-v", "triggers", "--tick", "0.2"], env=env, stdout=subprocess.PIPE, stderr=err)


def stop(proc: subprocess.Popen[bytes], tmp_path: Path, name: str) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    assert proc.returncode == 0, (tmp_path / f"{name}.err").read_text()


def wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def in_process(s: Settings, wall: object = None) -> TriggerService:
    rules, context = load_context(s)
    client = sync_client(s)
    store = TriggerStore(client, prefix=s.triggers_key_prefix, shards=s.changes_shards, kept=s.decisions_kept)
    service = TriggerService(s, rules, context, store, Publisher(s), TriggerMetrics())
    if wall is not None:
        service.wall = wall  # type: ignore[assignment]
    service.ensure_groups()
    return service


def test_caps_hold_with_two_processes_racing_on_a_burst(scoped: Settings, tmp_path: Path) -> None:
    """1,000 qualifying changes for 10 users, two trigger processes: each user gets exactly its cap."""
    s = with_rules(scoped, tmp_path, BURST_RULES)
    client = sync_client(s)
    # groups first, so the processes see the burst from its start
    in_process(s).publisher.close()
    procs = [start_service(s, tmp_path, f"t{i}") for i in range(2)]
    try:
        time.sleep(1.0)
        for seq in range(1, 101):
            for u in range(10):
                write_user(client, s, f"burst{u}", seq)
        wait_for(lambda: drained(client, s), 60, "both processes to drain the changes stream")
    finally:
        for i, p in enumerate(procs):
            stop(p, tmp_path, f"t{i}")
    sent = [Notification.from_json(v) for v in read_topic(s, s.topic_notifications, expect_at_least=20)]
    per_user = collections.Counter(n.user_id for n in sent)
    assert per_user == {f"burst{u}": 2 for u in range(10)}, per_user
    assert len({n.idempotency_key for n in sent}) == len(sent)
    decisions = [orjson.loads(v) for v in read_topic(s, s.topic_decisions, expect_at_least=20)]
    reasons = collections.Counter((d["outcome"], d["reason"]) for d in decisions)
    assert reasons[("sent", "")] == 20
    assert reasons[("suppressed", "cap:push:day")] >= 10  # every user was evaluated past its cap
    assert len(client.xinfo_consumers(changes_streams(s)[0], s.triggers_group)) == 2  # both read from the group


def test_cart_abandonment_fires_after_the_wait_across_a_restart_and_not_after_a_purchase(
    scoped: Settings, tmp_path: Path
) -> None:
    s = with_rules(scoped, tmp_path, CART_RULES)
    client = sync_client(s)
    in_process(s).publisher.close()
    first = start_service(s, tmp_path, "first")
    t0 = now_ms()
    try:
        time.sleep(1.0)
        write_user(client, s, "abandoner", 1, last_add_to_cart_ts=str(t0))
        write_user(client, s, "buyer", 1, last_add_to_cart_ts=str(t0))
        wait_for(lambda: drained(client, s), 20, "the adds to be read")
        store = TriggerStore(client, prefix=s.triggers_key_prefix)
        assert store.pending() == 2  # both carts wait in the shared schedule
    finally:
        stop(first, tmp_path, "first")
    # the buyer pays within the wait; the service is down meanwhile
    write_user(client, s, "buyer", 2, last_add_to_cart_ts=str(t0), last_purchase_ts=str(t0 + 1000), cart_open="0")
    assert read_topic(s, s.topic_notifications, timeout_s=2) == []
    second = start_service(s, tmp_path, "second")
    try:
        wait_for(lambda: store.pending() == 0, 30, "the schedule to run after the restart")
    finally:
        stop(second, tmp_path, "second")
    sent = [Notification.from_json(v) for v in read_topic(s, s.topic_notifications, expect_at_least=1)]
    assert [(n.user_id, n.rule) for n in sent] == [("abandoner", "cart")]
    assert sent[0].decided_at >= t0 + 3000  # not before the wait ended


def test_a_change_read_twice_publishes_one_message(scoped: Settings, tmp_path: Path) -> None:
    s = with_rules(scoped, tmp_path, ONE_RULE)
    client = sync_client(s)
    service = in_process(s)
    try:
        write_user(client, s, "twice", 7)
        first = service.handle_user("twice")
        again = service.handle_user("twice")  # a redelivered change, or another process
        assert [d.outcome for d in first] == ["sent"]
        assert again == []
    finally:
        service.publisher.close()
    sent = read_topic(s, s.topic_notifications, expect_at_least=1)
    assert len(sent) == 1
    assert service.metrics.replays.labels("no")._value.get() == 1


def test_a_crash_between_the_guard_and_kafka_publishes_on_the_retry(scoped: Settings, tmp_path: Path) -> None:
    s = with_rules(scoped, tmp_path, ONE_RULE)
    client = sync_client(s)
    service = in_process(s)
    service.republish_after_ms = 0  # the retry comes at once here, not after a dead process's claim timeout

    class Crash(Exception):
        pass

    class DiesBeforeKafka:
        """The process dies after the guard recorded the episode, before any message left it."""

        def decision(self, user_id: str, record: bytes) -> None:
            pass

        def notification(self, user_id: str, message: bytes) -> None:
            pass

        def flush(self) -> None:
            raise Crash

    real = service.publisher
    try:
        write_user(client, s, "crashy", 3)
        service.publisher = DiesBeforeKafka()
        with pytest.raises(Crash):
            service.handle_user("crashy")
        service.publisher = real
        retried = service.handle_user("crashy")
        assert retried == []  # nothing new decided: the guard had recorded the episode
        service.handle_user("crashy")  # published now: a third look publishes nothing
    finally:
        real.close()
    sent = [Notification.from_json(v) for v in read_topic(s, s.topic_notifications, expect_at_least=1)]
    assert [n.user_id for n in sent] == ["crashy"]
    assert service.metrics.replays.labels("yes")._value.get() == 1


def test_stale_state_is_refused(scoped: Settings, tmp_path: Path) -> None:
    s = with_rules(scoped, tmp_path, ONE_RULE)
    client = sync_client(s)
    service = in_process(s, wall=lambda: now_ms() + int(s.trigger_max_state_age_s * 1000) + 5000)
    try:
        write_user(client, s, "old", 1)
        assert service.handle_user("old") == []
        assert service.metrics.changes.labels("stale")._value.get() == 1
    finally:
        service.publisher.close()


def test_nudge_why_explains_the_decisions(scoped: Settings, tmp_path: Path) -> None:
    s = with_rules(scoped, tmp_path, ONE_RULE)
    client = sync_client(s)
    service = in_process(s)
    try:
        for seq in range(1, 5):
            write_user(client, s, "curious", seq)
            service.handle_user("curious")
    finally:
        service.publisher.close()
    env = {**os.environ, **s.to_env()}
    out = subprocess.run([NUDGE, "why", "curious"], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("sent by push") == 2
    assert "as many push messages as allowed per day" in out.stdout
    assert "token-curious" not in out.stdout
    none = subprocess.run([NUDGE, "why", "nobody"], env=env, capture_output=True, text=True, timeout=30)
    assert none.returncode == 1 and "no decisions recorded for user nobody" in none.stderr


def test_a_bad_rule_file_stops_the_service_at_start_with_its_line(scoped: Settings, tmp_path: Path) -> None:
    s = with_rules(scoped, tmp_path, BURST_RULES.replace("cooldown: 1ms", "cooldown: soon", 1))
    env = {**os.environ, **s.to_env()}
    out = subprocess.run([NUDGE, "triggers"], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1
    assert f"{s.rules_path}:14: rule 'every_change_1': cooldown: 'soon' is not a duration" in out.stderr


def test_rules_parse_in_the_test_files() -> None:
    assert len(parse_rules(BURST_RULES).rules) == 5
    assert len(parse_rules(ONE_RULE).rules) == 1
    parse_rules(CART_RULES)


def test_caps_hold_on_redis_cluster_with_two_services_racing(cluster_stack: Settings, tmp_path: Path) -> None:
    """The guard's keys of one user share a hash tag: the script runs on Cluster unchanged, and holds."""
    import threading

    with unique_scope(cluster_stack) as scoped_cluster:
        s = with_rules(scoped_cluster, tmp_path, BURST_RULES)
        assert s.redis_cluster and s.changes_shards == 16
        services = [in_process(s) for _ in range(2)]
        client = sync_client(s)
        stop_now = threading.Event()
        threads = [
            threading.Thread(target=svc.run, args=(stop_now.is_set,), kwargs={"tick_s": 0.2}) for svc in services
        ]
        for t in threads:
            t.start()
        try:
            for seq in range(1, 51):
                for u in range(10):
                    uid = f"cl{u}"
                    client.hset(user_key(s, uid), mapping={
                        "user_id": uid, "seq": str(seq), "updated_at": str(now_ms()), "push_opt_in": "1",
                        "push_token": f"token-{uid}", "cart_open": "1",
                    })  # fmt: skip
                    from nudge.layout import changes_stream_of

                    client.xadd(changes_stream_of(s, uid), {"user_id": uid, "seq": str(seq)})
            wait_for(lambda: drained(client, s), 60, "the shards to drain")
        finally:
            stop_now.set()
            for t in threads:
                t.join(timeout=30)
            for svc in services:
                svc.publisher.close()
        sent = [Notification.from_json(v) for v in read_topic(s, s.topic_notifications, expect_at_least=20)]
        assert collections.Counter(n.user_id for n in sent) == {f"cl{u}": 2 for u in range(10)}


def test_with_the_event_clock_a_replay_decides_in_simulated_time(scoped: Settings, tmp_path: Path) -> None:
    """Days ago in event time: the cart's wait ends when the watermark passes it, not on the wall clock."""
    s = with_rules(scoped, tmp_path, CART_RULES)
    client = sync_client(s)
    service = in_process(s)
    service.event_time = True
    past = now_ms() - 5 * 86_400_000
    try:
        write_user(client, s, "replayed", 1, as_of=str(past), last_add_to_cart_ts=str(past))
        assert service.handle_user("replayed") == []
        assert service.run_due() == 0  # the watermark is at the add: 3 s of event time to go
        write_user(client, s, "other", 1, as_of=str(past + 2_000), cart_open="0")
        service.handle_user("other")
        assert service.run_due() == 0
        write_user(client, s, "other", 2, as_of=str(past + 4_000), cart_open="0")
        service.handle_user("other")
        assert service.run_due() == 1
    finally:
        service.publisher.close()
    (decision,) = [orjson.loads(v) for v in read_topic(s, s.topic_decisions, expect_at_least=1)]
    assert decision["user_id"] == "replayed" and decision["outcome"] == "sent"
    assert decision["decided_at"] == past + 4_000  # as of the watermark
    (sent,) = [Notification.from_json(v) for v in read_topic(s, s.topic_notifications, expect_at_least=1)]
    assert abs(sent.send_at - now_ms()) < 60_000  # the outbox runs on the wall clock: not expired on arrival


QUIET_RULES = ONE_RULE.replace(
    'quiet_hours: {start: "00:00", end: "00:00"}', 'quiet_hours: {start: "22:00", end: "08:00"}'
)


@pytest.mark.parametrize("withdraws", [False, True])
def test_a_message_delayed_by_quiet_hours_is_sent_when_they_end_unless_consent_went(
    scoped: Settings, tmp_path: Path, withdraws: bool
) -> None:
    from datetime import datetime
    from zoneinfo import ZoneInfo

    s = with_rules(scoped, tmp_path, QUIET_RULES)
    client = sync_client(s)
    service = in_process(s)
    night = int(datetime(2026, 7, 1, 23, 30, tzinfo=ZoneInfo("Pacific/Tongatapu")).timestamp() * 1000)
    morning = int(datetime(2026, 7, 2, 8, 0, tzinfo=ZoneInfo("Pacific/Tongatapu")).timestamp() * 1000)
    service.clock = lambda: night  # type: ignore[method-assign]
    try:
        write_user(client, s, "sleeper", 1, timezone="Pacific/Tongatapu")
        (delayed,) = service.handle_user("sleeper")
        assert (delayed.outcome, delayed.send_at) == ("delayed", morning)
        assert read_topic(s, s.topic_notifications, timeout_s=2) == []
        service.clock = lambda: morning - 60_000  # type: ignore[method-assign]
        assert service.run_due() == 0
        if withdraws:
            write_user(client, s, "sleeper", 2, timezone="Pacific/Tongatapu", push_opt_in="0")
        service.clock = lambda: morning  # type: ignore[method-assign]
        assert service.run_due() == 1
    finally:
        service.publisher.close()
    records = [orjson.loads(v) for v in read_topic(s, s.topic_decisions, expect_at_least=2)]
    sent = read_topic(s, s.topic_notifications, timeout_s=3)
    if withdraws:
        assert [(r["outcome"], r["reason"]) for r in records] == [("delayed", ""), ("suppressed", "consent")]
        assert sent == []
    else:
        assert [(r["outcome"], r["reason"]) for r in records] == [("delayed", ""), ("sent", "after_quiet_hours")]
        assert records[0]["decision_id"] != records[1]["decision_id"]
        (n,) = [Notification.from_json(v) for v in sent]
        assert n.idempotency_key == delayed.idempotency_key


def test_a_user_whose_decision_fails_is_skipped_and_the_others_go_on(
    scoped: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import triggers.service as service_module

    s = with_rules(scoped, tmp_path, ONE_RULE)
    client = sync_client(s)
    service = in_process(s)
    real = service_module.evaluate

    def flaky(fields, *args, **kwargs):  # type: ignore[no-untyped-def]
        if fields.get("user_id") == "poison":
            raise ZeroDivisionError("a state nobody foresaw")
        return real(fields, *args, **kwargs)

    monkeypatch.setattr(service_module, "evaluate", flaky)
    try:
        write_user(client, s, "poison", 1)
        write_user(client, s, "healthy", 1)
        assert service.poll_changes() == 2
    finally:
        service.publisher.close()
    assert service.metrics.errors._value.get() == 1
    assert drained(client, s)  # both acknowledged: the poison is not read again forever
    (sent,) = [Notification.from_json(v) for v in read_topic(s, s.topic_notifications, expect_at_least=1)]
    assert sent.user_id == "healthy"
