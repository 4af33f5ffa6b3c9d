"""The Faust app: topics, the user-state table, and the one agent that reads
every input topic (plus the internal re-keyed topic), a batch at a time.

Each batch goes through `UserStateUpdater.process`:

1. validate each message (`nudge.events.parse_event`); a bad one goes to the
   dead-letter topic with its reason;
2. a message whose Kafka key is not its user_id, or which sits on another
   partition than its user_id hashes to (a producer with a different
   partitioner), is re-keyed through the internal `rekeyed` topic so the
   user's state lives in exactly one partition;
3. fold the event into the user's state (features.state.fold): duplicates
   and events older than the dedup memory change nothing;
4. put each touched user's state into the table once (one changelog message
   per user per batch), then produce the changelog, DLQ and re-key messages
   and, at the same time, write the touched users to Redis (retrying while
   Redis is down); wait for both before the batch is acknowledged.

The agent reads its queue a batch at a time (`streams.batches`) and acks a
batch only after this, and offsets are committed only through acked ones
(`streams.transport`), so an event is never committed before its state is in
the changelog and in Redis. A crash replays the uncommitted
tail; the dedup memory, which lives inside the same changelogged state,
makes that replay a no-op.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Sequence
from typing import Any

import faust
import orjson
from faust.sensors import Sensor
from faust.serializers import codecs
from faust.types import TP, EventT
from kafka.partitioner.default import murmur2
from prometheus_client import generate_latest

from features.state import FoldConfig, Outcome, UserState, fold
from nudge.events import Rejection, parse_event
from nudge.settings import Settings
from streams import transport
from streams.batches import ack, batches
from streams.dlq import dlq_headers
from streams.metrics import StreamMetrics
from streams.pauses import GcPolicy
from streams.store import FeatureStore, UserWrite, open_store

__all__ = ["UserStateUpdater", "create_app", "expected_partition"]

log = logging.getLogger(__name__)

TABLE_NAME = "user-state"


class UserStateCodec(codecs.Codec):
    """Table values: `UserState` as orjson bytes."""

    def _dumps(self, obj: Any) -> bytes:
        return obj.to_json()  # type: ignore[no-any-return]

    def _loads(self, s: bytes) -> Any:
        return UserState.from_json(s)


_CODEC = UserStateCodec()
codecs.register("nudge-user-state", _CODEC)


@functools.lru_cache(maxsize=1 << 17)
def expected_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default (murmur2) partitioner gives `key`."""
    return int((murmur2(key) & 0x7FFFFFFF) % partitions)


def _as_state(value: Any) -> UserState:
    if isinstance(value, UserState):
        return value
    if isinstance(value, bytes | bytearray):
        value = orjson.loads(value)
    return UserState.from_dict(value)


class UserStateTable(faust.Table):  # type: ignore[type-arg]
    """A Faust table whose changelog is produced in bulk, once per batch.

    Faust sends one changelog message per `table[key] = value` through its
    producer buffer, which awaits each send in turn; under load the worker
    spent its time in "producer buffer full" waits. Here `on_key_set` only
    records the change; `flush_changelog` produces all of a batch's changes
    at once, waits for every ack, and records the persisted offsets exactly
    as Faust's own callback does (RocksDB uses them at recovery).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pending_changelog: list[tuple[int, bytes, Any]] = []

    def user_state(self, key: bytes) -> UserState | None:
        """The user's state. Depending on the store and on whether it came
        from changelog recovery, Faust hands back a UserState or its JSON
        decoded as a dict; both are accepted."""
        value = self.get(key)
        return value if value is None or isinstance(value, UserState) else _as_state(value)

    def _to_value(self, v: Any) -> Any:
        return _as_state(v)

    def on_key_set(self, key: Any, value: Any) -> None:
        partition = self.partition_for_key(key)
        assert partition is not None  # we never set use_partitioner
        self._pending_changelog.append((partition, key, value))
        self._sensor_on_set(self, key, value)

    def take_changelog(self) -> list[tuple[int, bytes, bytes]]:
        """The changes recorded since the last call, serialised for the changelog."""
        pending, self._pending_changelog = self._pending_changelog, []
        return [(partition, key, _CODEC.dumps(value)) for partition, key, value in pending]

    def record_persisted(self, metadata: Sequence[Any]) -> None:
        highest: dict[TP, int] = {}
        for md in metadata:
            tp = TP(md.topic, md.partition)
            highest[tp] = max(highest.get(tp, -1), md.offset)
        for tp, offset in highest.items():
            self.data.set_persisted_offset(tp, offset)


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
        self.table: UserStateTable = app.tables.add(  # type: ignore[assignment]
            UserStateTable(
                app,
                name=TABLE_NAME,
                default=None,
                partitions=settings.partitions,
                key_type=bytes,
                beacon=app.tables.beacon,
                help="per-user feature state (features.state.UserState)",
            )
        )
        # Faust derives a value serializer only from model types; set ours
        # before the store and changelog topic (created lazily) read it.
        self.table.value_serializer = "nudge-user-state"
        self._outbox: list[tuple[str, bytes | None, bytes | None, Any]] = []
        self._send_lock = asyncio.Lock()
        self.gc = GcPolicy(metrics.gc_pause_seconds, settings.gc_full_every_s)
        self.gc.install()

    def _dead_letter(self, message: Any, reason: str, detail: str) -> None:
        headers = dlq_headers(
            reason,
            detail,
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            timestamp_ms=int(message.timestamp * 1000) if message.timestamp else None,
        )
        self._outbox.append((self.settings.topic_dlq, message.key, message.value, headers))
        self.metrics.dlq.labels(reason).inc()
        self.metrics.events.labels(message.topic, "rejected").inc()

    async def _send_all(self) -> None:
        """Produce the batch's changelog, DLQ and re-keyed messages; wait for every ack.

        A snapshot taken earlier must never reach the changelog after a later
        one (a restart would recover the older state while the newer events
        are already committed). There is one agent; the lock keeps that true
        should anything else ever call this concurrently.
        """
        async with self._send_lock:
            await self._send_all_locked()

    async def _send_all_locked(self) -> None:
        producer = self.app.producer
        changelog_topic = self.table.changelog_topic.get_topic_name()
        futures: list[Any] = []
        for partition, key, value in self.table.take_changelog():
            futures.append(await producer.send(changelog_topic, key, value, partition, None, None))
        n_changelog = len(futures)
        outbox, self._outbox = self._outbox, []
        for topic, out_key, out_value, headers in outbox:
            futures.append(await producer.send(topic, out_key, out_value, None, None, headers))
        if futures:
            results = await asyncio.gather(*futures)
            self.table.record_persisted(results[:n_changelog])

    async def _store_users(self, writes: list[UserWrite], states: list[UserState]) -> None:
        if not writes:
            return
        started = time.perf_counter()
        written = await self.store.write(writes)
        for w, state in zip(writes, states, strict=True):
            state.written = (w.seq, w.fields) if w.stored else None
        self.metrics.redis_write_seconds.observe(time.perf_counter() - started)
        self.metrics.users_written.inc(written)
        self.metrics.redis_up.set(1)

    async def process(self, stream: Any, events: Sequence[EventT[Any]]) -> None:
        started = time.perf_counter()
        settings = self.settings
        partitions = settings.partitions
        rekeyed_topic = settings.topic_rekeyed
        table = self.table
        consumer: transport.Consumer = self.app.consumer  # type: ignore[assignment]
        counts: dict[tuple[str, str], int] = {}
        touched: dict[str, tuple[UserState, EventT[Any]]] = {}
        oldest_ts: dict[str, float] = {}
        for event in events:
            message = event.message
            topic = message.topic
            if not consumer.admit(message):
                # Out of order, already folded, or no longer ours (after a
                # rebalance; streams/transport.py). Not acked, so it counts
                # for no commit; it comes again, in order, if it is ours.
                message.acked = True
                counts[topic, "refused"] = counts.get((topic, "refused"), 0) + 1
                continue
            try:
                parsed = parse_event(
                    message.value, max_bytes=settings.max_event_bytes, max_future_ms=settings.max_future_ms
                )
                if isinstance(parsed, Rejection):
                    self._dead_letter(message, parsed.reason, parsed.detail)
                    continue
                uid = parsed.user_id
                key = uid.encode()
                if topic != rekeyed_topic and (
                    message.key != key or message.partition != expected_partition(key, partitions)
                ):
                    self._outbox.append((rekeyed_topic, key, message.value, message.headers))
                    outcome = "rekeyed"
                else:
                    entry = touched.get(uid)
                    state = entry[0] if entry is not None else (table.user_state(key) or UserState(uid))
                    result = fold(state, parsed, self.config)
                    outcome = result.value
                    if result is Outcome.EXPIRED:
                        self._dead_letter(message, "too_old", f"ts {parsed.ts} is older than the dedup memory of {uid}")
                        continue
                    # A duplicate changes nothing, but its user is still
                    # written: after a crash the changelog may hold state
                    # that never reached Redis, and the redelivered events
                    # are then all duplicates. The write is idempotent.
                    touched[uid] = (state, event)
                    if uid not in oldest_ts:
                        oldest_ts[uid] = message.timestamp
            except Exception as exc:  # the worker never dies on input
                log.exception("processing %s[%d]@%d failed", topic, message.partition, message.offset)
                self._dead_letter(message, "processing_error", f"{type(exc).__name__}: {exc}")
                continue
            counts[topic, outcome] = counts.get((topic, outcome), 0) + 1

        writes: list[UserWrite] = []
        watermark = 0
        for uid, (state, event) in touched.items():
            # The table (and a RocksDB store) file the key under the partition
            # of the event being processed: make it the user's last event.
            stream._set_current_event(event)
            table[uid.encode()] = state
            base = state.written
            writes.append(
                UserWrite(uid, state.events_total, state.features(), *(base if base is not None else (None, None)))
            )
            watermark = max(watermark, state.as_of or 0)
        stream._set_current_event(None)
        # Changelog, DLQ and re-keyed messages must be in Kafka, and the users
        # in Redis, before this batch is acknowledged (the agent acks it when
        # this method returns). The two are independent: Redis may show a
        # state a moment before its changelog is durable, and a crash in
        # between replays the same events to the same state (same seq).
        await asyncio.gather(self._send_all(), self._store_users(writes, [s for s, _ in touched.values()]))
        if writes:
            now = time.time()
            for ts in oldest_ts.values():
                if ts:
                    self.metrics.freshness.observe(max(0.0, now - ts))
            self.metrics.watermark.set(watermark / 1000)
        await consumer.refetch()
        for (topic, outcome), n in counts.items():
            self.metrics.events.labels(topic, outcome).inc(n)
            if outcome == "refused":
                log.info("refused %d messages of %s: out of order, folded already or no longer ours", n, topic)
        self.metrics.batch_size.observe(len(events))
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
        self.metrics.last_batch.set(time.time())
        self.gc.after_batch()


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
        # On a rebalance, finish (and commit) what is buffered before giving
        # partitions away, so the next owner starts from committed offsets
        # and recovers a changelog no old owner still writes to.
        stream_wait_empty=True,
        broker_max_poll_records=settings.batch_max * 2,
        consumer_max_fetch_size=settings.max_message_bytes,
        producer_max_request_size=settings.max_message_bytes,
        producer_linger_ms=1,
        consumer_auto_offset_reset="earliest",
        # A killed worker's partitions move on after this, not Faust's 60 s.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=3.0,
        table_cleanup_interval=60.0,
    )
    metrics = StreamMetrics()
    app.sensors.add(_CommitSensor(metrics))

    def redis_failed(_exc: BaseException) -> None:
        metrics.redis_errors.inc()
        metrics.redis_up.set(0)

    updater = UserStateUpdater(app, settings, metrics, store or open_store(settings, on_error=redis_failed))
    app.nudge_metrics = metrics  # type: ignore[attr-defined]
    app.nudge_updater = updater  # type: ignore[attr-defined]

    # One agent reads all input topics. One agent per topic raced: the agents
    # share users' states, and interleaved batches lost events across a
    # kill -9 under load. One agent per process keeps each batch's
    # fold -> changelog -> Redis -> ack strictly sequential; scale out with
    # processes (they share the partitions).
    topics = app.topic(
        *settings.input_topics,
        settings.topic_rekeyed,
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.partitions,
    )

    async def update_user_state(stream: Any) -> None:
        async for events in batches(stream, settings.batch_max, settings.batch_within_s):
            await updater.process(stream, events)
            ack(events)

    app.agent(topics, name="nudge.update_user_state")(update_user_state)

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        return web.bytes(generate_latest(metrics.registry), content_type="text/plain; version=0.0.4")

    @app.page("/offsets")
    async def offsets_page(web: Any, request: Any) -> Any:
        consumer: transport.Consumer = app.consumer  # type: ignore[assignment]
        return web.json(consumer.offsets_report())

    @app.task  # type: ignore[untyped-decorator]
    async def log_ready() -> None:
        log.info("nudge worker ready: topics %s", ", ".join((*settings.input_topics, settings.topic_rekeyed)))

    return app
