"""Dashboards drawn to PNG from Prometheus: what `nudge dashboards render` does, for people without Grafana.

No Grafana runs on our machines, and the README shows the dashboards as
images, so this draws each panel of a dashboard (ops/dashboards.py checked
it first) the way Grafana would from the same PromQL: the panels where their
gridPos puts them on the 24-column grid, one line per series named by its
legendFormat, the unit on the axis, a stat panel as its last value coloured
by its thresholds. A panel whose queries return nothing is drawn as "no
data" and counted: against a running loop that is a misspelled metric or a
process not scraped, which is what a reader of the PNG must see.

Prometheus is read through its HTTP API (`/api/v1/query_range`) with the
standard library: a refused query (HTTP 400 and Prometheus's error text) is
a `QueryError` recorded on its panel while the other panels still draw; a
server that cannot be reached, or does not answer like Prometheus, is
`DependencyUnavailable` naming its URL (without any password in it).
"""

from __future__ import annotations

import base64
import http.client
import json
import math
import textwrap
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from nudge.errors import DependencyUnavailable, InputError
from nudge.text import printable
from ops.dashboards import (
    GRID_COLUMNS,
    LEGEND_LABEL,
    UNITS,
    Dashboard,
    Window,
    expand_builtins,
    grid_box,
    human_duration,
)

__all__ = [
    "PanelData",
    "Prometheus",
    "QueryError",
    "Rendered",
    "Series",
    "draw",
    "fetch",
    "format_value",
    "legend",
    "render",
]

# --------------------------------------------------------------------------
# Prometheus's HTTP API
# --------------------------------------------------------------------------


class QueryError(InputError):
    """Prometheus refused a query (a PromQL error, a time-out): the message is its own."""


@dataclass(frozen=True)
class Series:
    """One series of a range query: its labels and its points (NaN where Prometheus has none)."""

    labels: Mapping[str, str]
    times: Sequence[float]
    values: Sequence[float]

    def last(self) -> float:
        """The last finite value, NaN when there is none (Grafana's "lastNotNull")."""
        return next((v for v in reversed(self.values) if math.isfinite(v)), math.nan)


class Prometheus:
    """A client of Prometheus's HTTP API at `url` (a path prefix allowed; user:password@ sent as basic auth)."""

    def __init__(self, url: str, timeout_s: float = 15.0) -> None:
        parts = urllib.parse.urlsplit(url)
        self._headers = {"User-Agent": "nudge-dashboards", "Accept": "application/json"}
        if parts.username is not None:
            credentials = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
            self._headers["Authorization"] = "Basic " + base64.b64encode(credentials.encode()).decode()
            parts = parts._replace(netloc=parts.netloc.rpartition("@")[2])
        self.base = urllib.parse.urlunsplit(parts).rstrip("/")
        # What messages show: never a password.
        self.shown = printable(self.base, limit=200)
        self.timeout_s = timeout_s

    def version(self) -> str:
        """The server's version (/api/v1/status/buildinfo): proves it is there and speaks the API."""
        data = self._call("/api/v1/status/buildinfo", None)
        return str(data.get("version", "?")) if isinstance(data, dict) else "?"

    def query_range(self, expr: str, window: Window) -> list[Series]:
        """The series `expr` yields over `window`; QueryError when Prometheus refuses it."""
        form = {"query": expr, "start": f"{window.start:.3f}", "end": f"{window.end:.3f}", "step": f"{window.step:g}"}
        data = self._call("/api/v1/query_range", form)
        if not isinstance(data, dict) or data.get("resultType") != "matrix" or not isinstance(data.get("result"), list):
            raise DependencyUnavailable(f"Prometheus at {self.shown} answered a range query without a matrix")
        return [_series(item, window) for item in data["result"] if isinstance(item, dict)]

    def _call(self, path: str, form: Mapping[str, str] | None) -> Any:
        body = urllib.parse.urlencode(form).encode() if form is not None else None
        request = urllib.request.Request(self.base + path, data=body, headers=self._headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                payload = response.read()
        except urllib.error.HTTPError as exc:
            # Prometheus answers a bad query with 400/422/503 and a JSON error naming the problem.
            error = _api_error(exc.read())
            if error is not None:
                raise QueryError(error) from None
            raise DependencyUnavailable(
                f"{self.shown} answered HTTP {exc.code} to {path}: is it Prometheus (its HTTP API at this URL)?"
            ) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            raise DependencyUnavailable(f"Prometheus is not reachable at {self.shown}: {reason}") from None
        try:
            answer = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError):
            answer = None
        if not isinstance(answer, dict) or answer.get("status") != "success":
            error = _api_error(payload)
            if error is not None:
                raise QueryError(error)
            raise DependencyUnavailable(f"{self.shown} answered {path} with something that is not Prometheus's API")
        return answer.get("data")


def _api_error(payload: bytes) -> str | None:
    """Prometheus's error text from an error answer's body, or None if it is not one."""
    try:
        answer = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(answer, dict) or answer.get("status") != "error":
        return None
    kind, error = answer.get("errorType", ""), answer.get("error", "")
    return printable(f"{kind}: {error}" if kind else str(error), limit=300)


def _series(item: Mapping[str, Any], window: Window) -> Series:
    """A matrix item on the window's full grid of steps: NaN where a point is missing, so lines break at gaps."""
    count = math.floor(window.range_s / window.step + 1e-9) + 1  # start, start + step, ... up to end
    values = [math.nan] * count
    for point in item.get("values") or []:
        try:
            at, value = float(point[0]), float(point[1])
        except (TypeError, ValueError, IndexError):
            continue
        index = round((at - window.start) / window.step)
        if 0 <= index < count:
            values[index] = value
    labels = item.get("metric") or {}
    return Series(
        labels={str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {},
        times=[window.start + i * window.step for i in range(count)],
        values=values,
    )


# --------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------


@dataclass
class PanelData:
    """One panel's query results: (legend, series) pairs, the errors of targets Prometheus refused,
    and the refIds of targets that returned no data (NaN only counts as none, as in Grafana's stat)."""

    panel: Mapping[str, Any]
    series: list[tuple[str, Series]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    quiet: list[str] = field(default_factory=list)

    @property
    def title(self) -> str:
        return str(self.panel.get("title", ""))

    @property
    def has_data(self) -> bool:
        return any(math.isfinite(v) for _, s in self.series for v in s.values)


@dataclass(frozen=True)
class Rendered:
    """What one dashboard's render drew."""

    dashboard: Dashboard
    path: Path
    panels: int
    empty: list[str]  # titles of the panels without data
    partly_empty: list[str]  # "panel (refIds)" of panels where some queries returned data and some none
    refused: list[str]  # "panel (refId): Prometheus's error", one per query refused


def legend(legend_format: str, labels: Mapping[str, str]) -> str:
    """A series' name in the legend: `{{label}}` replaced by its value, like Grafana; the labels when no format.

    >>> legend("{{job}} {{topic}}", {"job": "nudge-worker", "topic": "clicks"})
    'nudge-worker clicks'
    >>> legend("", {"__name__": "up", "job": "w"})
    'up{job="w"}'
    """
    if legend_format and legend_format != "__auto":
        text = LEGEND_LABEL.sub(lambda m: labels.get(m.group(1), ""), legend_format)
        return " ".join(text.split())
    name = labels.get("__name__", "")
    rest = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "__name__")
    return f"{name}{{{rest}}}" if rest or not name else name


def fetch(dashboard: Dashboard, prometheus: Prometheus, window: Window) -> list[PanelData]:
    """Every panel's series over `window`; a refused query is recorded on its panel, the others still run."""
    panels = []
    for panel in dashboard.panels:
        data = PanelData(panel)
        for target in panel["targets"]:
            try:
                found = prometheus.query_range(expand_builtins(target["expr"], window), window)
            except QueryError as exc:
                data.errors.append(f"{target['refId']}: {exc}")
                continue
            data.series += [(legend(target["legendFormat"], s.labels), s) for s in found]
            if not any(math.isfinite(v) for s in found for v in s.values):
                data.quiet.append(target["refId"])
        panels.append(data)
    return panels


def render(dashboard: Dashboard, prometheus: Prometheus, window: Window, out_dir: Path) -> Rendered:
    """Query every panel of `dashboard` and draw it to out_dir/NAME.png."""
    panels = fetch(dashboard, prometheus, window)
    path = out_dir / f"{dashboard.name}.png"
    draw(dashboard, panels, window, path, source=prometheus.shown)
    return Rendered(
        dashboard=dashboard,
        path=path,
        panels=len(panels),
        empty=[p.title for p in panels if not p.has_data and not p.errors],
        # One misspelled metric among a panel's queries must show too, not hide behind the others.
        partly_empty=[f"{p.title} ({', '.join(p.quiet)})" for p in panels if p.has_data and p.quiet],
        refused=[f"{p.title} ({error})" for p in panels for error in p.errors],
    )


def format_value(value: float, unit: str, decimals: int | None = None) -> str:
    """`value` as Grafana shows it in `unit` (3 significant digits unless `decimals` is given).

    >>> format_value(1234.5, "ops"), format_value(0.0123, "percentunit"), format_value(0.25, "s")
    ('1.23k ops/s', '1.23%', '250 ms')
    >>> format_value(5400, "s"), format_value(3 * 2**20, "bytes"), format_value(0.7184, "none", 3)
    ('1.5 h', '3 MiB', '0.718')
    """
    if not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("+Inf" if value > 0 else "-Inf")
    if abs(value) < 1e-12:
        value = 0.0  # floating-point residue of a difference (x - x), not a measurement
    if unit == "percentunit":
        return f"{_number(value * 100, decimals)}%"
    if unit in ("s", "ms"):
        return _seconds(value / 1000 if unit == "ms" else value)
    if unit == "bytes":
        size, prefix = abs(value), 0
        while size >= 1024 and prefix < 5:
            size, prefix = size / 1024, prefix + 1
        return f"{math.copysign(size, value):.3g} {('B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB')[prefix]}"
    suffix = {"ops": " ops/s", "reqps": " req/s"}.get(unit, "")
    text = _number(value, decimals)
    return f"€{text}" if unit == "currencyEUR" else text + suffix


def _number(value: float, decimals: int | None) -> str:
    if decimals is not None and abs(value) < 1000:
        return f"{value:.{decimals}f}"
    for size, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:.3g}{prefix}"
    return f"{value:.3g}"


def _seconds(value: float) -> str:
    size = abs(value)
    if size == 0:
        return "0 s"
    for limit, scale, name in ((1e-3, 1e6, "µs"), (1, 1e3, "ms"), (60, 1, "s"), (3600, 1 / 60, "min")):
        if size < limit:
            return f"{value * scale:.3g} {name}"
    return f"{value / 3600:.3g} h" if size < 86_400 else f"{value / 86_400:.3g} days"


# Grafana's classic palette, in its order, and its named colours.
_PALETTE: Final = (
    "#7EB26D", "#EAB839", "#6ED0E0", "#EF843C", "#E24D42", "#1F78C1", "#BA43A9", "#705DA0",
    "#508642", "#CCA300", "#447EBC", "#C15C17", "#890F02", "#0A437C", "#6D1F62", "#584477",
)  # fmt: skip
_NAMED: Final = {"green": "#56A64B", "red": "#E02F44", "orange": "#FF9830", "yellow": "#F2CC0C", "blue": "#3274D9"}
_INCH_PER_ROW: Final = 0.36  # one gridPos row (Grafana: 30 px + margin) on a 16-inch-wide figure
_WIDTH_IN: Final = 16.0
_HEADER_IN: Final = 0.7


def draw(dashboard: Dashboard, panels: Sequence[PanelData], window: Window, path: Path, source: str) -> None:
    """Draw `panels` where their gridPos puts them, one PNG for the dashboard."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    boxes = [grid_box(p.panel.get("gridPos")) or (0, 0, GRID_COLUMNS, 8) for p in panels]
    bottom_row = max((y + h for _, y, _, h in boxes), default=1)
    height = _HEADER_IN + bottom_row * _INCH_PER_ROW + 0.1
    fig = plt.figure(figsize=(_WIDTH_IN, height), dpi=100)
    end = datetime.fromtimestamp(window.end, UTC).strftime("%Y-%m-%d %H:%M UTC")
    fig.text(0.01, 1 - 0.28 / height, dashboard.title, fontsize=15, weight="bold", va="center")
    fig.text(
        0.01,
        1 - 0.55 / height,
        f"last {human_duration(window.range_s)} to {end}, step {human_duration(window.step)}, from Prometheus at {source}"
        f" ({dashboard.path.name}; `nudge dashboards render`)",
        fontsize=8,
        color="#555555",
        va="center",
    )
    column_in = (_WIDTH_IN - 0.2) / GRID_COLUMNS
    for data, (x, y, w, h) in zip(panels, boxes, strict=True):
        stat = data.panel.get("type") == "stat"
        # Room inside the panel's cell: title above, ticks left and below (none for a stat).
        left, right, top, below = (0.12, 0.1, 0.3, 0.1) if stat else (0.85, 0.12, 0.3, 0.42)
        box = (
            (0.1 + x * column_in + left) / _WIDTH_IN,
            1 - (_HEADER_IN + (y + h) * _INCH_PER_ROW - below) / height,
            (w * column_in - left - right) / _WIDTH_IN,
            (h * _INCH_PER_ROW - top - below) / height,
        )
        ax = fig.add_axes(box)
        ax.set_title(str(data.panel.get("title", "")), fontsize=9, loc="left", weight="bold")
        if stat:
            _draw_stat(ax, data, window)
        else:
            _draw_timeseries(ax, data, window)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _draw_timeseries(ax: Any, data: PanelData, window: Window) -> None:
    from matplotlib.ticker import FuncFormatter, MaxNLocator, MultipleLocator

    defaults = data.panel["fieldConfig"]["defaults"]
    unit, decimals = str(defaults["unit"]), defaults.get("decimals")
    ax.set_xlim(window.start, window.end)
    ax.xaxis.set_major_locator(MultipleLocator(_tick_seconds(window.range_s)))
    clock = "%H:%M" if window.range_s <= 86_400 else "%m-%d %H:%M"
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: datetime.fromtimestamp(v, UTC).strftime(clock)))
    ax.yaxis.set_major_locator(MaxNLocator(5, integer=decimals == 0))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: format_value(v, unit, decimals)))
    ax.set_ylabel(UNITS.get(unit, unit), fontsize=7, color="#555555")
    ax.tick_params(labelsize=7)
    ax.grid(True, color="#e5e5e5", linewidth=0.6)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    drawn = 0
    for index, (name, series) in enumerate(data.series):
        if not any(math.isfinite(v) for v in series.values):
            continue
        # An infinite point (a histogram_quantile past the last bucket) would stretch the axis to nothing.
        values = [v if math.isfinite(v) else math.nan for v in series.values]
        ax.plot(series.times, values, color=_PALETTE[index % len(_PALETTE)], linewidth=1.2, label=name or " ")
        drawn += 1
    if not drawn:
        ax.set_yticks([])
        _note(ax, data)
        return
    low, high = _limit(defaults.get("min")), _limit(defaults.get("max"))
    bottom, top = ax.get_ylim()
    if top - bottom < 1e-9 * max(1.0, abs(top)):
        # Flat lines (x - x is a few 1e-16 apart): a readable span around them, not ticks of rounding noise.
        pad = max(abs(top), 1.0)
        bottom, top = bottom - pad, top + pad
    if low is not None and high is not None:
        # Both fixed (a 0..1 panel): a little room, so a line on 0 or 1 stays visible.
        pad = 0.04 * (high - low)
        ax.set_ylim(low - pad, high + pad)
    else:
        ax.set_ylim(bottom if low is None else low, top if high is None else high)
    ax.legend(fontsize=6, loc="best", ncol=3 if drawn > 6 else 1, framealpha=0.7, handlelength=1.2)
    if data.errors:
        refused = textwrap.shorten("Prometheus refused " + "; ".join(data.errors), 110)
        ax.text(0.01, 0.02, refused, fontsize=6, color="#E02F44", transform=ax.transAxes)


def _limit(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _tick_seconds(range_s: float) -> float:
    """A round tick spacing giving at most 7 ticks over `range_s`, so ticks fall on whole minutes and hours."""
    for spacing in (60, 120, 300, 600, 900, 1800, 3600, 7200, 10_800, 21_600, 43_200, 86_400, 172_800, 604_800):
        if range_s / spacing <= 7:
            return spacing
    return 2_592_000.0


def _draw_stat(ax: Any, data: PanelData, window: Window) -> None:
    defaults = data.panel["fieldConfig"]["defaults"]
    unit, decimals = str(defaults["unit"]), defaults.get("decimals")
    ax.set_axis_off()
    shown = [(name, series, series.last()) for name, series in data.series if math.isfinite(series.last())]
    if not shown:
        _note(ax, data)
        return
    # The sparkline under the value, as Grafana's graphMode "area" draws it: in the panel's lower third.
    _, series, value = shown[0]
    color = _threshold_color(defaults, value)
    finite = [v for v in series.values if math.isfinite(v)]
    low, high = min(finite), max(finite)
    ax.plot(series.times, [v if math.isfinite(v) else math.nan for v in series.values], color=color, alpha=0.3)
    ax.set_xlim(window.start, window.end)
    ax.set_ylim(low - 0.05 * (high - low or 1), low + 3 * (high - low or 1))
    if len(shown) == 1:
        ax.text(0.5, 0.45, format_value(value, unit, decimals), fontsize=22, weight="bold", color=color,
                ha="center", va="center", transform=ax.transAxes)  # fmt: skip
        return
    for row, (name, _, value) in enumerate(shown[:4]):
        ax.text(0.02, 0.85 - row * 0.25, f"{name}: {format_value(value, unit, decimals)}", fontsize=9,
                color=_threshold_color(defaults, value), va="center", transform=ax.transAxes)  # fmt: skip


def _threshold_color(defaults: Mapping[str, Any], value: float) -> str:
    """The colour of the highest threshold step `value` reaches (the first step is the base)."""
    import matplotlib.colors

    color = "#3274D9"
    thresholds = defaults.get("thresholds")
    steps = thresholds.get("steps") if isinstance(thresholds, dict) else None
    for step in steps if isinstance(steps, list) else []:
        if not isinstance(step, dict):
            continue
        at = step.get("value")
        if at is None or (isinstance(at, int | float) and value >= at):
            name = str(step.get("color", ""))
            candidate = _NAMED.get(name, name)
            color = candidate if matplotlib.colors.is_color_like(candidate) else color
    return color


def _note(ax: Any, data: PanelData) -> None:
    """'no data', or the refused queries' errors, where the panel's lines would be."""
    if data.errors:
        text = "\n".join(textwrap.wrap("Prometheus refused: " + "; ".join(data.errors), 70)[:5])
        ax.text(0.5, 0.5, text, fontsize=7, color="#E02F44", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.text(0.5, 0.5, "no data", fontsize=11, color="#888888", ha="center", va="center", transform=ax.transAxes)
