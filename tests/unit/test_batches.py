"""streams.batches: batching straight off the agent's queue, with the two
duties of Faust's Stream kept (tracking for rebalances, acking after)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from streams.batches import ack, batches


@dataclass(eq=False)
class FakeMessage:
    topic: str
    offset: int
    tracked: bool = False
    acked: bool = False


@dataclass(eq=False)
class FakeEvent:
    message: FakeMessage

    def ack(self) -> None:
        self.message.acked = True


@dataclass
class FakeChannel:
    queue: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)

    def __aiter__(self) -> FakeChannel:
        return self

    async def __anext__(self) -> Any:
        return await self.queue.get()


@dataclass
class FakeConsumer:
    unacked: set[Any] = field(default_factory=set)


@dataclass
class FakeTopics:
    acking_topics: set[str]


@dataclass
class FakeApp:
    consumer: FakeConsumer
    topics: FakeTopics


@dataclass
class FakeStream:
    channel: FakeChannel
    app: FakeApp


def _stream() -> FakeStream:
    return FakeStream(FakeChannel(), FakeApp(FakeConsumer(), FakeTopics({"clicks"})))


def _event(topic: str, offset: int) -> FakeEvent:
    return FakeEvent(FakeMessage(topic, offset))


def test_full_batches_then_a_partial_one_after_the_wait() -> None:
    async def scenario() -> list[list[int]]:
        stream = _stream()
        for i in range(7):
            stream.channel.queue.put_nowait(_event("clicks", i))
        it = batches(stream, 3, within_s=0.05).__aiter__()
        got = [[e.message.offset for e in await it.__anext__()] for _ in range(3)]
        return got

    assert asyncio.run(scenario()) == [[0, 1, 2], [3, 4, 5], [6]]


def test_waits_for_late_events_within_the_window_only() -> None:
    async def scenario() -> tuple[list[int], list[int]]:
        stream = _stream()
        queue = stream.channel.queue
        it = batches(stream, 100, within_s=0.2).__aiter__()
        queue.put_nowait(_event("clicks", 0))
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, queue.put_nowait, _event("clicks", 1))
        loop.call_later(0.5, queue.put_nowait, _event("clicks", 2))
        first = [e.message.offset for e in await it.__anext__()]
        second = [e.message.offset for e in await it.__anext__()]
        return first, second

    assert asyncio.run(scenario()) == ([0, 1], [2])


def test_with_an_idle_tick_a_quiet_input_yields_empty_batches_and_events_still_come_whole() -> None:
    async def scenario() -> list[list[int]]:
        stream = _stream()
        queue = stream.channel.queue
        it = batches(stream, 100, within_s=0.05, idle_s=0.1).__aiter__()
        asyncio.get_running_loop().call_later(0.25, queue.put_nowait, _event("clicks", 9))
        return [[e.message.offset for e in await it.__anext__()] for _ in range(3)]

    assert asyncio.run(scenario()) == [[], [], [9]]


def test_taken_messages_are_tracked_until_acked() -> None:
    async def scenario() -> None:
        stream = _stream()
        clicks, changelog = _event("clicks", 0), _event("user-state-changelog", 0)
        stream.channel.queue.put_nowait(clicks)
        stream.channel.queue.put_nowait(changelog)
        batch = await batches(stream, 10, within_s=0.01).__aiter__().__anext__()
        unacked = stream.app.consumer.unacked
        # a rebalance waits for the input message; topics without acks are not tracked
        assert clicks.message in unacked and clicks.message.tracked
        assert changelog.message not in unacked
        ack(batch)
        assert clicks.message.acked and changelog.message.acked

    asyncio.run(scenario())


def test_the_generator_ends_cleanly_when_faust_ends_the_channel() -> None:
    """Faust stops an agent by raising StopAsyncIteration in the waiting get;
    escaping an async generator, that was a RuntimeError at every SIGTERM."""

    async def scenario() -> list[list[int]]:
        stream = _stream()
        stream.channel.queue.put_nowait(_event("clicks", 0))
        got = []

        async def end() -> None:
            await asyncio.sleep(0.05)  # the generator now waits for the next batch
            stream.channel.queue._getters[0].set_exception(StopAsyncIteration())  # type: ignore[attr-defined]

        ending = asyncio.ensure_future(end())
        async for batch in batches(stream, 10, within_s=0.01):
            got.append([e.message.offset for e in batch])
        await ending
        return got

    assert asyncio.run(scenario()) == [[0]]
