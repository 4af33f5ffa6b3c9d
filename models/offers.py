"""The offer catalog (deploy/config/offers.yaml): the arms of the next-best-offer bandit.

The file is read once at start and checked whole: unknown keys, a kind we do
not know, a category outside the item catalog, a value that makes no sense
for its kind or an id used twice stop the loader with one `OfferCatalogError`
(a `ValueError`, and a `ConfigError` for the CLI edge) naming the file, the
offer and the field. The result is a tuple of frozen `Offer` values in file
order; that order is the bandit's arm order, so keep new offers at the end.

>>> catalog = parse_offers('''
... version: 1
... offers:
...   - {id: fashion30, name: "30% off fashion", category: fashion, kind: percent_off, value: 30, channel: push}
... ''', source="inline")
>>> catalog[0].category, catalog[0].value
('fashion', 30.0)
>>> parse_offers("version: 1\\noffers: []", source="inline")
Traceback (most recent call last):
...
models.offers.OfferCatalogError: inline: offers: the catalog lists no offer
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from nudge.errors import ConfigError

__all__ = [
    "CATEGORIES",
    "DEFAULT_OFFERS_PATH",
    "KINDS",
    "Offer",
    "OfferCatalogError",
    "by_id",
    "load_offers",
    "parse_offers",
]

DEFAULT_OFFERS_PATH = Path("deploy/config/offers.yaml")

# The item catalog's categories (the simulator's CATEGORIES; a unit test keeps them
# in step). A typo here would make an offer's category match no purchase, silently.
CATEGORIES: tuple[str, ...] = ("electronics", "fashion", "home", "beauty", "sports", "books", "grocery", "toys")
KINDS: tuple[str, ...] = ("percent_off", "amount_off", "free_shipping", "bundle")

Kind = Literal["percent_off", "amount_off", "free_shipping", "bundle"]
Channel = Literal["push", "sms"]


class OfferCatalogError(ConfigError, ValueError):
    """The offer catalog file cannot be used; the message names the file, the offer and the field."""


@dataclass(frozen=True, slots=True)
class Offer:
    """One offer the trigger service may send: one arm of the bandit.

    `category` is None for a sitewide offer. `value` is read according to
    `kind` (see the file's header): percent off, amount off, minimum basket
    for free shipping, or N in "buy N, pay for N-1".
    """

    id: str
    name: str
    category: str | None
    kind: str
    value: float
    channel: str


class _OfferSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)

    id: Annotated[str, Field(pattern=r"^[a-z0-9_-]+$", min_length=1, max_length=64)]
    name: Annotated[str, Field(min_length=1, max_length=200)]
    category: str | None
    kind: Kind
    value: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    channel: Channel

    @field_validator("category")
    @classmethod
    def _known_category(cls, v: str | None) -> str | None:
        if v is not None and v not in CATEGORIES:
            raise ValueError(f"unknown category {v!r}; the catalog's are {', '.join(CATEGORIES)}")
        return v

    @model_validator(mode="after")
    def _value_fits_kind(self) -> _OfferSpec:
        v = self.value
        if self.kind == "percent_off" and not 0 < v < 100:
            raise ValueError(f"percent_off needs 0 < value < 100, got {v:g}")
        if self.kind == "amount_off" and v <= 0:
            raise ValueError(f"amount_off needs value > 0, got {v:g}")
        if self.kind == "bundle" and (v < 2 or v != int(v)):
            raise ValueError(f"bundle needs a whole value N >= 2 ('buy N, pay for N-1'), got {v:g}")
        return self


class _CatalogFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Literal[1]
    offers: list[_OfferSpec]

    @field_validator("offers")
    @classmethod
    def _non_empty_unique(cls, offers: list[_OfferSpec]) -> list[_OfferSpec]:
        if not offers:
            raise ValueError("the catalog lists no offer")
        seen: set[str] = set()
        for o in offers:
            if o.id in seen:
                raise ValueError(f"offer id {o.id!r} is listed twice (ids join rewards: never reuse one)")
            seen.add(o.id)
        return offers


def _describe(err: ValidationError, doc: Any) -> str:
    """The first pydantic error as `offers[3] (id bogus).kind: <message>`."""
    first = err.errors()[0]
    loc = first["loc"]
    parts: list[str] = []
    for i, part in enumerate(loc):
        if isinstance(part, int):
            label = f"[{part}]"
            offers = doc.get("offers") if isinstance(doc, dict) else None
            if i == 1 and loc[0] == "offers" and isinstance(offers, list) and isinstance(offers[part], dict):
                oid = offers[part].get("id")
                if isinstance(oid, str):
                    label += f" (id {oid})"
            parts.append(label)
        else:
            parts.append(("." if parts else "") + str(part))
    where = "".join(parts) or "file"
    msg = first["msg"].removeprefix("Value error, ")
    got = first.get("input")
    if first["type"] != "value_error" and isinstance(got, str | int | float | bool):
        msg += f" (got {got!r})"
    more = len(err.errors()) - 1
    return f"{where}: {msg}" + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else "")


def parse_offers(text: str, *, source: str) -> tuple[Offer, ...]:
    """Offers from the YAML text of a catalog; `source` names it in errors."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise OfferCatalogError(f"{source}: not valid YAML{where}") from None
    if not isinstance(doc, dict):
        raise OfferCatalogError(f"{source}: expected a mapping with 'version' and 'offers', got {type(doc).__name__}")
    try:
        parsed = _CatalogFile.model_validate(doc)
    except ValidationError as exc:
        raise OfferCatalogError(f"{source}: {_describe(exc, doc)}") from None
    return tuple(Offer(o.id, o.name, o.category, o.kind, o.value, o.channel) for o in parsed.offers)


def load_offers(path: str | Path = DEFAULT_OFFERS_PATH) -> tuple[Offer, ...]:
    """Offers from a catalog file (deploy/config/offers.yaml by default), validated whole."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise OfferCatalogError(f"{p}: cannot read the offer catalog ({exc.__class__.__name__})") from None
    return parse_offers(text, source=str(p))


def by_id(offers: tuple[Offer, ...]) -> Mapping[str, Offer]:
    """The catalog as a mapping from offer id, in file order."""
    return {o.id: o for o in offers}
