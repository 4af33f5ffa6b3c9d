"""The commit rule of streams/transport.py: only a contiguous run from the
committed offset may be committed (faust-streaming 0.15 committed past an
unacked offset right after the committed one)."""

from __future__ import annotations

import random

import pytest

from streams.transport import Consumer, next_commit


@pytest.mark.parametrize(
    ("start", "acked", "gaps", "expected"),
    [
        (0, [0, 1, 2], [], 3),
        (10, [], [], 10),
        # the head is missing: nothing to commit (faust committed 13 here)
        (10, [11, 12], [], 10),
        (10, [10, 11, 13, 14], [], 12),
        # offsets below the start are old news
        (10, [7, 8, 10], [], 11),
        # duplicates (a message redelivered after a seek) are harmless
        (10, [10, 10, 11], [], 12),
        # offsets Kafka never returned (transaction markers) are passed over
        (10, [10, 11, 15, 16], [(12, 14)], 17),
        # ...but only once the run reaches them
        (10, [11, 15], [(12, 14)], 10),
        (10, [10], [(11, 11), (12, 20)], 21),
        (10, [10, 12], [(5, 11)], 13),
    ],
)
def test_next_commit(start: int, acked: list[int], gaps: list[tuple[int, int]], expected: int) -> None:
    assert next_commit(start, sorted(acked), gaps) == expected


def test_next_commit_never_passes_an_unacked_offset() -> None:
    rng = random.Random(7)
    for _ in range(500):
        start = rng.randrange(100)
        offsets = list(range(start, start + 60))
        missing = set(rng.sample(offsets, rng.randrange(1, 5)))
        acked = sorted(o for o in offsets if o not in missing)
        assert next_commit(start, acked, []) == min(missing)


class _Message:
    def __init__(self, offset: int, tp: str = "clicks-0") -> None:
        self.tp = tp
        self.offset = offset


class _Admission:
    """Just the state `Consumer.admit` reads and writes."""

    def __init__(self, next_offset: int | None, gaps: list[tuple[int, int]] | None = None) -> None:
        self._fold_next = {} if next_offset is None else {"clicks-0": next_offset}
        self._gaps = {"clicks-0": gaps or []}
        self._refetch: dict[str, int] = {}

    def admit(self, offset: int) -> bool:
        return Consumer.admit(self, _Message(offset))  # type: ignore[arg-type]


def test_the_agent_folds_each_partition_in_order_without_holes() -> None:
    seen = _Admission(10)
    assert [seen.admit(o) for o in (10, 11, 11, 9)] == [True, True, False, False]
    assert not seen._refetch
    # a hole (12 never came): refused, and the partition is fetched again from 12
    assert not seen.admit(14)
    assert seen._refetch == {"clicks-0": 12}
    assert seen.admit(12) and seen.admit(13) and seen.admit(14)


def test_offsets_kafka_does_not_have_are_no_hole() -> None:
    seen = _Admission(10, gaps=[(11, 13)])
    assert seen.admit(10) and seen.admit(14)
    assert not seen._refetch


def test_partitions_not_positioned_are_not_folded() -> None:
    assert not _Admission(None).admit(0)
