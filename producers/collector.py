"""The HTTP collector (`nudge collect`): apps and web shops POST events, Kafka acknowledges them.

Mobile apps and shops do not speak Kafka. They POST a JSON array of events to
`/v1/events`; every event is checked against the event contract
(`nudge.events.parse_event_obj`) and the valid ones are produced to their input
topic, keyed by user_id, with the client's own JSON re-serialised by orjson
(values unchanged). The answer is sent only after Kafka acknowledged every
valid event of the request (acks=all), so "accepted" means durable.

API (JSON in, JSON out):

    POST /v1/events      body: [event, ...]   header X-Api-Key when a key is configured
      200  every event accepted
      207  some (or all) events rejected: see each result's reason
      400  body is not a JSON array at all (not UTF-8, broken framing, an object: send [{...}]), or empty
      401  API key configured and X-Api-Key missing or wrong
      408  body not received within NUDGE_COLLECTOR_BODY_TIMEOUT_S (the connection is closed)
      413  body over NUDGE_COLLECTOR_MAX_BODY_BYTES (once inflated, for Content-Encoding: gzip)
           or more events than NUDGE_COLLECTOR_MAX_BATCH
      415  Content-Type is not application/json
      503  Kafka did not acknowledge in time, or NUDGE_COLLECTOR_MAX_IN_FLIGHT requests are being
           handled already; Retry-After set; nothing is reported accepted
    GET /healthz         200 {"status": "ok"} or 503 {"status": "unavailable", "reason": ...}
    GET /metrics         Prometheus text format

A 200/207 body is `{"accepted": n, "rejected": m, "results": [...]}` with one
result per event in request order: `{"index", "event_id", "status": "accepted"}`
or `{"index", "status": "rejected", "reason", "detail"}` (plus "event_id" when
it is a valid id). Reasons are `Rejection.REASONS`, "duplicate_in_batch" (an
event_id already accepted earlier in the same request; the first valid one
wins) and "unprocessable" (checking the event failed: a bug of ours, logged).
No content makes a request fail as a whole: an element that does not decode
on its own (invalid UTF-8, a NaN, nesting past MAX_DEPTH) is rejected alone
as long as the array's framing holds (`split_array`). A request answered 503
may still be partly written to Kafka: clients retry the same event_ids, which
is safe because consumers dedup by event_id.

Connections: a connection whose request headers are not complete
NUDGE_COLLECTOR_IDLE_TIMEOUT_S after it opened (or after its last answer) is
closed, which covers idle and slow-header clients alike. A client that hangs
up mid-body is counted as code "499" (nginx's "client closed request"), not
as a server error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import logging
import queue
import re
import sys
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from kafka.errors import KafkaError
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from nudge.cli import settings_epilog
from nudge.errors import ConfigError, DeliveryError, DependencyUnavailable
from nudge.events import Event, Rejection, id_problem, parse_event_obj
from nudge.logs import display_url
from nudge.settings import Settings
from nudge.topics import ensure_topics, topic_for_event_type
from producers.kafka import EventProducer

__all__ = [
    "REQUEST_SECONDS_BUCKETS",
    "AckingProducer",
    "CollectorMetrics",
    "KafkaAckingProducer",
    "Outbound",
    "check_batch",
    "configure",
    "create_app",
    "run",
]

log = logging.getLogger(__name__)

REQUEST_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
DEFAULT_ACK_TIMEOUT_S = 10.0
# After a failed delivery /healthz stays red until a later success or until this
# long has passed, so a load balancer that stopped sending traffic lets us back in.
FAILURE_MEMORY_S = 30.0
RETRY_AFTER_S = 5
EXTRA_REASONS = ("duplicate_in_batch", "unprocessable")
BUSY_RETRY_AFTER_S = 1
LINGER_S = 2.0
SHED_LOG_EVERY_S = 10.0
# The status nginx logs when the client closed the connection first; never sent, only counted.
CLIENT_CLOSED = "499"
RESPONSE_CODES = ("200", "207", "400", "401", "408", "413", "415", CLIENT_CLOSED, "500", "503")


# --- the producer seam --------------------------------------------------------------------------------------------


class AckingProducer(Protocol):
    """What the collector needs from a Kafka producer; unit tests pass a fake."""

    def submit(self, messages: Sequence[Outbound], on_done: Callable[[BaseException | None], None]) -> None:
        """Queue a request's messages; call `on_done` exactly once, from any thread.

        With None once Kafka acknowledged all of them; with a DeliveryError on
        the first message that is not acknowledged or cannot even be queued.
        May block (metadata, full buffer): the collector calls it from its
        sender thread, never from the event loop.
        """
        ...

    def unhealthy_reason(self) -> str | None:
        """None when the producer can deliver; else why not. Must be cheap."""
        ...


class KafkaAckingProducer(EventProducer):
    """The shared `EventProducer`, with one future per request and a health check.

    `EventProducer.send` reports failures in bulk at `flush()`; an HTTP answer
    needs the outcome of its own messages. One future per request, settled by
    the last acknowledgement, wakes the event loop once per request instead of
    once per event (a cross-thread wake-up costs more than validating an event).
    """

    def __init__(self, settings: Settings, *, ack_timeout_s: float = DEFAULT_ACK_TIMEOUT_S, **overrides: Any) -> None:
        # A send blocked on metadata must not outlive the request that waits for it.
        overrides.setdefault("max_block_ms", int(ack_timeout_s * 1000))
        config = producer_config(settings)
        super().__init__(settings, client_id=config["client_id"], linger_ms=config["linger_ms"], **overrides)
        self._closed = False

    def submit(self, messages: Sequence[Outbound], on_done: Callable[[BaseException | None], None]) -> None:
        pending = len(messages)
        settled = False
        lock = threading.Lock()

        def settle(exc: BaseException | None) -> None:
            nonlocal settled
            with lock:
                if settled:
                    return
                settled = True
            on_done(exc)

        def on_ack(_metadata: Any) -> None:
            nonlocal pending
            with lock:
                pending -= 1
                last = pending == 0
            with self._lock:
                self.acked += 1
            if last:
                settle(None)

        def on_error(exc: BaseException) -> None:
            with self._lock:
                self.failed += 1  # flush() waits until every sent message is acked or failed
            settle(DeliveryError(f"Kafka did not acknowledge a message: {exc!r}"))

        self.sent += len(messages)
        if not messages:
            settle(None)
        for m in messages:
            try:
                sent = self._producer.send(m.topic, value=m.value, key=m.key)
            except KafkaError as exc:
                # Messages queued before it may still land: the 503 tells the client to retry them all.
                settle(DeliveryError(f"cannot queue a message for {m.topic}: {exc}"))
                return
            sent.add_callback(on_ack)
            sent.add_errback(on_error)

    def warm_up(self, topics: Sequence[str]) -> None:
        """Fetch the topics' metadata now, so the first request does not pay for it."""
        for topic in topics:
            try:
                self._producer.partitions_for(topic)
            except KafkaError as exc:
                raise DependencyUnavailable(
                    f"no metadata for topic {topic} from Kafka at {self.settings.kafka_bootstrap} ({exc})"
                ) from None

    def unhealthy_reason(self) -> str | None:
        if self._closed:
            return "producer closed"
        metrics = self._producer.metrics().get("producer-metrics", {})
        if not metrics.get("connection-count", 0):
            return f"no connection to Kafka at {self.settings.kafka_bootstrap}"
        return None

    def close(self, timeout: float | None = 30.0) -> None:
        self._closed = True
        super().close(timeout=timeout)


def producer_config(settings: Settings) -> dict[str, Any]:
    """The collector's producer settings (kafka-python names), for benchmarks that compare with it."""
    return {
        "client_id": "nudge-collector",
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 5,
        "batch_size": 512 * 1024,
        "max_request_size": settings.max_message_bytes,
    }


class _Outcomes:
    """Hands requests' outcomes from Kafka's threads to the event loop, one wake-up for many.

    Acknowledgements arrive in bursts (one produce response settles many
    requests); waking the loop once per request costs more than checking the
    events did.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._ready: list[tuple[asyncio.Future[None], BaseException | None]] = []

    def settle(self, future: asyncio.Future[None], exc: BaseException | None) -> None:
        """Any thread: resolve `future` on the loop (with `exc`, if any)."""
        with self._lock:
            self._ready.append((future, exc))
            first = len(self._ready) == 1
        if first:  # no drain is scheduled yet
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                self._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        with self._lock:
            ready, self._ready = self._ready, []
        for future, exc in ready:
            if future.done():  # the request timed out meanwhile
                continue
            if exc is None:
                future.set_result(None)
            else:
                future.set_exception(exc)


class _Sender:
    """The one thread that queues messages into the producer, in request order.

    Queuing may block (metadata, a full buffer) and must never block the event loop.
    """

    def __init__(self, producer: AckingProducer, loop: asyncio.AbstractEventLoop) -> None:
        self._producer = producer
        self._loop = loop
        self._outcomes = _Outcomes(loop)
        self._queue: queue.SimpleQueue[tuple[Sequence[Outbound], asyncio.Future[None]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="collector-send", daemon=True)
        self._thread.start()

    def send(self, messages: Sequence[Outbound]) -> asyncio.Future[None]:
        """The future resolves once Kafka acknowledged every message (or fails with DeliveryError)."""
        future: asyncio.Future[None] = self._loop.create_future()
        self._queue.put((messages, future))
        return future

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            messages, future = item

            def done(exc: BaseException | None, future: asyncio.Future[None] = future) -> None:
                self._outcomes.settle(future, exc)

            try:
                self._producer.submit(messages, done)
            except Exception as exc:  # a broken producer must fail its requests, not kill the thread
                log.exception("queuing a request's messages failed")
                done(DeliveryError(f"cannot queue the messages: {exc!r}"))

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)


# --- validation (pure) ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outbound:
    """One valid event, ready for Kafka."""

    index: int
    event_id: str
    topic: str
    key: bytes
    value: bytes


def check_batch(items: Sequence[Any], settings: Settings) -> tuple[list[dict[str, Any]], list[Outbound]]:
    """Check each decoded event: a result per item in order, and the messages to produce.

    An item may also be an `Undecodable` (an array element that is not valid
    JSON on its own: see `split_array`); it gets its own rejection. Accepted
    results are provisional: the caller reports them only once Kafka
    acknowledged every outbound message.
    """
    results: list[dict[str, Any]] = []
    outbound: list[Outbound] = []
    first_index: dict[str, int] = {}
    for index, obj in enumerate(items):
        verdict, value = _verdict(obj, settings)
        if not isinstance(verdict, Rejection) and verdict.event_id in first_index:
            verdict = Rejection(
                "duplicate_in_batch", f"event_id already accepted at index {first_index[verdict.event_id]}"
            )
        if isinstance(verdict, Rejection):
            result: dict[str, Any] = {
                "index": index,
                "status": "rejected",
                "reason": verdict.reason,
                "detail": verdict.detail,
            }
            event_id = obj.get("event_id") if isinstance(obj, dict) else None
            if isinstance(event_id, str) and id_problem(event_id) is None:
                result["event_id"] = event_id
            results.append(result)
            continue
        topic = topic_for_event_type(settings, verdict.type)
        if topic is None:  # pragma: no cover - parse_event_obj only returns known types
            raise AssertionError(f"no topic for validated type {verdict.type!r}")
        first_index[verdict.event_id] = index
        results.append({"index": index, "event_id": verdict.event_id, "status": "accepted"})
        outbound.append(Outbound(index, verdict.event_id, topic, verdict.user_id.encode("utf-8"), value))
    return results, outbound


def _verdict(obj: Any, settings: Settings) -> tuple[Event | Rejection, bytes]:
    """One item's verdict and, when valid, the bytes to produce. Never raises on content."""
    if isinstance(obj, Undecodable):
        return obj.rejection, b""
    try:
        value = orjson.dumps(obj)
    except orjson.JSONEncodeError:
        # orjson refuses to write what it read when it is nested deeper than this.
        return Rejection("invalid_value", f"nested deeper than {MAX_DEPTH} levels"), b""
    if len(value) > settings.max_event_bytes:
        return Rejection("too_large", f"{len(value)} bytes > {settings.max_event_bytes}"), b""
    try:
        return parse_event_obj(obj, max_future_ms=settings.max_future_ms), value
    except Exception as exc:  # a bug of ours must cost one event, never the batch
        log.exception("an event could not be checked (%s); it is rejected as unprocessable", type(exc).__name__)
        return Rejection("unprocessable", f"could not be checked ({type(exc).__name__}); report this"), b""


# --- decoding (pure) ------------------------------------------------------------------------------------------------

# The deepest nesting an event may have: orjson writes no deeper (it reads up to 1024).
MAX_DEPTH = 254


@dataclass(frozen=True, slots=True)
class Undecodable:
    """An array element that is not valid JSON on its own, with why."""

    rejection: Rejection


# A JSON string (escapes included), a lone quote (an unterminated string), or a structural byte.
_TOKENS = re.compile(rb'"(?:[^"\\]++|\\.)*+"|"|[\[\]{},]', re.DOTALL)


def split_array(body: bytes) -> list[bytes] | None:
    """The raw elements of a top-level JSON array, or None when its framing is broken.

    Used only when the whole body does not decode, so that one bad element
    (invalid UTF-8, a NaN, nesting past the decoder's limit) costs that
    element, not the batch. Strings are skipped whole, so brackets and commas
    inside them do not count.

    >>> split_array(b'[{"a": "x,]"}, NaN , [1,2]]')
    [b'{"a": "x,]"}', b' NaN ', b' [1,2]']
    >>> split_array(b'[{"a": 1}, {"b": ') is None
    True
    """
    text = body.strip()
    if len(text) < 2 or text[:1] != b"[" or text[-1:] != b"]":
        return None
    end = len(text) - 1
    depth, start, parts = 0, 1, []
    for match in _TOKENS.finditer(text, 1, end):
        token = match.group()
        if token[:1] == b'"':
            if len(token) == 1:
                return None  # unterminated string
            continue
        if token in (b"[", b"{"):
            depth += 1
        elif token in (b"]", b"}"):
            depth -= 1
            if depth < 0:
                return None
        elif depth == 0:  # a comma between elements
            parts.append(text[start : match.start()])
            start = match.end()
    if depth != 0:
        return None
    last = text[start:end]
    if last.strip():
        parts.append(last)
    elif parts:
        return None  # a trailing comma
    return parts


def decode_element(raw: bytes) -> Any:
    """One array element: its value, or an `Undecodable` saying why not."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return Undecodable(_decode_rejection(raw, exc))


def _decode_rejection(raw: bytes, exc: orjson.JSONDecodeError) -> Rejection:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as bad:
        return Rejection("not_utf8", f"not valid UTF-8 at byte {bad.start}")
    if "depth limit" in str(exc) or "recursion" in str(exc).lower():
        return Rejection("invalid_value", f"nested deeper than {MAX_DEPTH} levels")
    return Rejection("not_json", f"not valid JSON at character {exc.pos}: {exc.msg}")


def decode_body(body: bytes) -> list[Any]:
    """The request body as a list of items (values or `Undecodable`s); raise _Refusal when it is no array at all."""
    try:
        items = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        parts = split_array(body)
        if parts is None:
            rejection = _decode_rejection(body, exc)
            raise _Refusal(400, f"body is not a JSON array of events: {rejection.detail}") from None
        return [decode_element(part) for part in parts]
    if isinstance(items, dict):
        raise _Refusal(400, "body is a JSON object; send a JSON array of events, e.g. [{...}] for one event")
    if not isinstance(items, list):
        raise _Refusal(400, f"body is a JSON {type(items).__name__}; send a JSON array of events")
    return items


# --- metrics --------------------------------------------------------------------------------------------------------


class CollectorMetrics:
    """The collector's Prometheus metrics, registered in the registry given."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "nudge_collector_requests_total", "POST /v1/events requests by HTTP status", ["code"], registry=registry
        )
        self.events = Counter(
            "nudge_collector_events_total",
            "events received, by outcome (accepted, rejected, failed) and rejection reason",
            ["status", "reason"],
            registry=registry,
        )
        self.request_seconds = Histogram(
            "nudge_collector_request_seconds",
            "time to answer POST /v1/events, Kafka acknowledgement included",
            buckets=REQUEST_SECONDS_BUCKETS,
            registry=registry,
        )
        # Every series exists from the start, so dashboards and rate() see zeros, not gaps.
        for code in RESPONSE_CODES:
            self.requests.labels(code=code)
        self.events.labels(status="accepted", reason="")
        self.events.labels(status="failed", reason="not_acknowledged")
        for reason in (*Rejection.REASONS, *EXTRA_REASONS):
            self.events.labels(status="rejected", reason=reason)


# --- the web app ----------------------------------------------------------------------------------------------------


@dataclass
class _State:
    settings: Settings
    producer: AckingProducer
    metrics: CollectorMetrics
    registry: CollectorRegistry
    ack_timeout_s: float
    sender: _Sender | None = None  # started with the app, on its loop
    last_failure: float = float("-inf")
    last_success: float = float("-inf")
    in_flight: int = 0
    last_shed_log: float = float("-inf")
    totals: Tally[str] = field(default_factory=Tally)


_STATE = web.AppKey("nudge_collector_state", _State)


class _Refusal(Exception):
    """A whole request is refused with this status and message."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def create_app(
    settings: Settings,
    producer: AckingProducer,
    registry: CollectorRegistry,
    *,
    ack_timeout_s: float = DEFAULT_ACK_TIMEOUT_S,
) -> web.Application:
    """The collector's aiohttp application, producing through `producer`.

    The caller owns the producer: it flushes and closes it after the app stopped.
    """
    # aiohttp enforces the body limit itself while reading (we turn its 413 into JSON).
    app = web.Application(client_max_size=settings.collector_max_body_bytes)
    app[_STATE] = _State(settings, producer, CollectorMetrics(registry), registry, ack_timeout_s)
    logging.getLogger("aiohttp.server").addFilter(_MALFORMED_REQUEST_LOGS)
    app.router.add_post("/v1/events", _post_events)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/metrics", _metrics)

    async def start_sender(app: web.Application) -> None:
        app[_STATE].sender = _Sender(producer, asyncio.get_running_loop())

    async def stop_sender(app: web.Application) -> None:
        sender = app[_STATE].sender
        if sender is not None:
            await asyncio.get_running_loop().run_in_executor(None, sender.stop)

    app.on_startup.append(start_sender)
    app.on_cleanup.append(stop_sender)
    return app


def _json(payload: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status, content_type="application/json", headers=headers)


async def _post_events(request: web.Request) -> web.StreamResponse:
    state = request.app[_STATE]
    started = time.perf_counter()
    code = "500"
    if state.in_flight >= state.settings.collector_max_in_flight:
        # Shed load before reading the body: a queue of slow requests is how a front door falls over.
        state.metrics.requests.labels(code="503").inc()
        state.totals["requests"] += 1
        state.totals["shed"] += 1
        now = time.monotonic()
        if now - state.last_shed_log >= SHED_LOG_EVERY_S:  # one line per interval, not one per request shed
            log.warning(
                "POST /v1/events 503: %d requests in flight (NUDGE_COLLECTOR_MAX_IN_FLIGHT); %d shed so far",
                state.in_flight,
                state.totals["shed"],
            )
            state.last_shed_log = now
        message = f"too many requests in flight ({state.in_flight}); retry after {BUSY_RETRY_AFTER_S} s"
        return _json({"error": message}, 503, {"Retry-After": str(BUSY_RETRY_AFTER_S)})
    state.in_flight += 1
    try:
        response = await _answer_events(request, state)
        code = str(response.status)
        return response
    except ConnectionResetError:
        # The client hung up mid-body: its doing, not ours; there is no one left to answer.
        code = CLIENT_CLOSED
        log.info("POST /v1/events: the client closed the connection before sending its whole body")
        # Nobody reads this answer; returning it (not raising) keeps aiohttp from logging a traceback.
        return web.Response(status=400)
    finally:
        state.in_flight -= 1
        elapsed = time.perf_counter() - started
        state.metrics.requests.labels(code=code).inc()
        state.metrics.request_seconds.observe(elapsed)
        state.totals["requests"] += 1


async def _answer_events(request: web.Request, state: _State) -> web.Response:
    started = time.perf_counter()
    deadline = asyncio.get_running_loop().time() + state.ack_timeout_s
    try:
        body = await _read_body(request, state.settings)
        # Decoding and checking do not yield to the loop, so one request at a time holds
        # its decoded JSON (several times its body); raw bodies waiting for their turn and
        # messages waiting for Kafka are bounded by the in-flight cap.
        items = _decode_batch(body, state.settings)
        del body
        results, outbound = check_batch(items, state.settings)
        del items
    except _Refusal as refusal:
        log.info("POST /v1/events %d in %.1f ms: %s", refusal.status, _ms(started), refusal.message)
        response = _json({"error": refusal.message}, refusal.status, refusal.headers)
        if refusal.headers.get("Connection") == "close":
            response.force_close()
        return response
    assert state.sender is not None, "the sender starts with the app"
    acked = state.sender.send(outbound) if outbound else None
    rejected = Tally(r["reason"] for r in results if r["status"] == "rejected")
    try:
        await _acknowledged(state, acked, deadline)
    except DeliveryError as exc:
        return _not_acknowledged(state, outbound, exc, started)
    if outbound:
        state.last_success = time.monotonic()

    state.metrics.events.labels(status="accepted", reason="").inc(len(outbound))
    for reason, count in rejected.items():
        state.metrics.events.labels(status="rejected", reason=reason).inc(count)
    state.totals["accepted"] += len(outbound)
    state.totals["rejected"] += len(results) - len(outbound)

    status = 200 if not rejected else 207
    reasons = ", ".join(f"{reason}={count}" for reason, count in sorted(rejected.items()))
    log.info(
        "POST /v1/events %d in %.1f ms: %d accepted, %d rejected%s",
        status,
        _ms(started),
        len(outbound),
        len(results) - len(outbound),
        f" ({reasons})" if reasons else "",
    )
    payload = {"accepted": len(outbound), "rejected": len(results) - len(outbound), "results": results}
    return _json(payload, status)


async def _read_body(request: web.Request, settings: Settings) -> bytes:
    """Authenticate and read the body; raise _Refusal otherwise."""
    if settings.collector_api_key:
        given = request.headers.get("X-Api-Key")
        if given is None:
            raise _Refusal(401, "missing X-Api-Key header")
        if not hmac.compare_digest(
            given.encode("utf-8", "surrogateescape"), settings.collector_api_key.encode("utf-8", "surrogateescape")
        ):
            raise _Refusal(401, "wrong X-Api-Key")
    if request.content_type != "application/json":
        raise _Refusal(415, f"Content-Type {request.content_type!r} is not supported; send application/json")
    limit = settings.collector_max_body_bytes
    too_big = f"body over {limit} bytes (NUDGE_COLLECTOR_MAX_BODY_BYTES); split the batch"
    if request.content_length is not None and request.content_length > limit:
        raise _Refusal(413, f"body of {request.content_length} bytes is over {limit} (NUDGE_COLLECTOR_MAX_BODY_BYTES)")
    try:
        async with asyncio.timeout(settings.collector_body_timeout_s):
            body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise _Refusal(413, too_big) from None
    except TimeoutError:
        raise _Refusal(
            408,
            f"body not received within {settings.collector_body_timeout_s:g} s (NUDGE_COLLECTOR_BODY_TIMEOUT_S)",
            {"Connection": "close"},
        ) from None
    return body


def _decode_batch(body: bytes, settings: Settings) -> list[Any]:
    """The body as a non-empty list of at most NUDGE_COLLECTOR_MAX_BATCH items; raise _Refusal otherwise."""
    items = decode_body(body)
    if not items:
        raise _Refusal(400, "body is an empty array; send at least one event")
    if len(items) > settings.collector_max_batch:
        raise _Refusal(
            413, f"batch of {len(items)} events is over {settings.collector_max_batch} (NUDGE_COLLECTOR_MAX_BATCH)"
        )
    return items


def _not_acknowledged(state: _State, outbound: Sequence[Outbound], exc: DeliveryError, started: float) -> web.Response:
    state.last_failure = time.monotonic()
    state.metrics.events.labels(status="failed", reason="not_acknowledged").inc(len(outbound))
    state.totals["failed"] += len(outbound)
    log.warning(
        "POST /v1/events 503 in %.1f ms: %d event(s) not acknowledged by Kafka at %s: %s",
        _ms(started),
        len(outbound),
        display_url(state.settings.kafka_bootstrap),
        exc,
    )
    message = f"Kafka did not acknowledge the batch ({len(outbound)} valid events); retry the same events later"
    return _json({"error": message}, 503, {"Retry-After": str(RETRY_AFTER_S)})


async def _acknowledged(state: _State, acked: asyncio.Future[None] | None, deadline: float) -> None:
    """Wait for every acknowledgement of a request, bounded by the ack timeout."""
    if acked is None:
        return
    try:
        async with asyncio.timeout_at(deadline):
            await acked
    except TimeoutError:
        raise DeliveryError(f"no acknowledgement within {state.ack_timeout_s:g} s") from None


class _MalformedRequestLogs(logging.Filter):
    """aiohttp logs a client's malformed HTTP (a 10 kB header, a bad request line) as an ERROR
    with a traceback and the offending bytes, which may be a secret header's value. It is the
    client's doing: one INFO line naming the error, nothing of the bytes."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        record.levelno, record.levelname = logging.INFO, "INFO"
        record.msg, record.args = "refused a malformed HTTP request: %s (%s)", (type(exc).__name__, exc.code)
        record.exc_info, record.exc_text = None, None
        return log.isEnabledFor(logging.INFO)


_MALFORMED_REQUEST_LOGS = _MalformedRequestLogs()


async def _healthz(request: web.Request) -> web.Response:
    state = request.app[_STATE]
    reason = state.producer.unhealthy_reason()
    now = time.monotonic()
    if reason is None and state.last_failure > state.last_success and now - state.last_failure < FAILURE_MEMORY_S:
        reason = f"last delivery to Kafka failed {now - state.last_failure:.0f} s ago"
    if reason is not None:
        return _json({"status": "unavailable", "reason": reason}, 503)
    return _json({"status": "ok"})


async def _metrics(request: web.Request) -> web.Response:
    registry = request.app[_STATE].registry
    return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


# --- CLI ------------------------------------------------------------------------------------------------------------


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"{port} is not in 1..65535")
    return port


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= 300:
        raise argparse.ArgumentTypeError(f"{value:g} is not in (0, 300] seconds")
    return value


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="bind address [default: NUDGE_COLLECTOR_HOST]")
    parser.add_argument("--port", type=_port, help="port [default: NUDGE_COLLECTOR_PORT]")
    parser.add_argument(
        "--ack-timeout",
        type=_seconds,
        default=DEFAULT_ACK_TIMEOUT_S,
        metavar="S",
        help=f"answer 503 when Kafka has not acknowledged a request's events within S seconds [default: {DEFAULT_ACK_TIMEOUT_S:g}]",
    )
    parser.epilog = (
        "POST /v1/events takes a JSON array of events; GET /healthz and GET /metrics for ops.\n"
        "Creates the input topics if missing. SIGTERM/SIGINT: finish requests, flush Kafka, exit 0.\n\n"
        + settings_epilog(
            "collector_host",
            "collector_port",
            "collector_api_key",
            "collector_max_body_bytes",
            "collector_max_batch",
            "kafka_bootstrap",
        )
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    host: str = args.host or settings.collector_host
    port: int = args.port or settings.collector_port
    ack_timeout_s: float = args.ack_timeout
    # Topics auto-created by a first send would get the broker's partition count, not ours.
    ensure_topics(settings, settings.input_topics)
    producer = KafkaAckingProducer(settings, ack_timeout_s=ack_timeout_s)
    app: web.Application | None = None
    try:
        producer.warm_up(settings.input_topics)
        app = create_app(settings, producer, CollectorRegistry(), ack_timeout_s=ack_timeout_s)
        auth = "X-Api-Key required" if settings.collector_api_key else "no API key (NUDGE_COLLECTOR_API_KEY unset)"

        def listening(_message: str) -> None:  # called by run_app once the socket is bound, not before
            print(
                f"nudge collect: listening on http://{host}:{port}/v1/events -> Kafka "
                f"{display_url(settings.kafka_bootstrap)}, {auth}",
                file=sys.stderr,
            )

        try:
            # run_app turns SIGINT/SIGTERM into a graceful stop: no new connections,
            # in-flight requests finish (bounded by the ack timeout), then it returns.
            # Its keep-alive timer also runs from the moment a connection opens and is
            # not reset by incoming bytes, so it closes idle and slow-header clients alike.
            web.run_app(
                app,
                host=host,
                port=port,
                access_log=None,
                print=listening,
                shutdown_timeout=ack_timeout_s + 5,
                keepalive_timeout=settings.collector_idle_timeout_s,
                # After an early answer (408, 413) the rest of a body is read and dropped for
                # this long at most, so the client sees the answer rather than a reset.
                lingering_time=LINGER_S,
                handle_signals=True,
            )
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    finally:
        _flush_and_close(producer)
    totals = app[_STATE].totals if app is not None else Tally[str]()
    print(
        f"nudge collect: stopped after {totals['requests']} request(s): {totals['accepted']} event(s) accepted, "
        f"{totals['rejected']} rejected, {totals['failed']} not acknowledged",
        file=sys.stderr,
    )
    return 0


def _flush_and_close(producer: KafkaAckingProducer) -> None:
    try:
        producer.flush(timeout=30.0)
    except DeliveryError as exc:
        # Requests whose messages failed were already answered 503; nothing else to tell.
        log.warning("final flush to Kafka: %s", exc)
    finally:
        producer.close()
