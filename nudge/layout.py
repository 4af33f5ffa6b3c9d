"""The Redis layout: key names shared by the worker that writes them and
every reader (`nudge state`, the trigger service, benchmarks).

- `<user_key_prefix><user_id>` (`user:u123`): the user's hash.
- `<changes_stream>:{<i>}` for i in 0..changes_shards-1 (`nudge:changes:{0}`):
  the changes streams. A user's entries always go to the same shard,
  `crc32(user_id) % changes_shards`, so one reader of a shard sees one user's
  changes in order. Each shard name is its own Redis Cluster hash tag, so a
  shard lives on one node and the shards spread over the nodes; readers
  consume all shards (one consumer group per shard).

>>> from nudge.settings import Settings
>>> s = Settings(changes_shards=4)
>>> changes_streams(s)
('nudge:changes:{0}', 'nudge:changes:{1}', 'nudge:changes:{2}', 'nudge:changes:{3}')
>>> changes_stream_of(s, "u123"), user_key(s, "u123")
('nudge:changes:{2}', 'user:u123')
"""

from __future__ import annotations

import zlib

from nudge.settings import Settings

__all__ = ["changes_shard", "changes_stream_of", "changes_streams", "user_key"]


def user_key(settings: Settings, user_id: str) -> str:
    return settings.user_key_prefix + user_id


def changes_shard(user_id: str, shards: int) -> int:
    """The changes shard of a user: stable across processes and languages (CRC-32)."""
    return zlib.crc32(user_id.encode()) % shards


def changes_streams(settings: Settings) -> tuple[str, ...]:
    """Every changes stream, in shard order."""
    return tuple(f"{settings.changes_stream}:{{{i}}}" for i in range(settings.changes_shards))


def changes_stream_of(settings: Settings, user_id: str) -> str:
    return f"{settings.changes_stream}:{{{changes_shard(user_id, settings.changes_shards)}}}"
