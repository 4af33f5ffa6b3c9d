"""`nudge bench soak`: the whole loop for --minutes at half its max rate; does any process grow?

One run, on the running local stack, in two loops (bench/loop.py: every process a child, on its own
topics and consumer groups):

1. calibration (--calibrate seconds): the simulator offers events as fast as it can send them.
   The loop's max rate is what the stream worker consumed meanwhile (nudge_stream_events_total
   from its /metrics, over the calibration's last two thirds): the ceiling of the loop on this
   machine, whichever end limits it. The worker's lag says which: a lag that grows means the
   worker was the limit, a bounded one the generator (the worker kept up with all it was sent).
2. the soak: fresh processes, events at --load (50 %) of that rate for --minutes. Every --every
   seconds, for each process (worker, trainer, triggers, deliver, collector, report): RSS (VmRSS
   of the process and its descendants), open file descriptors, consumer lag (the sum of
   nudge_consumer_lag_messages over its series), and the worker's freshness p50/p99 over the
   interval (nudge_stream_freshness_seconds bucket deltas, Prometheus' histogram_quantile).

Simulated time runs at rate / (users x events per user-day): with few users (--users 500) it runs
fast enough that the warm-up spans the users' longest memory (pending labels: 30 simulated days),
so what grows after it is not per-user state still filling. The output says how many simulated
days the warm-up covered.

After the warm-up (--warmup, by default a fifth of the soak and at least 60 s) a least-squares line
through each series gives its trend. The targets (the soak issue's):

- RSS flat: the fitted rise over max(the window, 10 minutes) is within 10 % of the mean RSS (a
  window shorter than 10 minutes has its trend extrapolated to 10 minutes);
- lag bounded: the fitted rise over the window is under half the mean lag, or under 1,000 messages.

Prints a table per process and the verdicts, writes <out>/soak.json (every sample) and soak.png.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from tqdm import tqdm

from bench.loop import LoopOptions, LoopRun, run_loop
from nudge.args import integer, number, output_dir
from nudge.args import seed as seed_arg
from nudge.errors import NudgeError, UsageError
from nudge.settings import Settings
from ops.scrape import histogram_quantile, parse

__all__ = [
    "PROCESSES",
    "Sample",
    "Sampler",
    "Scrape",
    "Trend",
    "analyse",
    "bucket_deltas",
    "configure",
    "counter_rate",
    "default_warmup",
    "histogram_quantile",
    "lag_bounded",
    "process_tree",
    "read_scrape",
    "rss_flat",
    "rss_growth_pct",
    "run",
    "slope",
    "trend",
]

PROCESSES: Final = ("worker", "trainer", "triggers", "deliver", "collector", "report")
RSS_LIMIT_PCT: Final = 10.0
RSS_OVER_S: Final = 600.0  # the target is "within 10 % over 10 minutes"
LAG_FLOOR: Final = 1_000.0  # a rise below this many messages is noise, whatever the mean
LAG_SHARE: Final = 0.5
# Offered during calibration: far above what the generator can send, so the bucket never waits.
CALIBRATION_OFFER: Final = 1_000_000.0
CALIBRATION_EVERY_S: Final = 2.0
# Calibration traffic is sized for this rate; the loop stops sending after --calibrate seconds anyway.
CALIBRATION_SIZING_RATE: Final = 40_000.0
TRAFFIC_MARGIN: Final = 1.5  # simulated days beyond the soak's need: the soak must not run dry
SCRAPE_TIMEOUT_S: Final = 5.0


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Run the whole loop for --minutes at --load (50 %) of its max rate, measured in the same\n"
        "run, and watch every process for growth:\n\n"
        "  1. calibration: the simulator sends as fast as it can for --calibrate seconds; the\n"
        "     loop's max rate is the rate the stream worker consumed (nudge_stream_events_total)\n"
        "  2. the soak: fresh processes at --load x that rate; every --every seconds, per process\n"
        "     (worker, trainer, triggers, deliver, collector, report): RSS with its children, open\n"
        "     file descriptors, consumer lag, and the worker's freshness p50/p99\n\n"
        "After --warmup, a least-squares trend per series. Targets: RSS flat within 10 % over\n"
        "10 minutes (a shorter window is extrapolated), lag bounded (its trend rises by less than\n"
        "half its mean, or by less than 1,000 messages). Needs the local stack (`nudge stack up`)."
    )
    parser.epilog = (
        "examples:\n"
        "  nudge bench soak --minutes 10             # the issue's soak, about 14 minutes in all\n"
        "  nudge bench soak --minutes 2 --every 5    # a quick look\n\n"
        "writes: <out>/soak.json (every sample), <out>/soak.png; the processes' logs under\n"
        "<data dir>/logs/loop-<tag>-*.log"
    )
    parser.add_argument(
        "--minutes",
        type=number(1, 1440, unit=" min"),
        default=10.0,
        metavar="M",
        help="length of the soak, 1..1440 [%(default)s]",
    )
    parser.add_argument(
        "--every",
        type=number(1, 300, unit=" s"),
        default=10.0,
        metavar="S",
        help="seconds between samples, 1..300 [%(default)s]",
    )
    parser.add_argument(
        "--warmup",
        type=number(0, 86_400, unit=" s"),
        default=None,
        metavar="S",
        help="seconds left out of the trends at the start [a fifth of the soak, at least 60]",
    )
    parser.add_argument(
        "--load",
        type=number(0.05, 1, unit=" of the max rate"),
        default=0.5,
        metavar="F",
        help="the soak's rate as a share of the calibrated max, 0.05..1 [%(default)s]",
    )
    parser.add_argument(
        "--calibrate",
        type=number(20, 600, unit=" s"),
        default=60.0,
        metavar="S",
        help="length of the calibration at full speed, 20..600 [%(default)s]",
    )
    parser.add_argument(
        "--users",
        type=integer(100, 20_000, why="every simulated user is held in memory by the generator"),
        default=500,
        metavar="N",
        help="simulated users, 100..20000: at a given rate, fewer users make simulated time run faster, so "
        "that the warm-up covers the users' longest memory (pending labels, 30 simulated days) [%(default)s]",
    )
    parser.add_argument("--seed", type=seed_arg, default=42, metavar="S", help="simulator seed [%(default)s]")
    parser.add_argument("--no-models", action="store_true", help="no trainer, no scores: rules on features only")
    parser.add_argument(
        "--out-dir", type=output_dir, default="bench-results", help="where JSON and PNG go [%(default)s]"
    )
    parser.set_defaults(func=run)


# --- pure analysis -----------------------------------------------------------------------


def slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of y over t; 0.0 with fewer than two distinct times.

    >>> slope([(0, 1.0), (10, 2.0), (20, 3.0)])
    0.1
    >>> slope([(5, 7.0)])
    0.0
    """
    n = len(points)
    if n < 2:
        return 0.0
    mean_t = sum(t for t, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    if spread == 0:
        return 0.0
    return sum((t - mean_t) * (y - mean_y) for t, y in points) / spread


@dataclass(frozen=True, slots=True)
class Trend:
    """A series after the warm-up: its ends, mean, peak and least-squares slope."""

    samples: int
    start: float
    end: float
    mean: float
    peak: float
    slope_per_s: float
    window_s: float

    @property
    def rise(self) -> float:
        """What the fitted line gains over the window."""
        return self.slope_per_s * self.window_s


def trend(points: Iterable[tuple[float, float | None]], warmup_s: float) -> Trend | None:
    """The trend of the points at or after `warmup_s` (missing values skipped); None with fewer than two.

    >>> t = trend([(0, 50.0), (10, 100.0), (20, 102.0), (30, 104.0)], warmup_s=10)
    >>> (t.samples, t.start, t.end, t.mean, t.slope_per_s, t.rise)
    (3, 100.0, 104.0, 102.0, 0.2, 4.0)
    """
    kept = [(t, y) for t, y in points if y is not None and t >= warmup_s]
    if len(kept) < 2:
        return None
    values = [y for _, y in kept]
    return Trend(
        samples=len(kept),
        start=values[0],
        end=values[-1],
        mean=sum(values) / len(values),
        peak=max(values),
        slope_per_s=slope(kept),
        window_s=kept[-1][0] - kept[0][0],
    )


def rss_growth_pct(t: Trend, over_s: float = RSS_OVER_S) -> float:
    """The fitted rise over max(the window, `over_s`) as a percentage of the mean.

    A window shorter than `over_s` has its trend extrapolated: the target is a growth over 10 minutes.

    >>> rss_growth_pct(Trend(10, start=100.0, end=104.0, mean=100.0, peak=104.0, slope_per_s=0.01, window_s=480))
    6.0
    >>> rss_growth_pct(Trend(10, start=100.0, end=130.0, mean=100.0, peak=130.0, slope_per_s=0.01, window_s=3000))
    30.0
    """
    if t.mean <= 0:
        return 0.0 if t.slope_per_s == 0 else math.inf
    return 100.0 * t.slope_per_s * max(t.window_s, over_s) / t.mean


def rss_flat(t: Trend, limit_pct: float = RSS_LIMIT_PCT) -> bool:
    """RSS within `limit_pct` % over 10 minutes (a shrinking RSS is flat too)."""
    return rss_growth_pct(t) <= limit_pct


def lag_bounded(t: Trend, *, floor: float = LAG_FLOOR, share: float = LAG_SHARE) -> bool:
    """A lag whose fitted rise over the window is under `share` of its mean, or under `floor` messages.

    A lag that comes and goes (batches, a busy second) has a rise near 0 whatever its peaks; one that
    grows from L to 1.67 L or more over the window is not bounded.

    >>> lag_bounded(Trend(10, start=0.0, end=50e3, mean=25e3, peak=50e3, slope_per_s=100.0, window_s=500))
    False
    >>> lag_bounded(Trend(10, start=3e3, end=200.0, mean=1.5e3, peak=3e3, slope_per_s=-1.0, window_s=500))
    True
    """
    return t.rise <= max(floor, share * t.mean)


def bucket_deltas(
    before: Sequence[tuple[float, float]], after: Sequence[tuple[float, float]]
) -> list[tuple[float, float]]:
    """The cumulative buckets of what was observed between two scrapes of a histogram.

    A restarted process (a count went down) starts from zero: `after` alone.

    >>> bucket_deltas([(1.0, 5.0), (math.inf, 6.0)], [(1.0, 8.0), (math.inf, 10.0)])
    [(1.0, 3.0), (inf, 4.0)]
    """
    old = dict(before)
    if any(count < old.get(upper, 0.0) for upper, count in after):
        return list(after)
    return [(upper, count - old.get(upper, 0.0)) for upper, count in after]


def counter_rate(points: Sequence[tuple[float, float | None]], start_s: float, end_s: float) -> float | None:
    """A counter's mean rate per second between its first and last sample in [start_s, end_s].

    >>> counter_rate([(0, 0.0), (10, 500.0), (20, 1500.0), (30, 2500.0)], 10, 30)
    100.0
    """
    kept = [(t, v) for t, v in points if v is not None and start_s <= t <= end_s]
    if len(kept) < 2 or kept[-1][0] == kept[0][0]:
        return None
    return (kept[-1][1] - kept[0][1]) / (kept[-1][0] - kept[0][0])


def default_warmup(seconds: float) -> float:
    """A fifth of the soak, at least 60 s.

    >>> default_warmup(600), default_warmup(120)
    (120.0, 60.0)
    """
    return max(60.0, seconds / 5)


def process_tree(pid: int, parents: Mapping[int, int]) -> list[int]:
    """`pid` and its descendants, given every process's parent.

    >>> process_tree(10, {11: 10, 12: 11, 13: 1, 14: 10})
    [10, 11, 14, 12]
    """
    children: dict[int, list[int]] = {}
    for child, parent in sorted(parents.items()):
        children.setdefault(parent, []).append(child)
    out, queue = [], [pid]
    while queue:
        current = queue.pop(0)
        out.append(current)
        queue.extend(children.get(current, []))
    return out


@dataclass(frozen=True, slots=True)
class Scrape:
    """What the soak reads from one /metrics page."""

    lag: float | None  # sum of nudge_consumer_lag_messages; None: the process exports none
    events: float | None  # sum of nudge_stream_events_total (the worker's input messages)
    freshness: tuple[tuple[float, float], ...] = ()  # nudge_stream_freshness_seconds, cumulative


def read_scrape(text: str) -> Scrape:
    """Parse a Prometheus text page into the figures the soak samples.

    >>> page = '''nudge_consumer_lag_messages{topic="a",partition="0"} 3.0
    ... nudge_consumer_lag_messages{topic="a",partition="1"} 4.0
    ... nudge_stream_freshness_seconds_bucket{le="0.1"} 2.0
    ... nudge_stream_freshness_seconds_bucket{le="+Inf"} 5.0
    ... '''
    >>> read_scrape(page)
    Scrape(lag=7.0, events=None, freshness=((0.1, 2.0), (inf, 5.0)))
    """
    samples = parse(text).samples

    def total(name: str) -> float | None:
        return sum(samples[name].values()) if name in samples else None

    buckets = [
        (float(dict(labels)["le"]), v) for labels, v in samples.get("nudge_stream_freshness_seconds_bucket", {}).items()
    ]
    return Scrape(total("nudge_consumer_lag_messages"), total("nudge_stream_events_total"), tuple(sorted(buckets)))


# --- sampling ----------------------------------------------------------------------------


@dataclass(slots=True)
class Sample:
    """One look at every process, `t` seconds after the traffic began."""

    t: float
    rss_mb: dict[str, float | None] = field(default_factory=dict)
    fds: dict[str, int | None] = field(default_factory=dict)
    lag: dict[str, float | None] = field(default_factory=dict)
    worker_events: float | None = None
    # the worker's freshness over the interval since the previous sample
    fresh_p50_ms: float | None = None
    fresh_p99_ms: float | None = None
    fresh_observations: float = 0.0
    freshness_buckets: list[tuple[float, float]] = field(default_factory=list)  # cumulative, as scraped


def _parents() -> dict[int, int]:
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            # "pid (comm) state ppid ...": comm may hold spaces and parentheses
            out[int(entry)] = int(stat[stat.rindex(")") + 2 :].split()[1])
    return out


def _rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def _fd_count(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def _scrape(url: str) -> Scrape | None:
    try:
        with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as response:
            return read_scrape(response.read().decode())
    except (OSError, ValueError):
        return None


class Sampler:
    """A thread sampling every process each `every` seconds until `duration` or `stop()`."""

    def __init__(
        self,
        run: LoopRun,
        every: float,
        duration: float,
        *,
        on_sample: Callable[[Sample], None] = lambda _: None,
    ) -> None:
        self.pids = {name: pid for name, pid in run.pids.items() if name in PROCESSES}
        self.endpoints = {name: url for name, url in run.endpoints.items() if name in PROCESSES}
        self.every = every
        self.duration = duration
        self.on_sample = on_sample
        self.samples: list[Sample] = []
        self.failed_scrapes = 0
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._previous: tuple[tuple[float, float], ...] = ()
        self._thread = threading.Thread(target=self._loop, name="soak-sampler", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        try:
            n = 0
            while not self._stop.is_set():
                self.samples.append(self._sample())
                self.on_sample(self.samples[-1])
                n += 1
                due = min(n * self.every, self.duration)
                if self.samples[-1].t >= self.duration:
                    return
                self._stop.wait(max(0.0, self.started + due - time.monotonic()))
        except Exception as exc:  # handed to the main thread by stop()
            self._error = exc

    def _sample(self) -> Sample:
        t = time.monotonic() - self.started
        sample = Sample(t=round(t, 3))
        parents = _parents()
        for name in PROCESSES:
            pid = self.pids.get(name)
            if pid is None:
                continue
            tree = process_tree(pid, parents)
            rss = [_rss_bytes(p) for p in tree]
            fds = [_fd_count(p) for p in tree]
            sample.rss_mb[name] = sum(r for r in rss if r is not None) / 2**20 if rss[0] is not None else None
            sample.fds[name] = sum(f for f in fds if f is not None) if fds[0] is not None else None
            url = self.endpoints.get(name)
            scrape = _scrape(url) if url else None
            if url and scrape is None:
                self.failed_scrapes += 1
            sample.lag[name] = scrape.lag if scrape else None
            if name == "worker" and scrape is not None:
                sample.worker_events = scrape.events
                sample.freshness_buckets = list(scrape.freshness)
                if self._previous:
                    interval = bucket_deltas(self._previous, scrape.freshness)
                    p50, p99 = histogram_quantile(0.5, interval), histogram_quantile(0.99, interval)
                    sample.fresh_p50_ms = None if p50 is None else p50 * 1000
                    sample.fresh_p99_ms = None if p99 is None else p99 * 1000
                    sample.fresh_observations = interval[-1][1] if interval else 0.0
                self._previous = scrape.freshness
        return sample

    def stop(self) -> list[Sample]:
        """Stop sampling (if it has not stopped at `duration`); raise what broke the thread, once."""
        self._stop.set()
        self._thread.join(timeout=60)
        error, self._error = self._error, None
        if error is not None:
            raise NudgeError(f"the soak's sampler failed: {error!r}") from error
        return self.samples

    def as_json(self) -> list[dict[str, Any]]:
        """Every sample, its buckets keyed by their bound as Prometheus writes it ("+Inf", not a float)."""
        out = []
        for sample in self.samples:
            row = asdict(sample)
            row["freshness_buckets"] = {_le(upper): count for upper, count in sample.freshness_buckets}
            out.append(row)
        return out


def _le(upper: float) -> str:
    return "+Inf" if math.isinf(upper) else format(upper, "g")


# --- the run -----------------------------------------------------------------------------


def _events_per_user_day(seed: int) -> float:
    """The simulator's events per user and day (a quick count over 50 users for 14 days)."""
    from producers.simulator import generate

    users, days = 50, 14
    start = datetime.now(UTC) - timedelta(days=days)
    return sum(1 for _ in generate(users, days, seed, start, exposures=False)) / (users * days)


def _memory_days(settings: Settings) -> float:
    """The longest a user's state remembers (pending labels, dedup ids), in simulated days: until then
    the worker's per-user memory may still be filling, which is growth but no leak."""
    from models.labels import LabelConfig

    longest = max(LabelConfig(churn_horizon_ms=settings.churn_horizon_ms).longest_ms, settings.dedup_horizon_ms)
    return longest / 86_400_000


def _days_for(events: float, users: int, per_user_day: float) -> float:
    from producers.simulator import MAX_DAYS

    return min(MAX_DAYS, max(1.0, events * TRAFFIC_MARGIN / (users * per_user_day)))


def _loop(
    settings: Settings,
    args: argparse.Namespace,
    *,
    rate: float,
    days: float,
    seconds: float,
    every: float,
    desc: str,
    say: Callable[[str], None],
) -> tuple[LoopRun, Sampler]:
    """One loop with a sampler from the moment every process serves /metrics for `seconds`."""
    holder: dict[str, Sampler] = {}
    bar = tqdm(total=round(seconds), desc=desc, unit="s", file=sys.stderr, disable=None)

    def show(sample: Sample) -> None:
        bar.n = min(round(sample.t), bar.total)
        rss, lag = sample.rss_mb.get("worker"), sample.lag.get("worker")
        bar.set_postfix_str(
            f"worker {rss or 0:,.0f} MB, lag {lag or 0:,.0f}"
            + (f", p99 {sample.fresh_p99_ms:,.0f} ms" if sample.fresh_p99_ms is not None else "")
        )

    def start(run: LoopRun) -> None:
        holder["sampler"] = Sampler(run, every, seconds, on_sample=show)

    def stop(run: LoopRun) -> None:
        holder["sampler"].stop()

    options = LoopOptions(
        users=args.users,
        days=days,
        rate=rate,
        seed=args.seed,
        models=not args.no_models,
        progress=False,
        max_seconds=seconds,
        report=False,
        on_running=start,
        before_stop=stop,
    )
    try:
        run = run_loop(options, settings, say=say)
    finally:
        bar.close()
        if "sampler" in holder:
            holder["sampler"].stop()
    return run, holder["sampler"]


def _series(samples: Sequence[Sample], what: str, name: str) -> list[tuple[float, float | None]]:
    values: list[tuple[float, float | None]] = []
    for s in samples:
        value = getattr(s, what).get(name)
        values.append((s.t, None if value is None else float(value)))
    return values


def _window_freshness(samples: Sequence[Sample], warmup_s: float) -> dict[str, float | None]:
    """The worker's freshness p50/p99 over the whole post-warm-up window (first to last scrape)."""
    kept = [s for s in samples if s.t >= warmup_s and s.freshness_buckets]
    if len(kept) < 2:
        return {"p50_ms": None, "p99_ms": None, "observations": 0.0}
    interval = bucket_deltas(kept[0].freshness_buckets, kept[-1].freshness_buckets)
    p50, p99 = histogram_quantile(0.5, interval), histogram_quantile(0.99, interval)
    return {
        "p50_ms": None if p50 is None else p50 * 1000,
        "p99_ms": None if p99 is None else p99 * 1000,
        "observations": interval[-1][1] if interval else 0.0,
    }


def _per_minute_p99(samples: Sequence[Sample]) -> list[tuple[int, float | None]]:
    """The worker's freshness p99 in each whole minute of the soak."""
    out = []
    with_buckets = [s for s in samples if s.freshness_buckets]
    minute = 1
    while with_buckets and minute * 60 <= with_buckets[-1].t + 1e-6:
        inside = [s for s in with_buckets if (minute - 1) * 60 <= s.t <= minute * 60 + 1e-6]
        if len(inside) >= 2:
            p99 = histogram_quantile(0.99, bucket_deltas(inside[0].freshness_buckets, inside[-1].freshness_buckets))
            out.append((minute, None if p99 is None else p99 * 1000))
        minute += 1
    return out


def analyse(samples: Sequence[Sample], warmup_s: float) -> dict[str, Any]:
    """Per process: RSS, fds and lag trends after the warm-up, with the verdicts."""
    processes: dict[str, Any] = {}
    for name in PROCESSES:
        rss = trend(_series(samples, "rss_mb", name), warmup_s)
        if rss is None:
            continue
        fds = trend(_series(samples, "fds", name), warmup_s)
        lag = trend(_series(samples, "lag", name), warmup_s)
        processes[name] = {
            "rss_mb": asdict(rss),
            "rss_growth_pct_10min": rss_growth_pct(rss),
            "rss_flat": rss_flat(rss),
            "fds": None if fds is None else asdict(fds),
            "lag": None if lag is None else asdict(lag),
            "lag_rise": None if lag is None else lag.rise,
            "lag_bounded": None if lag is None else lag_bounded(lag),
        }
    verdicts = {
        "rss_flat": all(p["rss_flat"] for p in processes.values()),
        "lag_bounded": all(p["lag_bounded"] is not False for p in processes.values()),
    }
    return {
        "warmup_s": warmup_s,
        "processes": processes,
        "freshness": _window_freshness(samples, warmup_s),
        "freshness_p99_by_minute_ms": _per_minute_p99(samples),
        "verdicts": verdicts,
        "passed": bool(processes) and all(verdicts.values()),
    }


def _num(value: float | None, fmt: str = ",.0f") -> str:
    return "-" if value is None else format(value, fmt)


def _table(analysis: dict[str, Any]) -> str:
    head = (
        f"{'process':10} {'RSS MB start':>12} {'end':>7} {'growth/10min':>12} {'flat':>5}  "
        f"{'fds start':>9} {'end':>5}  {'lag max':>9} {'lag trend/min':>13} {'bounded':>7}"
    )
    lines = [head, "-" * len(head)]
    for name, p in analysis["processes"].items():
        rss, fds, lag = p["rss_mb"], p["fds"], p["lag"]
        lines.append(
            f"{name:10} {rss['start']:>12,.1f} {rss['end']:>7,.1f} {p['rss_growth_pct_10min']:>+11.1f}% "
            f"{'yes' if p['rss_flat'] else 'NO':>5}  "
            f"{_num(fds and fds['start']):>9} {_num(fds and fds['end']):>5}  "
            f"{_num(lag and lag['peak']):>9} {_num(lag and lag['slope_per_s'] * 60, '+,.0f'):>13} "
            f"{'-' if p['lag_bounded'] is None else 'yes' if p['lag_bounded'] else 'NO':>7}"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace, settings: Settings) -> int:
    seconds = args.minutes * 60
    warmup = default_warmup(seconds) if args.warmup is None else args.warmup
    if seconds - warmup < 3 * args.every:
        raise UsageError(
            f"--warmup {warmup:g} s leaves fewer than 3 samples (--every {args.every:g} s) "
            f"of the {args.minutes:g}-minute soak to fit a trend to"
        )
    out_dir: Path = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)

    def say(text: str) -> None:
        tqdm.write(text, file=sys.stdout)

    per_user_day = _events_per_user_day(args.seed)
    # 1. calibration: as fast as the generator sends; the worker's consumption is the loop's ceiling.
    say(f"1. calibration: {args.calibrate:g} s of the loop at full speed ...")
    calibration_days = _days_for(CALIBRATION_SIZING_RATE * args.calibrate, args.users, per_user_day)
    cal_run, cal = _loop(
        settings,
        args,
        rate=CALIBRATION_OFFER,
        days=calibration_days,
        seconds=args.calibrate,
        every=CALIBRATION_EVERY_S,
        desc="calibration",
        say=say,
    )
    cal_samples = cal.samples
    measured_from = args.calibrate / 3
    worker_events = [(s.t, s.worker_events) for s in cal_samples]
    max_rate = counter_rate(worker_events, measured_from, args.calibrate)
    sent_rate = cal_run.events / args.calibrate
    if not max_rate or max_rate <= 0:
        raise NudgeError(
            "calibration: the worker consumed nothing measurable; see its log " + str(cal_run.logs.get("worker"))
        )
    cal_lag = trend(_series(cal_samples, "lag", "worker"), measured_from)
    worker_limited = cal_lag is not None and not lag_bounded(cal_lag)
    limit = (
        f"the worker (its lag grew by {cal_lag.rise:,.0f} messages while measured)"
        if worker_limited and cal_lag is not None
        else "the generator (the worker kept up: its lag stayed bounded)"
    )
    say(
        f"   the loop's max rate: the worker consumed {max_rate:,.0f} events/s (seconds "
        f"{measured_from:.0f}..{args.calibrate:g} of the calibration); the generator sent {cal_run.events:,} "
        f"events ({sent_rate:,.0f}/s); the limit was {limit}"
    )

    # 2. the soak at --load of that rate, fresh processes.
    rate = args.load * max_rate
    days = _days_for(rate * seconds, args.users, per_user_day)
    memory_days = _memory_days(settings)
    say(
        f"2. soak: {args.minutes:g} min at {rate:,.0f} events/s ({args.load:.0%} of max), {args.users:,} users "
        f"(about {rate * warmup / (args.users * per_user_day):.0f} simulated days in the warm-up, "
        f"{memory_days:g} the users' longest memory); a sample every {args.every:g} s, warm-up {warmup:g} s ..."
    )
    soak_run, sampler = _loop(
        settings, args, rate=rate, days=days, seconds=seconds, every=args.every, desc="soak", say=say
    )
    samples = sampler.samples
    analysis = analyse(samples, warmup)
    achieved = counter_rate([(s.t, s.worker_events) for s in samples], 0, seconds)
    bad = {name: status for name, status in soak_run.statuses.items() if status not in (0, None)}
    # What the soak covered in simulated time, from what it sent (the rate may have fallen short).
    simulated_days = soak_run.events / (args.users * per_user_day)
    warmup_days = simulated_days * min(1.0, warmup / seconds)

    results: dict[str, Any] = {
        "calibration": {
            "seconds": args.calibrate,
            "offered_per_s": "unlimited",
            "sent_events": cal_run.events,
            "sent_per_s": sent_rate,
            "max_rate_per_s": max_rate,
            "measured_from_s": measured_from,
            "limited_by": "worker" if worker_limited else "generator",
            "worker_lag": None if cal_lag is None else asdict(cal_lag),
            "samples": cal.as_json(),
        },
        "soak": {
            "minutes": args.minutes,
            "every_s": args.every,
            "load": args.load,
            "rate_per_s": rate,
            "worker_consumed_per_s": achieved,
            "users": args.users,
            "days": days,
            "events_per_user_day": per_user_day,
            "simulated_days": simulated_days,
            "warmup_simulated_days": warmup_days,
            "memory_days": memory_days,
            "events": soak_run.events,
            "deliveries": soak_run.deliveries,
            "reactions": soak_run.reactions,
            "failed_scrapes": sampler.failed_scrapes,
            "exit_statuses": soak_run.statuses,
            "tag": soak_run.tag,
        },
        "targets": {
            "rss_growth_pct_per_10min": RSS_LIMIT_PCT,
            "lag_rise": f"< max({LAG_FLOOR:,.0f}, {LAG_SHARE:g} x mean lag) over the window",
        },
        "analysis": analysis,
        "samples": sampler.as_json(),
    }
    (out_dir / "soak.json").write_text(json.dumps(results, indent=2, allow_nan=False) + "\n")
    _plot(samples, analysis, results, out_dir / "soak.png")

    print()
    print(
        f"soak {soak_run.tag}: {args.minutes:g} min at {rate:,.0f} events/s offered "
        f"({args.load:.0%} of the {max_rate:,.0f}/s the worker consumed at full speed), worker consumed "
        f"{_num(achieved)}/s; {len(samples)} samples every {args.every:g} s; trends after a {warmup:g} s warm-up"
    )
    print(
        f"simulated time: {simulated_days:.0f} days of {args.users:,} users, {warmup_days:.0f} of them in the "
        f"warm-up; the users' longest memory is {memory_days:g} days"
        + (
            " (the warm-up is shorter: growth after it may be that memory still filling; fewer --users or a "
            "longer --warmup cover it)"
            if warmup_days < memory_days
            else ""
        )
    )
    print(_table(analysis))
    fresh = analysis["freshness"]
    by_minute = " ".join(_num(p99) for _, p99 in analysis["freshness_p99_by_minute_ms"])
    print(f"worker freshness p99 by minute (ms): {by_minute or '-'}")
    print(
        f"worker freshness after the warm-up: p50 {_num(fresh['p50_ms'])} ms, p99 {_num(fresh['p99_ms'])} ms "
        f"over {_num(fresh['observations'])} observations (each user's first message in a batch)"
    )
    v = analysis["verdicts"]
    grown = [n for n, p in analysis["processes"].items() if not p["rss_flat"]]
    unbounded = [n for n, p in analysis["processes"].items() if p["lag_bounded"] is False]
    print(
        f"targets: RSS flat within {RSS_LIMIT_PCT:g} % over 10 min: "
        + ("met" if v["rss_flat"] else f"NOT met ({', '.join(grown)})")
        + "; lag bounded: "
        + ("met" if v["lag_bounded"] else f"NOT met ({', '.join(unbounded)})")
    )
    print(f"wrote {out_dir / 'soak.json'} and {out_dir / 'soak.png'}")
    worst = max(analysis["processes"].items(), key=lambda kv: kv[1]["rss_growth_pct_10min"], default=None)
    print(
        f"\nSummary: the loop's max rate on this machine was {max_rate:,.0f} events/s (limited by "
        f"{'the worker' if worker_limited else 'the generator'}); {args.minutes:g} minutes at "
        f"{args.load:.0%} of it streamed {soak_run.events:,} events and {soak_run.deliveries:,} deliveries through "
        f"{len(analysis['processes'])} processes. After the warm-up "
        + (
            f"the largest RSS trend was {worst[0]}'s {worst[1]['rss_growth_pct_10min']:+.1f} % per 10 min, "
            if worst
            else ""
        )
        + f"the worker's freshness p99 was {_num(fresh['p99_ms'])} ms; "
        + ("both targets met. " if analysis["passed"] else "a target was NOT met (see above). ")
        + (f"Processes that did not stop cleanly: {bad}." if bad else "Every process stopped cleanly.")
    )
    return 1 if bad else 0


def _plot(samples: Sequence[Sample], analysis: dict[str, Any], results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    warmup = analysis["warmup_s"]
    fig, axes = plt.subplots(2, 2, figsize=(15, 9), sharex=True)
    (rss_ax, fd_ax), (lag_ax, fresh_ax) = axes
    minutes = [s.t / 60 for s in samples]
    for name in PROCESSES:
        p = analysis["processes"].get(name)
        if p is None:
            continue
        label = f"{name} ({p['rss_growth_pct_10min']:+.1f} %/10 min)"
        rss_ax.plot(minutes, [s.rss_mb.get(name) for s in samples], label=label)
        fd_ax.plot(minutes, [s.fds.get(name) for s in samples], label=name)
        if p["lag"] is not None:
            lag_ax.plot(minutes, [s.lag.get(name) for s in samples], label=name)
    fresh_ax.plot(minutes, [s.fresh_p50_ms for s in samples], label="p50", color="tab:blue")
    fresh_ax.plot(minutes, [s.fresh_p99_ms for s in samples], label="p99", color="tab:red")
    soak = results["soak"]
    titles = (
        (rss_ax, "RSS per process (with children), MB", "MB"),
        (fd_ax, "Open file descriptors per process", "fds"),
        (lag_ax, "Consumer lag per process (sum over its series)", "messages"),
        (fresh_ax, "Worker freshness (Kafka timestamp -> Redis) per interval", "ms"),
    )
    for ax, title, unit in titles:
        ax.axvspan(0, warmup / 60, color="grey", alpha=0.15, label="warm-up")
        ax.set_title(title)
        ax.set_ylabel(unit)
        ax.legend(fontsize=8, loc="upper left")
        ax.grid(alpha=0.3)
    lag_ax.set_yscale("symlog", linthresh=100)
    fresh_ax.set_yscale("log")
    for ax in (lag_ax, fresh_ax):
        ax.set_xlabel("minutes into the soak")
    v = analysis["verdicts"]
    fig.suptitle(
        f"nudge bench soak: {soak['minutes']:g} min at {soak['rate_per_s']:,.0f} events/s "
        f"({soak['load']:.0%} of the calibrated {results['calibration']['max_rate_per_s']:,.0f}/s); "
        f"RSS flat: {'met' if v['rss_flat'] else 'NOT met'}, lag bounded: {'met' if v['lag_bounded'] else 'NOT met'}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
