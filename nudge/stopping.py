"""Stopping a long-running command cleanly on SIGTERM or SIGINT.

>>> import os, signal
>>> before = signal.getsignal(signal.SIGTERM)
>>> with stop_on_signals() as stop:
...     os.kill(os.getpid(), signal.SIGTERM)
...     stop.is_set()
True
>>> signal.getsignal(signal.SIGTERM) is before   # the previous handler is back
True
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = ["stop_on_signals"]


@contextmanager
def stop_on_signals(*signals: signal.Signals) -> Iterator[threading.Event]:
    """An event set by SIGTERM or SIGINT (or `signals`) while the block runs; the previous handlers after.

    The command's loop checks the event between units of work and finishes
    the one in hand, so a stop never cuts a write in half.
    """
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in signals or (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
