"""Typed settings, one declaration per setting, each naming its env var.

Every process builds one `Settings` at start (`Settings.from_env()`) and passes
it down; nothing else reads `os.environ`. `nudge settings` and every command's
`--help` list these declarations, and deploy/env.example is generated from
them (a test keeps it in sync).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from nudge.errors import ConfigError
from nudge.logs import display_url
from nudge.text import printable

__all__ = ["Rule", "Setting", "Settings", "topic_name_problem"]

_DAY_MS: Final = 86_400_000
_MIB: Final = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Rule:
    """What a setting accepts: `problem(value)` says why a value is refused (None: accepted),
    `allowed` says in a few words what is accepted (shown by `--help`, `nudge settings`, errors)."""

    allowed: str
    problem: Callable[[Any], str | None]
    show: Callable[[Any], str] = repr  # how an error message shows a refused value


def between(low: float, high: float, unit: str = "") -> Rule:
    """A number in low..high (both included); NaN and infinities are refused."""

    def problem(value: Any) -> str | None:
        if isinstance(value, float) and not math.isfinite(value):
            return "is not a finite number"
        return None if low <= value <= high else "is out of range"

    def text(x: float) -> str:
        return str(x) if isinstance(x, int) else f"{x:g}"

    return Rule(f"{text(low)}..{text(high)}{unit}", problem, show=str)


def _text_problem(value: str) -> str | None:
    if printable(value) != value:
        return "holds a control character or undecodable byte"
    return None


def matching(pattern: str, allowed: str, *, max_len: int, min_len: int = 1) -> Rule:
    """A string that fully matches `pattern`, min_len..max_len characters."""
    compiled = re.compile(pattern)

    def problem(value: str) -> str | None:
        if not min_len <= len(value) <= max_len:
            return f"has {len(value)} characters, not {min_len}..{max_len}"
        return None if compiled.fullmatch(value) else "is not allowed"

    return Rule(allowed, problem)


def one_of(*choices: str) -> Rule:
    return Rule(" or ".join(choices), lambda value: None if value in choices else "is not allowed")


def topic_name_problem(value: str) -> str | None:
    """Why Kafka would refuse `value` as a topic name (a phrase after the name), or None.

    Kafka's rule: 1 to 249 characters from a-z A-Z 0-9 . _ -, and not "." or "..".

    >>> topic_name_problem("clicks-v2.test_1") is None
    True
    >>> topic_name_problem("my clicks")
    "holds characters Kafka does not allow (' '): use only a-z A-Z 0-9 . _ -"
    """
    if not value:
        return "is empty"
    if value in (".", ".."):
        return "is a name Kafka reserves"
    if len(value) > 249:
        return f"has {len(value)} characters, not 1..249"
    bad = "".join(dict.fromkeys(c for c in value if not re.fullmatch(r"[a-zA-Z0-9._-]", c)))
    if bad:
        return f"holds characters Kafka does not allow ({bad[:10]!r}): use only a-z A-Z 0-9 . _ -"
    return None


# Kafka's own rule for topic names (and so for the app id, a prefix of internal topics).
TOPIC = Rule("a Kafka topic name: 1..249 of a-z A-Z 0-9 . _ - (not . or ..)", topic_name_problem)
APP_ID = Rule(
    "1..100 of a-z A-Z 0-9 . _ - (prefix of Kafka topics; not . or ..)",
    lambda value: "has more than 100 characters" if len(value) > 100 else topic_name_problem(value),
)
# Redis keys may hold anything, but braces would change Cluster hash slots and spaces break every CLI.
KEY_PREFIX = matching(r"[!-z|~]+", "1..64 visible ASCII characters, no spaces or braces", max_len=64)
HOST = matching(r"[A-Za-z0-9.:_-]+", "a host name or IP address", max_len=253)
HEAP = matching(r"[1-9][0-9]*[kKmMgG]?", "a JVM size such as 512m or 2g", max_len=12)
API_KEY = Rule(
    "empty, or up to 256 visible ASCII characters (sent as an HTTP header)",
    lambda value: None if re.fullmatch(r"[!-~]{0,256}", value) else "is not allowed",
)
_HOST_PORT = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(?P<port>[0-9]{1,5})")


def _bootstrap_problem(value: str) -> str | None:
    if value == "":
        return None
    for server in value.split(","):
        m = _HOST_PORT.fullmatch(server.strip())
        if m is None:
            return f"has {server.strip()!r}, not host:port"
        if not 1 <= int(m["port"]) <= 65535:
            return f"has port {m['port']}, not 1..65535"
    return None


BOOTSTRAP = Rule("host:port[,host:port...]", _bootstrap_problem)
REDIS_SCHEMES: Final = ("redis", "rediss", "unix", "memory")


def _redis_url_problem(value: str) -> str | None:
    if value == "":
        return None
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        return f"does not parse ({exc})"
    if parts.scheme not in REDIS_SCHEMES:
        return f"has scheme {parts.scheme!r}" if parts.scheme else "has no scheme"
    if parts.scheme in ("redis", "rediss") and not parts.hostname:
        return "has no host"
    if parts.scheme == "unix" and not parts.path:
        return "has no socket path"
    return None


REDIS_URL = Rule(
    "redis://[:password@]host:port/db, rediss://..., unix:///path or memory://",
    _redis_url_problem,
    show=lambda value: repr(display_url(value)),
)
MODEL_KEY = Rule(
    "empty, or 32..1024 visible ASCII characters",
    lambda value: None if value == "" or re.fullmatch(r"[!-~]{32,1024}", value) else "is not allowed",
)
PATH = Rule("a path without control characters", lambda value: _text_problem(str(value)), show=lambda v: repr(str(v)))
BOOL = Rule("true or false (or 1/0, yes/no)", lambda value: None)
URL = matching(r"https?://[!-~]+", "an http:// or https:// URL", max_len=2048)
OPTIONAL_URL = matching(r"(https?://[!-~]+)?", "empty, or an http:// or https:// URL", max_len=2048, min_len=0)
OPTIONAL_ID = matching(r"[A-Za-z0-9+._:-]*", "empty, or letters, digits and + . _ : -", max_len=256, min_len=0)
OPTIONAL_SECRET = matching(r"[!-~]*", "empty, or visible ASCII characters", max_len=4096, min_len=0)
OPTIONAL_NAME = matching(r"[!-~]*", "empty, or up to 256 visible ASCII characters", max_len=256, min_len=0)
_TYPES: Final[dict[str, type]] = {"int": int, "float": float, "str": str, "Path": Path, "bool": bool}
_TYPE_NAMES: Final = {int: "an integer", float: "a number", str: "text", Path: "a path", bool: "true or false"}


def _check(f: dataclasses.Field[Any], value: Any) -> None:
    """Raise ConfigError, one line naming the env var, unless `value` is of the field's type and obeys its rule."""
    env, rule = f.metadata["env"], f.metadata["rule"]
    kind = _TYPES[str(f.type)]
    if kind is float:
        typed = isinstance(value, int | float) and not isinstance(value, bool)
    else:
        typed = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
    if not typed:
        raise ConfigError(f"{env}: expected {_TYPE_NAMES[kind]} ({rule.allowed}), got {type(value).__name__}")
    problem = _text_problem(value) if kind is str else None
    problem = problem or rule.problem(value)
    if problem:
        shown = "***" if f.metadata["secret"] else rule.show(value)
        raise ConfigError(f"{env}={shown} {problem}: expected {rule.allowed}")


def _check_readable(env: str, path: str) -> None:
    """ConfigError, one line naming `env`, unless `path` is a file this process can read."""
    if Path(path).exists() and not Path(path).is_file():  # before open(): a FIFO would block it
        raise ConfigError(f"{env}={printable(path)}: not a file")
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise ConfigError(f"{env}={printable(path)}: cannot read it ({exc.strerror or exc})") from None


def _read_secret_file(env: str, path: str) -> str:
    """A secret given as `<env>_FILE`: the file's text without its trailing line break."""
    file_env = f"{env}_FILE"
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{file_env}={printable(path)}: cannot read it ({exc.strerror or exc})") from None
    try:
        return raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise ConfigError(f"{file_env}={printable(path)}: not UTF-8 text") from None


def _setting(default: Any, env: str, help: str, rule: Rule, secret: bool = False) -> Any:
    return field(default=default, metadata={"env": env, "help": help, "rule": rule, "secret": secret})


@dataclass(frozen=True, slots=True)
class Setting:
    """One declared setting, as shown by `--help` and `nudge settings`."""

    name: str
    env: str
    help: str
    default: Any
    secret: bool
    allowed: str


@dataclass(frozen=True, slots=True)
class Settings:
    """All of nudge's settings. Every name, port and threshold is a setting (docs/contracts.md lists the contracts they configure).

    Each declaration carries the `Rule` of the values it accepts; `__post_init__`
    checks every one, so a bad env var fails at start, in one line naming it."""

    # --- local stack -------------------------------------------------------
    data_dir: Path = _setting(
        Path(".nudge"), "NUDGE_DATA_DIR", "where the local stack keeps data, logs and pid files", PATH
    )
    kafka_brokers: int = _setting(
        1, "NUDGE_KAFKA_BROKERS", "KRaft nodes (broker+controller) the local stack runs", between(1, 9)
    )
    kafka_port: int = _setting(
        9092, "NUDGE_KAFKA_PORT", "local broker's client port (node i: kafka_port+i-1)", between(1, 65535)
    )
    kafka_controller_port: int = _setting(
        9192, "NUDGE_KAFKA_CONTROLLER_PORT", "local broker's KRaft controller port (node i: +i-1)", between(1, 65535)
    )
    kafka_heap: str = _setting("512m", "NUDGE_KAFKA_HEAP", "JVM heap of each local broker (-Xmx/-Xms)", HEAP)
    redis_port: int = _setting(
        6379, "NUDGE_REDIS_PORT", "local Redis port (cluster node i: redis_port+i-1)", between(1, 65535)
    )
    redis_cluster: bool = _setting(
        False,
        "NUDGE_REDIS_CLUSTER",
        "Redis Cluster: the stack runs a cluster, clients use the cluster client",
        BOOL,
    )
    redis_cluster_nodes: int = _setting(
        3, "NUDGE_REDIS_CLUSTER_NODES", "masters of the local Redis Cluster", between(3, 9)
    )

    # --- connections -------------------------------------------------------
    kafka_bootstrap: str = _setting(
        "",
        "NUDGE_KAFKA_BOOTSTRAP",
        "Kafka bootstrap servers (default: every local broker, 127.0.0.1:<kafka_port>,...)",
        BOOTSTRAP,
    )
    redis_url: str = _setting(
        "", "NUDGE_REDIS_URL", "Redis URL, any node of a cluster (default redis://127.0.0.1:<redis_port>/0)", REDIS_URL
    )

    # --- security (README "Secured connections"; every client gets these through
    # nudge/kafka_security.py or nudge/redis_client.py) ------------------------
    kafka_security_protocol: str = _setting(
        "PLAINTEXT",
        "NUDGE_KAFKA_SECURITY_PROTOCOL",
        "how every Kafka client connects: PLAINTEXT, SSL (TLS), SASL_PLAINTEXT or SASL_SSL (SASL over TLS)",
        one_of("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
    )
    kafka_sasl_mechanism: str = _setting(
        "SCRAM-SHA-512",
        "NUDGE_KAFKA_SASL_MECHANISM",
        "SASL mechanism of a SASL_* protocol",
        one_of("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"),
    )
    kafka_sasl_username: str = _setting(
        "", "NUDGE_KAFKA_SASL_USERNAME", "SASL user name (a SASL_* protocol needs it)", OPTIONAL_NAME
    )
    kafka_sasl_password: str = _setting(
        "", "NUDGE_KAFKA_SASL_PASSWORD", "SASL password (a SASL_* protocol needs it)", OPTIONAL_SECRET, secret=True
    )
    kafka_ssl_cafile: str = _setting(
        "",
        "NUDGE_KAFKA_SSL_CAFILE",
        "PEM file of the CA(s) that signed the brokers' certificates, for SSL/SASL_SSL (empty: the system's CAs)",
        PATH,
    )
    redis_username: str = _setting(
        "", "NUDGE_REDIS_USERNAME", "Redis ACL user (empty: the default user)", OPTIONAL_NAME
    )
    redis_password: str = _setting(
        "",
        "NUDGE_REDIS_PASSWORD",
        "Redis password (AUTH), kept out of NUDGE_REDIS_URL (empty: none, or the URL's)",
        OPTIONAL_SECRET,
        secret=True,
    )
    redis_ssl_ca_path: str = _setting(
        "",
        "NUDGE_REDIS_SSL_CA_PATH",
        "PEM file of the CA(s) that signed Redis's certificate, for a rediss:// URL (empty: the system's CAs)",
        PATH,
    )
    stack_secure: bool = _setting(
        False,
        "NUDGE_STACK_SECURE",
        "`nudge stack up` also serves Kafka SASL_SSL and Redis TLS with generated passwords and a local CA (--secure)",
        BOOL,
    )
    kafka_secure_port: int = _setting(
        9292,
        "NUDGE_KAFKA_SECURE_PORT",
        "local broker's SASL_SSL port with NUDGE_STACK_SECURE (node i: kafka_secure_port+i-1)",
        between(1, 65535),
    )
    redis_tls_port: int = _setting(
        6380, "NUDGE_REDIS_TLS_PORT", "local Redis's TLS port with NUDGE_STACK_SECURE", between(1, 65535)
    )

    # --- topics ------------------------------------------------------------
    topic_clicks: str = _setting("clicks", "NUDGE_TOPIC_CLICKS", "input topic of click events", TOPIC)
    topic_purchases: str = _setting("purchases", "NUDGE_TOPIC_PURCHASES", "input topic of purchase events", TOPIC)
    topic_app_events: str = _setting("app-events", "NUDGE_TOPIC_APP_EVENTS", "input topic of app events", TOPIC)
    topic_dlq: str = _setting("dlq", "NUDGE_TOPIC_DLQ", "dead-letter topic: bad input with its reason", TOPIC)
    topic_rekeyed: str = _setting(
        "nudge-rekeyed", "NUDGE_TOPIC_REKEYED", "internal topic: events re-keyed by user_id", TOPIC
    )
    partitions: int = _setting(6, "NUDGE_PARTITIONS", "partition count of every topic nudge creates", between(1, 1024))
    replication: int = _setting(
        0,
        "NUDGE_REPLICATION",
        "replication factor of every topic nudge creates (0: min(3, NUDGE_KAFKA_BROKERS))",
        between(0, 16),
    )
    min_insync_replicas: int = _setting(
        0,
        "NUDGE_MIN_INSYNC_REPLICAS",
        "min.insync.replicas of topics and brokers (0: 2 if replication >= 3, else 1)",
        between(0, 16),
    )
    max_message_bytes: int = _setting(
        4 * _MIB,
        "NUDGE_MAX_MESSAGE_BYTES",
        "largest Kafka message accepted (so oversized input still reaches the DLQ)",
        between(64 * 1024, 256 * _MIB, " bytes"),
    )

    # --- events ------------------------------------------------------------
    max_event_bytes: int = _setting(
        64 * 1024,
        "NUDGE_MAX_EVENT_BYTES",
        "larger events are rejected (the event contract: 64 KiB)",
        between(256, 16 * _MIB, " bytes"),
    )
    max_future_ms: int = _setting(
        7 * _DAY_MS,
        "NUDGE_MAX_FUTURE_MS",
        "events further in the future than this are rejected",
        between(0, 365 * _DAY_MS, " ms (365 days)"),
    )

    # --- collector ---------------------------------------------------------
    collector_host: str = _setting("127.0.0.1", "NUDGE_COLLECTOR_HOST", "HTTP collector bind address", HOST)
    collector_port: int = _setting(8088, "NUDGE_COLLECTOR_PORT", "HTTP collector port", between(1, 65535))
    collector_api_key: str = _setting(
        "", "NUDGE_COLLECTOR_API_KEY", "API key clients send as X-Api-Key (empty: no auth)", API_KEY, secret=True
    )
    collector_max_body_bytes: int = _setting(
        _MIB, "NUDGE_COLLECTOR_MAX_BODY_BYTES", "largest request body", between(256, 256 * _MIB, " bytes")
    )
    collector_max_batch: int = _setting(
        500, "NUDGE_COLLECTOR_MAX_BATCH", "most events in one request", between(1, 100_000)
    )
    collector_idle_timeout_s: float = _setting(
        15.0,
        "NUDGE_COLLECTOR_IDLE_TIMEOUT_S",
        "a connection is closed when a request's headers are not complete this long after it opened or after the last answer",
        between(0.01, 3600.0, " s"),
    )
    collector_body_timeout_s: float = _setting(
        15.0,
        "NUDGE_COLLECTOR_BODY_TIMEOUT_S",
        "longest time to receive a request's body once its headers arrived (408)",
        between(0.01, 3600.0, " s"),
    )
    collector_max_in_flight: int = _setting(
        256,
        "NUDGE_COLLECTOR_MAX_IN_FLIGHT",
        "requests handled at once; beyond it 503 with Retry-After",
        between(1, 100_000),
    )

    # --- stream worker -----------------------------------------------------
    app_id: str = _setting(
        "nudge", "NUDGE_APP_ID", "Faust app id: consumer group and prefix of internal topics", APP_ID
    )
    store: str = _setting(
        "memory://",
        "NUDGE_STORE",
        "table store: memory:// (changelog recovery) or rocksdb:// (local state kept)",
        one_of("memory://", "rocksdb://"),
    )
    worker_metrics_port: int = _setting(
        6066, "NUDGE_WORKER_METRICS_PORT", "worker's Prometheus /metrics port", between(1, 65535)
    )
    gc_full_every_s: float = _setting(
        600.0,
        "NUDGE_GC_FULL_EVERY_S",
        "seconds between full garbage collections (streams/pauses.py); 0: never freeze",
        between(0.0, 86_400.0, " s"),
    )
    batch_max: int = _setting(
        5000, "NUDGE_BATCH_MAX", "most events folded per batch (one Redis pipeline each)", between(1, 1_000_000)
    )
    batch_within_s: float = _setting(
        0.0,
        "NUDGE_BATCH_WITHIN_S",
        "longest wait for more events once a batch has one, seconds (0: take what is queued; batches grow with load)",
        between(0.0, 60.0, " s"),
    )
    changelog_flush_s: float = _setting(
        0.2,
        "NUDGE_CHANGELOG_FLUSH_S",
        "changelog written (and offsets acknowledged) at most this long after Redis; one entry per user per flush",
        between(0.0, 60.0, " s"),
    )
    grace_ms: int = _setting(
        3_600_000,
        "NUDGE_GRACE_MS",
        "out-of-order events within this of the user's latest still land in their windows",
        between(0, 30 * _DAY_MS, " ms (30 days)"),
    )
    dedup_horizon_ms: int = _setting(
        7 * _DAY_MS,
        "NUDGE_DEDUP_HORIZON_MS",
        "event ids are remembered this long (event time); older events are rejected",
        between(60_000, 365 * _DAY_MS, " ms (1 min..365 days)"),
    )
    dedup_max_ids: int = _setting(
        4096, "NUDGE_DEDUP_MAX_IDS", "most event ids remembered per user", between(1, 1_000_000)
    )

    # --- Redis state -------------------------------------------------------
    user_key_prefix: str = _setting("user:", "NUDGE_USER_KEY_PREFIX", "prefix of the per-user hash", KEY_PREFIX)
    changes_stream: str = _setting(
        "nudge:changes",
        "NUDGE_CHANGES_STREAM",
        "prefix of the Redis streams of user ids whose state changed: <prefix>:{0}, <prefix>:{1}, ...",
        KEY_PREFIX,
    )
    changes_shards: int = _setting(
        0,
        "NUDGE_CHANGES_SHARDS",
        "changes streams; a user always in shard crc32(user_id) % shards (0: 1 on one Redis, 16 on a cluster)",
        between(0, 1024),
    )
    changes_maxlen: int = _setting(
        1_000_000,
        "NUDGE_CHANGES_MAXLEN",
        "approximate cap of each changes stream (0: no changes streams)",
        between(0, 1_000_000_000),
    )
    state_ttl_s: int = _setting(
        90 * 86_400,
        "NUDGE_STATE_TTL_S",
        "TTL of a user's hash after its last write, seconds",
        between(60, 3650 * 86_400, " s (1 min..10 years)"),
    )

    # --- models (docs/contracts.md "Models") -------------------------------
    topic_training_examples: str = _setting(
        "training-examples",
        "NUDGE_TOPIC_TRAINING_EXAMPLES",
        "labelled examples (delayed labels resolved in event time), worker -> trainer",
        TOPIC,
    )
    topic_bandit_rewards: str = _setting(
        "bandit-rewards", "NUDGE_TOPIC_BANDIT_REWARDS", "offer exposures with their reward, worker -> trainer", TOPIC
    )
    topic_model_snapshots: str = _setting(
        "model-snapshots",
        "NUDGE_TOPIC_MODEL_SNAPSHOTS",
        "signed model snapshots, trainer -> every worker (compacted, one partition)",
        TOPIC,
    )
    model_key: str = _setting(
        "",
        "NUDGE_MODEL_KEY",
        "HMAC key signing model snapshots, 32+ characters (empty: no models are trained or loaded)",
        MODEL_KEY,
        secret=True,
    )
    snapshot_every_examples: int = _setting(
        5_000,
        "NUDGE_SNAPSHOT_EVERY_EXAMPLES",
        "the trainer publishes a snapshot after this many new examples and rewards...",
        between(1, 10_000_000),
    )
    snapshot_every_s: float = _setting(
        30.0,
        "NUDGE_SNAPSHOT_EVERY_S",
        "...or this many seconds after the last one, whichever comes first (if anything was learned)",
        between(0.1, 86_400, " s"),
    )
    churn_horizon_ms: int = _setting(
        14 * 86_400_000,
        "NUDGE_CHURN_HORIZON_MS",
        "a user with no event for this long (event time) after an observation has churned",
        between(3_600_000, 365 * 86_400_000, " ms"),
    )
    attribution_window_ms: int = _setting(
        72 * 3_600_000,
        "NUDGE_ATTRIBUTION_WINDOW_MS",
        "a purchase this long (event time) after an offer's exposure is its reward",
        between(60_000, 90 * 86_400_000, " ms"),
    )
    tiers_path: Path = _setting(
        Path("deploy/config/tiers.yaml"), "NUDGE_TIERS_PATH", "member tier thresholds (YAML)", PATH
    )
    offers_path: Path = _setting(
        Path("deploy/config/offers.yaml"), "NUDGE_OFFERS_PATH", "the offer catalog: the bandit's arms (YAML)", PATH
    )
    trainer_metrics_port: int = _setting(
        6068, "NUDGE_TRAINER_METRICS_PORT", "trainer's Prometheus /metrics port", between(1, 65535)
    )

    # --- triggers (triggers/) --------------------------------------------------
    rules_path: Path = _setting(
        Path("deploy/config/rules.yaml"), "NUDGE_RULES_PATH", "campaign rules and guardrail defaults (YAML)", PATH
    )
    stores_path: Path = _setting(
        Path("deploy/config/stores.yaml"), "NUDGE_STORES_PATH", "store locations for geofence rules (YAML)", PATH
    )
    topic_decisions: str = _setting(
        "decisions", "NUDGE_TOPIC_DECISIONS", "every trigger decision (sent, suppressed, delayed), the audit log", TOPIC
    )
    topic_notifications: str = _setting(
        "notifications", "NUDGE_TOPIC_NOTIFICATIONS", "the outbox: messages to send, triggers -> delivery", TOPIC
    )
    topic_notifications_dlq: str = _setting(
        "notifications-dlq",
        "NUDGE_TOPIC_NOTIFICATIONS_DLQ",
        "messages that finally failed to send, with the reason",
        TOPIC,
    )
    triggers_group: str = _setting(
        "nudge-triggers",
        "NUDGE_TRIGGERS_GROUP",
        "Redis consumer group of the trigger services on the changes streams",
        KEY_PREFIX,
    )
    trigger_max_state_age_s: float = _setting(
        3_600.0,
        "NUDGE_TRIGGER_MAX_STATE_AGE_S",
        "a trigger refuses a user's state written longer ago than this (wall clock), seconds",
        between(1, 30 * 86_400, " s"),
    )
    triggers_key_prefix: str = _setting(
        "nudge:",
        "NUDGE_TRIGGERS_KEY_PREFIX",
        "prefix of the trigger service's keys (guard, schedule, decision log)",
        KEY_PREFIX,
    )
    decisions_kept: int = _setting(
        50, "NUDGE_DECISIONS_KEPT", "decisions kept per user in Redis for `nudge why`", between(1, 10_000)
    )
    triggers_metrics_port: int = _setting(
        6069, "NUDGE_TRIGGERS_METRICS_PORT", "trigger service's Prometheus /metrics port", between(1, 65535)
    )

    # --- delivery (delivery/) --------------------------------------------------
    delivery_group: str = _setting(
        "nudge-delivery", "NUDGE_DELIVERY_GROUP", "Kafka consumer group of the delivery workers", APP_ID
    )
    delivery_metrics_port: int = _setting(
        6070, "NUDGE_DELIVERY_METRICS_PORT", "delivery worker's Prometheus /metrics port", between(1, 65535)
    )
    delivery_max_attempts: int = _setting(
        6,
        "NUDGE_DELIVERY_MAX_ATTEMPTS",
        "sends of one message before it goes to the dead-letter topic",
        between(1, 100),
    )
    delivery_backoff_s: float = _setting(
        0.5,
        "NUDGE_DELIVERY_BACKOFF_S",
        "first retry delay; doubles per attempt, with full jitter, seconds",
        between(0.001, 600, " s"),
    )
    delivery_backoff_max_s: float = _setting(
        30.0, "NUDGE_DELIVERY_BACKOFF_MAX_S", "longest retry delay, seconds", between(0.001, 3_600, " s")
    )
    fcm_url: str = _setting("https://fcm.googleapis.com", "NUDGE_FCM_URL", "FCM HTTP v1 base URL", URL)
    fcm_project_id: str = _setting("", "NUDGE_FCM_PROJECT_ID", "Firebase project id (empty: no push)", OPTIONAL_ID)
    fcm_credentials_path: str = _setting(
        "",
        "NUDGE_FCM_CREDENTIALS_PATH",
        "Google service-account JSON file (its token_uri is where tokens are asked for)",
        PATH,
    )
    fcm_rate_per_s: float = _setting(
        500.0, "NUDGE_FCM_RATE_PER_S", "FCM sends per second per delivery worker", between(0.1, 100_000)
    )
    twilio_url: str = _setting("https://api.twilio.com", "NUDGE_TWILIO_URL", "Twilio API base URL", URL)
    twilio_account_sid: str = _setting(
        "", "NUDGE_TWILIO_ACCOUNT_SID", "Twilio account SID (empty: no SMS)", OPTIONAL_ID
    )
    twilio_auth_token: str = _setting("", "NUDGE_TWILIO_AUTH_TOKEN", "Twilio auth token", OPTIONAL_SECRET, secret=True)
    twilio_from: str = _setting(
        "", "NUDGE_TWILIO_FROM", "sender phone number (E.164) or messaging service SID", OPTIONAL_ID
    )
    twilio_rate_per_s: float = _setting(
        10.0, "NUDGE_TWILIO_RATE_PER_S", "Twilio sends per second per delivery worker", between(0.1, 100_000)
    )
    webhook_url: str = _setting(
        "", "NUDGE_WEBHOOK_URL", "generic webhook for channel `webhook` (empty: none)", OPTIONAL_URL
    )
    webhook_secret: str = _setting(
        "", "NUDGE_WEBHOOK_SECRET", "HMAC-SHA256 key signing webhook bodies", OPTIONAL_SECRET, secret=True
    )
    webhook_rate_per_s: float = _setting(
        100.0, "NUDGE_WEBHOOK_RATE_PER_S", "webhook sends per second per delivery worker", between(0.1, 100_000)
    )
    mock_providers_port: int = _setting(
        8090, "NUDGE_MOCK_PROVIDERS_PORT", "port of `nudge mock-providers` (FCM, Twilio, webhook)", between(1, 65535)
    )
    delivery_http_timeout_s: float = _setting(
        5.0,
        "NUDGE_DELIVERY_HTTP_TIMEOUT_S",
        "longest wait for one provider request, seconds",
        between(0.1, 300, " s"),
    )
    delivery_claim_lease_s: float = _setting(
        60.0,
        "NUDGE_DELIVERY_CLAIM_LEASE_S",
        "a send-ledger claim older than this is a dead worker's (over 4x the HTTP timeout), seconds",
        between(0.5, 3_600, " s"),
    )

    # --- operations (ops/) -----------------------------------------------------
    report_metrics_port: int = _setting(
        6071,
        "NUDGE_REPORT_METRICS_PORT",
        "`nudge report --serve`: the campaign figures' Prometheus /metrics port",
        between(1, 65535),
    )
    prometheus_url: str = _setting(
        "http://127.0.0.1:9090",
        "NUDGE_PROMETHEUS_URL",
        "Prometheus's HTTP API, which `nudge dashboards render` queries",
        URL,
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check(f, getattr(self, f.name))
        # Derived defaults: the connection strings follow the local ports, the
        # replication the local broker count (the stack is "known" when the
        # bootstrap servers are its own brokers).
        local_bootstrap = ",".join(f"127.0.0.1:{port}" for port in self.kafka_ports)
        secure_bootstrap = ",".join(f"127.0.0.1:{port}" for port in self.kafka_secure_ports)
        local = self.kafka_bootstrap in ("", local_bootstrap, secure_bootstrap)
        if not self.kafka_bootstrap:
            object.__setattr__(self, "kafka_bootstrap", local_bootstrap)
        if not self.redis_url:
            object.__setattr__(self, "redis_url", f"redis://127.0.0.1:{self.redis_port}/0")
        if self.changes_shards == 0:
            object.__setattr__(self, "changes_shards", 16 if self.redis_cluster else 1)
        if self.replication == 0:
            object.__setattr__(self, "replication", min(3, self.kafka_brokers))
        if self.min_insync_replicas == 0:
            object.__setattr__(self, "min_insync_replicas", 2 if self.replication >= 3 else 1)
        self._check_security()
        self._check_port_ranges()
        if not 1 <= self.min_insync_replicas <= self.replication:
            raise ConfigError(
                f"NUDGE_MIN_INSYNC_REPLICAS={self.min_insync_replicas}: must be 1..NUDGE_REPLICATION ({self.replication})"
            )
        if local and self.replication > self.kafka_brokers:
            raise ConfigError(
                f"NUDGE_REPLICATION={self.replication} exceeds NUDGE_KAFKA_BROKERS={self.kafka_brokers} local brokers"
            )
        if self.max_event_bytes > self.max_message_bytes:
            raise ConfigError(
                f"NUDGE_MAX_EVENT_BYTES={self.max_event_bytes} exceeds NUDGE_MAX_MESSAGE_BYTES={self.max_message_bytes}: "
                "an event must fit in a Kafka message"
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
        if self.stack_secure:
            ranges.append(("NUDGE_KAFKA_SECURE_PORT", "broker SASL_SSL ports", self.kafka_secure_ports))
            ranges.append(("NUDGE_REDIS_TLS_PORT", "Redis TLS port", (self.redis_tls_port,)))
        for env, what, ports in ranges:
            if ports[-1] > 65535:
                raise ConfigError(f"{env}: {what} {ports[0]}..{ports[-1]} run past 65535")
        for i, (env_a, what_a, a) in enumerate(ranges):
            for env_b, what_b, b in ranges[i + 1 :]:
                if a[0] <= b[-1] and b[0] <= a[-1]:
                    raise ConfigError(f"{env_a} and {env_b}: {what_a} {a[0]}..{a[-1]} overlap {what_b} {b[0]}..{b[-1]}")

    def _check_security(self) -> None:
        """Security settings that only make sense together, each refused in one line (never showing a secret)."""
        protocol = f"NUDGE_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol}"
        if self.kafka_security_protocol.startswith("SASL_"):
            if not (self.kafka_sasl_username and self.kafka_sasl_password):
                raise ConfigError(
                    f"{protocol} needs NUDGE_KAFKA_SASL_USERNAME and NUDGE_KAFKA_SASL_PASSWORD "
                    "(or NUDGE_KAFKA_SASL_PASSWORD_FILE)"
                )
        elif self.kafka_sasl_username or self.kafka_sasl_password:
            raise ConfigError(f"{protocol} sends no SASL credentials: use SASL_SSL, or unset NUDGE_KAFKA_SASL_*")
        if self.kafka_ssl_cafile:
            if not self.kafka_security_protocol.endswith("SSL"):
                raise ConfigError(f"{protocol} does not use TLS: use SSL or SASL_SSL, or unset NUDGE_KAFKA_SSL_CAFILE")
            _check_readable("NUDGE_KAFKA_SSL_CAFILE", self.kafka_ssl_cafile)
        url = urlsplit(self.redis_url)
        if self.redis_password and (url.password or url.username):
            raise ConfigError(
                "NUDGE_REDIS_URL holds credentials and NUDGE_REDIS_PASSWORD is set: give them once "
                "(NUDGE_REDIS_USERNAME/NUDGE_REDIS_PASSWORD keep them out of the URL)"
            )
        if self.redis_username and not self.redis_password:
            raise ConfigError("NUDGE_REDIS_USERNAME needs NUDGE_REDIS_PASSWORD (or NUDGE_REDIS_PASSWORD_FILE)")
        if self.redis_ssl_ca_path:
            if url.scheme != "rediss":
                raise ConfigError(
                    f"NUDGE_REDIS_SSL_CA_PATH is set but NUDGE_REDIS_URL={display_url(self.redis_url)} is not "
                    "rediss:// (TLS)"
                )
            _check_readable("NUDGE_REDIS_SSL_CA_PATH", self.redis_ssl_ca_path)
        if self.stack_secure and self.redis_cluster:
            raise ConfigError("NUDGE_STACK_SECURE runs one Redis with TLS, not a Redis Cluster: unset one of them")

    @property
    def kafka_secure_ports(self) -> tuple[int, ...]:
        """SASL_SSL ports of the local brokers with NUDGE_STACK_SECURE, node 1 first."""
        return tuple(range(self.kafka_secure_port, self.kafka_secure_port + self.kafka_brokers))

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

    @property
    def model_topics(self) -> tuple[str, str, str]:
        """The models' topics: examples and rewards (worker -> trainer), snapshots (trainer -> workers)."""
        return (self.topic_training_examples, self.topic_bandit_rewards, self.topic_model_snapshots)

    @property
    def trigger_topics(self) -> tuple[str, str, str]:
        """The triggers' topics: decisions (audit), notifications (outbox), and the outbox's dead letters."""
        return (self.topic_decisions, self.topic_notifications, self.topic_notifications_dlq)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from env vars (NUDGE_*), then apply keyword overrides.

        A secret may instead be given as `<ENV>_FILE`, the path of a file that
        holds it (a mounted secret; one trailing line break is dropped)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            env = f.metadata["env"]
            raw = environ.get(env)
            path = environ.get(f"{env}_FILE") if f.metadata["secret"] else None
            if path:
                if raw:
                    raise ConfigError(f"{env} and {env}_FILE are both set: give the secret once")
                raw = _read_secret_file(env, path)
            if raw is not None and raw != "":
                values[f.name] = _parse(f, raw)
        values.update(overrides)
        return cls(**values)

    @classmethod
    def declarations(cls) -> Iterator[Setting]:
        for f in dataclasses.fields(cls):
            meta = f.metadata
            yield Setting(f.name, meta["env"], meta["help"], f.default, meta["secret"], meta["rule"].allowed)

    @classmethod
    def _env(cls, name: str) -> str:
        return str(next(f.metadata["env"] for f in dataclasses.fields(cls) if f.name == name))

    def to_env(self) -> dict[str, str]:
        """These settings as NUDGE_* env vars, for a child process.

        A secret goes by value, and its `_FILE` variable is emptied: a parent's
        `_FILE` would otherwise clash with the value (or name another secret)."""
        env = {f.metadata["env"]: str(getattr(self, f.name)) for f in dataclasses.fields(self)}
        env.update({f"{f.metadata['env']}_FILE": "" for f in dataclasses.fields(self) if f.metadata["secret"]})
        return env

    def redacted(self) -> dict[str, str]:
        """Current values for display: secrets masked, URLs without their credentials."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata["secret"] and value:
                out[f.metadata["env"]] = "***"
            elif f.metadata["rule"] is REDIS_URL:
                out[f.metadata["env"]] = display_url(value)
            else:
                out[f.metadata["env"]] = str(value)
        return out


def _parse(f: dataclasses.Field[Any], raw: str) -> Any:
    kind = _TYPES[str(f.type)]
    try:
        if kind is bool:
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("1", "true", "yes")
        return kind(raw)
    except ValueError:
        env, rule = f.metadata["env"], f.metadata["rule"]
        raise ConfigError(f"{env}={raw!r} is not {_TYPE_NAMES[kind]}: expected {rule.allowed}") from None
