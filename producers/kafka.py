"""The Kafka producer every nudge producer sends through.

kafka-python with acks=all and idempotence on, keyed by user_id, batched with
a short linger. It is built by `nudge.kafka_clients.connect`: an unreachable
cluster is one `DependencyUnavailable` line within seconds.

Two kinds of failure, kept apart:

- Kafka *refuses a message* for what it is (larger than the limit, null key
  and value, a record the broker calls invalid): no retry can help, and it is
  the message's fault, not the cluster's. `send` raises `MessageRefused` when
  the client already knows; when the broker says so later, the refusal is
  kept with the `tag` given to `send` (replay passes the line number) until
  `take_refused()` collects it.
- Kafka *loses a message* (time-outs, a cluster that went away): `flush()`
  raises DeliveryError, so a producer that lost a message says so instead of
  exiting 0.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from kafka import KafkaProducer
from kafka import errors as kafka_errors
from kafka.errors import KafkaError

from nudge.errors import DeliveryError
from nudge.kafka_clients import connect
from nudge.settings import Settings

__all__ = ["EventProducer", "MessageRefused", "Refusal", "message_size"]

log = logging.getLogger(__name__)

# Broker answers that condemn the records themselves (kafka-python splits a batch
# refused as too large and retries first, so these reach the record at fault).
_REFUSALS = (
    kafka_errors.MessageSizeTooLargeError,
    kafka_errors.RecordListTooLargeError,
    kafka_errors.CorruptRecordError,
    kafka_errors.InvalidRecordError,
    kafka_errors.InvalidTimestampError,
    kafka_errors.UnsupportedForMessageFormatError,
)


class MessageRefused(DeliveryError):
    """Kafka will not take this message, whatever the retries; `reason` says why."""

    def __init__(self, reason: str, tag: Any = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.tag = tag


@dataclass(frozen=True, slots=True)
class Refusal:
    """A message the broker refused after `send` returned: the `tag` it was sent with."""

    tag: Any
    reason: str


_SETTLE_S = 10.0


def message_size(key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]] | None) -> int:
    """Bytes of key, value and headers: what a message limit is about (without the record overhead)."""
    size = len(key or b"") + len(value or b"")
    for name, data in headers or ():
        size += len(name.encode("utf-8")) + len(data)
    return size


def _refusal_reason(exc: BaseException) -> str:
    # kafka-python's messages for these are long and name its own config keys.
    return f"Kafka refused the message ({type(exc).__name__})"


class EventProducer:
    """Send raw (key, value) messages; `flush()` raises if any was lost."""

    def __init__(
        self,
        settings: Settings,
        *,
        client_id: str = "nudge-producer",
        linger_ms: int = 20,
        batch_size: int = 512 * 1024,
        **overrides: Any,
    ) -> None:
        self.settings = settings
        config: dict[str, Any] = {
            "client_id": client_id,
            "acks": "all",
            "enable_idempotence": True,
            "linger_ms": linger_ms,
            "batch_size": batch_size,
            "max_request_size": settings.max_message_bytes,
            "retries": 2_147_483_647,
            "delivery_timeout_ms": 120_000,
        }
        config.update(overrides)
        self._producer = connect(KafkaProducer, settings, **config)
        self._lock = threading.Lock()
        self._errors: list[BaseException] = []
        self._refused: list[Refusal] = []
        self.sent = 0
        self.acked = 0
        self.failed = 0

    def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        *,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        timestamp_ms: int | None = None,
        tag: Any = None,
    ) -> None:
        """Queue one message; delivery is confirmed by `flush()`.

        Raises MessageRefused (with `tag`) for a message Kafka will never take;
        a refusal the broker sends later is kept for `take_refused()` with `tag`.
        """
        limit = self.settings.max_message_bytes
        # Cheap bound first: the exact size is only worth computing near the limit.
        if len(value or b"") + len(key or b"") > limit // 2 or headers:
            size = message_size(key, value, headers)
            if size > limit:
                raise MessageRefused(
                    f"message is {size:,} bytes (key, value and headers), over the "
                    f"{limit:,}-byte limit (NUDGE_MAX_MESSAGE_BYTES)",
                    tag,
                )
        if key is None and value is None:
            raise MessageRefused("message has neither key nor value (kafka-python cannot send it)", tag)
        try:
            future = self._producer.send(
                topic, value=value, key=key, partition=partition, headers=headers, timestamp_ms=timestamp_ms
            )
        except _REFUSALS as exc:
            raise MessageRefused(f"{_refusal_reason(exc)}: {str(exc)[:120]}", tag) from exc
        except KafkaError as exc:
            raise DeliveryError(f"cannot send to {topic}: {exc}") from exc
        self.sent += 1
        future.add_callback(self._on_ack)
        future.add_errback(functools.partial(self._on_error, tag))

    def _on_ack(self, _metadata: Any) -> None:
        with self._lock:
            self.acked += 1

    def _on_error(self, tag: Any, exc: BaseException) -> None:
        with self._lock:
            self.failed += 1
            if isinstance(exc, _REFUSALS):
                self._refused.append(Refusal(tag, _refusal_reason(exc)))
            else:
                self._errors.append(exc)

    def take_refused(self) -> list[Refusal]:
        """The refusals the broker sent since the last call (cheap when there are none)."""
        if not self._refused:  # read without the lock: a refusal missed now is taken next time
            return []
        with self._lock:
            refused, self._refused = self._refused, []
        return refused

    def flush(self, timeout: float | None = 60.0) -> None:
        """Wait for every queued message; raise DeliveryError if any was lost or
        refused (refusals not collected by `take_refused()` yet count as lost)."""
        try:
            self._producer.flush(timeout=timeout)
        except KafkaError as exc:
            # kafka-python's flush gives up early after a refused batch it split ("Future not
            # done") while the messages' own futures still settle: wait for them, they say why.
            if not self._settled(within_s=_SETTLE_S):
                raise DeliveryError(f"flush to {self.settings.kafka_bootstrap} failed: {exc}") from exc
        with self._lock:
            errors, self._errors = self._errors, []
            refused = list(self._refused)  # kept for take_refused(): the caller may tie them to its input
        if errors:
            raise DeliveryError(f"{len(errors)} message(s) not delivered; first error: {errors[0]!r}")
        if refused:
            raise DeliveryError(f"{len(refused)} message(s) refused by Kafka; first: {refused[0].reason}")

    def _settled(self, within_s: float) -> bool:
        """True once every sent message was acknowledged or failed (polled up to `within_s`)."""
        deadline = time.monotonic() + within_s
        while self.acked + self.failed < self.sent:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def close(self, timeout: float | None = 30.0) -> None:
        """Close the client; DeliveryError if messages still queued could not be delivered."""
        try:
            self._producer.close(timeout=timeout)
        except KafkaError as exc:
            raise DeliveryError(f"closing the producer for {self.settings.kafka_bootstrap} failed: {exc}") from exc

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if exc_type is None:
                self.flush()
        finally:
            self.close()
