"""The Grafana dashboards (deploy/grafana/dashboards) and `nudge dashboards` (ops/dashboards.py, ops/render.py).

The dashboards are valid Grafana JSON by the contract ops/dashboards.py
states (each kind of breach is caught: one test each, built from a valid
dashboard), every expr parses (promtool), and every metric they name is
documented in the README's Operations tables. The renderer runs against a
fake Prometheus served here on 127.0.0.1, the only network these tests use.
"""

from __future__ import annotations

import copy
import doctest
import json
import re
import shutil
import socket
import subprocess
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from nudge.cli import main
from nudge.errors import DependencyUnavailable, InputError
from ops import dashboards, render
from ops.dashboards import (
    DATASOURCE,
    PROMETHEUS_SERIES,
    Window,
    check,
    expand_builtins,
    load,
    metric_names,
    problems,
    queries,
)
from ops.render import Prometheus, QueryError

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "deploy" / "grafana" / "dashboards"
FILES = sorted(DASHBOARDS.glob("*.json"))


# --- the dashboards themselves ---------------------------------------------------------------------------------------


def test_the_three_dashboards_are_there() -> None:
    assert [path.stem for path in FILES] == ["campaigns", "models", "pipeline"]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_each_dashboard_keeps_the_contract(path: Path) -> None:
    dashboard = json.loads(path.read_text(encoding="utf-8"))
    assert problems(dashboard) == []
    # What the contract means, spelled out once more against the file itself.
    assert dashboard["uid"] and dashboard["title"] and dashboard["panels"]
    for panel in dashboard["panels"]:
        assert panel["title"] and panel["description"] and panel["fieldConfig"]["defaults"]["unit"]
        assert set(panel["gridPos"]) == {"x", "y", "w", "h"}
        assert panel["targets"]
        for target in panel["targets"]:
            assert target["refId"] and target["expr"] and target["datasource"] == DATASOURCE


def test_uids_and_titles_are_unique_across_the_files() -> None:
    assert check(DASHBOARDS) == []
    found = load(DASHBOARDS)
    assert len({d.data["uid"] for d in found}) == len({d.data["title"] for d in found}) == len(FILES)


def test_the_datasource_is_the_one_grafana_provisions() -> None:
    provisioned = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    source = provisioned["datasources"][0]
    assert {"type": source["type"], "uid": source["uid"]} == DATASOURCE
    # $__rate_interval is computed from the scrape interval the datasource declares.
    assert source["jsonData"]["timeInterval"] == f"{dashboards.SCRAPE_INTERVAL_S:g}s"


def test_every_expr_parses_as_promql(tmp_path: Path) -> None:
    # promtool parses each expr as a recording rule: a PromQL typo fails here, not in front of Grafana.
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: apt-get install prometheus"
    window = Window(0, 1800, 15)
    rules = [
        {"record": f"dashboard:query_{i}", "expr": expand_builtins(q.expr, window)}
        for i, q in enumerate(queries(DASHBOARDS))
    ]
    assert len(rules) > 40
    path = tmp_path / "dashboards.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    checked = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def _documented() -> set[str]:
    """Metric names in the README's "## Operations" section (its tables and text)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Operations\n", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"`(nudge_[a-z0-9_]+)", section)) | set(re.findall(r"\b(nudge_[a-z0-9_]+)`", section))


def test_every_metric_a_dashboard_names_is_documented_in_the_readme() -> None:
    documented = _documented()
    missing: dict[str, list[str]] = {}
    for query in queries(DASHBOARDS):
        for name in metric_names(query.expr):
            series = re.sub(r"_(bucket|count|sum)$", "", name)
            if name in PROMETHEUS_SERIES or name in documented or series in documented:
                continue
            missing.setdefault(name, []).append(f"{query.file} {query.panel!r}")
    assert not missing, f"named by a dashboard, not in README.md's Operations tables: {sorted(missing)}"


def test_every_dashboard_names_only_nudge_metrics_or_prometheus_own() -> None:
    for query in queries(DASHBOARDS):
        for name in metric_names(query.expr):
            assert name.startswith("nudge_") or name in PROMETHEUS_SERIES, (query.panel, name)


# --- the validator catches each kind of problem ----------------------------------------------------------------------


def _valid() -> dict[str, Any]:
    def panel(pid: int, x: int, kind: str = "timeseries") -> dict[str, Any]:
        return {
            "id": pid,
            "type": kind,
            "title": f"Panel {pid}",
            "description": "what it shows",
            "datasource": dict(DATASOURCE),
            "gridPos": {"x": x, "y": 0, "w": 12, "h": 8},
            "fieldConfig": {"defaults": {"unit": "ops"}, "overrides": []},
            "targets": [
                {
                    "refId": "A",
                    "datasource": dict(DATASOURCE),
                    "expr": "sum by (outcome) (rate(nudge_stream_events_total[$__rate_interval]))",
                    "legendFormat": "{{outcome}}",
                }
            ],
        }

    return {
        "uid": "test-board",
        "title": "Test",
        "schemaVersion": 39,
        "templating": {"list": []},
        "panels": [panel(1, 0), panel(2, 12, "stat")],
    }


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation setting (or, with value DELETE, deleting) the key at a dotted path, e.g. panels.0.gridPos.w."""

    def mutate(board: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = board
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if value is DELETE:
            del node[int(last) if isinstance(node, list) else last]
        elif isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return mutate


DELETE = object()
TARGET = "panels.0.targets.0"

BREACHES = [
    ("uid missing", _set("uid", DELETE), "uid missing: expected 1..40"),
    ("uid with a space", _set("uid", "my board"), 'uid "my board": expected 1..40'),
    ("uid too long", _set("uid", "x" * 41), "expected 1..40 letters"),
    ("no title", _set("title", " "), "no title"),
    ("schemaVersion missing", _set("schemaVersion", DELETE), "schemaVersion missing"),
    ("schemaVersion too old", _set("schemaVersion", 16), "schemaVersion 16: expected 36..41"),
    ("template variable", _set("templating", {"list": [{"name": "job"}]}), "template variables are not allowed"),
    ("no panels", _set("panels", []), "no panels"),
    ("panel not an object", _set("panels.1", "x"), "panel 2: expected a JSON object"),
    ("row panel", _set("panels.0.type", "row"), "type \"row\": expected one of stat, timeseries"),
    ("panel without title", _set("panels.0.title", DELETE), "panel 1: no title"),
    ("panel without description", _set("panels.0.description", ""), "no description"),
    ("panel id missing", _set("panels.0.id", DELETE), "id missing: expected a positive integer"),
    ("panel ids repeated", _set("panels.1.id", 1), "panel id 1 is used by 2 panels"),
    ("gridPos missing", _set("panels.0.gridPos", DELETE), "gridPos missing: expected integers"),
    ("gridPos past column 24", _set("panels.1.gridPos.x", 13), "x + w <= 24"),
    ("gridPos of zero height", _set("panels.0.gridPos.h", 0), "w, h >= 1"),
    ("gridPos not an integer", _set("panels.0.gridPos.w", 6.5), "gridPos"),
    ("gridPos overlapping", _set("panels.1.gridPos.x", 6), "panel 2 'Panel 2': gridPos overlaps panel 1 'Panel 1'"),
    ("panel datasource", _set("panels.0.datasource", {"type": "loki", "uid": "loki"}), 'datasource {"type": "loki"'),
    ("no unit", _set("panels.0.fieldConfig.defaults.unit", DELETE), "no unit (fieldConfig.defaults.unit)"),
    ("no fieldConfig", _set("panels.0.fieldConfig", DELETE), "no unit"),
    ("unknown unit", _set("panels.0.fieldConfig.defaults.unit", "furlongs"), "unit 'furlongs': expected one of"),
    ("no targets", _set("panels.0.targets", []), "no targets"),
    ("target without refId", _set(f"{TARGET}.refId", DELETE), "target 1: no refId"),
    ("refId repeated", lambda b: b["panels"][0]["targets"].append(copy.deepcopy(b["panels"][0]["targets"][0])),
     "refId A is used by 2 targets"),
    ("target datasource uid", _set(f"{TARGET}.datasource", {"type": "prometheus", "uid": "other"}), "target A: datasource"),
    ("target datasource missing", _set(f"{TARGET}.datasource", DELETE), "target A: datasource missing"),
    ("no legendFormat", _set(f"{TARGET}.legendFormat", DELETE), "target A: no legendFormat"),
    ("no expr", _set(f"{TARGET}.expr", ""), "target A: no expr"),
    ("expr with a template variable", _set(f"{TARGET}.expr", 'up{job="$job"}'), "uses the variable '$job'"),
    ("expr with ${var}", _set(f"{TARGET}.expr", "rate(x_total[${window}])"), "uses the variable '${window}'"),
    ("expr with [[var]]", _set(f"{TARGET}.expr", 'up{job="[[job]]"}'), "uses the variable '[[job]]'"),
    ("expr hiding a missing metric", _set(f"{TARGET}.expr", "sum(rate(x_total[5m])) or vector(0)"), "or vector(...)"),
    ("expr unbalanced", _set(f"{TARGET}.expr", "sum(rate(x_total[5m])"), "expr has an unclosed '('"),
    ("expr closing the wrong bracket", _set(f"{TARGET}.expr", "sum(rate(x_total[5m)))"), "unmatched ')'"),
    ("expr without a metric", _set(f"{TARGET}.expr", "1 + time()"), "expr names no metric"),
    ("legend label the expr never names", _set(f"{TARGET}.legendFormat", "{{channel}}"), "uses {{channel}}, a label"),
]  # fmt: skip


def test_the_valid_example_is_valid() -> None:
    assert problems(_valid()) == []


def test_promql_own_dollar_is_not_a_variable() -> None:
    board = _valid()
    board["panels"][0]["targets"][0]["expr"] = 'label_replace(up, "outcome", "$1", "job", "nudge-(.*)")'
    assert problems(board) == []


@pytest.mark.parametrize(("mutate", "says"), [pytest.param(m, s, id=i) for i, m, s in BREACHES])
def test_the_validator_catches(mutate: Callable[[dict[str, Any]], None], says: str) -> None:
    board = _valid()
    mutate(board)
    found = problems(board)
    assert any(says in problem for problem in found), found


@pytest.mark.parametrize("value", [[], "text", None, 3])
def test_a_dashboard_must_be_an_object(value: object) -> None:
    assert problems(value) == [f"expected a JSON object, got {type(value).__name__}"]


def test_check_catches_a_uid_or_title_used_twice_across_files(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / f"{name}.json").write_text(json.dumps(_valid()))
    assert check(tmp_path) == [
        'b.json: uid "test-board" is also a.json\'s',
        'b.json: title "Test" is also a.json\'s',
    ]


def test_check_names_a_file_that_is_not_json(tmp_path: Path) -> None:
    (tmp_path / "broken.json").write_text('{"uid": ')
    [problem] = check(tmp_path)
    assert problem.startswith(f"{tmp_path / 'broken.json'}: not valid JSON")


def test_check_wants_dashboards(tmp_path: Path) -> None:
    assert check(tmp_path) == [f"{tmp_path}: no dashboard JSON files"]
    assert "is not a directory of dashboards" in check(tmp_path / "none")[0]


def test_queries_refuse_a_directory_with_problems(tmp_path: Path) -> None:
    board = _valid()
    del board["panels"][0]["fieldConfig"]
    (tmp_path / "a.json").write_text(json.dumps(board))
    with pytest.raises(InputError, match=re.escape("1 problem in the dashboards, the first: a.json: panel 1")):
        queries(tmp_path)


def test_queries_list_every_target_with_its_panel() -> None:
    found = queries(DASHBOARDS)
    targets = sum(len(p["targets"]) for path in FILES for p in json.loads(path.read_text())["panels"])
    assert len(found) == targets
    first = found[0]
    assert (first.file, first.dashboard) == ("campaigns.json", "nudge: Campaigns")
    assert first.panel and first.unit and first.ref_id == "A" and "nudge_" in first.expr


# --- PromQL: metric names --------------------------------------------------------------------------------------------

METRIC_NAMES = [
    ("histogram_quantile(0.99, sum by (le) (rate(nudge_stream_freshness_seconds_bucket[5m])))",
     {"nudge_stream_freshness_seconds_bucket"}),
    ('nudge_model_quality{model="churn",metric="auc"} < ignoring(metric) nudge_model_quality{metric="baseline_auc"}',
     {"nudge_model_quality"}),
    # Label values that look like metric names are not metric names.
    ('sum(rate(x_total{job="nudge_other_total", code=~"5..|nudge_y"}[$__rate_interval]))', {"x_total"}),
    ("rate(a_total[5m] offset 1h) - rate(a_total[5m] offset -30m)", {"a_total"}),
    ("time() - max(nudge_trainer_snapshot_timestamp_seconds)", {"nudge_trainer_snapshot_timestamp_seconds"}),
    ("sum without (instance, job) (b) / on (rule) group_left (group) c", {"b", "c"}),
    ("sum(b) by (rule) * 2", {"b"}),
    ("SUM BY (le) (RATE(Metric_Bucket[1h30m]))", {"Metric_Bucket"}),
    ("max_over_time(deriv(g[10m])[1h:1m])", {"g"}),
    ("x > bool 0 and y unless z or w", {"x", "y", "z", "w"}),
    ("topk(5, a) + quantile(0.9, b) + count_values(\"value\", c)", {"a", "b", "c"}),
    ("label_replace(up, \"dst\", \"$1\", \"instance\", \"(.*):.*\")", {"up"}),
    ('{__name__="nudge_named_by_label", job="w"}', {"nudge_named_by_label"}),
    ("a @ start() + b @ 1609746000", {"a", "b"}),
    ("1e-9 + 0x1F + Inf + NaN + clamp_min(d, 1e-9)", {"d"}),
    ("e  # a comment naming f_total", {"e"}),
    ("colon:recorded:rate5m", {"colon:recorded:rate5m"}),
    ("", set()),
]  # fmt: skip


@pytest.mark.parametrize(("expr", "names"), METRIC_NAMES, ids=[e[:40] for e, _ in METRIC_NAMES])
def test_metric_names(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


# --- time: durations and Grafana's built-ins -------------------------------------------------------------------------


def test_builtins_are_substituted_like_grafana() -> None:
    # $__rate_interval = max($__interval + scrape interval, 4 x scrape interval), scrape interval 15s.
    assert expand_builtins("rate(x[$__rate_interval])", Window(0, 1800, 15)) == "rate(x[1m])"
    assert expand_builtins("rate(x[$__rate_interval])", Window(0, 86_400, 60)) == "rate(x[1m15s])"
    assert expand_builtins("increase(x[$__range]) / $__interval", Window(0, 5400, 30)) == "increase(x[1h30m]) / 30s"
    assert expand_builtins("rate(x[${__rate_interval}])", Window(0, 1800, 15)) == "rate(x[1m])"


def test_window_ends_on_a_step() -> None:
    window = Window.ending_now(1800, 15, now=1_000_007.5)
    assert (window.start, window.end, window.step) == (998_205.0, 1_000_005.0, 15)


def test_module_doctests() -> None:
    for module in (dashboards, render):
        result = doctest.testmod(module)
        assert result.failed == 0 and result.attempted > 0, module.__name__


# --- rendering against a fake Prometheus -----------------------------------------------------------------------------


class FakePrometheus:
    """Prometheus's HTTP API as far as the renderer uses it. Queries naming a metric in `empty` return no
    series, in `nan` two series of NaN, in `refuse` Prometheus's 400 error; every other query two series."""

    def __init__(self) -> None:
        self.empty: set[str] = set()
        self.refuse: set[str] = set()
        self.nan: set[str] = set()  # series whose every point is NaN (a histogram_quantile of no observations)
        self.queries: list[dict[str, str]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/api/v1/status/buildinfo":
                    self._send(200, {"status": "success", "data": {"version": "2.99.0-fake"}})
                else:
                    self._send(404, None)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"])).decode()
                form = {k: v[0] for k, v in urllib.parse.parse_qs(body).items()}
                if self.path != "/api/v1/query_range":
                    self._send(404, None)
                    return
                fake.queries.append(form)
                names = metric_names(form["query"])
                if names & fake.refuse:
                    error = {"status": "error", "errorType": "bad_data", "error": "1:5: parse error: unexpected"}
                    self._send(400, error)
                    return
                start, end, step = float(form["start"]), float(form["end"]), float(form["step"])
                points = [start + i * step for i in range(int((end - start) / step) + 1)]
                result = [] if names & fake.empty else [
                    {"metric": {"outcome": outcome, "job": "nudge-worker"},
                     "values": [[t, "NaN" if names & fake.nan else str(value + (i % 7))] for i, t in enumerate(points)]}
                    for outcome, value in (("applied", 100), ("late", 3))
                ]  # fmt: skip
                self._send(200, {"status": "success", "data": {"resultType": "matrix", "result": result}})

            def _send(self, code: int, payload: object) -> None:
                body = json.dumps(payload).encode() if payload is not None else b"<html>not found</html>"
                self.send_response(code)
                self.send_header("Content-Type", "application/json" if payload is not None else "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def prometheus() -> Iterator[FakePrometheus]:
    fake = FakePrometheus()
    yield fake
    fake.close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _panels_naming(prefix: str) -> set[str]:
    """Titles of the panels whose every query names a metric starting with `prefix`."""
    by_panel: dict[tuple[str, str], list[bool]] = {}
    for q in queries(DASHBOARDS):
        by_panel.setdefault((q.file, q.panel), []).append(any(n.startswith(prefix) for n in metric_names(q.expr)))
    return {panel for (_, panel), hits in by_panel.items() if all(hits)}


def _run(argv: list[str]) -> int | str | None:
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


def test_render_draws_one_png_per_dashboard_and_counts_panels_without_data(
    prometheus: FakePrometheus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(ROOT)
    prometheus.empty = {"nudge_campaign_revenue_eur", "nudge_campaign_offer_cost_eur", "nudge_campaign_sends"}
    prometheus.empty.add("nudge_redis_write_errors_total")  # one query of a panel whose other one has data
    status = _run(["dashboards", "render", "--prometheus", prometheus.url, "--out", str(tmp_path / "png")])
    out, err = capsys.readouterr()
    assert status == 0, err
    for path in FILES:
        png = tmp_path / "png" / f"{path.stem}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    empty = _panels_naming("nudge_campaign_revenue_eur") | _panels_naming("nudge_campaign_offer_cost_eur")
    empty |= _panels_naming("nudge_campaign_sends")
    assert len(empty) == 4
    for title in empty:
        assert f"  no data: {title}\n" in out
    assert "  no data from some queries: Redis writes (B)\n" in out
    panels = sum(len(json.loads(p.read_text())["panels"]) for p in FILES)
    assert f"3 dashboards, {panels} panels drawn, {len(empty)} without data" in out
    # Grafana's built-ins never reach Prometheus; the window is the one asked for.
    assert len(prometheus.queries) == len(queries(DASHBOARDS))
    assert not any("$" in q["query"] for q in prometheus.queries)
    assert {(float(q["end"]) - float(q["start"]), float(q["step"])) for q in prometheus.queries} == {(1800.0, 15.0)}


def test_render_one_dashboard_with_a_window(prometheus: FakePrometheus, tmp_path: Path) -> None:
    status = _run(
        ["dashboards", "render", "--prometheus", prometheus.url + "/", "--dir", str(DASHBOARDS),
         "--out", str(tmp_path), "--dashboard", "models", "--range", "2h", "--step", "1m"]
    )  # fmt: skip
    assert status == 0
    assert [p.name for p in tmp_path.iterdir()] == ["models.png"]
    assert {q["step"] for q in prometheus.queries} == {"60"}
    assert all("[1m15s]" in q["query"] or "$" not in q["query"] for q in prometheus.queries)


def test_a_dashboard_without_any_data_is_drawn_with_every_panel_counted(
    prometheus: FakePrometheus, tmp_path: Path
) -> None:
    [dashboard] = [d for d in load(DASHBOARDS) if d.name == "pipeline"]
    prometheus.empty = {name for q in queries(DASHBOARDS) if q.file == "pipeline.json" for name in metric_names(q.expr)}
    result = render.render(dashboard, Prometheus(prometheus.url), Window.ending_now(600, 15), tmp_path)
    assert result.panels == len(dashboard.panels) == len(result.empty)
    assert result.path.stat().st_size > 10_000


def test_series_of_nan_only_are_no_data(prometheus: FakePrometheus, tmp_path: Path) -> None:
    # Freshness p50 and p99 of a window without observations: series exist, every point NaN.
    [dashboard] = [d for d in load(DASHBOARDS) if d.name == "pipeline"]
    prometheus.nan = {"nudge_stream_freshness_seconds_bucket"}
    result = render.render(dashboard, Prometheus(prometheus.url), Window.ending_now(600, 15), tmp_path)
    assert set(result.empty) == {"Freshness p99", "Freshness: Kafka to Redis"}


def test_a_refused_query_names_its_dashboard_and_panel(
    prometheus: FakePrometheus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(ROOT)
    prometheus.refuse = {"nudge_consumer_lag_messages"}
    status = _run(["dashboards", "render", "--prometheus", prometheus.url, "--out", str(tmp_path)])
    out, err = capsys.readouterr()
    assert status == 1
    [line] = err.splitlines()
    assert line.startswith("nudge dashboards: error: Prometheus refused 2 queries, the first: nudge: Pipeline / ")
    assert "Consumer lag" in line and "(A: bad_data: 1:5: parse error: unexpected)" in line
    # The other panels still drew, and the summary lists both refusals.
    assert (tmp_path / "pipeline.png").stat().st_size > 20_000 and out.count("  refused: ") == 2


def test_an_unreachable_prometheus_is_one_line_naming_its_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(ROOT)
    url = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(DependencyUnavailable, match=f"Prometheus is not reachable at {re.escape(url)}: "):
        Prometheus(url).version()
    monkeypatch.setenv("NUDGE_PROMETHEUS_URL", url)  # the setting is the default
    status = _run(["dashboards", "render", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert status == 1
    [line] = err.splitlines()
    assert line.startswith(f"nudge dashboards: error: Prometheus is not reachable at {url}: ")
    assert list(tmp_path.iterdir()) == []


def test_a_server_that_is_not_prometheus_is_named(prometheus: FakePrometheus) -> None:
    with pytest.raises(DependencyUnavailable, match=r"answered HTTP 404 to /api/v1/query_range: is it Prometheus"):
        Prometheus(prometheus.url + "/not-here").query_range("up", Window(0, 60, 15))


def test_a_password_in_the_url_is_sent_but_never_shown(prometheus: FakePrometheus) -> None:
    client = Prometheus(prometheus.url.replace("http://", "http://admin:hunter2@"))
    assert "hunter2" not in client.shown and client.version() == "2.99.0-fake"
    with pytest.raises(QueryError, match="bad_data"):
        prometheus.refuse = {"x"}
        client.query_range("x", Window(0, 60, 15))


def test_legend_and_units() -> None:
    assert render.legend("{{rule}} {{group}}", {"rule": "win_back", "group": "holdout"}) == "win_back holdout"
    assert render.legend("{{missing}} p99", {}) == "p99"
    assert render.format_value(0.0004, "s") == "400 µs"
    assert render.format_value(2.5e6, "currencyEUR") == "€2.5M"
    assert render.format_value(float("nan"), "ops") == "NaN"


# --- the command line ------------------------------------------------------------------------------------------------

BAD_ARGS = [
    (["dashboards"], "the following arguments are required: ACTION"),
    (["dashboards", "draw"], "invalid choice: 'draw'"),
    (["dashboards", "render", "--range", "5x"], "--range: expected a duration like 30m, 1h or 15s"),
    (["dashboards", "render", "--range", "10s"], "--range: expected a duration of 1m..31d, got '10s'"),
    (["dashboards", "render", "--step", "0s"], "--step: expected a duration of 1s..1d"),
    (["dashboards", "render", "--step", "15"], "--step: expected a duration like 30m"),
    (["dashboards", "render", "--range", "31d", "--step", "1s"], "is 2,678,400 points per series; Prometheus allows"),
    (["dashboards", "render", "--range", "30m", "--step", "1h"], "--step 1h is longer than --range 30m"),
    (["dashboards", "render", "--prometheus", "ftp://example"], "--prometheus: expected an http:// or https:// URL"),
    (["dashboards", "render", "--dashboard", "nope"], "no dashboard 'nope' in deploy/grafana/dashboards: expected one of"),
    (["dashboards", "render", "--dashboard", "a\x1b[2J"], "--dashboard: expected a dashboard's file name"),
    (["dashboards", "render", "--out", "/proc/version"], "--out: cannot write into /proc/version"),
    (["dashboards", "check", "--dir", "/nonexistent"], "--dir: /nonexistent does not exist"),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "says"), BAD_ARGS, ids=lambda v: " ".join(v)[:60] if isinstance(v, list) else "")
def test_bad_arguments_are_one_line_and_exit_2(
    argv: list[str], says: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(ROOT)
    # A closed port: a row that reached Prometheus would fail with status 1, not 2.
    monkeypatch.setenv("NUDGE_PROMETHEUS_URL", f"http://127.0.0.1:{_closed_port()}")
    status = _run(argv)
    err = capsys.readouterr().err
    [line] = err.splitlines()
    assert says in line and "\x1b" not in line
    assert status == 2, line


def test_check_prints_a_summary(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(ROOT)
    assert _run(["dashboards", "check"]) == 0
    out = capsys.readouterr().out
    assert "pipeline.json" in out and "3 dashboards in deploy/grafana/dashboards: valid" in out


def test_check_lists_problems_and_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    board = _valid()
    board["panels"][1]["fieldConfig"]["defaults"]["unit"] = "furlongs"
    del board["panels"][0]["description"]
    (tmp_path / "bad.json").write_text(json.dumps(board))
    assert _run(["dashboards", "check", "--dir", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert "  bad.json: panel 1 'Panel 1': no description\n" in out
    assert "  bad.json: panel 2 'Panel 2': unit 'furlongs'" in out
    assert err == f"nudge dashboards: error: 2 problems in the dashboards in {tmp_path} (listed above)\n"


def test_render_refuses_dashboards_with_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    board = _valid()
    board["panels"][0]["targets"][0].update(expr="sum(rate(x_total[5m])) or vector(0)", legendFormat="")
    (tmp_path / "bad.json").write_text(json.dumps(board))
    assert _run(["dashboards", "render", "--dir", str(tmp_path), "--prometheus", "http://127.0.0.1:1"]) == 1
    assert "1 problem in the dashboards, the first: bad.json: panel 1" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["dashboards", "--help"], ["dashboards", "render", "--help"]])
def test_help_teaches(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(argv) == 0
    out = capsys.readouterr().out
    assert "example" in out and "nudge dashboards" in out
    if "render" in argv:
        assert "NUDGE_PROMETHEUS_URL" in out and "$__rate_interval" in out
