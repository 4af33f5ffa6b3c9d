"""Prometheus arithmetic without Prometheus: /metrics pages scraped twice, read as rates, quantiles and sums.

`nudge top` (ops/top.py) shows the dashboards' numbers with no Prometheus
running, so it does here, over two successive scrapes of each process, what
PromQL does over a range, and the same way (so the terminal and Grafana agree):

- a rate is a counter's increase between the two scrapes of a process over
  the seconds between them. A process whose counters went down restarted:
  its increase is then its whole count since the restart (Prometheus reads a
  reset the same way). A series the earlier scrape did not have starts from 0
  (prometheus_client creates a labelled series at its first increment); a
  process scraped once has totals but no rates yet;
- a quantile is `histogram_quantile` of the buckets' increase between the two
  scrapes: linear interpolation inside the bucket that holds the rank, the
  highest finite bound when the rank falls in +Inf; an interval without
  observations has no quantile;
- a gauge is its latest value; a sum "by" labels adds the series of every
  process, and "process" names the process itself (Prometheus's `job`).

`parse` and `Window` are pure; `fetch` and `Sampler` are the effects: one
scrape with a time-out, whose failure is a value (the reason), never an
exception, and every target scraped at once.
"""

from __future__ import annotations

import http.client
import math
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Final

from prometheus_client.parser import text_string_to_metric_families

from nudge.text import printable

__all__ = [
    "NO_COUNT",
    "Count",
    "Labels",
    "Reading",
    "Sampler",
    "Scrape",
    "Where",
    "Window",
    "fetch",
    "histogram_quantile",
    "parse",
]

Labels = tuple[tuple[str, str], ...]  # sorted (name, value) pairs
Key = tuple[str, ...]  # the values of the "by" labels, in their order
Where = Mapping[str, Collection[str]]  # label -> the values a series may have

MAX_BODY: Final = 16 * 1024 * 1024  # a /metrics page larger than this is not one of ours
# Local ports: never through the proxy an environment variable may name.
_OPENER: Final = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True, slots=True)
class Scrape:
    """One process's /metrics page: sample name -> labels -> value."""

    samples: Mapping[str, Mapping[Labels, float]]
    # Sample names that only grow while the process lives: counters, histogram buckets and counts.
    monotonic: frozenset[str] = frozenset()


def parse(text: str) -> Scrape:
    """A /metrics page as samples; ValueError when it is not the text exposition format.

    `_created` samples (when a series was born) and NaN values are no number to show.

    >>> s = parse('# TYPE a_total counter\\na_total{x="1"} 3\\na_created{x="1"} 1.7e9\\n')
    >>> dict(s.samples), sorted(s.monotonic)
    ({'a_total': {(('x', '1'),): 3.0}}, ['a_total'])
    """
    samples: dict[str, dict[Labels, float]] = defaultdict(dict)
    monotonic: set[str] = set()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_created") or math.isnan(sample.value):
                continue
            samples[sample.name][tuple(sorted(sample.labels.items()))] = float(sample.value)
            if family.type == "counter" or (family.type == "histogram" and sample.name.endswith(("_bucket", "_count"))):
                monotonic.add(sample.name)
    return Scrape(dict(samples), frozenset(monotonic))


def histogram_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """The q-quantile of cumulative (upper bound, count) buckets, as Prometheus's histogram_quantile.

    None when there is nothing to say: no +Inf bucket, or no observation. Ten
    observations, 4 up to 0.1 and 6 more up to 0.5: the median is the 1st of
    the 6 in (0.1, 0.5], a sixth of the way in; with one observation past 0.5,
    p99 falls in +Inf and is the highest finite bound.

    >>> round(histogram_quantile(0.5, [(0.1, 4.0), (0.5, 10.0), (math.inf, 10.0)]), 4)
    0.1667
    >>> histogram_quantile(0.99, [(0.1, 4.0), (0.5, 9.0), (math.inf, 10.0)])
    0.5
    """
    ordered = sorted(buckets)
    if len(ordered) < 2 or ordered[-1][0] != math.inf:
        return None
    counts: list[float] = []  # made monotonic, as Prometheus does: a page may be read mid-update
    for _, count in ordered:
        counts.append(max(count, counts[-1]) if counts else count)
    if counts[-1] <= 0:
        return None
    rank = q * counts[-1]
    b = next(i for i, count in enumerate(counts) if count >= rank or i == len(counts) - 1)
    if b == len(ordered) - 1:
        return ordered[-2][0]
    end = ordered[b][0]
    if b == 0 and end <= 0:
        return end
    start, below = (0.0, 0.0) if b == 0 else (ordered[b - 1][0], counts[b - 1])
    inside = counts[b] - below
    return end if inside <= 0 else start + (end - start) * (rank - below) / inside


@dataclass(frozen=True, slots=True)
class Count:
    """A counter: per second over the last interval (None before a second scrape), and since the process started."""

    rate: float | None
    total: float

    @staticmethod
    def sum(counts: Iterable[Count]) -> Count:
        """Counts added up; the rate of those that have one (None if none has).

        >>> Count.sum([Count(2.0, 10.0), Count(None, 5.0)])
        Count(rate=2.0, total=15.0)
        """
        listed = list(counts)
        rates = [c.rate for c in listed if c.rate is not None]
        return Count(sum(rates) if rates else None, sum(c.total for c in listed))


NO_COUNT: Final = Count(None, 0.0)


@dataclass(frozen=True, slots=True)
class Reading:
    """One attempt at a process's /metrics: the scrape, or why there is none."""

    url: str
    at: float  # time.monotonic() when the answer (or the failure) came
    scrape: Scrape | None
    error: str = ""


@dataclass(frozen=True, slots=True)
class _Source:
    name: str
    now: Scrape
    before: Scrape | None  # None: no earlier scrape to compare with
    seconds: float


def _restarted(before: Scrape, now: Scrape) -> bool:
    for name in now.monotonic & before.monotonic:
        old = before.samples[name]
        if any(value < old.get(labels, -math.inf) for labels, value in now.samples[name].items()):
            return True
    return False


def _match(labels: Labels, where: Where | None) -> bool:
    if not where:
        return True
    got = dict(labels)
    return all(got.get(name, "") in allowed for name, allowed in where.items())


def _key(labels: Labels, by: Sequence[str], process: str) -> Key:
    got = dict(labels)
    return tuple(process if name == "process" else got.get(name, "") for name in by)


def _increase(value: float, old: float) -> float:
    return value - old if value >= old else value  # a reset: everything since it


def _bound(labels: Labels) -> float | None:
    try:
        return float(dict(labels)["le"])
    except (KeyError, ValueError):
        return None


class Window:
    """Every process's metrics between two rounds of readings (`previous` None: the first round)."""

    def __init__(self, previous: Mapping[str, Reading] | None, current: Mapping[str, Reading]) -> None:
        self.sources: list[_Source] = []
        self.restarted: set[str] = set()
        for name, reading in current.items():
            if reading.scrape is None:
                continue
            prior = (previous or {}).get(name)
            if prior is None or prior.scrape is None or prior.url != reading.url or reading.at <= prior.at:
                self.sources.append(_Source(name, reading.scrape, None, 0.0))
                continue
            before = prior.scrape
            if _restarted(before, reading.scrape):
                self.restarted.add(name)
                before = Scrape({})  # every count is new: all of it happened since the last scrape
            self.sources.append(_Source(name, reading.scrape, before, reading.at - prior.at))

    @property
    def seconds(self) -> float | None:
        """The median interval between the two scrapes of a process (None: nothing scraped twice)."""
        spans = sorted(s.seconds for s in self.sources if s.before is not None)
        return spans[len(spans) // 2] if spans else None

    def counts(self, name: str, by: Sequence[str] = (), where: Where | None = None) -> dict[Key, Count]:
        """Counter `name` (with its `_total`) summed by the labels `by`."""
        totals: dict[Key, float] = defaultdict(float)
        rates: dict[Key, float] = {}
        for source in self.sources:
            before = source.before.samples.get(name, {}) if source.before is not None else None
            for labels, value in source.now.samples.get(name, {}).items():
                if not _match(labels, where):
                    continue
                key = _key(labels, by, source.name)
                totals[key] += value
                if before is not None:
                    rates[key] = rates.get(key, 0.0) + _increase(value, before.get(labels, 0.0)) / source.seconds
        return {key: Count(rates.get(key), total) for key, total in totals.items()}

    def count(self, name: str, where: Where | None = None) -> Count:
        return self.counts(name, (), where).get((), NO_COUNT)

    def gauges(
        self,
        name: str,
        by: Sequence[str] = (),
        where: Where | None = None,
        combine: Callable[[Iterable[float]], float] = max,
    ) -> dict[Key, float]:
        """Gauge `name`, its series combined (max by default, like the dashboards) by the labels `by`."""
        grouped: dict[Key, list[float]] = defaultdict(list)
        for source in self.sources:
            for labels, value in source.now.samples.get(name, {}).items():
                if _match(labels, where):
                    grouped[_key(labels, by, source.name)].append(value)
        return {key: combine(values) for key, values in grouped.items()}

    def gauge(
        self, name: str, where: Where | None = None, combine: Callable[[Iterable[float]], float] = max
    ) -> float | None:
        return self.gauges(name, (), where, combine).get(())

    def quantiles(
        self, q: float, histogram: str, by: Sequence[str] = (), where: Where | None = None
    ) -> dict[Key, float | None]:
        """The q-quantile of histogram `histogram` over the interval, by the labels `by`."""
        buckets: dict[Key, dict[float, float]] = defaultdict(lambda: defaultdict(float))
        for source in self.sources:
            if source.before is None:
                continue
            before = source.before.samples.get(f"{histogram}_bucket", {})
            for labels, value in source.now.samples.get(f"{histogram}_bucket", {}).items():
                bound = _bound(labels)
                if bound is not None and _match(labels, where):
                    key = _key(labels, by, source.name)
                    buckets[key][bound] += _increase(value, before.get(labels, 0.0))
        return {key: histogram_quantile(q, counts.items()) for key, counts in buckets.items()}

    def quantile(self, q: float, histogram: str, where: Where | None = None) -> float | None:
        return self.quantiles(q, histogram, (), where).get(())


# --------------------------------------------------------------------------
# The effects: scraping
# --------------------------------------------------------------------------


def fetch(url: str, timeout: float, clock: Callable[[], float] = time.monotonic) -> Reading:
    """One scrape; a failure is a value (the reason, in a few words), never an exception."""
    try:
        with _OPENER.open(url, timeout=timeout) as response:
            body = response.read(MAX_BODY + 1)
    except urllib.error.HTTPError as exc:
        return Reading(url, clock(), None, f"HTTP {exc.code}")
    except (OSError, http.client.HTTPException) as exc:  # URLError is an OSError
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        if isinstance(reason, TimeoutError):
            return Reading(url, clock(), None, f"no answer within {timeout:g} s")
        why = reason.strerror if isinstance(reason, OSError) and reason.strerror else str(reason)
        return Reading(url, clock(), None, printable(why.lower() or type(reason).__name__, limit=80))
    if len(body) > MAX_BODY:
        return Reading(url, clock(), None, f"/metrics larger than {MAX_BODY // 2**20} MiB")
    try:
        return Reading(url, clock(), parse(body.decode("utf-8", errors="replace")))
    except ValueError as exc:
        return Reading(url, clock(), None, printable(f"not a /metrics page ({exc})", limit=80))


class Sampler:
    """Scrapes every target at once; each `round()` returns one reading per target."""

    def __init__(self, targets: Mapping[str, str], timeout: float) -> None:
        self.targets = dict(targets)
        self.timeout = timeout
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(self.targets)), thread_name_prefix="nudge-scrape")

    def round(self) -> dict[str, Reading]:
        futures = {name: self._pool.submit(fetch, url, self.timeout) for name, url in self.targets.items()}
        return {name: future.result() for name, future in futures.items()}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> Sampler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
