"""The outbox contract: one message to send, trigger service -> topic `notifications` -> delivery.

A `Notification` is JSON (UTF-8), keyed by user_id, one per decision that
was "sent" (a delayed decision is published with a later `send_at`). It
carries everything a delivery worker needs, so delivery never reads the
user's state: the channel and its address (`to`: the push token or the
E.164 phone number, chosen by the guardrails when the decision was made),
the rendered text, and the `idempotency_key` that the send ledger and the
providers use so that one decision reaches a phone at most once.

`to` is personal data: it is never logged unmasked (`nudge.logs.redact_event`
masks it as it masks `push_token` and `phone`).

Messages that finally fail go to `notifications-dlq` with the same body
and the reason in the `reason` header (as the input dead letters do).

>>> n = Notification(idempotency_key="k" * 64, decision_id="d1", user_id="u1", rule="welcome",
...     variant="a", channel="push", to="tok", title="Hi", body="Welcome!", campaign_id="welcome",
...     decided_at=1, send_at=1, expires_at=2)
>>> Notification.from_json(n.to_json()) == n
True
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from nudge.events import Id

__all__ = ["CHANNELS", "Channel", "Notification"]

Channel = Literal["push", "sms", "webhook"]
CHANNELS: tuple[Channel, ...] = ("push", "sms", "webhook")
EpochMs = Annotated[int, Field(ge=0, lt=10**14, strict=True)]


class Notification(BaseModel):
    """One message to deliver; see the module docstring for who writes and reads it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    # sha256 hex of (rule, user, the moment that triggered it): the same decision
    # replayed or redelivered has the same key; the send ledger holds one send per key.
    idempotency_key: Annotated[str, Field(pattern=r"^[0-9a-zA-Z_-]{16,128}$")]
    decision_id: Id
    user_id: Id
    rule: Id
    variant: Annotated[str, Field(max_length=64)]
    channel: Channel
    # push: the device's FCM registration token; sms: E.164 phone; webhook: the user id.
    to: Annotated[str, Field(min_length=1, max_length=4096)]
    title: Annotated[str, Field(max_length=200)] = ""
    body: Annotated[str, Field(min_length=1, max_length=1600)]
    # What the app reports back on push_received / push_opened / sms_clicked:
    # the offer id when the message carries an offer (the bandit's exposures), else the rule.
    campaign_id: Annotated[str, Field(min_length=1, max_length=128)]
    offer_id: Annotated[str, Field(max_length=128)] | None = None
    transactional: bool = False
    decided_at: EpochMs
    send_at: EpochMs  # not before (after quiet hours, for a delayed decision)
    expires_at: EpochMs  # not after: a stale message is dropped to the dead letters, not sent late
    data: dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=1024)]] = Field(
        default_factory=dict, max_length=32
    )

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> Notification:
        """Parse and validate (pydantic's ValidationError on a malformed message)."""
        return cls.model_validate_json(raw)
