"""The worker takes a snapshot only when it verifies and is newer; a refused one leaves the last good models."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from models.bundle import new_bundle
from models.offers import by_id, load_offers
from models.snapshot import seal
from streams.metrics import StreamMetrics
from streams.model_stage import ModelStage
from streams.snapshot_follower import take_snapshot

KEY = b"k" * 40
OFFERS = list(by_id(load_offers()))


def blob(version: int, key: bytes = KEY) -> bytes:
    bundle = new_bundle(OFFERS)
    bundle.version = version
    return seal(bundle, key=key, version=version, meta={"created_at": 0})


def test_valid_newer_snapshots_are_taken_and_refused_ones_counted_without_losing_the_models() -> None:
    stage = ModelStage(by_id(load_offers()))
    registry = CollectorRegistry()
    metrics = StreamMetrics(registry)
    assert take_snapshot(stage, blob(1), KEY, metrics)
    assert stage.bundle is not None and stage.bundle.version == 1

    tampered = bytearray(blob(2))
    tampered[-10] ^= 0xFF
    assert not take_snapshot(stage, bytes(tampered), KEY, metrics)
    assert not take_snapshot(stage, blob(3, key=b"x" * 40), KEY, metrics)  # a foreign key
    assert not take_snapshot(stage, blob(2)[:100], KEY, metrics)  # truncated
    assert not take_snapshot(stage, None, KEY, metrics)  # a tombstone
    assert stage.bundle.version == 1  # still the last good one
    assert registry.get_sample_value("nudge_worker_snapshots_refused_total", {"reason": "bad_signature"}) == 2
    assert registry.get_sample_value("nudge_worker_snapshots_refused_total", {"reason": "truncated"}) == 1

    assert not take_snapshot(stage, blob(1), KEY, metrics)  # not newer
    assert take_snapshot(stage, blob(4), KEY, metrics)
    assert stage.bundle.version == 4
    assert registry.get_sample_value("nudge_worker_model_version") == 4
