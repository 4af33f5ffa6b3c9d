"""Benchmarks (`nudge bench`): each prints its numbers and writes JSON + a PNG chart.

`nudge bench NAME [options]` dispatches to the module `bench.NAME`, which
exposes `configure(parser)` like every nudge command module. A benchmark's
module is imported only when it runs, so `nudge bench produce` does not load
the stream worker that `nudge bench pipeline` needs.

- produce   raw Kafka ceiling vs simulator -> Kafka vs replay -> Kafka (bench/produce.py)
- collect   the HTTP collector against the raw producer rate (bench/collect.py)
- pipeline  end-to-end events -> Redis state throughput and latency (bench/pipeline.py)
- triggers  trigger decisions/s vs raw Redis stream reads; event -> provider latency (bench/triggers.py)
- soak      the whole loop for minutes at half its max rate: RSS, fds, lag, freshness over time (bench/soak.py)

`nudge eval` (bench/evaluate.py) lives here too: it drives the same parts in one process.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable

from nudge.errors import ConfigError
from nudge.settings import Settings

__all__ = ["BENCHMARKS", "configure", "run"]

# name -> (module, one-line summary)
BENCHMARKS: dict[str, tuple[str, str]] = {
    "produce": ("bench.produce", "events/s into Kafka: raw client ceiling, simulator, replay"),
    "collect": ("bench.collect", "HTTP collector: events/s and latency by batch size and clients, vs raw producer"),
    "pipeline": ("bench.pipeline", "events -> worker -> Redis: throughput and end-to-end latency"),
    "triggers": ("bench.triggers", "trigger decisions/s vs raw Redis stream reads; event -> provider latency"),
    "soak": ("bench.soak", "the whole loop at half its max rate for minutes: RSS, fds, lag and freshness per process"),
}


def configure(parser: argparse.ArgumentParser) -> None:
    listing = "\n".join(f"  {name:10} {summary}" for name, (_, summary) in BENCHMARKS.items())
    parser.description = "Benchmarks that print numbers and write JSON + PNG."
    parser.epilog = f"benchmarks:\n{listing}\n\nRun `nudge bench NAME --help` for a benchmark's options."
    parser.add_argument("benchmark", choices=sorted(BENCHMARKS), metavar="NAME", help="which benchmark to run")
    parser.add_argument("options", nargs=argparse.REMAINDER, help="the benchmark's own options")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from nudge.cli import OneLineParser

    module_name, summary = BENCHMARKS[args.benchmark]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise  # a dependency of the benchmark is missing: show the real error
        raise ConfigError(f"benchmark {args.benchmark!r} is not available: {module_name} does not exist yet") from None
    parser = OneLineParser(
        prog=f"nudge bench {args.benchmark}", description=summary, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    module.configure(parser)
    sub_args = parser.parse_args(args.options)
    func: Callable[[argparse.Namespace, Settings], int] = sub_args.func
    return func(sub_args, settings)
