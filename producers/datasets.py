"""Convert public datasets in shared/data into nudge event logs (`nudge import-dataset`).

The output is plain JSONL of purchase events (the flavour `nudge replay`
reads, see `producers.logfile`), sorted by (ts, event_id), every event valid
per `nudge.events.parse_event_obj`. Provenance and licences of the data are in
shared/data/README.md; keep their attribution with any result on this data.

``uci-online-retail`` (uci_online_retail_2010-12.csv, UK gift retailer, GBP)

- One purchase per invoice: event_id ``uci-<InvoiceNo>``, order_id InvoiceNo,
  user_id ``uci-<CustomerID>`` (``17850.0`` -> ``uci-17850``), one item per row
  (item_id StockCode, price UnitPrice, quantity Quantity), total = sum of
  price x quantity rounded to pence. ts is InvoiceDate read as Europe/London
  local time, written RFC 3339 with its offset; an invoice whose rows span
  several minutes takes the earliest.
- Not emitted, counted and reported: rows without CustomerID (guest
  checkouts: no user to attach them to); cancellations (InvoiceNo starting
  with ``C``, negative quantities: a return is not a purchase); rows with a
  non-positive quantity or a negative price outside cancellations. Rows with a
  price of 0 are kept (free items; the contract allows price 0) and counted.
- Category: the data has none, so one is derived deterministically. Service
  codes map by StockCode (POST/DOT/C2 -> ``postage``, BANK CHARGES/AMAZONFEE/
  CRUK -> ``fees``, M -> ``manual``, D -> ``discount``, S -> ``samples``, PADS ->
  ``other``); every other row takes the first matching keyword group of
  `UCI_CATEGORY_KEYWORDS`, in its order, against the upper-cased words of its
  Description (``christmas`` before ``lighting``, so a Christmas light counts as
  Christmas), else ``other``.

``completejourney`` (completejourney/transactions_sample.csv, US grocery, USD)

- One purchase per (household, basket): event_id ``cj-<basket_id>``, order_id
  basket_id, user_id ``cj-<household_id>``, ts transaction_timestamp (already
  with its offset), one item per line: item_id product_id, price =
  sales_value / quantity, total = sum of sales_value. No category (the sample
  ships without the product table).
- Lines with quantity 0 are dropped (no units sold); a basket left empty is
  not emitted. Quantities above `CJ_MAX_UNITS` are measured amounts, not unit
  counts (fuel: product 6534178 "KIOSK-GAS" sells thousands of "units" for a
  few dollars), so such a line becomes one item priced at its sales_value.
  Lines with sales_value 0 are kept as free items. All counted and reported.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from nudge.args import input_dir, output_file
from nudge.errors import ConfigError, InputError
from nudge.events import Rejection, parse_event_obj
from nudge.settings import Settings
from nudge.text import printable
from producers.logfile import LogWriter, encode_event

__all__ = [
    "CJ_MAX_UNITS",
    "DATASETS",
    "UCI_CATEGORY_KEYWORDS",
    "ImportStats",
    "configure",
    "dataset_events",
    "default_data_dir",
    "import_dataset",
    "run",
    "uci_category",
]

LONDON = ZoneInfo("Europe/London")
CJ_MAX_UNITS = 100

# Ordered: the first group with a matching word wins.
UCI_CATEGORY_KEYWORDS: tuple[tuple[str, frozenset[str]], ...] = tuple(
    (name, frozenset(words.split()))
    for name, words in (
        ("christmas", "CHRISTMAS XMAS ADVENT SANTA REINDEER SNOWFLAKE"),
        ("lighting", "LIGHT LIGHTS T-LIGHT T-LIGHTS LANTERN CANDLE CANDLES CANDLEHOLDER LAMP NIGHTLIGHT"),
        (
            "kitchen",
            "MUG MUGS CUP CUPS PLATE PLATES BOWL BOWLS TEA TEAPOT CAKE CAKES CAKESTAND JAR JARS BAKING CUTLERY "
            "NAPKINS LUNCH KITCHEN APRON RECIPE JUG SPOON SPOONS GLASS TUMBLER TIN TINS BISCUIT COFFEE JAM TEACUP "
            "SAUCER COOKIE BREAD FOOD COASTER COASTERS BEAKERS TRAY EGG",
        ),
        (
            "stationery",
            "CARD CARDS WRAP PAPER NOTEBOOK PEN PENS PENCIL PENCILS STICKER STICKERS ENVELOPE TAPE "
            "DIARY CALENDAR BOOK ERASER RULER",
        ),
        (
            "bags-accessories",
            "BAG BAGS PURSE SHOPPER NECKLACE EARRINGS BRACELET RING HAIR UMBRELLA WALLET CHARM BEADS HANDBAG",
        ),
        (
            "toys-party",
            "TOY TOYS GAME GAMES DOLL DOLLY PARTY BALLOON BALLOONS CHILDRENS CHILDREN KIDS SPACEBOY "
            "BIRTHDAY JIGSAW MARBLES PLAYHOUSE FELTCRAFT SKITTLES SNAKES LADDERS GLOBE PAINT DRAWING",
        ),
        ("craft", "SEWING KNITTING RIBBON RIBBONS REEL CRAFT TAGS BUTTONS"),
        ("bath-household", "BATH SPONGE TISSUES WASHING GLOVES SOAP TOWEL"),
        (
            "garden",
            "GARDEN PLANT PLANTER FLOWER FLOWERS BIRD BIRDHOUSE POT WATERING HERB SEED",
        ),
        (
            "home-decor",
            "HEART SIGN FRAME CLOCK DECORATION ORNAMENT CUSHION DOORMAT MIRROR HOOK HANGER VASE "
            "DRAWER BOX BOXES HOLDER STAND BOTTLE WARMER WICKER RACK CABINET LETTERS WORD MAGNETS DOORSTOP BIN "
            "ORGANISER",
        ),
    )
)
_UCI_SERVICE_CODES = {
    "POST": "postage",
    "DOT": "postage",
    "C2": "postage",
    "BANK CHARGES": "fees",
    "AMAZONFEE": "fees",
    "CRUK": "fees",
    "M": "manual",
    "m": "manual",
    "D": "discount",
    "S": "samples",
    "PADS": "other",
}
_WORD = re.compile(r"[A-Z0-9][A-Z0-9'+-]*")


def uci_category(stock_code: str, description: str) -> str:
    """A coarse category from a UCI row's StockCode and Description.

    >>> uci_category("85123A", "WHITE HANGING HEART T-LIGHT HOLDER")
    'lighting'
    >>> uci_category("22086", "PAPER CHAIN KIT 50'S CHRISTMAS"), uci_category("POST", "POSTAGE")
    ('christmas', 'postage')
    """
    if stock_code in _UCI_SERVICE_CODES:
        return _UCI_SERVICE_CODES[stock_code]
    words = set(_WORD.findall(description.upper()))
    for name, keywords in UCI_CATEGORY_KEYWORDS:
        if words & keywords:
            return name
    return "other"


@dataclass
class ImportStats:
    """What an import read, wrote and skipped (by reason)."""

    dataset: str
    source: Path
    rows_read: int = 0
    events_written: int = 0
    users: int = 0
    first_ts: str = ""
    last_ts: str = ""
    facts: dict[str, int] = field(default_factory=dict)  # dataset-level counts, may overlap
    skipped: Counter[str] = field(default_factory=Counter)  # rows/events not emitted, one reason each
    kept_oddities: Counter[str] = field(default_factory=Counter)  # emitted, but worth knowing
    categories: Counter[str] = field(default_factory=Counter)


def default_data_dir() -> Path:
    """shared/data next to the repository root (../shared/data from the repo)."""
    return Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def _rows(path: Path, required: tuple[str, ...]) -> Iterator[dict[str, str]]:
    try:
        handle = open(path, newline="", encoding="utf-8")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        raise InputError(f"dataset file {path} does not exist (use --data-dir)") from None
    except OSError as exc:
        raise InputError(f"cannot read dataset file {path}: {exc.strerror}") from None
    with handle:
        reader = csv.DictReader(handle)
        try:
            missing = [c for c in required if c not in (reader.fieldnames or ())]
            if missing:
                header = printable(str(reader.fieldnames), limit=200)
                raise InputError(f"{path}: missing column(s) {', '.join(missing)}; header is {header}")
            yield from reader
        except UnicodeDecodeError as exc:
            raise InputError(f"{path}: not UTF-8 text ({exc.reason})") from None
        except csv.Error as exc:
            raise InputError(f"{path}:{reader.line_num}: not CSV ({exc})") from None


def _number(text: str, column: str, path: Path, line: int) -> float:
    try:
        return float(text)
    except ValueError:
        raise InputError(f"{path}:{line}: {column} is not a number: {text!r}") from None


def _uci(path: Path, stats: ImportStats) -> list[dict[str, Any]]:
    required = ("InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID")
    invoices: dict[str, dict[str, Any]] = {}
    all_invoices: set[str] = set()
    customers: set[str] = set()
    guest_rows = cancel_rows = guest_cancel_rows = 0
    cancel_invoices: set[str] = set()
    for line, row in enumerate(_rows(path, required), start=2):
        stats.rows_read += 1
        invoice, customer = row["InvoiceNo"].strip(), row["CustomerID"].strip()
        all_invoices.add(invoice)
        is_cancel = invoice.startswith("C")
        if is_cancel:
            cancel_rows += 1
            cancel_invoices.add(invoice)
        if not customer:
            guest_rows += 1
            guest_cancel_rows += is_cancel
            stats.skipped["row without CustomerID (guest checkout)"] += 1
            continue
        user = "uci-" + customer.removesuffix(".0")
        customers.add(user)
        if is_cancel:
            stats.skipped["cancellation row (InvoiceNo C...)"] += 1
            continue
        quantity = _number(row["Quantity"], "Quantity", path, line)
        price = _number(row["UnitPrice"], "UnitPrice", path, line)
        if quantity <= 0 or quantity != int(quantity):
            stats.skipped["row with quantity <= 0 or fractional outside a cancellation"] += 1
            continue
        if price < 0:
            stats.skipped["row with negative price"] += 1
            continue
        if price == 0:
            stats.kept_oddities["rows with price 0 kept as free items"] += 1
        try:
            local = datetime.fromisoformat(row["InvoiceDate"].strip())
        except ValueError:
            raise InputError(f"{path}:{line}: InvoiceDate is not a date-time: {row['InvoiceDate']!r}") from None
        when = local.replace(tzinfo=LONDON)
        category = uci_category(row["StockCode"].strip(), row["Description"])
        stats.categories[category] += 1
        order = invoices.get(invoice)
        if order is None:
            order = invoices[invoice] = {"user": user, "when": when, "items": []}
        elif order["user"] != user:
            raise InputError(f"{path}:{line}: invoice {invoice} has two customers ({order['user']}, {user})")
        order["when"] = min(order["when"], when)
        order["items"].append(
            {"item_id": row["StockCode"].strip(), "category": category, "price": price, "quantity": int(quantity)}
        )
    stats.facts.update(
        {
            "invoices in file": len(all_invoices),
            "customers in file": len(customers),
            "rows without CustomerID": guest_rows,
            "cancellation rows": cancel_rows,
            "cancellation invoices": len(cancel_invoices),
            "cancellation rows without CustomerID": guest_cancel_rows,
        }
    )
    events = []
    for invoice, order in invoices.items():
        total = round(sum(i["price"] * i["quantity"] for i in order["items"]), 2)
        events.append(
            {
                "event_id": f"uci-{invoice}",
                "type": "purchase",
                "user_id": order["user"],
                "ts": order["when"].isoformat(),
                "schema_version": 1,
                "order_id": invoice,
                "items": order["items"],
                "total": total,
                "currency": "GBP",
            }
        )
    return events


def _completejourney(path: Path, stats: ImportStats) -> list[dict[str, Any]]:
    required = ("household_id", "basket_id", "product_id", "quantity", "sales_value", "transaction_timestamp")
    baskets: dict[tuple[str, str], dict[str, Any]] = {}
    households: set[str] = set()
    empty: set[tuple[str, str]] = set()
    for line, row in enumerate(_rows(path, required), start=2):
        stats.rows_read += 1
        household, basket = row["household_id"].strip(), row["basket_id"].strip()
        if not household or not basket:
            stats.skipped["line without household_id or basket_id"] += 1
            continue
        households.add(household)
        quantity = _number(row["quantity"], "quantity", path, line)
        value = _number(row["sales_value"], "sales_value", path, line)
        key = (household, basket)
        if quantity <= 0 or quantity != int(quantity):
            stats.skipped["line with quantity <= 0 or fractional (no units sold)"] += 1
            if key not in baskets:
                empty.add(key)
            continue
        if value < 0:
            stats.skipped["line with negative sales_value"] += 1
            continue
        units = int(quantity)
        if units > CJ_MAX_UNITS:
            stats.kept_oddities[f"lines with quantity > {CJ_MAX_UNITS} (fuel) kept as 1 item"] += 1
            units = 1
        if value == 0:
            stats.kept_oddities["lines with sales_value 0 kept as free items"] += 1
        ts = row["transaction_timestamp"].strip()
        try:
            when = datetime.fromisoformat(ts)
        except ValueError:
            raise InputError(f"{path}:{line}: transaction_timestamp is not a date-time: {ts!r}") from None
        if when.tzinfo is None:
            raise InputError(f"{path}:{line}: transaction_timestamp has no UTC offset: {ts!r}")
        order = baskets.get(key)
        if order is None:
            order = baskets[key] = {"when": when, "items": [], "total": 0.0}
        order["when"] = min(order["when"], when)
        order["items"].append(
            {"item_id": row["product_id"].strip(), "price": round(value / units, 4), "quantity": units}
        )
        order["total"] += value
        empty.discard(key)
    stats.facts.update({"households in file": len(households), "baskets in file": len(set(baskets) | empty)})
    if empty:
        stats.skipped["basket with no countable line (not emitted)"] = len(empty)
    return [
        {
            "event_id": f"cj-{basket}",
            "type": "purchase",
            "user_id": f"cj-{household}",
            "ts": order["when"].isoformat(),
            "schema_version": 1,
            "order_id": basket,
            "items": order["items"],
            "total": round(order["total"], 2),
            "currency": "USD",
        }
        for (household, basket), order in baskets.items()
    ]


Converter = Callable[[Path, ImportStats], list[dict[str, Any]]]
# name -> (file under the data dir, converter)
DATASETS: dict[str, tuple[str, Converter]] = {
    "uci-online-retail": ("uci_online_retail_2010-12.csv", _uci),
    "completejourney": ("completejourney/transactions_sample.csv", _completejourney),
}


def dataset_events(name: str, data_dir: Path | None = None) -> tuple[list[dict[str, Any]], ImportStats]:
    """Dataset `name` as valid nudge events sorted by (ts, event_id), and what the conversion kept and skipped."""
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    relative, convert = DATASETS[name]
    source = (data_dir or default_data_dir()) / relative
    stats = ImportStats(name, source)
    events = convert(source, stats)
    keyed = []
    for event in events:
        verdict = parse_event_obj(event)
        if isinstance(verdict, Rejection):
            # A converter bug, not a data quirk: say which event and why, and leave it out.
            stats.skipped[f"event failed validation ({verdict.reason})"] += 1
            continue
        keyed.append((verdict.ts_ms, event["event_id"], event))
    keyed.sort(key=lambda k: (k[0], k[1]))
    ordered = [event for _, _, event in keyed]
    stats.users = len({event["user_id"] for event in ordered})
    if ordered:
        stats.first_ts, stats.last_ts = ordered[0]["ts"], ordered[-1]["ts"]
    return ordered, stats


def import_dataset(name: str, out: Path, data_dir: Path | None = None) -> ImportStats:
    """Convert dataset `name` into a sorted plain-JSONL event log at `out`."""
    events, stats = dataset_events(name, data_dir)
    with LogWriter(out) as writer:
        for event in events:
            writer.write(encode_event(event))
    stats.events_written = len(events)
    return stats


# --- CLI -------------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Convert a public dataset from shared/data into a plain JSONL log of nudge purchase events "
        "(sorted by ts, every event valid) that `nudge replay` sends. Conversion rules: producers/datasets.py."
    )
    parser.add_argument("name", choices=sorted(DATASETS), help="dataset to convert")
    parser.add_argument("--out", type=output_file, required=True, help="file to write (.jsonl, or .jsonl.gz for gzip)")
    parser.add_argument(
        "--data-dir",
        type=input_dir,
        default=None,
        help=f"where the datasets are [default: ../shared/data next to the repo: {default_data_dir()}]",
    )
    parser.set_defaults(func=run)


def _print_summary(stats: ImportStats) -> None:
    print(f"{stats.dataset}: {stats.source}")
    print(f"  {'rows read':36} {stats.rows_read:>10,}")
    for what, count in stats.facts.items():
        print(f"  {what:36} {count:>10,}")
    print(f"  {'events written':36} {stats.events_written:>10,}  ({stats.first_ts} .. {stats.last_ts})")
    print(f"  {'users':36} {stats.users:>10,}")
    if stats.skipped:
        print("  skipped:")
        for reason, count in stats.skipped.most_common():
            print(f"    {count:>10,}  {reason}")
    if stats.kept_oddities:
        print("  kept, but odd:")
        for reason, count in stats.kept_oddities.most_common():
            print(f"    {count:>10,}  {reason}")
    if stats.categories:
        shares = ", ".join(f"{name} {count:,}" for name, count in stats.categories.most_common())
        print(f"  item categories (derived): {shares}")


def _configured_data_dir(settings: Settings) -> Path | None:
    # NUDGE_SHARED_DATA_DIR once Settings declares `shared_data_dir`; unset/empty means the default.
    configured = getattr(settings, "shared_data_dir", None)
    if configured is None or str(configured) in ("", "."):
        return None
    return Path(configured)


def run(args: argparse.Namespace, settings: Settings) -> int:
    stats = import_dataset(args.name, args.out, args.data_dir or _configured_data_dir(settings) or default_data_dir())
    _print_summary(stats)
    print(f"wrote {args.out}", file=sys.stderr)
    bad = sum(count for reason, count in stats.skipped.items() if reason.startswith("event failed validation"))
    return 1 if bad else 0
