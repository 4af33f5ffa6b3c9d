"""The worker's batch step (streams/step.py), driven directly: no Kafka, no
Faust, no Redis. Each dead-letter reason, duplicates, late and expired
events, re-keying, the scoring stage, and the property the whole worker
rests on: any split of a log into batches and any interleaving of its topic
partitions give the states the batch reference gives."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features import batch
from features.definitions import DAY_MS, HOUR_MS
from features.state import FoldConfig, UserState
from nudge.events import Event, dump_event
from streams import step as step_module
from streams.dlq import parse_dlq_headers
from streams.step import Message, StepConfig, StepResult, changelog_value, expected_partition, step
from tests.unit.test_features import T0, make, random_log

P = 6
CONFIG = StepConfig(partitions=P, rekeyed_topic="rekeyed", dlq_topic="dlq")
NOW = T0 + 30 * DAY_MS
TOPIC = {"clicks": "clicks", "purchases": "purchases", "app-events": "app-events"}


STAMP = 1_700_000_000.0  # the Kafka timestamp (s) every test message carries


def Msg(topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None) -> Message:
    return Message(topic, partition, offset, key, value, STAMP)


def msg_of(ev: Event, offset: int = 0, **overrides: Any) -> Message:
    key = ev.user_id.encode()
    m = Msg(TOPIC[ev.topic_kind], expected_partition(key, P), offset, key, dump_event(ev))
    return replace(m, **overrides)


def raw(value: bytes, topic: str = "clicks", key: bytes | None = b"u1", offset: int = 7) -> Message:
    return Msg(topic, expected_partition(key or b"", P), offset, key, value)


def run(messages: list[Message], states: dict[str, UserState] | None = None, **config: Any) -> StepResult:
    return step(states if states is not None else {}, messages, replace(CONFIG, **config), NOW)


# --- dead letters --------------------------------------------------------------

GOOD = {"event_id": "e1", "type": "page_view", "user_id": "u1", "ts": T0, "schema_version": 1}


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"\xff\xfe", "not_utf8"),
        (b"{nope", "not_json"),
        (b"[1, 2]", "not_object"),
        (orjson.dumps({**GOOD, "type": "teleport"}), "unknown_type"),
        (orjson.dumps({**GOOD, "schema_version": 9}), "unsupported_schema_version"),
        (orjson.dumps({k: v for k, v in GOOD.items() if k != "user_id"}), "missing_field"),
        (orjson.dumps({**GOOD, "price": "12"}), "wrong_type"),
        (orjson.dumps({**GOOD, "price": -1}), "invalid_value"),
        (orjson.dumps({**GOOD, "ts": NOW + 8 * DAY_MS}), "future_timestamp"),
        (b'{"pad": "' + b"x" * 70_000 + b'"}', "too_large"),
    ],
)
def test_each_rejection_is_a_dead_letter_with_its_reason_and_original_bytes(value: bytes, reason: str) -> None:
    good = make("g", "app_open", T0, "u2")
    result = run([raw(value), msg_of(good, offset=8)])
    [dead] = result.dead_letters
    assert dead.topic == "dlq" and dead.key == b"u1" and dead.value == value
    headers = parse_dlq_headers(dead.headers)
    assert headers["reason"] == reason
    assert headers["source.topic"] == "clicks" and headers["source.offset"] == "7"
    assert headers["failed_at"] == str(NOW), "the step's only clock is now_ms"
    assert result.dlq_reasons == {reason: 1}
    assert result.counts[("clicks", "rejected")] == 1
    # The good event next to it is folded and written as usual.
    assert [w.user_id for w in result.writes] == ["u2"]


def test_the_future_is_judged_by_now_ms_only() -> None:
    ev = make("f", "app_open", NOW + 3 * DAY_MS)
    assert run([msg_of(ev)]).dead_letters == []
    late_clock = step({}, [msg_of(ev)], CONFIG, NOW - 5 * DAY_MS)
    assert parse_dlq_headers(late_clock.dead_letters[0].headers)["reason"] == "future_timestamp"


def test_an_event_older_than_the_dedup_memory_is_too_old() -> None:
    first = run([msg_of(make("a", "app_open", T0 + 10 * DAY_MS))])
    result = run([msg_of(make("b", "app_open", T0), offset=1)], states=first.states)
    assert parse_dlq_headers(result.dead_letters[0].headers)["reason"] == "too_old"
    assert result.counts == {("app-events", "rejected"): 1}
    assert result.writes == [], "an expired event changes nothing and writes nothing"


def test_a_bug_in_the_fold_dead_letters_the_message_and_the_batch_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    real_fold = step_module.fold

    def fold(state: UserState, event: Event, config: FoldConfig) -> Any:
        if event.event_id == "boom":
            raise ZeroDivisionError("bug")
        return real_fold(state, event, config)

    monkeypatch.setattr(step_module, "fold", fold)
    result = run([msg_of(make("boom", "app_open", T0)), msg_of(make("ok", "app_open", T0, "u2"), offset=1)])
    assert parse_dlq_headers(result.dead_letters[0].headers)["reason"] == "processing_error"
    assert "ZeroDivisionError" in parse_dlq_headers(result.dead_letters[0].headers)["detail"]
    assert [type(exc) for _, exc in result.errors] == [ZeroDivisionError]
    assert [w.user_id for w in result.writes] == ["u2"]


# --- duplicates and late events ---------------------------------------------------


def test_a_duplicate_changes_nothing_but_still_writes_its_user() -> None:
    ev = make("a", "app_open", T0)
    first = run([msg_of(ev)])
    again = run([msg_of(ev, offset=1)], states=first.states)
    assert again.counts == {("app-events", "duplicate"): 1}
    # Redelivered after a crash, Redis may not have it yet: written anyway, same seq.
    assert [(w.user_id, w.seq) for w in again.writes] == [("u1", 1)]
    assert again.writes[0].fields == first.writes[0].fields


def test_a_late_event_counts_in_lifetime_fields_not_in_windows() -> None:
    result = run([msg_of(make("a", "app_open", T0 + 3 * HOUR_MS)), msg_of(make("b", "app_open", T0), offset=1)])
    assert result.counts == {("app-events", "applied"): 1, ("app-events", "late"): 1}
    fields = result.writes[0].fields
    assert fields["events_total"] == "2" and fields["late_events"] == "1" and fields["events_1h"] == "1"


# --- re-keying -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "partition"),
    [(b"someone-else", None), (None, None), (b"u1", (expected_partition(b"u1", P) + 1) % P)],
    ids=["wrong key", "no key", "wrong partition"],
)
def test_misplaced_events_are_rekeyed_by_user_id_not_folded(key: bytes | None, partition: int | None) -> None:
    ev = make("a", "app_open", T0)
    m = msg_of(ev, key=key, headers=[("trace", b"t1")])
    if partition is not None:
        m = replace(m, partition=partition)
    result = run([m])
    [out] = result.rekeyed
    assert (out.topic, out.key, out.value, out.headers) == ("rekeyed", b"u1", m.value, [("trace", b"t1")])
    assert result.states == {} and result.writes == []
    assert result.counts == {("app-events", "rekeyed"): 1}


def test_events_from_the_rekeyed_topic_are_folded() -> None:
    ev = make("a", "app_open", T0)
    result = run([msg_of(ev, topic="rekeyed")])
    assert result.rekeyed == [] and [w.user_id for w in result.writes] == ["u1"]


# --- what the shell gets -----------------------------------------------------------


def test_one_changelog_entry_and_one_write_per_touched_user() -> None:
    events = [make(i, "page_view", T0 + i * 1000, f"u{i % 3}", item_id="x") for i in range(9)]
    result = run([msg_of(ev, offset=i) for i, ev in enumerate(events)])
    assert [w.user_id for w in result.writes] == ["u0", "u1", "u2"]
    assert [w.seq for w in result.writes] == [3, 3, 3]
    for (key, partition), w in zip(result.changelog, result.writes, strict=True):
        assert key == w.user_id.encode() and partition == expected_partition(key, P)
        # The changelog form recovers exactly the state that was written.
        assert UserState.from_json(changelog_value(result.states[w.user_id])).features() == w.fields
    assert result.watermark == T0 + 8000
    assert result.first_seen_at == [STAMP] * 3


# --- the property: batching and interleaving never change the result ----------------


def kafka_log(events: list[Event]) -> dict[tuple[str, int], list[Message]]:
    """The events as Kafka stores them: per topic partition, in log order."""
    partitions: dict[tuple[str, int], list[Message]] = {}
    for ev in events:
        m = msg_of(ev)
        queue = partitions.setdefault((m.topic, m.partition), [])
        queue.append(replace(m, offset=len(queue)))
    return partitions


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), data=st.data())
def test_any_batching_and_interleaving_gives_the_batch_reference(seed: int, data: st.DataObject) -> None:
    events = random_log(seed, n=400, users=8)
    config = replace(CONFIG, fold=FoldConfig(dedup_max_ids=64))
    reference = batch.compute(events, config.fold)
    queues = {tp: list(reversed(msgs)) for tp, msgs in kafka_log(events).items()}
    # An interleaving of the partitions (each keeps its own order) ...
    order: list[Message] = []
    while queues:
        tp = data.draw(st.sampled_from(sorted(queues)))
        order.append(queues[tp].pop())
        if not queues[tp]:
            del queues[tp]
    # ... cut into batches of any size.
    cuts = sorted(data.draw(st.sets(st.integers(1, len(order) - 1), max_size=30)))
    states: dict[str, UserState] = {}
    written: dict[str, dict[str, str]] = {}
    for lo, hi in zip([0, *cuts], [*cuts, len(order)], strict=True):
        result = step(states, order[lo:hi], config, NOW + 400 * DAY_MS)
        states.update(result.states)
        written.update((w.user_id, w.fields) for w in result.writes)
        # Now and then the states come back from the changelog, as after a restart.
        if data.draw(st.booleans()):
            states = {uid: UserState.from_json(s.to_json()) for uid, s in states.items()}
    assert {uid: s.features() for uid, s in states.items()} == reference
    assert written == reference
