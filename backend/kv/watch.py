"""Provides watches: replay from history, live events per revision, filters and progress.

How responses are made, and what bounds them:

* Nothing is built for a client that is not reading. Each stream has a byte budget for the
  responses it has queued and the client has not taken (``STREAM_BUDGET``), and all the watch
  streams of one connection share another (``CONNECTION_BUDGET``). Once either is full, the
  stream's watchers stop getting responses built: they become "victims", as etcd calls them,
  and remember the first revision they have not been sent. When the client reads, they
  catch up from the history, in chunks, and then follow live again. A client that reads
  nothing costs the budget, one response past it, and one response per stream waiting in
  the wire's flow control, whatever it asked for. Its next requests are not read either
  until the budget has room again, so they cannot pile up answers.
* Replays (a watch from an old revision, or a victim catching up) are built the same way,
  one chunk of at most ``REPLAY_CHUNK_REVISIONS`` revisions or about ``CHUNK_BYTES`` of events
  at a time, and only while the budget has room.
* All this work runs in one task, the hub's pump, in slices of ``SLICE_SECONDS``, yielding to
  the event loop between them: a 10 MB replay cannot hold the loop, and other clients keep
  their latency.
* A write marks the streams and watchers it concerns. When they are few and the pump is
  idle, their responses are built at once (``AT_ONCE_WATCHERS``); otherwise the pump builds
  them on its turn, and after a full slice it rests as long (``REST_RATIO``), so requests
  keep flowing. Revisions that became durable meanwhile go out together, one response per
  watcher with all their events, as etcd sends one response per batch of revisions: a busy
  store sends fewer, larger responses. Watchers of the same key, range and options share
  one serialization, and only their watch IDs differ.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Protocol

from aetcd import rpc

from clustertui.backend.kv.mvcc import FROM_KEY, Batch, KeySpace

log = logging.getLogger("clusterd.kv")

NOPUT = rpc.WatchCreateRequest.NOPUT
NODELETE = rpc.WatchCreateRequest.NODELETE
REPLAY_CHUNK_REVISIONS = 1000
"""Revisions per replay response at most, like etcd's watch batch limit."""
CHUNK_BYTES = 64 * 1024
"""A replay response ends after the revision that takes its events past this many bytes."""
STREAM_BUDGET = 1024 * 1024
"""Bytes of responses a watch stream may have waiting for its client before its watchers
stop getting responses built (and catch up from history once the client reads)."""
CONNECTION_BUDGET = 4 * 1024 * 1024
"""The same, for all the watch streams of one client connection together."""
SLICE_SECONDS = 0.0005
"""How long the pump builds responses before it lets the event loop run other work."""
AT_ONCE_WATCHERS = 128
"""Revisions that concern at most this many watchers, while the pump has nothing waiting,
have their responses built at once (one slice at most) rather than on the pump's turn."""
AT_ONCE_SECONDS = 0.002
"""The longest such an at-once slice runs."""
REST_RATIO = 1.0
"""After a full slice, the pump rests this many times as long as the slice took: under
load it takes at most half the loop, and the rest goes to requests."""

Shape = tuple[bytes, bytes, bool, bool, bool]

_clock = time.thread_time
"""Slices are measured in the loop thread's CPU time: a store preempted on a busy machine
does not take the time it waited for work it did, and rest for it."""


class Source(Protocol):
    """What a watch stream needs from the store."""

    space: KeySpace
    hub: WatchHub

    @property
    def durable_revision(self) -> int: ...

    def header(self, revision: int) -> rpc.ResponseHeader: ...


class Watcher:
    """One watch on one stream."""

    __slots__ = (
        "end",
        "id",
        "key",
        "lagging",
        "next_revision",
        "no_delete",
        "no_put",
        "prev_kv",
        "progress",
        "shape",
        "stream",
    )

    def __init__(self, stream: WatchStream, watch_id: int, request: rpc.WatchCreateRequest) -> None:
        self.stream = stream
        self.id = watch_id
        self.key: bytes = request.key
        self.end: bytes = request.range_end
        self.prev_kv: bool = request.prev_kv
        filters = set(request.filters)
        self.no_put = NOPUT in filters
        self.no_delete = NODELETE in filters
        self.progress = request.progress_notify
        self.next_revision = 0
        """The first revision this watcher may not have been sent yet."""
        self.lagging = False
        """Set while it catches up from history (a replay, or a victim of a full budget)."""
        self.shape: Shape = (self.key, self.end, self.prev_kv, self.no_put, self.no_delete)
        """What decides which events it gets: watchers of one shape get the same ones."""

    def matches(self, key: bytes) -> bool:
        end = self.end
        if not end:
            return key == self.key
        if end == FROM_KEY:
            return key >= self.key
        return self.key <= key < end

    def select(self, batch: Batch) -> list[rpc.Event]:
        """This watcher's events of one revision, after its range and filters."""
        events = batch.events(self.prev_kv)
        chosen = []
        for (rec, _prev), event in zip(batch.changes, events, strict=True):
            if rec.version == 0:
                if self.no_delete:
                    continue
            elif self.no_put:
                continue
            if self.matches(rec.key):
                chosen.append(event)
        return chosen


_ID_FIELDS: dict[int, bytes] = {}


def _watch_id_field(watch_id: int) -> bytes:
    """WatchResponse's watch_id field alone, serialized (empty for 0, as protobuf sends it)."""
    field = _ID_FIELDS.get(watch_id)
    if field is None:
        field = rpc.WatchResponse(watch_id=watch_id).SerializeToString()
        if len(_ID_FIELDS) < 65536:
            _ID_FIELDS[watch_id] = field
    return field


class Budget:
    """Bytes of watch responses queued for one client connection and not yet taken."""

    __slots__ = ("streams", "used")

    def __init__(self) -> None:
        self.used = 0
        self.streams: set[WatchStream] = set()


class _Slice:
    """What one slice of the pump has built, shared by every stream it serves."""

    __slots__ = ("bodies", "durable", "heads", "source")

    def __init__(self, source: Source) -> None:
        self.source = source
        self.durable = source.durable_revision
        # (shape, first revision) -> (response header revision, events serialized, next revision)
        self.bodies: dict[tuple[Shape, int], tuple[int, bytes, int]] = {}
        self.heads: dict[int, bytes] = {}

    def head(self, revision: int) -> bytes:
        head = self.heads.get(revision)
        if head is None:
            header = self.source.header(revision)
            head = self.heads[revision] = rpc.WatchResponse(header=header).SerializeToString()
        return head


class WatchHub:
    """Every live watcher, indexed by key and by stream, and the pump that feeds them."""

    def __init__(self) -> None:
        self.by_key: dict[bytes, dict[WatchStream, set[Watcher]]] = {}
        self.ranges: dict[WatchStream, set[Watcher]] = {}
        self.ready: dict[WatchStream, None] = {}
        """Streams with responses to build and room for them, in turn order."""
        self._pump: asyncio.Future[None] | None = None

    def add(self, watcher: Watcher) -> None:
        if watcher.end:
            group = self.ranges.setdefault(watcher.stream, set())
        else:
            group = self.by_key.setdefault(watcher.key, {}).setdefault(watcher.stream, set())
        group.add(watcher)

    def remove(self, watcher: Watcher) -> None:
        stream = watcher.stream
        if watcher.end:
            group = self.ranges.get(stream)
            if group is not None:
                group.discard(watcher)
                if not group:
                    del self.ranges[stream]
            return
        groups = self.by_key.get(watcher.key)
        if groups is None:
            return
        group = groups.get(stream)
        if group is not None:
            group.discard(watcher)
            if not group:
                del groups[stream]
                if not groups:
                    del self.by_key[watcher.key]

    def __len__(self) -> int:
        return sum(len(group) for group in self.ranges.values()) + sum(
            len(group) for groups in self.by_key.values() for group in groups.values()
        )

    def publish(self, batches: list[Batch], header: Callable[[int], rpc.ResponseHeader]) -> None:
        """Newly durable revisions: mark the watchers they concern, for the pump to serve."""
        if not batches or (not self.ranges and not self.by_key):
            return
        by_key = self.by_key
        idle = not self.ready
        concerned = 0
        for batch in batches:
            for rec, _prev in batch.changes:
                groups = by_key.get(rec.key)
                if groups:
                    for stream, watchers in groups.items():
                        stream.concerned(batch, watchers)
                        concerned += len(watchers)
            for stream, watchers in self.ranges.items():
                stream.concerned(batch, watchers)
                concerned += len(watchers)
        if idle and self.ready and concerned <= AT_ONCE_WATCHERS:
            # A few watchers and nothing else waiting: served now, a loop pass sooner.
            self._slice(AT_ONCE_SECONDS)

    def schedule(self, stream: WatchStream) -> None:
        """Have the pump build ``stream``'s responses."""
        if stream in self.ready:
            return
        self.ready[stream] = None
        if self._pump is None or self._pump.done():
            self._pump = asyncio.ensure_future(self._run())

    def unschedule(self, stream: WatchStream) -> None:
        self.ready.pop(stream, None)

    def _slice(self, seconds: float = SLICE_SECONDS) -> float:
        """Build responses for the ready streams, in turn, for one slice; its length."""
        ready = self.ready
        began = _clock()
        deadline = began + seconds
        shared: _Slice | None = None
        served = 0
        while ready:
            served += 1
            stream = next(iter(ready))
            del ready[stream]
            if shared is None or shared.source is not stream.source:
                shared = _Slice(stream.source)
            try:
                stream.produce(shared, deadline)
            except Exception:
                log.exception("building watch responses failed")
                stream.send(None)
                continue
            if stream.has_work() and stream.room():
                ready[stream] = None  # its next turn comes after the others'
            elif served & 7:
                continue  # a stream done: the clock is read every eighth one
            if _clock() >= deadline:
                break
        return _clock() - began

    async def _run(self) -> None:
        """Serve the ready streams until none is left (``schedule`` starts it again)."""
        await asyncio.sleep(0)
        while self.ready:
            spent = self._slice()
            if self.ready:
                # More than a slice of work: let requests and writes through for as long
                # again. What becomes durable meanwhile goes out with what waits now, in
                # the same responses, so a busy store sends fewer, larger ones.
                await asyncio.sleep(spent * REST_RATIO)


class WatchStream:
    """One client's Watch stream: its create, cancel and progress requests and its watchers."""

    def __init__(self, source: Source, budget: Budget | None = None) -> None:
        self.source = source
        self.watchers: dict[int, Watcher] = {}
        self.budget = budget if budget is not None else Budget()
        self.budget.streams.add(self)
        self.outbox: deque[bytes] = deque()
        self.queued = 0
        """Bytes of this stream's responses waiting for its client, in ``outbox`` or being
        written; they count against the stream's and its connection's budgets."""
        self.live: list[Batch] = []
        """Durable revisions that concern watchers in ``touched``, oldest first."""
        self.touched: set[Watcher] = set()
        """Watchers in step with the store that ``live`` may have events for."""
        self.lagging: set[Watcher] = set()
        """Watchers catching up from history (replays and victims)."""
        self.progress_wanted = False
        self.ending = False
        self.stopped = False
        """Set when the store shuts down: the stream then ends with UNAVAILABLE, as etcd's
        do, not OK, so a client can tell a shutdown from a clean end."""
        self.closed = False
        self._next_id = 0
        self._output: asyncio.Future[None] | None = None
        self._room: asyncio.Future[None] | None = None
        self.deliver: Callable[[bytes], bool] | None = None
        """Sends a response straight to the client if it can go now, else says False."""

    # -- budget and output ----------------------------------------------------------------

    def room(self) -> bool:
        return self.queued < STREAM_BUDGET and self.budget.used < CONNECTION_BUDGET

    def has_work(self) -> bool:
        return bool(self.touched or self.lagging)

    def send(self, response: rpc.WatchResponse | bytes | None) -> None:
        """Queue a response (serialized or not); ``None`` ends the stream.

        With nothing queued before it, a response goes straight out through ``deliver``:
        a write then costs no queue hand-off and no task switch. Once the client falls
        behind, responses queue, in order, and the stream's task sends them as it can.
        """
        if response is None:
            self.ending = True
            self._wake_output()
            return
        if self.closed:
            return
        data = response if isinstance(response, bytes) else response.SerializeToString()
        deliver = self.deliver
        if not self.outbox and deliver is not None and deliver(data):
            return
        self.outbox.append(data)
        size = len(data)
        self.queued += size
        self.budget.used += size
        self._wake_output()

    def shut_down(self) -> None:
        """The store is stopping: send what is queued, then end with UNAVAILABLE."""
        self.stopped = True
        self.send(None)

    def _wake_output(self) -> None:
        waiter = self._output
        if waiter is not None:
            self._output = None
            if not waiter.done():
                waiter.set_result(None)

    async def next_output(self) -> bytes | None:
        """The next queued response to write (it stays counted until ``written``); None at
        the end of the stream."""
        while not self.outbox:
            if self.closed or (self.ending and not self.has_work()):
                return None
            self._output = asyncio.get_running_loop().create_future()
            await self._output
        return self.outbox[0]

    def written(self) -> None:
        """The response ``next_output`` gave has been taken by the wire."""
        size = len(self.outbox.popleft())
        budget = self.budget
        stream_full = self.queued >= STREAM_BUDGET
        budget_full = budget.used >= CONNECTION_BUDGET
        self.queued -= size
        budget.used -= size
        if budget_full and budget.used < CONNECTION_BUDGET:
            for stream in list(budget.streams):
                stream.resume()
        elif stream_full and self.queued < STREAM_BUDGET:
            self.resume()

    def resume(self) -> None:
        """Room again: build what waits, and read the client's next request."""
        if not self.room():
            return
        if self.has_work() and not self.closed:
            self.source.hub.schedule(self)
        waiter = self._room
        if waiter is not None:
            self._room = None
            if not waiter.done():
                waiter.set_result(None)

    async def wait_for_room(self) -> None:
        """Returns once the budget has room (requests are not read while it is full)."""
        while not self.room() and not self.closed:
            self._room = asyncio.get_running_loop().create_future()
            await self._room

    # -- requests -------------------------------------------------------------------------

    def handle(self, request: rpc.WatchRequest) -> None:
        which = request.WhichOneof("request_union")
        if which == "create_request":
            self.create(request.create_request)
        elif which == "cancel_request":
            self.cancel(request.cancel_request.watch_id)
        elif which == "progress_request":
            self.progress_all()

    def create(self, request: rpc.WatchCreateRequest) -> None:
        source = self.source
        watch_id = request.watch_id
        if watch_id == 0:
            while self._next_id in self.watchers:
                self._next_id += 1
            watch_id = self._next_id
            self._next_id += 1
        elif watch_id in self.watchers:
            self.send(
                rpc.WatchResponse(
                    header=source.header(source.durable_revision),
                    watch_id=-1,
                    created=True,
                    canceled=True,
                    cancel_reason="mvcc: duplicate watch ID provided on the WatchStream",
                )
            )
            return
        watcher = Watcher(self, watch_id, request)
        durable = source.durable_revision
        self.send(rpc.WatchResponse(header=source.header(durable), watch_id=watch_id, created=True))
        start = request.start_revision
        space = source.space
        if 0 < start < space.compacted:
            self.send(
                rpc.WatchResponse(
                    header=source.header(durable),
                    watch_id=watch_id,
                    canceled=True,
                    compact_revision=space.compacted,
                )
            )
            return
        self.watchers[watch_id] = watcher
        source.hub.add(watcher)
        if start <= 0 or start > durable:
            watcher.next_revision = max(start, durable + 1)
        else:
            # A replay: built by the pump, in chunks, as the client reads them.
            watcher.next_revision = start
            watcher.lagging = True
            self.lagging.add(watcher)
            if self.room():
                source.hub.schedule(self)

    def concerned(self, batch: Batch, watchers: set[Watcher]) -> None:
        """``batch`` (durable now) has changes for some of ``watchers``."""
        if self.closed:
            return
        if self.room():
            live = self.live
            if not live or live[-1] is not batch:
                live.append(batch)
            self.touched |= watchers
            self.source.hub.schedule(self)
        else:
            # The client is behind: these watchers stop here and catch up from history.
            first = self.live[0].revision if self.live else batch.revision
            self._demote(watchers, first)

    def _demote(self, watchers: Iterable[Watcher], first: int) -> None:
        """Make watchers victims: they replay from history from their next revision, or
        from ``first`` if that is later (nothing before ``first`` is still owed to them)."""
        lagging = self.lagging
        for watcher in watchers:
            if not watcher.lagging:
                watcher.lagging = True
                if watcher.next_revision < first:
                    watcher.next_revision = first
                lagging.add(watcher)

    # -- building responses ---------------------------------------------------------------

    def produce(self, shared: _Slice, deadline: float) -> None:
        """Build responses for the watchers that need them, while time and budget last."""
        if self.closed:
            return
        if self.touched:
            self._produce_live(shared, deadline)
        if self.lagging and self.room() and _clock() < deadline:
            self._produce_lagging(shared, deadline)
        if self.progress_wanted and not self.touched and not self.lagging:
            self.progress_wanted = False
            self._send_progress()
        if self.ending and not self.has_work():
            self._wake_output()

    def _produce_live(self, shared: _Slice, deadline: float) -> None:
        batches = self.live
        touched = self.touched
        self.live = []
        self.touched = set()
        if not batches:
            return
        durable = shared.durable
        first = batches[0].revision
        revisions = [batch.revision for batch in batches] if len(batches) > 1 else None
        bodies = shared.bodies
        watchers = self.watchers
        send = self.send
        count = 0
        pending = list(touched)
        for index, watcher in enumerate(pending):
            if watcher.lagging or watchers.get(watcher.id) is not watcher:
                continue
            count += 1
            if not self.room():
                self._demote(pending[index:], first)
                return
            if not count & 15 and _clock() >= deadline:
                # Out of time: the rest wait for the pump's next turn, with these batches.
                self.touched |= set(pending[index:])
                self.live = batches + self.live
                return
            start = watcher.next_revision
            key = (watcher.shape, start)
            built = bodies.get(key)
            if built is None:
                events: list[rpc.Event] = []
                revision = 0
                following = durable + 1
                skip = 0
                if revisions is not None and start > first:
                    skip = bisect.bisect_left(revisions, start)
                size = 0
                for batch in batches[skip:] if skip else batches:
                    chosen = watcher.select(batch)
                    if chosen:
                        events += chosen
                        revision = batch.revision
                        if len(batches) > 1:
                            for event in chosen:
                                size += event.ByteSize()
                            if size >= CHUNK_BYTES and batch is not batches[-1]:
                                # A response as large as a replay chunk: the rest of these
                                # revisions come from history.
                                following = revision + 1
                                break
                body = rpc.WatchResponse(events=events).SerializeToString() if events else b""
                built = bodies[key] = (revision, body, following)
            revision, body, following = built
            if following > start:  # (a watch from a future revision stays there)
                watcher.next_revision = following
            if body:
                send(shared.head(revision) + _watch_id_field(watcher.id) + body)
            if following <= durable:
                self._demote((watcher,), following)

    def _produce_lagging(self, shared: _Slice, deadline: float) -> None:
        source = self.source
        space = source.space
        durable = shared.durable
        bodies = shared.bodies
        lagging = self.lagging
        for watcher in list(lagging):
            if not self.room() or _clock() >= deadline:
                return
            if self.watchers.get(watcher.id) is not watcher:
                lagging.discard(watcher)
                continue
            start = watcher.next_revision
            if start < space.compacted:
                # The history it missed is gone: end it the way etcd ends such a watch.
                lagging.discard(watcher)
                self.watchers.pop(watcher.id)
                source.hub.remove(watcher)
                self.send(
                    rpc.WatchResponse(
                        header=source.header(durable),
                        watch_id=watcher.id,
                        canceled=True,
                        compact_revision=space.compacted,
                    )
                )
                continue
            key = (watcher.shape, -start)  # a replay chunk, unlike a live body from ``start``
            built = bodies.get(key)
            if built is None:
                built = bodies[key] = self._chunk(watcher, start, durable)
            revision, body, watcher.next_revision = built
            if body:
                self.send(shared.head(revision) + _watch_id_field(watcher.id) + body)
            if watcher.next_revision > durable:
                watcher.lagging = False
                lagging.discard(watcher)

    def _chunk(self, watcher: Watcher, start: int, durable: int) -> tuple[int, bytes, int]:
        """Events from ``start`` on, as many revisions as one response takes: (the response's
        header revision, its events serialized, the first revision after them)."""
        space = self.source.space
        log_ = space.log
        if not log_ or start > durable:
            return durable, b"", durable + 1
        base = log_[0].revision
        limit = min(durable, start + REPLAY_CHUNK_REVISIONS - 1)  # the most it may cover
        indices: Iterable[int]
        if watcher.end:
            first = max(0, start - base)
            indices = range(first, min(len(log_), first + REPLAY_CHUNK_REVISIONS))
        else:
            # One key: only the revisions that changed it, from its own history.
            history = space.index.get(watcher.key)
            revs = history.revs if history is not None else []
            low = bisect.bisect_left(revs, start)
            high = bisect.bisect_right(revs, limit, low)
            indices = [revision - base for revision in revs[low:high] if revision >= base]
        events: list[rpc.Event] = []
        size = 0
        covered = limit
        for index in indices:
            batch = log_[index]
            if batch.revision > limit:
                break
            chosen = watcher.select(batch)
            if chosen:
                events += chosen
                for event in chosen:
                    size += event.ByteSize()
                if size >= CHUNK_BYTES and batch.revision < limit:
                    covered = batch.revision
                    break
        if not events:
            return covered, b"", covered + 1
        return covered, rpc.WatchResponse(events=events).SerializeToString(), covered + 1

    # -- cancel, progress, close ----------------------------------------------------------

    def cancel(self, watch_id: int) -> None:
        watcher = self.watchers.pop(watch_id, None)
        if watcher is None:
            return
        self.source.hub.remove(watcher)
        self.lagging.discard(watcher)
        self.touched.discard(watcher)
        self.send(
            rpc.WatchResponse(
                header=self.source.header(self.source.durable_revision),
                watch_id=watch_id,
                canceled=True,
            )
        )

    def progress_all(self) -> None:
        """Answer a progress request: one empty response at the durable revision, once every
        watcher has been sent what came before it."""
        if self.touched or self.lagging:
            self.progress_wanted = True
            return
        self._send_progress()

    def _send_progress(self) -> None:
        self.send(
            rpc.WatchResponse(header=self.source.header(self.source.durable_revision), watch_id=-1)
        )

    def notify_progress(self) -> None:
        """The periodic progress notification, for watchers that asked for it and are in
        step with the store."""
        revision = self.source.durable_revision
        touched = self.touched
        for watcher in self.watchers.values():
            if watcher.progress and not watcher.lagging and watcher not in touched:
                self.send(
                    rpc.WatchResponse(header=self.source.header(revision), watch_id=watcher.id)
                )

    def close(self) -> None:
        hub = self.source.hub
        for watcher in self.watchers.values():
            hub.remove(watcher)
        self.watchers.clear()
        self.lagging.clear()
        self.touched.clear()
        self.live = []
        hub.unschedule(self)
        self.closed = True
        self.budget.used -= self.queued
        self.queued = 0
        self.outbox.clear()
        self.budget.streams.discard(self)
        self._wake_output()
        waiter = self._room
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        for stream in list(self.budget.streams):
            stream.resume()
