"""The trainer (`nudge trainer`): one learner for every scorer.

It consumes the training examples and bandit rewards the workers resolve,
learns with models.bundle, and publishes the bundle as a signed snapshot
(models.snapshot) to the compacted model-snapshots topic, key b"models",
every NUDGE_SNAPSHOT_EVERY_EXAMPLES records or NUDGE_SNAPSHOT_EVERY_S
seconds, whichever comes first, and once more on SIGTERM.

Exactly once, without a consumer group: the trainer's input position lives
*in the snapshot* (meta "offsets": the next offset per "topic:partition"),
sealed together with the models that learned everything before it. So it
assigns every input partition itself and, at start, reads the newest
snapshot it can verify and seeks each partition to the offset stored there
(the beginning where none is stored). A trainer killed at any moment
resumes from the models and the position of one and the same snapshot:
what it learned after that snapshot was lost with it and is learned again,
nothing twice, nothing skipped. Example and reward ids are also
deduplicated within a run (a worker that re-sends after a retry).

A snapshot that fails verification is counted, logged in one line with its
reason, and never unpickled; the trainer falls back to the record before it,
or to a fresh bundle.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import math
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError
from prometheus_client import start_http_server

from models.bandit import BanditReward
from models.bundle import ModelBundle, bundle_from_snapshot, learn_example, learn_reward, new_bundle, next_version
from models.labels import Example
from models.offers import load_offers
from models.snapshot import Snapshot, SnapshotRefused, open_snapshot, seal
from nudge.errors import ConfigError, DeliveryError, DependencyUnavailable
from nudge.kafka_clients import connect
from nudge.settings import Settings
from nudge.stopping import stop_on_signals
from nudge.text import printable
from nudge.topics import ensure_topics
from streams.trainer_metrics import TrainerMetrics

__all__ = [
    "SNAPSHOT_KEY",
    "Positions",
    "Refusal",
    "SeenIds",
    "TrainSummary",
    "configure",
    "newest_valid",
    "offset_key",
    "run",
    "snapshot_records_newest_first",
    "train",
]

log = logging.getLogger(__name__)

SNAPSHOT_KEY = b"models"
POLL_TIMEOUT_MS = 200
# Ids remembered against duplicates: 250,000 is minutes of examples at the soak's rate (a simulated
# month a minute), where duplicates come seconds apart; at most ~20 MB (1,000,000 held ~123 MB and
# grew the trainer +33 % in a 10-minute soak).
DEDUP_MAX_IDS = 250_000
_READ_BACK = 8  # snapshot records fetched per step when looking for the newest valid one
_SNAPSHOT_READ_TIMEOUT_S = 30.0
_SEND_TIMEOUT_S = 60.0


def offset_key(topic: str, partition: int) -> str:
    """The key of one input partition in a snapshot's offsets.

    >>> offset_key("training-examples", 3)
    'training-examples:3'
    """
    return f"{topic}:{partition}"


class Positions:
    """The next offset to read per input partition: what a snapshot stores, and where a restart seeks.

    >>> p = Positions({"ex:0": 10})
    >>> p.start("ex", 0), p.start("ex", 1)       # stored, or None: from the beginning
    (10, None)
    >>> p.advance("ex", 0, 10); p.advance("ex", 1, 4); p.as_meta()
    {'ex:0': 11, 'ex:1': 5}
    >>> p.caught_up({"ex:0": 11, "ex:1": 5}), p.caught_up({"ex:0": 12})
    (True, False)
    """

    def __init__(self, stored: Mapping[str, int] | None = None) -> None:
        self.next: dict[str, int] = {str(k): int(v) for k, v in (stored or {}).items()}

    def start(self, topic: str, partition: int) -> int | None:
        return self.next.get(offset_key(topic, partition))

    def advance(self, topic: str, partition: int, offset: int) -> None:
        """Record that the message at `offset` was handled (learned or skipped)."""
        key = offset_key(topic, partition)
        if offset + 1 > self.next.get(key, 0):
            self.next[key] = offset + 1

    def as_meta(self) -> dict[str, int]:
        return dict(sorted(self.next.items()))

    def caught_up(self, end_offsets: Mapping[str, int]) -> bool:
        """True when every partition's position has reached its end offset (empty ones count as reached)."""
        return all(self.next.get(key, 0) >= end for key, end in end_offsets.items() if end > 0)


class SeenIds:
    """The ids learned lately: at least the last `capacity // 2`, at most `capacity` (bounded memory).

    Duplicates reach the trainer when a worker folds its last uncommitted
    batches again after a crash or a rebalance: the same example, seconds
    apart, never days. Two generations of 64-bit digests (78 bytes an id,
    against 123 for the strings with their order) are enough: when the
    current one is full it becomes the previous one and the oldest goes.

    >>> seen = SeenIds(capacity=2)
    >>> seen.add("a"), seen.add("a"), seen.add("b"), seen.add("c"), seen.add("a")
    (True, False, True, True, True)
    """

    def __init__(self, capacity: int = DEDUP_MAX_IDS) -> None:
        self.generation = max(1, capacity // 2)
        self._current: set[int] = set()
        self._previous: set[int] = set()

    def add(self, item: str) -> bool:
        """True if `item` is new (and remember it), False if it was seen."""
        key = int.from_bytes(hashlib.blake2b(item.encode(), digest_size=8).digest(), "little")
        if key in self._current or key in self._previous:
            return False
        if len(self._current) >= self.generation:
            self._previous, self._current = self._current, set()
        self._current.add(key)
        return True


@dataclass(frozen=True, slots=True)
class Refusal:
    """A snapshot record refused at start: where it was and why."""

    offset: int
    reason: str
    detail: str


def newest_valid(
    records: Iterable[tuple[int, bytes | None]], key: bytes
) -> tuple[Snapshot | None, ModelBundle | None, list[Refusal]]:
    """The first record of `records` (given newest first) that verifies and holds a bundle.

    Returns (snapshot, bundle, refusals of the newer records tried first);
    (None, None, refusals) when none verifies. A record with no value (a
    compaction tombstone) is passed over without counting.
    """
    refusals: list[Refusal] = []
    for offset, value in records:
        if value is None:
            continue
        try:
            snapshot = open_snapshot(value, key=key)
            return snapshot, bundle_from_snapshot(snapshot), refusals
        except SnapshotRefused as exc:
            refusals.append(Refusal(offset, exc.reason, exc.detail))
    return None, None, refusals


@dataclass
class TrainSummary:
    """What a run did: records read, learned and skipped, snapshots published."""

    resumed_version: int = 0
    version: int = 0
    records: int = 0
    learned: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    snapshots: int = 0
    refused: int = 0
    last_snapshot_bytes: int = 0
    elapsed_s: float = 0.0


# --- Kafka edges ----------------------------------------------------------------


LAG_EVERY_S: Final = 5.0  # how often the consumer-lag gauge is refreshed


def _consumer(settings: Settings, client_id: str) -> KafkaConsumer:
    return connect(
        KafkaConsumer,
        settings,
        client_id=client_id,
        group_id=None,  # the position lives in the snapshot, not in a consumer group
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        max_poll_records=2000,
        fetch_max_wait_ms=100,
        max_partition_fetch_bytes=settings.max_message_bytes,
    )


def snapshot_records_newest_first(consumer: KafkaConsumer, topic: str) -> Iterator[tuple[int, bytes | None]]:
    """The snapshot topic's records from the newest back, fetched a few at a time."""
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    begin = consumer.beginning_offsets([tp])[tp]
    hi = consumer.end_offsets([tp])[tp]
    while hi > begin:
        lo = max(begin, hi - _READ_BACK)
        consumer.seek(tp, lo)
        chunk: list[tuple[int, bytes | None]] = []
        deadline = time.monotonic() + _SNAPSHOT_READ_TIMEOUT_S
        # Compaction leaves gaps: read until the position passes hi, whatever offsets exist.
        while consumer.position(tp) < hi:
            if time.monotonic() > deadline:
                raise DependencyUnavailable(f"reading {topic} from offset {lo} timed out")
            for message in consumer.poll(timeout_ms=POLL_TIMEOUT_MS).get(tp, []):
                if message.offset < hi:
                    chunk.append((message.offset, message.value))
        yield from reversed(chunk)
        hi = lo


def _input_partitions(consumer: KafkaConsumer, settings: Settings) -> list[TopicPartition]:
    partitions: list[TopicPartition] = []
    for topic in (settings.topic_training_examples, settings.topic_bandit_rewards):
        ids = consumer.partitions_for_topic(topic)
        if not ids:
            raise ConfigError(f"topic {topic} does not exist on {settings.kafka_bootstrap}")
        partitions.extend(TopicPartition(topic, p) for p in sorted(ids))
    return partitions


class _Trainer:
    """The loop's state; effects (Kafka, metrics) at the edges of each method."""

    def __init__(self, settings: Settings, metrics: TrainerMetrics) -> None:
        self.settings = settings
        self.key = settings.model_key.encode()
        self.metrics = metrics
        self.summary = TrainSummary()
        self.seen_examples = SeenIds()
        self.seen_rewards = SeenIds()
        self.positions = Positions()
        self.bundle: ModelBundle | None = None
        self.since_snapshot = 0
        self.last_snapshot_at = time.monotonic()

    # -- start ---------------------------------------------------------------

    def resume(self, consumer: KafkaConsumer) -> None:
        topic = self.settings.topic_model_snapshots
        snapshot, bundle, refusals = newest_valid(snapshot_records_newest_first(consumer, topic), self.key)
        for r in refusals:
            self.metrics.refused.labels(r.reason).inc()
            log.warning(
                "refused snapshot %s:0@%d: %s%s; trying the one before it",
                topic,
                r.offset,
                r.reason,
                f" ({printable(r.detail)})" if r.detail else "",
            )
        self.summary.refused = len(refusals)
        if snapshot is None or bundle is None:
            offer_ids = [offer.id for offer in load_offers(self.settings.offers_path)]
            self.bundle = new_bundle(offer_ids)
            log.info("no valid snapshot in %s: starting from a fresh bundle", topic)
            return
        self.bundle = bundle
        self.positions = Positions(snapshot.offsets)
        self.summary.resumed_version = self.summary.version = snapshot.version
        self.metrics.snapshot_version.set(snapshot.version)
        self.metrics.set_quality(bundle.quality)
        self.metrics.set_repairs("churn", bundle.churn.repairs)
        self.metrics.set_repairs("clv", bundle.clv.repairs)
        log.info(
            "resumed from snapshot v%d: learned %s, offsets %s",
            snapshot.version,
            bundle.learned,
            self.positions.as_meta(),
        )

    def seek(self, consumer: KafkaConsumer, partitions: Sequence[TopicPartition]) -> None:
        consumer.assign(list(partitions))
        for tp in partitions:
            stored = self.positions.start(tp.topic, tp.partition)
            if stored is None:
                consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, stored)

    # -- learning ------------------------------------------------------------

    def handle(self, topic: str, partition: int, offset: int, value: bytes | None) -> None:
        assert self.bundle is not None
        self.positions.advance(topic, partition, offset)
        self.summary.records += 1
        self.since_snapshot += 1
        try:
            if topic == self.settings.topic_training_examples:
                example = Example.from_json(value or b"")
                if not self.seen_examples.add(example.example_id):
                    return self._skip("duplicate")
                not_learned = learn_example(self.bundle, example)
                if not_learned is None:
                    self.metrics.examples.labels(example.target).inc()
                else:
                    self._skip(not_learned)
            else:
                reward = BanditReward.from_json(value or b"")
                if not self.seen_rewards.add(reward.reward_id):
                    return self._skip("duplicate")
                not_learned = learn_reward(self.bundle, reward)
                if not_learned is None:
                    self.metrics.rewards.labels(reward.offer_id, "1" if reward.reward > 0 else "0").inc()
                else:
                    self._skip(not_learned)
        except ValueError as exc:
            self._skip("malformed")
            log.warning("skipped %s:%d@%d: %s", topic, partition, offset, printable(str(exc))[:200])

    def _skip(self, reason: str) -> None:
        self.metrics.skipped.labels(reason).inc()
        self.summary.skipped[reason] = self.summary.skipped.get(reason, 0) + 1

    def due(self) -> bool:
        if self.since_snapshot == 0:
            return False
        elapsed = time.monotonic() - self.last_snapshot_at
        return self.since_snapshot >= self.settings.snapshot_every_examples or elapsed >= self.settings.snapshot_every_s

    # -- publishing ----------------------------------------------------------

    def publish(self, producer: KafkaProducer) -> None:
        bundle = self.bundle
        assert bundle is not None
        version = next_version(bundle)
        created_at = int(time.time() * 1000)
        meta = {
            "created_at": created_at,
            "offsets": self.positions.as_meta(),
            "learned": dict(bundle.learned),
            "quality": {k: v for k, v in bundle.quality.items() if math.isfinite(v)},
        }
        started = time.perf_counter()
        blob = seal(bundle, key=self.key, version=version, meta=meta)
        sealed = time.perf_counter()
        topic = self.settings.topic_model_snapshots
        try:
            producer.send(topic, key=SNAPSHOT_KEY, value=blob).get(timeout=_SEND_TIMEOUT_S)
        except KafkaError as exc:
            raise DeliveryError(
                f"snapshot v{version} ({len(blob):,} bytes) not acknowledged by {topic}: {exc}"
            ) from None
        self.since_snapshot = 0
        self.last_snapshot_at = time.monotonic()
        s = self.summary
        s.version, s.snapshots, s.last_snapshot_bytes = version, s.snapshots + 1, len(blob)
        s.learned = dict(bundle.learned)
        self.metrics.snapshot_version.set(version)
        self.metrics.snapshot_timestamp.set(created_at / 1000)
        self.metrics.snapshot_bytes.set(len(blob))
        self.metrics.set_quality(bundle.quality)
        self.metrics.set_repairs("churn", bundle.churn.repairs)
        self.metrics.set_repairs("clv", bundle.clv.repairs)
        q = bundle.quality
        log.info(
            "snapshot v%d: %s bytes sealed in %.0f ms, sent in %.0f ms; learned %s; churn AUC %s (baseline %s), "
            "CLV MAE %s (baseline %s), offer reward rate %s",
            version,
            f"{len(blob):,}",
            (sealed - started) * 1000,
            (time.perf_counter() - sealed) * 1000,
            bundle.learned,
            _fmt(q.get("churn_auc")),
            _fmt(q.get("churn_baseline_auc")),
            _fmt(q.get("clv_mae")),
            _fmt(q.get("clv_baseline_mae")),
            _fmt(q.get("nbo_reward_rate")),
        )


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def train(settings: Settings, *, stop: threading.Event, metrics: TrainerMetrics | None = None) -> TrainSummary:
    """Resume from the newest valid snapshot, learn until `stop` is set, publish a final snapshot."""
    if not settings.model_key:
        raise ConfigError("NUDGE_MODEL_KEY is empty: set a 32+ character key to train and sign model snapshots")
    started = time.monotonic()
    ensure_topics(settings, settings.model_topics)
    trainer = _Trainer(settings, metrics or TrainerMetrics())
    consumer = _consumer(settings, "nudge-trainer")
    producer: KafkaProducer | None = None
    try:
        trainer.resume(consumer)
        partitions = _input_partitions(consumer, settings)
        trainer.seek(consumer, partitions)
        trainer.metrics.offers(offer.id for offer in load_offers(settings.offers_path))
        lag_at = 0.0
        producer = connect(
            KafkaProducer,
            settings,
            client_id="nudge-trainer",
            acks="all",
            enable_idempotence=True,
            max_request_size=settings.max_message_bytes,
            linger_ms=0,
        )
        while not stop.is_set():
            batch: Mapping[TopicPartition, Any] = consumer.poll(timeout_ms=POLL_TIMEOUT_MS)
            for tp, messages in batch.items():
                for message in messages:
                    trainer.handle(tp.topic, tp.partition, message.offset, message.value)
            if trainer.due():
                trainer.publish(producer)
            if time.monotonic() - lag_at >= LAG_EVERY_S:
                lag_at = time.monotonic()
                for tp in partitions:
                    highwater = consumer.highwater(tp)  # known from the last fetch response; None before one
                    if highwater is not None:
                        trainer.metrics.lag.labels(tp.topic, str(tp.partition)).set(
                            max(0, highwater - consumer.position(tp))
                        )
        if trainer.since_snapshot:
            trainer.publish(producer)
    finally:
        consumer.close(autocommit=False)
        if producer is not None:
            producer.close(timeout=10)
    summary = trainer.summary
    summary.learned = dict(trainer.bundle.learned) if trainer.bundle else {}
    summary.elapsed_s = time.monotonic() - started
    return summary


# --- CLI ------------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    """`nudge trainer`: learn from the workers' examples and rewards, publish signed snapshots."""
    from nudge.cli import settings_epilog

    parser.description = (
        "Learn the online models (churn, CLV, RFM cut points, next-best-offer) from the\n"
        "training-examples and bandit-rewards topics and publish them as HMAC-signed snapshots\n"
        "to the compacted model-snapshots topic: every NUDGE_SNAPSHOT_EVERY_EXAMPLES records or\n"
        "NUDGE_SNAPSHOT_EVERY_S seconds, and once more on SIGTERM.\n\n"
        "Run one trainer. It keeps no consumer group: at start it resumes from the newest snapshot\n"
        "it can verify and the input offsets sealed in it, so a restart (even after kill -9)\n"
        "learns each example exactly once. A snapshot that fails verification is refused,\n"
        "counted and never unpickled. Metrics: /metrics on NUDGE_TRAINER_METRICS_PORT;\n"
        "`nudge -v trainer` logs one line per snapshot."
    )
    parser.epilog = settings_epilog(
        "kafka_bootstrap",
        "topic_training_examples",
        "topic_bandit_rewards",
        "topic_model_snapshots",
        "model_key",
        "snapshot_every_examples",
        "snapshot_every_s",
        "offers_path",
        "max_message_bytes",
        "trainer_metrics_port",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    if not settings.model_key:
        raise ConfigError("NUDGE_MODEL_KEY is empty: set a 32+ character key to train and sign model snapshots")
    metrics = TrainerMetrics()
    try:
        server, _ = start_http_server(settings.trainer_metrics_port, registry=metrics.registry)
    except OSError as exc:
        raise ConfigError(
            f"NUDGE_TRAINER_METRICS_PORT={settings.trainer_metrics_port}: cannot serve metrics ({exc.strerror or exc})"
        ) from None
    try:
        with stop_on_signals() as stop:
            s = train(settings, stop=stop, metrics=metrics)
    finally:
        server.shutdown()
    learned = ", ".join(f"{k} {v:,}" for k, v in s.learned.items())
    skipped = ", ".join(f"{k} {v:,}" for k, v in sorted(s.skipped.items())) or "none"
    print(
        f"trainer stopped after {s.elapsed_s:.1f} s: {s.records:,} records read, learned {learned}; skipped {skipped}; "
        f"{s.snapshots} snapshots published (v{s.resumed_version} -> v{s.version}), {s.refused} refused at start"
    )
    return 0
