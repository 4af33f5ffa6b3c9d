"""The Faust app: topics, the user-state table, and one agent per input topic.

Every agent runs the same batch step (`UserStateUpdater.process`):

1. validate each message (`nudge.events.parse_event`); a bad one goes to the
   dead-letter topic with its reason;
2. a message whose Kafka key is not its user_id, or which sits on another
   partition than its user_id hashes to (a producer with a different
   partitioner), is re-keyed through the internal `rekeyed` topic so the
   user's state lives in exactly one partition;
3. fold the event into the user's state (features.state.fold): duplicates
   and events older than the dedup memory change nothing;
4. put each touched user's state into the table once (one changelog message
   per user per batch), then flush the producer so the changelog, DLQ and
   re-key messages are in Kafka before the batch is acknowledged;
5. write the touched users to Redis (retrying while Redis is down).

Faust acknowledges a `take_events` batch only after the agent body returns,
and commits only acknowledged offsets, so an event is never committed before
its state is in the changelog and in Redis. A crash replays the uncommitted
tail; the dedup memory, which lives inside the same changelogged state,
makes that replay a no-op.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import faust
import orjson
from faust.sensors import Sensor
from faust.serializers import codecs
from faust.types import EventT
from kafka.partitioner.default import murmur2
from prometheus_client import generate_latest

from features.state import FoldConfig, Outcome, UserState, fold
from nudge.events import Rejection, parse_event
from nudge.settings import Settings
from streams import transport
from streams.dlq import dlq_headers
from streams.metrics import StreamMetrics
from streams.store import FeatureStore, UserWrite, open_store

__all__ = ["UserStateUpdater", "create_app", "expected_partition"]

log = logging.getLogger(__name__)

TABLE_NAME = "user-state"


class UserStateCodec(codecs.Codec):
    """Table values: `UserState` as orjson bytes."""

    def _dumps(self, obj: Any) -> bytes:
        return orjson.dumps(obj.to_dict())

    def _loads(self, s: bytes) -> Any:
        return UserState.from_dict(orjson.loads(s))


codecs.register("nudge-user-state", UserStateCodec())


def expected_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default (murmur2) partitioner gives `key`."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class _CommitSensor(Sensor):
    """Feeds the 'last commit' metric: a worker that stops committing is sick."""

    def __init__(self, metrics: StreamMetrics) -> None:
        super().__init__()
        self.metrics = metrics

    def on_tp_commit(self, tp_offsets: Any) -> None:
        self.metrics.committed()


class UserStateUpdater:
    """The batch step shared by every input agent."""

    def __init__(self, app: faust.App, settings: Settings, metrics: StreamMetrics, store: FeatureStore) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics
        self.store = store
        self.config = FoldConfig.from_settings(settings)
        self.table = app.Table(
            TABLE_NAME,
            default=None,
            partitions=settings.partitions,
            key_type=bytes,
            # Keys are user ids, hashed like the input topics' keys: the
            # changelog partition is the user's input partition.
            use_partitioner=True,
        )
        # Faust derives a value serializer only from model types; set ours
        # before the store and changelog topic (created lazily) read it.
        self.table.value_serializer = "nudge-user-state"
        self.dlq = app.topic(settings.topic_dlq, key_serializer="raw", value_serializer="raw")
        self.rekeyed = app.topic(
            settings.topic_rekeyed, key_serializer="raw", value_serializer="raw", partitions=settings.partitions
        )

    def _dead_letter(self, message: Any, reason: str, detail: str) -> None:
        self.dlq.send_soon(
            key=message.key,
            value=message.value,
            headers=dlq_headers(
                reason,
                detail,
                topic=message.topic,
                partition=message.partition,
                offset=message.offset,
                timestamp_ms=int(message.timestamp * 1000) if message.timestamp else None,
            ),
        )
        self.metrics.dlq.labels(reason).inc()
        self.metrics.events.labels(message.topic, "rejected").inc()

    async def process(self, events: Sequence[EventT]) -> None:
        started = time.perf_counter()
        settings = self.settings
        partitions = settings.partitions
        rekeyed_topic = settings.topic_rekeyed
        table = self.table
        counts: dict[tuple[str, str], int] = {}
        touched: dict[str, UserState] = {}
        oldest_ts: dict[str, float] = {}
        for event in events:
            message = event.message
            topic = message.topic
            try:
                parsed = parse_event(
                    message.value, max_bytes=settings.max_event_bytes, max_future_ms=settings.max_future_ms
                )
                if isinstance(parsed, Rejection):
                    self._dead_letter(message, parsed.reason, parsed.detail)
                    continue
                uid = parsed.user_id
                key = uid.encode()
                if topic != rekeyed_topic and (message.key != key or message.partition != expected_partition(key, partitions)):
                    self.rekeyed.send_soon(key=key, value=message.value, headers=message.headers)
                    outcome = "rekeyed"
                else:
                    state = touched.get(uid)
                    if state is None:
                        state = table.get(key) or UserState(uid)
                    result = fold(state, parsed, self.config)
                    outcome = result.value
                    if result is Outcome.EXPIRED:
                        self._dead_letter(message, "too_old", f"ts {parsed.ts} is older than the dedup memory of {uid}")
                        continue
                    if result is not Outcome.DUPLICATE:
                        touched[uid] = state
                        if uid not in oldest_ts:
                            oldest_ts[uid] = message.timestamp
            except Exception as exc:  # the worker never dies on input
                log.exception("processing %s[%d]@%d failed", topic, message.partition, message.offset)
                self._dead_letter(message, "processing_error", f"{type(exc).__name__}: {exc}")
                continue
            counts[topic, outcome] = counts.get((topic, outcome), 0) + 1

        writes: list[UserWrite] = []
        watermark = 0
        for uid, state in touched.items():
            table[uid.encode()] = state
            fields = state.features()
            writes.append((uid, state.events_total, fields))
            watermark = max(watermark, state.as_of or 0)
        # Changelog, DLQ and re-keyed messages must be in Kafka before this
        # batch is acknowledged (Faust acks it when this method returns).
        await self.app.producer.flush()
        if writes:
            write_started = time.perf_counter()
            written = await self.store.write(writes)
            self.metrics.redis_write_seconds.observe(time.perf_counter() - write_started)
            self.metrics.users_written.inc(written)
            self.metrics.redis_up.set(1)
            now = time.time()
            for ts in oldest_ts.values():
                if ts:
                    self.metrics.freshness.observe(max(0.0, now - ts))
            self.metrics.watermark.set(watermark / 1000)
        for (topic, outcome), n in counts.items():
            self.metrics.events.labels(topic, outcome).inc(n)
        self.metrics.batch_size.observe(len(events))
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
        self.metrics.last_batch.set(time.time())


def create_app(settings: Settings, *, web_port: int | None = None, store: FeatureStore | None = None) -> faust.App:
    """Build the worker's Faust app from settings."""
    transport.register()
    port = settings.worker_metrics_port if web_port is None else web_port
    datadir = settings.data_dir.resolve() / "worker" / f"{settings.app_id}-{port}"
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.app_id,
        broker=f"{transport.SCHEME}://{settings.kafka_bootstrap}",
        store=settings.store,
        datadir=str(datadir),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication,
        web_port=port,
        web_host="0.0.0.0",
        web_in_thread=False,
        stream_buffer_maxsize=max(4 * settings.batch_max, 8192),
        stream_wait_empty=False,
        broker_max_poll_records=settings.batch_max * 2,
        consumer_max_fetch_size=settings.max_message_bytes,
        producer_max_request_size=settings.max_message_bytes,
        producer_linger_ms=5,
        consumer_auto_offset_reset="earliest",
        table_cleanup_interval=60.0,
    )
    metrics = StreamMetrics()
    app.sensors.add(_CommitSensor(metrics))
    updater = UserStateUpdater(app, settings, metrics, store or open_store(settings))
    app.nudge_metrics = metrics  # type: ignore[attr-defined]
    app.nudge_updater = updater  # type: ignore[attr-defined]

    def _agent_for(topic_name: str) -> None:
        topic = app.topic(topic_name, key_serializer="raw", value_serializer="raw", partitions=settings.partitions)

        async def update_user_state(stream: faust.StreamT[bytes]) -> None:
            async for batch in stream.take_events(settings.batch_max, within=settings.batch_within_s):
                await updater.process(batch)

        update_user_state.__name__ = f"update_user_state_{topic_name.replace('-', '_')}"
        update_user_state.__qualname__ = update_user_state.__name__
        app.agent(topic, name=f"nudge.update_user_state.{topic_name}")(update_user_state)

    for name in (*settings.input_topics, settings.topic_rekeyed):
        _agent_for(name)

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        return web.bytes(generate_latest(metrics.registry), content_type="text/plain; version=0.0.4")

    @app.task
    async def log_ready() -> None:
        log.info("nudge worker ready: topics %s", ", ".join((*settings.input_topics, settings.topic_rekeyed)))

    return app
