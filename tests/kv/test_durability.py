"""The bundled store keeps every acknowledged write across restarts, crashes and torn logs."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aetcd import rpc

from clustertui.backend.etcd import EtcdClient, EtcdError, make_client
from clustertui.backend.kv.wal import frame, read_records
from tests.harness.bundled import BundledStore, start_bundled
from tests.harness.procs import free_port
from tests.kv.conftest import rpc_error
from tests.kv.tools import run_kv


@pytest.fixture
async def bundled(tmp_path: Path) -> AsyncIterator[BundledStore]:
    store = start_bundled(tmp_path)
    yield store
    store.stop()


async def _client(store: BundledStore) -> EtcdClient:
    client = make_client(store.url)
    await client.wait_ready()
    return client


async def test_a_restart_keeps_the_data_and_the_revisions_go_on(bundled: BundledStore) -> None:
    kv = await _client(bundled)
    for i in range(5):
        last = await kv.put(b"k%d" % i, b"v%d" % i)
    await kv.close()
    bundled.restart()
    assert "recovered at revision 6" in bundled.output()
    kv = await _client(bundled)
    assert [item.value for item in await kv.get_prefix(b"k")] == [b"v%d" % i for i in range(5)]
    after = await kv.put(b"k0", b"new")
    assert after.header.revision == last.header.revision + 1
    got = await kv.get(b"k0")
    assert got is not None and (got.version, got.create_revision) == (2, 2)
    await kv.close()


async def test_kill_9_loses_no_acknowledged_write(bundled: BundledStore) -> None:
    kv = await _client(bundled)
    acked = [(await kv.put(b"w%03d" % i, b"x")).header.revision for i in range(50)]
    await kv.close()
    bundled.kill()
    bundled.start()
    kv = await _client(bundled)
    found = await kv.get_prefix(b"w")
    assert [item.mod_revision for item in found] == acked
    await kv.close()


@pytest.mark.slow
async def test_leases_survive_a_restart_with_their_ttl_restarted(bundled: BundledStore) -> None:
    kv = await _client(bundled)
    lease = await kv.lease(4)
    put = await kv.put(b"leased", b"1", lease=lease)
    await asyncio.sleep(2)
    await kv.close()
    bundled.kill()
    bundled.start()
    kv = await _client(bundled)
    info = await kv.leasestub.LeaseTimeToLive(rpc.LeaseTimeToLiveRequest(ID=lease.id, keys=True))
    # About 2 s were left at the kill; a restarted clock has close to the full 4 s again.
    assert info.TTL >= 3
    assert list(info.keys) == [b"leased"]
    watch = await kv.watch(b"leased", start_revision=put.header.revision + 1)
    event = await asyncio.wait_for(anext(watch.__aiter__()), 10)
    await watch.cancel()
    assert str(event.kind) == "DELETE"
    await kv.close()


@pytest.mark.slow
async def test_snapshots_truncate_the_log_and_recovery_keeps_history(tmp_path: Path) -> None:
    store = start_bundled(tmp_path, ["--snapshot-count", "40"])
    kv = await _client(store)
    first = await kv.put(b"h", b"0")
    for i in range(1, 150):
        await kv.put(b"h", b"%d" % i)
        await kv.put(b"other%d" % (i % 7), b"x")
    await kv.close()
    store.kill()
    wal = store.data_dir / "wal"
    assert len(list(wal.glob("snap-*.bin"))) == 1
    assert len(list(wal.glob("wal-*.log"))) <= 2
    store.start()
    kv = await _client(store)
    got = await kv.get(b"h")
    assert got is not None and (got.value, got.version) == (b"149", 150)
    old = await kv.kvstub.Range(rpc.RangeRequest(key=b"h", revision=first.header.revision))
    assert [item.value for item in old.kvs] == [b"0"]
    await kv.close()
    store.stop()


async def test_a_torn_last_record_is_cut_off_and_the_store_serves(bundled: BundledStore) -> None:
    kv = await _client(bundled)
    last = await kv.put(b"safe", b"1")
    await kv.close()
    bundled.kill()
    segment = sorted((bundled.data_dir / "wal").glob("wal-*.log"))[-1]
    with segment.open("ab") as handle:
        handle.write(b"\x40\x00\x00\x00\x12\x34half a record")
    bundled.start()
    assert "torn record" in bundled.output()
    kv = await _client(bundled)
    got = await kv.get(b"safe")
    assert got is not None and got.mod_revision == last.header.revision
    assert (await kv.put(b"next", b"2")).header.revision == last.header.revision + 1
    await kv.close()


async def test_compaction_survives_a_restart(bundled: BundledStore) -> None:
    kv = await _client(bundled)
    first = await kv.put(b"c", b"1")
    second = await kv.put(b"c", b"2")
    await kv.compact(second.header.revision)
    await kv.close()
    bundled.restart()
    kv = await _client(bundled)
    old = rpc.RangeRequest(key=b"c", revision=first.header.revision)
    _code, message = await rpc_error(kv.kvstub.Range(old))
    assert message == "etcdserver: mvcc: required revision has been compacted"
    at = await kv.kvstub.Range(rpc.RangeRequest(key=b"c", revision=second.header.revision))
    assert [item.value for item in at.kvs] == [b"2"]
    await kv.close()


async def _writer(url: str, prefix: bytes, acked: dict[bytes, int]) -> None:
    """Write fresh keys until the store goes away; record each acknowledged revision."""
    client = make_client(url, timeout=1)
    n = 0
    try:
        while True:
            key = b"%s/%06d" % (prefix, n)
            try:
                response = await client.put(key, key)
            except EtcdError:
                return
            acked[key] = response.header.revision
            n += 1
    finally:
        await client.close()


@pytest.mark.slow
async def test_kill_9_under_16_concurrent_writers_loses_no_acknowledged_write(
    tmp_path: Path,
) -> None:
    # Frequent snapshots, so kills also land during segment switches and snapshot writes.
    bundled = start_bundled(tmp_path, ["--snapshot-count", "150"])
    acked: dict[bytes, int] = {}
    highest_seen = 0
    for cycle in range(4):
        writers = [
            asyncio.ensure_future(_writer(bundled.url, b"crash/%d/%02d" % (cycle, i), acked))
            for i in range(16)
        ]
        await asyncio.sleep(random.uniform(0.3, 1.0))
        bundled.kill()
        await asyncio.wait_for(asyncio.gather(*writers), 20)
        bundled.start()
        kv = await _client(bundled)
        found = {item.key: item.mod_revision for item in await kv.get_prefix(b"crash/")}
        missing = [key for key, revision in acked.items() if found.get(key) != revision]
        assert missing == []
        revision = await kv.current_revision()
        assert revision >= max(acked.values()) >= highest_seen
        highest_seen = revision
        await kv.close()
    bundled.stop()
    assert len(acked) > 200
    assert list((bundled.data_dir / "wal").glob("snap-*.bin"))


def test_plaintext_on_a_non_loopback_address_is_refused(tmp_path: Path) -> None:
    done = run_kv(
        "--data-dir", str(tmp_path / "d"), "--listen-client-urls", f"http://0.0.0.0:{free_port()}"
    )
    assert done.returncode != 0
    assert "not loopback" in done.stderr
    assert "--allow-insecure-remote" in done.stderr


def test_sigterm_shuts_down_cleanly(bundled: BundledStore) -> None:
    assert bundled.child is not None
    bundled.stop()
    assert bundled.child.process is not None
    assert bundled.child.process.returncode == 0
    assert "shutting down" in bundled.output()


def _batch(revision: int, key: bytes, value: bytes) -> bytes:
    """The WAL record a put of a new key at ``revision`` makes."""
    kv = rpc.KeyValue(
        key=key, value=value, create_revision=revision, mod_revision=revision, version=1
    )
    body = rpc.RangeResponse(header=rpc.ResponseHeader(revision=revision), kvs=[kv])
    return frame(b"B", body.SerializeToString())


async def test_a_torn_write_inside_the_preallocated_segment_never_comes_back(
    bundled: BundledStore,
) -> None:
    kv = await _client(bundled)
    last = await kv.put(b"safe", b"1")
    await kv.close()
    bundled.kill()
    segment = sorted((bundled.data_dir / "wal").glob("wal-*.log"))[-1]
    _records, end = read_records(segment)
    assert segment.stat().st_size > end  # the segment holds space taken ahead of the writes
    # A group write that tore: its first record damaged, the one after it whole but never
    # acknowledged. The damaged one is exactly as long as the next put's record will be, so
    # that record would end where the unacknowledged one begins, were it not cut away.
    following = last.header.revision + 1
    put_record = _batch(following, b"next", b"2")
    damaged = put_record[:8] + bytes(len(put_record) - 8)
    ghost = _batch(following + 1, b"ghost", b"never acknowledged")
    with segment.open("r+b") as handle:
        handle.seek(end)
        handle.write(damaged + ghost)
    bundled.start()
    assert "torn record" in bundled.output()
    kv = await _client(bundled)
    assert await kv.get(b"ghost") is None
    after = await kv.put(b"next", b"2")
    assert after.header.revision == following
    await kv.close()
    bundled.kill()
    with segment.open("rb") as handle:
        handle.seek(end)
        assert handle.read(len(put_record)) == put_record  # the put landed where we meant
    bundled.start()
    kv = await _client(bundled)
    everything = await kv.kvstub.Range(rpc.RangeRequest(key=b"\0", range_end=b"\0"))
    assert [(item.key, item.value) for item in everything.kvs] == [(b"next", b"2"), (b"safe", b"1")]
    assert await kv.current_revision() == following
    await kv.close()
