"""Provides recovery and snapshots: the store's state as WAL records, read back at start,
captured for the WAL's snapshots and `etcdctl snapshot save`, and restored from such a file
(etcd keeps these in its backend and snapshot packages)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from aetcd import rpc

from clustertui.backend import filemodes
from clustertui.backend.kv.lease import Lessor
from clustertui.backend.kv.mvcc import Batch, KeySpace, Writer
from clustertui.backend.kv.wal import frame, fsync_dir, parse_records

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

Alarms = set[tuple[int, int]]
"""Each alarm raised, as etcd keeps them: (member ID as given, alarm type)."""


def batch_record(batch: Batch) -> bytes:
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


def set_alarm(raised: Alarms, action: int, member: int, alarm: int) -> None:
    """Raise or clear one alarm in ``raised``."""
    if action == rpc.AlarmRequest.ACTIVATE:
        raised.add((member, alarm))
    else:
        raised.discard((member, alarm))


def replay(
    records: Iterable[tuple[bytes, bytes]], space: KeySpace, lessor: Lessor, raised: Alarms
) -> int:
    """Rebuild the state from the WAL's records (its snapshot's first); returns how many
    records were read, each an applied entry."""
    entries = 0
    snapshot_compacted = 0
    for kind, payload in records:
        entries += 1
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
            lessor.grant(grant.ID, grant.TTL)
        elif kind == REVOKE:
            lessor.leases.pop(rpc.LeaseRevokeRequest.FromString(payload).ID, None)
        elif kind == COMPACT:
            space.compact(rpc.CompactionRequest.FromString(payload).revision)
        elif kind == ALARM:
            alarm = rpc.AlarmRequest.FromString(payload)
            set_alarm(raised, alarm.action, alarm.memberID, alarm.alarm)
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
            lessor.attach(last.lease, key)
    lessor.restart_clocks()
    return entries


def capture(space: KeySpace, lessor: Lessor, raised: Alarms) -> Callable[[], Iterable[bytes]]:
    """Capture the state now for a snapshot; the returned function serialises it."""
    compacted = space.compacted
    meta = {"revision": space.revision, "compacted": compacted}
    base = [
        history.recs[0]
        for history in space.index.values()
        if history.revs[0] < compacted and history.recs[0].version
    ]
    batches = list(space.log)
    leases = [(lease.id, lease.ttl) for lease in lessor.leases.values()]
    alarms = sorted(raised)

    def produce() -> Iterable[bytes]:
        start = batches[0].revision - 1 if batches else meta["revision"]
        yield frame(META, json.dumps({**meta, "revision": start}).encode())
        for i in range(0, len(base), 1000):
            yield frame(BASE, rpc.RangeResponse(kvs=base[i : i + 1000]).SerializeToString())
        # Joined a thousand at a time: the thread writing them holds the GIL for fewer,
        # shorter turns, which the event loop would otherwise wait behind.
        for i in range(0, len(batches), 1000):
            yield b"".join([batch_record(batch) for batch in batches[i : i + 1000]])
        for lease_id, ttl in leases:
            yield frame(GRANT, rpc.LeaseGrantRequest(ID=lease_id, TTL=ttl).SerializeToString())
        for member, alarm in alarms:
            request = rpc.AlarmRequest(
                action=rpc.AlarmRequest.ACTIVATE, memberID=member, alarm=alarm
            )
            yield frame(ALARM, request.SerializeToString())

    return produce


def backup_file(produce: Callable[[], Iterable[bytes]]) -> Callable[[], bytes]:
    """The function that builds `etcdctl snapshot save`'s file from a capture: its records,
    zeros up to SNAPSHOT_ALIGN, and the SHA-256 of both (run it in a thread)."""

    def build() -> bytes:
        body = b"".join(produce())
        body += bytes(-len(body) % SNAPSHOT_ALIGN)
        return body + hashlib.sha256(body).digest()

    return build


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
