"""Argument types every `nudge` command shares: each value is checked before any work starts.

An argparse `type=` here raises `argparse.ArgumentTypeError` saying what was
wrong and what is allowed; `nudge.cli.OneLineParser` turns that into one line
on stderr and exit status 2. Paths are checked the way they will be used: an
output file's directory must let us create a file in it (probed with a
temporary file, so the reason given is the file system's real one), an output
directory must be a directory or creatable, an input file must open.

>>> integer(1, 10)("3")
3
>>> number(0, 60, low_open=True)("0")
Traceback (most recent call last):
argparse.ArgumentTypeError: expected a number > 0 and <= 60, got '0'
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import stat
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from nudge.events import MAX_EPOCH_MS, id_problem
from nudge.text import printable, quoted

__all__ = [
    "input_dir",
    "input_file",
    "instant",
    "integer",
    "number",
    "output_dir",
    "output_file",
    "output_problem",
    "port",
    "seed",
    "user_id_arg",
]


def integer(low: int, high: int, *, why: str = "") -> Callable[[str], int]:
    """argparse type: an integer in low..high; `why` explains the upper bound."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer {low}..{high}, got {quoted(text)}") from None
        if not low <= value <= high:
            reason = f" ({why})" if why and value > high else ""
            raise argparse.ArgumentTypeError(f"expected an integer {low}..{high}, got {quoted(str(value))}{reason}")
        return value

    parse.__name__ = "integer"  # argparse names the type in some messages
    return parse


def number(low: float, high: float, *, low_open: bool = False, unit: str = "") -> Callable[[str], float]:
    """argparse type: a finite number in [low, high], or (low, high] with `low_open`."""
    allowed = f"{'>' if low_open else '>='} {low:g} and <= {high:g}{unit}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number {allowed}, got {quoted(text)}") from None
        if not math.isfinite(value) or value < low or (low_open and value == low) or value > high:
            raise argparse.ArgumentTypeError(f"expected a number {allowed}, got {quoted(text)}")
        return value

    parse.__name__ = "number"
    return parse


port = integer(1, 65535)
# Seeds are written into JSON (ground truth, results), whose readers stop at 64 bits.
seed = integer(-(2**63), 2**63 - 1)


def _plain_path(text: str) -> Path:
    if not text:
        raise argparse.ArgumentTypeError("expected a path, got ''")
    if printable(text) != text:
        # Such a name could not be printed back (or would print an escape sequence).
        raise argparse.ArgumentTypeError(
            f"path '{printable(text, limit=200)}' holds a control character or undecodable byte"
        )
    return Path(text)


def _kind(path: Path) -> str | None:
    """'dir', 'file' (anything else that exists), 'blocked' (a parent is a file or
    not searchable) or None when nothing is there."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return None
    except OSError:
        return "blocked"
    return "dir" if stat.S_ISDIR(mode) else "file"


def _probe(directory: Path) -> str | None:
    """Why no file can be created in `directory` (which exists), or None."""
    try:
        fd, name = tempfile.mkstemp(dir=directory, prefix=".nudge-write-test-")
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM):
            return f"{directory} is not writable ({exc.strerror})"
        if exc.errno == errno.EROFS:
            return f"{directory} is on a read-only file system"
        if exc.errno == errno.ENOENT:
            # /proc and friends: the directory is there, the file system refuses new files.
            return f"{directory} does not allow creating files (its file system refuses them)"
        return f"cannot create a file in {directory}: {exc.strerror}"
    os.close(fd)
    os.unlink(name)
    return None


def _existing_ancestor(path: Path) -> tuple[Path, str]:
    """The nearest ancestor of `path` that exists (or blocks it), with its kind."""
    for candidate in path.absolute().parents:
        kind = _kind(candidate)
        if kind not in (None, "blocked"):
            return candidate, kind
    raise AssertionError("unreachable: / exists")  # pragma: no cover


def output_problem(path: Path, *, directory: bool = False) -> str | None:
    """Why `path` cannot be written as an output file (or directory), or None."""
    kind = _kind(path)
    if directory:
        if kind == "dir":
            return _probe(path)
        if kind == "file":
            return f"{path} is not a directory"
        ancestor, kind = _existing_ancestor(path)
        return f"{ancestor} is not a directory" if kind != "dir" else _probe(ancestor)
    if kind == "dir":
        return f"{path} is a directory, expected a file"
    if kind == "blocked":
        try:
            path.stat()
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:
                return "the name is too long for the file system"
    parent = path.parent
    parent_kind = _kind(parent)
    if parent_kind != "dir":
        ancestor, ancestor_kind = _existing_ancestor(path)
        if ancestor_kind == "dir":
            return f"directory {parent} does not exist"
        return f"{ancestor} is not a directory"
    problem = _probe(parent)
    if problem is None and kind is not None and not os.access(path, os.W_OK):
        return f"{path} is not writable"
    return problem


def output_file(text: str) -> Path:
    """argparse type: a file we can create (its directory exists and takes new files)."""
    path = _plain_path(text)
    problem = output_problem(path)
    if problem:
        raise argparse.ArgumentTypeError(f"cannot write {printable(text, limit=200)}: {problem}")
    return path


def output_dir(text: str) -> Path:
    """argparse type: a directory that exists and takes new files, or can be created."""
    path = _plain_path(text)
    problem = output_problem(path, directory=True)
    if problem:
        raise argparse.ArgumentTypeError(f"cannot write into {printable(text, limit=200)}: {problem}")
    return path


def input_file(text: str) -> Path:
    """argparse type: a regular file we can open for reading."""
    path = _plain_path(text)
    kind = _kind(path)
    if kind is None or kind == "blocked":
        raise argparse.ArgumentTypeError(f"{printable(text, limit=200)} does not exist")
    if kind == "dir":
        raise argparse.ArgumentTypeError(f"{printable(text, limit=200)} is a directory, expected a file")
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot read {printable(text, limit=200)}: {exc.strerror}") from None
    return path


def input_dir(text: str) -> Path:
    """argparse type: a directory that exists."""
    path = _plain_path(text)
    kind = _kind(path)
    if kind is None or kind == "blocked":
        raise argparse.ArgumentTypeError(f"{printable(text, limit=200)} does not exist")
    if kind != "dir":
        raise argparse.ArgumentTypeError(f"{printable(text, limit=200)} is not a directory")
    return path


def user_id_arg(text: str) -> str:
    """argparse type: a user id as the event contract allows it (the collector's rule, `nudge.events.id_problem`)."""
    problem = id_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(
            f"{quoted(text)} {problem}: a user id is 1..128 characters, not blank, "
            "without control characters or undecodable bytes"
        )
    return text


def instant(text: str) -> datetime:
    """argparse type: an ISO 8601 date-time with a UTC offset, inside the event contract's time range.

    >>> instant("2026-10-01T00:00:00Z").isoformat()
    '2026-10-01T00:00:00+00:00'
    """
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 date-time: {quoted(text)}") from None
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"needs a UTC offset, e.g. 2026-10-01T00:00:00Z, got {quoted(text)}")
    try:
        ms = int(value.timestamp() * 1000)
    except (OverflowError, ValueError):
        ms = -1
    if not 0 <= ms < MAX_EPOCH_MS:
        last = datetime.fromtimestamp(MAX_EPOCH_MS / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        raise argparse.ArgumentTypeError(
            f"event time must be 1970-01-01T00:00:00Z .. {last} (the event contract), got {quoted(text)}"
        )
    return value
