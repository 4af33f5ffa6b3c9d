"""Cleaning up after a run that lived in a scope of its own (benchmarks, the closed loop)."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from nudge.redis_client import sync_client
from nudge.settings import Settings
from nudge.topics import admin_client

__all__ = ["drop_run"]


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
