"""The event contract (docs/contracts.md "Events"), schema version 1.

One pydantic model per event family, joined into a union discriminated by
`type`. `parse_event(raw_bytes)` is the single gate every consumer uses: it
returns an `Event` or a `Rejection` carrying a machine-readable reason, so a
bad message becomes a value to send to the dead-letter topic, never an
exception.

>>> ev = parse_event(b'{"event_id":"e1","type":"page_view","user_id":"u1",'
...                  b'"ts":1700000000000,"schema_version":1,"item_id":"i1"}')
>>> ev.topic_kind, ev.ts_ms
('clicks', 1700000000000)
>>> parse_event(b'{"type":"teleport"}').reason
'unknown_type'
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    field_validator,
)
from pydantic_core import PydanticCustomError

__all__ = [
    "CLICK_TYPES",
    "EVENT_TYPES",
    "SCHEMA_VERSION",
    "SYSTEM_TYPES",
    "TOPIC_OF_TYPE",
    "AppEvent",
    "ClickEvent",
    "ConsentEvent",
    "Event",
    "LocationEvent",
    "ProfileUpdateEvent",
    "PurchaseEvent",
    "PurchaseItem",
    "Rejection",
    "event_adapter",
    "id_problem",
    "parse_event",
    "parse_event_obj",
]

SCHEMA_VERSION = 1
MAX_EVENT_BYTES = 64 * 1024

MAX_ID_CHARS = 128
# Every number the contract accepts is bounded, so no fold downstream can overflow
# (1e308 * 100 cents is inf): money in the currency's major unit, item quantities.
MAX_AMOUNT = 1e12
MAX_QUANTITY = 100_000
# Event time: epoch ms from 1970 up to the year 5138, whichever form `ts` takes.
MAX_EPOCH_MS = 10**14

# C0/C1 control characters (a terminal escape among them) and lone surrogates (what
# undecodable bytes become in argv) have no place in an id.
_ID_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def id_problem(text: str) -> str | None:
    """Why `text` is not a valid id (user_id, event_id, ...), or None: the one rule for every edge.

    >>> id_problem("u00042") is None
    True
    >>> id_problem("   ")
    'is blank'
    >>> id_problem("probe-\\udcff")
    'holds a control character or undecodable byte at position 6'
    """
    if not text or text.isspace():
        return "is blank" if text else "is empty"
    if len(text) > MAX_ID_CHARS:
        return f"has {len(text)} characters, more than {MAX_ID_CHARS}"
    bad = _ID_FORBIDDEN.search(text)
    if bad is not None:
        return f"holds a control character or undecodable byte at position {bad.start()}"
    return None


def _valid_id(v: str) -> str:
    problem = id_problem(v)
    if problem is not None:
        raise PydanticCustomError("invalid_value", "id {problem}", {"problem": problem})
    return v


Id = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_ID_CHARS,
        strict=True,
        description="not blank, no control characters",
        # JSON Schema's pattern: at least one non-space character, no C0/C1 control character.
        json_schema_extra={"pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f]*\\S[^\\u0000-\\u001f\\u007f-\\u009f]*$"},
    ),
    AfterValidator(_valid_id),
]
Money = Annotated[float, Field(ge=0, le=MAX_AMOUNT, allow_inf_nan=False, strict=True)]


def _to_epoch_ms(v: Any) -> int:
    # JSON true/1.5 must not sneak in as a timestamp, nor a time without offset.
    if isinstance(v, bool) or not isinstance(v, int | str):
        raise PydanticCustomError("wrong_type", "ts must be an RFC 3339 string with offset or integer epoch ms")
    if isinstance(v, str):
        try:
            parsed = datetime.fromisoformat(v)
        except ValueError:
            raise PydanticCustomError("invalid_value", "ts is not an RFC 3339 timestamp") from None
        if parsed.tzinfo is None:
            raise PydanticCustomError("invalid_value", "ts has no UTC offset")
        v = int(parsed.timestamp() * 1000)
    epoch_ms: int = v
    if not 0 <= epoch_ms < MAX_EPOCH_MS:
        raise PydanticCustomError("invalid_value", "ts out of range (1970 to epoch ms 10^14)")
    return epoch_ms


Timestamp = Annotated[
    int,
    BeforeValidator(_to_epoch_ms),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "format": "date-time", "description": "RFC 3339 with offset"},
                {"type": "integer", "minimum": 0, "description": "epoch milliseconds"},
            ]
        }
    ),
]

CLICK_TYPES = ("page_view", "product_view", "add_to_cart", "remove_from_cart", "search")
APP_TYPES = ("install", "app_open", "app_close", "push_received", "push_opened", "sms_clicked", "message_sent")
# Records nudge writes itself (a message a provider accepted), not the user's doing: the stream
# worker never folds them into the user's features (streams/step.py).
SYSTEM_TYPES: frozenset[str] = frozenset({"message_sent"})


class _Envelope(BaseModel):
    """Fields every event carries. Unknown extra fields are ignored, so
    producers can add fields before consumers know them."""

    model_config = ConfigDict(extra="ignore", frozen=True, strict=False)

    topic_kind: ClassVar[str]

    event_id: Id
    user_id: Id
    ts: Timestamp
    schema_version: Literal[1]

    @property
    def ts_ms(self) -> int:
        """Event time as epoch milliseconds (the validated `ts`)."""
        return self.ts


class ClickEvent(_Envelope):
    """Browsing on web or app: topic `clicks`."""

    topic_kind = "clicks"
    type: Literal["page_view", "product_view", "add_to_cart", "remove_from_cart", "search"]
    item_id: Id | None = None
    category: Annotated[str, Field(max_length=128)] | None = None
    price: Money | None = None
    session_id: Annotated[str, Field(max_length=128)] | None = None
    query: Annotated[str, Field(max_length=512)] | None = None


class PurchaseItem(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    item_id: Id
    category: Annotated[str, Field(max_length=128)] | None = None
    price: Money
    quantity: Annotated[int, Field(ge=1, le=MAX_QUANTITY, strict=True)] = 1


class PurchaseEvent(_Envelope):
    """A completed order: topic `purchases`."""

    topic_kind = "purchases"
    type: Literal["purchase"]
    order_id: Id
    items: Annotated[list[PurchaseItem], Field(min_length=1, max_length=1000)]
    total: Money
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
    offer_id: Id | None = None


class AppEvent(_Envelope):
    """App lifecycle and message feedback: topic `app-events`.

    `message_sent` is written by `nudge deliver` when a provider accepted a
    message (campaign_id = its offer, or its rule; `channel`); the others come
    from the app (`push_received`: the device got it)."""

    topic_kind = "app-events"
    type: Literal["install", "app_open", "app_close", "push_received", "push_opened", "sms_clicked", "message_sent"]
    campaign_id: Annotated[str, Field(max_length=128)] | None = None
    # message_sent only: the channel the provider accepted the message on.
    channel: Literal["push", "sms", "webhook"] | None = None


class ConsentEvent(_Envelope):
    """Consent given or withdrawn for one channel."""

    topic_kind = "app-events"
    type: Literal["opt_in", "opt_out"]
    channel: Literal["push", "sms"]


class ProfileUpdateEvent(_Envelope):
    """Profile fields the triggers need (time zone, contact points)."""

    topic_kind = "app-events"
    type: Literal["profile_update"]
    timezone: Annotated[str, Field(max_length=64)] | None = None
    locale: Annotated[str, Field(max_length=35)] | None = None
    push_token: Annotated[str, Field(max_length=4096)] | None = None
    phone: Annotated[str, Field(pattern=r"^\+[1-9][0-9]{6,14}$")] | None = None

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str | None) -> str | None:
        if v is None:
            return v
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown IANA time zone {v!r}") from None
        return v


class LocationEvent(_Envelope):
    """A device location fix."""

    topic_kind = "app-events"
    type: Literal["location"]
    lat: Annotated[float, Field(ge=-90, le=90, strict=True)]
    lon: Annotated[float, Field(ge=-180, le=180, strict=True)]


Event = Annotated[
    ClickEvent | PurchaseEvent | AppEvent | ConsentEvent | ProfileUpdateEvent | LocationEvent,
    Field(discriminator="type"),
]
event_adapter: TypeAdapter[Event] = TypeAdapter(Event)

_MODELS: tuple[type[_Envelope], ...] = (
    ClickEvent,
    PurchaseEvent,
    AppEvent,
    ConsentEvent,
    ProfileUpdateEvent,
    LocationEvent,
)
TOPIC_OF_TYPE: dict[str, str] = {
    t: m.topic_kind
    for m in _MODELS
    for t in m.model_fields["type"].annotation.__args__  # type: ignore[union-attr]
}
EVENT_TYPES = tuple(TOPIC_OF_TYPE)


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a message is not a valid event. `reason` is one of REASONS."""

    reason: str
    detail: str

    REASONS: ClassVar[tuple[str, ...]] = (
        "too_large",
        "not_utf8",
        "not_json",
        "not_object",
        "unknown_type",
        "unsupported_schema_version",
        "missing_field",
        "wrong_type",
        "invalid_value",
        "future_timestamp",
    )


# pydantic error type -> our reason. Anything unlisted is "invalid_value".
_WRONG_TYPE = {
    "string_type",
    "int_type",
    "float_type",
    "list_type",
    "dict_type",
    "model_type",
    "bool_type",
    "int_from_float",
    "datetime_type",
    "model_attributes_type",
    "string_sub_type",
    "datetime_from_date_parsing",
    "int_parsing",
    "float_parsing",
}


def _rejection_from(exc: ValidationError) -> Rejection:
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    loc = ".".join(str(p) for p in first["loc"])
    kind = first["type"]
    if kind == "union_tag_invalid":
        # pydantic's message repeats the client's value: name the known types instead.
        return Rejection("unknown_type", f"type is not one of {', '.join(EVENT_TYPES)}")
    elif kind == "union_tag_not_found":
        reason = "missing_field"
        loc = "type"
    elif kind == "missing":
        reason = "missing_field"
    elif loc.endswith("schema_version") and kind == "literal_error":
        reason = "unsupported_schema_version"
    elif kind in _WRONG_TYPE or kind == "wrong_type":
        reason = "wrong_type"
    else:
        reason = "invalid_value"
    # Skip the union tag in the path ("page_view.price" -> "price").
    parts = loc.split(".", 1)
    if len(parts) == 2 and parts[0] in TOPIC_OF_TYPE:
        loc = parts[1]
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return Rejection(reason, f"{loc}: {first['msg']}{more}")


def parse_event_obj(obj: Any, *, now_ms: int | None = None, max_future_ms: int = 7 * 86_400_000) -> Event | Rejection:
    """Validate an already-decoded JSON value."""
    if not isinstance(obj, dict):
        return Rejection("not_object", f"expected a JSON object, got {type(obj).__name__}")
    try:
        event: Event = event_adapter.validate_python(obj)
    except ValidationError as exc:
        return _rejection_from(exc)
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    if event.ts_ms > now_ms + max_future_ms:
        return Rejection("future_timestamp", f"ts {event.ts_ms} is more than {max_future_ms} ms after now ({now_ms})")
    return event


def parse_event(
    raw: bytes | None,
    *,
    now_ms: int | None = None,
    max_bytes: int = MAX_EVENT_BYTES,
    max_future_ms: int = 7 * 86_400_000,
) -> Event | Rejection:
    """Decode and validate one Kafka message value."""
    if raw is None:
        return Rejection("not_json", "empty message (tombstone)")
    if len(raw) > max_bytes:
        return Rejection("too_large", f"{len(raw)} bytes > {max_bytes}")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejection("not_utf8", f"byte {exc.start}: {exc.reason}")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return Rejection("not_json", str(exc)[:200])
    return parse_event_obj(obj, now_ms=now_ms, max_future_ms=max_future_ms)


def dump_event(event: _Envelope) -> bytes:
    """Canonical JSON of an event, as producers send it (unset fields left out)."""
    return orjson.dumps(event.model_dump(mode="json", exclude_none=True))
