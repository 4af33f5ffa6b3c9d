"""What every provider adapter shares: the `Notifier` interface and one HTTP call mapped to plain values.

`post` performs one request and returns `(status, headers, body)` or the
`SendResult` of a network failure (`results.from_exception`), so an adapter
never lets an aiohttp exception through.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from delivery.results import SendResult, from_exception
from nudge.notifications import Channel, Notification

__all__ = ["Answer", "Notifier", "post"]


class Notifier(Protocol):
    """A provider adapter: one channel, one provider, sends one notification."""

    channel: Channel
    provider: str
    # True when the provider deduplicates by our idempotency key, so sending again is safe.
    idempotent: bool

    async def send(self, notification: Notification) -> SendResult: ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: Mapping[str, str]  # names in lower case
    body: bytes
    seconds: float


async def post(session: aiohttp.ClientSession, url: str, **kw: Any) -> Answer | SendResult:
    """POST and read the whole answer; a network failure becomes a SendResult."""
    started = time.perf_counter()
    try:
        async with session.post(url, **kw) as resp:
            body = await resp.read()
            headers = {name.lower(): value for name, value in resp.headers.items()}
            return Answer(resp.status, headers, body, time.perf_counter() - started)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return from_exception(exc)
