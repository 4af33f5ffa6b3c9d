"""Dataset import on the real files in shared/data, and its rules on tiny CSVs."""

from __future__ import annotations

import gzip
import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from nudge.errors import InputError
from nudge.events import PurchaseEvent, parse_event_obj
from nudge.settings import Settings
from producers.datasets import ImportStats, default_data_dir, import_dataset, uci_category
from producers.logfile import LogRecord, read_log

# The real files are part of the project's test data: missing data is a failure, not a skip.
DATA = default_data_dir()


def _events(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def _assert_valid_and_sorted(events: list[dict[str, Any]]) -> list[PurchaseEvent]:
    parsed = [parse_event_obj(e) for e in events]
    assert all(isinstance(p, PurchaseEvent) for p in parsed), [p for p in parsed if not isinstance(p, PurchaseEvent)][
        :3
    ]
    keys = [(p.ts_ms, p.event_id) for p in parsed]  # type: ignore[union-attr]
    assert keys == sorted(keys)
    assert len({e["event_id"] for e in events}) == len(events)
    return parsed  # type: ignore[return-value]


@pytest.fixture(scope="module")
def uci(tmp_path_factory: pytest.TempPathFactory) -> tuple[ImportStats, list[dict[str, Any]]]:
    out = tmp_path_factory.mktemp("uci") / "uci.jsonl.gz"
    stats = import_dataset("uci-online-retail", out, DATA)
    return stats, [orjson.loads(line) for line in gzip.decompress(out.read_bytes()).splitlines()]


def test_uci_counts_match_the_readme(uci: tuple[ImportStats, list[dict[str, Any]]]) -> None:
    stats, events = uci
    # README: 42,481 rows, 2,025 invoices, 948 customers, 15,631 rows without
    # CustomerID, 728 cancellation rows. These are facts about the whole file.
    assert stats.rows_read == 42_481
    assert stats.facts["invoices in file"] == 2_025
    assert stats.facts["customers in file"] == 948
    assert stats.facts["rows without CustomerID"] == 15_631
    assert stats.facts["cancellation rows"] == 728
    # 38 cancellation rows have no customer: skipped reasons are exclusive, so
    # they are counted as guest rows and 690 remain as customer cancellations.
    assert stats.facts["cancellation rows without CustomerID"] == 38
    assert stats.skipped["row without CustomerID (guest checkout)"] == 15_631
    assert stats.skipped["cancellation row (InvoiceNo C...)"] == 728 - 38
    assert sum(stats.skipped.values()) == 15_631 + 690
    # Emitted: invoices with a customer that are not cancellations. Of 2,025
    # invoices, 317 are guest-only and 326 are cancellations (326 - 18 of them
    # with a customer), so 2,025 - 317 - 308 = 1,400.
    assert stats.events_written == len(events) == 1_400
    # 948 customers, of whom 63 only ever cancelled.
    assert stats.users == len({e["user_id"] for e in events}) == 885
    assert stats.kept_oddities["rows with price 0 kept as free items"] == 3
    # Every kept row is an item: 42,481 - 15,631 - 690.
    assert sum(len(e["items"]) for e in events) == 42_481 - 15_631 - 690


def test_uci_events_are_valid_sorted_and_shaped(uci: tuple[ImportStats, list[dict[str, Any]]]) -> None:
    _, events = uci
    parsed = _assert_valid_and_sorted(events)
    assert all(e["currency"] == "GBP" and e["user_id"].startswith("uci-") for e in events)
    assert not any(e["order_id"].startswith("C") or "." in e["user_id"] for e in events)
    assert all(e["ts"].endswith("+00:00") for e in events)  # December: London is on GMT
    first = events[0]
    assert (first["event_id"], first["user_id"], first["ts"]) == (
        "uci-536365",
        "uci-17850",
        "2010-12-01T08:26:00+00:00",
    )
    assert [i["item_id"] for i in first["items"]][:2] == ["85123A", "71053"]
    assert first["total"] == pytest.approx(139.12)
    assert parsed[0].total == pytest.approx(sum(i.price * i.quantity for i in parsed[0].items))
    assert all(i.category for p in parsed for i in p.items)


def _write_csv(path: Path, header: str, rows: list[str]) -> None:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")


def test_uci_rules_on_a_tiny_file(tmp_path: Path) -> None:
    header = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country"
    _write_csv(
        tmp_path / "uci_online_retail_2010-12.csv",
        header,
        [
            "600001,22086,PAPER CHAIN KIT 50'S CHRISTMAS,2,2011-06-01 09:00:00,2.55,12345.0,United Kingdom",
            "600001,POST,POSTAGE,1,2011-06-01 09:01:00,18.0,12345.0,United Kingdom",
            "600001,22423,REGENCY CAKESTAND 3 TIER,1,2011-06-01 09:01:00,0.0,12345.0,United Kingdom",
            "600002,22423,REGENCY CAKESTAND 3 TIER,1,2011-06-01 10:00:00,12.75,,United Kingdom",  # guest
            "C600003,22423,REGENCY CAKESTAND 3 TIER,-1,2011-06-02 10:00:00,12.75,12345.0,United Kingdom",
            "600004,21777,,-10,2011-06-02 11:00:00,0.0,12345.0,United Kingdom",  # stock fix-up
            "600005,21777,RECIPE BOX,1,2011-01-05 11:00:00,3.0,777.0,France",
        ],
    )
    out = tmp_path / "out.jsonl"
    stats = import_dataset("uci-online-retail", out, tmp_path)
    events = _events(out)
    _assert_valid_and_sorted(events)
    assert [e["event_id"] for e in events] == ["uci-600005", "uci-600001"]
    winter, summer = events
    assert winter["ts"] == "2011-01-05T11:00:00+00:00" and winter["user_id"] == "uci-777"
    assert summer["ts"] == "2011-06-01T09:00:00+01:00"  # BST, earliest row of the invoice
    assert [(i["category"], i["price"], i["quantity"]) for i in summer["items"]] == [
        ("christmas", 2.55, 2),
        ("postage", 18.0, 1),
        ("kitchen", 0.0, 1),
    ]
    assert summer["total"] == 23.1
    assert stats.skipped == {
        "row without CustomerID (guest checkout)": 1,
        "cancellation row (InvoiceNo C...)": 1,
        "row with quantity <= 0 or fractional outside a cancellation": 1,
    }
    assert stats.facts["customers in file"] == 2


def test_uci_category_is_deterministic_and_ordered() -> None:
    assert uci_category("85123A", "WHITE HANGING HEART T-LIGHT HOLDER") == "lighting"
    assert uci_category("X", "CHRISTMAS LIGHTS") == "christmas"  # christmas comes first
    assert uci_category("X", "JUMBO BAG RED RETROSPOT") == "bags-accessories"
    assert uci_category("DOT", "DOTCOM POSTAGE") == "postage"
    assert uci_category("X", "INFLATABLE POLITICAL THING") == "other"
    assert uci_category("X", "heart of wicker") == "home-decor"  # case does not matter


@pytest.fixture(scope="module")
def cj(tmp_path_factory: pytest.TempPathFactory) -> tuple[ImportStats, Path]:
    out = tmp_path_factory.mktemp("cj") / "cj.jsonl"
    return import_dataset("completejourney", out, DATA), out


def test_completejourney_import(cj: tuple[ImportStats, Path]) -> None:
    stats, out = cj
    events = _events(out)
    assert stats.rows_read == 75_000
    assert stats.facts["households in file"] == 2_377  # README
    assert stats.facts["baskets in file"] == 47_243
    # 416 lines sell no units; 209 baskets consist only of such lines.
    assert stats.skipped["line with quantity <= 0 or fractional (no units sold)"] == 416
    assert stats.skipped["basket with no countable line (not emitted)"] == 209
    assert stats.events_written == len(events) == 47_243 - 209
    assert sum(len(e["items"]) for e in events) == 75_000 - 416
    assert stats.kept_oddities["lines with quantity > 100 (fuel) kept as 1 item"] == 692
    _assert_valid_and_sorted(events)
    assert all(e["currency"] == "USD" and e["user_id"].startswith("cj-") for e in events)
    assert {e["ts"][-6:] for e in events} == {"-05:00", "-04:00"}
    assert all(i["quantity"] <= 100 for e in events for i in e["items"])
    assert events[0]["event_id"] == "cj-31198705046" and events[0]["ts"] == "2017-01-01T07:30:27-05:00"


def test_imported_logs_replay_as_plain_events(cj: tuple[ImportStats, Path]) -> None:
    _, out = cj
    settings = Settings.from_env({})
    first = next(iter(read_log(out, settings)))
    assert isinstance(first, LogRecord)
    assert (first.flavour, first.topic, first.key) == ("event", settings.topic_purchases, b"cj-906")


def test_a_missing_dataset_file_is_one_error_naming_the_path(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=re.escape(str(tmp_path / "completejourney" / "transactions_sample.csv"))):
        import_dataset("completejourney", tmp_path / "out.jsonl", tmp_path)
    assert not (tmp_path / "out.jsonl").exists()


def test_default_data_dir_is_shared_data_next_to_the_repo() -> None:
    repo = Path(__file__).resolve().parents[2]
    assert default_data_dir() == repo.parent / "shared" / "data"
