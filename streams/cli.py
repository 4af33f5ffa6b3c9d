"""`nudge worker`: run the stream worker (Faust) until stopped.

Several workers may run at once, on one machine or many: they share the
partitions of the input topics (one consumer group, `NUDGE_APP_ID`). On one
machine give each its own `--web-port` (also its metrics port).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from typing import TYPE_CHECKING

from nudge.args import port
from nudge.cli import settings_epilog
from nudge.logs import RedactingFilter
from nudge.settings import Settings

if TYPE_CHECKING:
    import faust

__all__ = ["configure", "run", "worker"]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--web-port", type=port, help="metrics/web port of this worker, 1..65535 [default: NUDGE_WORKER_METRICS_PORT]"
    )
    parser.add_argument("--store", choices=("memory://", "rocksdb://"), help="table store [default: NUDGE_STORE]")
    parser.add_argument(
        "-l", "--loglevel", default="info", choices=("crit", "error", "warn", "info", "debug"), help="log level"
    )
    parser.epilog = settings_epilog(
        "kafka_bootstrap",
        "redis_url",
        "app_id",
        "store",
        "worker_metrics_port",
        "partitions",
        "batch_max",
        "batch_within_s",
        "grace_ms",
        "dedup_horizon_ms",
        "state_ttl_s",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from nudge.redis_client import check
    from nudge.topics import ensure_topics
    from streams.faust_internals import check_versions

    check_versions()  # before anything leans on the libraries' internals
    from streams.app import create_app

    if args.store:
        settings = dataclasses.replace(settings, store=args.store)
    ensure_topics(settings)  # Faust would auto-create them with the broker's defaults
    # A Redis that is down is waited for (the worker retries); a wrong password or CA is not.
    check(settings, only_misconfigured=True)
    app = create_app(settings, web_port=args.web_port)
    worker(app, args.loglevel).execute_from_commandline()
    return 0


def worker(app: faust.App, loglevel: str) -> faust.Worker:
    """The Faust worker for `app`: its log redacted like every nudge command's,
    and without its terminal spinner.

    - Faust replaces the root logger's handlers when it starts, dropping the
      filter `nudge.logs.setup_logging` installed; mode's `on_setup_root_logger`
      hook is where it is put back.
    - At warn and above, Faust's spinner puts the root logger at DEBUG and adds
      a handler that sees every record: every debug call of aiokafka and Faust
      then built a record (and redacted it) only to drop it. That cost the
      worker most of its latency headroom (`nudge bench pipeline` freshness p99
      382 -> 147 ms at 10k events/s), and it was why this redaction was once
      reverted. Faust itself drops the spinner below warn.
    """
    import faust

    class Worker(faust.Worker):
        def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
            super().on_setup_root_logger(logger, level)
            for handler in logger.handlers:
                if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                    handler.addFilter(RedactingFilter())

    built = Worker(app, loglevel=loglevel, quiet=True)
    built.spinner = None
    return built
