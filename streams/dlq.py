"""The dead-letter record: original bytes plus why and where from.

A DLQ message keeps the original key and value byte for byte; the reason
and the source coordinates travel as headers (the Kafka Connect convention),
so any tool can re-drive a fixed message to its source topic.

| header                 | value                                   |
|------------------------|-----------------------------------------|
| nudge.reason           | machine-readable reason (Rejection.REASONS, too_old, processing_error) |
| nudge.detail           | human-readable detail                    |
| nudge.source.topic     | topic the message was read from          |
| nudge.source.partition | its partition (decimal)                  |
| nudge.source.offset    | its offset (decimal)                     |
| nudge.source.timestamp | its Kafka timestamp, epoch ms (decimal)  |
| nudge.failed_at        | wall-clock epoch ms of the rejection     |
"""

from __future__ import annotations

import time
from typing import Final

__all__ = ["HEADER_PREFIX", "dlq_headers", "parse_dlq_headers"]

HEADER_PREFIX: Final = "nudge."
_MAX_DETAIL = 500


def dlq_headers(
    reason: str,
    detail: str,
    *,
    topic: str,
    partition: int,
    offset: int,
    timestamp_ms: int | None,
    failed_at_ms: int | None = None,
) -> list[tuple[str, bytes]]:
    """The DLQ headers of a rejected message; `failed_at_ms` defaults to now."""
    failed_at = int(time.time() * 1000) if failed_at_ms is None else failed_at_ms
    return [
        ("nudge.reason", reason.encode()),
        ("nudge.detail", detail[:_MAX_DETAIL].encode("utf-8", "replace")),
        ("nudge.source.topic", topic.encode()),
        ("nudge.source.partition", str(partition).encode()),
        ("nudge.source.offset", str(offset).encode()),
        ("nudge.source.timestamp", str(timestamp_ms if timestamp_ms is not None else "").encode()),
        ("nudge.failed_at", str(failed_at).encode()),
    ]


def parse_dlq_headers(headers: list[tuple[str, bytes]] | None) -> dict[str, str]:
    """The nudge.* headers of a DLQ message as a plain dict (prefix removed)."""
    return {
        k[len(HEADER_PREFIX) :]: v.decode("utf-8", "replace")
        for k, v in headers or []
        if k.startswith(HEADER_PREFIX) and v is not None
    }
