"""The commit rule of streams/transport.py: only a contiguous run from the
committed offset may be committed (faust-streaming 0.15 committed past an
unacked offset right after the committed one)."""

from __future__ import annotations

import random

import pytest

from streams.transport import next_commit


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
