"""The worker's batch step, as a pure function: `step(states, messages, config, now_ms)`.

Everything the worker decides about a batch of input messages happens here;
everything it *does* (Kafka, Redis, acknowledgements, metrics) happens in the
thin shell around it (`streams.app`). The step reads no clock but `now_ms`,
does no I/O and never imports Faust, so it is unit-tested, property-tested
(tests/unit/test_step.py) and benchmarked alone (`nudge bench pipeline`
reports its cost in microseconds per event).

Stages, for each message in order:

1. parse: `nudge.events.parse_event`; a bad message becomes a dead letter
   with its machine-readable reason;
2. route: a message whose Kafka key is not its user_id, or which sits on
   another partition than murmur2(user_id) gives, is re-keyed through the
   internal re-keyed topic, so one user's state lives in one partition;
3. fold: `features.state.fold` advances the user's state; an event older than
   the user's dedup memory becomes a dead letter (`too_old`); a duplicate
   changes nothing but still rewrites the user (a crash may have left the
   changelog ahead of Redis, and then every redelivered event is a duplicate);

then once per user the batch touched:

4. score: with a model stage (streams/model_stage.py), the user's churn,
   value, RFM, tier and offer fields as of the event-time watermark;
5. emit: one store write per touched user, and the user's changelog entry
   made due: its key and partition (the value is the state itself, which the
   shell serialises when it writes the changelog; `changelog_value`).

Ownership: the step advances the `UserState` objects it gets from `states` in
place (copying every state per batch would cost more than the fold) and
returns them in `StepResult.states`; the caller hands them over and must keep
the returned ones. Everything else in the result is new.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from kafka.partitioner.default import murmur2

from features.state import FoldConfig, Outcome, UserState, fold
from models.bandit import BanditReward
from models.labels import Example
from nudge.events import SYSTEM_TYPES, Rejection, parse_event
from streams.dlq import dlq_headers
from streams.model_stage import ModelOutput, ModelStage

__all__ = [
    "InputMessage",
    "Message",
    "OutputMessage",
    "StateLookup",
    "StepConfig",
    "StepResult",
    "UserWrite",
    "changelog_value",
    "expected_partition",
    "step",
    "user_write",
]

Headers = list[tuple[str, bytes]]


class InputMessage(Protocol):
    """What the step reads of a Kafka message (Faust's messages have these)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def timestamp(self) -> float | None: ...  # seconds, as Faust gives it
    @property
    def headers(self) -> Any: ...


@dataclass(frozen=True, slots=True)
class Message:
    """An input message held in memory: for drivers that run the step without Kafka
    (`nudge eval`, the benchmarks)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: float | None = 0.0
    headers: Any = None


class StateLookup(Protocol):
    """Where the step finds a user's current state (a dict will do)."""

    def get(self, user_id: str, /) -> UserState | None: ...


@dataclass(frozen=True, slots=True)
class StepConfig:
    """What the step needs to know besides its input (from `Settings`)."""

    partitions: int
    rekeyed_topic: str
    dlq_topic: str
    fold: FoldConfig = FoldConfig()
    max_event_bytes: int = 64 * 1024
    max_future_ms: int = 7 * 86_400_000

    @classmethod
    def from_settings(cls, settings: Any) -> StepConfig:
        return cls(
            partitions=settings.partitions,
            rekeyed_topic=settings.topic_rekeyed,
            dlq_topic=settings.topic_dlq,
            fold=FoldConfig.from_settings(settings),
            max_event_bytes=settings.max_event_bytes,
            max_future_ms=settings.max_future_ms,
        )


@dataclass(frozen=True, slots=True)
class OutputMessage:
    """A message the shell must produce (dead letter or re-keyed event)."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers | None = None


@dataclass(frozen=True, slots=True)
class UserWrite:
    """One user's new hash for the feature store: every field, and `seq`
    (events folded so far), the version the store never lets go backwards."""

    user_id: str
    seq: int
    fields: dict[str, str]


@dataclass(slots=True)
class StepResult:
    """The new states and every effect the shell must perform for one batch."""

    states: dict[str, UserState] = field(default_factory=dict)  # touched users, first touch first
    writes: list[UserWrite] = field(default_factory=list)  # one per touched user
    changelog: list[tuple[bytes, int]] = field(default_factory=list)  # (key, partition) of each touched user
    dead_letters: list[OutputMessage] = field(default_factory=list)
    rekeyed: list[OutputMessage] = field(default_factory=list)
    counts: dict[tuple[str, str], int] = field(default_factory=dict)  # (topic, outcome) -> messages
    dlq_reasons: dict[str, int] = field(default_factory=dict)
    # Kafka timestamp (s) of each touched user's first message in the batch:
    # its Redis write is that message's freshness.
    first_seen_at: list[float] = field(default_factory=list)
    watermark: int | None = None  # latest as_of among the touched users
    # Delayed labels and offer rewards resolved in this batch (with a model stage).
    examples: list[Example] = field(default_factory=list)
    rewards: list[BanditReward] = field(default_factory=list)
    # Messages that raised (a bug, never bad input): dead-lettered as
    # processing_error; the shell logs them with their traceback.
    errors: list[tuple[InputMessage, BaseException]] = field(default_factory=list)

    @property
    def outgoing(self) -> list[OutputMessage]:
        return [*self.dead_letters, *self.rekeyed]


@functools.lru_cache(maxsize=1 << 17)
def expected_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default (murmur2) partitioner gives `key`."""
    return int((murmur2(key) & 0x7FFFFFFF) % partitions)


def step(
    states: StateLookup,
    messages: Iterable[InputMessage],
    config: StepConfig,
    now_ms: int,
    models: ModelStage | None = None,
) -> StepResult:
    """Fold a batch of input messages into user states; return them and the effects.

    With `models`, newly folded events also feed the delayed labels and offer
    attribution (streams/model_stage.py), whose examples and rewards come back in
    the result, and users whose labels fall due without an event are swept in.
    """
    result = StepResult()
    model_out = ModelOutput() if models is not None else None
    touched = result.states
    counts = result.counts
    first_seen_at: dict[str, float] = {}
    partitions = config.partitions
    rekeyed_topic = config.rekeyed_topic
    fold_config = config.fold
    n_messages = 0
    for message in messages:
        n_messages += 1
        topic = message.topic
        try:
            parsed = parse_event(
                message.value, now_ms=now_ms, max_bytes=config.max_event_bytes, max_future_ms=config.max_future_ms
            )
            if isinstance(parsed, Rejection):
                _dead_letter(result, message, parsed.reason, parsed.detail, config, now_ms)
                continue
            uid = parsed.user_id
            if topic != rekeyed_topic:
                key = uid.encode()
                if message.key != key or message.partition != expected_partition(key, partitions):
                    result.rekeyed.append(OutputMessage(rekeyed_topic, key, message.value, _headers(message)))
                    counts[topic, "rekeyed"] = counts.get((topic, "rekeyed"), 0) + 1
                    continue
            state = touched.get(uid)
            if state is None:
                state = states.get(uid) or UserState(uid)
            if models is not None and parsed.type not in SYSTEM_TYPES:
                models.before_event(state, parsed)
            outcome = fold(state, parsed, fold_config)
            if outcome is Outcome.EXPIRED:
                _dead_letter(
                    result,
                    message,
                    "too_old",
                    f"ts {parsed.ts} is older than the dedup memory of {uid}",
                    config,
                    now_ms,
                )
                continue
            if uid not in touched:
                touched[uid] = state
                first_seen_at[uid] = message.timestamp or 0.0
            if model_out is not None and models is not None and outcome is not Outcome.DUPLICATE:
                models.on_event(state, parsed, (topic, message.partition), now_ms, model_out)
        except Exception as exc:  # the worker never dies on input
            result.errors.append((message, exc))
            _dead_letter(result, message, "processing_error", f"{type(exc).__name__}: {exc}", config, now_ms)
            continue
        counts[topic, outcome.value] = counts.get((topic, outcome.value), 0) + 1
    if model_out is not None and models is not None:
        models.finish(model_out, touched, states, now_ms, events=n_messages)
        result.examples, result.rewards = model_out.examples, model_out.rewards
        for uid, state in model_out.swept.items():
            touched.setdefault(uid, state)  # its labels moved: a changelog entry and a write
    _emit(result, config, now_ms, models, model_out)
    result.first_seen_at = [ts for ts in first_seen_at.values() if ts]
    return result


def user_write(state: UserState) -> UserWrite:
    """One user's features as a store write (the model stage adds its scores)."""
    return UserWrite(state.user_id, state.events_total, state.features())


def changelog_value(state: UserState) -> bytes:
    """A user's changelog value: the state, recovered by `UserState.from_json`."""
    return state.to_json()


def _emit(
    result: StepResult, config: StepConfig, now_ms: int, models: ModelStage | None, model_out: ModelOutput | None
) -> None:
    """Stages 4 and 5: score each touched user, then its changelog entry and store write."""
    watermark = None
    for uid, state in result.states.items():
        key = uid.encode()
        result.changelog.append((key, expected_partition(key, config.partitions)))
        write = user_write(state)
        if models is not None and model_out is not None:
            write.fields.update(models.fields(state, model_out.watermark))
        result.writes.append(write)
        if state.as_of is not None and (watermark is None or state.as_of > watermark):
            watermark = state.as_of
    result.watermark = watermark


def _headers(message: InputMessage) -> Headers | None:
    headers = message.headers
    if not headers:
        return None
    return list(headers.items() if isinstance(headers, Mapping) else headers)


def _dead_letter(
    result: StepResult, message: InputMessage, reason: str, detail: str, config: StepConfig, now_ms: int
) -> None:
    headers = dlq_headers(
        reason,
        detail,
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        timestamp_ms=int(message.timestamp * 1000) if message.timestamp else None,
        failed_at_ms=now_ms,
    )
    result.dead_letters.append(OutputMessage(config.dlq_topic, message.key, message.value, headers))
    result.dlq_reasons[reason] = result.dlq_reasons.get(reason, 0) + 1
    result.counts[message.topic, "rejected"] = result.counts.get((message.topic, "rejected"), 0) + 1
