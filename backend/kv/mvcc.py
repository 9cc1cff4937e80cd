"""Provides the multi-version key space: revisions, per-key history, ranges and compaction."""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field

from aetcd import rpc
from sortedcontainers import SortedList

from clustertui.backend.etcd import DELETE, PUT
from clustertui.backend.kv import errors

# A range_end of one zero byte means "every key from `key` on", as in etcd.
FROM_KEY = b"\0"


class KeyHistory:
    """Every kept version of one key: parallel lists of mod revisions and records."""

    __slots__ = ("recs", "revs")

    def __init__(self) -> None:
        self.revs: list[int] = []
        self.recs: list[rpc.KeyValue] = []

    def at(self, revision: int) -> rpc.KeyValue | None:
        """The record in force at ``revision``, or None if the key did not exist then."""
        if self.revs[-1] <= revision:
            rec = self.recs[-1]
        else:
            i = bisect.bisect_right(self.revs, revision) - 1
            if i < 0:
                return None
            rec = self.recs[i]
        return None if rec.version == 0 else rec


@dataclass
class Batch:
    """The changes of one revision, in the order they were made, for the WAL and watchers."""

    revision: int
    # (record, previous live record or None); a tombstone record is a deletion.
    changes: list[tuple[rpc.KeyValue, rpc.KeyValue | None]] = field(default_factory=list)
    _plain: list[rpc.Event] | None = None
    _with_prev: list[rpc.Event] | None = None
    record: bytes | None = None
    """Its WAL record once written (kept for snapshots)."""

    def events(self, prev_kv: bool = False) -> list[rpc.Event]:
        """The batch as Event messages, built once per flavour and shared by every watcher."""
        if prev_kv:
            if self._with_prev is None:
                self._with_prev = [
                    rpc.Event(type=DELETE if rec.version == 0 else PUT, kv=rec, prev_kv=prev)
                    for rec, prev in self.changes
                ]
            return self._with_prev
        if self._plain is None:
            self._plain = [
                rpc.Event(type=DELETE if rec.version == 0 else PUT, kv=rec)
                for rec, _prev in self.changes
            ]
        return self._plain


class KeySpace:
    """The whole key space at every kept revision; changed only by :class:`Writer`."""

    def __init__(self) -> None:
        self.revision = 1
        """The newest revision; etcd starts an empty store at 1."""
        self.compacted = 0
        """The newest compacted revision; history before it is gone."""
        self.index: dict[bytes, KeyHistory] = {}
        self.keys: SortedList[bytes] = SortedList()
        """Every key with a history, sorted (O(log n) inserts), for range scans."""
        self.dead: SortedList[bytes] = SortedList()
        """Keys whose newest record is a deletion: ``keys`` less these are the live keys, so
        a range counts and pages at the newest revision without walking all it covers."""
        self.log: list[Batch] = []
        """Revision batches after ``compacted``, oldest first, for watch replay."""
        self.size = 0
        """Approximate bytes held by all kept records, the store's "database size in use"."""

    # -- reads ---------------------------------------------------------------------------

    def get(self, key: bytes) -> rpc.KeyValue | None:
        history = self.index.get(key)
        if history is None:
            return None
        rec = history.recs[-1]
        return None if rec.version == 0 else rec

    def check_revision(self, revision: int) -> int:
        """The revision a read at ``revision`` (0 = newest) sees, or etcd's error."""
        if revision <= 0:
            return self.revision
        if revision > self.revision:
            raise errors.FutureRev()
        if revision < self.compacted:
            raise errors.Compacted()
        return revision

    def keys_in(self, key: bytes, end: bytes) -> list[bytes]:
        """Keys with a history in ``[key, end)``; an empty end is the one key."""
        if not end:
            return [key] if key in self.index else []
        if end == FROM_KEY:
            return list(self.keys.irange(key))
        if end <= key:
            return []
        return list(self.keys.irange(key, end, inclusive=(True, False)))

    def _span(self, keys: SortedList[bytes], key: bytes, end: bytes) -> tuple[int, int]:
        start = keys.bisect_left(key)
        stop = len(keys) if end == FROM_KEY else keys.bisect_left(end)
        return start, max(start, stop)

    def count_live(self, key: bytes, end: bytes) -> int:
        """Live keys in ``[key, end)`` at the newest revision, in O(log n)."""
        if end != FROM_KEY and end <= key:
            return 0
        start, stop = self._span(self.keys, key, end)
        dead_start, dead_stop = self._span(self.dead, key, end)
        return (stop - start) - (dead_stop - dead_start)

    def first_live(self, key: bytes, end: bytes, limit: int) -> list[rpc.KeyValue]:
        """The first ``limit`` live records in ``[key, end)`` at the newest revision."""
        if end != FROM_KEY and end <= key:
            return []
        found: list[rpc.KeyValue] = []
        index = self.index
        stop = None if end == FROM_KEY else end
        for k in self.keys.irange(key, stop, inclusive=(True, False)):
            rec = index[k].recs[-1]
            if rec.version:
                found.append(rec)
                if len(found) == limit:
                    break
        return found

    def range(self, key: bytes, end: bytes, revision: int) -> list[rpc.KeyValue]:
        """Live records in ``[key, end)`` at ``revision``, in key order."""
        index = self.index
        if revision >= self.revision:
            found = []
            for k in self.keys_in(key, end):
                rec = index[k].recs[-1]
                if rec.version:
                    found.append(rec)
            return found
        found = []
        for k in self.keys_in(key, end):
            rec = index[k].at(revision)
            if rec is not None:
                found.append(rec)
        return found

    # -- writes --------------------------------------------------------------------------

    def _record(self, rec: rpc.KeyValue) -> None:
        key = rec.key
        history = self.index.get(key)
        if history is None:
            history = self.index[key] = KeyHistory()
            self.keys.add(key)
            was_dead = False
        else:
            was_dead = history.recs[-1].version == 0
        if was_dead != (rec.version == 0):
            if was_dead:
                self.dead.remove(key)
            else:
                self.dead.add(key)
        history.revs.append(rec.mod_revision)
        history.recs.append(rec)
        self.size += len(key) + len(rec.value) + 48

    def restore(self, rec: rpc.KeyValue) -> None:
        """Put back a record from a snapshot's compacted base (its revisions are kept)."""
        self._record(rec)

    def compact(self, revision: int) -> None:
        """Drop every version superseded at ``revision``, and the history before it.

        Only keys written since the last compaction can hold a superseded version (every
        other key has one record, which stays), and those are the keys of the log's
        batches: the work follows the history compacted away, not the size of the store.
        """
        if revision <= self.compacted:
            return
        changed: set[bytes] = set()
        for batch in self.log:
            if batch.revision > revision:
                break
            for rec, _prev in batch.changes:
                changed.add(rec.key)
        index = self.index
        for key in changed:
            history = index.get(key)
            if history is None:
                continue
            revs = history.revs
            if revs[0] > revision:
                continue
            keep = bisect.bisect_right(revs, revision) - 1
            if history.recs[keep].version == 0:
                keep += 1
            if keep:
                for rec in history.recs[:keep]:
                    self.size -= len(key) + len(rec.value) + 48
                del revs[:keep]
                del history.recs[:keep]
                if not revs:
                    del index[key]
                    self.keys.remove(key)
                    self.dead.discard(key)
        self.compacted = revision
        cut = 0
        # The batch at the compaction revision stays: a watch may still start there.
        while cut < len(self.log) and self.log[cut].revision < revision:
            cut += 1
        del self.log[:cut]


class Writer:
    """One revision's worth of changes; the revision is taken only if something changed."""

    __slots__ = ("batch", "space")

    def __init__(self, space: KeySpace, revision: int = 0) -> None:
        self.space = space
        self.batch = Batch(revision or space.revision + 1)

    def put(self, key: bytes, value: bytes, lease: int) -> tuple[rpc.KeyValue, rpc.KeyValue | None]:
        space = self.space
        revision = self.batch.revision
        history = space.index.get(key)
        prev = None
        if history is not None:
            last = history.recs[-1]
            if last.version:
                prev = last
        if prev is None:
            rec = rpc.KeyValue(
                key=key,
                create_revision=revision,
                mod_revision=revision,
                version=1,
                value=value,
                lease=lease,
            )
        else:
            rec = rpc.KeyValue(
                key=key,
                create_revision=prev.create_revision,
                mod_revision=revision,
                version=prev.version + 1,
                value=value,
                lease=lease,
            )
        space._record(rec)
        self.batch.changes.append((rec, prev))
        return rec, prev

    def delete(self, key: bytes, end: bytes) -> list[rpc.KeyValue]:
        """Delete the live keys in ``[key, end)``; returns their last records."""
        space = self.space
        revision = self.batch.revision
        deleted = []
        for k in list(space.keys_in(key, end)):
            last = space.index[k].recs[-1]
            if last.version == 0:
                continue
            tomb = rpc.KeyValue(key=k, mod_revision=revision)
            space._record(tomb)
            self.batch.changes.append((tomb, last))
            deleted.append(last)
        return deleted

    def replay(self, records: Iterable[rpc.KeyValue]) -> None:
        """Re-apply a logged batch during recovery, exactly as it was recorded."""
        space = self.space
        for kv in records:
            history = space.index.get(kv.key)
            prev = None
            if history is not None and history.recs[-1].version:
                prev = history.recs[-1]
            rec = rpc.KeyValue()
            rec.CopyFrom(kv)
            space._record(rec)
            self.batch.changes.append((rec, prev))

    def finish(self) -> Batch | None:
        """Take the revision if anything changed; returns the batch to log and publish."""
        if not self.batch.changes:
            return None
        space = self.space
        space.revision = self.batch.revision
        space.log.append(self.batch)
        return self.batch
