"""The event-time watermark: smallest active partition, never backwards, idle partitions let go."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streams.clock import EventClock


def test_the_slowest_partition_holds_the_clock() -> None:
    clock = EventClock()
    clock.observe("p0", event_ms=100, wall_ms=0)
    clock.observe("p1", event_ms=900, wall_ms=0)
    assert clock.watermark(wall_ms=1) == 100
    clock.observe("p0", event_ms=500, wall_ms=2)
    assert clock.watermark(wall_ms=3) == 500


def test_a_revoked_partition_no_longer_holds_it() -> None:
    clock = EventClock()
    clock.observe("p0", event_ms=100, wall_ms=0)
    clock.observe("p1", event_ms=900, wall_ms=0)
    clock.forget("p0")
    assert clock.watermark(wall_ms=1) == 900


def test_a_late_event_or_a_partition_back_from_idleness_never_moves_it_back() -> None:
    clock = EventClock(idle_after_ms=10)
    clock.observe("p0", event_ms=100, wall_ms=0)
    clock.observe("p1", event_ms=900, wall_ms=20)
    assert clock.watermark(wall_ms=21) == 900  # p0 idle
    clock.observe("p0", event_ms=150, wall_ms=22)  # back, behind
    assert clock.watermark(wall_ms=23) == 900
    clock.observe("p1", event_ms=50, wall_ms=24)  # a late event
    assert clock.watermark(wall_ms=25) == 900


def test_no_event_no_watermark() -> None:
    assert EventClock().watermark(wall_ms=0) is None


@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 10**6), st.integers(0, 50)),
        min_size=1,
        max_size=200,
    )
)
def test_the_watermark_is_monotone_and_never_ahead_of_every_partition(events: list[tuple[int, int, int]]) -> None:
    clock = EventClock(idle_after_ms=100)
    wall = 0
    last: int | None = None
    latest: dict[int, int] = {}
    for partition, event_ms, step in events:
        wall += step
        clock.observe(partition, event_ms=event_ms, wall_ms=wall)
        latest[partition] = max(latest.get(partition, event_ms), event_ms)
        mark = clock.watermark(wall_ms=wall)
        assert mark is not None
        if last is not None:
            assert mark >= last
        # it never passes what the partition that just delivered has seen, unless it was there already
        assert mark <= max(latest.values())
        last = mark


def test_an_assigned_partition_holds_the_clock_until_it_delivers_or_idles() -> None:
    clock = EventClock(idle_after_ms=100)
    clock.assign("p0", wall_ms=0)
    clock.observe("p1", event_ms=900, wall_ms=10)
    assert clock.watermark(wall_ms=20) is None  # p0 has not delivered: nobody can be declared silent
    clock.observe("p0", event_ms=300, wall_ms=30)
    assert clock.watermark(wall_ms=40) == 300
    late = EventClock(idle_after_ms=100)
    late.assign("p0", wall_ms=0)
    late.observe("p1", event_ms=900, wall_ms=150)
    assert late.watermark(wall_ms=150) == 900  # p0 assigned but silent for longer than the idle time
