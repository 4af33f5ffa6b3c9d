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


def ensure_topics(settings: Settings, names: tuple[str, ...] | None = None) -> list[str]:
    """Create missing topics with the configured partitions, replication factor and
    min.insync.replicas; return those created. Existing topics are left as they are."""
    names = settings.all_topics if names is None else names
    problems = [p for p in map(topic_name_problem, names) if p is not None]
    if problems:
        raise ConfigError(f"{problems[0]} (check the NUDGE_TOPIC_* settings)")
    config = {
        "max.message.bytes": str(settings.max_message_bytes),
        "min.insync.replicas": str(settings.min_insync_replicas),
    }
    admin = admin_client(settings)
    try:
        existing = set(admin.list_topics())
        wanted = [
            NewTopic(name, settings.partitions, settings.replication, topic_configs=config)
            for name in names
            if name not in existing
        ]
        created = []
        for topic in wanted:
            try:
                admin.create_topics([topic])
                created.append(topic.name)
            except TopicAlreadyExistsError:
                pass
        if created:
            _wait_until_described(admin, created, settings.partitions)
            log.info(
                "created topics %s with %d partitions, replication %d, min.insync.replicas %d",
                ", ".join(created),
                settings.partitions,
                settings.replication,
                settings.min_insync_replicas,
            )
        return created
    finally:
        admin.close()


def _wait_until_described(admin: KafkaAdminClient, topics: list[str], partitions: int) -> None:
    """Wait until the brokers' metadata shows every partition of new topics with
    a leader: Kafka acknowledges a creation before every broker knows of it,
    and a client asking another broker right after would see no partitions."""
    deadline = time.monotonic() + _DESCRIBE_TIMEOUT_S
    while True:
        try:
            described = admin.describe_topics(topics)
            if all(
                len(t["partitions"]) == partitions and all(p["leader_id"] >= 0 for p in t["partitions"])
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
        "partitions",
        "replication",
        "min_insync_replicas",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    created = ensure_topics(settings)
    admin = admin_client(settings)
    try:
        described = admin.describe_topics(list(settings.all_topics))
    finally:
        admin.close()
    for topic in sorted(described, key=lambda t: str(t["name"])):
        mark = " (created)" if topic["name"] in created else ""
        print(f"{topic['name']:24} {len(topic['partitions'])} partitions{mark}")
    return 0
