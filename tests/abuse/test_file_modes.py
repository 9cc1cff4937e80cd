"""File modes as etcd and journald make them, whatever the umask: nobody else reads the store.

etcd (3.4.23, measured): data dir and its directories 0700, files 0600; a data dir found 0755
only draws a warning ("check file permission: directory ... exist, but the permission is
"drwxr-xr-x". The recommended permission is "-rwx------" ..."). We warn the same way and also
tighten it. journald: journal files 0640 (its directories 2755 with group systemd-journal; we
have no such group, so 0750).

Every process here runs with umask 0, the umask that would make files 0666 and directories
0777 if their modes were left to it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from clustertui.backend.journal import store as journal_store
from clustertui.backend.journal.writer import JournalWriter
from clustertui.backend.overlay.config import parse_config
from clustertui.backend.overlay.lease import Lease, write_subnet_env
from tests.fleet.conftest import NodeFactory, eventually
from tests.fleet.test_node import ident, launch, runs_on
from tests.harness.bundled import BundledStore
from tests.harness.stores import RunningStore
from tests.kv.tools import etcdctl


@pytest.fixture
def umask_0() -> Iterator[None]:
    """umask 0 for this test and the processes it starts (they inherit it)."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def modes(root: Path) -> dict[str, str]:
    """``{relative path: octal mode}`` for ``root`` and everything in it."""
    found = {".": oct(mode(root))}
    for directory, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = Path(directory, name)
            found[str(path.relative_to(root))] = oct(mode(path))
    return found


def assert_private(root: Path) -> None:
    """etcd's modes: every directory 0700, every file 0600."""
    wrong = {
        name: found
        for name, found in modes(root).items()
        if found != (oct(0o700) if (root / name).is_dir() else oct(0o600))
    }
    assert not wrong, f"not 0700/0600 in {root}: {wrong}"


def wait_for(check: object, within: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + within
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        time.sleep(0.05)


# -- the store --------------------------------------------------------------------------------


def test_the_store_keeps_its_data_private_whatever_the_umask(tmp_path: Path, umask_0: None) -> None:
    data_dir = tmp_path / "kv"
    kv = BundledStore(data_dir=data_dir, extra=["--snapshot-count", "5"]).start()
    try:
        for i in range(12):
            assert etcdctl(kv.url, "put", f"/k{i}", "v" * 100).rc == 0
        wait_for(lambda: list((data_dir / "wal").glob("snap-*.bin")), what="a WAL snapshot")
        saved = tmp_path / "saved.db"
        result = etcdctl(kv.url, "snapshot", "save", str(saved))
        assert result.rc == 0, result.err
        assert {"member.json", "wal"} <= set(os.listdir(data_dir))
        assert_private(data_dir)
    finally:
        kv.stop()

    # A store restored from `etcdctl snapshot save`'s file: the same modes.
    restored_dir = tmp_path / "restored"
    restored = BundledStore(data_dir=restored_dir, extra=["--restore-snapshot", str(saved)])
    restored.start()
    try:
        assert etcdctl(restored.url, "get", "/k11", "--print-value-only").out.strip() == "v" * 100
        assert_private(restored_dir)
    finally:
        restored.stop()


def test_a_loose_data_dir_is_tightened_at_start_with_etcds_warning(
    tmp_path: Path, umask_0: None
) -> None:
    data_dir = tmp_path / "kv"
    kv = BundledStore(data_dir=data_dir, extra=["--snapshot-count", "5"]).start()
    for i in range(8):
        assert etcdctl(kv.url, "put", f"/k{i}", "v").rc == 0
    wait_for(lambda: list((data_dir / "wal").glob("snap-*.bin")), what="a WAL snapshot")
    kv.stop()
    # As an older clusterd (or a careless hand) left it: world-readable everything.
    for path in [data_dir, *data_dir.rglob("*")]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)

    kv.start()
    try:
        assert_private(data_dir)
        log = kv.output()
        assert (
            f'check file permission: directory "{data_dir}" exist, but the permission is '
            '"drwxr-xr-x". The recommended permission is "-rwx------" to prevent possible '
            "unprivileged access to the data; tightened it to -rwx------"
        ) in log, log
        assert etcdctl(kv.url, "get", "/k7", "--print-value-only").out.strip() == "v"
    finally:
        kv.stop()


# -- the journal ------------------------------------------------------------------------------


def assert_journal_modes(journal: Path) -> None:
    assert mode(journal) == 0o750
    files = {name: oct(mode(journal / name)) for name in os.listdir(journal)}
    assert journal_store.list_segments(journal), files
    assert {"id", ".lock"} <= set(files)
    assert files == dict.fromkeys(files, oct(0o640)), files


def test_the_journal_writer_makes_journald_modes(tmp_path: Path, umask_0: None) -> None:
    data_dir = tmp_path / "node"  # missing: the writer makes it, 0711 as a node's data dir
    with JournalWriter(data_dir, machine_id="0" * 32, max_bytes=64 * 1024) as writer:
        for i in range(2000):  # enough to rotate: every new segment is 0640 too
            writer.line(b"line %d " % i + b"x" * 60, unit="a.service", identifier="a", pid=1)
        writer.flush()
    assert len(journal_store.list_segments(data_dir / "journal")) > 1
    assert mode(data_dir) == 0o711
    assert_journal_modes(data_dir / "journal")


def test_a_loose_journal_is_tightened_by_its_next_writer(tmp_path: Path, umask_0: None) -> None:
    with JournalWriter(tmp_path, machine_id="0" * 32) as writer:
        writer.line(b"one", unit="a.service", identifier="a", pid=1)
    journal = tmp_path / "journal"
    for path in [journal, *journal.iterdir()]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    with JournalWriter(tmp_path, machine_id="0" * 32) as writer:
        writer.line(b"two", unit="a.service", identifier="a", pid=1)
    assert_journal_modes(journal)


# -- a node -----------------------------------------------------------------------------------


@pytest.fixture
def nodes(store: RunningStore, ns: bytes, tmp_path: Path) -> Iterator[NodeFactory]:
    factory = NodeFactory(store.url, ns.decode() + "fleet/", tmp_path)
    yield factory
    factory.stop_all()


@pytest.mark.parametrize("store", ["bundled"], indirect=True)
async def test_a_node_keeps_its_private_state_private(
    nodes: NodeFactory, kv: object, tmp_path: Path, umask_0: None
) -> None:
    from clustertui.backend.fleet.registry import Registry

    registry = Registry(kv, nodes.prefix)  # type: ignore[arg-type]
    child = nodes.start("n1", ttl="5s")
    machine = ident(child, tmp_path)
    await launch(registry, "svc.service")
    await eventually(lambda: runs_on(registry, "svc.service", machine), within=15)
    data_dir = tmp_path / "n1"
    await eventually(lambda: (data_dir / "run" / "svc.service.json").exists(), within=10)
    await asyncio.sleep(0.3)  # the unit's first lines reach the journal
    found = modes(data_dir)
    # Only the node lists its data dir; what others may read stays reachable by name.
    assert found["."] == oct(0o711)
    assert found["machine-id"] == oct(0o644), found  # as /etc/machine-id: not a secret
    assert found["run"] == oct(0o700), found
    assert found["run/svc.service.json"] == oct(0o600), found
    assert_journal_modes(data_dir / "journal")


def test_subnet_env_is_world_readable_as_flannels(tmp_path: Path) -> None:
    # flanneld writes subnet.env 0644 whatever the umask (renameio, then chmod): every service
    # that joins the overlay reads it. Neither a permissive nor a strict umask changes that.
    config = parse_config('{"Network": "10.5.0.0/16"}')
    subnet = ipaddress.IPv4Network("10.5.3.0/24")
    lease = Lease(subnet, "127.0.0.1", b"/coreos.com/network/subnets/10.5.3.0-24", 1, 60, 1, config)
    for umask in (0o000, 0o077):
        old = os.umask(umask)
        try:
            path = tmp_path / f"umask{umask:o}" / "subnet.env"
            write_subnet_env(path, lease, ip_masq=False)
        finally:
            os.umask(old)
        assert mode(path) == 0o644
        assert "FLANNEL_SUBNET=10.5.3.1/24" in path.read_text()


def test_the_demo_store_dir_is_private(tmp_path: Path, umask_0: None) -> None:
    from clustertui.backend.demo import start_store

    root = tmp_path / "demo"  # as `clusterd demo --data-dir` makes it
    store = start_store(root)
    try:
        assert mode(root) == 0o700
        assert_private(root / "store")
    finally:
        store.stop()
