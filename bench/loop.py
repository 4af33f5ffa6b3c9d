"""The whole loop, end to end, on the running local stack: what `make demo` shows, and the closed-loop test.

simulator -> Kafka -> worker (+ trainer) -> Redis -> triggers -> notifications -> delivery
-> mock providers -> deliveries.jsonl -> the simulated users react (producers/respond.py) -> Kafka ...

`run_loop(options, settings)`:

1. starts `nudge mock-providers` (with throwaway FCM credentials), a stream
   worker, with models the trainer, `nudge triggers --clock event`,
   `nudge deliver`, the HTTP collector and the campaign figures
   (`nudge report --serve`), each a child process with a log under
   `<data dir>/logs/loop-<tag>-*.log` and its /metrics on the port its
   setting names (so `nudge top` and `prometheus.local.yml` find them), or
   on a free one when that port is taken (`LoopRun.endpoints` lists them);
2. streams `days` of simulated activity of `users` users, ending now, at
   `rate` events/s, with the users' reactions merged in (the simulator sends
   no offers of its own): simulated time runs `days / (events / rate)`
   faster than the wall clock, and the trigger service follows it (event
   clock), so a 30-minute cart wait or the 72-hour attribution window pass
   in simulated time;
3. waits until deliveries stop flowing, stops every process (SIGTERM), and
   builds `nudge report` over this run's users (ids tagged `<tag>-u…`).

Messages delivered after the last simulated event get no reaction (the
simulated clock has stopped): a small loss at the very end of a run.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from tqdm import tqdm

from bench.scope import drop_run, scoped
from nudge.errors import NudgeError
from nudge.settings import Settings
from producers.respond import DeliveryFeed, with_reactions
from producers.simulator import EventDict, TokenBucket, generate, retag, send_events
from streams.process import WorkerProcess

__all__ = ["LoopOptions", "LoopRun", "run_loop"]

NUDGE: Final = [sys.executable, "-m", "nudge.cli"]
READY_TIMEOUT_S: Final = 60.0
SETTLE_S: Final = 6.0  # no new delivery for this long: the loop is done
SETTLE_MAX_S: Final = 60.0


@dataclass(frozen=True, slots=True)
class LoopOptions:
    users: int = 600
    days: float = 21.0
    rate: float = 1500.0
    seed: int = 42
    models: bool = True
    rules_path: Path | None = None  # default: the settings' (deploy/config/rules.yaml)
    progress: bool = True
    max_seconds: float | None = None  # stop sending after this long, though the simulated days go on
    report: bool = True  # read the run's topics back at the end for the campaign report (a soak skips it)
    # Called once every process serves its /metrics (nudge top, the soak's sampler, Prometheus in the tests),
    # and once deliveries have settled, before anything stops (a last look at live metrics).
    on_running: Callable[[LoopRun], None] | None = None
    before_stop: Callable[[LoopRun], None] | None = None


@dataclass(slots=True)
class LoopRun:
    """What a run produced: the report, the counts, where the logs are."""

    tag: str
    events: int = 0
    reactions: dict[str, int] = field(default_factory=dict)
    deliveries: int = 0
    report: dict[str, Any] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)
    seconds: float = 0.0
    statuses: dict[str, int | None] = field(default_factory=dict)
    # process name -> its /metrics URL, and its pid, while the loop runs
    endpoints: dict[str, str] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    settings: Settings | None = None  # the run's own scoped settings


def _free_port(preferred: int = 0) -> int:
    """`preferred` if nothing listens there (the settings' port), else any free port."""
    import socket

    with socket.socket() as s:
        # As the servers do: a port whose last connections linger in TIME_WAIT (the previous run's) is free.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", preferred))
        except OSError:
            s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Child:
    """One `nudge ...` child process with its log."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            self.proc = subprocess.Popen([*NUDGE, *args], env=env, stdout=out, stderr=subprocess.STDOUT)

    def check(self) -> None:
        if self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-2000:]
            raise NudgeError(f"{self.name} exited with status {self.proc.returncode}; see {self.log}\n{tail}")

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def _wait_http(url: str, child: _Child, timeout: float) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        child.check()
        with contextlib.suppress(OSError):
            urllib.request.urlopen(url, timeout=1).close()
            return
        time.sleep(0.2)
    raise NudgeError(f"{child.name} did not serve {url} within {timeout:.0f} s; see {child.log}")


def _count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open("rb") as f:
        return sum(1 for _ in f)


def run_loop(options: LoopOptions, settings: Settings, *, say: Any = print) -> LoopRun:
    """Run the whole loop once (see the module docstring); the caller prints or checks the result."""
    from models.offers import load_offers
    from nudge.topics import ensure_topics
    from ops.top import default_targets
    from triggers.report import build_report, read_topics

    began = time.monotonic()
    now = datetime.now(UTC).replace(microsecond=0)
    tag = f"l{now:%H%M%S}{secrets.token_hex(2)}"
    run = LoopRun(tag)
    start = now - timedelta(days=options.days)
    data = Path(settings.data_dir) / f"loop-{tag}"
    data.mkdir(parents=True, exist_ok=True)
    mock_port = _free_port()
    mock_url = f"http://127.0.0.1:{mock_port}"
    credentials = data / "fcm-service-account.json"
    scope = f"loop-{tag}"
    # A run of its own: topics, consumer groups and the changes stream. The trigger service's event
    # clock follows the states it reads, so another run's backlog would move it (and the worker's new
    # group would replay the shared topics' history). Users and decisions keep the usual Redis
    # prefixes, so `nudge state` and `nudge why` find them afterwards.
    s = scoped(
        settings,
        scope,
        own_keys=False,
        data_dir=data,
        rules_path=options.rules_path or settings.rules_path,
        model_key=secrets.token_hex(24) if options.models else "",
        fcm_project_id="nudge-local",
        fcm_credentials_path=str(credentials),
        fcm_url=mock_url,
        twilio_url=mock_url,
        twilio_account_sid="AC" + "0" * 32,
        twilio_auth_token=secrets.token_hex(16),
        twilio_from="+15005550006",
        mock_providers_port=mock_port,
        snapshot_every_s=3.0,
        snapshot_every_examples=2_000,
    )
    ensure_topics(s)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("NUDGE_")}, **s.to_env()}
    logs = Path(settings.data_dir) / "logs"
    subprocess.run(
        [*NUDGE, "mock-providers", "--port", str(mock_port), "--make-credentials", str(credentials)],
        env=env,
        check=True,
        capture_output=True,
    )
    children: list[_Child] = []
    worker: WorkerProcess | None = None
    try:
        mock = _Child(
            "mock-providers", ["mock-providers", "--port", str(mock_port)], env, logs / f"loop-{tag}-mock.log"
        )
        children.append(mock)
        _wait_http(f"{mock_url}/_mock/faults", mock, READY_TIMEOUT_S)
        ports = {
            "worker": _free_port(settings.worker_metrics_port),
            "collector": _free_port(settings.collector_port),
            "triggers": _free_port(settings.triggers_metrics_port),
            "deliver": _free_port(settings.delivery_metrics_port),
            "report": _free_port(settings.report_metrics_port),
        }
        if options.models:
            ports["trainer"] = _free_port(settings.trainer_metrics_port)
            trainer_env = {**env, "NUDGE_TRAINER_METRICS_PORT": str(ports["trainer"])}
            children.append(_Child("trainer", ["trainer"], trainer_env, logs / f"loop-{tag}-trainer.log"))
        worker = WorkerProcess(s, web_port=ports["worker"], log_path=logs / f"loop-{tag}-worker.log").start()
        run.logs["worker"] = worker.log_path
        worker.wait_ready(READY_TIMEOUT_S)
        triggers = _Child(
            "triggers",
            ["-v", "triggers", "--clock", "event", "--tick", "0.2", "--metrics-port", str(ports["triggers"])],
            env,
            logs / f"loop-{tag}-triggers.log",
        )
        children.append(triggers)
        children.append(
            _Child(
                "deliver",
                ["deliver"],
                {**env, "NUDGE_DELIVERY_METRICS_PORT": str(ports["deliver"])},
                logs / f"loop-{tag}-deliver.log",
            )
        )
        children.append(
            _Child(
                "collector",
                ["collect", "--port", str(ports["collector"])],
                {**env, "NUDGE_COLLECTOR_PORT": str(ports["collector"])},
                logs / f"loop-{tag}-collector.log",
            )
        )
        children.append(
            _Child(
                "report",
                ["report", "--serve", "--every", "5", "--metrics-port", str(ports["report"])],
                env,
                logs / f"loop-{tag}-report.log",
            )
        )
        run.settings = s
        run.endpoints = {name: f"http://127.0.0.1:{port}/metrics" for name, port in ports.items()}
        run.pids = {child.name: child.proc.pid for child in children if child.name != "mock-providers"}
        if worker.proc is not None:
            run.pids["worker"] = worker.proc.pid
        for child in children:
            if child.name in run.endpoints:
                _wait_http(run.endpoints[child.name], child, READY_TIMEOUT_S)
        time.sleep(1.0)  # the trigger service's consumer groups exist before the first change
        for child in children:
            run.logs[child.name] = child.log
        if options.on_running is not None:
            options.on_running(run)
        usual = default_targets(settings)  # where `nudge top` looks, unless a port was taken
        watch = "nudge top" + "".join(f" --target {n}={u}" for n, u in run.endpoints.items() if usual.get(n) != u)
        say(
            f"loop {tag}: {options.users} users, {options.days:g} days ending now, at {options.rate:,.0f} events/s; "
            f"mock providers on {mock_url}; logs {logs}/loop-{tag}-*.log; live view: `{watch}` in another terminal"
        )

        feed = DeliveryFeed(s, data / "mock-provider" / "deliveries.jsonl")
        start_ms = int(start.timestamp() * 1000)
        end_ms = start_ms + round(options.days * 86_400_000)
        organic = generate(options.users, options.days, options.seed, start, exposures=False)
        reactions = {"delivered": 0, "events": 0, "purchases": 0, "unmatched": 0}
        events = retag(with_reactions(organic, feed, options.seed, options.users, start_ms, end_ms, reactions), tag)
        bucket = TokenBucket(options.rate)
        sent = 0
        stop_at = time.monotonic() + options.max_seconds if options.max_seconds is not None else float("inf")

        def paced() -> Iterator[EventDict]:
            nonlocal sent
            bar = tqdm(desc="loop", unit="ev", unit_scale=True, file=sys.stderr, disable=not options.progress or None)
            with bar:
                for event in events:
                    bucket.take()
                    if time.monotonic() >= stop_at:
                        break
                    yield event
                    sent += 1
                    if sent % 2000 == 0:
                        bar.update(2000)
                        bar.set_postfix(delivered=reactions["delivered"], bought=reactions["purchases"])
                        for child in children:
                            child.check()
                        worker.check_alive()

        send_events(paced(), s, client_id="nudge-loop")
        run.events = sent
        run.reactions = reactions
        deliveries = data / "mock-provider" / "deliveries.jsonl"
        last, last_change, settle_end = -1, time.monotonic(), time.monotonic() + SETTLE_MAX_S
        while time.monotonic() < settle_end:
            count = _count_lines(deliveries)
            if count != last:
                last, last_change = count, time.monotonic()
            elif time.monotonic() - last_change >= SETTLE_S:
                break
            time.sleep(0.5)
        run.deliveries = last
        if options.before_stop is not None:
            options.before_stop(run)
    finally:
        for child in reversed(children):
            run.statuses[child.name] = child.stop()
        if worker is not None:
            run.statuses["worker"] = worker.stop(30.0)
    if not options.report:
        drop_run(s, scope, key_patterns=(f"{s.changes_stream}*",))
        run.seconds = time.monotonic() - began
        return run
    try:
        decisions, purchases, app_events, _ = read_topics(s, None, progress=options.progress)
    finally:
        drop_run(s, scope, key_patterns=(f"{s.changes_stream}*",))
    report = build_report(  # the run's own topics: everything in them is this run's
        decisions,
        purchases,
        app_events,
        load_offers(s.offers_path),
        s.attribution_window_ms,
    )
    report["loop"] = {
        "tag": tag,
        "users": options.users,
        "days": options.days,
        "rate": options.rate,
        "events": run.events,
        "reactions": run.reactions,
        "deliveries": run.deliveries,
    }
    run.report = report
    run.seconds = time.monotonic() - began
    return run


# --------------------------------------------------------------------------
# `python -m bench.loop` (what `make demo` runs)
# --------------------------------------------------------------------------


def build_parser() -> Any:
    import argparse

    from nudge.args import integer, number
    from nudge.args import seed as seed_arg
    from nudge.cli import OneLineParser, settings_epilog

    parser = OneLineParser(
        prog="python -m bench.loop",
        description=(
            "Run the whole loop on the running local stack (`nudge stack up`) and end with the campaign report:\n"
            "simulator -> worker (+ trainer) -> Redis -> triggers -> delivery -> mock providers -> the simulated\n"
            "users react -> ... Simulated time runs fast (days in minutes); the trigger service follows it."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "example:\n  python -m bench.loop --users 600 --days 21 --rate 1500   (about 2.5 minutes)\n\n"
            + settings_epilog("kafka_bootstrap", "redis_url", "rules_path", "offers_path", "data_dir")
        ),
    )
    parser.add_argument("--users", type=integer(10, 20_000), default=600, metavar="N", help="simulated users [600]")
    parser.add_argument(
        "--days", type=number(1, 90), default=21.0, metavar="D", help="days of activity, ending now, 1..90 [21]"
    )
    parser.add_argument(
        "--rate", type=number(100, 50_000), default=1500.0, metavar="R", help="events per second, 100..50000 [1500]"
    )
    parser.add_argument("--seed", type=seed_arg, default=42, metavar="S", help="simulator seed [42]")
    parser.add_argument("--no-models", action="store_true", help="no trainer, no scores: rules on features only")
    parser.add_argument(
        "--top",
        action="store_true",
        help="show `nudge top`'s live view of the run's processes instead of a progress bar",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    import orjson

    from nudge.logs import setup_logging
    from ops.top import WatchThread
    from triggers.report import render_text, write_chart
    from triggers.why import explain

    args = build_parser().parse_args(argv)
    setup_logging(0)
    settings = Settings.from_env()
    top = WatchThread()  # with --top: from the moment every process serves /metrics until deliveries settle
    options = LoopOptions(
        users=args.users,
        days=args.days,
        rate=args.rate,
        seed=args.seed,
        models=not args.no_models,
        progress=not args.top,
        on_running=(lambda run: top.start(run.endpoints)) if args.top else None,
        before_stop=(lambda run: top.stop()) if args.top else None,
    )
    try:
        run = run_loop(options, settings, say=lambda text: tqdm.write(text, file=sys.stdout))
    except NudgeError as exc:
        print(f"loop: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("loop: interrupted (its processes were stopped)", file=sys.stderr)
        return 130
    finally:
        top.stop()
    out = Path(settings.data_dir) / f"loop-{run.tag}"
    (out / "report.json").write_bytes(orjson.dumps(run.report, option=orjson.OPT_INDENT_2) + b"\n")
    write_chart(run.report, out / "report.png")
    print()
    print(render_text(run.report))
    example = _a_user_with_a_message(settings, run.tag)
    if example is not None:
        user, records = example
        print(f"\n`nudge why {user}`:")
        for record in records[:3]:
            print(explain(record))
    r = run.reactions
    bad = {name: status for name, status in run.statuses.items() if status not in (0, None)}
    print(
        f"\nSummary: in {run.seconds:.0f} s the loop streamed {run.events:,} events of {options.users} simulated users "
        f"({options.days:g} days) through the worker{' and the trainer' if options.models else ''}; the trigger "
        f"service decided, {run.deliveries:,} messages reached the mock providers, and the users reacted with "
        f"{r.get('purchases', 0):,} purchases. Report: {out / 'report.json'} and {out / 'report.png'}. "
        + (f"Processes that did not stop cleanly: {bad}. " if bad else "Every process stopped cleanly. ")
        + f"Try `nudge why {example[0] if example else run.tag + '-u00001'}`, `nudge report`, and `nudge stack down`."
    )
    return 1 if bad else 0


def _a_user_with_a_message(settings: Settings, tag: str) -> tuple[str, list[dict[str, Any]]] | None:
    """The run's user with the most decisions in Redis (among the first 500 scanned), and those decisions."""
    from nudge.redis_client import sync_client
    from triggers.store import TriggerStore

    client = sync_client(settings, decode_responses=True)
    try:
        prefix = settings.triggers_key_prefix
        keys = [k for _, k in zip(range(500), client.scan_iter(match=f"{prefix}{{{tag}-*}}:decisions"), strict=False)]
        if not keys:
            return None
        busiest = max(keys, key=lambda k: int(client.llen(k)))
        user = busiest[len(prefix) + 1 : busiest.index("}")]
        return user, TriggerStore(client, prefix=prefix).decisions(user)
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
