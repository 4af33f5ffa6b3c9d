"""The Faust app: topics, the user-state table, and the one agent that reads
every input topic (plus the internal re-keyed topic), a batch at a time.

The agent is a thin shell around the pure step (`streams.step.step`):

1. take a batch off the agent's queue (`streams.batches`);
2. keep only the messages the consumer admits (each partition folded exactly
   once and in offset order, whatever a rebalance left behind;
   `streams.faust_internals.Consumer.admit`);
3. call the step: it parses, routes, folds and scores, and returns the new
   states and the effects;
4. perform the effects: write the touched users to Redis (retrying while
   Redis is down) and, at the same time, produce the dead letters and
   re-keyed messages and wait for their acks;
5. every `NUDGE_CHANGELOG_FLUSH_S`, flush the changelog: one entry per user
   touched since the last flush, acknowledged by Kafka, filed in the table's
   local store; then acknowledge the batches it covers, so their offsets may
   be committed.

Steps 1-3 of batch N+1 run while batch N's effects are in flight. No offset
is committed before its state is in the changelog and in Redis. A crash
replays the uncommitted tail; the dedup memory lives inside the same
changelogged state, so the replay changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import faust
from faust.sensors import Monitor
from faust.types import EventT
from prometheus_client import generate_latest

from features.state import UserState
from nudge.kafka_security import faust_credentials
from nudge.settings import Settings
from streams import faust_internals
from streams.batches import ack, batches
from streams.health import DependencyHealth, QuietClientLogs
from streams.metrics import StreamMetrics
from streams.model_stage import ModelStage, model_stage_for
from streams.pauses import GcPolicy
from streams.snapshot_follower import follow_snapshots
from streams.step import StepConfig, StepResult, changelog_value, expected_partition, step, user_write
from streams.store import FeatureStore, open_store

__all__ = ["TABLE_NAME", "TableStates", "UserStateUpdater", "create_app"]

log = logging.getLogger(__name__)

TABLE_NAME = "user-state"
_CODEC = "nudge-user-state"
_HEALTH_CHECK_S = 2.0
_LAG_EVERY_S = 5.0  # how often nudge_consumer_lag_messages is refreshed
_RESYNC_CHUNK = 2000
_IDLE_SWEEP_S = 1.0  # with models: how long the input may be quiet before due users are swept anyway
_FLUSH_SLICE = 20  # changelog entries serialised and produced between yields (~2 ms with models)
faust_internals.register_codec(_CODEC, UserState.from_json)


class TableStates:
    """The step's view of the table: `get(user_id)` -> `UserState | None`.

    States a batch produced are looked up here first (`hold`) until that
    batch's changelog entries are in the table's store (`release`): the next
    batch is stepped while the previous one's effects are still in flight,
    and a RocksDB store holds only the bytes of the last acknowledged state.

    Depending on the store and on whether a value came from changelog
    recovery, Faust hands back a `UserState` or its JSON decoded as a dict;
    both are accepted.
    """

    def __init__(self, table: faust.Table[bytes, Any]) -> None:
        self.data = table.data
        self.held: dict[str, tuple[UserState, int]] = {}  # user -> (state, last batch that touched it)

    def get(self, user_id: str, /) -> UserState | None:
        held = self.held.get(user_id)
        if held is not None:
            return held[0]
        value = self.data.get(user_id.encode())
        if value is None or isinstance(value, UserState):
            return value
        if isinstance(value, bytes | bytearray):
            return UserState.from_json(bytes(value))
        return UserState.from_dict(value)

    def hold(self, states: dict[str, UserState], batch: int) -> None:
        for uid, state in states.items():
            self.held[uid] = (state, batch)

    def release(self, states: dict[str, UserState], batch: int) -> None:
        for uid in states:
            held = self.held.get(uid)
            if held is not None and held[1] == batch:
                del self.held[uid]


@dataclass(slots=True)
class _Stepped:
    """A batch after the step, before its effects."""

    number: int
    events: Sequence[EventT[Any]]
    result: StepResult
    refused: dict[str, int]
    started: float
    stepped: float


class _CommitMonitor(Monitor):
    """Faust's monitor, also feeding the 'last commit' metric: a worker that
    stops committing is sick. (Faust reports commits to its monitor only, not
    to every sensor, so this is the monitor the app is given.)"""

    def __init__(self, metrics: StreamMetrics) -> None:
        super().__init__()
        self.metrics = metrics

    def on_tp_commit(self, tp_offsets: Any) -> None:
        super().on_tp_commit(tp_offsets)
        self.metrics.committed()

    def on_rebalance_end(self, app: Any, state: dict[str, Any]) -> None:
        # Faust's sensor API: `state` holds time_start and, once the assignment
        # returned, time_return; the rest until now is recovery and the seek.
        super().on_rebalance_end(app, state)
        self.metrics.rebalances.observe(state["latency_end"])
        if "time_return" in state:
            self.metrics.recovery_seconds.set(state["time_end"] - state["time_return"])


class UserStateUpdater:
    """The shell: take a batch, call the step, perform its effects."""

    def __init__(
        self,
        app: faust.App,
        settings: Settings,
        metrics: StreamMetrics,
        store: FeatureStore | None,
        health: DependencyHealth,
    ) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics
        self.health = health
        self.store = store or open_store(settings, on_error=self.redis_failed, on_ok=self.redis_back)
        self.config = StepConfig.from_settings(settings)
        self.table = cast(
            "faust.Table[bytes, Any]",
            app.Table(
                TABLE_NAME,
                default=None,
                partitions=settings.partitions,
                key_type=bytes,
                help="per-user feature state (features.state.UserState)",
            ),
        )
        # Faust derives a value serializer only from model types; set ours
        # before the store and changelog topic (created lazily) read it.
        self.table.value_serializer = _CODEC
        self.states = TableStates(self.table)
        self.resync_due = False
        self._batches = 0
        # Changelog entries due (key -> partition) and the batches waiting
        # for the flush that writes them.
        self._dirty: dict[bytes, int] = {}
        self._unflushed: list[_Stepped] = []
        self._flushed_at = time.monotonic()
        self._flush_lock = asyncio.Lock()
        self.gc = GcPolicy(metrics.gc_pause_seconds, settings.gc_full_every_s)
        self.gc.install()
        # Labels and offer rewards for the trainer: only when models are on (a signing key is set).
        self.models = model_stage_for(settings) if settings.model_key else None
        if self.models is not None:
            metrics.offers(self.models.catalog)
        self._tracked: frozenset[Any] = frozenset()

    def prepare(self, events: Sequence[EventT[Any]]) -> _Stepped:
        """Admit and step a batch (CPU only; its effects come in `perform`)."""
        started = time.perf_counter()
        consumer: faust_internals.Consumer = self.app.consumer  # type: ignore[assignment]
        admitted: list[Any] = []
        refused: dict[str, int] = {}
        for event in events:
            message = event.message
            if consumer.admit(message):
                admitted.append(message)
            else:
                refused[message.topic] = refused.get(message.topic, 0) + 1
        if self.models is not None:
            self._track_assignment(self.models, consumer)
        result = step(self.states, admitted, self.config, now_ms=int(time.time() * 1000), models=self.models)
        self._batches += 1
        self.states.hold(result.states, self._batches)
        for failed, exc in result.errors:
            log.error(
                "processing %s[%d]@%d failed (dead-lettered as processing_error)",
                failed.topic,
                failed.partition,
                failed.offset,
                exc_info=exc,
            )
        return _Stepped(self._batches, events, result, refused, started, time.perf_counter())

    def _track_assignment(self, models: ModelStage, consumer: Any) -> None:
        """After a rebalance: the new partitions' users join the model stage's due index,
        and revoked partitions stop holding its event clock back."""
        assignment = frozenset(consumer.assignment())
        if assignment == self._tracked:
            return
        now_ms = int(time.time() * 1000)
        for tp in self._tracked - assignment:
            models.clock.forget((tp.topic, tp.partition))
        for tp in assignment - self._tracked:
            if tp.topic in self.settings.input_topics:  # the re-keyed topic is empty when producers key well
                models.clock.assign((tp.topic, tp.partition), wall_ms=now_ms)
        owned = {tp.partition for tp in assignment if tp.topic in self.settings.input_topics}
        partitions = self.config.partitions
        users = [
            state
            for key in list(self.table.data.keys())
            if expected_partition(key, partitions) in owned and (state := self.states.get(key.decode())) is not None
        ]
        models.track(users)
        self._tracked = assignment
        log.info("model stage: tracking the labels and exposures of %d users", len(users))

    async def perform(self, batch: _Stepped) -> None:
        """Write a stepped batch's users to Redis and produce its dead letters
        and re-keyed messages (concurrently); its users' changelog entries
        become due. The batch is acknowledged by the next changelog flush."""
        result = batch.result
        await asyncio.gather(self._send_outgoing(result), self._write(result))
        for key, partition in result.changelog:
            self._dirty[key] = partition
        self._unflushed.append(batch)
        self._observe(batch)
        self.gc.after_batch()

    async def flush(self) -> None:
        """Write every due changelog entry, wait for Kafka's acks, file them in
        the table's store, then acknowledge the batches they cover (in order).

        One entry per user however many batches touched it since the last
        flush: a user active in a session is serialised and produced once
        per `NUDGE_CHANGELOG_FLUSH_S`, not once per batch. Redis does not
        wait for this (freshness is the Redis write); offsets do. Flushes run
        one at a time, so a user's changelog never goes backwards. A state
        flushed here may already hold events of the batch being stepped:
        harmless, since its dedup memory makes their replay change nothing.
        """
        async with self._flush_lock:
            self._flushed_at = time.monotonic()
            dirty, self._dirty = self._dirty, {}
            covered, self._unflushed = self._unflushed, []
            if not covered:
                return
            started = time.perf_counter()
            try:
                await self._write_changelog(dirty)
            except BaseException:
                # Nothing is acknowledged: the next flush writes them again.
                self._dirty = {**dirty, **self._dirty}
                self._unflushed = covered + self._unflushed
                raise
            if dirty:
                self.metrics.stage_seconds.labels("changelog").observe(time.perf_counter() - started)
            for batch in covered:
                self.states.release(batch.result.states, batch.number)
                ack(batch.events)
            consumer: faust_internals.Consumer = self.app.consumer  # type: ignore[assignment]
            await consumer.refetch()

    async def _write_changelog(self, dirty: dict[bytes, int]) -> None:
        producer = self.app.producer
        topic = self.table.changelog_topic.get_topic_name()
        entries = []
        futures = []
        for i, (key, partition) in enumerate(dirty.items()):
            if i and not i % _FLUSH_SLICE:
                await asyncio.sleep(0)  # let batches go on between slices
            state = self.states.get(key.decode())
            if state is None:  # cannot happen: held until a flush files it
                log.error("no state to write to the changelog for %r: skipped", key)
                continue
            value = changelog_value(state)
            entries.append((key, state, value, partition))
            futures.append(await producer.send(topic, key, value, partition, None, None))
        metadata = await asyncio.gather(*futures)
        faust_internals.apply_to_store(
            self.table.data,
            topic,
            [(k, st, v, md.partition, md.offset) for (k, st, v, _), md in zip(entries, metadata, strict=True)],
        )

    async def _flush_every(self) -> None:
        """Flush the changelog every `NUDGE_CHANGELOG_FLUSH_S`, beside the
        batches (a flush yields between slices of entries, so a large one does
        not stall the batches for its whole length)."""
        interval = self.settings.changelog_flush_s
        while True:
            await asyncio.sleep(max(0.0, self._flushed_at + interval - time.monotonic()))
            if not self._unflushed:
                self._flushed_at = time.monotonic()
                continue
            try:
                await self.flush()
            except Exception:  # retried at the next interval; the batches stay unacknowledged
                log.exception("writing the changelog failed; retrying in %.1f s", interval)
                self._flushed_at = time.monotonic()

    async def run(self, stream: Any) -> None:
        """The agent: batches through a two-stage pipeline.

        Batch N+1 is stepped (CPU) while batch N's effects (Redis, dead
        letters) are in flight; effects run one batch at a time, in order,
        so a user's hash never goes backwards and offsets are acknowledged
        in order. Batches take whatever the queue holds when the previous
        step is done (`NUDGE_BATCH_WITHIN_S` 0): they grow with load instead
        of waiting for a fixed time. The changelog is flushed every
        `NUDGE_CHANGELOG_FLUSH_S` (`flush`).
        """
        inflight: asyncio.Future[None] | None = None
        flusher = asyncio.ensure_future(self._flush_every())
        try:
            # With models, an idle second yields an empty batch: due users are still swept in
            # (a replay that just ended leaves every score as of its last event).
            idle_s = _IDLE_SWEEP_S if self.models is not None else None
            async for events in batches(stream, self.settings.batch_max, self.settings.batch_within_s, idle_s):
                if not events and (self.models is None or not self.models.backlog()):
                    continue
                stepped = self.prepare(events)
                if inflight is not None:
                    await inflight
                inflight = asyncio.ensure_future(self.perform(stepped))
            if inflight is not None:
                await inflight
            await self.flush()
        except BaseException:
            if inflight is not None and not inflight.done():
                inflight.cancel()
            raise
        finally:
            flusher.cancel()

    async def _send_outgoing(self, result: StepResult) -> None:
        """Produce the batch's dead letters, re-keyed messages, examples and rewards; wait for every ack."""
        outgoing = result.outgoing
        learned = [
            *((self.settings.topic_training_examples, e.user_id.encode(), e.to_json()) for e in result.examples),
            *((self.settings.topic_bandit_rewards, r.user_id.encode(), r.to_json()) for r in result.rewards),
        ]
        if not outgoing and not learned:
            return
        started = time.perf_counter()
        producer = self.app.producer
        futures = [await producer.send(m.topic, m.key, m.value, None, None, m.headers) for m in outgoing]
        futures += [await producer.send(topic, key, value, None, None, None) for topic, key, value in learned]
        await asyncio.gather(*futures)
        self.metrics.stage_seconds.labels("kafka").observe(time.perf_counter() - started)

    async def _write(self, result: StepResult) -> None:
        if not result.writes:
            return
        started = time.perf_counter()
        written = await self.store.write(result.writes)
        self.metrics.stage_seconds.labels("redis").observe(time.perf_counter() - started)
        self.metrics.users_written.inc(written)
        if self.resync_due:
            await self.resync()

    def redis_failed(self, exc: BaseException) -> None:
        """The store's failure hook (called on every failed attempt)."""
        self.metrics.redis_errors.inc()
        self.health.failed("redis", exc)

    def redis_back(self) -> None:
        """The store's success hook: after an outage, rewrite every user."""
        if self.health.ok("redis"):
            self.resync_due = True

    async def resync(self) -> None:
        """Write every user of this worker's partitions to Redis again.

        Redis is derived state, and an outage can lose writes it had
        acknowledged: a node killed within its AOF fsync second, a failover
        to a replica that lagged, a flushed instance. The offsets of those
        events may be committed already, so replaying Kafka would not bring
        them back; the table still has every user's state, so rewrite them
        all (seq-guarded, so nothing newer is ever overwritten).
        """
        self.resync_due = False
        started = time.perf_counter()
        owned = {tp.partition for tp in self.app.consumer.assignment() if tp.topic in self.settings.input_topics}
        partitions = self.config.partitions
        writes = []
        models = self.models
        for key in list(self.table.data.keys()):
            if expected_partition(key, partitions) in owned:
                state = self.states.get(key.decode())
                if state is not None:
                    write = user_write(state)
                    if models is not None:  # the scores go back too, as of the event clock
                        write.fields.update(models.fields(state, models.clock.current, with_offer=True))
                    writes.append(write)
        written = 0
        for i in range(0, len(writes), _RESYNC_CHUNK):
            written += await self.store.write(writes[i : i + _RESYNC_CHUNK])
        log.warning(
            "Redis was unreachable: rewrote %d users of partitions %s in %.1f s",
            written,
            sorted(owned),
            time.perf_counter() - started,
        )

    def _observe(self, batch: _Stepped) -> None:
        m = self.metrics
        result = batch.result
        now = time.time()
        for ts in result.first_seen_at:
            m.freshness.observe(max(0.0, now - ts))
        if result.watermark is not None:
            m.watermark.set(result.watermark / 1000)
        for (topic, outcome), n in result.counts.items():
            m.events.labels(topic, outcome).inc(n)
        for reason, n in result.dlq_reasons.items():
            m.dlq.labels(reason).inc(n)
        for topic, n in batch.refused.items():
            m.events.labels(topic, "refused").inc(n)
            log.info("refused %d messages of %s: out of order, folded already or no longer ours", n, topic)
        m.stage_seconds.labels("step").observe(batch.stepped - batch.started)
        if batch.events:  # an idle sweep (models) is not a batch of input
            m.batch_size.observe(len(batch.events))
        if self.models is not None:
            for write in result.writes:
                m.scored(write.fields)
        m.batch_seconds.observe(time.perf_counter() - batch.started)
        m.last_batch.set(now)


def create_app(settings: Settings, *, web_port: int | None = None, store: FeatureStore | None = None) -> faust.App:
    """Build the worker's Faust app from settings."""
    port = settings.worker_metrics_port if web_port is None else web_port
    datadir = settings.data_dir.resolve() / "worker" / f"{settings.app_id}-{port}"
    datadir.mkdir(parents=True, exist_ok=True)
    metrics = StreamMetrics()
    app = faust.App(
        settings.app_id,
        monitor=_CommitMonitor(metrics),
        broker=f"{faust_internals.SCHEME}://{settings.kafka_bootstrap}",
        broker_credentials=faust_credentials(settings),  # SASL/TLS for every consumer and producer
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
        producer_acks=-1,
        consumer_auto_offset_reset="earliest",
        # A killed worker's partitions move on after this, not Faust's 60 s.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=3.0,
    )
    metrics.known(topic for topic in (*settings.input_topics, settings.topic_rekeyed))
    health = DependencyHealth(metrics.dependency_up)
    health.known("kafka", "redis")
    QuietClientLogs.install(health, "kafka", ("aiokafka", "kafka"))

    updater = UserStateUpdater(app, settings, metrics, store, health)

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
        await updater.run(stream)

    app.agent(topics, name="nudge.update_user_state")(update_user_state)

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        return web.bytes(generate_latest(metrics.registry), content_type="text/plain; version=0.0.4")

    @app.page("/offsets")
    async def offsets_page(web: Any, request: Any) -> Any:
        consumer: faust_internals.Consumer = app.consumer  # type: ignore[assignment]
        return web.json(consumer.offsets_report())

    @app.timer(interval=_LAG_EVERY_S)  # type: ignore[untyped-decorator]
    async def consumer_lag() -> None:
        consumer: faust_internals.Consumer = app.consumer  # type: ignore[assignment]
        metrics.lag.clear()  # partitions given away stop being reported
        for (topic, partition), behind in consumer.lag().items():
            metrics.lag.labels(topic, str(partition)).set(behind)

    @app.timer(interval=_HEALTH_CHECK_S)  # type: ignore[untyped-decorator]
    async def kafka_back() -> None:
        # A batch that went through does not say every broker is back (with
        # 3 brokers one may still be down); clients that stopped failing do.
        health.recover_if_quiet("kafka", quiet_s=3 * _HEALTH_CHECK_S)

    if updater.models is not None:
        stage = updater.models

        @app.task  # type: ignore[untyped-decorator]
        async def follow_model_snapshots() -> None:
            await follow_snapshots(settings, stage, metrics)

    @app.task  # type: ignore[untyped-decorator]
    async def log_ready() -> None:
        log.info("nudge worker ready: topics %s", ", ".join((*settings.input_topics, settings.topic_rekeyed)))

    return app
