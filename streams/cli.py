"""`nudge worker`: run the stream worker (Faust) until stopped.

Several workers may run at once, on one machine or many: they share the
partitions of the input topics (one consumer group, `NUDGE_APP_ID`). On one
machine give each its own `--web-port` (also its metrics port).
"""

from __future__ import annotations

import argparse
import dataclasses

from nudge.args import port
from nudge.cli import settings_epilog
from nudge.settings import Settings

__all__ = ["configure", "run"]


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
    import faust

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
    worker = faust.Worker(app, loglevel=args.loglevel, quiet=True)
    worker.execute_from_commandline()
    return 0
