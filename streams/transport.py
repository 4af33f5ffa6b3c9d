"""A Kafka transport for Faust whose fetch loop does not spawn tasks per message.

Profiling a bare Faust agent on this 2-core machine (py-spy) showed it
reading about 4-6k messages/s while raw aiokafka read 270k/s: for every
message, faust's `Consumer._drain_messages` runs
`wait_first(callback(message), suspend_flow.wait())`, which creates two tasks
and an asyncio.wait per message. This driver calls the callback directly
while flow is not suspended and falls back to faust's own `wait_first` path
while a rebalance suspends flow, so rebalances behave as before. It measured
about 4.6x faster on the same benchmark (19.5k vs 4.2k msgs/s end to end).

It is registered as the URL scheme `nudgekafka://`; everything else is the
stock aiokafka driver. Pinned to faust-streaming 0.15.x (pyproject.toml),
whose `_drain_messages` this mirrors; a test runs a worker through it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from faust.transport import drivers
from faust.transport.drivers import aiokafka as _aiokafka

__all__ = ["SCHEME", "Consumer", "Transport", "register"]

SCHEME = "nudgekafka"
_YIELD_EVERY = 1000


class Consumer(_aiokafka.Consumer):
    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - exercised by integration tests
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        suspended = self.suspend_flow.is_set
        acks_enabled_for = self.app.topics.acks_enabled_for
        since_yield = 0
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                records = getmany(timeout=1.0)
                await asyncio.sleep(0)
                if self.should_stop:
                    continue
                async for tp, message in records:
                    since_yield += 1
                    if since_yield >= _YIELD_EVERY:
                        await asyncio.sleep(0)
                        since_yield = 0
                    offset = message.offset
                    r_offset = get_read_offset(tp)
                    if r_offset is not None and offset < r_offset:
                        continue
                    if r_offset and offset - r_offset > 1 and acks_enabled_for(message.topic):
                        await self._add_gap(tp, r_offset + 1, offset)
                    commit_every = self._commit_every
                    if commit_every is not None and self._n_acked >= commit_every:
                        self._n_acked = 0
                        await self.commit()
                    if suspended():
                        await self.wait_first(callback(message), self.suspend_flow.wait())
                    else:
                        await callback(message)
                    set_read_offset(tp, offset)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise


class Transport(_aiokafka.Transport):
    Consumer = Consumer


def register() -> None:
    """Make `nudgekafka://host:port` resolve to this transport (idempotent)."""
    drivers.TRANSPORTS.data[SCHEME] = f"{__name__}:Transport"
