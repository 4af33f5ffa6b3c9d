"""The fence: the only module that touches private names of faust-streaming,
aiokafka or mode-streaming. Everything else in nudge uses their public APIs.

Why it exists: faust-streaming 0.15's consumer lost or reordered events across
rebalances and crashes here, and its per-message machinery capped throughput.
The fixes below override private methods and read private attributes; each
such name is declared in `PRIVATE_NAMES` with the upstream issue it works
around, tests/unit/test_faust_internals.py checks that every declared name
still exists with the expected signature (and that no module uses an
undeclared one), and the worker refuses to start on library versions other
than `TESTED_WITH` (`check_versions`). An upgrade therefore fails in CI, not
in production, and must re-prove the kill -9 and scale-out tests.

What the transport (`nudgekafka://`, registered through Faust's supported
`faust.transports` entry point in pyproject.toml) fixes:

* Its fetch loop marks a message "read" after handing it to the streams even
  when a rebalance ran while the hand-off waited (a full stream buffer, or
  flow suspended). When that happens after the partition was sought back to
  its committed offset, the read offset jumps ahead of the seek and the
  re-fetched messages below it are dropped as "already read" (cf.
  faust-streaming/faust#221, #236).
* A message whose hand-off finished after the rebalance cleared the stream
  buffers reaches the agent anyway: out of order, or for a partition this
  worker no longer owns (a zombie write to the new owner's changelog).
* `_new_offset` commits the first run of consecutive acked offsets without
  checking that it starts at the committed offset: with offset C not yet
  acked and C+1.. acked, it commits past C (faust-streaming/faust#606). It
  also files the message that revealed a gap as acked before it is processed.
* aiokafka's `seek_to_committed` does not seek a partition whose committed
  offset is 0 or missing (aio-libs/aiokafka#1003), so after a rebalance in a
  group's first seconds a partition resumed mid-log.
* Faust clears every stream buffer when it resumes flow after a rebalance's
  seek: messages handed over in between vanish (`resume_flow` below).
* Faust's `Consumer.seek` calls aiokafka from the event loop's thread while
  aiokafka runs on the consumer thread; seeks here go through that thread.

Here, for the input topics (those with acks): every assignment seeks each
input partition explicitly (to its committed offset, or to the beginning),
and the next expected offset of each partition is tracked exactly from
there; every rebalance step bumps an epoch, and records a step interrupted
are fetched again; the agent folds a partition's messages only in offset
order, with no holes (`Consumer.admit`), whatever a rebalance left in the
stream buffer; a jump in offsets is fetched again before it is believed;
and the committed offset only ever advances through a contiguous run of
acked offsets (or of offsets Kafka never returned: compaction, transaction
markers) starting at the committed one.

The loop also calls the stream callback directly instead of Faust's
`wait_first(callback(message), suspend_flow.wait())`, which spawns two tasks
and an `asyncio.wait` per message (robinhood/faust#563: a few hundred
messages/s per worker): a bare agent read about 4.6x faster.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from faust.serializers import codecs
from faust.transport.drivers import aiokafka as _aiokafka
from faust.types import TP

from nudge.errors import ConfigError

__all__ = [
    "PRIVATE_NAMES",
    "SCHEME",
    "TESTED_WITH",
    "Consumer",
    "PrivateName",
    "Transport",
    "apply_to_store",
    "check_versions",
    "next_commit",
    "register_codec",
]

SCHEME = "nudgekafka"
_YIELD_EVERY = 1000
_BUFFER_FULL_POLL_S = 0.005
_REFETCH_AGAIN_S = 5.0

# The exact versions this module was written and tested against (pinned in
# pyproject.toml too). Any other version: re-run the crash and scale-out
# tests, then update both.
TESTED_WITH: dict[str, str] = {"faust-streaming": "0.15.3", "aiokafka": "0.14.0", "mode-streaming": "0.7.1"}


def check_versions(installed: dict[str, str] | None = None) -> None:
    """Refuse, in one line, library versions this module was not tested with."""
    for package, wanted in TESTED_WITH.items():
        have = (installed or {}).get(package) or importlib.metadata.version(package)
        if have != wanted:
            raise ConfigError(
                f"{package} {have} is installed, but the nudge worker is tested with {package}=={wanted} only "
                f"(streams/faust_internals.py relies on its internals): install {package}=={wanted}"
            )


@dataclass(frozen=True, slots=True)
class PrivateName:
    """One private name of a library that this module relies on.

    `owner` is "module:Class"; `name` the attribute; `params` the parameter
    names of a method (None for a data attribute, which the test looks up on
    a live consumer); `why` names the upstream issue it works around.
    """

    owner: str
    name: str
    params: tuple[str, ...] | None
    why: str


_CONSUMER = "faust.transport.consumer:Consumer"
_AIOKAFKA_CONSUMER = "faust.transport.drivers.aiokafka:Consumer"
_FETCH_LOOP = "fetch loop replaced (faust-streaming/faust#221, #236; robinhood/faust#563)"
_COMMIT_RULE = "commit rule replaced (faust-streaming/faust#606)"
_SEEK = "explicit seek of every input partition (aio-libs/aiokafka#1003)"

PRIVATE_NAMES: tuple[PrivateName, ...] = (
    PrivateName(_CONSUMER, "_drain_messages", ("self", "fetcher"), _FETCH_LOOP),
    PrivateName(_CONSUMER, "_wait_next_records", ("self", "timeout"), _FETCH_LOOP),
    PrivateName(_AIOKAFKA_CONSUMER, "_to_message", ("self", "tp", "record"), _FETCH_LOOP),
    PrivateName(_CONSUMER, "_get_active_partitions", ("self",), _FETCH_LOOP),
    PrivateName(_CONSUMER, "_active_partitions", None, _FETCH_LOOP),
    PrivateName(_CONSUMER, "_buffered_partitions", None, _FETCH_LOOP),
    PrivateName(_CONSUMER, "_paused_partitions", None, "offsets report"),
    PrivateName(_CONSUMER, "_read_offset", None, _SEEK),
    PrivateName(_CONSUMER, "_commit_every", None, _FETCH_LOOP),
    PrivateName(_CONSUMER, "_n_acked", None, _FETCH_LOOP),
    PrivateName("mode.services:Service", "_stopped", None, _FETCH_LOOP),
    PrivateName(_CONSUMER, "_new_offset", ("self", "tp"), _COMMIT_RULE),
    PrivateName(_CONSUMER, "_committed_offset", None, _COMMIT_RULE),
    PrivateName(_CONSUMER, "_acked", None, _COMMIT_RULE),
    PrivateName(_CONSUMER, "_acked_index", None, _COMMIT_RULE),
    # Faust's documented way to write a codec: subclass Codec, define these.
    PrivateName("faust.serializers.codecs:Codec", "_dumps", ("self", "s"), "custom codec (Faust docs)"),
    PrivateName("faust.serializers.codecs:Codec", "_loads", ("self", "s"), "custom codec (Faust docs)"),
)


class _JsonStateCodec(codecs.Codec):
    """Table values: a state object with `to_json()`, read back by `load`."""

    def __init__(self, load: Any) -> None:
        super().__init__()
        self._load = load

    def _dumps(self, obj: Any) -> bytes:
        return obj.to_json()  # type: ignore[no-any-return]

    def _loads(self, s: bytes) -> Any:
        return self._load(s)


def register_codec(name: str, load: Any) -> None:
    """Register a table value codec: `obj.to_json()` out, `load(bytes)` in."""
    codecs.register(name, _JsonStateCodec(load))


@dataclass(frozen=True, slots=True)
class _ChangelogMessage:
    topic: str
    partition: int
    offset: int
    key: bytes
    value: bytes

    @property
    def tp(self) -> TP:
        return TP(self.topic, self.partition)


@dataclass(frozen=True, slots=True)
class _ChangelogEvent:
    key: bytes
    value: Any
    message: _ChangelogMessage


def apply_to_store(store: Any, topic: str, entries: Sequence[tuple[bytes, Any, bytes, int, int]]) -> None:
    """Put changelog entries that Kafka acknowledged into a table's local store.

    Each entry is (key, value object, value bytes, partition, offset). This
    goes through the store's public `apply_changelog_batch`, the path
    changelog recovery takes, so the key is filed under its partition and a
    RocksDB store records the persisted offsets. The stores read only
    `event.key`, `event.value` (memory store: kept as the object) and
    `event.message` (topic, partition, offset, key, value bytes) of each
    event, which is what these duck-typed events carry.
    """
    events = [
        _ChangelogEvent(key, obj, _ChangelogMessage(topic, partition, offset, key, raw))
        for key, obj, raw, partition, offset in entries
    ]
    store.apply_changelog_batch(events, to_key=_identity, to_value=_identity)


def _identity(x: Any) -> Any:
    return x


def next_commit(start: int, acked: list[int], gaps: list[tuple[int, int]]) -> int:
    """The offset to commit: the end of the contiguous run from `start`.

    `acked` must be sorted; `gaps` are inclusive (first, last) ranges of
    offsets Kafka never returned, sorted by first offset. Returns `start`
    when nothing past it can be committed.
    """
    expected = start
    i = g = 0
    while True:
        if i < len(acked) and acked[i] <= expected:
            if acked[i] == expected:
                expected += 1
            i += 1
        elif g < len(gaps) and gaps[g][0] <= expected:
            expected = max(expected, gaps[g][1] + 1)
            g += 1
        else:
            return expected


class Consumer(_aiokafka.Consumer):
    """aiokafka consumer with a rebalance-safe fetch loop (see module doc)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._epoch = 0
        self._expect: dict[TP, int] = {}
        self._start: dict[TP, int] = {}
        self._gaps: dict[TP, list[tuple[int, int]]] = {}
        self._probed: dict[TP, tuple[int, int]] = {}
        # The offset the agent folds next, per input partition (see `admit`),
        # and the partitions it asked to fetch again from there.
        self._fold_next: dict[TP, int] = {}
        self._refetch: dict[TP, int] = {}
        self._refetched: dict[TP, tuple[int, float]] = {}
        self._pending_seeks: set[asyncio.Future[None]] = set()

    # -- what the agent asks ------------------------------------------------

    def admit(self, message: Any) -> bool:
        """May the agent fold this message now? Only if it is the next offset of
        its partition (or the first after offsets Kafka does not have).

        The last line of defence for order: whatever a rebalance leaves in the
        stream buffer (a message handed over across it, a partition sought
        back or given away), the agent folds each partition's messages exactly
        once and in offset order. A message past a hole is refused and the
        partition fetched again from the hole (`refetch`). A refused message
        is marked acked without recording its offset, so no commit passes it
        and a rebalance's wait for unacked messages does not wait for it.
        """
        tp = message.tp
        offset = message.offset
        expected = self._fold_next.get(tp)
        if expected is None or offset < expected:
            message.acked = True
            return False  # not ours (yet), or folded already
        if offset > expected and not any(
            first <= expected and offset - 1 <= last for first, last in self._gaps.get(tp, ())
        ):
            self._refetch.setdefault(tp, expected)
            message.acked = True
            return False
        self._fold_next[tp] = offset + 1
        return True

    async def refetch(self) -> None:
        """Fetch again every partition `admit` found a hole in."""
        requests, self._refetch = self._refetch, {}
        now = time.monotonic()
        for tp, offset in requests.items():
            if self._fold_next.get(tp) != offset:
                continue  # a seek since then put it elsewhere
            last = self._refetched.get(tp)
            if last is not None and last[0] == offset and now - last[1] < _REFETCH_AGAIN_S:
                continue  # asked already: the buffer still holds what came before
            self._refetched[tp] = (offset, now)
            self.log.info("re-fetching %s from %d (the stream buffer skipped offsets)", tp, offset)
            self._expect[tp] = offset
            self._probed.pop(tp, None)
            await self._seek_back(tp, offset)

    def offsets_report(self) -> dict[str, dict[str, Any]]:
        """Per input partition: where it stands (served on /offsets; for operators)."""
        active = self._active_partitions or set()
        report = {}
        for tp in sorted(self.assignment()):
            if not self.app.topics.acks_enabled_for(tp.topic):
                continue
            committed = self._committed_offset.get(tp)  # Faust files 0 as None
            pending = [o for o in self._acked.get(tp) or () if committed is None or o >= committed]
            report[f"{tp.topic}[{tp.partition}]"] = {
                "committed": committed,
                "next_expected": self._expect.get(tp),
                "acked_pending": len(pending),
                "lowest_acked_pending": min(pending) if pending else None,
                "fetching": tp in active,
                "buffer_full": tp in self._buffered_partitions,
                "paused": tp in self._paused_partitions,
                "gaps": self._gaps.get(tp, []),
            }
        return report

    def lag(self) -> dict[tuple[str, int], int]:
        """Per input partition this worker owns: messages in the log it has not folded yet.

        The log end is Faust's public `highwater` (known once a fetch answered);
        the position is the next offset this consumer expects, exact from the
        assignment's seek on, so a restart does not report the whole log.
        """
        lag: dict[tuple[str, int], int] = {}
        for tp in self.assignment():
            if not self.app.topics.acks_enabled_for(tp.topic):
                continue
            highwater, expected = self.highwater(tp), self._expect.get(tp)
            if highwater is not None and expected is not None:
                lag[(tp.topic, tp.partition)] = max(0, highwater - expected)
        return lag

    # -- rebalance bookkeeping ----------------------------------------------

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        self._epoch += 1
        self._forget(revoked)
        await super().on_partitions_revoked(revoked)
        # Acks recorded while Faust drained the streams (it forgets the
        # partitions before draining) must not count for a later assignment.
        self._forget(revoked)
        self._epoch += 1

    def _forget(self, tps: Iterable[TP]) -> None:
        """Drop the bookkeeping of partitions being revoked; until the next
        assignment's seek, their records are not handed over."""
        for tp in tps:
            for bookkeeping in (
                self._expect,
                self._start,
                self._gaps,
                self._probed,
                self._fold_next,
                self._refetch,
                self._refetched,
                self._acked,
                self._acked_index,
            ):
                bookkeeping.pop(tp, None)

    async def on_partitions_assigned(self, assigned: set[TP], generation_id: int = 0) -> None:
        self._epoch += 1
        await super().on_partitions_assigned(assigned, generation_id)

    def resume_flow(self) -> None:
        """Faust resumes flow right after `flow_control.resume()`, which clears
        every stream buffer: messages handed over since the last seek and not
        yet taken by the agent are gone. Fetch each such partition again from
        the offset the agent folds next."""
        for tp, fold_next in self._fold_next.items():
            if self._expect.get(tp, fold_next) != fold_next:
                self._expect[tp] = fold_next
                self._probed.pop(tp, None)
                self.log.info("re-fetching %s from %d (flow resumed, stream buffer cleared)", tp, fold_next)
                self._pending_seeks.add(asyncio.ensure_future(self._seek_back(tp, fold_next)))
        self._pending_seeks = {f for f in self._pending_seeks if not f.done()}
        super().resume_flow()

    async def perform_seek(self) -> None:
        """Faust's seek to the committed offsets, then an explicit seek of every
        input partition to its committed offset or, without one, to the
        beginning (aiokafka leaves those wherever they were), so that each
        input partition's position is known."""
        self._epoch += 1
        await super().perform_seek()
        acks_enabled_for = self.app.topics.acks_enabled_for
        positions: dict[TP, int] = {}
        unknown: list[TP] = []
        for tp in self.assignment():
            if acks_enabled_for(tp.topic):
                offset = self._read_offset.get(tp)
                if offset is None:
                    unknown.append(tp)
                else:
                    positions[tp] = offset
        if unknown:
            earliest = await self.earliest_offsets(*unknown)
            positions.update({tp: earliest.get(tp) or 0 for tp in unknown})
        for tp, offset in positions.items():
            self._expect[tp] = self._start[tp] = self._fold_next[tp] = offset
            self._refetch.pop(tp, None)
        self._epoch += 1
        # Records fetched while this ran were not handed over (no expected
        # offset yet): put every input partition back where it starts.
        await self.seek_wait(positions)

    async def _seek_back(self, tp: TP, offset: int) -> None:
        """Position `tp` at `offset` without starting a new epoch.

        Through the consumer thread (`seek_wait`): Faust's `seek` calls
        aiokafka from this thread, which can leave its fetcher asleep."""
        try:
            await self.seek_wait({tp: offset})
        except Exception as exc:  # no longer assigned: the rebalance's own seek decides
            self.log.info("seek %s to %d skipped: %r", tp, offset, exc)

    # -- commits --------------------------------------------------------------

    def _new_offset(self, tp: TP) -> int | None:
        acked = self._acked[tp]
        if not acked:
            return None
        start = self._committed_offset[tp]
        if start is None:
            start = self._start.get(tp)
            if start is None:
                return None
        acked.sort()
        below = 0
        while below < len(acked) and acked[below] < start:
            below += 1
        if below:
            self._acked_index[tp].difference_update(acked[:below])
            del acked[:below]
        gaps = self._gaps.get(tp, [])
        gaps[:] = [gap for gap in gaps if gap[1] >= start]
        offset = next_commit(start, acked, gaps)
        return offset if offset > start else None

    # -- the fetch loop -------------------------------------------------------

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - exercised by integration tests
        app = self.app
        callback = self.callback
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        read_offset = self._read_offset
        expect = self._expect
        acks_enabled_for = app.topics.acks_enabled_for
        to_message = self._to_message
        buffered = self._buffered_partitions
        since_yield = 0
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                if self.flow_active and not self._get_active_partitions():
                    # Every partition's stream buffer is full: Faust would
                    # sleep a whole second here while the agent drains it.
                    await asyncio.sleep(_BUFFER_FULL_POLL_S)
                    continue
                records, active = await self._wait_next_records(1.0)
                epoch = self._epoch
                await asyncio.sleep(0)
                if not records or self.should_stop:
                    continue
                generation = app.consumer_generation_id
                sought_back: set[TP] = set()
                # Partitions whose records this batch did not hand over: fetch
                # them again (a tail skipped here would otherwise never come).
                rewind: dict[TP, int] = {}
                for tp, record in self.scheduler.iterate(records):
                    if tp in sought_back:
                        continue
                    offset = record.offset
                    acked_topic = acks_enabled_for(tp.topic)
                    wanted = (
                        self.flow_active
                        and generation == app.consumer_generation_id
                        and (active is None or tp in active or tp in buffered)
                    )
                    if acked_topic:
                        if not wanted or epoch != self._epoch:
                            # A rebalance step began, or the partition was
                            # paused: fetch these again.
                            rewind.setdefault(tp, offset)
                            continue
                        expected = expect.get(tp)
                        if expected is None or offset < expected:
                            # before the assignment's seek, or already handed over
                            continue
                        elif offset > expected:
                            if self._probed.get(tp) != (expected, offset):
                                # Offsets expected..offset-1 never came: fetch
                                # from `expected` again, and believe the jump
                                # only if Kafka answers the same way.
                                self._probed[tp] = (expected, offset)
                                sought_back.add(tp)
                                self.log.info("%s jumped from %d to %d: fetching again", tp, expected, offset)
                                await self._seek_back(tp, expected)
                                continue
                            # Kafka has no records there (compaction,
                            # transaction markers): commits may pass over them.
                            self._gaps.setdefault(tp, []).append((expected, offset - 1))
                            self.log.info("%s has no records %d..%d: commits pass over them", tp, expected, offset - 1)
                    else:
                        r_offset = read_offset[tp]
                        if not wanted or (r_offset is not None and offset < r_offset):
                            continue
                    commit_every = self._commit_every
                    if commit_every is not None and self._n_acked >= commit_every:
                        self._n_acked = 0
                        await self.commit()
                    message = to_message(tp, record)
                    await callback(message)
                    if acked_topic:
                        if epoch != self._epoch:
                            # The hand-off waited through a rebalance step: the
                            # buffer it went to may have been cleared and the
                            # partition sought back or given away.
                            rewind.setdefault(tp, offset)
                            continue
                        expect[tp] = offset + 1
                    else:
                        read_offset[tp] = offset  # input partitions keep `expect` instead
                    since_yield += 1
                    if since_yield >= _YIELD_EVERY:
                        since_yield = 0
                        await asyncio.sleep(0)
                for tp, first_skipped in rewind.items():
                    expected = expect.get(tp)
                    if expected is not None:  # else the assignment's own seek comes
                        target = min(expected, first_skipped)
                        self.log.info("re-fetching %s from %d (a rebalance step interrupted its batch)", tp, target)
                        await self._seek_back(tp, target)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise


class Transport(_aiokafka.Transport):
    Consumer = Consumer
