"""streams.trainer's pure parts: offsets bookkeeping, id dedup, choosing the snapshot to resume from."""

from __future__ import annotations

import pytest

from models.bundle import new_bundle
from models.snapshot import seal
from nudge.cli import main
from streams.trainer import Positions, SeenIds, newest_valid, offset_key

KEY = b"t" * 32


def blob(version: int, key: bytes = KEY, offsets: dict[str, int] | None = None) -> bytes:
    bundle = new_bundle(["a", "b"])
    bundle.version = version
    return seal(bundle, key=key, version=version, meta={"created_at": 0, "offsets": offsets or {}})


def test_positions_store_the_next_offset_and_never_go_back() -> None:
    p = Positions()
    for offset in (0, 1, 2):
        p.advance("ex", 0, offset)
    p.advance("ex", 0, 1)  # a re-delivered older message cannot move the position back
    p.advance("rw", 2, 9)
    assert p.as_meta() == {"ex:0": 3, "rw:2": 10}
    resumed = Positions(p.as_meta())
    assert resumed.start("ex", 0) == 3 and resumed.start("ex", 1) is None
    assert resumed.caught_up({"ex:0": 3, "ex:1": 0, "rw:2": 10})
    assert not resumed.caught_up({"ex:0": 3, "ex:1": 1})


def test_offset_keys_keep_topic_names_with_colons_apart_from_partitions() -> None:
    assert offset_key("a.b-c", 12) == "a.b-c:12"


def test_seen_ids_remember_at_least_half_their_capacity_and_hold_at_most_all_of_it() -> None:
    seen = SeenIds(capacity=4)
    ids = [f"ex-{i}" for i in range(50)]
    for i, x in enumerate(ids):
        assert seen.add(x), x
        for recent in ids[max(0, i - 1) : i + 1]:  # the last capacity // 2 are always remembered
            assert not seen.add(recent), (x, recent)
        assert len(seen._current) + len(seen._previous) <= 4
    assert seen.add("ex-0") and seen.add("ex-10")  # long gone: forgotten


def test_newest_valid_falls_back_past_refused_records_and_tombstones() -> None:
    good_old, good_new = blob(1, offsets={"ex:0": 5}), blob(2, offsets={"ex:0": 9})
    tampered = bytearray(good_new)
    tampered[-50] ^= 0xFF
    records = [(5, bytes(tampered)), (4, None), (3, good_new[:100]), (2, blob(3, key=b"x" * 32)), (1, good_old)]
    snapshot, bundle, refusals = newest_valid(records, KEY)
    assert snapshot is not None and bundle is not None
    assert snapshot.version == bundle.version == 1 and snapshot.offsets == {"ex:0": 5}
    assert [(r.offset, r.reason) for r in refusals] == [(5, "bad_signature"), (3, "truncated"), (2, "bad_signature")]


def test_newest_valid_takes_the_newest_good_one_without_refusals() -> None:
    snapshot, _, refusals = newest_valid([(1, blob(2)), (0, blob(1))], KEY)
    assert snapshot is not None and snapshot.version == 2 and refusals == []


def test_newest_valid_with_nothing_good_gives_a_fresh_start() -> None:
    snapshot, bundle, refusals = newest_valid([(0, b"not a snapshot at all")], KEY)
    assert snapshot is None and bundle is None and [r.reason for r in refusals] == ["bad_magic"]
    assert newest_valid([], KEY) == (None, None, [])


def test_trainer_refuses_to_start_without_a_model_key(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("NUDGE_MODEL_KEY", raising=False)
    assert main(["trainer"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "NUDGE_MODEL_KEY is empty" in err
