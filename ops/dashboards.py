"""`nudge dashboards`: the Grafana dashboards in deploy/grafana/dashboards, checked and drawn.

The JSON files there (pipeline, models, campaigns) are the single source of
truth: docker-compose.yml's Grafana loads them as they are, and `nudge
dashboards render` draws the same panels from the same PromQL to PNG, for
people without Grafana and for the README. Both read the files, so both
check them first (`problems`): a dashboard is data with a contract, not a
screenshot someone exported once.

The contract, which is also all the renderer knows how to draw faithfully:

- a dashboard has a uid, a title, a schemaVersion Grafana 12 loads, no
  template variables (a PNG has nobody to pick their values), and panels;
- a panel is a `timeseries` or a `stat`, with a title, a description, a
  gridPos inside the 24-column grid that overlaps no other, a unit from
  `UNITS`, and targets, each with a refId, a legendFormat and an expr, all
  on the datasource {"type": "prometheus", "uid": "prometheus"} that
  deploy/grafana/provisioning/datasources/prometheus.yml provisions;
- an expr names at least one metric, uses no variable but Grafana's
  built-ins `$__rate_interval`, `$__interval` and `$__range` (substituted
  here the way Grafana does), and never hides a missing series behind
  `or vector(...)`: a misspelled metric must show as "no data", not as 0.

`queries()` and `metric_names()` serve the tests too: every metric a
dashboard names is documented in the README and, against a running loop,
exported by some process. The drawing, and the Prometheus client it needs,
live in ops/render.py, imported only by `render`.

Errors: a dashboard breaking the contract is an `InputError` (the file is
wrong); so is a query Prometheus refuses (ops/render.py).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from nudge.errors import InputError, UsageError
from nudge.settings import Settings
from nudge.text import printable, quoted

__all__ = [
    "BUILTINS",
    "DATASOURCE",
    "DEFAULT_DIR",
    "GRID_COLUMNS",
    "LEGEND_LABEL",
    "PANEL_TYPES",
    "PROMETHEUS_SERIES",
    "UNITS",
    "Dashboard",
    "Query",
    "Window",
    "check",
    "configure",
    "duration",
    "expand_builtins",
    "grid_box",
    "human_duration",
    "load",
    "metric_names",
    "problems",
    "queries",
]

DEFAULT_DIR: Final = Path("deploy/grafana/dashboards")
DATASOURCE: Final[Mapping[str, str]] = {"type": "prometheus", "uid": "prometheus"}
PANEL_TYPES: Final = ("stat", "timeseries")
# Grafana unit id -> how the renderer names it on an axis. Only units the renderer formats.
UNITS: Final[Mapping[str, str]] = {
    "ops": "per second",
    "reqps": "requests per second",
    "s": "seconds",
    "ms": "milliseconds",
    "short": "count",
    "none": "value",
    "percentunit": "percent",
    "bytes": "bytes",
    "currencyEUR": "EUR",
}
# Grafana's global variables a dashboard may use; anything else is a template variable.
BUILTINS: Final = ("__rate_interval", "__interval", "__range")
# Series Prometheus makes itself (not exported by any nudge process).
PROMETHEUS_SERIES: Final = frozenset({"up"})
# Schema versions of Grafana 9.0 .. 12.x: older JSON is migrated on load, newer is unknown to Grafana 12.
SCHEMA_VERSIONS: Final = range(36, 42)
GRID_COLUMNS: Final = 24
# The datasource's timeInterval (deploy/grafana/provisioning/datasources/prometheus.yml), which is
# the scrape interval of both scrape configs: Grafana's $__rate_interval is built from it.
SCRAPE_INTERVAL_S: Final = 15.0
# Prometheus refuses a range query of more points per series than this.
MAX_POINTS: Final = 11_000
_UID: Final = re.compile(r"[A-Za-z0-9_-]{1,40}")
# Grafana's variable syntaxes: $name, ${name} (with :format or .field), [[name]]. A name starts with a
# letter or _: "$1" in label_replace's replacement is PromQL's own, and Grafana leaves it alone.
_VARIABLE: Final = re.compile(r"\$\{([A-Za-z_]\w*)[^}]*\}|\$([A-Za-z_]\w*)|\[\[([A-Za-z_]\w*)(?::\w+)?\]\]")
# {{label}} in a legendFormat: replaced by the series' value of that label.
LEGEND_LABEL: Final = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_OR_VECTOR: Final = re.compile(r"\bor\s+vector\s*\(", re.IGNORECASE)


# --------------------------------------------------------------------------
# PromQL: the metric names an expression reads
# --------------------------------------------------------------------------

_TOKEN: Final = re.compile(
    r"""
    (?P<space>\s+|\#[^\n]*)
    |(?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
    |(?P<number>(?:0[xX][0-9a-fA-F]+|[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)[A-Za-z0-9_]*)
    |(?P<variable>\$\{[^}]*\}|\$\w+)
    |(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)
    |(?P<open>[({\[])
    |(?P<close>[)}\]])
    |(?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)
# Keywords followed by a parenthesised list of label names.
_LABEL_LISTS: Final = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
_KEYWORDS: Final = frozenset(
    {"and", "or", "unless", "offset", "bool", "atan2", "inf", "nan"}
    | {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values"}
    | {"bottomk", "topk", "quantile", "limitk", "limit_ratio"}
)


def _tokens(expr: str) -> list[tuple[str, str]]:
    return [(m.lastgroup or "other", m.group()) for m in _TOKEN.finditer(expr) if m.lastgroup != "space"]


def metric_names(expr: str) -> set[str]:
    """The metric names `expr` reads, as written (a histogram's `_bucket` included).

    Function and aggregation names, keywords, label names (in matchers and in
    `by`/`on`/`ignoring`/... lists), label values, durations, offsets and
    numbers are not metric names; `{__name__="x"}` names x.

    >>> sorted(metric_names('histogram_quantile(0.99, sum by (le) (rate(a_bucket{job="b_total"}[5m] offset 1h)))'))
    ['a_bucket']
    >>> sorted(metric_names("x / ignoring(metric) group_left y > bool 0 unless time() - z"))
    ['x', 'y', 'z']
    """
    tokens = _tokens(expr)
    names: set[str] = set()
    braces = brackets = 0
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        after = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if kind == "open":
            braces += text == "{"
            brackets += text == "["
        elif kind == "close":
            braces -= text == "}"
            brackets -= text == "]"
        elif kind == "name" and braces > 0:
            # A label matcher; `__name__="metric"` is the one that names a metric.
            if text == "__name__" and after == "=" and i + 2 < len(tokens) and tokens[i + 2][0] == "string":
                names.add(tokens[i + 2][1][1:-1])
        elif kind == "name" and brackets == 0:
            lower = text.lower()
            if lower in _LABEL_LISTS:
                if after == "(":
                    i = _closing(tokens, i + 1)
            elif lower not in _KEYWORDS and after != "(":
                names.add(text)
        i += 1
    return names


def _closing(tokens: Sequence[tuple[str, str]], start: int) -> int:
    """Index of the parenthesis closing the one at `start` (the last token if none does)."""
    depth = 0
    for j in range(start, len(tokens)):
        depth += tokens[j][1] == "("
        depth -= tokens[j][1] == ")"
        if depth == 0:
            return j
    return len(tokens) - 1


def _unbalanced(expr: str) -> str | None:
    """The first bracket that does not close or open right, or None."""
    pairs = {")": "(", "}": "{", "]": "["}
    stack: list[str] = []
    for kind, text in _tokens(expr):
        if kind == "open":
            stack.append(text)
        elif kind == "close" and (not stack or stack.pop() != pairs[text]):
            return f"unmatched {text!r}"
    return f"unclosed {stack[-1]!r}" if stack else None


# --------------------------------------------------------------------------
# The contract: problems(dashboard)
# --------------------------------------------------------------------------


def problems(dashboard: object) -> list[str]:
    """Every way `dashboard` (parsed JSON) breaks the contract in this module's docstring; [] when none."""
    if not isinstance(dashboard, dict):
        return [f"expected a JSON object, got {type(dashboard).__name__}"]
    found: list[str] = []
    uid = dashboard.get("uid")
    if not isinstance(uid, str) or not _UID.fullmatch(uid):
        found.append(f"uid {_shown(uid)}: expected 1..40 letters, digits, '-' or '_'")
    title = dashboard.get("title")
    if not isinstance(title, str) or not title.strip():
        found.append("no title")
    version = dashboard.get("schemaVersion")
    if not isinstance(version, int) or isinstance(version, bool) or version not in SCHEMA_VERSIONS:
        found.append(
            f"schemaVersion {_shown(version)}: expected {SCHEMA_VERSIONS.start}..{SCHEMA_VERSIONS.stop - 1} "
            "(what Grafana 9 to 12 write)"
        )
    templating = dashboard.get("templating", {})
    variables = templating.get("list", []) if isinstance(templating, dict) else templating
    if variables:
        found.append("template variables are not allowed (a rendered PNG has nobody to choose their values)")
    panels = dashboard.get("panels")
    if not isinstance(panels, list) or not panels:
        found.append("no panels")
        return found
    ids: Counter[object] = Counter()
    placed: list[tuple[str, tuple[int, int, int, int]]] = []
    for index, panel in enumerate(panels, 1):
        name = _panel_name(index, panel)
        if not isinstance(panel, dict):
            found.append(f"{name}: expected a JSON object, got {type(panel).__name__}")
            continue
        found += [f"{name}: {problem}" for problem in _panel_problems(panel)]
        panel_id = panel.get("id")
        if not isinstance(panel_id, int) or isinstance(panel_id, bool) or panel_id < 1:
            found.append(f"{name}: id {_shown(panel_id)}: expected a positive integer")
        else:
            ids[panel_id] += 1
        box = grid_box(panel.get("gridPos"))
        if box is not None:
            for other, other_box in placed:
                if _overlap(box, other_box):
                    found.append(f"{name}: gridPos overlaps {other}")
            placed.append((name, box))
    found += [f"panel id {panel_id} is used by {n} panels" for panel_id, n in ids.items() if n > 1]
    return found


def _panel_problems(panel: Mapping[str, Any]) -> Iterator[str]:
    kind = panel.get("type")
    if kind not in PANEL_TYPES:
        yield f"type {_shown(kind)}: expected one of {', '.join(PANEL_TYPES)}"
    for key in ("title", "description"):
        value = panel.get(key)
        if not isinstance(value, str) or not value.strip():
            yield f"no {key}"
    grid = panel.get("gridPos")
    if grid_box(grid) is None:
        yield (
            f"gridPos {_shown(grid)}: expected integers x, y >= 0 and w, h >= 1 "
            f"with x + w <= {GRID_COLUMNS} (Grafana's grid has {GRID_COLUMNS} columns)"
        )
    if panel.get("datasource") != DATASOURCE:
        yield f"datasource {_shown(panel.get('datasource'))}: expected {json.dumps(DATASOURCE)}"
    unit = _unit(panel)
    if unit is None:
        yield "no unit (fieldConfig.defaults.unit)"
    elif unit not in UNITS:
        yield f"unit {quoted(unit)}: expected one of {', '.join(UNITS)}"
    targets = panel.get("targets")
    if not isinstance(targets, list) or not targets:
        yield "no targets"
        return
    ref_ids: Counter[str] = Counter()
    for index, target in enumerate(targets, 1):
        if not isinstance(target, dict):
            yield f"target {index}: expected a JSON object, got {type(target).__name__}"
            continue
        ref_id = target.get("refId")
        where = f"target {printable(ref_id, limit=20)}" if isinstance(ref_id, str) and ref_id else f"target {index}"
        if not isinstance(ref_id, str) or not ref_id:
            yield f"{where}: no refId"
        else:
            ref_ids[ref_id] += 1
        yield from (f"{where}: {problem}" for problem in _target_problems(target))
    yield from (f"refId {ref_id} is used by {n} targets" for ref_id, n in ref_ids.items() if n > 1)


def _target_problems(target: Mapping[str, Any]) -> Iterator[str]:
    if target.get("datasource") != DATASOURCE:
        yield f"datasource {_shown(target.get('datasource'))}: expected {json.dumps(DATASOURCE)}"
    legend_format = target.get("legendFormat")
    if not isinstance(legend_format, str):
        yield "no legendFormat (a string; '' shows the series' labels)"
    expr = target.get("expr")
    if not isinstance(expr, str) or not expr.strip():
        yield "no expr"
        return
    for match in _VARIABLE.finditer(expr):
        name = match.group(1) or match.group(2) or match.group(3)
        if name not in BUILTINS:
            yield f"expr uses the variable {match.group()!r}: only {', '.join('$' + b for b in BUILTINS)} are allowed"
    if _OR_VECTOR.search(expr):
        yield "expr hides missing series behind `or vector(...)`: a misspelled metric must show as no data"
    unbalanced = _unbalanced(expr)
    if unbalanced:
        yield f"expr has an {unbalanced}"
    elif not metric_names(expr):
        yield "expr names no metric"
    if isinstance(legend_format, str):
        # A label is named as a word (by (rule)) or, by label_replace and count_values, as a string.
        words = {text.strip("\"'`") for kind, text in _tokens(expr) if kind in ("name", "string")}
        for label in LEGEND_LABEL.findall(legend_format):
            if label not in words:
                yield f"legendFormat uses {{{{{label}}}}}, a label the expr never names (it would print empty)"


def grid_box(grid: object) -> tuple[int, int, int, int] | None:
    """(x, y, w, h) of a valid gridPos, else None."""
    if not isinstance(grid, dict):
        return None
    values = [grid.get(key) for key in ("x", "y", "w", "h")]
    numbers = [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
    if len(numbers) != 4:
        return None
    x, y, w, h = numbers
    if x < 0 or y < 0 or w < 1 or h < 1 or x + w > GRID_COLUMNS:
        return None
    return x, y, w, h


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def _unit(panel: Mapping[str, Any]) -> str | None:
    config = panel.get("fieldConfig")
    defaults = config.get("defaults") if isinstance(config, dict) else None
    unit = defaults.get("unit") if isinstance(defaults, dict) else None
    return unit if isinstance(unit, str) and unit else None


def _panel_name(index: int, panel: object) -> str:
    title = panel.get("title") if isinstance(panel, dict) else None
    return f"panel {index} {quoted(title)}" if isinstance(title, str) and title else f"panel {index}"


def _shown(value: object) -> str:
    return printable(json.dumps(value, ensure_ascii=False), limit=80) if value is not None else "missing"


# --------------------------------------------------------------------------
# The files
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Dashboard:
    """One dashboard file: `name` is the file's stem (`pipeline`), `data` its parsed JSON."""

    name: str
    path: Path
    data: Any

    @property
    def title(self) -> str:
        title = self.data.get("title") if isinstance(self.data, dict) else None
        return title if isinstance(title, str) else self.name

    @property
    def panels(self) -> list[dict[str, Any]]:
        panels = self.data.get("panels") if isinstance(self.data, dict) else None
        return [p for p in panels if isinstance(p, dict)] if isinstance(panels, list) else []


@dataclass(frozen=True)
class Query:
    """One target of one panel, as the integration tests and the renderer see it."""

    dashboard: str  # the dashboard's title
    file: str  # its file name, e.g. pipeline.json
    panel: str  # the panel's title
    panel_type: str
    unit: str
    ref_id: str
    expr: str  # as written: Grafana's built-ins not yet substituted (see expand_builtins)
    legend_format: str


def load(directory: Path) -> list[Dashboard]:
    """Every *.json in `directory`, parsed, by file name; InputError for a file that is not JSON."""
    if not directory.is_dir():
        raise InputError(f"{directory} is not a directory of dashboards (run from the repository root, or pass --dir)")
    dashboards = []
    for path in sorted(directory.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"{path}: not valid JSON: {exc}") from None
        dashboards.append(Dashboard(path.stem, path, data))
    return dashboards


def check(directory: Path) -> list[str]:
    """Every problem of every dashboard in `directory` (file name first), uids and titles unique across files."""
    try:
        dashboards = load(directory)
    except InputError as exc:
        return [str(exc)]
    if not dashboards:
        return [f"{directory}: no dashboard JSON files"]
    found = [f"{d.path.name}: {problem}" for d in dashboards for problem in problems(d.data)]
    for key in ("uid", "title"):
        seen: dict[object, str] = {}
        for d in dashboards:
            value = d.data.get(key) if isinstance(d.data, dict) else None
            if value is None:
                continue
            if value in seen:
                found.append(f"{d.path.name}: {key} {_shown(value)} is also {seen[value]}'s")
            else:
                seen[value] = d.path.name
    return found


def queries(directory: Path = DEFAULT_DIR) -> list[Query]:
    """Every target of every panel in `directory`, in file and panel order; InputError when a dashboard has problems."""
    found = check(directory)
    if found:
        raise InputError(f"{_count(found, 'problem')} in the dashboards, the first: {found[0]}")
    return [query for d in load(directory) for query in _queries(d)]


def _queries(dashboard: Dashboard) -> Iterator[Query]:
    for panel in dashboard.panels:
        for target in panel["targets"]:
            yield Query(
                dashboard=dashboard.title,
                file=dashboard.path.name,
                panel=panel["title"],
                panel_type=panel["type"],
                unit=_unit(panel) or "none",
                ref_id=target["refId"],
                expr=target["expr"],
                legend_format=target["legendFormat"],
            )


# --------------------------------------------------------------------------
# Time: durations and Grafana's built-ins
# --------------------------------------------------------------------------

_DURATION: Final = re.compile(r"(?:[0-9]+(?:ms|s|m|h|d|w))+")
_DURATION_PART: Final = re.compile(r"([0-9]+)(ms|s|m|h|d|w)")
_SECONDS: Final = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def duration(low_s: float, high_s: float) -> Callable[[str], float]:
    """argparse type: a Prometheus duration (30m, 1h30m, 15s) in seconds, within low_s..high_s.

    >>> duration(1, 86_400)("1h30m")
    5400.0
    >>> duration(1, 86_400)("5x")
    Traceback (most recent call last):
    argparse.ArgumentTypeError: expected a duration like 30m, 1h or 15s (units ms, s, m, h, d, w), got '5x'
    """

    def parse(text: str) -> float:
        if not _DURATION.fullmatch(text):
            raise argparse.ArgumentTypeError(
                f"expected a duration like 30m, 1h or 15s (units ms, s, m, h, d, w), got {quoted(text)}"
            )
        seconds = float(sum(int(n) * _SECONDS[unit] for n, unit in _DURATION_PART.findall(text)))
        if not low_s <= seconds <= high_s:
            raise argparse.ArgumentTypeError(
                f"expected a duration of {human_duration(low_s)}..{human_duration(high_s)}, got {quoted(text)}"
            )
        return seconds

    parse.__name__ = "duration"
    return parse


def human_duration(seconds: float) -> str:
    """A duration as Prometheus writes it: 1800 -> '30m', 5400 -> '1h30m', 0.5 -> '500ms'.

    >>> human_duration(1800), human_duration(5400), human_duration(15), human_duration(0.5), human_duration(90061)
    ('30m', '1h30m', '15s', '500ms', '1d1h1m1s')
    """
    ms = round(seconds * 1000)
    parts = []
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)):
        if ms >= size:
            parts.append(f"{ms // size}{unit}")
            ms %= size
    return "".join(parts) or "0s"


@dataclass(frozen=True)
class Window:
    """What a render asks Prometheus for: [start, end] every `step` seconds."""

    start: float
    end: float
    step: float

    @classmethod
    def ending_now(cls, range_s: float, step_s: float, now: float | None = None) -> Window:
        # Aligned to the step, like Grafana, so two renders a moment apart read the same points.
        end = math.floor((time.time() if now is None else now) / step_s) * step_s
        return cls(end - range_s, end, step_s)

    @property
    def range_s(self) -> float:
        return self.end - self.start

    @property
    def rate_interval_s(self) -> float:
        # Grafana: max($__interval + scrape interval, 4 x scrape interval); our $__interval is the step.
        return max(self.step + SCRAPE_INTERVAL_S, 4 * SCRAPE_INTERVAL_S)


def expand_builtins(expr: str, window: Window) -> str:
    """`expr` with Grafana's built-ins replaced by durations, as Grafana does before it queries.

    >>> expand_builtins("rate(x[$__rate_interval]) / ${__range}", Window(0, 1800, 15))
    'rate(x[1m]) / 30m'
    """
    values = {
        "__rate_interval": human_duration(window.rate_interval_s),
        "__interval": human_duration(window.step),
        "__range": human_duration(window.range_s),
    }

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(3)
        return values.get(name, match.group())

    return _VARIABLE.sub(replace, expr)


# --------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------


def run_check(args: argparse.Namespace, settings: Settings) -> int:
    found = check(args.dir)
    if found:
        for problem in found:
            print(f"  {printable(problem)}")
        raise InputError(f"{_count(found, 'problem')} in the dashboards in {args.dir} (listed above)")
    dashboards = load(args.dir)
    for d in dashboards:
        targets = list(_queries(d))
        names = set().union(*(metric_names(q.expr) for q in targets))
        counts = f"{len(d.panels):3} panels {len(targets):3} queries {len(names):3} metrics"
        print(f"{printable(d.path.name):18} {printable(d.title):24} {counts}")
    print(f"{_count(dashboards, 'dashboard')} in {args.dir}: valid")
    return 0


def run_render(args: argparse.Namespace, settings: Settings) -> int:
    range_s, step_s = args.range, args.step
    if step_s > range_s:
        raise UsageError(f"--step {human_duration(step_s)} is longer than --range {human_duration(range_s)}")
    if range_s / step_s > MAX_POINTS:
        raise UsageError(
            f"--range {human_duration(range_s)} at --step {human_duration(step_s)} is {range_s / step_s:,.0f} points per series; "
            f"Prometheus allows {MAX_POINTS:,}: use a longer --step"
        )
    found = check(args.dir)
    if found:
        raise InputError(
            f"{_count(found, 'problem')} in the dashboards, the first: {found[0]} (see `nudge dashboards check`)"
        )
    dashboards = load(args.dir)
    if args.dashboard:
        known = {d.name: d for d in dashboards}
        unknown = [name for name in args.dashboard if name not in known]
        if unknown:
            raise UsageError(f"no dashboard {quoted(unknown[0])} in {args.dir}: expected one of {', '.join(known)}")
        dashboards = [known[name] for name in dict.fromkeys(args.dashboard)]
    from ops.render import Prometheus, render

    prometheus = Prometheus(args.prometheus or settings.prometheus_url)
    version = prometheus.version()
    window = Window.ending_now(range_s, step_s)
    span = f"last {human_duration(range_s)}, step {human_duration(step_s)}"
    print(f"Prometheus {printable(version, limit=40)} at {prometheus.shown}: {span}")
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for d in dashboards:
        result = render(d, prometheus, window, args.out)
        results.append(result)
        notes = [f"{len(result.empty)} without data"]
        notes += [f"{len(result.partly_empty)} partly"] if result.partly_empty else []
        notes += [f"{len(result.refused)} refused"] if result.refused else []
        print(f"{d.name:10} {printable(d.title):24} {result.panels:3} panels, {', '.join(notes)} -> {result.path}")
        lines = [("no data", result.empty), ("no data from some queries", result.partly_empty)]
        for label, titles in [*lines, ("refused", result.refused)]:
            for title in titles:
                print(f"  {label}: {printable(title)}")
    panels = sum(r.panels for r in results)
    empty = sum(len(r.empty) for r in results)
    paths = ", ".join(str(r.path) for r in results)
    print(f"{_count(results, 'dashboard')}, {panels} panels drawn, {empty} without data: {paths}")
    refused = [f"{r.dashboard.title} / {text}" for r in results for text in r.refused]
    if refused:
        raise InputError(f"Prometheus refused {_count(refused, 'query', 'queries')}, the first: {refused[0]}")
    return 0


def _count(items: Sequence[object], one: str, many: str = "") -> str:
    return f"{len(items)} {one if len(items) == 1 else many or one + 's'}"


def _url(text: str) -> str:
    if not re.fullmatch(r"https?://[!-~]+", text):
        raise argparse.ArgumentTypeError(f"expected an http:// or https:// URL, got {quoted(text)}")
    return text


def _dashboard_name(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", text):
        raise argparse.ArgumentTypeError(
            f"expected a dashboard's file name without .json, e.g. pipeline, got {quoted(text)}"
        )
    return text


_DESCRIPTION: Final = """\
The Grafana dashboards in deploy/grafana/dashboards (pipeline, models, campaigns), as code.

  check    validate every dashboard JSON: uid, title, panels with a title, a description,
           a unit and a gridPos, targets with a refId, a PromQL expr and the Prometheus
           datasource (uid prometheus), no template variables
  render   draw each dashboard's panels to PNG from the same PromQL against a running
           Prometheus (no Grafana needed): one line per series, stat panels as their
           last value, panels without data drawn as "no data" and counted

example:
  nudge dashboards check
  nudge dashboards render --range 1h --dashboard pipeline --out /tmp/dash
"""

_RENDER_EPILOG: Final = """\
examples:
  nudge dashboards render                              every dashboard, last 30m, into docs/dashboards
  nudge dashboards render --range 6h --step 1m         a longer window, fewer points
  nudge dashboards render --prometheus http://prometheus:9090 --dashboard models campaigns

Each panel's expressions run through /api/v1/query_range with Grafana's built-ins
substituted ($__interval = --step, $__range = --range, $__rate_interval =
max(step + 15s, 60s), the scrape interval being 15s). Exit status: 0 when every
query ran (panels without data are listed, not failures), 1 when Prometheus is
unreachable or refused a query (the panel is named), 2 for a bad argument.
"""


def configure(parser: argparse.ArgumentParser) -> None:
    from nudge.args import input_dir, output_dir
    from nudge.cli import settings_epilog

    parser.description = _DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "Run `nudge dashboards ACTION --help` for an action's options."
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--dir",
            type=input_dir,
            default=DEFAULT_DIR,
            metavar="DIR",
            help=f"the dashboards' directory (default: {DEFAULT_DIR})",
        )

    check_parser = actions.add_parser(
        "check",
        help="validate every dashboard JSON; exit 1 listing the problems",
        description="Validate every dashboard JSON in --dir against the contract in ops/dashboards.py.\n\n"
        "example:\n  nudge dashboards check",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common(check_parser)
    check_parser.set_defaults(func=run_check)

    render_parser = actions.add_parser(
        "render",
        help="draw each dashboard to PNG from a running Prometheus",
        description="Draw each dashboard's panels to DIR/NAME.png from the same PromQL, against a running "
        "Prometheus.\n\nexample:\n  nudge dashboards render --range 1h --out docs/dashboards",
        epilog=_RENDER_EPILOG + "\n" + settings_epilog("prometheus_url"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common(render_parser)
    render_parser.add_argument(
        "--prometheus",
        type=_url,
        metavar="URL",
        help="Prometheus's HTTP API (default: NUDGE_PROMETHEUS_URL)",
    )
    render_parser.add_argument(
        "--range",
        type=duration(60, 31 * 86_400),
        default=1800.0,
        metavar="DURATION",
        help="how far back to draw, 1m..31d (default: 30m)",
    )
    render_parser.add_argument(
        "--step",
        type=duration(1, 86_400),
        default=15.0,
        metavar="DURATION",
        help="one point every DURATION, 1s..1d (default: 15s, the scrape interval)",
    )
    render_parser.add_argument(
        "--out",
        type=output_dir,
        default=Path("docs/dashboards"),
        metavar="DIR",
        help="where the PNGs go, one per dashboard, NAME.png (default: docs/dashboards)",
    )
    render_parser.add_argument(
        "--dashboard",
        type=_dashboard_name,
        nargs="+",
        metavar="NAME",
        help="only these dashboards, by file name without .json (default: all)",
    )
    render_parser.set_defaults(func=run_render)
