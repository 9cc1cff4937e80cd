"""Provides watches: replay from history, live events per revision, filters and progress."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from aetcd import rpc

from backend.kv.mvcc import FROM_KEY, Batch, KeySpace

NOPUT = rpc.WatchCreateRequest.NOPUT
NODELETE = rpc.WatchCreateRequest.NODELETE
REPLAY_CHUNK_REVISIONS = 1000
"""Revisions per replay response, like etcd's watch batch limit."""
MAX_QUEUED_RESPONSES = 1024
"""Responses a stream may have waiting for a slow client before its watchers fall back to
catching up from history, as etcd's "victim" watchers do; this bounds a stream's memory."""


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
        self.key = request.key
        self.end = request.range_end
        self.prev_kv = request.prev_kv
        filters = set(request.filters)
        self.no_put = NOPUT in filters
        self.no_delete = NODELETE in filters
        self.progress = request.progress_notify
        self.next_revision = 0
        """The first revision this watcher has not been sent yet."""
        self.lagging = False
        """Set while its stream is backed up; it then catches up from history."""
        self.shape = (self.key, self.end, self.prev_kv, self.no_put, self.no_delete)
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


class WatchHub:
    """Every live watcher, indexed so a write finds its single-key watchers in one lookup."""

    def __init__(self) -> None:
        self.by_key: dict[bytes, set[Watcher]] = {}
        self.ranges: set[Watcher] = set()

    def add(self, watcher: Watcher) -> None:
        if watcher.end:
            self.ranges.add(watcher)
        else:
            self.by_key.setdefault(watcher.key, set()).add(watcher)

    def remove(self, watcher: Watcher) -> None:
        if watcher.end:
            self.ranges.discard(watcher)
            return
        group = self.by_key.get(watcher.key)
        if group is not None:
            group.discard(watcher)
            if not group:
                del self.by_key[watcher.key]

    def __len__(self) -> int:
        return len(self.ranges) + sum(len(group) for group in self.by_key.values())

    def publish(self, batches: list[Batch], header: Callable[[int], rpc.ResponseHeader]) -> None:
        """Send each newly durable revision to the watchers it concerns, one response each."""
        if not self.ranges and not self.by_key:
            return
        for batch in batches:
            concerned: set[Watcher] = set()
            by_key = self.by_key
            for rec, _prev in batch.changes:
                group = by_key.get(rec.key)
                if group:
                    concerned.update(group)
            for watcher in self.ranges:
                concerned.add(watcher)
            revision = batch.revision
            # Watchers of the same key, range and options get the same events: each response
            # is serialized once, and each watcher's only adds its ID. Protobuf takes fields
            # concatenated, and header (1), watch_id (2), events (11) is their own order.
            head = b""
            bodies: dict[tuple[bytes, bytes, bool, bool, bool], bytes] = {}
            for watcher in concerned:
                if watcher.next_revision > revision or watcher.lagging:
                    continue
                stream = watcher.stream
                if stream.outbox.qsize() >= MAX_QUEUED_RESPONSES:
                    watcher.lagging = True
                    stream.lagging.add(watcher)
                    continue
                watcher.next_revision = revision + 1
                shape = watcher.shape
                body = bodies.get(shape)
                if body is None:
                    events = watcher.select(batch)
                    body = rpc.WatchResponse(events=events).SerializeToString() if events else b""
                    bodies[shape] = body
                if body:
                    if not head:
                        head = rpc.WatchResponse(header=header(revision)).SerializeToString()
                    stream.send(head + _watch_id_field(watcher.id) + body)


class WatchStream:
    """One client's Watch stream: its create, cancel and progress requests and its watchers."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.watchers: dict[int, Watcher] = {}
        self.outbox: asyncio.Queue[rpc.WatchResponse | bytes | None] = asyncio.Queue()
        self.lagging: set[Watcher] = set()
        self._next_id = 0
        self.deliver: Callable[[rpc.WatchResponse | bytes], bool] | None = None
        """Sends a response straight to the client if it can go now, else says False."""

    def send(self, response: rpc.WatchResponse | bytes | None) -> None:
        """Queue a response (serialized or not); ``None`` ends the stream.

        With nothing queued before it, a response goes straight out through ``deliver``:
        a write then costs no queue hand-off and no task switch. Once the client falls
        behind, responses queue, in order, and the stream's task sends them as it can.
        """
        deliver = self.deliver
        if (
            response is not None
            and deliver is not None
            and not self.outbox.qsize()
            and deliver(response)
        ):
            return
        self.outbox.put_nowait(response)

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
        if start <= 0 or start > durable:
            watcher.next_revision = max(start, durable + 1)
        else:
            self._replay(watcher, start, durable)
        source.hub.add(watcher)

    def _replay(self, watcher: Watcher, start: int, durable: int) -> None:
        """Send history from ``start`` to ``durable`` in chunks, then follow live."""
        events: list[rpc.Event] = []
        revisions = 0
        for batch in self.source.space.history_since(start):
            if batch.revision > durable:
                break
            events.extend(watcher.select(batch))
            revisions += 1
            if revisions == REPLAY_CHUNK_REVISIONS and batch.revision < durable:
                if events:
                    self._events(watcher, batch.revision, events)
                events = []
                revisions = 0
        if events:
            self._events(watcher, durable, events)
        watcher.next_revision = durable + 1

    def _events(self, watcher: Watcher, revision: int, events: list[rpc.Event]) -> None:
        self.send(
            rpc.WatchResponse(
                header=self.source.header(revision), watch_id=watcher.id, events=events
            )
        )

    def catch_up(self) -> None:
        """Once the client has read most of the backlog, replay what lagging watchers missed."""
        if self.outbox.qsize() > MAX_QUEUED_RESPONSES // 2:
            return
        source = self.source
        durable = source.durable_revision
        for watcher in list(self.lagging):
            self.lagging.discard(watcher)
            watcher.lagging = False
            if self.watchers.get(watcher.id) is not watcher:
                continue
            if watcher.next_revision < source.space.compacted:
                # The history it missed is gone: end it the way etcd ends such a watch.
                self.watchers.pop(watcher.id)
                source.hub.remove(watcher)
                self.send(
                    rpc.WatchResponse(
                        header=source.header(durable),
                        watch_id=watcher.id,
                        canceled=True,
                        compact_revision=source.space.compacted,
                    )
                )
            elif watcher.next_revision <= durable:
                self._replay(watcher, watcher.next_revision, durable)

    def cancel(self, watch_id: int) -> None:
        watcher = self.watchers.pop(watch_id, None)
        if watcher is None:
            return
        self.source.hub.remove(watcher)
        self.send(
            rpc.WatchResponse(
                header=self.source.header(self.source.durable_revision),
                watch_id=watch_id,
                canceled=True,
            )
        )

    def progress_all(self) -> None:
        """Answer a progress request: one empty response at the durable revision."""
        self.send(
            rpc.WatchResponse(header=self.source.header(self.source.durable_revision), watch_id=-1)
        )

    def notify_progress(self) -> None:
        """The periodic progress notification, for watchers that asked for it."""
        revision = self.source.durable_revision
        for watcher in self.watchers.values():
            if watcher.progress and watcher.next_revision > revision:
                self.send(
                    rpc.WatchResponse(header=self.source.header(revision), watch_id=watcher.id)
                )

    def close(self) -> None:
        for watcher in self.watchers.values():
            self.source.hub.remove(watcher)
        self.watchers.clear()
