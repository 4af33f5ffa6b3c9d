"""Runs that live in a scope of their own (benchmarks, the closed loop, integration tests): the settings
that name it, and the clean-up afterwards."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nudge.redis_client import sync_client
from nudge.settings import Settings
from nudge.topics import admin_client

__all__ = ["drop_run", "scoped"]

_TOPICS = {
    "topic_clicks": "clicks",
    "topic_purchases": "purchases",
    "topic_app_events": "app-events",
    "topic_dlq": "dlq",
    "topic_rekeyed": "rekeyed",
    "topic_training_examples": "training-examples",
    "topic_bandit_rewards": "bandit-rewards",
    "topic_model_snapshots": "model-snapshots",
    "topic_decisions": "decisions",
    "topic_notifications": "notifications",
    "topic_notifications_dlq": "notifications-dlq",
}


def scoped(settings: Settings, tag: str, *, own_keys: bool = True, **extra: Any) -> Settings:
    """`settings` for a run of its own: every topic `<tag>-…`, its own consumer groups and changes stream.

    With `own_keys` the users' hashes and the trigger service's keys get `<tag>:` prefixes too;
    without, they keep the usual ones (so `nudge state` and `nudge why` find the run's users).
    `extra` overrides anything.
    """
    names: dict[str, Any] = {field: f"{tag}-{suffix}" for field, suffix in _TOPICS.items()}
    names.update(app_id=tag, triggers_group=f"{tag}-triggers", delivery_group=f"{tag}-delivery")
    if own_keys:
        names.update(
            user_key_prefix=f"{tag}:user:", changes_stream=f"{tag}:changes", triggers_key_prefix=f"{tag}:nudge:"
        )
    else:
        names.update(changes_stream=f"{settings.changes_stream}:{tag}")
    return dataclasses.replace(settings, **{**names, **extra})


def drop_run(
    settings: Settings, topic_prefix: str, *, key_patterns: Sequence[str] = (), data_dir: Path | None = None
) -> None:
    """Delete the topics whose names start with `topic_prefix`, the Redis keys matching `key_patterns`
    (glob), and `data_dir`."""
    admin = admin_client(settings)
    try:
        doomed = [t for t in admin.list_topics() if t.startswith(topic_prefix)]
        if doomed:
            admin.delete_topics(doomed)
    finally:
        admin.close()
    if key_patterns:
        client = sync_client(settings)
        try:
            for pattern in key_patterns:
                for key in client.scan_iter(match=pattern, count=10_000):
                    client.delete(key)
        finally:
            client.close()
    if data_dir is not None:
        shutil.rmtree(data_dir, ignore_errors=True)
