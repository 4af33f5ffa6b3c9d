"""The `nudge` console script: one subcommand per user-facing job.

Each subcommand lives in the module that does the job and exposes
`configure(parser)`; the parser's `func(args, settings) -> int` runs it. Only
the chosen command's module is imported, so `nudge stack status` does not pay
for loading Faust.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from nudge.errors import NudgeError, UsageError
from nudge.logs import setup_logging
from nudge.settings import Settings
from nudge.text import printable

__all__ = ["COMMANDS", "OneLineParser", "main", "settings_epilog"]

# name -> (module, one-line summary)
COMMANDS: dict[str, tuple[str, str]] = {
    "stack": ("nudge.stack", "start, stop, inspect or wipe the local Kafka + Redis stack"),
    "topics": ("nudge.topics", "create the topics (idempotent) and list them"),
    "settings": ("nudge.settings_cli", "show every setting, its env var and current value"),
    "simulate": ("producers.simulator", "generate realistic user traffic into Kafka or a file"),
    "collect": ("producers.collector", "run the HTTP collector apps and shops post events to"),
    "record": ("producers.record", "record topics into a gzip'd JSONL log"),
    "replay": ("producers.replay", "replay a recorded log or a JSONL export into Kafka"),
    "import-dataset": ("producers.datasets", "convert a public dataset in shared/data into a nudge event log"),
    "worker": ("streams.cli", "run the Faust stream worker (events -> features -> Redis)"),
    "trainer": ("streams.trainer", "learn the models from resolved examples and rewards, publish signed snapshots"),
    "eval": ("bench.evaluate", "how good the models are: simulator or real data -> worker -> trainer, vs baselines"),
    "models": ("streams.models_cli", "what the models know now: the newest snapshot's quality beside baselines"),
    "state": ("streams.state_cli", "print a user's live state from Redis, with its age"),
    "triggers": ("triggers.service", "run the trigger service: campaign rules on live state, under guardrails"),
    "why": ("triggers.why", "explain a user's recent trigger decisions in plain words"),
    "report": ("triggers.report", "what each campaign sent, suppressed and earned, with uplift against the holdout"),
    "deliver": ("delivery.worker", "run a delivery worker: the outbox topic -> push/SMS/webhook providers"),
    "mock-providers": ("delivery.mock_providers", "a local FCM/Twilio/webhook server that fails on demand"),
    "bench": ("bench", "benchmarks that print numbers and write JSON + PNG"),
    "dashboards": ("ops.dashboards", "check the Grafana dashboards, or draw them to PNG from Prometheus"),
    "top": ("ops.top", "a live terminal view of the dashboards' numbers, from each process's /metrics"),
}


class OneLineParser(argparse.ArgumentParser):
    """Bad arguments get one clear line and exit status 2, not a usage dump."""

    def error(self, message: str) -> NoReturn:
        # argparse quotes the bad argument; it may still hold a terminal escape or an undecodable byte.
        self.exit(2, f"{self.prog}: error: {printable(message)} (see --help)\n")


def settings_epilog(*names: str) -> str:
    """An epilog listing the env vars a command reads."""
    decls = {d.name: d for d in Settings.declarations()}
    lines = ["settings (env vars):"]
    for name in names:
        d = decls[name]
        default = "" if d.secret else f"default: {d.default}; " if d.default != "" else "default: derived; "
        lines.append(f"  {d.env:34} {d.help} [{default}allowed: {d.allowed}]")
    return "\n".join(lines)


def _top_parser() -> OneLineParser:
    summary = "\n".join(f"  {name:16} {text}" for name, (_, text) in COMMANDS.items())
    parser = OneLineParser(
        prog="nudge",
        description="nudge: real-time marketing engine (events -> features -> nudges).",
        epilog=f"commands:\n{summary}\n\nRun `nudge COMMAND --help` for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    parser.add_argument("command", choices=sorted(COMMANDS), metavar="COMMAND", help="what to do (see below)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser()
    # Split global options from the command and its own arguments.
    idx = next((i for i, a in enumerate(argv) if not a.startswith("-")), len(argv))
    if idx == len(argv):
        top.parse_args(argv)  # handles --help, or errors on a missing command
        top.error("a COMMAND is required")
    ns = top.parse_args(argv[: idx + 1])
    module_name, summary = COMMANDS[ns.command]
    parser = OneLineParser(
        prog=f"nudge {ns.command}", description=summary, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    module = importlib.import_module(module_name)
    module.configure(parser)
    args = parser.parse_args(argv[idx + 1 :])
    setup_logging(ns.verbose)
    func: Callable[[argparse.Namespace, Settings], int] = args.func
    try:
        settings = Settings.from_env()
        return func(args, settings)
    except UsageError as exc:
        return _fail(ns.command, str(exc), 2)
    except NudgeError as exc:
        return _fail(ns.command, str(exc), 1)
    except BrokenPipeError:
        # The reader went away (`nudge settings | head -1`): stop quietly, and point
        # stdout at /dev/null so the interpreter's final flush does not fail too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as exc:
        # A file operation nobody checked ahead (every command checks its paths first):
        # one line naming the file, not a traceback. Other OSErrors are bugs and propagate.
        if exc.filename is None:
            raise
        names = " -> ".join(str(name) for name in (exc.filename, exc.filename2) if name is not None)
        return _fail(ns.command, f"{names}: {exc.strerror or exc}", 1)
    except KeyboardInterrupt:
        print(f"nudge {ns.command}: interrupted", file=sys.stderr)
        return 130


def _fail(command: str, message: str, status: int) -> int:
    """One line on stderr: no control characters, no line breaks, whatever the message holds."""
    print(f"nudge {command}: error: {printable(message)}", file=sys.stderr)
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
