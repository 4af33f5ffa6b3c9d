"""The committed JSON Schemas (deploy/schemas/v1) match the pydantic event contract.

Each schema must accept what the parser accepts and refuse what it refuses, on a
set of samples per family; the parser is run on the same samples so the two
cannot silently disagree.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from nudge import schemas
from nudge.events import SCHEMA_VERSION, Rejection, parse_event_obj

NOW_MS = 1_700_000_000_000
ENVELOPE = {"event_id": "e-1", "user_id": "u-1", "ts": "2023-11-14T22:13:20+00:00", "schema_version": 1}

GOOD: dict[str, dict[str, Any]] = {
    "click": {**ENVELOPE, "type": "add_to_cart", "item_id": "sku-1", "category": "shoes", "price": 59.9},
    "purchase": {
        **ENVELOPE,
        "ts": NOW_MS,
        "type": "purchase",
        "order_id": "o-1",
        "items": [{"item_id": "sku-1", "category": "shoes", "price": 59.9, "quantity": 2}],
        "total": 119.8,
        "currency": "EUR",
    },
    "app": {**ENVELOPE, "type": "push_opened", "campaign_id": "c-7"},
    "consent": {**ENVELOPE, "type": "opt_out", "channel": "sms"},
    "profile_update": {**ENVELOPE, "type": "profile_update", "timezone": "Europe/Paris", "phone": "+33612345678"},
    "location": {**ENVELOPE, "type": "location", "lat": 48.85, "lon": 2.35},
}

# (family, why, mutation): each mutation makes the family's good sample invalid.
BAD: list[tuple[str, str, dict[str, Any]]] = [
    ("click", "negative price", {"price": -1}),
    ("click", "empty user_id", {"user_id": ""}),
    ("purchase", "lower-case currency", {"currency": "eur"}),
    ("purchase", "no items", {"items": []}),
    ("purchase", "quantity 0", {"items": [{"item_id": "sku-1", "price": 1.0, "quantity": 0}]}),
    ("app", "unsupported schema_version", {"schema_version": 2}),
    ("app", "ts is a boolean", {"ts": True}),
    ("consent", "unknown channel", {"channel": "email"}),
    ("profile_update", "phone not E.164", {"phone": "0612345678"}),
    ("location", "latitude out of range", {"lat": 91}),
    ("location", "lon as text", {"lon": "east"}),
]


def _load(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((schemas.SCHEMA_DIR / f"{name}.schema.json").read_text(encoding="utf-8"))
    return schema


def _validator(name: str) -> jsonschema.protocols.Validator:
    schema = _load(name)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _bad_sample(family: str, mutation: dict[str, Any]) -> dict[str, Any]:
    sample = copy.deepcopy(GOOD[family])
    sample.update(mutation)
    return sample


def test_committed_schemas_match_the_models() -> None:
    assert schemas.check() == [], "run `python -m nudge.schemas` and commit deploy/schemas/v1"


def test_one_file_per_family_plus_the_union() -> None:
    names = sorted(p.name for p in schemas.SCHEMA_DIR.glob("*.schema.json"))
    assert names == sorted(f"{n}.schema.json" for n in [*GOOD, schemas.UNION_NAME])


@pytest.mark.parametrize("name", [*GOOD, schemas.UNION_NAME])
def test_schema_metadata(name: str) -> None:
    schema = _load(name)
    assert schema["$id"] == schemas.schema_id(name)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["title"] and schema["description"]
    assert schema["x-nudge-schema-version"] == SCHEMA_VERSION == 1


def test_ids_are_unique() -> None:
    ids = [_load(n)["$id"] for n in [*GOOD, schemas.UNION_NAME]]
    assert len(set(ids)) == len(ids)


def test_rendering_is_deterministic() -> None:
    text = (schemas.SCHEMA_DIR / "purchase.schema.json").read_text(encoding="utf-8")
    assert text.endswith("}\n") and not text.endswith("\n\n")
    assert text.startswith('{\n  "$defs"')  # 2-space indent, keys sorted ($ sorts first)
    first = schemas.build_schemas()
    assert {k: schemas.render(v) for k, v in first.items()} == {
        k: schemas.render(v) for k, v in schemas.build_schemas().items()
    }


@pytest.mark.parametrize("family", list(GOOD))
def test_good_sample_is_valid_for_its_family_and_the_union(family: str) -> None:
    sample = GOOD[family]
    assert not isinstance(parse_event_obj(sample, now_ms=NOW_MS), Rejection)
    _validator(family).validate(sample)
    _validator(schemas.UNION_NAME).validate(sample)


@pytest.mark.parametrize(("family", "why", "mutation"), BAD, ids=[f"{f}-{w}" for f, w, _ in BAD])
def test_bad_sample_is_rejected_by_schema_and_parser(family: str, why: str, mutation: dict[str, Any]) -> None:
    sample = _bad_sample(family, mutation)
    assert isinstance(parse_event_obj(sample, now_ms=NOW_MS), Rejection), why
    assert not _validator(family).is_valid(sample), why
    assert not _validator(schemas.UNION_NAME).is_valid(sample), why


@pytest.mark.parametrize("field", ["event_id", "user_id", "ts", "schema_version", "type"])
def test_envelope_fields_are_required_everywhere(field: str) -> None:
    for family, good in GOOD.items():
        sample = {k: v for k, v in good.items() if k != field}
        assert not _validator(family).is_valid(sample), (family, field)
        assert not _validator(schemas.UNION_NAME).is_valid(sample), (family, field)


def test_union_rejects_unknown_type_and_family_rejects_other_families() -> None:
    union = _validator(schemas.UNION_NAME)
    assert not union.is_valid({**ENVELOPE, "type": "teleport"})
    assert not _validator("click").is_valid(GOOD["purchase"])
    assert not _validator("consent").is_valid(GOOD["app"])


def test_unknown_extra_fields_are_allowed() -> None:
    # The contract lets producers add fields before consumers know them.
    sample = {**GOOD["click"], "utm_source": "newsletter"}
    assert not isinstance(parse_event_obj(sample, now_ms=NOW_MS), Rejection)
    _validator("click").validate(sample)


def test_check_lists_missing_changed_and_stale_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert schemas.main(["--dir", str(tmp_path)]) == 0
    assert schemas.check(tmp_path) == []
    assert schemas.main(["--check", "--dir", str(tmp_path)]) == 0

    (tmp_path / "click.schema.json").write_text('{"title": "hand edited"}\n', encoding="utf-8")
    (tmp_path / "location.schema.json").unlink()
    (tmp_path / "teleport.schema.json").write_text("{}\n", encoding="utf-8")
    expected = ["click.schema.json", "location.schema.json", "teleport.schema.json"]
    assert schemas.check(tmp_path) == expected

    capsys.readouterr()
    assert schemas.main(["--check", "--dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert all(name in err for name in expected)

    # Writing repairs all three: rewrites, recreates, removes the stale file.
    assert schemas.write(tmp_path) == expected
    assert schemas.check(tmp_path) == []
    assert not (tmp_path / "teleport.schema.json").exists()


def test_check_detects_a_model_change(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    schemas.write(tmp_path)
    real = schemas.build_schemas

    def changed() -> dict[str, dict[str, Any]]:
        out = real()
        out["app.schema.json"] = {**out["app.schema.json"], "required": []}
        return out

    monkeypatch.setattr(schemas, "build_schemas", changed)
    assert schemas.check(tmp_path) == ["app.schema.json"]
