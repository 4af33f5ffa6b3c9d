"""`nudge trainer` against the real broker: kill -9 and restart learns each record exactly once;
a tampered snapshot is refused and the trainer resumes from the last good one."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from models.bandit import BanditReward, reward_id
from models.inputs import sanitise
from models.labels import DAY_MS, Example, example_id
from models.offers import load_offers
from models.snapshot import Snapshot, SnapshotRefused, open_snapshot
from nudge.settings import Settings
from streams.trainer import SNAPSHOT_KEY, offset_key
from tests.integration.conftest import free_port_block, unique_scope

pytestmark = pytest.mark.integration

KEY = "k" * 40
NUDGE = str(Path(sys.executable).with_name("nudge"))


@pytest.fixture
def scoped(settings: Settings) -> Iterator[Settings]:
    with unique_scope(dataclasses.replace(settings, model_key=KEY, partitions=3)) as s:
        yield s


def example(i: int) -> Example:
    """Deterministic: churners (every 4th) have been silent for longer."""
    rng = random.Random(i)
    churned = i % 4 == 0
    raw = {
        "recency_days": rng.uniform(8, 30) if churned else rng.uniform(0, 6),
        "events_7d": float(rng.randrange(0, 4) if churned else rng.randrange(2, 40)),
        "orders_total": float(rng.randrange(0, 8)),
        "spend_total": rng.uniform(0, 400),
    }
    inputs, _ = sanitise(raw)
    target = "clv_30d" if i % 5 == 0 else "churn_7d" if i % 5 == 1 else "churn"
    label = rng.uniform(0, 100) if target == "clv_30d" else float(churned)
    return Example(example_id(f"u{i}", i * DAY_MS, target), f"u{i}", target, i * DAY_MS, i * DAY_MS + 1, inputs, label)


def reward(i: int, offers: tuple[str, ...]) -> BanditReward:
    offer = offers[i % len(offers)]
    ctx, _ = sanitise({"recency_days": float(i % 9)})
    return BanditReward(reward_id(f"u{i}", i, offer), f"u{i}", offer, i, i + 1, ctx, float(i % 7 == 0), 1 / len(offers))


def produce(s: Settings, first: int, count: int, *, pace_s: float = 0.0) -> None:
    offers = tuple(o.id for o in load_offers(s.offers_path))
    producer = KafkaProducer(bootstrap_servers=s.kafka_bootstrap, acks="all", linger_ms=5)
    try:
        for i in range(first, first + count):
            producer.send(s.topic_training_examples, key=f"u{i}".encode(), value=example(i).to_json())
            if i % 5 == 0:
                producer.send(s.topic_bandit_rewards, key=f"u{i}".encode(), value=reward(i, offers).to_json())
            if pace_s and i % 100 == 99:
                producer.flush()
                time.sleep(pace_s)
        producer.flush()
    finally:
        producer.close()


def expected(first: int, count: int) -> dict[str, int]:
    ids = range(first, first + count)
    clv = sum(1 for i in ids if i % 5 == 0)
    early = sum(1 for i in ids if i % 5 == 1)
    # 14-day churn positives: fewer than models.bundle.EARLY_LABELS_UNTIL, so no early label is retired
    positives = sum(1 for i in ids if i % 5 > 1 and i % 4 == 0)
    return {
        "churn": count - clv - early,
        "churn_7d": early,
        "clv_30d": clv,
        "rewards": clv,
        "churn_positive": positives,
    }


def snapshot_blobs(s: Settings) -> list[bytes]:
    consumer = KafkaConsumer(bootstrap_servers=s.kafka_bootstrap, group_id=None, enable_auto_commit=False)
    try:
        tp = TopicPartition(s.topic_model_snapshots, 0)
        consumer.assign([tp])
        end = consumer.end_offsets([tp])[tp]
        consumer.seek_to_beginning(tp)
        out: list[bytes] = []
        deadline = time.monotonic() + 20
        while consumer.position(tp) < end and time.monotonic() < deadline:
            for messages in consumer.poll(timeout_ms=200).values():
                out.extend(m.value for m in messages)
        return out
    finally:
        consumer.close()


def snapshots(s: Settings) -> list[Snapshot]:
    out = []
    for blob in snapshot_blobs(s):
        with contextlib.suppress(SnapshotRefused):
            out.append(open_snapshot(blob, key=KEY.encode()))
    return out


def end_offsets(s: Settings) -> dict[str, int]:
    consumer = KafkaConsumer(bootstrap_servers=s.kafka_bootstrap, group_id=None)
    try:
        tps = [
            TopicPartition(t, p)
            for t in (s.topic_training_examples, s.topic_bandit_rewards)
            for p in sorted(consumer.partitions_for_topic(t) or ())
        ]
        return {offset_key(tp.topic, tp.partition): end for tp, end in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()


def start(s: Settings, tmp_path: Path, name: str, **env: str) -> tuple[subprocess.Popen[bytes], Path]:
    port = free_port_block(1, 30_000, 31_000)
    (tmp_path / f"{name}.port").write_text(str(port))
    full = {
        **os.environ,
        **s.to_env(),
        "NUDGE_TRAINER_METRICS_PORT": str(port),
        "NUDGE_SNAPSHOT_EVERY_S": "3600",
        **env,
    }
    err = tmp_path / f"{name}.err"
    with err.open("wb") as stderr:
        proc = subprocess.Popen([NUDGE, "-v", "trainer"], env=full, stdout=subprocess.PIPE, stderr=stderr)
    return proc, err


def wait_for(predicate: object, timeout: float, what: str, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"trainer exited ({proc.returncode}) while waiting for {what}")
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def stop(proc: subprocess.Popen[bytes]) -> str:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    return out.decode()


def test_kill_9_and_restart_learn_each_record_exactly_once(scoped: Settings, tmp_path: Path) -> None:
    n = 6000
    producer = threading.Thread(target=produce, args=(scoped, 0, n), kwargs={"pace_s": 0.02})
    producer.start()
    proc, err = start(scoped, tmp_path, "first", NUDGE_SNAPSHOT_EVERY_EXAMPLES="700")
    try:
        wait_for(lambda: len(snapshots(scoped)) >= 1, 60, "a first snapshot", proc)
        proc.send_signal(signal.SIGKILL)  # mid-stream: the producer is still going
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = snapshots(scoped)[-1]
    producer.join(timeout=120)
    ends = end_offsets(scoped)
    total = sum(v for k, v in expected(0, n).items() if k != "churn_positive")  # the records produced
    assert sum(ends.values()) == total
    # What the killed trainer had sealed last is behind the end: the restart must pick up there.
    assert sum(killed_at.offsets.values()) < total

    proc, err = start(scoped, tmp_path, "second", NUDGE_SNAPSHOT_EVERY_EXAMPLES="700", NUDGE_SNAPSHOT_EVERY_S="0.5")
    try:
        wait_for(lambda: snapshots(scoped)[-1].offsets == ends, 90, "the restarted trainer to catch up", proc)
        summary = stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    final = snapshots(scoped)[-1]
    assert final.offsets == ends
    assert final.meta["learned"] == expected(0, n)  # nothing twice, nothing skipped
    assert final.version > killed_at.version and final.meta["quality"]["churn_auc"] > 0.9
    assert f"resumed from snapshot v{killed_at.version}" in err.read_text()
    assert "skipped none" in summary and "0 refused at start" in summary, summary


def test_a_tampered_snapshot_is_refused_and_the_last_good_one_resumed(scoped: Settings, tmp_path: Path) -> None:
    produce(scoped, 0, 500)
    proc, _ = start(scoped, tmp_path, "first", NUDGE_SNAPSHOT_EVERY_S="0.3")
    try:
        wait_for(lambda: any(s.meta["learned"] == expected(0, 500) for s in snapshots(scoped)), 60, "learning", proc)
        stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    good = snapshot_blobs(scoped)[-1]
    good_version = open_snapshot(good, key=KEY.encode()).version
    tampered = bytearray(good)
    tampered[-100] ^= 1
    producer = KafkaProducer(bootstrap_servers=scoped.kafka_bootstrap, acks="all", max_request_size=8 << 20)
    producer.send(scoped.topic_model_snapshots, key=SNAPSHOT_KEY, value=bytes(tampered)).get(timeout=10)
    producer.send(scoped.topic_model_snapshots, key=SNAPSHOT_KEY, value=good[:1000]).get(timeout=10)
    producer.close()
    produce(scoped, 500, 100)

    proc, err = start(scoped, tmp_path, "second", NUDGE_SNAPSHOT_EVERY_S="0.3")
    try:
        wait_for(lambda: snapshots(scoped)[-1].meta["learned"] == expected(0, 600), 60, "the new records", proc)
        port = (tmp_path / "second.port").read_text()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            metrics = response.read().decode()
        summary = stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = err.read_text()
    assert "refused snapshot" in log and ": truncated" in log and ": bad_signature" in log, log
    assert f"resumed from snapshot v{good_version}" in log
    assert KEY not in log and KEY not in summary
    assert "2 refused at start" in summary and f"(v{good_version} -> v{good_version + 1}" in summary, summary
    assert snapshots(scoped)[-1].version == good_version + 1
    assert 'nudge_trainer_snapshots_refused_total{reason="bad_signature"} 1.0' in metrics
    assert 'nudge_trainer_snapshots_refused_total{reason="truncated"} 1.0' in metrics
    assert 'nudge_model_quality{metric="auc",model="churn"}' in metrics
