"""Backups: `etcdctl snapshot save` from a running store, `clusterd kv --restore-snapshot` back.

The saved file follows etcd's layout (padded to 512 bytes, then the SHA-256 of the rest), which
etcdctl checks; a restore takes only a whole snapshot and never overwrites a store.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest

from clustertui.backend.etcd import make_client
from tests.harness.bundled import BundledStore, start_bundled
from tests.harness.stores import RunningStore
from tests.kv.tools import etcdctl, run_kv


def _save(url: str, path: Path) -> None:
    saved = etcdctl(url, "snapshot", "save", str(path), timeout=30)
    assert saved.rc == 0, saved.err
    assert f"Snapshot saved at {path}" in saved.out


def test_a_saved_snapshot_has_etcds_layout_on_either_store(
    store: RunningStore, tmp_path: Path
) -> None:
    path = tmp_path / "backup.db"
    _save(store.url, path)
    data = path.read_bytes()
    assert len(data) % 512 == 32
    assert data[-32:] == hashlib.sha256(data[:-32]).digest()


@pytest.mark.slow
async def test_a_restored_snapshot_holds_keys_history_revisions_and_leases(
    tmp_path: Path,
) -> None:
    source = start_bundled(tmp_path / "source")
    try:
        kv = make_client(source.url)
        await kv.put(b"/app/config", b"v1")
        first = (await kv.put(b"/app/config", b"v2")).header.revision
        lease = await kv.lease(600)
        await kv.put(b"/app/leased", b"l", lease=lease)
        big = {b"/big/%03d" % i: bytes([i]) * 20_000 for i in range(200)}  # 4 MB, many chunks
        for key, value in big.items():
            await kv.put(key, value)
        revision = await kv.current_revision()
        await kv.close()
        path = tmp_path / "backup.db"
        _save(source.url, path)
    finally:
        source.stop()

    restored = BundledStore(
        data_dir=tmp_path / "restored" / "kv", extra=["--restore-snapshot", str(path)]
    ).start()
    try:
        assert f"restored {path} into" in restored.output()
        kv = make_client(restored.url)
        assert await kv.current_revision() == revision
        assert {item.key: item.value for item in await kv.get_prefix(b"/big/")} == big
        old = etcdctl(restored.url, "get", "/app/config", "--rev", str(first - 1))
        assert old.out == "/app/config\nv1\n"
        alive = etcdctl(restored.url, "lease", "timetolive", f"{lease.id:x}", "--keys").out
        assert "attached keys([/app/leased])" in alive
        after = await kv.put(b"/app/after", b"a")
        assert after.header.revision == revision + 1
        await kv.close()
    finally:
        restored.stop()


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda data: data[: len(data) // 2], id="truncated"),
        pytest.param(lambda data: data[:40] + bytes([data[40] ^ 1]) + data[41:], id="flipped bit"),
        pytest.param(lambda data: b"\0" * 4096 + data[:32], id="not a snapshot"),
    ],
)
def test_a_damaged_snapshot_is_refused_and_creates_no_store(
    tmp_path: Path, damage: Callable[[bytes], bytes]
) -> None:
    source = start_bundled(tmp_path / "source")
    try:
        assert etcdctl(source.url, "put", "k", "v").rc == 0
        path = tmp_path / "backup.db"
        _save(source.url, path)
    finally:
        source.stop()
    path.write_bytes(damage(path.read_bytes()))
    target = tmp_path / "target"
    done = run_kv("--data-dir", str(target), "--restore-snapshot", str(path))
    assert done.returncode == 1
    assert "is not a whole clusterd kv snapshot" in done.stderr
    assert not list(target.glob("wal/*"))


def test_a_real_etcds_snapshot_is_refused_with_where_it_belongs(
    etcd: RunningStore, tmp_path: Path
) -> None:
    path = tmp_path / "etcd.db"
    _save(etcd.url, path)  # etcd's layout and checksum, but a bolt database inside
    done = run_kv("--data-dir", str(tmp_path / "target"), "--restore-snapshot", str(path))
    assert done.returncode == 1
    assert "`etcdctl snapshot restore`" in done.stderr
    assert not list((tmp_path / "target").glob("wal/*"))


async def test_restoring_over_an_existing_store_is_refused_and_keeps_it(tmp_path: Path) -> None:
    store = start_bundled(tmp_path)
    try:
        assert etcdctl(store.url, "put", "precious", "1").rc == 0
        path = tmp_path / "backup.db"
        _save(store.url, path)
    finally:
        store.stop()
    done = run_kv("--data-dir", str(store.data_dir), "--restore-snapshot", str(path))
    assert done.returncode == 1
    assert "already holds a store" in done.stderr
    store.start()
    try:
        assert etcdctl(store.url, "get", "precious", "--print-value-only").out == "1\n"
    finally:
        store.stop()
