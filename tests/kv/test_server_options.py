"""`clusterd kv`'s flags: TLS, several listen URLs, progress notifications, auto-compaction."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from aetcd import rpc

from clustertui.backend.etcd import EtcdError, make_client
from tests.harness.bundled import BundledStore, start_bundled
from tests.harness.etcd import EtcdMember, TLSFiles
from tests.harness.pki import CA
from tests.harness.procs import free_port
from tests.harness.stores import RunningStore
from tests.kv.conftest import RawWatch, rpc_error
from tests.kv.tools import etcdctl, run_kv


@pytest.mark.slow
async def test_tls_with_client_certificates_admits_only_certified_clients(tmp_path: Path) -> None:
    ca = CA(tmp_path / "pki")
    server = ca.issue("server", server=True)
    client = ca.issue("client", server=False)
    tls = TLSFiles(server.cert, server.key, ca.path, client_cert_auth=True)
    store = start_bundled(tmp_path, tls=tls)
    try:
        kv = make_client(store.url, cacert=str(ca.path), cert=str(client.cert), key=str(client.key))
        await kv.put(b"secret", b"1")
        got = await kv.get(b"secret")
        assert got is not None and got.value == b"1"
        await kv.close()
        stranger = make_client(store.url, cacert=str(ca.path), timeout=1)
        with pytest.raises(EtcdError):
            await stranger.get(b"secret")
        await stranger.close()
        args = ["--cacert", str(ca.path), "--cert", str(client.cert), "--key", str(client.key)]
        assert etcdctl(store.url, *args, "get", "secret", "--print-value-only").out == "1\n"
    finally:
        store.stop()


def _progress_store(kind: str, root: Path) -> RunningStore:
    flag = ["--experimental-watch-progress-notify-interval", "200ms"]
    if kind == "bundled":
        return start_bundled(root, flag)
    return EtcdMember(name="progress", data_dir=root / "progress", extra=flag).start().wait_ready()


@pytest.fixture(params=["etcd", "bundled"])
def progress_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunningStore]:
    store = _progress_store(request.param, tmp_path)
    yield store
    store.stop()


async def test_a_quiet_watch_that_asked_for_progress_gets_notifications(
    progress_store: RunningStore,
) -> None:
    kv = make_client(progress_store.url)
    current = (await kv.put(b"elsewhere", b"1")).header.revision
    await kv.connect()
    watch = RawWatch(kv)
    created = await watch.create(b"quiet", progress_notify=True)
    notification = await watch.next()
    await watch.close()
    await kv.close()
    assert list(notification.events) == []
    assert notification.watch_id == created.watch_id
    assert notification.header.revision == current


@pytest.mark.slow
async def test_periodic_auto_compaction_drops_history_older_than_the_retention(
    tmp_path: Path,
) -> None:
    store = start_bundled(tmp_path, ["--auto-compaction-retention", "1s"])
    kv = make_client(store.url)
    try:
        first = (await kv.put(b"k", b"1")).header.revision
        await kv.put(b"k", b"2")
        old = rpc.RangeRequest(key=b"k", revision=first)
        message = ""
        for _ in range(100):
            try:
                await kv.kvstub.Range(old)
            except Exception:
                _code, message = await rpc_error(kv.kvstub.Range(old))
                break
            await asyncio.sleep(0.1)
        assert message == "etcdserver: mvcc: required revision has been compacted"
        got = await kv.get(b"k")
        assert got is not None and got.value == b"2"
    finally:
        await kv.close()
        store.stop()


def test_a_revision_retention_that_is_not_a_number_is_refused(tmp_path: Path) -> None:
    done = run_kv(
        "--data-dir", str(tmp_path / "d"),
        "--auto-compaction-mode", "revision",
        "--auto-compaction-retention", "1h",
    )  # fmt: skip
    assert done.returncode != 0
    assert "number of revisions" in done.stderr


@pytest.mark.slow
async def test_each_listen_url_serves_with_its_own_scheme(tmp_path: Path) -> None:
    ca = CA(tmp_path / "pki")
    server = ca.issue("server", server=True)
    tls = TLSFiles(server.cert, server.key, ca.path)
    secure, plain = free_port(), free_port()
    urls = f"https://127.0.0.1:{secure},http://127.0.0.1:{plain}"
    store = BundledStore(
        data_dir=tmp_path / "kv", port=secure, tls=tls, extra=["--listen-client-urls", urls]
    ).start()
    try:
        assert f"serving {urls.replace(',', ', ')} from" in store.output()
        over_tls = make_client(f"https://127.0.0.1:{secure}", cacert=str(ca.path))
        await over_tls.put(b"both", b"1")
        await over_tls.close()
        assert etcdctl(f"http://127.0.0.1:{plain}", "get", "both", "--print-value-only").out == (
            "1\n"
        )
        members = etcdctl(f"http://127.0.0.1:{plain}", "member", "list").out
        assert f"https://127.0.0.1:{secure},http://127.0.0.1:{plain}" in members
    finally:
        store.stop()


def test_a_listen_url_already_taken_is_named_in_the_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = f"http://127.0.0.1:{taken.getsockname()[1]}"
        urls = f"http://127.0.0.1:{free_port()},{busy}"
        done = run_kv("--data-dir", str(tmp_path / "d"), "--listen-client-urls", urls)
    assert done.returncode == 1
    assert f"cannot listen on {busy}:" in done.stderr
