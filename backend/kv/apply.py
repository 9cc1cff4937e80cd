"""Provides the applier: the single member's ``Store``, which takes each request through
etcd's checks and quota, applies it with the transactions of backend/kv/txn.py, logs it to the
WAL (answering once it is on disk), publishes it to watchers, and heads its response.

Recovery and snapshots are in backend/kv/snapshot.py; leases in backend/kv/lease.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import zlib
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from pathlib import Path

from aetcd import rpc

from clustertui.backend import filemodes
from clustertui.backend.kv import errors, snapshot, txn
from clustertui.backend.kv.lease import Lessor
from clustertui.backend.kv.mvcc import Batch, KeySpace
from clustertui.backend.kv.snapshot import ALARM, COMPACT, GRANT, REVOKE, batch_record
from clustertui.backend.kv.txn import Txns
from clustertui.backend.kv.wal import WriteAheadLog, frame
from clustertui.backend.kv.watch import WatchHub

log = logging.getLogger("clusterd.kv")

RAFT_TERM = 2
"""A single member elects itself once; etcd's first leader term is 2."""
GRPC_OVERHEAD_BYTES = 512 * 1024
"""etcd accepts gRPC messages this much larger than --max-request-bytes, then checks itself."""
MAX_TXN_OPS = 128

_NOSPACE = rpc.AlarmType.Value("NOSPACE")
_NO_ALARM = rpc.AlarmType.Value("NONE")


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
        self.txns = Txns(self.space, self.lessor, self.header)
        self.alarms: set[int] = set()
        self.on_expired: list[Callable[[int, int], None]] = []
        """Called with (lease id, keys deleted) for each lease revoked because it ran out."""
        """The alarm types raised (by any member): what the write path checks."""
        self.raised: snapshot.Alarms = set()
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

    # -- recovery and snapshots (backend/kv/snapshot.py) ----------------------------------

    def recover(self) -> None:
        """Rebuild the state from the snapshot and WAL; returns when the store can serve."""
        self.applied_index += snapshot.replay(
            self.wal.recover(), self.space, self.lessor, self.raised
        )
        self.alarms = {kind for _, kind in self.raised}
        self.durable_revision = self.space.revision

    def snapshot_state(self) -> Callable[[], Iterable[bytes]]:
        """Capture the state for a snapshot; the returned function serialises it."""
        return snapshot.capture(self.space, self.lessor, self.raised)

    def backup(self) -> Callable[[], bytes]:
        """Capture the state now, for `etcdctl snapshot save`; the function returned builds
        the file (in a thread)."""
        return snapshot.backup_file(self.snapshot_state())

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
        self.wal.append(batch_record(batch), batch)
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

    # -- quota ---------------------------------------------------------------------------

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
        snapshot.set_alarm(self.raised, action, member, alarm)
        self.alarms = {kind for _, kind in self.raised}
        request = rpc.AlarmRequest(action=action, memberID=member, alarm=alarm)
        self._log(ALARM, request.SerializeToString())

    # -- KV (backend/kv/txn.py) ----------------------------------------------------------

    def range(self, request: rpc.RangeRequest) -> rpc.RangeResponse:
        return self.txns.range(request)

    async def range_yielding(self, request: rpc.RangeRequest) -> rpc.RangeResponse:
        """``range``, read in chunks that yield to the event loop when it is large."""
        return await self.txns.range_yielding(request)

    def put(self, request: rpc.PutRequest) -> rpc.PutResponse:
        txn.check_put_request(request)
        if len(request.key) + len(request.value) > self.config.max_request_bytes - 64:
            self._check_size(request)
        self._check_space(len(request.key) + len(request.value) + 48)
        batch, prev = self.txns.put(request)
        self._log_batch(batch)
        response = rpc.PutResponse(header=self.header(batch.revision))
        if request.prev_kv and prev is not None:
            response.prev_kv.CopyFrom(prev)
        return response

    def delete_range(self, request: rpc.DeleteRangeRequest) -> rpc.DeleteRangeResponse:
        txn.check_delete_request(request)
        self._check_size(request)
        batch, deleted = self.txns.delete_range(request)
        if batch is not None:
            self._log_batch(batch)
        response = rpc.DeleteRangeResponse(
            header=self.header(self.space.revision), deleted=len(deleted)
        )
        if request.prev_kv:
            response.prev_kvs.extend(deleted)
        return response

    def txn(self, request: rpc.TxnRequest) -> rpc.TxnResponse:
        txn.check_txn_request(request, self.config.max_txn_ops)
        self._check_size(request)
        path = self.txns.prepare(request)
        cost = txn.put_cost(request, iter(path))
        if cost:
            self._check_space(cost)
        response, batch = self.txns.txn(request, path)
        if batch is not None:
            self._log_batch(batch)
        response.header.CopyFrom(self.header(self.space.revision))
        return response

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
        batch = self.txns.revoke(lease_id)
        if batch is not None:
            self._log_batch(batch)
        self._log(REVOKE, rpc.LeaseRevokeRequest(ID=lease_id).SerializeToString())
        return rpc.LeaseRevokeResponse(header=self.header(self.space.revision))

    def expire_leases(self) -> bool:
        """Revoke every lease past its TTL; true if any was."""
        expired = self.lessor.expired()
        for lease_id in expired:
            lease = self.lessor.leases.get(lease_id)
            keys = len(lease.keys) if lease is not None else 0
            self.lease_revoke(lease_id)
            for listener in self.on_expired:
                listener(lease_id, keys)
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
        """etcd's alarm store: one alarm per member ID as given (0 included) and type.

        As in etcd 3.4, the response has no header: its applier builds the AlarmResponse
        bare and its gRPC layer adds none (etcd 3.5 added one)."""
        action = request.action
        if action in (rpc.AlarmRequest.ACTIVATE, rpc.AlarmRequest.DEACTIVATE):
            if request.alarm != _NO_ALARM:
                key = (request.memberID, request.alarm)
                present = key in self.raised
                activate = action == rpc.AlarmRequest.ACTIVATE
                if activate != present:
                    self._set_alarm(action, request.alarm, request.memberID)
                if not activate and not present:
                    return rpc.AlarmResponse()
                member = rpc.AlarmMember(memberID=request.memberID, alarm=request.alarm)
                return rpc.AlarmResponse(alarms=[member])
        alarms = [
            rpc.AlarmMember(memberID=member, alarm=alarm)
            for member, alarm in sorted(self.raised, key=lambda pair: (pair[1], pair[0]))
            if request.alarm in (_NO_ALARM, alarm)
        ]
        return rpc.AlarmResponse(alarms=alarms)

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
