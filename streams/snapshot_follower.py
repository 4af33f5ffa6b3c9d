"""The worker's side of model snapshots: follow the snapshot topic, verify, swap the models in.

Every worker process reads the whole (one-partition, compacted) snapshot
topic itself, with no consumer group: each needs every snapshot, and a group
would hand the partition to one of them. From the start of the topic, each
record is verified (`models.snapshot.open_snapshot`: the HMAC before any
unpickling) and the newest valid bundle goes to the model stage; a record
that fails is refused, counted by reason and logged in one line, and the
stage keeps scoring with the last good models.
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer, TopicPartition

from models.bundle import bundle_from_snapshot
from models.snapshot import SnapshotRefused, open_snapshot
from nudge.kafka_security import client_config
from nudge.settings import Settings
from streams.metrics import StreamMetrics
from streams.model_stage import ModelStage

__all__ = ["follow_snapshots", "take_snapshot"]

log = logging.getLogger(__name__)


def take_snapshot(stage: ModelStage, value: bytes | None, key: bytes, metrics: StreamMetrics) -> bool:
    """Verify one snapshot record and, if it is newer, make it the stage's models. True when taken."""
    if value is None:
        return False  # a tombstone
    try:
        bundle = bundle_from_snapshot(open_snapshot(value, key=key))
    except SnapshotRefused as refusal:
        metrics.snapshots_refused.labels(refusal.reason).inc()
        log.warning("model snapshot refused (%s); still scoring with version %s", refusal.reason, _version(stage))
        return False
    if stage.bundle is not None and bundle.version <= stage.bundle.version:
        return False
    stage.use(bundle)
    metrics.model_version.set(bundle.version)
    log.info("scoring with model snapshot version %d", bundle.version)
    return True


async def follow_snapshots(settings: Settings, stage: ModelStage, metrics: StreamMetrics) -> None:
    """Run until cancelled: every snapshot record, from the topic's start, through `take_snapshot`."""
    key = settings.model_key.encode()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        enable_auto_commit=False,
        client_id=f"{settings.app_id}-snapshots",
        max_partition_fetch_bytes=settings.max_message_bytes,
        fetch_max_bytes=settings.max_message_bytes,
        **client_config(settings),
    )
    await consumer.start()
    try:
        tp = TopicPartition(settings.topic_model_snapshots, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        while True:
            batches = await consumer.getmany(tp, timeout_ms=1000)
            for record in batches.get(tp, []):
                # Unpickling a megabyte of models takes milliseconds: off the event loop.
                await asyncio.to_thread(take_snapshot, stage, record.value, key, metrics)
    finally:
        await consumer.stop()


def _version(stage: ModelStage) -> str:
    return "none" if stage.bundle is None else str(stage.bundle.version)
