"""One user's state in, decisions out: the trigger service's pure core.

`evaluate(fields, rules, context, now_ms)` reads the user's hash (strings,
as the worker wrote them) and returns an `Evaluation`:

- `final`: decisions already made here: suppressed by consent (no channel
  the user opted in to and can be reached on) or by the holdout;
- `proposals`: decisions that passed those, in priority order, each with
  what the atomic guard in Redis must check and record (the episode not
  already decided, the rule's cool-down, the frequency caps) and its
  quiet-hours verdict (send now, delay to `send_at`, or drop). The shell
  (triggers.service) sends at most one message per user per evaluation:
  the first proposal the guard lets through;
- `waits`: wait-for rules whose wait has not elapsed (a cart added to 10
  minutes ago, a user quiet for 2 days): when to evaluate them again. The
  conditions are checked then, not now: a win-back's "quiet for 7 days" can
  only hold once the wait is over.

An *episode* is what a rule's `once_per` fields name (one abandoned cart,
one silence, one tier reached). The idempotency key hashes the rule, the
user and those values, so the same episode seen again (a redelivered
change, a replay, another trigger process) has the same key: the guard
decides it once and the send ledger delivers it once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import orjson

from features.lifecycle import classify
from nudge.notifications import Notification
from triggers.guardrails import cap_buckets, choose_channel, in_holdout, quiet_until, user_zone, variant_for
from triggers.rules import Rule, RuleSet, Store, nearest_store

__all__ = [
    "Context",
    "Decision",
    "Evaluation",
    "Proposal",
    "as_of_now",
    "evaluate",
    "idempotency_key",
    "replaced",
    "state_read",
]

Outcome = Literal["sent", "suppressed", "delayed"]
# Hash fields never copied into a decision record or a template: contact points.
PRIVATE_FIELDS: Final = frozenset({"push_token", "phone"})
# Fields every decision record keeps beside those its rule read.
ALWAYS_READ: Final = ("as_of", "updated_at", "seq", "timezone", "push_opt_in", "sms_opt_in", "models_version")
MESSAGE_TTL_MS: Final = 24 * 3_600_000


@dataclass(frozen=True, slots=True)
class Context:
    """What evaluation needs besides the state: stores, offer names, the holdout share, quiet hours."""

    stores: Sequence[Store] = ()
    offer_names: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Decision:
    """One decision: the audit record (`record()`) and, when sent or delayed, the message (`notification()`)."""

    decision_id: str
    idempotency_key: str
    user_id: str
    rule: str
    variant: str
    outcome: Outcome
    reason: str
    channel: str
    decided_at: int
    send_at: int
    user_timezone: str
    transactional: bool
    models_version: str
    state: Mapping[str, str]
    offer_id: str = ""
    offer_score: str = ""
    title: str = ""
    body: str = ""
    to: str = ""  # the address: never in the record

    def record(self) -> dict[str, Any]:
        """The decision as the `decisions` topic and `nudge why` see it (no contact point)."""
        return {
            "decision_id": self.decision_id,
            "idempotency_key": self.idempotency_key,
            "user_id": self.user_id,
            "rule": self.rule,
            "variant": self.variant,
            "outcome": self.outcome,
            "reason": self.reason,
            "channel": self.channel,
            "decided_at": self.decided_at,
            "send_at": self.send_at,
            "user_timezone": self.user_timezone,
            "transactional": self.transactional,
            "models_version": self.models_version,
            "offer_id": self.offer_id,
            "offer_score": self.offer_score,
            "title": self.title,
            "body": self.body,
            "state": dict(self.state),
        }

    def notification(self, outbox_ms: int) -> Notification:
        """The message for the outbox, put there at `outbox_ms` (wall clock): send now, expire a day later.

        The decision's own times (decided_at, send_at) are on the service's clock, which is event
        time in a replay or a simulation; delivery runs on the wall clock, and a delayed message
        only reaches the outbox once it is due.
        """
        return Notification(
            idempotency_key=self.idempotency_key,
            decision_id=self.decision_id,
            user_id=self.user_id,
            rule=self.rule,
            variant=self.variant,
            channel=self.channel,  # type: ignore[arg-type]  # chosen from the rule's checked channels
            to=self.to,
            title=self.title,
            body=self.body,
            campaign_id=self.offer_id or self.rule,
            offer_id=self.offer_id or None,
            transactional=self.transactional,
            decided_at=self.decided_at,
            send_at=outbox_ms,
            expires_at=outbox_ms + MESSAGE_TTL_MS,
        )

    def with_outcome(self, outcome: Outcome, reason: str) -> Decision:
        return replaced(self, outcome=outcome, reason=reason)

    def stored(self) -> bytes:
        """What the guard keeps for a decided episode: the record and the address, to publish it again."""
        return orjson.dumps(self.record() | {"to": self.to})

    @classmethod
    def from_stored(cls, raw: bytes | str) -> Decision:
        record = orjson.loads(raw)
        fields = {k: v for k, v in record.items() if k in cls.__dataclass_fields__}
        return cls(**fields)


def replaced(d: Decision, **changes: Any) -> Decision:
    """`d` with `changes`; its id follows its (key, outcome, reason)."""
    values = {name: getattr(d, name) for name in Decision.__dataclass_fields__}
    values.update(changes)
    values["decision_id"] = decision_id(values["idempotency_key"], values["outcome"], values["reason"])
    return Decision(**values)


@dataclass(frozen=True, slots=True)
class Proposal:
    """A decision the atomic guard must let through: episode, cool-down and caps, checked and recorded at once."""

    decision: Decision  # outcome "sent" or "delayed" if the guard agrees
    cooldown_until: int  # -1: forever
    caps: tuple[tuple[str, int], ...]  # (counter name, limit): empty for a transactional rule
    quiet: Literal["ok", "delay", "drop"]


@dataclass(frozen=True, slots=True)
class Evaluation:
    user_id: str = ""
    final: tuple[Decision, ...] = ()
    proposals: tuple[Proposal, ...] = ()
    waits: tuple[tuple[str, int], ...] = ()  # (rule id, due epoch ms)


def idempotency_key(rule_id: str, user_id: str, episode: Sequence[str]) -> str:
    """32 hex characters naming one episode of one rule for one user."""
    raw = "\x00".join((rule_id, user_id, *episode)).encode()
    return hashlib.sha256(raw).hexdigest()[:32]


def decision_id(key: str, outcome: str, reason: str) -> str:
    """Deterministic: the same decision made again (a replay) keeps its id, so readers can dedupe."""
    return hashlib.sha256(f"{key}\x00{outcome}\x00{reason}".encode()).hexdigest()[:24]


def state_read(rule: Rule, fields: Mapping[str, str]) -> dict[str, str]:
    """The state fields a rule read, for the decision record (contact points left out)."""
    names: list[str] = [c.field for c in rule.when]
    names += [n for n in rule.once_per if n != "store_id"]
    if rule.wait is not None:
        names.append(rule.wait.after)
    if rule.near_store_m is not None:
        names += ["lat", "lon"]
    if rule.offer:
        names += ["nbo_offer", "nbo_score"]
    names += ALWAYS_READ
    return {n: fields.get(n, "") for n in dict.fromkeys(names) if n not in PRIVATE_FIELDS}


def as_of_now(fields: Mapping[str, str], now_ms: int) -> Mapping[str, str]:
    """The state with the fields that depend on time read as of `now_ms`: the lifecycle stage.

    The worker writes the stage as of the user's latest event, where a user is
    new or active by definition; a silent user is at risk only as of now.

    >>> DAY = 86_400_000
    >>> as_of_now({"first_seen": "0", "last_event_ts": str(DAY), "lifecycle": "new"}, 10 * DAY)["lifecycle"]
    'at_risk'
    """
    first, last = _ms(fields.get("first_seen")), _ms(fields.get("last_event_ts"))
    if first is None or last is None:
        return fields
    return {**fields, "lifecycle": classify(first_seen=first, last_event_ts=last, now=max(now_ms, last))}


def _ms(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None


def evaluate(
    fields: Mapping[str, str],
    rules: RuleSet,
    context: Context,
    now_ms: int,
    *,
    only: str | None = None,
    state_age_ms: int | None = None,
) -> Evaluation:
    """Every rule (or `only` that one) on one user's state as of `now_ms`; see the module docstring.

    `state_age_ms` (wall clock since the hash was written) skips the rules whose
    `max_state_age` it exceeds; the service refuses older state for every rule.
    """
    user_id = fields.get("user_id", "")
    if not user_id:
        return Evaluation()
    fields = as_of_now(fields, now_ms)
    final: list[Decision] = []
    proposals: list[Proposal] = []
    waits: list[tuple[str, int]] = []
    zone_name = fields.get("timezone", "")
    zone = user_zone(zone_name)
    g = rules.guardrails
    for rule in rules.rules:
        if only is not None and rule.id != only:
            continue
        if rule.max_age_ms is not None and state_age_ms is not None and state_age_ms > rule.max_age_ms:
            continue
        if rule.wait is not None:
            # Wait-for: look again when the wait ends, whatever holds now (a win-back's silence is
            # what the wait is for); the conditions are checked then.
            due = rule.due_at(fields)
            if due is None:
                continue
            if now_ms < due:
                waits.append((rule.id, due))
                continue
        if not rule.matches(fields, now_ms, context.stores):
            continue
        store = nearest_store(fields, context.stores, rule.near_store_m) if rule.near_store_m is not None else None
        values = {k: v for k, v in fields.items() if k not in PRIVATE_FIELDS}
        if store is not None:
            values.update(store_id=store.id, store_name=store.name)
        episode = [values.get(name, "") for name in rule.once_per]
        if not all(episode):
            continue  # no episode to name (e.g. never added to a cart): nothing to decide
        offer_id = rule.offer if isinstance(rule.offer, str) else fields.get("nbo_offer", "") if rule.offer else ""
        if rule.offer is not False and not offer_id:
            continue  # a next-best-offer campaign, and no offer chosen yet for this user
        variant = variant_for(user_id, rule)
        values.update(
            rule=rule.id, variant=variant.id, offer_id=offer_id, offer_name=context.offer_names.get(offer_id, offer_id)
        )
        title, body = variant.message.render(values)
        key = idempotency_key(rule.id, user_id, episode)
        channel = choose_channel(fields, rule)
        base = Decision(
            decision_id="",
            idempotency_key=key,
            user_id=user_id,
            rule=rule.id,
            variant=variant.id,
            outcome="sent",
            reason="",
            channel=channel[0] if channel else "",
            decided_at=now_ms,
            send_at=now_ms,
            user_timezone=zone_name or "UTC",
            transactional=rule.transactional,
            models_version=fields.get("models_version", ""),
            state=state_read(rule, fields),
            offer_id=offer_id,
            offer_score=fields.get("nbo_score", "") if rule.offer is True else "",  # the bandit's, when it chose
            title=title,
            body=body,
            to=channel[1] if channel else "",
        )
        if channel is None:
            final.append(base.with_outcome("suppressed", "consent"))
            continue
        if in_holdout(user_id, rule, g.holdout):
            final.append(base.with_outcome("suppressed", "holdout"))
            continue
        send_at = quiet_until(now_ms, zone, g.quiet_start_min, g.quiet_end_min)
        quiet: Literal["ok", "delay", "drop"] = "ok" if send_at == now_ms else rule.quiet_hours
        decision = replaced(base, send_at=send_at, outcome="delayed" if quiet == "delay" else "sent")
        proposals.append(
            Proposal(
                decision=decision,
                cooldown_until=-1 if rule.cooldown_ms is None else send_at + rule.cooldown_ms,
                caps=() if rule.transactional else _caps(channel[0], send_at, zone, g.caps),
                quiet=quiet,
            )
        )
    return Evaluation(user_id, tuple(final), tuple(proposals), tuple(waits))


def _caps(channel: str, at_ms: int, zone: Any, limits: Mapping[str, Any]) -> tuple[tuple[str, int], ...]:
    """(counter, limit) per period for the channel and for all channels, on the user's calendar at send time."""
    day, week = cap_buckets(at_ms, zone)
    out: list[tuple[str, int]] = []
    for scope in (channel, "all"):
        cap = limits.get(scope)
        if cap is None:
            continue
        if cap.day is not None:
            out.append((f"cap:{scope}:d:{day}", cap.day))
        if cap.week is not None:
            out.append((f"cap:{scope}:w:{week}", cap.week))
    return tuple(out)
