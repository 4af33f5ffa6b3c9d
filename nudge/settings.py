"""Typed settings, one declaration per setting, each naming its env var.

Every process builds one `Settings` at start (`Settings.from_env()`) and passes
it down; nothing else reads `os.environ`. `nudge settings` and every command's
`--help` list these declarations, and deploy/env.example is generated from
them (a test keeps it in sync).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nudge.errors import ConfigError

__all__ = ["Setting", "Settings"]


def _setting(default: Any, env: str, help: str, secret: bool = False) -> Any:
    return field(default=default, metadata={"env": env, "help": help, "secret": secret})


@dataclass(frozen=True, slots=True)
class Setting:
    """One declared setting, as shown by `--help` and `nudge settings`."""

    name: str
    env: str
    help: str
    default: Any
    secret: bool


@dataclass(frozen=True, slots=True)
class Settings:
    """All of nudge's settings. Every name, port and threshold is a setting (docs/contracts.md lists the contracts they configure)."""

    # --- local stack -------------------------------------------------------
    data_dir: Path = _setting(Path(".nudge"), "NUDGE_DATA_DIR", "where the local stack keeps data, logs and pid files")
    kafka_brokers: int = _setting(
        1, "NUDGE_KAFKA_BROKERS", "KRaft nodes (broker+controller) the local stack runs, 1..9"
    )
    kafka_port: int = _setting(9092, "NUDGE_KAFKA_PORT", "local broker's client port (node i: kafka_port+i-1)")
    kafka_controller_port: int = _setting(
        9192, "NUDGE_KAFKA_CONTROLLER_PORT", "local broker's KRaft controller port (node i: +i-1)"
    )
    kafka_heap: str = _setting("512m", "NUDGE_KAFKA_HEAP", "JVM heap of each local broker (-Xmx/-Xms)")
    redis_port: int = _setting(6379, "NUDGE_REDIS_PORT", "local Redis port (cluster node i: redis_port+i-1)")
    redis_cluster: bool = _setting(
        False, "NUDGE_REDIS_CLUSTER", "Redis Cluster: the stack runs a cluster, clients use the cluster client"
    )
    redis_cluster_nodes: int = _setting(3, "NUDGE_REDIS_CLUSTER_NODES", "masters of the local Redis Cluster, 3..9")

    # --- connections -------------------------------------------------------
    kafka_bootstrap: str = _setting(
        "", "NUDGE_KAFKA_BOOTSTRAP", "Kafka bootstrap servers (default: every local broker, 127.0.0.1:<kafka_port>,...)"
    )
    redis_url: str = _setting(
        "", "NUDGE_REDIS_URL", "Redis URL, any node of a cluster (default redis://127.0.0.1:<redis_port>/0)"
    )

    # --- topics ------------------------------------------------------------
    topic_clicks: str = _setting("clicks", "NUDGE_TOPIC_CLICKS", "input topic of click events")
    topic_purchases: str = _setting("purchases", "NUDGE_TOPIC_PURCHASES", "input topic of purchase events")
    topic_app_events: str = _setting("app-events", "NUDGE_TOPIC_APP_EVENTS", "input topic of app events")
    topic_dlq: str = _setting("dlq", "NUDGE_TOPIC_DLQ", "dead-letter topic: bad input with its reason")
    topic_rekeyed: str = _setting("nudge-rekeyed", "NUDGE_TOPIC_REKEYED", "internal topic: events re-keyed by user_id")
    partitions: int = _setting(6, "NUDGE_PARTITIONS", "partition count of every topic nudge creates")
    replication: int = _setting(
        0, "NUDGE_REPLICATION", "replication factor of every topic nudge creates (0: min(3, NUDGE_KAFKA_BROKERS))"
    )
    min_insync_replicas: int = _setting(
        0, "NUDGE_MIN_INSYNC_REPLICAS", "min.insync.replicas of topics and brokers (0: 2 if replication >= 3, else 1)"
    )
    max_message_bytes: int = _setting(
        4 * 1024 * 1024,
        "NUDGE_MAX_MESSAGE_BYTES",
        "largest Kafka message accepted (so oversized input still reaches the DLQ)",
    )

    # --- events ------------------------------------------------------------
    max_event_bytes: int = _setting(
        64 * 1024, "NUDGE_MAX_EVENT_BYTES", "larger events are rejected (the event contract: 64 KiB)"
    )
    max_future_ms: int = _setting(
        7 * 86_400_000, "NUDGE_MAX_FUTURE_MS", "events further in the future than this are rejected"
    )

    # --- collector ---------------------------------------------------------
    collector_host: str = _setting("127.0.0.1", "NUDGE_COLLECTOR_HOST", "HTTP collector bind address")
    collector_port: int = _setting(8088, "NUDGE_COLLECTOR_PORT", "HTTP collector port")
    collector_api_key: str = _setting(
        "", "NUDGE_COLLECTOR_API_KEY", "API key clients send as X-Api-Key (empty: no auth)", secret=True
    )
    collector_max_body_bytes: int = _setting(1024 * 1024, "NUDGE_COLLECTOR_MAX_BODY_BYTES", "largest request body")
    collector_max_batch: int = _setting(500, "NUDGE_COLLECTOR_MAX_BATCH", "most events in one request")
    collector_idle_timeout_s: float = _setting(
        15.0,
        "NUDGE_COLLECTOR_IDLE_TIMEOUT_S",
        "a connection is closed when a request's headers are not complete this long after it opened or after the last answer",
    )
    collector_body_timeout_s: float = _setting(
        15.0, "NUDGE_COLLECTOR_BODY_TIMEOUT_S", "longest time to receive a request's body once its headers arrived (408)"
    )
    collector_max_in_flight: int = _setting(
        512, "NUDGE_COLLECTOR_MAX_IN_FLIGHT", "requests handled at once; beyond it 503 with Retry-After"
    )

    # --- stream worker -----------------------------------------------------
    app_id: str = _setting("nudge", "NUDGE_APP_ID", "Faust app id: consumer group and prefix of internal topics")
    store: str = _setting("memory://", "NUDGE_STORE", "table store: memory:// (changelog recovery) or rocksdb://")
    worker_metrics_port: int = _setting(6066, "NUDGE_WORKER_METRICS_PORT", "worker's Prometheus /metrics port")
    gc_full_every_s: float = _setting(
        600.0, "NUDGE_GC_FULL_EVERY_S", "seconds between full garbage collections (streams/pauses.py); 0: never freeze"
    )
    batch_max: int = _setting(5000, "NUDGE_BATCH_MAX", "most events folded per batch (one Redis pipeline each)")
    batch_within_s: float = _setting(
        0.0,
        "NUDGE_BATCH_WITHIN_S",
        "longest wait for more events once a batch has one, seconds (0: take what is queued; batches grow with load)",
    )
    changelog_flush_s: float = _setting(
        0.2,
        "NUDGE_CHANGELOG_FLUSH_S",
        "changelog written (and offsets acknowledged) at most this long after Redis; one entry per user per flush",
    )
    grace_ms: int = _setting(
        3_600_000, "NUDGE_GRACE_MS", "out-of-order events within this of the user's latest still land in their windows"
    )
    dedup_horizon_ms: int = _setting(
        7 * 86_400_000,
        "NUDGE_DEDUP_HORIZON_MS",
        "event ids are remembered this long (event time); older events are rejected",
    )
    dedup_max_ids: int = _setting(4096, "NUDGE_DEDUP_MAX_IDS", "most event ids remembered per user")

    # --- Redis state -------------------------------------------------------
    user_key_prefix: str = _setting("user:", "NUDGE_USER_KEY_PREFIX", "prefix of the per-user hash")
    changes_stream: str = _setting(
        "nudge:changes",
        "NUDGE_CHANGES_STREAM",
        "prefix of the Redis streams of user ids whose state changed: <prefix>:{0}, <prefix>:{1}, ...",
    )
    changes_shards: int = _setting(
        0,
        "NUDGE_CHANGES_SHARDS",
        "changes streams; a user always in shard crc32(user_id) % shards (0: 1 on one Redis, 16 on a cluster)",
    )
    changes_maxlen: int = _setting(
        1_000_000, "NUDGE_CHANGES_MAXLEN", "approximate cap of each changes stream (0: no changes streams)"
    )
    state_ttl_s: int = _setting(90 * 86_400, "NUDGE_STATE_TTL_S", "TTL of a user's hash after its last write, seconds")

    def __post_init__(self) -> None:
        if not 1 <= self.kafka_brokers <= 9:
            raise ConfigError(f"NUDGE_KAFKA_BROKERS={self.kafka_brokers}: the local stack runs 1..9 brokers")
        if not 3 <= self.redis_cluster_nodes <= 9:
            raise ConfigError(f"NUDGE_REDIS_CLUSTER_NODES={self.redis_cluster_nodes}: a Redis Cluster has 3..9 masters")
        # Derived defaults: the connection strings follow the local ports, the
        # replication the local broker count (the stack is "known" when the
        # bootstrap servers are its own brokers).
        local_bootstrap = ",".join(f"127.0.0.1:{port}" for port in self.kafka_ports)
        local = self.kafka_bootstrap in ("", local_bootstrap)
        if not self.kafka_bootstrap:
            object.__setattr__(self, "kafka_bootstrap", local_bootstrap)
        if not self.redis_url:
            object.__setattr__(self, "redis_url", f"redis://127.0.0.1:{self.redis_port}/0")
        if self.changes_shards == 0:
            object.__setattr__(self, "changes_shards", 16 if self.redis_cluster else 1)
        if not 0.0 <= self.changelog_flush_s <= 60.0:
            raise ConfigError(f"NUDGE_CHANGELOG_FLUSH_S={self.changelog_flush_s}: 0..60 seconds")
        if not 1 <= self.changes_shards <= 1024:
            raise ConfigError(f"NUDGE_CHANGES_SHARDS={self.changes_shards}: 1..1024 changes streams")
        if self.replication == 0:
            object.__setattr__(self, "replication", min(3, self.kafka_brokers))
        if self.min_insync_replicas == 0:
            object.__setattr__(self, "min_insync_replicas", 2 if self.replication >= 3 else 1)
        for name in ("kafka_port", "kafka_controller_port", "redis_port", "collector_port"):
            port = getattr(self, name)
            if not 0 < port < 65536:
                raise ConfigError(f"{self._env(name)}={port}: a port is 1..65535")
        self._check_port_ranges()
        if self.partitions < 1 or self.replication < 1:
            raise ConfigError("NUDGE_PARTITIONS and NUDGE_REPLICATION must be at least 1")
        if not 1 <= self.min_insync_replicas <= self.replication:
            raise ConfigError(
                f"NUDGE_MIN_INSYNC_REPLICAS={self.min_insync_replicas}: must be 1..NUDGE_REPLICATION ({self.replication})"
            )
        if local and self.replication > self.kafka_brokers:
            raise ConfigError(
                f"NUDGE_REPLICATION={self.replication} exceeds NUDGE_KAFKA_BROKERS={self.kafka_brokers} local brokers"
            )

    def _check_port_ranges(self) -> None:
        """The local stack's port ranges must not overlap (nor run past 65535)."""
        ranges = [
            ("NUDGE_KAFKA_PORT", "broker client ports", self.kafka_ports),
            ("NUDGE_KAFKA_CONTROLLER_PORT", "controller ports", self.kafka_controller_ports),
            ("NUDGE_REDIS_PORT", "Redis ports", self.redis_ports),
        ]
        if self.redis_cluster:
            # Redis Cluster's bus listens on each node's port + 10000.
            ranges.append(("NUDGE_REDIS_PORT", "Redis Cluster bus ports", tuple(p + 10_000 for p in self.redis_ports)))
        for env, what, ports in ranges:
            if ports[-1] > 65535:
                raise ConfigError(f"{env}: {what} {ports[0]}..{ports[-1]} run past 65535")
        for i, (env_a, what_a, a) in enumerate(ranges):
            for env_b, what_b, b in ranges[i + 1 :]:
                if a[0] <= b[-1] and b[0] <= a[-1]:
                    raise ConfigError(f"{env_a} and {env_b}: {what_a} {a[0]}..{a[-1]} overlap {what_b} {b[0]}..{b[-1]}")

    @property
    def kafka_ports(self) -> tuple[int, ...]:
        """Client ports of the local brokers, node 1 first."""
        return tuple(range(self.kafka_port, self.kafka_port + self.kafka_brokers))

    @property
    def kafka_controller_ports(self) -> tuple[int, ...]:
        """KRaft controller ports of the local nodes, node 1 first."""
        return tuple(range(self.kafka_controller_port, self.kafka_controller_port + self.kafka_brokers))

    @property
    def redis_ports(self) -> tuple[int, ...]:
        """Ports of the local Redis: one, or one per cluster node."""
        count = self.redis_cluster_nodes if self.redis_cluster else 1
        return tuple(range(self.redis_port, self.redis_port + count))

    @property
    def input_topics(self) -> tuple[str, str, str]:
        return (self.topic_clicks, self.topic_purchases, self.topic_app_events)

    @property
    def all_topics(self) -> tuple[str, ...]:
        return (*self.input_topics, self.topic_dlq, self.topic_rekeyed)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from env vars (NUDGE_*), then apply keyword overrides."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = environ.get(f.metadata["env"])
            if raw is not None and raw != "":
                values[f.name] = _parse(f, raw)
        values.update(overrides)
        return cls(**values)

    @classmethod
    def declarations(cls) -> Iterator[Setting]:
        for f in dataclasses.fields(cls):
            yield Setting(f.name, f.metadata["env"], f.metadata["help"], f.default, f.metadata["secret"])

    @classmethod
    def _env(cls, name: str) -> str:
        return str(next(f.metadata["env"] for f in dataclasses.fields(cls) if f.name == name))

    def to_env(self) -> dict[str, str]:
        """These settings as NUDGE_* env vars, for a child process."""
        return {f.metadata["env"]: str(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def redacted(self) -> dict[str, str]:
        """Current values for display, secrets masked."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.metadata["env"]] = "***" if f.metadata["secret"] and value else str(value)
        return out


def _parse(f: dataclasses.Field[Any], raw: str) -> Any:
    kind = (
        f.type
        if isinstance(f.type, type)
        else {"int": int, "float": float, "str": str, "Path": Path, "bool": bool}[str(f.type)]
    )
    try:
        if kind is bool:
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("1", "true", "yes")
        return kind(raw)
    except ValueError:
        raise ConfigError(f"{f.metadata['env']}={raw!r} is not a valid {kind.__name__}") from None
