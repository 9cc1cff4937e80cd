"""Provides the applier: etcd's request semantics over the key space, leases, WAL and watches."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import zlib
from collections.abc import Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from aetcd import rpc

from backend import filemodes
from backend.kv import errors
from backend.kv.lease import Lessor
from backend.kv.mvcc import FROM_KEY, Batch, KeySpace, Writer
from backend.kv.wal import WriteAheadLog, frame, fsync_dir, parse_records
from backend.kv.watch import WatchHub

log = logging.getLogger("clusterd.kv")

RAFT_TERM = 2
"""A single member elects itself once; etcd's first leader term is 2."""
GRPC_OVERHEAD_BYTES = 512 * 1024
"""etcd accepts gRPC messages this much larger than --max-request-bytes, then checks itself."""
MAX_TXN_OPS = 128
RANGE_CHUNK_KEYS = 10_000
"""A range over more keys than this is read in chunks of this many, yielding between them."""

# WAL record kinds.
BATCH = b"B"
GRANT = b"G"
REVOKE = b"R"
COMPACT = b"C"
ALARM = b"A"
META = b"M"
BASE = b"K"
SNAPSHOT_ALIGN = 512
"""A saved snapshot is padded to a multiple of this and ends with the SHA-256 of all before
it: etcd's own layout, which `etcdctl snapshot save` checks for ("sha256 checksum not found")."""

_ASCEND = rpc.RangeRequest.ASCEND
_DESCEND = rpc.RangeRequest.DESCEND
_NONE = rpc.RangeRequest.NONE
_SORT_KEYS: dict[int, Callable[[rpc.KeyValue], object]] = {
    rpc.RangeRequest.KEY: lambda kv: kv.key,
    rpc.RangeRequest.VERSION: lambda kv: kv.version,
    rpc.RangeRequest.CREATE: lambda kv: kv.create_revision,
    rpc.RangeRequest.MOD: lambda kv: kv.mod_revision,
    rpc.RangeRequest.VALUE: lambda kv: kv.value,
}
_NOSPACE = rpc.AlarmType.Value("NOSPACE")


@dataclass
class Config:
    """The store's settings, with etcd's defaults."""

    data_dir: Path
    name: str = "default"
    client_urls: tuple[str, ...] = ("http://127.0.0.1:2379",)
    peer_urls: tuple[str, ...] = ("http://localhost:2380",)
    quota_bytes: int = 2 * 1024 * 1024 * 1024
    max_request_bytes: int = 1536 * 1024
    min_lease_ttl: int = 2
    max_txn_ops: int = MAX_TXN_OPS
    snapshot_count: int = 100_000
    """Writes between snapshots (etcd's --snapshot-count)."""


def _member_ids(data_dir: Path, name: str) -> tuple[int, int]:
    """Stable cluster and member IDs, made once and kept in the data directory."""
    path = data_dir / "member.json"
    if path.exists():
        saved = json.loads(path.read_text())
        return int(saved["cluster_id"]), int(saved["member_id"])
    seed = hashlib.sha256(f"{name}:{data_dir.resolve()}".encode()).digest()
    member_id = int.from_bytes(seed[:8], "big") >> 1 or 1
    cluster_id = int.from_bytes(seed[8:16], "big") >> 1 or 1
    record = {"cluster_id": cluster_id, "member_id": member_id, "name": name}
    filemodes.write_file(path, json.dumps(record).encode(), filemodes.PRIVATE_FILE)
    return cluster_id, member_id


class Store:
    """The single member: applies requests in order, logs them, and publishes them to watchers.

    Everything here runs on one event loop, so each request applies atomically. A write is
    applied in memory, appended to the WAL, and answered only once the WAL has it on disk;
    readers and watchers see only what is on disk.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        # etcd's modes: the data directory 0700, everything in it 0600. A directory left
        # looser (by an older clusterd, or by hand) is tightened, with etcd's warning.
        filemodes.ensure_dir(config.data_dir, filemodes.PRIVATE_DIR, log)
        filemodes.tighten_files(config.data_dir, filemodes.PRIVATE_FILE, log)
        self.cluster_id, self.member_id = _member_ids(config.data_dir, config.name)
        self.space = KeySpace()
        self.lessor = Lessor(config.min_lease_ttl)
        self.hub = WatchHub()
        self.alarms: set[int] = set()
        """The alarm types raised (by any member): what the write path checks."""
        self.raised: set[tuple[int, int]] = set()
        """Each alarm raised, as etcd keeps them: (member ID as given, alarm type)."""
        self.applied_index = 1
        """Entries applied; like etcd's raft index it starts with the member's own first entry."""
        self.durable_revision = 1
        self.wal = WriteAheadLog(config.data_dir / "wal", self._published)
        self._writes_since_snapshot = 0
        self._snapshotting = False
        self._headers: dict[int, rpc.ResponseHeader] = {}
        self.background: set[asyncio.Task[None]] = set()

    # -- headers -------------------------------------------------------------------------

    def header(self, revision: int) -> rpc.ResponseHeader:
        """A response header at ``revision``; cached, since most responses share the newest."""
        cached = self._headers.get(revision)
        if cached is None:
            if len(self._headers) > 64:
                self._headers.clear()
            cached = self._headers[revision] = rpc.ResponseHeader(
                cluster_id=self.cluster_id,
                member_id=self.member_id,
                revision=revision,
                raft_term=RAFT_TERM,
            )
        return cached

    # -- recovery ------------------------------------------------------------------------

    def recover(self) -> None:
        """Rebuild the state from the snapshot and WAL; returns when the store can serve."""
        space = self.space
        snapshot_compacted = 0
        for kind, payload in self.wal.recover():
            self.applied_index += 1
            if kind == BATCH:
                record = rpc.RangeResponse.FromString(payload)
                revision = record.header.revision
                if revision <= space.revision:
                    continue
                writer = Writer(space, revision)
                writer.replay(record.kvs)
                batch = writer.finish()
                if batch is not None:
                    batch.record = frame(BATCH, payload)
            elif kind == GRANT:
                grant = rpc.LeaseGrantRequest.FromString(payload)
                self.lessor.grant(grant.ID, grant.TTL)
            elif kind == REVOKE:
                self.lessor.leases.pop(rpc.LeaseRevokeRequest.FromString(payload).ID, None)
            elif kind == COMPACT:
                space.compact(rpc.CompactionRequest.FromString(payload).revision)
            elif kind == ALARM:
                alarm = rpc.AlarmRequest.FromString(payload)
                if alarm.action == rpc.AlarmRequest.ACTIVATE:
                    self.raised.add((alarm.memberID, alarm.alarm))
                else:
                    self.raised.discard((alarm.memberID, alarm.alarm))
                self.alarms = {kind for _, kind in self.raised}
            elif kind == META:
                meta = json.loads(payload)
                space.revision = meta["revision"]
                snapshot_compacted = meta["compacted"]
            elif kind == BASE:
                for kv in rpc.RangeResponse.FromString(payload).kvs:
                    space.restore(kv)
        if snapshot_compacted:
            space.compact(snapshot_compacted)
        for key, history in space.index.items():
            last = history.recs[-1]
            if last.version and last.lease:
                self.lessor.attach(last.lease, key)
        self.lessor.restart_clocks()
        self.durable_revision = space.revision

    def snapshot_state(self) -> Callable[[], Iterable[bytes]]:
        """Capture the state for a snapshot; the returned function serialises it."""
        space = self.space
        compacted = space.compacted
        meta = {"revision": space.revision, "compacted": compacted}
        base = [
            history.recs[0]
            for history in space.index.values()
            if history.revs[0] < compacted and history.recs[0].version
        ]
        batches = list(space.log)
        leases = [(lease.id, lease.ttl) for lease in self.lessor.leases.values()]
        alarms = sorted(self.raised)

        def produce() -> Iterable[bytes]:
            start = batches[0].revision - 1 if batches else meta["revision"]
            yield frame(META, json.dumps({**meta, "revision": start}).encode())
            for i in range(0, len(base), 1000):
                yield frame(BASE, rpc.RangeResponse(kvs=base[i : i + 1000]).SerializeToString())
            # Joined a thousand at a time: the thread writing them holds the GIL for fewer,
            # shorter turns, which the event loop would otherwise wait behind.
            for i in range(0, len(batches), 1000):
                yield b"".join([_batch_record(batch) for batch in batches[i : i + 1000]])
            for lease_id, ttl in leases:
                yield frame(GRANT, rpc.LeaseGrantRequest(ID=lease_id, TTL=ttl).SerializeToString())
            for member, alarm in alarms:
                request = rpc.AlarmRequest(
                    action=rpc.AlarmRequest.ACTIVATE, memberID=member, alarm=alarm
                )
                yield frame(ALARM, request.SerializeToString())

        return produce

    def backup(self) -> Callable[[], bytes]:
        """Capture the state now, for `etcdctl snapshot save`; the function returned builds
        the file in a thread: the WAL snapshot's records, zeros up to SNAPSHOT_ALIGN, and the
        SHA-256 of both."""
        produce = self.snapshot_state()

        def build() -> bytes:
            body = b"".join(produce())
            body += bytes(-len(body) % SNAPSHOT_ALIGN)
            return body + hashlib.sha256(body).digest()

        return build

    async def take_snapshot(self) -> None:
        if self._snapshotting:
            return
        self._snapshotting = True
        try:
            await self.wal.snapshot(self.snapshot_state)
            self._writes_since_snapshot = 0
        finally:
            self._snapshotting = False

    # -- durability ----------------------------------------------------------------------

    def _published(self, batches: list[Batch]) -> None:
        if batches:
            self.durable_revision = batches[-1].revision
            self.hub.publish(batches, self.header)

    def _log(self, kind: bytes, payload: bytes) -> None:
        self.applied_index += 1
        self.wal.append(frame(kind, payload))

    def _log_batch(self, batch: Batch) -> None:
        self.applied_index += 1
        self.wal.append(_batch_record(batch), batch)
        self._writes_since_snapshot += 1
        if (
            self._writes_since_snapshot >= self.config.snapshot_count or self.wal.want_snapshot
        ) and not self._snapshotting:
            self._spawn(self.take_snapshot())

    def _spawn(self, coroutine: Coroutine[None, None, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    def durable(self) -> asyncio.Future[None]:
        return self.wal.durable()

    def read_barrier(self) -> asyncio.Future[None] | None:
        """A future to await before answering a read, if un-synced writes are visible."""
        return None if self.wal.idle else self.wal.durable()

    # -- checks --------------------------------------------------------------------------

    def _check_size(
        self, request: rpc.PutRequest | rpc.TxnRequest | rpc.DeleteRangeRequest
    ) -> None:
        if request.ByteSize() > self.config.max_request_bytes:
            raise errors.RequestTooLarge()

    def _check_space(self, cost: int) -> None:
        if _NOSPACE in self.alarms:
            raise errors.NoSpace()
        if cost and self.space.size + cost > self.config.quota_bytes:
            log.warning("database space exceeded: raising the NOSPACE alarm")
            self._set_alarm(rpc.AlarmRequest.ACTIVATE, _NOSPACE, self.member_id)
            raise errors.NoSpace()

    def _set_alarm(self, action: int, alarm: int, member: int) -> None:
        if action == rpc.AlarmRequest.ACTIVATE:
            self.raised.add((member, alarm))
        else:
            self.raised.discard((member, alarm))
        self.alarms = {kind for _, kind in self.raised}
        request = rpc.AlarmRequest(action=action, memberID=member, alarm=alarm)
        self._log(ALARM, request.SerializeToString())

    @staticmethod
    def _check_range_request(request: rpc.RangeRequest) -> None:
        if not request.key:
            raise errors.EmptyKey()

    @staticmethod
    def _check_put_request(request: rpc.PutRequest) -> None:
        if not request.key:
            raise errors.EmptyKey()
        if request.ignore_value and request.value:
            raise errors.ValueProvided()
        if request.ignore_lease and request.lease:
            raise errors.LeaseProvided()

    def _check_txn_request(self, request: rpc.TxnRequest) -> None:
        limit = self.config.max_txn_ops
        if max(len(request.compare), len(request.success), len(request.failure)) > limit:
            raise errors.TooManyOps()
        for compare in request.compare:
            if not compare.key:
                raise errors.EmptyKey()
        for op in (*request.success, *request.failure):
            which = op.WhichOneof("request")
            if which == "request_range":
                self._check_range_request(op.request_range)
            elif which == "request_put":
                self._check_put_request(op.request_put)
            elif which == "request_delete_range":
                if not op.request_delete_range.key:
                    raise errors.EmptyKey()
            elif which == "request_txn":
                self._check_txn_request(op.request_txn)

    def _check_put_apply(self, request: rpc.PutRequest) -> None:
        """Checks that depend on the state, made before anything in the request applies."""
        if (request.ignore_value or request.ignore_lease) and self.space.get(request.key) is None:
            raise errors.KeyNotFound()
        if request.lease and request.lease not in self.lessor.leases:
            raise errors.LeaseNotFound()

    # -- KV ------------------------------------------------------------------------------

    def range(self, request: rpc.RangeRequest, revision: int | None = None) -> rpc.RangeResponse:
        self._check_range_request(request)
        space = self.space
        at = space.check_revision(request.revision)
        current = space.revision if revision is None else revision
        key = request.key
        end = request.range_end
        if not end:
            # The common case: one key at the newest revision.
            if at == space.revision:
                kv = space.get(key)
                found = [] if kv is None else [kv]
            else:
                history = space.index.get(key)
                kv = None if history is None else history.at(at)
                found = [] if kv is None else [kv]
        elif self._pages(request, at):
            # A page or a count of the newest revision in key order, as the console and
            # etcdctl ask for it: counted from the indexes, and only the page is read.
            return self._page(request, key, end, current)
        else:
            found = space.range(key, end, at)
        return self._respond(request, found, current)

    def _respond(
        self,
        request: rpc.RangeRequest,
        found: list[rpc.KeyValue],
        current: int,
        copy: bool = True,
    ) -> rpc.RangeResponse:
        """The response to a range that found ``found``: filtered, sorted, limited. Without
        ``copy`` the records are left for the caller to add, and ``found`` is cut to them."""
        count = len(found)
        if (
            request.min_mod_revision
            or request.max_mod_revision
            or request.min_create_revision
            or request.max_create_revision
        ):
            found[:] = _filter_revisions(found, request)
        order = request.sort_order
        target = request.sort_target
        if target != rpc.RangeRequest.KEY and order == _NONE:
            order = _ASCEND
        # As in etcd 3.4, an unknown order means unsorted and an unknown target means key.
        if order == _DESCEND or (order == _ASCEND and target != rpc.RangeRequest.KEY):
            by = _SORT_KEYS.get(target, _SORT_KEYS[rpc.RangeRequest.KEY])
            found.sort(key=by, reverse=order == _DESCEND)
        more = False
        limit = request.limit
        if limit > 0 and len(found) > limit:
            del found[limit:]
            more = not request.count_only  # etcd reads no keys for a count, so none are left
        response = rpc.RangeResponse(header=self.header(current), more=more, count=count)
        if request.count_only or not copy:
            return response
        if request.keys_only:
            response.kvs.extend(_without_value(kv) for kv in found)
        else:
            response.kvs.extend(found)
        return response

    async def range_yielding(self, request: rpc.RangeRequest) -> rpc.RangeResponse:
        """``range``, but a range over many keys is read and copied in chunks that yield to
        the event loop between them, so one big read cannot hold every other client.

        The read stays at the revision it started at: later chunks read each key's history
        at that revision (writes made meanwhile are not seen), and a compaction past it in
        the meantime fails the read as etcd fails a read of a compacted revision.
        """
        space = self.space
        end = request.range_end
        if not end or not request.key:
            return self.range(request)
        at = space.check_revision(request.revision)
        if (end != FROM_KEY and end <= request.key) or self._pages(request, at):
            return self.range(request)
        keys = space.keys_in(request.key, end)
        if len(keys) <= RANGE_CHUNK_KEYS:
            return self.range(request)
        current = space.revision
        index = space.index
        found: list[rpc.KeyValue] = []
        for first in range(0, len(keys), RANGE_CHUNK_KEYS):
            if first:
                await asyncio.sleep(0)
                if space.compacted > at:
                    raise errors.Compacted()
            for k in keys[first : first + RANGE_CHUNK_KEYS]:
                history = index.get(k)
                rec = None if history is None else history.at(at)
                if rec is not None:
                    found.append(rec)
        response = self._respond(request, found, current, copy=False)
        kvs = response.kvs
        if request.count_only:
            return response
        for first in range(0, len(found), RANGE_CHUNK_KEYS):
            if first:
                await asyncio.sleep(0)
            part = found[first : first + RANGE_CHUNK_KEYS]
            if request.keys_only:
                kvs.extend(_without_value(kv) for kv in part)
            else:
                kvs.extend(part)
        return response

    def _pages(self, request: rpc.RangeRequest, at: int) -> bool:
        """Whether a range is answered from the live-key index (see ``range``)."""
        return (
            at == self.space.revision
            and (request.limit > 0 or request.count_only)
            and request.sort_order in (_NONE, _ASCEND)
            and request.sort_target == rpc.RangeRequest.KEY
            and not (
                request.min_mod_revision
                or request.max_mod_revision
                or request.min_create_revision
                or request.max_create_revision
            )
        )

    def _page(
        self, request: rpc.RangeRequest, key: bytes, end: bytes, current: int
    ) -> rpc.RangeResponse:
        space = self.space
        count = space.count_live(key, end)
        limit = request.limit
        response = rpc.RangeResponse(
            header=self.header(current),
            more=0 < limit < count and not request.count_only,
            count=count,
        )
        if request.count_only:
            return response
        found = space.first_live(key, end, limit)
        if request.keys_only:
            response.kvs.extend(_without_value(kv) for kv in found)
        else:
            response.kvs.extend(found)
        return response

    def put(self, request: rpc.PutRequest) -> rpc.PutResponse:
        self._check_put_request(request)
        if len(request.key) + len(request.value) > self.config.max_request_bytes - 64:
            self._check_size(request)
        self._check_space(len(request.key) + len(request.value) + 48)
        self._check_put_apply(request)
        writer = Writer(self.space)
        prev = self._apply_put(writer, request)
        batch = writer.finish()
        assert batch is not None
        self._log_batch(batch)
        response = rpc.PutResponse(header=self.header(batch.revision))
        if request.prev_kv and prev is not None:
            response.prev_kv.CopyFrom(prev)
        return response

    def _apply_put(self, writer: Writer, request: rpc.PutRequest) -> rpc.KeyValue | None:
        key = request.key
        value = request.value
        lease = request.lease
        if request.ignore_value or request.ignore_lease:
            current = self.space.get(key)
            assert current is not None
            if request.ignore_value:
                value = current.value
            if request.ignore_lease:
                lease = current.lease
        _rec, prev = writer.put(key, value, lease)
        old_lease = prev.lease if prev is not None else 0
        if old_lease != lease:
            if old_lease:
                self.lessor.detach(old_lease, key)
            if lease:
                self.lessor.attach(lease, key)
        return prev

    def _apply_delete(self, writer: Writer, key: bytes, end: bytes) -> list[rpc.KeyValue]:
        deleted = writer.delete(key, end)
        for kv in deleted:
            if kv.lease:
                self.lessor.detach(kv.lease, kv.key)
        return deleted

    def delete_range(self, request: rpc.DeleteRangeRequest) -> rpc.DeleteRangeResponse:
        if not request.key:
            raise errors.EmptyKey()
        self._check_size(request)
        writer = Writer(self.space)
        deleted = self._apply_delete(writer, request.key, request.range_end)
        batch = writer.finish()
        revision = self.space.revision
        if batch is not None:
            self._log_batch(batch)
        response = rpc.DeleteRangeResponse(header=self.header(revision), deleted=len(deleted))
        if request.prev_kv:
            response.prev_kvs.extend(deleted)
        return response

    def txn(self, request: rpc.TxnRequest) -> rpc.TxnResponse:
        self._check_txn_request(request)
        self._check_size(request)
        _check_intervals(list(request.success))
        _check_intervals(list(request.failure))
        # The branch taken at every level, depth first: etcd decides them all up front.
        path = self._choose(request)
        self._check_txn_apply(request, iter(path))
        cost = _put_cost(request, iter(path))
        if cost:
            self._check_space(cost)
        writer = Writer(self.space)
        response = rpc.TxnResponse()
        self._apply_txn(writer, request, iter(path), response)
        batch = writer.finish()
        if batch is not None:
            self._log_batch(batch)
        response.header.CopyFrom(self.header(self.space.revision))
        return response

    def _choose(self, request: rpc.TxnRequest) -> list[bool]:
        """Evaluate every compare up front, nested ones too, against the state before the txn."""
        path: list[bool] = []
        succeeded = all(self._compare(compare) for compare in request.compare)
        path.append(succeeded)
        for op in request.success if succeeded else request.failure:
            if op.WhichOneof("request") == "request_txn":
                path.extend(self._choose(op.request_txn))
        return path

    def _check_txn_apply(self, request: rpc.TxnRequest, steps: Iterator[bool]) -> None:
        succeeded = next(steps)
        for op in request.success if succeeded else request.failure:
            which = op.WhichOneof("request")
            if which == "request_put":
                self._check_put_apply(op.request_put)
            elif which == "request_range":
                self.space.check_revision(op.request_range.revision)
            elif which == "request_txn":
                self._check_txn_apply(op.request_txn, steps)

    def _apply_txn(
        self,
        writer: Writer,
        request: rpc.TxnRequest,
        steps: Iterator[bool],
        response: rpc.TxnResponse,
    ) -> None:
        succeeded = next(steps)
        response.succeeded = succeeded
        revision = writer.batch.revision
        for op in request.success if succeeded else request.failure:
            which = op.WhichOneof("request")
            out = response.responses.add()
            if which == "request_range":
                result = out.response_range
                result.CopyFrom(self.range(op.request_range, self.space.revision))
                # etcd's responses inside a Txn carry only the revision in their header.
                result.header.Clear()
                result.header.revision = self.space.revision
            elif which == "request_put":
                put = op.request_put
                prev = self._apply_put(writer, put)
                result = out.response_put
                result.header.revision = revision
                if put.prev_kv and prev is not None:
                    result.prev_kv.CopyFrom(prev)
            elif which == "request_delete_range":
                delete = op.request_delete_range
                deleted = self._apply_delete(writer, delete.key, delete.range_end)
                result = out.response_delete_range
                result.header.revision = revision
                result.deleted = len(deleted)
                if delete.prev_kv:
                    result.prev_kvs.extend(deleted)
            elif which == "request_txn":
                self._apply_txn(writer, op.request_txn, steps, out.response_txn)

    def _compare(self, compare: rpc.Compare) -> bool:
        space = self.space
        if compare.range_end:
            found = space.range(compare.key, compare.range_end, space.revision)
        else:
            kv = space.get(compare.key)
            found = [] if kv is None else [kv]
        target = compare.target
        if not found:
            if target == rpc.Compare.VALUE:
                return False
            return _compare_kv(compare, rpc.KeyValue())
        return all(_compare_kv(compare, kv) for kv in found)

    def compact(self, request: rpc.CompactionRequest) -> rpc.CompactionResponse:
        space = self.space
        revision = request.revision
        if revision <= space.compacted:
            raise errors.Compacted()
        if revision > space.revision:
            raise errors.FutureRev()
        space.compact(revision)
        self._log(COMPACT, request.SerializeToString())
        return rpc.CompactionResponse(header=self.header(space.revision))

    # -- leases --------------------------------------------------------------------------

    def lease_grant(self, request: rpc.LeaseGrantRequest) -> rpc.LeaseGrantResponse:
        lessor = self.lessor
        lease_id = request.ID or lessor.new_id()
        lessor.check_grant(lease_id, request.TTL)
        self._check_space(64)
        lease = lessor.grant(lease_id, request.TTL)
        self._log(GRANT, rpc.LeaseGrantRequest(ID=lease.id, TTL=lease.ttl).SerializeToString())
        return rpc.LeaseGrantResponse(
            header=self.header(self.space.revision), ID=lease.id, TTL=lease.ttl
        )

    def lease_revoke(self, lease_id: int) -> rpc.LeaseRevokeResponse:
        lease = self.lessor.revoke(lease_id)
        writer = Writer(self.space)
        for key in sorted(lease.keys):
            writer.delete(key, b"")
        batch = writer.finish()
        if batch is not None:
            self._log_batch(batch)
        self._log(REVOKE, rpc.LeaseRevokeRequest(ID=lease_id).SerializeToString())
        return rpc.LeaseRevokeResponse(header=self.header(self.space.revision))

    def expire_leases(self) -> bool:
        """Revoke every lease past its TTL; true if any was."""
        expired = self.lessor.expired()
        for lease_id in expired:
            self.lease_revoke(lease_id)
        return bool(expired)

    def lease_time_to_live(
        self, request: rpc.LeaseTimeToLiveRequest
    ) -> rpc.LeaseTimeToLiveResponse:
        header = self.header(self.space.revision)
        lease = self.lessor.leases.get(request.ID)
        if lease is None:
            return rpc.LeaseTimeToLiveResponse(header=header, ID=request.ID, TTL=-1)
        response = rpc.LeaseTimeToLiveResponse(
            header=header, ID=lease.id, TTL=lease.remaining(), grantedTTL=lease.ttl
        )
        if request.keys:
            response.keys.extend(sorted(lease.keys))
        return response

    def lease_leases(self) -> rpc.LeaseLeasesResponse:
        return rpc.LeaseLeasesResponse(
            header=self.header(self.space.revision),
            leases=[rpc.LeaseStatus(ID=lease_id) for lease_id in self.lessor.leases],
        )

    # -- maintenance ---------------------------------------------------------------------

    def alarm(self, request: rpc.AlarmRequest) -> rpc.AlarmResponse:
        """etcd's alarm store: one alarm per member ID as given (0 included) and type."""
        action = request.action
        header = self.header(self.space.revision)
        if action in (rpc.AlarmRequest.ACTIVATE, rpc.AlarmRequest.DEACTIVATE):
            if request.alarm != rpc.AlarmType.Value("NONE"):
                key = (request.memberID, request.alarm)
                present = key in self.raised
                activate = action == rpc.AlarmRequest.ACTIVATE
                if activate != present:
                    self._set_alarm(action, request.alarm, request.memberID)
                if not activate and not present:
                    return rpc.AlarmResponse(header=header)
                member = rpc.AlarmMember(memberID=request.memberID, alarm=request.alarm)
                return rpc.AlarmResponse(header=header, alarms=[member])
        alarms = [
            rpc.AlarmMember(memberID=member, alarm=alarm)
            for member, alarm in sorted(self.raised, key=lambda pair: (pair[1], pair[0]))
            if request.alarm in (rpc.AlarmType.Value("NONE"), alarm)
        ]
        return rpc.AlarmResponse(header=header, alarms=alarms)

    def hash_kv(self, revision: int) -> rpc.HashKVResponse:
        space = self.space
        at = space.check_revision(revision)
        digest = 0
        for key in space.keys:
            history = space.index[key]
            for rev, rec in zip(history.revs, history.recs, strict=True):
                if rev > at:
                    break
                digest = zlib.crc32(rec.SerializeToString(), digest)
        return rpc.HashKVResponse(
            header=self.header(space.revision), hash=digest, compact_revision=space.compacted
        )

    def hash_all(self) -> rpc.HashResponse:
        return rpc.HashResponse(header=self.header(self.space.revision), hash=self.hash_kv(0).hash)

    def status(self, version: str) -> rpc.StatusResponse:
        # On disk: the WAL, the snapshot and the member file; in use: what a snapshot of the
        # state would hold now, which compaction shrinks and defragmentation makes the size.
        size = self.wal.disk_size() + (self.config.data_dir / "member.json").stat().st_size
        response = rpc.StatusResponse(
            header=self.header(self.space.revision),
            version=version,
            dbSize=size,
            dbSizeInUse=min(size, self.space.size + 64),
            leader=self.member_id,
            raftIndex=self.applied_index,
            raftTerm=RAFT_TERM,
            raftAppliedIndex=self.applied_index,
        )
        for member, alarm in sorted(self.raised, key=lambda pair: (pair[1], pair[0])):
            who = f"memberID:{member} " if member else ""
            response.errors.append(f"{who}alarm:{rpc.AlarmType.Name(alarm)} ")
        return response


def _batch_record(batch: Batch) -> bytes:
    """The batch's WAL record, serialized once: the log writes it, and every snapshot
    that still holds the batch copies the same bytes instead of serializing it again
    (a snapshot of 100,000 revisions took 450 ms of a thread's time holding the GIL,
    stalling the event loop by 50-80 ms at a time)."""
    if batch.record is not None:
        return batch.record
    record = rpc.RangeResponse(
        header=rpc.ResponseHeader(revision=batch.revision),
        kvs=[rec for rec, _prev in batch.changes],
    )
    batch.record = frame(BATCH, record.SerializeToString())
    return batch.record


def _without_value(kv: rpc.KeyValue) -> rpc.KeyValue:
    return rpc.KeyValue(
        key=kv.key,
        create_revision=kv.create_revision,
        mod_revision=kv.mod_revision,
        version=kv.version,
        lease=kv.lease,
    )


def _filter_revisions(found: list[rpc.KeyValue], request: rpc.RangeRequest) -> list[rpc.KeyValue]:
    lo_mod, hi_mod = request.min_mod_revision, request.max_mod_revision
    lo_create, hi_create = request.min_create_revision, request.max_create_revision
    return [
        kv
        for kv in found
        if (not lo_mod or kv.mod_revision >= lo_mod)
        and (not hi_mod or kv.mod_revision <= hi_mod)
        and (not lo_create or kv.create_revision >= lo_create)
        and (not hi_create or kv.create_revision <= hi_create)
    ]


def _compare_kv(compare: rpc.Compare, kv: rpc.KeyValue) -> bool:
    target = compare.target
    if target == rpc.Compare.VALUE:
        ours: object = kv.value
        theirs: object = compare.value
    elif target == rpc.Compare.VERSION:
        ours, theirs = kv.version, compare.version
    elif target == rpc.Compare.CREATE:
        ours, theirs = kv.create_revision, compare.create_revision
    elif target == rpc.Compare.MOD:
        ours, theirs = kv.mod_revision, compare.mod_revision
    else:
        ours, theirs = kv.lease, compare.lease
    result = compare.result
    if result == rpc.Compare.EQUAL:
        return ours == theirs
    if result == rpc.Compare.NOT_EQUAL:
        return ours != theirs
    if result == rpc.Compare.GREATER:
        return ours > theirs  # type: ignore[operator]
    return ours < theirs  # type: ignore[operator]


def _in_interval(key: bytes, start: bytes, end: bytes) -> bool:
    if not end:
        return key == start
    if end == FROM_KEY:
        return key >= start
    return start <= key < end


def _check_intervals(ops: list[rpc.RequestOp]) -> tuple[set[bytes], list[tuple[bytes, bytes]]]:
    """etcd's rule: no key is written twice, or written and deleted, in one branch."""
    dels = [
        (op.request_delete_range.key, op.request_delete_range.range_end)
        for op in ops
        if op.WhichOneof("request") == "request_delete_range"
    ]
    puts: set[bytes] = set()

    def deleted(key: bytes) -> bool:
        return any(_in_interval(key, start, end) for start, end in dels)

    for op in ops:
        if op.WhichOneof("request") != "request_txn":
            continue
        then_puts, then_dels = _check_intervals(list(op.request_txn.success))
        else_puts, else_dels = _check_intervals(list(op.request_txn.failure))
        for key in then_puts:
            if key in puts or deleted(key):
                raise errors.DuplicateKey()
            puts.add(key)
        for key in else_puts:
            # then and else exclude each other, so the same key in both is fine
            if (key in puts and key not in then_puts) or deleted(key):
                raise errors.DuplicateKey()
            puts.add(key)
        dels.extend(then_dels)
        dels.extend(else_dels)
    for op in ops:
        if op.WhichOneof("request") != "request_put":
            continue
        key = op.request_put.key
        if key in puts or deleted(key):
            raise errors.DuplicateKey()
        puts.add(key)
    return puts, dels


def _put_cost(request: rpc.TxnRequest, steps: Iterator[bool]) -> int:
    succeeded = next(steps)
    cost = 0
    for op in request.success if succeeded else request.failure:
        which = op.WhichOneof("request")
        if which == "request_put":
            cost += len(op.request_put.key) + len(op.request_put.value) + 48
        elif which == "request_txn":
            cost += _put_cost(op.request_txn, steps)
    return cost


class RestoreError(Exception):
    """A snapshot that cannot become a store, said in words a sysadmin can act on."""


def restore_snapshot(snapshot: Path, data_dir: Path) -> None:
    """Make a new ``data_dir`` hold what ``snapshot`` (from `etcdctl snapshot save`) holds.

    The snapshot must be whole: the digest at its end matching, every record intact. Its
    records become the data directory's WAL snapshot, so starting the store recovers them:
    keys, history since the last compaction, revisions, leases (their TTLs restarted) and
    alarms. An existing store is never overwritten.
    """
    wal_dir = data_dir / "wal"
    if wal_dir.is_dir() and any(wal_dir.iterdir()):
        raise RestoreError(f"{data_dir} already holds a store; restore into a new data directory")
    try:
        data = snapshot.read_bytes()
    except OSError as error:
        raise RestoreError(f"cannot read {snapshot}: {error.strerror or error}") from error
    digest = hashlib.sha256(data[:-32]).digest()
    whole = len(data) % SNAPSHOT_ALIGN == 32 and data[-32:] == digest
    if whole:
        records, end = parse_records(data[:-32])
        body = data[:end]
        whole = bool(records) and records[0][0] == META and not data[end:-32].strip(b"\0")
    if not whole:
        raise RestoreError(
            f"{snapshot} is not a whole clusterd kv snapshot (truncated, corrupt, or made by "
            "another store; a real etcd's snapshot is restored with `etcdctl snapshot restore`)"
        )
    filemodes.make_dirs(wal_dir, filemodes.PRIVATE_DIR)
    final = wal_dir / f"snap-{1:016d}.bin"
    temp = final.with_suffix(".tmp")
    with open(filemodes.open_new(temp, filemodes.PRIVATE_FILE), "wb") as handle:
        handle.write(body)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, final)
    fsync_dir(wal_dir)
