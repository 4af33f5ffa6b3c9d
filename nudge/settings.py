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
    """All of nudge's settings. Names below are defaults (DESIGN.md)."""

    # --- local stack -------------------------------------------------------
    data_dir: Path = _setting(Path(".nudge"), "NUDGE_DATA_DIR", "where the local stack keeps data, logs and pid files")
    kafka_port: int = _setting(9092, "NUDGE_KAFKA_PORT", "local broker's client port")
    kafka_controller_port: int = _setting(9093, "NUDGE_KAFKA_CONTROLLER_PORT", "local broker's KRaft controller port")
    kafka_heap: str = _setting("512m", "NUDGE_KAFKA_HEAP", "JVM heap of the local broker (-Xmx/-Xms)")
    redis_port: int = _setting(6379, "NUDGE_REDIS_PORT", "local Redis port")

    # --- connections -------------------------------------------------------
    kafka_bootstrap: str = _setting(
        "", "NUDGE_KAFKA_BOOTSTRAP", "Kafka bootstrap servers (default 127.0.0.1:<kafka_port>)"
    )
    redis_url: str = _setting("", "NUDGE_REDIS_URL", "Redis URL (default redis://127.0.0.1:<redis_port>/0)")

    # --- topics ------------------------------------------------------------
    topic_clicks: str = _setting("clicks", "NUDGE_TOPIC_CLICKS", "input topic of click events")
    topic_purchases: str = _setting("purchases", "NUDGE_TOPIC_PURCHASES", "input topic of purchase events")
    topic_app_events: str = _setting("app-events", "NUDGE_TOPIC_APP_EVENTS", "input topic of app events")
    topic_dlq: str = _setting("dlq", "NUDGE_TOPIC_DLQ", "dead-letter topic: bad input with its reason")
    topic_rekeyed: str = _setting("nudge-rekeyed", "NUDGE_TOPIC_REKEYED", "internal topic: events re-keyed by user_id")
    partitions: int = _setting(6, "NUDGE_PARTITIONS", "partition count of every topic nudge creates")
    replication: int = _setting(1, "NUDGE_REPLICATION", "replication factor of every topic nudge creates")
    max_message_bytes: int = _setting(
        4 * 1024 * 1024,
        "NUDGE_MAX_MESSAGE_BYTES",
        "largest Kafka message accepted (so oversized input still reaches the DLQ)",
    )

    # --- events ------------------------------------------------------------
    max_event_bytes: int = _setting(64 * 1024, "NUDGE_MAX_EVENT_BYTES", "larger events are rejected (DESIGN: 64 KiB)")
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

    # --- stream worker -----------------------------------------------------
    app_id: str = _setting("nudge", "NUDGE_APP_ID", "Faust app id: consumer group and prefix of internal topics")
    store: str = _setting("memory://", "NUDGE_STORE", "table store: memory:// (changelog recovery) or rocksdb://")
    worker_metrics_port: int = _setting(6066, "NUDGE_WORKER_METRICS_PORT", "worker's Prometheus /metrics port")
    gc_full_every_s: float = _setting(
        600.0, "NUDGE_GC_FULL_EVERY_S", "seconds between full garbage collections (streams/pauses.py); 0: never freeze"
    )
    batch_max: int = _setting(5000, "NUDGE_BATCH_MAX", "most events folded per batch (one Redis pipeline each)")
    batch_within_s: float = _setting(0.02, "NUDGE_BATCH_WITHIN_S", "longest wait to fill a batch, seconds")
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
        "nudge:changes", "NUDGE_CHANGES_STREAM", "Redis stream of user ids whose state changed"
    )
    changes_maxlen: int = _setting(1_000_000, "NUDGE_CHANGES_MAXLEN", "approximate cap of the changes stream")
    state_ttl_s: int = _setting(90 * 86_400, "NUDGE_STATE_TTL_S", "TTL of a user's hash after its last write, seconds")

    def __post_init__(self) -> None:
        # Derived defaults: the connection strings follow the local ports.
        if not self.kafka_bootstrap:
            object.__setattr__(self, "kafka_bootstrap", f"127.0.0.1:{self.kafka_port}")
        if not self.redis_url:
            object.__setattr__(self, "redis_url", f"redis://127.0.0.1:{self.redis_port}/0")
        for name in ("kafka_port", "kafka_controller_port", "redis_port", "collector_port"):
            port = getattr(self, name)
            if not 0 < port < 65536:
                raise ConfigError(f"{self._env(name)}={port}: a port is 1..65535")
        if self.partitions < 1 or self.replication < 1:
            raise ConfigError("NUDGE_PARTITIONS and NUDGE_REPLICATION must be at least 1")

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
