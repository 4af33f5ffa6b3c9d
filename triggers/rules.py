"""The rule language: campaigns as data (deploy/config/rules.yaml), never as code.

A rule file has a `guardrails:` section (holdout share, quiet hours, caps)
and a list of `rules:`. Each rule says *when* it applies to a user's state
(conditions on the hash's fields, all of which must hold), how often
(`once_per`, `cooldown`), how to reach the user (`channels`, in order of
preference; `quiet_hours: delay | drop`; `transactional`) and *what* to say
(`message`, or weighted A/B `variants` split deterministically by user).
deploy/config/rules.yaml documents every key with examples.

A condition is one field and one or more operators:

    - churn_score: {gte: 0.7}
    - lifecycle: {in: [at_risk, dormant]}
    - last_add_to_cart_ts: {older_than: 30m, after: last_purchase_ts}
    - near_store: {within_m: 300}

Operators: eq, ne, lt, lte, gt, gte (numbers or text), in, not_in, between
[lo, hi] (inclusive), exists (true/false), older_than / newer_than (time
since an epoch-ms field, as of *now*, not as of the state's event time), and
after (the field's time is later than another field's, or that one is empty).
`near_store` is the geofence: within so many metres of a store of
deploy/config/stores.yaml, from the hash's lat/lon; it lets the message and
`once_per` name `store_id` and `store_name`.

A field that is missing or empty fails every operator but `exists: false`.

`load_rules(path)` checks the whole file before the service starts: an
unknown key, operator or channel, a bad duration, a template naming an
unknown placeholder... each is refused with the file, the line and the
reason (`RulesError`). Templates are `str.format` strings restricted to
plain names (`{first_name}`, not `{x.__class__}`), filled from the user's
fields and the offer's (`offer_id`, `offer_name`).

>>> rules = parse_rules('''
... version: 1
... rules:
...   - id: win_back
...     when:
...       - churn_score: {gte: 0.7}
...     once_per: [last_event_ts]
...     cooldown: 7d
...     channels: [push]
...     message: {body: "We miss you"}
... ''', source="inline")
>>> rule = rules.rules[0]
>>> rule.matches({"churn_score": "0.82"}, now_ms=0, stores=())
True
>>> rule.matches({"churn_score": "0.5"}, now_ms=0, stores=())
False
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import yaml

from nudge.errors import ConfigError

__all__ = [
    "CapLimits",
    "Condition",
    "GuardrailConfig",
    "Message",
    "Rule",
    "RuleSet",
    "RulesError",
    "Store",
    "Variant",
    "Wait",
    "distance_m",
    "load_rules",
    "load_stores",
    "parse_duration",
    "parse_rules",
    "parse_stores",
]

CHANNEL_NAMES: Final = ("push", "sms", "webhook")
NUMBER_OPS: Final = frozenset({"lt", "lte", "gt", "gte"})
TIME_OPS: Final = frozenset({"older_than", "newer_than"})
OPS: Final = frozenset({"eq", "ne", "in", "not_in", "between", "exists", "after", *NUMBER_OPS, *TIME_OPS})
_DURATION = re.compile(r"^(?P<n>[0-9]+(?:\.[0-9]+)?)(?P<unit>ms|s|m|h|d|w)$")
_UNIT_MS: Final = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 7 * 86_400_000}
_ID = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_CLOCK = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$")
EARTH_RADIUS_M: Final = 6_371_008.8


class RulesError(ConfigError):
    """A rule or store file cannot be used: the message names the file, the line and the reason."""


# --- YAML with line numbers ---------------------------------------------------------


class _Located(dict[str, Any]):
    line: int = 0
    key_lines: dict[str, int]


class _Loader(yaml.SafeLoader):
    """Safe YAML whose mappings remember their line (1-based), for error messages."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> _Located:
    loader.flatten_mapping(node)
    out = _Located()
    out.line = node.start_mark.line + 1
    out.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str):
            raise RulesError(f"line {key_node.start_mark.line + 1}: keys must be text, got {key!r}")
        if key in out:
            raise RulesError(f"line {key_node.start_mark.line + 1}: {key!r} is given twice")
        out[key] = loader.construct_object(value_node, deep=True)
        out.key_lines[key] = key_node.start_mark.line + 1
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _line(node: Any, parent: Any = None, key: str | None = None) -> int:
    if key is not None and isinstance(node, _Located) and key in node.key_lines:
        return node.key_lines[key]
    for candidate in (node, parent):
        if isinstance(candidate, _Located):
            return candidate.line
    return 0


class _Where:
    """Error messages that say where: `source:line: in rule 'x': reason`."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, node: Any, reason: str, parent: Any = None, key: str | None = None) -> RulesError:
        line = _line(node, parent, key)
        return RulesError(f"{self.source}:{line}: {reason}" if line else f"{self.source}: {reason}")


def _only(where: _Where, node: Any, allowed: set[str], what: str) -> None:
    if not isinstance(node, dict):
        raise where.fail(node, f"{what} must be a mapping, got {type(node).__name__}")
    unknown = sorted(set(node) - allowed)
    if unknown:
        raise where.fail(node, f"{what}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")


def parse_duration(text: Any) -> int:
    """A duration like 30m, 7d, 1.5h or 500ms in milliseconds.

    >>> parse_duration("30m"), parse_duration("1.5h"), parse_duration("7d")
    (1800000, 5400000, 604800000)
    """
    m = _DURATION.match(str(text).strip()) if isinstance(text, str | int | float) else None
    if m is None:
        raise ValueError(f"{text!r} is not a duration (a number and one of ms s m h d w, e.g. 30m or 7d)")
    return round(float(m["n"]) * _UNIT_MS[m["unit"]])


# --- the model ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Store:
    id: str
    name: str
    lat: float
    lon: float


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres (haversine).

    >>> round(distance_m(0.0, 0.0, 1.0, 0.0))  # one degree of latitude: 2 pi R / 360
    111195
    """
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


def _number(value: str | None) -> float | None:
    if value is None or value == "":
        return None
    try:
        x = float(value)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def _compare(op: str, have: str, want: Any) -> bool:
    """eq/ne/lt/... on numbers when both sides are numbers, else on text."""
    a, b = _number(have), _number(str(want)) if not isinstance(want, bool) else None
    if a is not None and b is not None:
        left: Any = a
        right: Any = b
    else:
        if op in NUMBER_OPS:
            return False  # "gold" > 3 has no meaning: the condition does not hold
        left, right = have, str(want)
    if op == "eq":
        return bool(left == right)
    if op == "ne":
        return bool(left != right)
    if op == "lt":
        return bool(left < right)
    if op == "lte":
        return bool(left <= right)
    if op == "gt":
        return bool(left > right)
    return bool(left >= right)  # gte


@dataclass(frozen=True, slots=True)
class Condition:
    """One field and its operators (all must hold); see the module docstring."""

    field: str
    ops: tuple[tuple[str, Any], ...]
    line: int = 0

    def holds(self, fields: Mapping[str, str], now_ms: int) -> bool:
        have = fields.get(self.field)
        present = have is not None and have != ""
        for op, want in self.ops:
            if op == "exists":
                if present != bool(want):
                    return False
                continue
            if not present:
                return False
            assert have is not None
            if op in TIME_OPS:
                ts = _number(have)
                if ts is None:
                    return False
                age = now_ms - ts
                if (op == "older_than" and age < want) or (op == "newer_than" and age > want):
                    return False
            elif op == "after":
                ts, other = _number(have), _number(fields.get(want))
                if ts is None or (other is not None and ts <= other):
                    return False
            elif op in ("in", "not_in"):
                inside = any(_compare("eq", have, w) for w in want)
                if inside != (op == "in"):
                    return False
            elif op == "between":
                if not (_compare("gte", have, want[0]) and _compare("lte", have, want[1])):
                    return False
            elif not _compare(op, have, want):
                return False
        return True


@dataclass(frozen=True, slots=True)
class Message:
    title: str
    body: str

    def render(self, values: Mapping[str, str]) -> tuple[str, str]:
        """(title, body) with the placeholders filled; a missing value renders empty."""
        filled = _Defaulting(values)
        return self.title.format_map(filled), self.body.format_map(filled)


class _Defaulting(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return ""


@dataclass(frozen=True, slots=True)
class Variant:
    id: str
    weight: float
    message: Message


@dataclass(frozen=True, slots=True)
class Wait:
    """Wait-for: the rule fires `for_ms` after the time in field `after`, if it still holds then."""

    after: str
    for_ms: int


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    priority: int
    when: tuple[Condition, ...]
    once_per: tuple[str, ...]
    cooldown_ms: int | None  # None: once per episode, forever
    channels: tuple[str, ...]
    quiet_hours: Literal["delay", "drop"]
    transactional: bool
    holdout: float | None  # None: the global holdout
    offer: bool | str  # True: the user's next-best offer (nbo_offer); an id: that catalog offer
    variants: tuple[Variant, ...]
    wait: Wait | None = None
    near_store_m: float | None = None
    max_age_ms: int | None = None
    line: int = 0

    def matches(self, fields: Mapping[str, str], now_ms: int, stores: Sequence[Store]) -> bool:
        """Whether every condition holds on `fields` as of `now_ms` (the wait is not checked here)."""
        if self.near_store_m is not None and nearest_store(fields, stores, self.near_store_m) is None:
            return False
        return all(c.holds(fields, now_ms) for c in self.when)

    def due_at(self, fields: Mapping[str, str]) -> int | None:
        """For a wait-for rule: when it may fire (epoch ms), or None if its anchor field is empty."""
        if self.wait is None:
            return None
        anchor = _number(fields.get(self.wait.after))
        return None if anchor is None else int(anchor) + self.wait.for_ms


def nearest_store(fields: Mapping[str, str], stores: Sequence[Store], within_m: float) -> Store | None:
    """The nearest store within `within_m` metres of the user's last location, or None."""
    lat, lon = _number(fields.get("lat")), _number(fields.get("lon"))
    if lat is None or lon is None:
        return None
    best: tuple[float, Store] | None = None
    for store in stores:
        d = distance_m(lat, lon, store.lat, store.lon)
        if d <= within_m and (best is None or d < best[0]):
            best = (d, store)
    return None if best is None else best[1]


@dataclass(frozen=True, slots=True)
class CapLimits:
    day: int | None
    week: int | None


@dataclass(frozen=True, slots=True)
class GuardrailConfig:
    """The guardrails' defaults (the rule file's `guardrails:` section)."""

    holdout: float = 0.10
    quiet_start_min: int = 22 * 60
    quiet_end_min: int = 8 * 60
    caps: Mapping[str, CapLimits] = field(
        default_factory=lambda: {
            "push": CapLimits(2, 6),
            "sms": CapLimits(1, 3),
            "webhook": CapLimits(5, 20),
            "all": CapLimits(3, 8),
        }
    )


@dataclass(frozen=True, slots=True)
class RuleSet:
    guardrails: GuardrailConfig
    rules: tuple[Rule, ...]  # by priority, highest first
    source: str = ""

    def by_id(self) -> dict[str, Rule]:
        return {r.id: r for r in self.rules}


# --- parsing --------------------------------------------------------------------------

_RULE_KEYS = {
    "id",
    "priority",
    "when",
    "once_per",
    "cooldown",
    "channels",
    "quiet_hours",
    "transactional",
    "holdout",
    "offer",
    "message",
    "variants",
    "wait",
    "max_state_age",
    "description",
}


def load_rules(path: str | Path) -> RuleSet:
    """The rule file at `path`, checked whole (RulesError with the line of the first problem)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RulesError(f"{p}: cannot read the rule file ({exc.__class__.__name__}: {exc})") from None
    return parse_rules(text, source=str(p))


def parse_rules(text: str, *, source: str = "rules.yaml") -> RuleSet:
    where = _Where(source)
    try:
        doc = yaml.load(text, Loader=_Loader)  # a SafeLoader subclass
    except RulesError as exc:
        raise RulesError(f"{source}:{str(exc).removeprefix('line ')}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise RulesError(f"{source}{line}: not valid YAML ({getattr(exc, 'problem', None) or exc})") from None
    _only(where, doc, {"version", "guardrails", "rules"}, "the rule file")
    if doc.get("version") != 1:
        raise where.fail(doc, f"version must be 1, got {doc.get('version')!r}")
    guardrails = _guardrails(where, doc.get("guardrails") or _Located(), doc)
    raw_rules = doc.get("rules")
    if not isinstance(raw_rules, list) or not raw_rules:
        raise where.fail(doc, "'rules' must be a non-empty list")
    rules: list[Rule] = []
    seen: dict[str, int] = {}
    for raw in raw_rules:
        rule = _rule(where, raw, doc)
        if rule.id in seen:
            raise where.fail(raw, f"rule id {rule.id!r} is used twice (first on line {seen[rule.id]})")
        seen[rule.id] = rule.line
        rules.append(rule)
    rules.sort(key=lambda r: (-r.priority, r.line))
    return RuleSet(guardrails, tuple(rules), source)


def _share(where: _Where, node: Any, value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
        raise where.fail(node, f"{what} must be a share in [0, 1), e.g. 0.1 for 10 %, got {value!r}")
    return float(value)


def _clock(where: _Where, node: Any, value: Any, what: str) -> int:
    m = _CLOCK.match(str(value)) if isinstance(value, str) else None
    if m is None:
        raise where.fail(node, f"{what} must be a time of day HH:MM (quoted), got {value!r}")
    return int(m[1]) * 60 + int(m[2])


def _guardrails(where: _Where, node: Any, parent: Any) -> GuardrailConfig:
    _only(where, node, {"holdout", "quiet_hours", "caps"}, "guardrails")
    default = GuardrailConfig()
    holdout = _share(where, node, node.get("holdout", default.holdout), "guardrails.holdout")
    start, end = default.quiet_start_min, default.quiet_end_min
    if "quiet_hours" in node:
        q = node["quiet_hours"]
        _only(where, q, {"start", "end"}, "guardrails.quiet_hours")
        start = _clock(where, q, q.get("start"), "quiet_hours.start")
        end = _clock(where, q, q.get("end"), "quiet_hours.end")
    caps = dict(default.caps)
    if "caps" in node:
        raw_caps = node["caps"]
        _only(where, raw_caps, {*CHANNEL_NAMES, "all"}, "guardrails.caps")
        for name, limits in raw_caps.items():
            _only(where, limits, {"day", "week"}, f"caps.{name}")
            values = []
            for period in ("day", "week"):
                v = limits.get(period)
                if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                    raise where.fail(limits, f"caps.{name}.{period} must be a whole number >= 0, got {v!r}")
                values.append(v)
            caps[name] = CapLimits(values[0], values[1])
    return GuardrailConfig(holdout, start, end, caps)


def _rule(where: _Where, raw: Any, parent: Any) -> Rule:
    if not isinstance(raw, dict):
        raise where.fail(raw, f"each rule must be a mapping, got {type(raw).__name__}", parent)
    rid = raw.get("id")
    if not isinstance(rid, str) or not _ID.match(rid):
        raise where.fail(raw, f"rule id must be lower case [a-z][a-z0-9_]*, up to 64 characters, got {rid!r}")
    w = where

    def fail(reason: str, node: Any = raw, key: str | None = None) -> RulesError:
        """The error, on the line of `key` in the rule when given, else of `node`."""
        return w.fail(node, f"rule {rid!r}: {reason}", raw, key=key)

    unknown = sorted(set(raw) - _RULE_KEYS)
    if unknown:
        raise fail(f"unknown key {unknown[0]!r} (allowed: {', '.join(sorted(_RULE_KEYS))})", key=unknown[0])
    priority = raw.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise fail(f"priority must be a whole number (higher wins), got {priority!r}", key="priority")
    conditions, near = _conditions(raw.get("when"), fail)
    once_per = raw.get("once_per")
    if (
        not isinstance(once_per, list)
        or not once_per
        or not all(isinstance(f, str) and f for f in once_per)
        or len(set(once_per)) != len(once_per)
    ):
        raise fail(
            "once_per must list the fields that tell one episode from the next "
            "(e.g. [last_add_to_cart_ts]: one message per abandoned cart)",
            key="once_per",
        )
    if "store_id" in once_per and near is None:
        raise fail("once_per names store_id, but the rule has no near_store condition", key="once_per")
    cooldown = raw.get("cooldown")
    if cooldown is None:
        raise fail("cooldown is required: a duration such as 7d, or 'forever'")
    try:
        cooldown_ms = None if cooldown == "forever" else parse_duration(cooldown)
    except ValueError as exc:
        raise fail(f"cooldown: {exc}", key="cooldown") from None
    channels = raw.get("channels", ["push", "sms"])
    if (
        not isinstance(channels, list)
        or not channels
        or any(c not in CHANNEL_NAMES for c in channels)
        or len(set(channels)) != len(channels)
    ):
        raise fail(
            f"channels must list some of {', '.join(CHANNEL_NAMES)} in order of preference, got {channels!r}",
            key="channels",
        )
    quiet = raw.get("quiet_hours", "delay")
    if quiet not in ("delay", "drop"):
        raise fail(f"quiet_hours must be delay or drop, got {quiet!r}", key="quiet_hours")
    transactional = raw.get("transactional", False)
    if not isinstance(transactional, bool):
        raise fail(f"transactional must be true or false, got {transactional!r}", key="transactional")
    offer = raw.get("offer", False)
    if not isinstance(offer, bool) and not (isinstance(offer, str) and _ID.match(offer)):
        raise fail(
            f"offer must be true (the user's next-best offer), false, or an offer id from the catalog, got {offer!r}",
            key="offer",
        )
    holdout = raw.get("holdout")
    if holdout is not None:
        holdout = _share(w, raw, holdout, f"rule {rid!r}: holdout")
    wait = None
    if "wait" in raw:
        node = raw["wait"]
        if not isinstance(node, dict) or set(node) != {"after", "for"} or not isinstance(node["after"], str):
            raise fail(
                "wait must be {after: <time field>, for: <duration>}, e.g. {after: last_add_to_cart_ts, for: 30m}"
            )
        try:
            wait = Wait(node["after"], parse_duration(node["for"]))
        except ValueError as exc:
            raise fail(f"wait.for: {exc}", key="wait") from None
    max_age = None
    if "max_state_age" in raw:
        try:
            max_age = parse_duration(raw["max_state_age"])
        except ValueError as exc:
            raise fail(f"max_state_age: {exc}", key="max_state_age") from None
    variants = _variants(raw, fail, offer=offer is not False, near=near is not None)
    return Rule(
        id=rid,
        priority=priority,
        when=conditions,
        once_per=tuple(once_per),
        cooldown_ms=cooldown_ms,
        channels=tuple(channels),
        quiet_hours=quiet,
        transactional=transactional,
        holdout=holdout,
        offer=offer,
        variants=variants,
        wait=wait,
        near_store_m=near,
        max_age_ms=max_age,
        line=_line(raw),
    )


def _conditions(node: Any, fail: Any) -> tuple[tuple[Condition, ...], float | None]:
    if not isinstance(node, list) or not node:
        raise fail("when must be a non-empty list of conditions, e.g. [{churn_score: {gte: 0.7}}]")
    out: list[Condition] = []
    near: float | None = None
    for item in node:
        if not isinstance(item, dict) or len(item) != 1:
            raise fail("each condition is one field and its operators, e.g. {churn_score: {gte: 0.7}}", item)
        ((name, ops),) = item.items()
        if not isinstance(ops, dict) or not ops:
            raise fail(f"condition on {name!r}: give operators as a mapping, e.g. {{gte: 0.7}}", item)
        if name == "near_store":
            if (
                set(ops) != {"within_m"}
                or isinstance(ops["within_m"], bool)
                or not isinstance(ops["within_m"], int | float)
                or not 0 < ops["within_m"] <= 100_000
            ):
                raise fail("near_store takes {within_m: metres}, 0 < metres <= 100000", item)
            near = float(ops["within_m"])
            continue
        parsed: list[tuple[str, Any]] = []
        for op, want in ops.items():
            if op not in OPS:
                raise fail(f"condition on {name!r}: unknown operator {op!r} (allowed: {', '.join(sorted(OPS))})", item)
            parsed.append((op, _operand(op, name, want, fail, item)))
        out.append(Condition(name, tuple(parsed), _line(item)))
    return tuple(out), near


def _operand(op: str, name: str, want: Any, fail: Any, item: Any) -> Any:
    what = f"condition on {name!r}: {op}"
    if op in TIME_OPS:
        try:
            return parse_duration(want)
        except ValueError as exc:
            raise fail(f"{what}: {exc}", item) from None
    if op in ("in", "not_in"):
        if not isinstance(want, list) or not want or any(isinstance(v, dict | list) for v in want):
            raise fail(f"{what} needs a non-empty list of values", item)
        return tuple(want)
    if op == "between":
        if not isinstance(want, list) or len(want) != 2 or any(_number(str(v)) is None for v in want):
            raise fail(f"{what} needs [low, high] numbers", item)
        return (float(want[0]), float(want[1]))
    if op == "exists":
        if not isinstance(want, bool):
            raise fail(f"{what} must be true or false", item)
        return want
    if op == "after":
        if not isinstance(want, str) or not want:
            raise fail(f"{what} needs another time field's name", item)
        return want
    if isinstance(want, dict | list) or want is None:
        raise fail(f"{what} needs a single value", item)
    if op in NUMBER_OPS and _number(str(want)) is None:
        raise fail(f"{what} needs a number, got {want!r}", item)
    return want


def _template(text: Any, what: str, fail: Any, node: Any, *, required: bool) -> str:
    if text is None and not required:
        return ""
    if not isinstance(text, str) or (required and not text.strip()):
        raise fail(f"{what} must be text", node)
    try:
        parts = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise fail(f"{what}: {exc} (write {{{{ and }}}} for literal braces)", node) from None
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name) or spec or conversion:
            raise fail(f"{what}: placeholder {{{name}}} must be a plain field name, without format or attribute", node)
    return text


def _message(node: Any, what: str, fail: Any, *, offer: bool, near: bool) -> Message:
    if not isinstance(node, dict) or not set(node) <= {"title", "body"}:
        raise fail(f"{what} must be {{title: ..., body: ...}}", node)
    title = _template(node.get("title"), f"{what}.title", fail, node, required=False)
    body = _template(node.get("body"), f"{what}.body", fail, node, required=True)
    for text in (title, body):
        for _, name, _, _ in string.Formatter().parse(text):
            if name in ("offer_id", "offer_name") and not offer:
                raise fail(f"{what}: {{{name}}} needs `offer:` on the rule (true or an offer id)", node)
            if name in ("store_id", "store_name") and not near:
                raise fail(f"{what}: {{{name}}} needs a near_store condition", node)
    return Message(title, body)


def _variants(raw: Any, fail: Any, *, offer: bool, near: bool) -> tuple[Variant, ...]:
    if ("message" in raw) == ("variants" in raw):
        raise fail("give either message or variants (A/B), not both and not neither")
    if "message" in raw:
        return (Variant("default", 1.0, _message(raw["message"], "message", fail, offer=offer, near=near)),)
    node = raw["variants"]
    if not isinstance(node, list) or len(node) < 2:
        raise fail("variants must list two or more {id, weight, message}")
    out: list[Variant] = []
    for v in node:
        if not isinstance(v, dict) or not set(v) <= {"id", "weight", "message"}:
            raise fail("each variant is {id, weight, message}", v)
        vid, weight = v.get("id"), v.get("weight", 1)
        if not isinstance(vid, str) or not _ID.match(vid) or vid in {o.id for o in out}:
            raise fail(f"variant id must be unique, lower case [a-z][a-z0-9_]*, got {vid!r}", v)
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not weight > 0:
            raise fail(f"variant {vid!r}: weight must be a number > 0, got {weight!r}", v)
        out.append(
            Variant(vid, float(weight), _message(v.get("message"), f"variant {vid!r}", fail, offer=offer, near=near))
        )
    return tuple(out)


# --- stores ---------------------------------------------------------------------------


def load_stores(path: str | Path) -> tuple[Store, ...]:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RulesError(f"{p}: cannot read the store file ({exc.__class__.__name__}: {exc})") from None
    return parse_stores(text, source=str(p))


def parse_stores(text: str, *, source: str = "stores.yaml") -> tuple[Store, ...]:
    """Stores: `version: 1` and `stores: [{id, name, lat, lon}]`, ids unique."""
    where = _Where(source)
    try:
        doc = yaml.load(text, Loader=_Loader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise RulesError(f"{source}: not valid YAML ({exc})") from None
    _only(where, doc, {"version", "stores"}, "the store file")
    if doc.get("version") != 1 or not isinstance(doc.get("stores"), list):
        raise where.fail(doc, "expected version: 1 and a list of stores")
    out: list[Store] = []
    for s in doc["stores"]:
        _only(where, s, {"id", "name", "lat", "lon"}, "a store")
        sid, name, lat, lon = s.get("id"), s.get("name"), s.get("lat"), s.get("lon")
        if not isinstance(sid, str) or not _ID.match(sid) or sid in {o.id for o in out}:
            raise where.fail(s, f"store id must be unique, lower case [a-z][a-z0-9_]*, got {sid!r}")
        if not isinstance(name, str) or not name:
            raise where.fail(s, f"store {sid!r}: name must be text")
        for what, v, bound in (("lat", lat, 90), ("lon", lon, 180)):
            if isinstance(v, bool) or not isinstance(v, int | float) or not -bound <= v <= bound:
                raise where.fail(s, f"store {sid!r}: {what} must be a number in [-{bound}, {bound}], got {v!r}")
        out.append(Store(sid, name, float(lat), float(lon)))
    return tuple(out)
