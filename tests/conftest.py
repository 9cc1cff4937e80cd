"""Fixtures shared by the whole suite: real stores, real sshd, clients and snapshot hygiene."""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from clustertui.backend.etcd import EtcdClient, make_client
from tests.harness.etcd import EtcdCluster, EtcdMember, start_etcd, start_etcd_cluster
from tests.harness.sshd import SSHServer, start_sshd
from tests.harness.stores import STARTERS, RunningStore

STORE_KINDS = list(STARTERS)


@pytest.fixture(autouse=True)
def _snapshot_hygiene(monkeypatch: pytest.MonkeyPatch) -> None:
    """Screens render alike on every machine: colour on, no animations, no user environment."""
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TEXTUAL_ANIMATIONS", "none")
    monkeypatch.setenv("COLUMNS", "120")
    monkeypatch.setenv("LINES", "36")
    for name in [n for n in os.environ if n.startswith(("CLUSTERTUI_", "FLEETCTL_", "ETCDCTL_"))]:
        monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
async def _journal_readers_reaped() -> AsyncIterator[None]:
    """Every local `clusterd journal` reader a test started is reaped by the test's end, in
    the test's own loop: a reader left to the garbage collector is reported, if at all, as an
    unclosed transport in some later test. The wait gives workers that outlive their app a
    moment to end theirs; one still running after it fails the test that started it."""
    yield
    stream = sys.modules.get("clustertui.console.journal_stream")
    if stream is not None:
        left = await stream.readers_ended(within=15)
        assert not left, f"journal readers still running after the test (killed): {left}"


@pytest.fixture(scope="session")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdMember]:
    """One real etcd for the worker; tests share it and keep to their own key prefix."""
    member = start_etcd(tmp_path_factory.mktemp("etcd"))
    yield member
    member.stop()


@pytest.fixture
def fresh_etcd(tmp_path: Path) -> Iterator[EtcdMember]:
    """A real etcd of the test's own, for tests that compact, crash or fill the store."""
    member = start_etcd(tmp_path)
    yield member
    member.stop()


@pytest.fixture
def etcd_cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
    cluster = start_etcd_cluster(tmp_path, 3)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SSHServer]:
    """A real OpenSSH sshd on loopback that accepts the generated client key."""
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


@pytest.fixture(scope="session", params=STORE_KINDS)
def store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningStore]:
    """Each store implementation in turn, shared by the worker's tests of that kind."""
    running = STARTERS[request.param](tmp_path_factory.mktemp(request.param))
    yield running
    running.stop()


@pytest.fixture(params=STORE_KINDS)
def fresh_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunningStore]:
    """Each store implementation in turn, started empty for this test alone."""
    running = STARTERS[request.param](tmp_path / request.param)
    yield running
    running.stop()


_prefixes = itertools.count()


@pytest.fixture
def ns(request: pytest.FixtureRequest) -> bytes:
    """A key prefix no other test in this worker writes under."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw")
    return f"/t/{worker}/{next(_prefixes)}-{request.node.name[:40]}/".encode()


@pytest.fixture
async def kv(store: RunningStore) -> AsyncIterator[EtcdClient]:
    """A connected client to each store implementation in turn."""
    client = make_client([store.url])
    await client.wait_ready()
    yield client
    await client.close()


@pytest.fixture
async def fresh_kv(fresh_store: RunningStore) -> AsyncIterator[EtcdClient]:
    client = make_client([fresh_store.url])
    await client.wait_ready()
    yield client
    await client.close()
