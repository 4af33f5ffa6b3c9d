"""JSON Schemas of the event contract, generated from the pydantic models in nudge.events.

deploy/schemas/v1/ holds one schema for the whole union (event.schema.json) and
one per event family (click, purchase, app, consent, profile_update, location),
for producers written in other languages and for schema registries. The files
are generated, never edited by hand:

    python -m nudge.schemas            # rewrite deploy/schemas/v1/
    python -m nudge.schemas --check    # exit 1 and list the files that drifted

The schemas describe what a producer must send. The parser is the final word
and checks a few things JSON Schema cannot say: the time zone is a known IANA
name, `ts` is not too far in the future, the message is not too large.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nudge.events import (
    SCHEMA_VERSION,
    AppEvent,
    ClickEvent,
    ConsentEvent,
    LocationEvent,
    ProfileUpdateEvent,
    PurchaseEvent,
    event_adapter,
)

__all__ = ["FAMILIES", "SCHEMA_DIR", "UNION_NAME", "build_schemas", "check", "main", "render", "schema_id", "write"]

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
UNION_NAME = "event"

# File stem -> model. The stems are part of the published contract: renaming
# one breaks whoever pinned the file, so add new families, never rename.
FAMILIES: dict[str, type[ClickEvent | PurchaseEvent | AppEvent | ConsentEvent | ProfileUpdateEvent | LocationEvent]] = {
    "click": ClickEvent,
    "purchase": PurchaseEvent,
    "app": AppEvent,
    "consent": ConsentEvent,
    "profile_update": ProfileUpdateEvent,
    "location": LocationEvent,
}

# The repository's copy; an installed package has no deploy/ beside it, hence --dir.
SCHEMA_DIR = Path(__file__).resolve().parent.parent / "deploy" / "schemas" / f"v{SCHEMA_VERSION}"

_ENVELOPE_NOTE = (
    "Sent as one UTF-8 JSON object per Kafka message, keyed by user_id. "
    "Unknown extra fields are ignored, so producers may add fields before consumers read them."
)


def schema_id(name: str) -> str:
    """The `$id` of a schema file. A URN, because no server publishes these files."""
    return f"urn:nudge:schema:v{SCHEMA_VERSION}:{name}"


def _file_name(name: str) -> str:
    return f"{name}.schema.json"


def _decorate(schema: dict[str, Any], name: str, title: str, description: str, **extra: Any) -> dict[str, Any]:
    schema.update(
        {
            "$schema": JSON_SCHEMA_DIALECT,
            "$id": schema_id(name),
            "title": title,
            "description": description,
            "x-nudge-schema-version": SCHEMA_VERSION,
            **extra,
        }
    )
    return schema


def build_schemas() -> dict[str, dict[str, Any]]:
    """File name -> schema, for the union and every family."""
    union = event_adapter.json_schema(mode="validation")
    types = sorted(union["discriminator"]["mapping"])
    out = {
        _file_name(UNION_NAME): _decorate(
            union,
            UNION_NAME,
            f"nudge event (schema version {SCHEMA_VERSION})",
            f"Any nudge input event; `type` selects the family ({', '.join(types)}). {_ENVELOPE_NOTE}",
        )
    }
    for name, model in FAMILIES.items():
        doc = (model.__doc__ or "").strip()
        schema = model.model_json_schema(mode="validation")
        out[_file_name(name)] = _decorate(
            schema,
            name,
            f"nudge {name.replace('_', ' ')} event (schema version {SCHEMA_VERSION})",
            f"{doc} {_ENVELOPE_NOTE}",
            **{"x-nudge-topic-kind": model.topic_kind},
        )
    return out


def render(schema: dict[str, Any]) -> str:
    """Deterministic text of a schema: sorted keys, 2-space indent, trailing newline."""
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _stale(directory: Path, expected: dict[str, Any]) -> list[str]:
    # A family that was dropped from FAMILIES must not linger as a published file.
    if not directory.is_dir():
        return []
    return sorted(p.name for p in directory.glob("*.schema.json") if p.name not in expected)


def check(directory: Path = SCHEMA_DIR) -> list[str]:
    """Names of files that are missing, differ from the models, or should not exist."""
    expected = {name: render(schema) for name, schema in build_schemas().items()}
    drifted = []
    for name, text in expected.items():
        path = directory / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            drifted.append(name)
    return sorted(drifted + _stale(directory, expected))


def write(directory: Path = SCHEMA_DIR) -> list[str]:
    """Bring `directory` up to date; return the names written or removed."""
    expected = {name: render(schema) for name, schema in build_schemas().items()}
    directory.mkdir(parents=True, exist_ok=True)
    changed = []
    for name in _stale(directory, expected):
        (directory / name).unlink()
        changed.append(name)
    for name, text in expected.items():
        path = directory / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            changed.append(name)
    return sorted(changed)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nudge.schemas", description="Generate the event JSON Schemas from nudge.events."
    )
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if any file drifted")
    parser.add_argument("--dir", type=Path, default=SCHEMA_DIR, help=f"output directory [default: {SCHEMA_DIR}]")
    args = parser.parse_args(argv)
    directory: Path = args.dir
    total = len(FAMILIES) + 1
    if args.check:
        drifted = check(directory)
        if drifted:
            print(f"schemas drifted from nudge/events.py in {directory}:", file=sys.stderr)
            for name in drifted:
                print(f"  {name}", file=sys.stderr)
            print("run `python -m nudge.schemas` (or `make schemas`) and commit the result", file=sys.stderr)
            return 1
        print(f"{total} schemas in {directory} match nudge/events.py")
        return 0
    changed = write(directory)
    print(
        f"{len(changed)} of {total} schema files changed in {directory}"
        + (f": {', '.join(changed)}" if changed else "")
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
