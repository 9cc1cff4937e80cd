"""Lease conformance: grant, minimum TTL, time-to-live with keys, keep-alive, revoke and expiry."""

from __future__ import annotations

import asyncio

import grpc
from aetcd import rpc

from clustertui.backend.etcd import EtcdClient, LeaseNotFound
from tests.kv.conftest import rpc_error


async def test_a_lease_shorter_than_the_minimum_is_granted_the_minimum(kv: EtcdClient) -> None:
    granted = await kv.leasestub.LeaseGrant(rpc.LeaseGrantRequest(TTL=0))
    # Both stores run with etcd's 50 ms heartbeat and 500 ms election timeout: a 1 s minimum.
    assert granted.TTL == 1
    assert granted.ID > 0
    await kv.leasestub.LeaseRevoke(rpc.LeaseRevokeRequest(ID=granted.ID))


async def test_time_to_live_lists_the_keys_on_the_lease(kv: EtcdClient, ns: bytes) -> None:
    lease = await kv.lease(30)
    await kv.put(ns + b"b", b"1", lease=lease)
    await kv.put(ns + b"a", b"2", lease=lease)
    info = await kv.leasestub.LeaseTimeToLive(rpc.LeaseTimeToLiveRequest(ID=lease.id, keys=True))
    assert info.grantedTTL == 30
    assert 28 <= info.TTL <= 30
    assert sorted(info.keys) == [ns + b"a", ns + b"b"]
    listed = await kv.leasestub.LeaseLeases(rpc.LeaseLeasesRequest())
    assert lease.id in [item.ID for item in listed.leases]
    await lease.revoke()


async def test_an_unknown_lease_has_ttl_minus_one(kv: EtcdClient) -> None:
    info = await kv.leasestub.LeaseTimeToLive(rpc.LeaseTimeToLiveRequest(ID=987654321))
    assert (info.ID, info.TTL) == (987654321, -1)


async def test_revoking_a_lease_deletes_its_keys_in_one_revision(kv: EtcdClient, ns: bytes) -> None:
    lease = await kv.lease(30)
    await kv.put(ns + b"a", b"1", lease=lease)
    before = (await kv.put(ns + b"b", b"2", lease=lease)).header.revision
    await kv.put(ns + b"free", b"3")
    revoked = await kv.leasestub.LeaseRevoke(rpc.LeaseRevokeRequest(ID=lease.id))
    assert revoked.header.revision == before + 2
    left = await kv.get_prefix(ns)
    assert [item.key for item in left] == [ns + b"free"]


async def test_revoking_or_using_an_unknown_lease_is_lease_not_found(
    kv: EtcdClient, ns: bytes
) -> None:
    expected = (grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found")
    assert await rpc_error(kv.leasestub.LeaseRevoke(rpc.LeaseRevokeRequest(ID=4242))) == expected
    put = kv.kvstub.Put(rpc.PutRequest(key=ns + b"k", value=b"v", lease=4242))
    assert await rpc_error(put) == expected
    try:
        await kv.revoke_lease(4242)
    except LeaseNotFound as error:
        assert "lease not found" in str(error)
    else:
        raise AssertionError("revoking an unknown lease succeeded")


async def test_granting_an_existing_lease_id_is_refused(kv: EtcdClient) -> None:
    granted = await kv.leasestub.LeaseGrant(rpc.LeaseGrantRequest(TTL=30))
    again = kv.leasestub.LeaseGrant(rpc.LeaseGrantRequest(ID=granted.ID, TTL=30))
    assert await rpc_error(again) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "etcdserver: lease already exists",
    )
    await kv.leasestub.LeaseRevoke(rpc.LeaseRevokeRequest(ID=granted.ID))


async def test_keep_alive_renews_the_lease_past_its_ttl(kv: EtcdClient, ns: bytes) -> None:
    lease = await kv.lease(2)
    await kv.put(ns + b"alive", b"1", lease=lease)
    for _ in range(6):
        answer = await lease.refresh()
        assert answer.TTL == 2
        await asyncio.sleep(0.5)
    assert await kv.get(ns + b"alive") is not None
    unknown = await kv.refresh_lease(55555)
    assert (unknown.ID, unknown.TTL) == (55555, 0)
    await lease.revoke()


async def test_keys_on_an_expired_lease_are_deleted_with_a_watch_event(
    kv: EtcdClient, ns: bytes
) -> None:
    lease = await kv.lease(1)
    put = await kv.put(ns + b"gone", b"1", lease=lease)
    # From the revision after the put, so an expiry before the watch starts is replayed.
    watch = await kv.watch(ns + b"gone", start_revision=put.header.revision + 1)
    event = await asyncio.wait_for(anext(watch.__aiter__()), 10)
    await watch.cancel()
    assert str(event.kind) == "DELETE"
    info = await kv.leasestub.LeaseTimeToLive(rpc.LeaseTimeToLiveRequest(ID=lease.id))
    assert info.TTL == -1
