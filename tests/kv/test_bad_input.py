"""Bad input gets etcd's own error, and the store keeps serving and loses nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from aetcd import rpc

from clustertui.backend.etcd import EtcdClient, NoSpace, make_client
from clustertui.backend.keys import prefix_end
from tests.harness.bundled import start_bundled
from tests.harness.etcd import EtcdMember
from tests.harness.stores import RunningStore
from tests.kv.conftest import rpc_error

INVALID = grpc.StatusCode.INVALID_ARGUMENT
EMPTY_KEY = (INVALID, "etcdserver: key is not provided")


def _put(key: bytes, value: bytes = b"v", **options: object) -> rpc.RequestOp:
    return rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value, **options))


async def test_an_empty_key_is_refused_by_every_request(kv: EtcdClient) -> None:
    assert await rpc_error(kv.kvstub.Put(rpc.PutRequest(key=b"", value=b"v"))) == EMPTY_KEY
    assert await rpc_error(kv.kvstub.Range(rpc.RangeRequest(key=b""))) == EMPTY_KEY
    assert await rpc_error(kv.kvstub.DeleteRange(rpc.DeleteRangeRequest(key=b""))) == EMPTY_KEY
    txn = rpc.TxnRequest(success=[_put(b"")])
    assert await rpc_error(kv.kvstub.Txn(txn)) == EMPTY_KEY


async def test_a_value_over_the_request_limit_is_request_too_large(
    kv: EtcdClient, ns: bytes
) -> None:
    await kv.put(ns + b"kept", b"before")
    big = b"x" * (1536 * 1024 + 1)
    code, message = await rpc_error(kv.kvstub.Put(rpc.PutRequest(key=ns + b"big", value=big)))
    assert (code, message) == (INVALID, "etcdserver: request is too large")
    huge = b"x" * (3 * 1024 * 1024)
    code, _message = await rpc_error(kv.kvstub.Put(rpc.PutRequest(key=ns + b"big", value=huge)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    got = await kv.get(ns + b"kept")
    assert got is not None and got.value == b"before"
    assert await kv.get(ns + b"big") is None


async def test_a_txn_with_too_many_operations_is_refused(kv: EtcdClient, ns: bytes) -> None:
    txn = rpc.TxnRequest(success=[_put(ns + str(i).encode()) for i in range(129)])
    assert await rpc_error(kv.kvstub.Txn(txn)) == (
        INVALID,
        "etcdserver: too many operations in txn request",
    )
    assert list(await kv.get_prefix(ns)) == []


@pytest.mark.parametrize(
    "ops",
    [
        pytest.param([_put(b"k"), _put(b"k")], id="two puts"),
        pytest.param(
            [
                _put(b"k"),
                rpc.RequestOp(
                    request_delete_range=rpc.DeleteRangeRequest(key=b"a", range_end=b"z")
                ),
            ],
            id="put inside a deleted range",
        ),
        pytest.param(
            [_put(b"k"), rpc.RequestOp(request_txn=rpc.TxnRequest(success=[_put(b"k")]))],
            id="put in a nested txn too",
        ),
    ],
)
async def test_a_txn_writing_one_key_twice_is_refused(
    kv: EtcdClient, ops: list[rpc.RequestOp]
) -> None:
    txn = rpc.TxnRequest(success=ops)
    assert await rpc_error(kv.kvstub.Txn(txn)) == (
        INVALID,
        "etcdserver: duplicate key given in txn request",
    )


async def test_then_and_else_may_write_the_same_key(kv: EtcdClient, ns: bytes) -> None:
    inner = rpc.TxnRequest(success=[_put(ns + b"k", b"then")], failure=[_put(ns + b"k", b"else")])
    response = await kv.kvstub.Txn(rpc.TxnRequest(success=[rpc.RequestOp(request_txn=inner)]))
    assert response.succeeded is True


async def test_contradictory_put_flags_are_refused(kv: EtcdClient, ns: bytes) -> None:
    value = kv.kvstub.Put(rpc.PutRequest(key=ns + b"k", value=b"v", ignore_value=True))
    assert await rpc_error(value) == (INVALID, "etcdserver: value is provided")
    lease = kv.kvstub.Put(rpc.PutRequest(key=ns + b"k", lease=5, ignore_lease=True))
    assert await rpc_error(lease) == (INVALID, "etcdserver: lease is provided")


async def test_a_lease_ttl_beyond_etcds_maximum_is_refused(kv: EtcdClient) -> None:
    grant = kv.leasestub.LeaseGrant(rpc.LeaseGrantRequest(TTL=9_000_000_001))
    assert await rpc_error(grant) == (
        grpc.StatusCode.OUT_OF_RANGE,
        "etcdserver: too large lease TTL",
    )


async def test_an_unknown_sort_order_leaves_key_order(kv: EtcdClient, ns: bytes) -> None:
    await kv.put(ns + b"b", b"1")
    await kv.put(ns + b"a", b"2")
    request = rpc.RangeRequest(key=ns, range_end=prefix_end(ns), sort_order=7)
    response = await kv.kvstub.Range(request)
    assert [item.key for item in response.kvs] == [ns + b"a", ns + b"b"]


async def test_the_nospace_alarm_stops_writes_until_it_is_disarmed(fresh_kv: EtcdClient) -> None:
    kv = fresh_kv
    await kv.put(b"before", b"1")
    nospace = rpc.AlarmType.Value("NOSPACE")
    await kv.maintenancestub.Alarm(
        rpc.AlarmRequest(action=rpc.AlarmRequest.ACTIVATE, alarm=nospace)
    )
    listed = await kv.maintenancestub.Alarm(rpc.AlarmRequest(action=rpc.AlarmRequest.GET))
    assert [a.alarm for a in listed.alarms] == [nospace]
    with pytest.raises(NoSpace):
        await kv.put(b"after", b"2")
    code, message = await rpc_error(kv.kvstub.Put(rpc.PutRequest(key=b"after", value=b"2")))
    assert (code, message) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "etcdserver: mvcc: database space exceeded",
    )
    got = await kv.get(b"before")
    assert got is not None and got.value == b"1"
    assert (await kv.kvstub.DeleteRange(rpc.DeleteRangeRequest(key=b"before"))).deleted == 1
    await kv.maintenancestub.Alarm(
        rpc.AlarmRequest(action=rpc.AlarmRequest.DEACTIVATE, alarm=nospace)
    )
    await kv.put(b"after", b"2")
    assert await kv.get(b"after") is not None


def _small_quota_store(kind: str, root: Path) -> RunningStore:
    quota = ["--quota-backend-bytes", str(1024 * 1024)]
    if kind == "bundled":
        return start_bundled(root, quota)
    return EtcdMember(name="quota", data_dir=root / "quota", extra=quota).start().wait_ready()


@pytest.fixture(params=["etcd", "bundled"])
def small_quota_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunningStore]:
    store = _small_quota_store(request.param, tmp_path)
    yield store
    store.stop()


@pytest.mark.slow
async def test_filling_the_quota_raises_nospace_and_keeps_what_was_written(
    small_quota_store: RunningStore,
) -> None:
    kv = make_client(small_quota_store.url)
    written = []
    with pytest.raises(NoSpace):
        for i in range(100):
            await kv.put(b"fill/%03d" % i, b"x" * 100_000)
            written.append(b"fill/%03d" % i)
    assert 3 <= len(written) < 100
    found = [item.key for item in await kv.get_prefix(b"fill/")]
    # Every acknowledged write is kept. The refused one may be there too: under load a
    # client retry can find that its first attempt went in before the quota ran out.
    assert found[: len(written)] == written
    assert len(found) - len(written) <= 1
    status = await kv.maintenancestub.Status(rpc.StatusRequest())
    assert any("NOSPACE" in error for error in status.errors)
    await kv.close()
