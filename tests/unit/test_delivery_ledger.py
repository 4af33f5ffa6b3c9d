"""The send ledger's rule, its in-memory twin, and the offset tracker that decides commits."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from delivery.ledger import InMemoryLedger, Verdict, decide, ledger_key
from delivery.plan import OffsetTracker

LEASE = 1_000

# (entry, worker, now, resend_stale) -> verdict, what is written afterwards ("claimed"/"unknown"/None)
RULES = [
    (None, "w1", 5_000, False, Verdict.CLAIMED, "claimed"),
    (None, "w1", 5_000, True, Verdict.CLAIMED, "claimed"),
    ({"state": "sent", "at": 1, "message_id": "m"}, "w1", 5_000, True, Verdict.SENT, None),
    ({"state": "unknown", "at": 1}, "w1", 5_000, True, Verdict.UNKNOWN, None),
    ({"state": "claimed", "by": "w1", "at": 4_900}, "w1", 5_000, False, Verdict.CLAIMED, "claimed"),
    ({"state": "claimed", "by": "w0", "at": 4_500}, "w1", 5_000, False, Verdict.BUSY, None),
    ({"state": "claimed", "by": "w0", "at": 4_500}, "w1", 5_000, True, Verdict.BUSY, None),
    ({"state": "claimed", "by": "w0", "at": 4_000}, "w1", 5_000, True, Verdict.TAKEN_OVER, "claimed"),
    ({"state": "claimed", "by": "w0", "at": 4_000}, "w1", 5_000, False, Verdict.STALE_UNKNOWN, "unknown"),
]


@pytest.mark.parametrize(("entry", "worker", "now", "resend", "verdict", "writes"), RULES)
def test_claim_rule(
    entry: dict | None, worker: str, now: int, resend: bool, verdict: Verdict, writes: str | None
) -> None:
    claim = decide(entry, worker=worker, now_ms=now, lease_ms=LEASE, resend_stale=resend, channel="push")
    assert claim.verdict is verdict
    assert claim.may_send == (verdict in (Verdict.CLAIMED, Verdict.TAKEN_OVER))
    assert (claim.write or {}).get("state") == writes
    if writes == "claimed":
        assert claim.write == {"state": "claimed", "by": worker, "at": now}
    if writes == "unknown":
        assert claim.write is not None and claim.write["why"] == "stale_claim" and claim.write["by"] == "w0"


def test_ledger_key_puts_a_user_in_one_cluster_slot() -> None:
    assert ledger_key("u42") == "nudge:{u42}:ledger"


async def test_in_memory_ledger_sends_once_and_frees_a_released_claim() -> None:
    ledger = InMemoryLedger(lease_ms=LEASE)
    kw = {"resend_stale": False, "channel": "push"}
    assert (await ledger.claim("u", "k", worker="a", now_ms=0, **kw)).verdict is Verdict.CLAIMED
    assert (await ledger.claim("u", "k", worker="b", now_ms=10, **kw)).verdict is Verdict.BUSY
    await ledger.release("u", "k", worker="b")  # not b's claim: nothing happens
    assert (await ledger.claim("u", "k", worker="b", now_ms=20, **kw)).verdict is Verdict.BUSY
    await ledger.release("u", "k", worker="a")
    assert (await ledger.claim("u", "k", worker="b", now_ms=30, **kw)).verdict is Verdict.CLAIMED
    await ledger.mark_sent("u", "k", now_ms=40, channel="push", message_id="m1")
    assert (await ledger.claim("u", "k", worker="c", now_ms=10_000, **kw)).verdict is Verdict.SENT
    await ledger.release("u", "k", worker="b")  # a sent entry is never released
    assert ledger.hashes[ledger_key("u")]["k"]["state"] == "sent"


def test_offset_tracker_commits_only_a_finished_prefix() -> None:
    t = OffsetTracker()
    for offset in (10, 11, 12, 13):
        t.add(offset)
    assert t.done(12) is None  # 10 and 11 are still in flight
    assert t.done(10) == 11
    assert t.done(10) is None  # done twice: no effect
    assert t.done(11) == 13
    assert t.done(13) == 14
    assert len(t) == 0


@given(st.permutations(list(range(30))))
def test_offset_tracker_never_passes_an_unfinished_offset(order: list[int]) -> None:
    t = OffsetTracker()
    for offset in range(30):
        t.add(offset)
    finished: set[int] = set()
    last = 0
    for offset in order:
        finished.add(offset)
        point = t.done(offset)
        if point is not None:
            assert point > last
            assert all(o in finished for o in range(point))  # everything below the commit point is done
            last = point
    assert last == 30
