"""`nudge deliver`: the delivery worker, a Kafka consumer-group shell around `Deliverer`.

It reads the outbox topic (`NUDGE_TOPIC_NOTIFICATIONS`) in the consumer group
`NUDGE_DELIVERY_GROUP`, hands each message to `Deliverer.handle` in its own
task (a message waiting for its `send_at`, or backing off, does not hold up
the ones behind it), and commits a partition's offset up to the lowest
message not yet finished (`plan.OffsetTracker`), right after outcomes are
recorded: in the send ledger, and for dead letters and token feedback, acked
by Kafka. A crash therefore redelivers messages whose outcome is already in
the ledger, and the ledger stops them (counted as duplicates prevented).

Failures: a malformed message is a dead letter; a bug while handling one is
a `processing_error` dead letter (logged with its traceback); Redis or Kafka
unavailable: the message is tried again after a pause, never skipped, never
committed. SIGTERM/SIGINT: stop reading, let started sends finish and be
recorded, commit, exit 0.

Test-only hook: with `NUDGE_DELIVERY_CRASH_AFTER_SEND=1` (or a channel name,
`push`, `sms`, `webhook`: only that channel) in its environment, the worker
kills itself (`os._exit(137)`, like kill -9) right after a provider accepted
a message, before the ledger or Kafka hear of it. The integration tests use
it to prove the crash path; never set it elsewhere.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import signal
import socket
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import redis.exceptions
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from delivery.deliverer import Deliverer, Source, dead_letter_headers
from delivery.fcm import FcmNotifier, ServiceAccount, load_service_account
from delivery.http import Notifier
from delivery.ledger import RedisLedger
from delivery.metrics import DeliveryMetrics
from delivery.plan import OffsetTracker, RetryPolicy
from delivery.twilio import TwilioNotifier
from delivery.webhook import WebhookNotifier
from nudge.args import integer
from nudge.errors import ConfigError, DependencyUnavailable
from nudge.kafka_clients import BOOTSTRAP_TIMEOUT_S
from nudge.kafka_security import client_config, probe
from nudge.redis_client import async_client, unreachable
from nudge.settings import Settings
from nudge.topics import ensure_topics

__all__ = ["CRASH_ENV", "DeliveryWorker", "build_notifiers", "configure", "run"]

log = logging.getLogger(__name__)

CRASH_ENV = "NUDGE_DELIVERY_CRASH_AFTER_SEND"
# Past this many unfinished messages a partition is paused (not read further) until half are done.
MAX_IN_FLIGHT_PER_PARTITION = 500
# Worst case of one claim -> record step: FCM may fetch a token, send, fetch again on a 401, send again.
_HTTP_CALLS_PER_ATTEMPT = 4
_DEPENDENCY_RETRY_S = 1.0
LAG_EVERY_S = 5.0  # how often nudge_consumer_lag_messages is refreshed


def check_settings(settings: Settings) -> None:
    """Settings that only make sense together (ConfigError: exit status 1, one line)."""
    floor = _HTTP_CALLS_PER_ATTEMPT * settings.delivery_http_timeout_s
    if settings.delivery_claim_lease_s <= floor:
        raise ConfigError(
            f"NUDGE_DELIVERY_CLAIM_LEASE_S={settings.delivery_claim_lease_s:g} must exceed "
            f"{_HTTP_CALLS_PER_ATTEMPT} x NUDGE_DELIVERY_HTTP_TIMEOUT_S ({floor:g} s): a live worker's "
            "claim would look stale"
        )
    if settings.fcm_project_id and not settings.fcm_credentials_path:
        raise ConfigError("NUDGE_FCM_PROJECT_ID is set but NUDGE_FCM_CREDENTIALS_PATH is empty")
    if settings.twilio_account_sid and not (settings.twilio_auth_token and settings.twilio_from):
        raise ConfigError(
            "NUDGE_TWILIO_ACCOUNT_SID is set: NUDGE_TWILIO_AUTH_TOKEN and NUDGE_TWILIO_FROM are needed too"
        )
    if settings.webhook_url and not settings.webhook_secret:
        raise ConfigError("NUDGE_WEBHOOK_URL is set but NUDGE_WEBHOOK_SECRET is empty: webhooks are always signed")
    if not (settings.fcm_project_id or settings.twilio_account_sid or settings.webhook_url):
        raise ConfigError(
            "no channel configured: set NUDGE_FCM_PROJECT_ID (push), NUDGE_TWILIO_ACCOUNT_SID (sms) "
            "or NUDGE_WEBHOOK_URL (webhook)"
        )


def _session(settings: Settings) -> aiohttp.ClientSession:
    timeout = aiohttp.ClientTimeout(total=settings.delivery_http_timeout_s)
    return aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=64))


def build_notifiers(settings: Settings, account: ServiceAccount | None) -> dict[str, Notifier]:
    """One adapter per configured channel (call inside a running event loop)."""
    notifiers: dict[str, Notifier] = {}
    if settings.fcm_project_id and account is not None:
        notifiers["push"] = FcmNotifier(
            _session(settings), account, project_id=settings.fcm_project_id, base_url=settings.fcm_url
        )
    if settings.twilio_account_sid:
        notifiers["sms"] = TwilioNotifier(
            _session(settings),
            base_url=settings.twilio_url,
            account_sid=settings.twilio_account_sid,
            auth_token=settings.twilio_auth_token,
            sender=settings.twilio_from,
        )
    if settings.webhook_url:
        notifiers["webhook"] = WebhookNotifier(
            _session(settings), url=settings.webhook_url, secret=settings.webhook_secret
        )
    return notifiers


class KafkaSink:
    """Dead letters and token feedback through an idempotent acks=all producer, each awaited until acked."""

    def __init__(self, producer: AIOKafkaProducer, settings: Settings) -> None:
        self._producer = producer
        self._settings = settings

    async def dead_letter(self, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]) -> None:
        await self._producer.send_and_wait(self._settings.topic_notifications_dlq, value, key=key, headers=headers)

    async def app_event(self, key: bytes, value: bytes) -> None:
        await self._producer.send_and_wait(self._settings.topic_app_events, value, key=key)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: DeliveryWorker) -> None:
        self._worker = worker

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self._worker.release(set(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        log.info("assigned %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned))


class DeliveryWorker:
    """The consumer loop, the per-message tasks, the commits and the shutdown."""

    def __init__(
        self,
        settings: Settings,
        consumer: AIOKafkaConsumer,
        deliverer: Deliverer,
        sink: KafkaSink,
        metrics: DeliveryMetrics,
    ) -> None:
        self.settings = settings
        self._consumer = consumer
        self._deliverer = deliverer
        self._sink = sink
        self._metrics = metrics
        self._trackers: dict[TopicPartition, OffsetTracker] = {}
        self._tasks: dict[TopicPartition, set[asyncio.Task[None]]] = {}
        self._to_commit: dict[TopicPartition, int] = {}
        self._commit_wanted = asyncio.Event()
        self._paused: set[TopicPartition] = set()
        self._read_upto: dict[TopicPartition, int] = {}
        self._lag_at = 0.0
        self.stopping = asyncio.Event()

    async def run(self) -> None:
        committer = asyncio.create_task(self._commit_loop())
        try:
            while not self.stopping.is_set():
                batches = await self._consumer.getmany(timeout_ms=200, max_records=500)
                for tp, records in batches.items():
                    for record in records:
                        self._start(tp, record)
                self._flow_control()
                self._measure_lag()
        finally:
            await self.release(set(self._trackers))
            committer.cancel()

    def _start(self, tp: TopicPartition, record: ConsumerRecord[bytes, bytes]) -> None:
        self._read_upto[tp] = record.offset + 1
        tracker = self._trackers.setdefault(tp, OffsetTracker())
        tracker.add(record.offset)
        task = asyncio.create_task(self._one(tp, tracker, record))
        tasks = self._tasks.setdefault(tp, set())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        self._metrics.in_flight.inc()
        task.add_done_callback(lambda _t: self._metrics.in_flight.dec())

    def _measure_lag(self) -> None:
        """Messages in the log past what this worker read: aiokafka's highwater (from fetch responses)."""
        now = time.monotonic()
        if now - self._lag_at < LAG_EVERY_S:
            return
        self._lag_at = now
        self._metrics.lag.clear()  # partitions given away stop being reported
        for tp in self._consumer.assignment():
            highwater, read = self._consumer.highwater(tp), self._read_upto.get(tp)
            if highwater is not None and read is not None:
                self._metrics.lag.labels(tp.topic, str(tp.partition)).set(max(0, highwater - read))

    def _flow_control(self) -> None:
        for tp, tracker in self._trackers.items():
            if tp not in self._paused and len(tracker) >= MAX_IN_FLIGHT_PER_PARTITION:
                self._consumer.pause(tp)
                self._paused.add(tp)
            elif tp in self._paused and len(tracker) < MAX_IN_FLIGHT_PER_PARTITION // 2:
                self._consumer.resume(tp)
                self._paused.discard(tp)

    async def _one(self, tp: TopicPartition, tracker: OffsetTracker, record: ConsumerRecord[bytes, bytes]) -> None:
        source = Source(record.topic, record.partition, record.offset, record.timestamp)
        while True:
            try:
                await self._deliverer.handle(record.key, record.value, source)
                self._metrics.up()
                break
            except (redis.exceptions.RedisError, KafkaError, OSError) as exc:
                # A dependency is down: the message is neither skipped nor committed; try it again.
                # A new attempt has a new ledger owner, so a send cut short here is never repeated blindly.
                failed = "kafka" if isinstance(exc, KafkaError) else "redis"
                self._metrics.dependency_up.labels(failed).set(0)
                log.warning("%s: %s (%s); trying again in %g s", source, type(exc).__name__, exc, _DEPENDENCY_RETRY_S)
                await asyncio.sleep(_DEPENDENCY_RETRY_S)
            except Exception as exc:
                log.exception("%s: processing error, dead-lettering the message", source)
                headers = dead_letter_headers(
                    "processing_error",
                    f"{type(exc).__name__}: {exc}",
                    source,
                    failed_at_ms=int(time.time() * 1000),
                    attempts=0,
                )
                try:
                    await self._sink.dead_letter(record.key, record.value, headers)
                except KafkaError:
                    await asyncio.sleep(_DEPENDENCY_RETRY_S)
                    continue
                self._metrics.dead_letters.labels("processing_error").inc()
                break
        point = tracker.done(record.offset)
        if point is not None and self._trackers.get(tp) is tracker:
            self._to_commit[tp] = point
            self._commit_wanted.set()

    async def _commit_loop(self) -> None:
        while True:
            await self._commit_wanted.wait()
            self._commit_wanted.clear()
            await self._commit(set(self._to_commit))

    async def _commit(self, partitions: set[TopicPartition]) -> None:
        offsets = {tp: OffsetAndMetadata(self._to_commit.pop(tp), "") for tp in partitions if tp in self._to_commit}
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
            self._metrics.last_commit.set(time.time())
        except (CommitFailedError, KafkaError) as exc:
            # Lost the partitions meanwhile (or the broker is away): the next owner re-reads
            # these messages and the ledger stops a second send.
            log.warning("commit of %d partition(s) failed: %s", len(offsets), exc)

    async def release(self, partitions: set[TopicPartition]) -> None:
        """Stop work on `partitions` (revoked, or shutting down): finish started sends, commit, forget them."""
        tasks = [t for tp in partitions for t in self._tasks.get(tp, ())]
        for task in tasks:
            task.cancel()
        await self._deliverer.wait_critical(_HTTP_CALLS_PER_ATTEMPT * self.settings.delivery_http_timeout_s + 5)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await self._commit(partitions)
        for tp in partitions:
            self._trackers.pop(tp, None)
            self._tasks.pop(tp, None)
            self._paused.discard(tp)


async def _metrics_server(metrics: DeliveryMetrics, port: int) -> web.AppRunner:
    async def serve(_request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", serve)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "0.0.0.0", port).start()
    except OSError as exc:
        await runner.cleanup()
        raise DependencyUnavailable(f"cannot serve metrics on port {port}: {exc.strerror}") from None
    return runner


async def _start_kafka(settings: Settings) -> tuple[AIOKafkaConsumer, AIOKafkaProducer]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=settings.delivery_group,
        client_id=f"nudge-deliver-{socket.gethostname()}-{os.getpid()}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        request_timeout_ms=int(BOOTSTRAP_TIMEOUT_S * 1000),
        **client_config(settings),
    )
    # aiokafka's own defaults are acks=1 without idempotence: a dead letter must be on the ISR.
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        acks="all",
        enable_idempotence=True,
        max_request_size=settings.max_message_bytes,
        request_timeout_ms=int(BOOTSTRAP_TIMEOUT_S * 1000),
        **client_config(settings),
    )
    try:
        await asyncio.wait_for(producer.start(), BOOTSTRAP_TIMEOUT_S * 2)
        await asyncio.wait_for(consumer.start(), BOOTSTRAP_TIMEOUT_S * 2)
    except (KafkaError, TimeoutError, OSError):
        await producer.stop()
        await consumer.stop()
        # aiokafka says "Unable to bootstrap" whatever the cause: a refused login or CA is named by `probe`.
        raise DependencyUnavailable(
            await asyncio.to_thread(probe, settings)
            or f"Kafka is not reachable at {settings.kafka_bootstrap}; start the local stack with `nudge stack up` "
            "or set NUDGE_KAFKA_BOOTSTRAP to your brokers"
        ) from None
    return consumer, producer


async def serve(
    settings: Settings, *, metrics_port: int, account: ServiceAccount | None = None, crash_after_send: str = ""
) -> int:
    """Run until SIGTERM/SIGINT; returns the exit status."""
    check_settings(settings)
    redis_client = async_client(settings, socket_timeout=5, socket_connect_timeout=BOOTSTRAP_TIMEOUT_S)
    try:
        await redis_client.ping()
    except (redis.exceptions.RedisError, OSError) as exc:
        await redis_client.aclose()
        raise DependencyUnavailable(unreachable(settings, exc)) from None
    notifiers = build_notifiers(settings, account)
    metrics = DeliveryMetrics()
    consumer = producer = None
    runner = None
    try:
        consumer, producer = await _start_kafka(settings)
        runner = await _metrics_server(metrics, metrics_port) if metrics_port else None
        sink = KafkaSink(producer, settings)

        def crash(channel: str) -> None:
            if crash_after_send in ("1", channel):
                os._exit(137)

        deliverer = Deliverer(
            notifiers=notifiers,
            ledger=RedisLedger(redis_client, lease_ms=int(settings.delivery_claim_lease_s * 1000)),
            sink=sink,
            metrics=metrics,
            policy=RetryPolicy(
                settings.delivery_max_attempts, settings.delivery_backoff_s, settings.delivery_backoff_max_s
            ),
            rates_per_s=_rates(settings),
            worker_id=f"{socket.gethostname()}:{os.getpid()}",
            lease_s=settings.delivery_claim_lease_s,
            rng=random.Random(),
            after_provider_ok=crash if crash_after_send else None,
        )
        worker = DeliveryWorker(settings, consumer, deliverer, sink, metrics)
        consumer.subscribe([settings.topic_notifications], listener=_Rebalance(worker))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.stopping.set)
        channels = ", ".join(f"{ch} ({n.provider})" for ch, n in notifiers.items())
        print(
            f"nudge deliver: {settings.topic_notifications} (group {settings.delivery_group}) -> {channels}; "
            f"metrics on :{metrics_port or '-'}",
            file=sys.stderr,
            flush=True,
        )
        await worker.run()
        return 0
    finally:
        if consumer is not None:
            await consumer.stop()
        if producer is not None:
            await producer.stop()
        if runner is not None:
            await runner.cleanup()
        for notifier in notifiers.values():
            await notifier.close()
        await redis_client.aclose()


def _rates(settings: Settings) -> Mapping[str, float]:
    return {"push": settings.fcm_rate_per_s, "sms": settings.twilio_rate_per_s, "webhook": settings.webhook_rate_per_s}


def configure(parser: argparse.ArgumentParser) -> None:
    from nudge.cli import settings_epilog

    parser.description = (
        "Deliver the outbox: read Notification messages from the notifications topic and send them\n"
        "through FCM (push), Twilio (sms) or a signed webhook, at most once per idempotency key\n"
        "(the send ledger in Redis). Failures are retried with back-off; what finally fails goes to\n"
        "the notifications dead-letter topic with its reason."
    )
    parser.add_argument(
        "--metrics-port",
        type=integer(0, 65535),
        metavar="PORT",
        help="Prometheus /metrics port, 0 for none [default: NUDGE_DELIVERY_METRICS_PORT]",
    )
    parser.epilog = (
        "examples:\n"
        "  nudge mock-providers --make-credentials sa.json     # a throwaway service account\n"
        "  nudge mock-providers --credentials sa.json &         # local FCM, Twilio and webhook on :8090\n"
        "  NUDGE_FCM_PROJECT_ID=nudge-local NUDGE_FCM_CREDENTIALS_PATH=sa.json NUDGE_FCM_URL=http://127.0.0.1:8090 \\\n"
        "    nudge deliver\n\n"
        "SIGTERM/SIGINT: started sends finish and are recorded, offsets are committed, exit 0.\n\n"
        + settings_epilog(
            "topic_notifications",
            "topic_notifications_dlq",
            "topic_app_events",
            "delivery_group",
            "delivery_metrics_port",
            "delivery_max_attempts",
            "delivery_backoff_s",
            "delivery_backoff_max_s",
            "delivery_http_timeout_s",
            "delivery_claim_lease_s",
            "fcm_url",
            "fcm_project_id",
            "fcm_credentials_path",
            "fcm_rate_per_s",
            "twilio_url",
            "twilio_account_sid",
            "twilio_auth_token",
            "twilio_from",
            "twilio_rate_per_s",
            "webhook_url",
            "webhook_secret",
            "webhook_rate_per_s",
            "kafka_bootstrap",
            "redis_url",
        )
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    check_settings(settings)
    account = load_service_account(Path(settings.fcm_credentials_path)) if settings.fcm_project_id else None
    port: int = settings.delivery_metrics_port if args.metrics_port is None else args.metrics_port
    ensure_topics(settings, (*settings.trigger_topics, settings.topic_app_events))
    # Read once here and passed down (settings are never read ad hoc); see the module docstring.
    crash_after_send = os.environ.get(CRASH_ENV, "")
    return asyncio.run(serve(settings, metrics_port=port, account=account, crash_after_send=crash_after_send))
