"""The Kafka producer every nudge producer sends through.

kafka-python with acks=all and idempotence on, keyed by user_id, batched with
a short linger. Delivery errors are collected from the futures and raised by
`flush()`: a producer that lost a message says so instead of exiting 0.
"""

from __future__ import annotations

import logging
import threading
from types import TracebackType
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError

from nudge.errors import DeliveryError, DependencyUnavailable
from nudge.settings import Settings

__all__ = ["EventProducer"]

log = logging.getLogger(__name__)


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
            "bootstrap_servers": settings.kafka_bootstrap,
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
        try:
            self._producer = KafkaProducer(**config)
        except KafkaError as exc:
            raise DependencyUnavailable(f"Kafka is not reachable at {settings.kafka_bootstrap} ({exc})") from None
        self._lock = threading.Lock()
        self._errors: list[BaseException] = []
        self.sent = 0
        self.acked = 0

    def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        *,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        timestamp_ms: int | None = None,
    ) -> None:
        """Queue one message; delivery is confirmed by `flush()`."""
        try:
            future = self._producer.send(
                topic, value=value, key=key, partition=partition, headers=headers, timestamp_ms=timestamp_ms
            )
        except KafkaError as exc:
            raise DeliveryError(f"cannot send to {topic}: {exc}") from exc
        self.sent += 1
        future.add_callback(self._on_ack)
        future.add_errback(self._on_error)

    def _on_ack(self, _metadata: Any) -> None:
        with self._lock:
            self.acked += 1

    def _on_error(self, exc: BaseException) -> None:
        with self._lock:
            self._errors.append(exc)

    def flush(self, timeout: float | None = 60.0) -> None:
        """Wait for every queued message; raise DeliveryError if any failed."""
        try:
            self._producer.flush(timeout=timeout)
        except KafkaError as exc:
            raise DeliveryError(f"flush to {self.settings.kafka_bootstrap} failed: {exc}") from exc
        with self._lock:
            errors, self._errors = self._errors, []
        if errors:
            raise DeliveryError(f"{len(errors)} message(s) not delivered; first error: {errors[0]!r}")

    def close(self, timeout: float | None = 30.0) -> None:
        self._producer.close(timeout=timeout)

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
