"""The worker's event-time clock: a watermark across its input partitions.

Delayed labels ("no event for 14 days"), rescoring of silent users and the
"as of now" of every score must follow *event* time, never the wall clock, so
that a replay of last month's log ends with the labels and scores that live
traffic would have produced. Event time advances per partition: each holds
the latest event time folded from it, and the watermark is the smallest of
them, so a slow partition holds the clock back instead of letting a fast one
declare its users silent.

Two refinements keep the watermark useful:

- an *idle* partition (nothing folded from it for `idle_after_ms` of wall
  time, e.g. a partition with no users yet) stops holding the clock back, and
  counts again as soon as it delivers;
- the watermark never goes backwards: a late event, or a partition that comes
  back from idleness behind the others, cannot un-resolve a label.

Pure: `observe` and `watermark` take the wall time as an argument.

>>> clock = EventClock(idle_after_ms=60_000)
>>> clock.observe(("clicks", 0), event_ms=1_000, wall_ms=0)
>>> clock.observe(("clicks", 1), event_ms=5_000, wall_ms=0)
>>> clock.watermark(wall_ms=10)
1000
>>> clock.watermark(wall_ms=70_000)  # both idle: the clock stays where it was
1000
>>> clock.observe(("clicks", 1), event_ms=9_000, wall_ms=70_000)
>>> clock.watermark(wall_ms=70_001)  # partition 0 is idle now: partition 1 leads
9000
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

__all__ = ["EventClock"]


@dataclass(slots=True)
class _Partition:
    event_ms: int | None  # None: assigned, nothing delivered yet
    wall_ms: int


@dataclass(slots=True)
class EventClock:
    """Latest event time per partition; the watermark is the minimum over the active ones."""

    idle_after_ms: int = 60_000
    _partitions: dict[Hashable, _Partition] = field(default_factory=dict)
    _watermark: int | None = None

    def assign(self, partition: Hashable, *, wall_ms: int) -> None:
        """`partition` is ours from `wall_ms`: until it delivers (or turns idle) it holds the clock.

        Without this, the first partitions to deliver after a start would set the
        watermark alone and declare silent the users whose events sit, not yet
        fetched, in the others.
        """
        if partition not in self._partitions:
            self._partitions[partition] = _Partition(None, wall_ms)

    def observe(self, partition: Hashable, *, event_ms: int, wall_ms: int) -> None:
        """An event of `partition` with event time `event_ms` was folded at wall time `wall_ms`."""
        seen = self._partitions.get(partition)
        if seen is None:
            self._partitions[partition] = _Partition(event_ms, wall_ms)
            return
        seen.wall_ms = max(seen.wall_ms, wall_ms)
        if seen.event_ms is None or event_ms > seen.event_ms:
            seen.event_ms = event_ms

    def forget(self, partition: Hashable) -> None:
        """The partition was revoked: it no longer holds the clock back."""
        self._partitions.pop(partition, None)

    @property
    def current(self) -> int | None:
        """The watermark as last computed (None before any), without moving it."""
        return self._watermark

    def watermark(self, *, wall_ms: int) -> int | None:
        """Event time up to which every active partition has delivered (None before any event)."""
        active = [p.event_ms for p in self._partitions.values() if wall_ms - p.wall_ms < self.idle_after_ms]
        if active and None not in active:
            candidate = min(e for e in active if e is not None)
            if self._watermark is None or candidate > self._watermark:
                self._watermark = candidate
        return self._watermark
