"""Fixtures for tests against the real local stack (Kafka KRaft + Redis).

The stack is brought up once per session with `nudge stack up` (idempotent:
a developer's running stack is reused). A missing broker is a failure, not a
skip. Each test gets its own topics (and Redis key prefix) so tests never see
each other's data.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import Iterator

import pytest

from nudge import stack
from nudge.settings import Settings
from nudge.topics import admin_client, ensure_topics


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def settings() -> Iterator[Settings]:
    base = Settings.from_env()
    stack.up(base)
    yield base


@pytest.fixture
def unique_topics(settings: Settings) -> Iterator[Settings]:
    """Settings whose topics are unique to this test and already created.

    They are deleted afterwards unless NUDGE_KEEP_TEST_TOPICS=1 (to debug a
    failure from the changelog and the DLQ)."""
    tag = uuid.uuid4().hex[:10]
    scoped = dataclasses.replace(
        settings,
        topic_clicks=f"t{tag}-clicks",
        topic_purchases=f"t{tag}-purchases",
        topic_app_events=f"t{tag}-app-events",
        topic_dlq=f"t{tag}-dlq",
        topic_rekeyed=f"t{tag}-rekeyed",
        app_id=f"t{tag}",
        user_key_prefix=f"t{tag}:user:",
        changes_stream=f"t{tag}:changes",
    )
    ensure_topics(scoped)
    yield scoped
    if os.environ.get("NUDGE_KEEP_TEST_TOPICS") == "1":
        return
    admin = admin_client(scoped)
    try:
        existing = set(admin.list_topics())
        doomed = [t for t in existing if t.startswith(f"t{tag}")]
        if doomed:
            admin.delete_topics(doomed)
    finally:
        admin.close()
