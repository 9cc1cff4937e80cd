"""The client factory against a real 3-member etcd cluster and a real etcd serving TLS."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from clustertui.backend.etcd import EtcdClient, EtcdError, TLSError, make_client
from tests.harness.etcd import EtcdCluster, EtcdMember, TLSFiles, start_etcd
from tests.harness.pki import CA


async def _leader_index(client: EtcdClient, cluster: EtcdCluster) -> int:
    status = await client.status()
    names = [member.name for member in cluster.members]
    return names.index(status.leader.name)


async def _eventually(operation, deadline: float):
    """Run ``operation`` until it succeeds; an election takes a moment after a leader dies."""
    while True:
        try:
            return await operation()
        except EtcdError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


@pytest.mark.slow
async def test_the_client_keeps_reading_and_writing_after_the_leader_dies(
    etcd_cluster: EtcdCluster,
) -> None:
    client = make_client(etcd_cluster.urls, timeout=3)
    await client.put(b"/failover/before", b"1")
    leader = await _leader_index(client, etcd_cluster)
    etcd_cluster.members[leader].kill()

    deadline = time.monotonic() + 15
    await _eventually(lambda: client.put(b"/failover/after", b"2"), deadline)
    for round_ in range(20):
        await client.put(b"/failover/counter", str(round_).encode())
    before = await client.get(b"/failover/before")
    after = await client.get(b"/failover/after")
    counter = await client.get(b"/failover/counter")
    assert (before.value, after.value, counter.value) == (b"1", b"2", b"19")
    survivors = [m for i, m in enumerate(etcd_cluster.members) if i != leader]
    assert all(member.child.alive() for member in survivors)
    await client.close()


@dataclass
class TLSSetup:
    """A CA and a real etcd serving TLS with a certificate it signed."""

    ca: CA
    member: EtcdMember


@pytest.fixture
def tls_etcd(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[TLSSetup]:
    """Real etcd over TLS; ``@pytest.mark.parametrize("tls_etcd", [True], indirect=True)``
    makes it demand client certificates too."""
    ca = CA(tmp_path / "pki")
    server = ca.issue("etcd-server", server=True)
    files = TLSFiles(
        server.cert, server.key, ca.path, client_cert_auth=getattr(request, "param", False)
    )
    member = start_etcd(tmp_path, tls=files)
    yield TLSSetup(ca, member)
    member.stop()


@pytest.mark.slow
async def test_a_client_with_the_right_ca_talks_to_etcd_over_tls(tls_etcd: TLSSetup) -> None:
    assert tls_etcd.member.url.startswith("https://")
    client = make_client(tls_etcd.member.url, cacert=str(tls_etcd.ca.path), timeout=5)
    await client.put(b"/tls/k", b"secret")
    got = await client.get(b"/tls/k")
    assert got is not None and got.value == b"secret"
    await client.close()


@pytest.mark.slow
@pytest.mark.parametrize("tls_etcd", [True], indirect=True)
async def test_a_client_certificate_is_presented_when_etcd_demands_one(tls_etcd: TLSSetup) -> None:
    issued = tls_etcd.ca.issue("operator", server=False)
    client = make_client(
        tls_etcd.member.url,
        cacert=str(tls_etcd.ca.path),
        cert=str(issued.cert),
        key=str(issued.key),
        timeout=5,
    )
    await client.put(b"/tls/mtls", b"ok")
    assert (await client.get(b"/tls/mtls")).value == b"ok"
    await client.close()


@pytest.mark.slow
async def test_a_wrong_ca_fails_with_a_tls_error_that_says_what_to_check(
    tmp_path: Path, tls_etcd: TLSSetup
) -> None:
    stranger = CA(tmp_path / "other", name="someone else")
    client = make_client(tls_etcd.member.url, cacert=str(stranger.path), timeout=3)
    with pytest.raises(TLSError) as caught:
        await client.get(b"/tls/k")
    assert "--cacert" in str(caught.value)
    await client.close()


def test_a_missing_ca_file_is_named_in_the_error(tmp_path: Path) -> None:
    with pytest.raises(EtcdError, match=r"CA file .*nope\.pem"):
        make_client("https://127.0.0.1:2379", cacert=str(tmp_path / "nope.pem"))
