"""`nudge triggers`: the trigger service, a thin shell around triggers.decide.

Each process:

1. reads the changes streams with a Redis consumer group (several processes
   share the work; one user's changes are in one shard) and, for each user
   changed, loads the hash and refuses it if it was written longer ago than
   the max age (stale: the worker is behind or stopped);
2. evaluates the rules (`triggers.decide.evaluate`, pure) as of now;
3. records each suppression once per episode and reason, and passes the
   proposals, highest priority first, through the atomic guard
   (`triggers.store`) until one is let through: at most one message per user
   per change;
4. publishes the decisions to topic `decisions` and a sent message to topic
   `notifications` and waits for Kafka's acknowledgement, then marks the
   decision published and logs it in the user's list, and only then
   acknowledges the change (so a crash re-reads it: the guard answers
   "replay" and an unpublished decision is published then);
5. every `tick_s`, claims due work from the shared schedule: a wait-for
   rule to evaluate again (cart abandonment: it fires only if its
   conditions still hold, so a purchase in time cancels it) or a delayed
   message whose quiet hours ended (sent only if the user still consents).

"Now" is the wall clock, or with `--clock event` the event-time watermark:
the latest `as_of` among the states this process has read. That is what a
replay or an accelerated simulation needs (a cart's 30 minutes, quiet hours
and the attribution window then pass in simulated time); each process keeps
its own watermark. The state's max age and the outbox's send and expiry
times are always on the wall clock. Entries left pending by a process that
died are claimed by another after `claim_idle_s`.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson
from kafka.errors import KafkaError
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from redis.exceptions import RedisError

from nudge.args import number, port
from nudge.errors import ConfigError, DeliveryError, DependencyUnavailable
from nudge.layout import changes_streams, user_key
from nudge.logs import display_url
from nudge.settings import Settings
from nudge.stopping import stop_on_signals
from nudge.text import printable
from triggers.decide import Context, Decision, Evaluation, evaluate, replaced
from triggers.guardrails import choose_channel
from triggers.rules import RuleSet, load_rules, load_stores
from triggers.store import TriggerStore

__all__ = ["Publisher", "TriggerMetrics", "TriggerService", "configure", "load_context", "run"]

log = logging.getLogger(__name__)

READ_COUNT: Final = 200
LAG_EVERY_S: Final = 5.0  # how often the consumer group's lag is measured
LEASE_MS: Final = 60_000


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


class TriggerMetrics:
    """The trigger service's metrics (names `nudge_triggers_*`), in their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry or CollectorRegistry()
        self.decisions = Counter(
            "nudge_triggers_decisions_total",
            "Decisions recorded, by rule, outcome (sent, suppressed, delayed) and reason",
            ["rule", "outcome", "reason"],
            registry=r,
        )
        self.changes = Counter(
            "nudge_triggers_changes_total",
            "Changes read, by result (evaluated, stale, missing)",
            ["result"],
            registry=r,
        )
        self.scheduled = Counter(
            "nudge_triggers_scheduled_total",
            "Work run from the schedule, by kind and result",
            ["kind", "result"],
            registry=r,
        )
        self.replays = Counter(
            "nudge_triggers_replays_total",
            "Episodes found already decided by the guard, by whether they had to be published again",
            ["republished"],
            registry=r,
        )
        self.evaluation = Histogram(
            "nudge_triggers_evaluation_seconds",
            "Time to decide one user's change, guard and publishing included",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=r,
        )
        self.schedule_depth = Gauge("nudge_triggers_schedule_depth", "Work waiting in the schedule", registry=r)
        self.errors = Counter(
            "nudge_triggers_decide_errors_total", "Users skipped because deciding for them raised", registry=r
        )
        self.dependency_errors = Counter(
            "nudge_triggers_dependency_errors_total", "Pauses because Redis or Kafka failed", registry=r
        )
        self.dependency_up = Gauge(
            "nudge_dependency_up",
            "1 while the dependency answers, 0 from a failure until the service's next round works",
            ["dependency"],
            registry=r,
        )
        self.lag = Gauge(
            "nudge_consumer_lag_messages",
            "Changes not yet read by the service's consumer group, by changes stream (topic) and shard (partition)",
            ["topic", "partition"],
            registry=r,
        )
        for dependency in ("kafka", "redis"):
            self.dependency_up.labels(dependency).set(1)

    def rules(self, rule_ids: Iterable[str]) -> None:
        """Start every rule's sent count at 0: a campaign that never fired still shows, at 0."""
        for rule in rule_ids:
            self.decisions.labels(rule, "sent", "")


class Publisher:
    """Kafka producer of decisions and notifications; `flush()` waits for every acknowledgement."""

    def __init__(self, settings: Settings) -> None:
        from kafka import KafkaProducer

        from nudge.kafka_clients import connect

        self.settings = settings
        self.producer = connect(KafkaProducer, settings, acks="all", linger_ms=5, client_id="nudge-triggers")
        self.futures: list[Any] = []

    def decision(self, user_id: str, record: bytes) -> None:
        self.futures.append(self.producer.send(self.settings.topic_decisions, key=user_id.encode(), value=record))

    def notification(self, user_id: str, message: bytes) -> None:
        self.futures.append(self.producer.send(self.settings.topic_notifications, key=user_id.encode(), value=message))

    def flush(self) -> None:
        from nudge.errors import DeliveryError

        self.producer.flush()
        futures, self.futures = self.futures, []
        for f in futures:
            try:
                f.get(timeout=30)
            except Exception as exc:  # kafka-python raises KafkaError subclasses; any failure is a failed delivery
                raise DeliveryError(f"Kafka did not acknowledge a decision: {exc}") from None

    def close(self) -> None:
        self.producer.close(timeout=10)


@dataclass(slots=True)
class _Batch:
    """Decisions of one batch of changes (or of due work), published together: one wait for Kafka."""

    recorded: list[Decision] = field(default_factory=list)  # the audit: every decision made
    published: list[Decision] = field(default_factory=list)  # sent or delayed (or republished after a crash)
    waits: list[tuple[str, str, int]] = field(default_factory=list)  # (user, rule, due): look again then


@dataclass
class TriggerService:
    settings: Settings
    rules: RuleSet
    context: Context
    store: TriggerStore
    publisher: Any  # Publisher, or a fake with decision/notification/flush
    metrics: TriggerMetrics = field(default_factory=TriggerMetrics)
    clock: Callable[[], int] = wall_ms  # the decisions' "now"
    wall: Callable[[], int] = wall_ms  # the state's age, the outbox's times
    event_time: bool = False  # decide as of the event-time watermark instead of `clock`
    watermark: int = 0
    consumer: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    claim_idle_s: float = 60.0
    # A decided episode found unpublished is published again only this long after it was decided:
    # sooner, the process that decided it is most likely still publishing it.
    republish_after_ms: int = 30_000
    _last_claim: float = 0.0
    _lag_at: float = 0.0

    # --- one user ---------------------------------------------------------------------
    def now(self) -> int:
        return self.watermark if self.event_time else self.clock()

    def fresh(self, fields: dict[str, str]) -> bool:
        """Whether the hash was written within the max age (wall clock)."""
        written = fields.get("updated_at", "")
        if not written.isdigit():
            return False
        return self.wall() - int(written) <= self.settings.trigger_max_state_age_s * 1000

    def handle_user(self, user_id: str, *, only: str | None = None) -> list[Decision]:
        """Evaluate one user as of now and perform every effect; the decisions recorded."""
        batch = _Batch()
        self.decide(user_id, self.read_users([user_id]).get(user_id), batch, only=only)
        self.publish(batch)
        return batch.recorded

    def read_users(self, user_ids: list[str]) -> dict[str, dict[str, str]]:
        """The users' hashes, in one round trip (absent users left out)."""
        pipe = self.store.client.pipeline(transaction=False)
        for user in user_ids:
            pipe.hgetall(user_key(self.settings, user))
        out = {}
        for user, raw in zip(user_ids, pipe.execute(), strict=True):
            if raw:
                out[user] = {_s(k): _s(v) for k, v in raw.items()}
        return out

    def decide(self, user_id: str, fields: dict[str, str] | None, batch: _Batch, *, only: str | None = None) -> None:
        """Evaluate one user's state as of now and pass it through the guard; effects go to `batch`."""
        started = time.perf_counter()
        if fields is None:
            self.metrics.changes.labels("missing").inc()
            return
        if not self.fresh(fields):
            self.metrics.changes.labels("stale").inc()
            return
        as_of = fields.get("as_of", "")
        if as_of.isdigit():
            self.watermark = max(self.watermark, int(as_of))
        now = self.now()
        self.metrics.changes.labels("evaluated").inc()
        age = self.wall() - int(fields["updated_at"])  # fresh(): updated_at is a number
        self.apply(evaluate(fields, self.rules, self.context, now, only=only, state_age_ms=age), now, batch)
        self.metrics.evaluation.observe(time.perf_counter() - started)

    def apply(self, ev: Evaluation, now: int, batch: _Batch) -> None:
        """Guard an evaluation's decisions and schedule its waits; what to publish goes to `batch`."""
        batch.waits += [(ev.user_id, rule_id, due) for rule_id, due in ev.waits]
        batch.recorded += [d for d in ev.final if self.store.note(d, now)]
        for proposal in ev.proposals:
            d = proposal.decision
            result = self.store.guard(proposal, now, d.stored())
            if result.verdict == "replay":
                self._replay(d.user_id, d.idempotency_key, result.detail, batch, now)
                continue
            if result.verdict in ("dedupe", "cap"):
                reason = result.verdict if result.verdict == "dedupe" else f"cap:{_cap_scope(result.detail)}"
                suppressed = d.with_outcome("suppressed", reason)
                if self.store.note(suppressed, now):
                    batch.recorded.append(suppressed)
                continue
            if proposal.quiet == "drop":
                suppressed = d.with_outcome("suppressed", "quiet_hours")
                if self.store.note(suppressed, now):
                    batch.recorded.append(suppressed)
                continue
            batch.recorded.append(d)
            batch.published.append(d)
            break  # one message per user per evaluation: the highest priority that passed

    def _replay(self, user_id: str, key: str, stored: str, batch: _Batch, now: int) -> None:
        """An episode already decided: publish it again only if its publishing never finished."""
        d = Decision.from_stored(stored)
        if now - d.decided_at < self.republish_after_ms or self.store.client.hexists(
            self.store.key(user_id, "published"), key
        ):
            self.metrics.replays.labels("no").inc()
            return
        batch.published.append(d)
        self.metrics.replays.labels("yes").inc()

    def publish(self, batch: _Batch) -> None:
        """Produce a batch's decisions and messages, wait for Kafka, then schedule, mark and log them."""
        recorded, published = batch.recorded, batch.published
        records = {d.decision_id: orjson.dumps(d.record()) for d in recorded + published}
        now, outbox = self.now(), self.wall()
        if records:
            for d in recorded + [p for p in published if p not in recorded]:
                self.publisher.decision(d.user_id, records[d.decision_id])
            for d in published:
                if d.outcome == "sent" and d.send_at <= now:
                    self.publisher.notification(d.user_id, d.notification(outbox).to_json())
            self.publisher.flush()
        if batch.waits or published:
            # One round trip for the batch, after Kafka has its decisions and before the changes are acknowledged.
            pipe = self.store.client.pipeline(transaction=False)
            for user, rule_id, due in batch.waits:
                self.store.schedule(pipe, user, f"eval|{rule_id}|{user}", due)
            for d in published:
                if d.outcome == "delayed":
                    self.store.schedule(pipe, d.user_id, f"send|{d.idempotency_key}|{d.user_id}", d.send_at)
                pipe.hset(self.store.key(d.user_id, "published"), d.idempotency_key, str(now))
                pipe.expire(self.store.key(d.user_id, "published"), 400 * 86_400)
            pipe.execute()
        by_user: dict[str, list[bytes]] = {}
        for d in recorded:
            by_user.setdefault(d.user_id, []).append(records[d.decision_id])
            self.metrics.decisions.labels(d.rule, d.outcome, d.reason.split(":")[0]).inc()
        for user, items in by_user.items():
            self.store.log(user, items)

    # --- the schedule -----------------------------------------------------------------
    def run_due(self, limit: int = 100) -> int:
        """Claim and run the schedule's due work; how many items ran."""
        done = 0
        for shard in self.store.schedule_keys():
            leased, members = self.store.claim(shard, self.now(), LEASE_MS, limit)
            if not members:
                continue
            batch = _Batch()
            work = [(m, *[*m.split("|", 2), "", ""][:3]) for m in members]
            states = self.read_users(list(dict.fromkeys(user for _, _, _, user in work)))
            for _, kind, first, user in work:
                before = len(batch.published)
                if kind == "eval":
                    self.decide(user, states.get(user), batch, only=first)
                    result = "fired" if len(batch.published) > before else "evaluated"
                elif kind == "send":
                    result = self._send_delayed(user, first, states.get(user) or {}, batch)
                else:
                    result = "unknown"
                self.metrics.scheduled.labels(kind, result).inc()
            self.publish(batch)
            for member, *_ in work:
                self.store.done(shard, member, leased)
            done += len(work)
        self.metrics.schedule_depth.set(self.store.pending())
        if time.monotonic() - self._lag_at >= LAG_EVERY_S:
            self._lag_at = time.monotonic()
            self.measure_lag()
        return done

    def measure_lag(self) -> None:
        """The consumer group's lag on each changes stream (Redis 7's XINFO GROUPS `lag`; absent if unknown)."""
        for shard, stream in enumerate(changes_streams(self.settings)):
            for group in self.store.client.xinfo_groups(stream):
                if _s(group.get("name")) == self.settings.triggers_group and group.get("lag") is not None:
                    self.metrics.lag.labels(stream, str(shard)).set(int(group["lag"]))

    def _send_delayed(self, user_id: str, key: str, fields: dict[str, str], batch: _Batch) -> str:
        """A delayed message's quiet hours ended: send it if the user still consents."""
        stored = self.store.client.hget(self.store.key(user_id, "decided"), key)
        if stored is None:
            return "gone"
        d = Decision.from_stored(stored)
        rule = self.rules.by_id().get(d.rule)
        now = self.now()
        channel = choose_channel(fields, rule) if rule is not None else None
        if channel is None or channel[0] != d.channel:
            late = d.with_outcome("suppressed", "consent")
            if self.store.note(late, now):
                batch.recorded.append(late)
            return "consent_withdrawn"
        sent = replaced(d, outcome="sent", reason="after_quiet_hours", to=channel[1], send_at=max(d.send_at, now))
        batch.recorded.append(sent)
        batch.published.append(sent)
        return "sent"

    # --- the changes streams ---------------------------------------------------------
    def ensure_groups(self) -> None:
        from redis.exceptions import ResponseError

        for stream in changes_streams(self.settings):
            try:
                self.store.client.xgroup_create(stream, self.settings.triggers_group, id="$", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    def poll_changes(self) -> int:
        """Read new changes (and those a dead process left pending), decide, acknowledge; how many read."""
        client, group = self.store.client, self.settings.triggers_group
        batches: list[tuple[str, list[tuple[Any, dict[Any, Any]]]]] = []
        claim = time.monotonic() - self._last_claim > self.claim_idle_s / 2
        for stream in changes_streams(self.settings):
            if claim:
                _, claimed, *_ = client.xautoclaim(
                    stream, group, self.consumer, min_idle_time=int(self.claim_idle_s * 1000), count=READ_COUNT
                )
                if claimed:
                    batches.append((stream, claimed))
            got = client.xreadgroup(group, self.consumer, {stream: ">"}, count=READ_COUNT)
            for _, entries in got or []:
                batches.append((stream, entries))
        if claim:
            self._last_claim = time.monotonic()
        read = 0
        for stream, entries in batches:
            users = [u for u in dict.fromkeys(_s(e[1].get(b"user_id", b"")) for e in entries if e[1]) if u]
            states = self.read_users(users)
            batch = _Batch()
            for user in users:
                try:
                    self.decide(user, states.get(user), batch)
                except (RedisError, OSError):
                    raise  # Redis away: nothing is acknowledged, `run` waits and the entries are read again
                except Exception:
                    # A state nobody foresaw must not stop every other user's campaigns.
                    log.exception("deciding for user %s failed; skipped", printable(user))
                    self.metrics.errors.inc()
            self.publish(batch)
            client.xack(stream, group, *[e[0] for e in entries])
            read += len(entries)
        return read

    def run(self, stop: Callable[[], bool], *, tick_s: float = 1.0, idle_sleep_s: float = 0.05) -> None:
        """Until `stop()`: the schedule every `tick_s`, the changes in between. Redis or Kafka away: one
        warning, a pause that doubles up to 10 s, and again (unacknowledged changes are read again)."""
        next_tick, pause, need_groups = 0.0, 0.0, True
        while not stop():
            try:
                if need_groups:  # at start, and after an outage (a Redis that restarted empty lost them)
                    self.ensure_groups()
                    need_groups = False
                if time.monotonic() >= next_tick:
                    self.run_due()
                    next_tick = time.monotonic() + tick_s
                if self.poll_changes() == 0:
                    time.sleep(idle_sleep_s)
                if pause:
                    for dependency in ("kafka", "redis"):
                        self.metrics.dependency_up.labels(dependency).set(1)
                pause = 0.0
            except (RedisError, KafkaError, OSError, DeliveryError) as exc:
                pause, need_groups = min(10.0, max(0.5, pause * 2)), True
                self.metrics.dependency_errors.inc()
                failed = "redis" if isinstance(exc, RedisError | OSError) else "kafka"
                self.metrics.dependency_up.labels(failed).set(0)
                log.warning("trigger service: %s; trying again in %.1f s", printable(str(exc))[:300], pause)
                time.sleep(pause)


def _cap_scope(counter: str) -> str:
    """'cap:push:d:20261130' -> 'push:day'."""
    parts = counter.split(":")
    return f"{parts[1]}:{'day' if parts[2] == 'd' else 'week'}" if len(parts) >= 4 else counter


def _s(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def load_context(settings: Settings) -> tuple[RuleSet, Context]:
    """The rule file, the stores and the offer names, each checked (ConfigError naming the file)."""
    from models.offers import load_offers

    rules = load_rules(settings.rules_path)
    stores = load_stores(settings.stores_path) if Path(settings.stores_path).exists() else ()
    if any(r.near_store_m is not None for r in rules.rules) and not stores:
        raise ConfigError(f"{settings.rules_path}: a rule uses near_store but {settings.stores_path} has no stores")
    offers = {o.id: o.name for o in load_offers(settings.offers_path)}
    for r in rules.rules:
        if isinstance(r.offer, str) and r.offer not in offers:
            raise ConfigError(
                f"{settings.rules_path}:{r.line}: rule {r.id!r}: offer {r.offer!r} is not in {settings.offers_path}"
            )
    return rules, Context(stores=stores, offer_names=offers)


def configure(parser: argparse.ArgumentParser) -> None:
    from nudge.cli import settings_epilog

    parser.description = (
        "Run the trigger service: read the changes streams the stream worker writes (a Redis consumer\n"
        "group: start several to share the work), evaluate the campaign rules on each changed user's\n"
        "state as of now, pass the guardrails (consent, holdout, dedupe, caps, quiet hours, channel)\n"
        "and publish every decision to the decisions topic and each message to the notifications topic.\n"
        "A rule file with an error is refused at start with its line and the reason."
    )
    parser.add_argument("--check", action="store_true", help="check the rule and store files, print the rules, exit")
    parser.add_argument(
        "--metrics-port", type=port, default=None, metavar="P", help="/metrics port [NUDGE_TRIGGERS_METRICS_PORT]"
    )
    parser.add_argument(
        "--clock",
        choices=("wall", "event"),
        default="wall",
        help="decide as of the wall clock, or as of the event-time watermark (replays, simulations) [wall]",
    )
    parser.add_argument(
        "--tick",
        type=number(0.05, 60, unit=" s"),
        default=1.0,
        metavar="S",
        help="seconds between looks at the schedule (0.05..60) [1]",
    )
    parser.epilog = (
        "examples:\n"
        "  nudge triggers --check          # is deploy/config/rules.yaml valid? what will it do?\n"
        "  nudge triggers                  # run; start it twice to share the load\n\n"
        + settings_epilog(
            "rules_path",
            "stores_path",
            "offers_path",
            "redis_url",
            "triggers_group",
            "triggers_key_prefix",
            "trigger_max_state_age_s",
            "topic_decisions",
            "topic_notifications",
            "decisions_kept",
            "triggers_metrics_port",
        )
    )
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    rules, context = load_context(settings)
    if args.check:
        for r in rules.rules:
            variants = ", ".join(v.id for v in r.variants)
            wait = f", waits {r.wait.for_ms // 60_000} min after {r.wait.after}" if r.wait else ""
            print(f"{r.priority:4}  {r.id:28} channels {'/'.join(r.channels)}; variants {variants}{wait}")
        print(f"{settings.rules_path}: {len(rules.rules)} rules, {len(context.stores)} stores: OK")
        return 0
    client = _redis(settings)
    store = TriggerStore(
        client, prefix=settings.triggers_key_prefix, shards=settings.changes_shards, kept=settings.decisions_kept
    )
    publisher = Publisher(settings)
    metrics = TriggerMetrics()
    metrics.rules(rule.id for rule in rules.rules)
    start_http_server(args.metrics_port or settings.triggers_metrics_port, registry=metrics.registry)
    service = TriggerService(settings, rules, context, store, publisher, metrics, event_time=args.clock == "event")
    log.info(
        "trigger service %s: %d rules from %s, Redis %s",
        service.consumer,
        len(rules.rules),
        settings.rules_path,
        display_url(settings.redis_url),
    )
    try:
        with stop_on_signals() as stop:
            service.run(stop.is_set, tick_s=args.tick)
    finally:
        publisher.close()
    print(f"nudge triggers: stopped ({service.consumer})", file=sys.stderr)
    return 0


def _redis(settings: Settings) -> Any:
    from redis.exceptions import RedisClusterException, RedisError

    from nudge.redis_client import sync_client, unreachable

    try:
        client = sync_client(settings, socket_connect_timeout=2, socket_timeout=10)
        client.ping()
    except (RedisError, RedisClusterException, OSError) as exc:
        raise DependencyUnavailable(unreachable(settings, exc)) from None
    return client
