"""The models' part of the worker's batch step: delayed labels, offer attribution, scores.

Pure like the step it plugs into (`streams.step.step(..., models=stage)`): it
reads no clock but the `now_ms` it is given, and its only memory across
batches is its own (the event clock, the due index, the current model
bundle), which the shell owns and passes in every time.

Per folded event (never a duplicate: its labels and rewards were counted
the first time):

- the event clock advances for the event's partition (`streams.clock`);
- the user's pending labels see the event (`models.labels.on_event`): a
  return within the churn horizon resolves churn 0, a purchase adds to the
  open 30-day value windows. A `push_received` is not the user's doing and
  does not count;
- a `push_received` whose campaign is a catalog offer opens an exposure
  (`models.bandit.expose`); a purchase may reward one (`on_purchase`);
- the event may make an observation for labels to come (sampled once per
  event-time day of the user's own events), with inputs as of the user's
  latest event: which observations exist depends on the user's events
  only, never on how they were cut into batches or on the watermark.

Once per batch, at the watermark (event time up to which every active
partition has delivered), every user the batch touched, and every user the
due index says has a label or an exposure window falling due, is advanced to
the watermark: churn 1 and value labels resolve, exposures close with reward 0.

A user's pending labels and open exposures live in `UserState.models`, so
they travel in the changelog and survive restarts and rebalances; the due
index is rebuilt from the states the shell hands in (`track`).
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from features.state import UserState
from models import bandit, labels
from models.inputs import model_inputs, sanitise
from models.labels import Example
from models.offers import Offer, by_id, load_offers
from nudge.events import AppEvent, Event, PurchaseEvent
from streams.clock import EventClock

__all__ = ["ModelOutput", "ModelStage", "StateLookup", "model_stage_for"]

_LABELS = "labels"
_EXPOSURES = "exposures"


class StateLookup(Protocol):
    def get(self, user_id: str, /) -> UserState | None: ...


@dataclass(slots=True)
class ModelOutput:
    """What a batch's model stage produced, for the shell to send."""

    examples: list[Example] = field(default_factory=list)
    rewards: list[bandit.BanditReward] = field(default_factory=list)
    # Users not in the batch whose labels or exposures moved: they need a changelog entry too.
    swept: dict[str, UserState] = field(default_factory=dict)
    watermark: int | None = None


@dataclass(slots=True)
class ModelStage:
    """The models' memory across batches and their per-event and per-batch steps."""

    catalog: Mapping[str, Offer]
    label_config: labels.LabelConfig = labels.DEFAULT_CONFIG
    bandit_config: bandit.BanditConfig = bandit.DEFAULT_CONFIG
    clock: EventClock = field(default_factory=EventClock)
    # The propensity an exposure is logged with when the sender did not say (a uniform sender).
    default_propensity: float | None = None
    _due: list[tuple[int, str]] = field(default_factory=list)  # (event time, user) heap; stale entries skipped
    _next_due: dict[str, int] = field(default_factory=dict)

    # --- per event ----------------------------------------------------------------------------

    def on_event(self, state: UserState, event: Event, source: Hashable, now_ms: int, out: ModelOutput) -> None:
        """A newly folded (not duplicate) event of `state`'s user, from partition `source`."""
        at = event.ts_ms
        self.clock.observe(source, event_ms=at, wall_ms=now_ms)
        uid = state.user_id
        if isinstance(event, AppEvent) and event.type == "push_received":
            offer_id = event.campaign_id
            if offer_id and offer_id in self.catalog:
                exposures = self._exposures(state)
                context, _ = sanitise(model_inputs(state, at))
                exposures, _opened = bandit.expose(
                    exposures,
                    user_id=uid,
                    at_ms=at,
                    offer_id=offer_id,
                    context=context,
                    propensity=self.default_propensity or 1.0 / max(1, len(self.catalog)),
                    catalog=self.catalog,
                    config=self.bandit_config,
                )
                state.models[_EXPOSURES] = exposures.to_dict()
            return
        spend = event.total if isinstance(event, PurchaseEvent) else 0.0
        pending = self._labels(state)
        if pending.observations:
            pending, examples = labels.on_event(pending, at_ms=at, spend=spend, config=self.label_config)
            state.models[_LABELS] = pending.to_dict()
            out.examples.extend(examples)
        # Sampled per event, as of the user's latest event: which observations exist then
        # depends on the user's own events only, never on how they were cut into batches.
        if state.as_of is not None:
            self._observe(state, state.as_of)
        if isinstance(event, PurchaseEvent) and _EXPOSURES in state.models:
            exposures, rewards = bandit.on_purchase(
                self._exposures(state),
                at_ms=at,
                offer_id=event.offer_id,
                categories=[i.category for i in event.items if i.category],
                config=self.bandit_config,
            )
            state.models[_EXPOSURES] = exposures.to_dict()
            out.rewards.extend(rewards)

    # --- per batch ----------------------------------------------------------------------------

    def finish(self, out: ModelOutput, touched: Mapping[str, UserState], states: StateLookup, now_ms: int) -> None:
        """Advance to the watermark; call once per batch after every `on_event`."""
        watermark = self.clock.watermark(wall_ms=now_ms)
        out.watermark = watermark
        if watermark is None:
            for state in touched.values():
                self._track(state)
            return
        for state in touched.values():
            self._advance(state, watermark, out)
        while self._due and self._due[0][0] <= watermark:
            due, uid = heapq.heappop(self._due)
            if self._next_due.get(uid) != due or uid in touched:
                continue  # stale entry, or advanced above already
            del self._next_due[uid]
            silent = states.get(uid)
            if silent is None:
                continue  # no longer ours (revoked) or gone
            self._advance(silent, watermark, out)
            out.swept[uid] = silent

    def track(self, states: Iterable[UserState]) -> None:
        """Put users' coming deadlines in the due index (after recovery or an assignment)."""
        for state in states:
            self._track(state)

    # --- internals ----------------------------------------------------------------------------

    def _labels(self, state: UserState) -> labels.PendingLabels:
        raw = state.models.get(_LABELS)
        return labels.PendingLabels.from_dict(raw) if raw else labels.PendingLabels(user_id=state.user_id)

    def _exposures(self, state: UserState) -> bandit.Attribution:
        raw = state.models.get(_EXPOSURES)
        return bandit.Attribution.from_dict(raw) if raw else bandit.Attribution(user_id=state.user_id)

    def _observe(self, state: UserState, at_ms: int) -> None:
        pending = self._labels(state)
        last = pending.last_observed_at
        if last is not None and at_ms < last + self.label_config.sample_every_ms:
            return  # sampled out: skip computing the inputs
        inputs, _repairs = sanitise(model_inputs(state, at_ms))
        pending, kept = labels.observe(
            pending, user_id=state.user_id, at_ms=at_ms, inputs=inputs, scores={}, config=self.label_config
        )
        if kept:
            state.models[_LABELS] = pending.to_dict()

    def _advance(self, state: UserState, watermark: int, out: ModelOutput) -> None:
        if _LABELS in state.models:
            pending, examples = labels.advance(self._labels(state), watermark_ms=watermark, config=self.label_config)
            state.models[_LABELS] = pending.to_dict()
            out.examples.extend(examples)
        if _EXPOSURES in state.models:
            exposures, rewards = bandit.advance(
                self._exposures(state), watermark_ms=watermark, config=self.bandit_config
            )
            state.models[_EXPOSURES] = exposures.to_dict()
            out.rewards.extend(rewards)
        self._track(state)

    def _track(self, state: UserState) -> None:
        due = _next_deadline(state, self, self.label_config)
        uid = state.user_id
        if due is None:
            self._next_due.pop(uid, None)
            return
        if self._next_due.get(uid) != due:
            self._next_due[uid] = due
            heapq.heappush(self._due, (due, uid))


def _next_deadline(state: UserState, stage: ModelStage, config: labels.LabelConfig) -> int | None:
    deadlines: list[int] = []
    if _LABELS in state.models:
        label_due = labels.next_deadline(stage._labels(state), config)
        if label_due is not None:
            deadlines.append(label_due)
    if _EXPOSURES in state.models:
        window = stage.bandit_config.attribution_window_ms
        deadlines.extend(e.at_ms + window for e in stage._exposures(state).exposures)
    return min(deadlines) if deadlines else None


def model_stage_for(settings: Any) -> ModelStage:
    """The stage the settings describe: the offer catalog file, the churn horizon, the attribution window."""
    return ModelStage(
        catalog=by_id(load_offers(settings.offers_path)),
        label_config=labels.LabelConfig(churn_horizon_ms=settings.churn_horizon_ms),
        bandit_config=bandit.BanditConfig(attribution_window_ms=settings.attribution_window_ms),
    )
