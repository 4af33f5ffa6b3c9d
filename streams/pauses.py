"""Keeping garbage-collection pauses out of the worker's freshness.

The worker holds every user's state in memory: hundreds of thousands of
small dicts, lists and sets that live for hours. CPython's cyclic collector
walks all of them in every full (generation 2) collection, which it runs
whenever the survivors grew by a quarter; with 20k users that was a pause
of several hundred milliseconds every few seconds under load, the
"periodic stall" in the freshness histogram.

Policy: after each batch, `gc.freeze()` moves everything alive into the
permanent generation (constant time), so automatic collections only ever
walk what the current batch allocated. Frozen objects are still freed by
reference counting; only garbage *cycles* among them wait for the periodic
full collection (`gc.unfreeze(); gc.collect(); gc.freeze()`, every
`NUDGE_GC_FULL_EVERY_S`), one pause instead of many. Every collection's
pause is observed in `nudge_worker_gc_pause_seconds`.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from prometheus_client import Histogram

__all__ = ["GcPolicy"]


class GcPolicy:
    def __init__(self, pauses: Histogram, full_every_s: float) -> None:
        self.pauses = pauses
        self.full_every_s = full_every_s
        self._started: float | None = None
        self._generation = "0"
        self._last_full = time.monotonic()

    def install(self) -> None:
        gc.callbacks.append(self._observe)

    def _observe(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            self._generation = str(info["generation"])
        elif self._started is not None:
            self.pauses.labels(self._generation).observe(time.perf_counter() - self._started)
            self._started = None

    def after_batch(self) -> None:
        """Freeze what is alive now; now and then, one full collection first."""
        if self.full_every_s <= 0:
            return
        if time.monotonic() - self._last_full >= self.full_every_s:
            self._last_full = time.monotonic()
            gc.unfreeze()
            gc.collect()
        gc.freeze()
