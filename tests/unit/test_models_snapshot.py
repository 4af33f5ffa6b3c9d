"""models.snapshot: signed snapshots round-trip, and anything else is refused unopened."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from river import linear_model, preprocessing

from models import snapshot
from models.snapshot import REFUSAL_REASONS, SnapshotRefused, open_snapshot, seal

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
META = {"created_at": "2024-05-01T00:00:00+00:00", "offsets": {"training-examples:0": 41}}


def _trained_pipeline() -> Any:
    model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    for i in range(50):
        x = {"a": float(i % 7), "b": float(i % 3)}
        model.learn_one(x, x["a"] > 3)
    return model


def _refusal(blob: bytes, key: bytes = KEY) -> str:
    with pytest.raises(SnapshotRefused) as info:
        open_snapshot(blob, key=key)
    assert info.value.reason in REFUSAL_REASONS
    return info.value.reason


def test_round_trip_with_river_models() -> None:
    churn = _trained_pipeline()
    blob = seal({"churn": churn, "cuts": [1.0, 2.0]}, key=KEY, version=7, meta=META)
    snap = open_snapshot(blob, key=KEY)
    assert snap.version == 7
    assert snap.meta == META
    assert snap.created_at == META["created_at"]
    assert snap.offsets == META["offsets"]
    models = snap.models
    assert isinstance(models, dict)
    assert sorted(models) == ["churn", "cuts"]
    probe = {"a": 5.0, "b": 1.0}
    assert models["churn"].predict_proba_one(probe) == churn.predict_proba_one(probe)
    # the copy keeps learning on its own
    models["churn"].learn_one(probe, False)
    assert models["churn"].predict_proba_one(probe) != churn.predict_proba_one(probe)


def test_seal_is_deterministic_for_equal_inputs() -> None:
    assert seal([1, 2, 3], key=KEY, version=1, meta=META) == seal([1, 2, 3], key=KEY, version=1, meta=META)


def test_foreign_key_is_bad_signature() -> None:
    blob = seal({"m": 1}, key=OTHER_KEY, version=1, meta=META)
    assert _refusal(blob) == "bad_signature"


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_any_flipped_byte_is_refused(data: st.DataObject) -> None:
    blob = bytearray(seal({"m": list(range(20))}, key=KEY, version=2, meta=META))
    index = data.draw(st.integers(0, len(blob) - 1))
    bit = data.draw(st.integers(0, 7))
    blob[index] ^= 1 << bit
    expected = (
        {"bad_magic"}
        if index < 8
        else {"unsupported_format"}
        if index < 10
        else {"truncated", "corrupt"}  # the declared length no longer matches
        if index < 18
        else {"bad_signature"}
    )
    assert _refusal(bytes(blob)) in expected


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_any_truncation_is_refused(data: st.DataObject) -> None:
    blob = seal({"m": list(range(20))}, key=KEY, version=2, meta=META)
    cut = data.draw(st.integers(0, len(blob) - 1))
    assert _refusal(blob[:cut]) == "truncated"


def test_each_reason() -> None:
    blob = seal({"m": 1}, key=KEY, version=1, meta=META)
    assert _refusal(b"NUDGE") == "truncated"
    assert _refusal(blob[:-1]) == "truncated"
    assert _refusal(pickle.dumps({"m": 1})) == "bad_magic"
    assert _refusal(b'{"version": 1}' + bytes(64)) == "bad_magic"
    future = bytearray(blob)
    future[8:10] = struct.pack(">H", snapshot.FORMAT + 1)
    assert _refusal(bytes(future)) == "unsupported_format"
    assert _refusal(blob + b"\x00") == "corrupt"
    tampered = bytearray(blob)
    tampered[-1] ^= 0x01
    assert _refusal(bytes(tampered)) == "bad_signature"


def _signed_body(body: bytes) -> bytes:
    """A blob whose MAC is right but whose body was not made by `seal`."""
    mac = snapshot._mac(KEY, snapshot.FORMAT, len(body), body)
    return snapshot._PREFIX.pack(snapshot.MAGIC, snapshot.FORMAT, len(body), mac) + body


def test_signed_but_unreadable_is_corrupt() -> None:
    assert _refusal(_signed_body(struct.pack(">I", 5) + b"{oops")) == "corrupt"
    header = b'{"meta":{"created_at":0},"names":[],"payload_length":3,"version":1}'
    assert _refusal(_signed_body(struct.pack(">I", len(header)) + header + b"xyz")) == "corrupt"
    assert _refusal(_signed_body(struct.pack(">I", 10_000) + header)) == "corrupt"


def _write_marker(path: str) -> None:
    Path(path).write_text("pwned")


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (_write_marker, (str(self.marker),))


def test_malicious_pickle_under_another_key_is_never_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    evil = seal(_Evil(marker), key=OTHER_KEY, version=1, meta=META)
    assert _refusal(evil) == "bad_signature"
    assert not marker.exists()
    # The same blob under the key that signed it does run its code: the check above is what stopped it.
    open_snapshot(evil, key=OTHER_KEY)
    assert marker.read_text() == "pwned"


@pytest.mark.parametrize("key", [b"", b"short", bytes(31)])
def test_short_keys_are_refused(key: bytes) -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        seal({}, key=key, version=1, meta=META)
    with pytest.raises(ValueError, match="at least 32 bytes"):
        open_snapshot(seal({}, key=KEY, version=1, meta=META), key=key)


@pytest.mark.parametrize(
    ("version", "meta", "problem"),
    [
        (-1, META, "version"),
        (True, META, "version"),
        (1, {}, "created_at"),
        (1, {"created_at": 0, "offsets": {"t:0": "x"}}, "offsets"),
        (1, {"created_at": object()}, "JSON"),
        (1, {"created_at": float("nan")}, "JSON"),
    ],
)
def test_bad_seal_arguments(version: Any, meta: Any, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        seal({}, key=KEY, version=version, meta=meta)
