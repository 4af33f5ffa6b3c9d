"""Read an agent's input a batch at a time, without Faust's per-event Stream.

`Stream.take_events` runs every event through the Stream's iterator on its
own: a queue get, sensors, the context variable for the current event, an
awaited processor that appends it to the batch, then the ack. Profiling the
worker showed that machinery costing about as much as our own per-event work.
`batches` takes the same events straight from the queue the conductor fills
(the agent's iterator channel) and keeps the two duties of the Stream that
correctness rests on:

* tracking: each message is added to the consumer's unacked set as it is
  taken, so a rebalance (`stream_wait_empty`) waits for the batch it is in;
* acking: the caller acks a batch only after processing it (`ack`), so its
  offsets are committed only then.

A rebalance clears the queue (Faust's flow control), as it clears a Stream's.
When the worker stops, Faust ends the channel by raising StopAsyncIteration
in the waiting `get`; the generator then ends (raised out of an async
generator it would become a RuntimeError and a traceback at every stop).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

from faust.types import EventT

__all__ = ["ack", "batches"]


async def batches(
    stream: Any, max_events: int, within_s: float, idle_s: float | None = None
) -> AsyncIterator[list[EventT[Any]]]:
    """Yield lists of up to `max_events` events, waiting at most `within_s`
    after the first one for more. Ack each list with `ack` once processed.
    With `idle_s`, an empty list comes after that long without any event."""
    channel = aiter(stream.channel)  # subscribes the agent's topics, as a Stream would
    queue = channel.queue
    app = stream.app
    unacked = app.consumer.unacked
    acking_topics = app.topics.acking_topics
    loop = asyncio.get_running_loop()
    get_nowait = queue.get_nowait

    def track(event: EventT[Any]) -> EventT[Any]:
        message = event.message
        if not message.tracked and message.topic in acking_topics:
            message.tracked = True
            unacked.add(message)
        return event

    while True:
        try:
            if idle_s is None:
                events: list[EventT[Any]] = [track(await queue.get())]
            else:
                try:
                    events = [track(await asyncio.wait_for(queue.get(), idle_s))]
                except TimeoutError:
                    yield []
                    continue
        except StopAsyncIteration:
            return  # Faust ends the channel when the agent stops: end cleanly
        deadline = loop.time() + within_s
        while len(events) < max_events:
            try:
                events.append(track(get_nowait()))
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    events.append(track(await asyncio.wait_for(queue.get(), remaining)))
                except TimeoutError:
                    break
        yield events


def ack(events: Sequence[EventT[Any]]) -> None:
    """Acknowledge a processed batch (its offsets may now be committed)."""
    for event in events:
        event.ack()
