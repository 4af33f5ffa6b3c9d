"""Topic names and their creation.

The event contract names three input topics by *kind* (clicks, purchases,
app-events); the actual names are settings. `topic_for_event_type` maps an
event's `type` to the configured topic, which is how producers route events.
`topic_name_problem` is Kafka's own rule for a legal name, checked before a
name reaches a client (kafka-python would wait for metadata that never comes).
"""

from __future__ import annotations

import argparse
import logging
import time

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from nudge.errors import ConfigError, DependencyUnavailable
from nudge.events import TOPIC_OF_TYPE
from nudge.kafka_clients import connect
from nudge.settings import Settings
from nudge.settings import topic_name_problem as settings_topic_name_problem
from nudge.text import printable

__all__ = [
    "admin_client",
    "ensure_topics",
    "topic_for_event_type",
    "topic_for_kind",
    "topic_layout",
    "topic_name_problem",
]

log = logging.getLogger(__name__)

_DESCRIBE_TIMEOUT_S = 30.0


def topic_name_problem(name: str) -> str | None:
    """Why `name` is not a legal Kafka topic name, as a sentence, or None (the rule: nudge.settings).

    >>> topic_name_problem("my clicks")
    "topic name 'my clicks' holds characters Kafka does not allow (' '): use only a-z A-Z 0-9 . _ -"
    >>> topic_name_problem("..")
    "topic name '..' is a name Kafka reserves"
    """
    problem = settings_topic_name_problem(name)
    return None if problem is None else f"topic name {printable(name[:60])!r} {problem}"


def topic_for_kind(settings: Settings, kind: str) -> str:
    """The configured topic of an input kind ('clicks', 'purchases', 'app-events')."""
    return {
        "clicks": settings.topic_clicks,
        "purchases": settings.topic_purchases,
        "app-events": settings.topic_app_events,
    }[kind]


def topic_for_event_type(settings: Settings, event_type: str) -> str | None:
    """The topic an event of this type belongs to, or None for an unknown type."""
    kind = TOPIC_OF_TYPE.get(event_type)
    return None if kind is None else topic_for_kind(settings, kind)


def admin_client(settings: Settings) -> KafkaAdminClient:
    """An admin client of a reachable cluster, or DependencyUnavailable within a few seconds."""
    return connect(KafkaAdminClient, settings, client_id="nudge-admin", request_timeout_ms=15_000)


def topic_layout(settings: Settings, name: str) -> tuple[int, dict[str, str]]:
    """(partitions, topic configs) nudge creates `name` with.

    Every topic gets the configured partitions, except the model snapshots:
    one partition, compacted, since a scorer only ever wants the newest
    snapshot (key b"models") and a trainer the newest it can verify.
    """
    config = {
        "max.message.bytes": str(settings.max_message_bytes),
        "min.insync.replicas": str(settings.min_insync_replicas),
    }
    if name == settings.topic_model_snapshots:
        return 1, {**config, "cleanup.policy": "compact"}
    return settings.partitions, config


def ensure_topics(settings: Settings, names: tuple[str, ...] | None = None) -> list[str]:
    """Create missing topics (default: the stream's and the models') with their layout
    (`topic_layout`), replication factor and min.insync.replicas; return those created.
    Existing topics are left as they are."""
    names = (*settings.all_topics, *settings.model_topics, *settings.trigger_topics) if names is None else names
    problems = [p for p in map(topic_name_problem, names) if p is not None]
    if problems:
        raise ConfigError(f"{problems[0]} (check the NUDGE_TOPIC_* settings)")
    admin = admin_client(settings)
    try:
        existing = set(admin.list_topics())
        wanted = []
        for name in dict.fromkeys(names):
            if name not in existing:
                partitions, config = topic_layout(settings, name)
                wanted.append(NewTopic(name, partitions, settings.replication, topic_configs=config))
        created = []
        for topic in wanted:
            try:
                admin.create_topics([topic])
                created.append(topic.name)
            except TopicAlreadyExistsError:
                pass
        if created:
            _wait_until_described(admin, {name: topic_layout(settings, name)[0] for name in created})
            log.info(
                "created topics %s with %d partitions, replication %d, min.insync.replicas %d%s",
                ", ".join(created),
                settings.partitions,
                settings.replication,
                settings.min_insync_replicas,
                f" ({settings.topic_model_snapshots}: 1 partition, compacted)"
                if settings.topic_model_snapshots in created
                else "",
            )
        return created
    finally:
        admin.close()


def _wait_until_described(admin: KafkaAdminClient, partitions: dict[str, int]) -> None:
    """Wait until the brokers' metadata shows every partition of new topics with
    a leader: Kafka acknowledges a creation before every broker knows of it,
    and a client asking another broker right after would see no partitions."""
    topics = list(partitions)
    deadline = time.monotonic() + _DESCRIBE_TIMEOUT_S
    while True:
        try:
            described = admin.describe_topics(topics)
            if all(
                len(t["partitions"]) == partitions[t["name"]] and all(p["leader_id"] >= 0 for p in t["partitions"])
                for t in described
            ):
                return
        except KafkaError:
            pass
        if time.monotonic() > deadline:
            raise DependencyUnavailable(f"Kafka created {', '.join(topics)} but did not show their partitions")
        time.sleep(0.1)


def configure(parser: argparse.ArgumentParser) -> None:
    """`nudge topics`: create missing topics, then list them with partitions."""
    from nudge.cli import settings_epilog

    parser.epilog = settings_epilog(
        "kafka_bootstrap",
        "topic_clicks",
        "topic_purchases",
        "topic_app_events",
        "topic_dlq",
        "topic_rekeyed",
        "topic_training_examples",
        "topic_bandit_rewards",
        "topic_model_snapshots",
        "topic_decisions",
        "topic_notifications",
        "topic_notifications_dlq",
        "partitions",
        "replication",
        "min_insync_replicas",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    created = ensure_topics(settings)
    admin = admin_client(settings)
    try:
        described = admin.describe_topics([*settings.all_topics, *settings.model_topics, *settings.trigger_topics])
    finally:
        admin.close()
    for topic in sorted(described, key=lambda t: str(t["name"])):
        mark = " (created)" if topic["name"] in created else ""
        print(f"{topic['name']:24} {len(topic['partitions'])} partitions{mark}")
    return 0
