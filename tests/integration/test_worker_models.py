"""The worker with models on: the delayed labels and offer rewards it produces are the pure step's.

A simulated month is replayed into Kafka; the worker (a real process) folds
it and produces training examples and bandit rewards. The same log, folded by
the pure step in one batch, is the reference: the examples must be the same
ones (ids and labels), each exactly once, whatever batches and partition
interleaving the worker saw, because labels run on event time only.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka import KafkaConsumer, TopicPartition

from nudge.settings import Settings
from nudge.topics import ensure_topics, topic_for_event_type
from producers.simulator import generate
from streams.model_stage import model_stage_for
from streams.process import WorkerProcess
from streams.step import StepConfig, expected_partition, step
from tests.integration.test_worker import free_port, log_path, produce

pytestmark = pytest.mark.integration

USERS, DAYS, SEED = 150, 30, 5
KEY = "k" * 40


@dataclasses.dataclass(frozen=True)
class _Msg:
    topic: str
    partition: int
    offset: int
    key: bytes
    value: bytes
    timestamp: float | None = None
    headers: Any = None


@dataclasses.dataclass(frozen=True)
class Reference:
    examples: dict[str, float]  # example id -> label
    rewards: dict[str, float]  # reward id -> reward
    watermark: int


def reference(settings: Settings, events: list[dict[str, Any]]) -> Reference:
    """What the pure step resolves from the whole log as one batch, and the watermark it reached."""
    config = StepConfig.from_settings(settings)
    messages = []
    for i, ev in enumerate(events):
        key = ev["user_id"].encode()
        topic = str(topic_for_event_type(settings, ev["type"]))
        messages.append(_Msg(topic, expected_partition(key, settings.partitions), i, key, orjson.dumps(ev)))
    stage = model_stage_for(settings)
    result = step({}, messages, config, now_ms=2**52, models=stage)
    watermark = stage.clock.watermark(wall_ms=2**52)
    assert watermark is not None
    return Reference(
        {e.example_id: e.label for e in result.examples}, {r.reward_id: r.reward for r in result.rewards}, watermark
    )


def same_as_reference(
    got: list[dict[str, Any]], expected: dict[str, float], field: str, kind: str, ref: Reference
) -> None:
    """Every reference record, once, with its value; beyond them only records the worker's later
    watermark explains (partitions idle for a minute stop holding its clock back; the reference's
    single batch keeps every partition active)."""
    ids = [r[f"{kind}_id"] for r in got]
    assert len(ids) == len(set(ids)), f"a {kind} was produced twice"
    by_id = {r[f"{kind}_id"]: r for r in got}
    assert set(expected) <= set(by_id), f"{len(set(expected) - set(by_id))} {kind}s missing"
    assert {i: by_id[i][field] for i in expected} == expected
    early = [r for i, r in by_id.items() if i not in expected and r["resolved_at"] <= ref.watermark]
    assert not early, [
        (r.get("target"), r["user_id"], r.get("observed_at"), r["resolved_at"], r.get("label"), ref.watermark)
        for r in early[:5]
    ]


def read_all(settings: Settings, topic: str, expected: int, timeout_s: float = 30) -> list[dict[str, Any]]:
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout_s
        while len(out) < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                out.extend(orjson.loads(r.value) for r in records)
        # a little longer: anything beyond `expected` is a duplicate the test must see
        for records in consumer.poll(timeout_ms=2000).values():
            out.extend(orjson.loads(r.value) for r in records)
        return out
    finally:
        consumer.close()


@pytest.mark.xfail(
    strict=True,
    reason="known divergence (issue 9, open): a user's events sit on three topics, so the worker folds "
    "them in an order the log does not have (a purchase of 9:55 after a click of 10:00); an observation "
    "boundary decided before the late event arrived (how far after the user's latest event it may be) "
    "then differs from the time-ordered reference: 100-500 of ~3,600 example ids differ between runs, "
    "while the labels of shared ids agree. Fix: decide observations at the watermark only, or fold in "
    "event-time order across a user's topics",
)
def test_labels_and_rewards_from_the_worker_are_the_pure_steps(unique_topics: Settings, tmp_path: Path) -> None:
    tag = unique_topics.app_id
    settings = dataclasses.replace(
        unique_topics,
        model_key=KEY,
        topic_training_examples=f"{tag}-training-examples",
        topic_bandit_rewards=f"{tag}-bandit-rewards",
    )
    ensure_topics(settings, (settings.topic_training_examples, settings.topic_bandit_rewards))
    events = list(generate(USERS, DAYS, SEED))
    ref = reference(settings, events)
    labels = set(ref.examples.values())
    assert len(ref.examples) > 1000 and {0.0, 1.0} <= labels
    assert ref.rewards, "the simulator exposes users to offers: some rewards must resolve"

    produce(settings, events)
    with WorkerProcess(settings, web_port=free_port(), log_path=log_path(tmp_path, "w")) as worker:
        worker.wait_processed(len(events), timeout=300)
        got_examples = read_all(settings, settings.topic_training_examples, len(ref.examples))
        got_rewards = read_all(settings, settings.topic_bandit_rewards, len(ref.rewards))

    same_as_reference(got_examples, ref.examples, "label", "example", ref)
    same_as_reference(got_rewards, ref.rewards, "reward", "reward", ref)
