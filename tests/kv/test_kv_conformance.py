"""KV conformance on every store: ranges, sorting, history, puts, deletes and transactions."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from aetcd import rpc

from clustertui.backend.etcd import EtcdClient
from clustertui.backend.keys import prefix_end
from tests.kv.conftest import rpc_error

RR = rpc.RangeRequest


async def _fill(kv: EtcdClient, ns: bytes, items: list[tuple[bytes, bytes]]) -> list[int]:
    revisions = []
    for key, value in items:
        revisions.append((await kv.put(ns + key, value)).header.revision)
    return revisions


def _keys(response: rpc.RangeResponse, ns: bytes) -> list[bytes]:
    return [kv.key[len(ns) :] for kv in response.kvs]


async def test_every_response_header_names_the_cluster_member_revision_and_term(
    kv: EtcdClient, ns: bytes
) -> None:
    put = await kv.kvstub.Put(rpc.PutRequest(key=ns + b"h", value=b"v"))
    got = await kv.kvstub.Range(RR(key=ns + b"h"))
    header = got.header
    assert header.cluster_id and header.member_id and header.raft_term
    assert header.revision == put.header.revision
    status = await kv.maintenancestub.Status(rpc.StatusRequest())
    assert status.leader == status.header.member_id == header.member_id
    members = await kv.clusterstub.MemberList(rpc.MemberListRequest())
    assert [m.ID for m in members.members] == [header.member_id]


async def test_a_prefix_range_with_limit_says_there_is_more_and_counts_all(
    kv: EtcdClient, ns: bytes
) -> None:
    await _fill(kv, ns, [(b"c", b"3"), (b"a", b"1"), (b"b", b"2"), (b"d", b"4")])
    response = await kv.kvstub.Range(RR(key=ns, range_end=prefix_end(ns), limit=2))
    assert _keys(response, ns) == [b"a", b"b"]
    assert response.more is True
    assert response.count == 4
    whole = await kv.kvstub.Range(RR(key=ns, range_end=prefix_end(ns), limit=4))
    assert whole.more is False


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"limit": 2}, (3, True, [b"b", b"c"])),
        ({"limit": 2, "keys_only": True}, (3, True, [b"b", b"c"])),
        ({"limit": 5}, (3, False, [b"b", b"c", b"d"])),
        ({"limit": 1, "sort_order": rpc.RangeRequest.ASCEND}, (3, True, [b"b"])),
        ({"count_only": True}, (3, False, [])),
        ({"count_only": True, "limit": 1}, (3, False, [])),  # a count reads no keys: no "more"
    ],
)
async def test_pages_and_counts_skip_deleted_keys_and_count_every_live_one(
    kv: EtcdClient, ns: bytes, options: dict[str, object], expected: tuple[int, bool, list[bytes]]
) -> None:
    await _fill(kv, ns, [(b"a", b"1"), (b"b", b"2"), (b"c", b"3"), (b"d", b"4")])
    await kv.delete(ns + b"a")
    await kv.put(ns + b"e", b"5")
    await kv.delete(ns + b"e")
    response = await kv.kvstub.Range(RR(key=ns, range_end=prefix_end(ns), **options))
    assert (response.count, response.more, _keys(response, ns)) == expected


async def test_count_only_and_keys_only_leave_out_what_they_say(kv: EtcdClient, ns: bytes) -> None:
    await _fill(kv, ns, [(b"a", b"1"), (b"b", b"2")])
    counted = await kv.kvstub.Range(RR(key=ns, range_end=prefix_end(ns), count_only=True))
    assert (counted.count, len(counted.kvs)) == (2, 0)
    keys = await kv.kvstub.Range(RR(key=ns, range_end=prefix_end(ns), keys_only=True))
    assert _keys(keys, ns) == [b"a", b"b"]
    assert [item.value for item in keys.kvs] == [b"", b""]
    assert keys.kvs[0].version == 1


async def test_a_range_end_of_zero_byte_reads_every_key_from_the_key_on(
    kv: EtcdClient, ns: bytes
) -> None:
    await _fill(kv, ns, [(b"a", b"1"), (b"b", b"2"), (b"c", b"3")])
    response = await kv.kvstub.Range(RR(key=ns + b"b", range_end=b"\0"))
    assert _keys(response, ns)[:2] == [b"b", b"c"]
    assert all(item.key >= ns + b"b" for item in response.kvs)


async def test_a_range_whose_end_is_before_its_key_is_empty(kv: EtcdClient, ns: bytes) -> None:
    await _fill(kv, ns, [(b"a", b"1"), (b"b", b"2")])
    response = await kv.kvstub.Range(RR(key=ns + b"b", range_end=ns + b"a"))
    assert (list(response.kvs), response.count) == ([], 0)


@pytest.mark.parametrize(
    "target, order, expected",
    [
        (RR.KEY, RR.DESCEND, [b"c", b"b", b"a"]),
        (RR.VALUE, RR.ASCEND, [b"b", b"c", b"a"]),
        (RR.VALUE, RR.DESCEND, [b"a", b"c", b"b"]),
        (RR.CREATE, RR.ASCEND, [b"b", b"a", b"c"]),
        (RR.CREATE, RR.NONE, [b"b", b"a", b"c"]),
        (RR.MOD, RR.DESCEND, [b"a", b"c", b"b"]),
        (RR.VERSION, RR.DESCEND, [b"a", b"b", b"c"]),
    ],
)
async def test_ranges_sort_by_each_target_in_each_order(
    kv: EtcdClient, ns: bytes, target: int, order: int, expected: list[bytes]
) -> None:
    await _fill(kv, ns, [(b"b", b"1"), (b"a", b"8"), (b"c", b"5"), (b"a", b"9")])
    response = await kv.kvstub.Range(
        RR(key=ns, range_end=prefix_end(ns), sort_target=target, sort_order=order)
    )
    assert _keys(response, ns) == expected


async def test_a_sorted_range_with_limit_takes_the_first_after_sorting(
    kv: EtcdClient, ns: bytes
) -> None:
    await _fill(kv, ns, [(b"a", b"1"), (b"b", b"2"), (b"c", b"3")])
    response = await kv.kvstub.Range(
        RR(key=ns, range_end=prefix_end(ns), limit=1, sort_target=RR.KEY, sort_order=RR.DESCEND)
    )
    assert (_keys(response, ns), response.more, response.count) == ([b"c"], True, 3)


async def test_min_and_max_revisions_filter_the_range(kv: EtcdClient, ns: bytes) -> None:
    revs = await _fill(kv, ns, [(b"a", b"1"), (b"b", b"2"), (b"c", b"3")])
    await kv.put(ns + b"a", b"again")
    by_mod = await kv.kvstub.Range(
        RR(key=ns, range_end=prefix_end(ns), min_mod_revision=revs[1], max_mod_revision=revs[2])
    )
    assert _keys(by_mod, ns) == [b"b", b"c"]
    by_create = await kv.kvstub.Range(
        RR(key=ns, range_end=prefix_end(ns), max_create_revision=revs[1])
    )
    assert _keys(by_create, ns) == [b"a", b"b"]


async def test_a_read_at_an_old_revision_sees_the_store_as_it_was(
    kv: EtcdClient, ns: bytes
) -> None:
    first, second = await _fill(kv, ns, [(b"k", b"1"), (b"k", b"2")])
    await kv.delete(ns + b"k")
    old = await kv.kvstub.Range(RR(key=ns + b"k", revision=first))
    assert [(i.value, i.version, i.mod_revision) for i in old.kvs] == [(b"1", 1, first)]
    newer = await kv.kvstub.Range(RR(key=ns + b"k", revision=second))
    assert [(i.value, i.version, i.create_revision) for i in newer.kvs] == [(b"2", 2, first)]
    now = await kv.kvstub.Range(RR(key=ns + b"k"))
    assert list(now.kvs) == []
    assert old.header.revision == now.header.revision


async def test_a_read_at_a_future_revision_is_refused(kv: EtcdClient, ns: bytes) -> None:
    current = (await kv.put(ns + b"f", b"1")).header.revision
    code, message = await rpc_error(kv.kvstub.Range(RR(key=ns + b"f", revision=current + 1000)))
    assert code == grpc.StatusCode.OUT_OF_RANGE
    assert message == "etcdserver: mvcc: required revision is a future revision"


async def test_reads_below_the_compaction_point_are_refused_but_at_it_work(
    fresh_kv: EtcdClient,
) -> None:
    kv = fresh_kv
    first = (await kv.put(b"k", b"1")).header.revision
    second = (await kv.put(b"k", b"2")).header.revision
    await kv.put(b"k", b"3")
    await kv.kvstub.Compact(rpc.CompactionRequest(revision=second))
    code, message = await rpc_error(kv.kvstub.Range(RR(key=b"k", revision=first)))
    assert (code, message) == (
        grpc.StatusCode.OUT_OF_RANGE,
        "etcdserver: mvcc: required revision has been compacted",
    )
    at = await kv.kvstub.Range(RR(key=b"k", revision=second))
    assert [i.value for i in at.kvs] == [b"2"]
    again = await rpc_error(kv.kvstub.Compact(rpc.CompactionRequest(revision=second)))
    assert again == (code, message)
    future = await rpc_error(kv.kvstub.Compact(rpc.CompactionRequest(revision=second + 100)))
    assert future[1] == "etcdserver: mvcc: required revision is a future revision"


async def test_put_returns_the_previous_value_only_when_asked(kv: EtcdClient, ns: bytes) -> None:
    key = ns + b"p"
    first = await kv.kvstub.Put(rpc.PutRequest(key=key, value=b"1", prev_kv=True))
    assert not first.HasField("prev_kv")
    second = await kv.kvstub.Put(rpc.PutRequest(key=key, value=b"2", prev_kv=True))
    assert (second.prev_kv.value, second.prev_kv.version) == (b"1", 1)
    third = await kv.kvstub.Put(rpc.PutRequest(key=key, value=b"3"))
    assert not third.HasField("prev_kv")
    assert third.header.revision == second.header.revision + 1


async def test_ignore_value_and_ignore_lease_keep_what_the_key_had(
    kv: EtcdClient, ns: bytes
) -> None:
    key = ns + b"i"
    lease = await kv.leasestub.LeaseGrant(rpc.LeaseGrantRequest(TTL=60))
    await kv.kvstub.Put(rpc.PutRequest(key=key, value=b"kept", lease=lease.ID))
    await kv.kvstub.Put(rpc.PutRequest(key=key, ignore_value=True, lease=lease.ID))
    await kv.kvstub.Put(rpc.PutRequest(key=key, value=b"new", ignore_lease=True))
    got = (await kv.kvstub.Range(RR(key=key))).kvs[0]
    assert (got.value, got.lease, got.version) == (b"new", lease.ID, 3)
    code, message = await rpc_error(
        kv.kvstub.Put(rpc.PutRequest(key=ns + b"absent", ignore_value=True))
    )
    assert (code, message) == (grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: key not found")
    await kv.leasestub.LeaseRevoke(rpc.LeaseRevokeRequest(ID=lease.ID))


async def test_delete_range_counts_and_returns_what_it_deleted(kv: EtcdClient, ns: bytes) -> None:
    await _fill(kv, ns, [(b"a", b"1"), (b"b", b"2"), (b"c", b"3")])
    before = await kv.current_revision()
    response = await kv.kvstub.DeleteRange(
        rpc.DeleteRangeRequest(key=ns + b"a", range_end=ns + b"c", prev_kv=True)
    )
    assert response.deleted == 2
    assert [i.value for i in response.prev_kvs] == [b"1", b"2"]
    assert response.header.revision == before + 1
    nothing = await kv.kvstub.DeleteRange(rpc.DeleteRangeRequest(key=ns + b"zz"))
    assert nothing.deleted == 0
    assert nothing.header.revision == response.header.revision


async def test_txn_compares_value_version_create_mod_and_lease(kv: EtcdClient, ns: bytes) -> None:
    key = ns + b"t"
    put = await kv.put(key, b"v")
    rev = put.header.revision
    C = rpc.Compare
    absent = ns + b"none"
    cases = [
        (C(key=key, target=C.VALUE, result=C.EQUAL, value=b"v"), True),
        (C(key=key, target=C.VALUE, result=C.GREATER, value=b"a"), True),
        (C(key=key, target=C.VERSION, result=C.EQUAL, version=2), False),
        (C(key=key, target=C.CREATE, result=C.EQUAL, create_revision=rev), True),
        (C(key=key, target=C.MOD, result=C.LESS, mod_revision=rev), False),
        (C(key=key, target=C.LEASE, result=C.EQUAL, lease=0), True),
        (C(key=key, target=C.VERSION, result=C.NOT_EQUAL, version=1), False),
        (C(key=absent, target=C.CREATE, result=C.EQUAL, create_revision=0), True),
        (C(key=absent, target=C.VALUE, result=C.EQUAL, value=b""), False),
        (C(key=ns, range_end=prefix_end(ns), target=C.VERSION, result=C.GREATER), True),
    ]
    results = []
    for compare, _expected in cases:
        response = await kv.kvstub.Txn(rpc.TxnRequest(compare=[compare]))
        results.append(response.succeeded)
    assert results == [expected for _compare, expected in cases]


async def test_txn_applies_one_branch_atomically_at_one_revision(kv: EtcdClient, ns: bytes) -> None:
    await kv.put(ns + b"x", b"0")
    before = await kv.current_revision()
    request = rpc.TxnRequest(
        compare=[rpc.Compare(key=ns + b"x", target=rpc.Compare.VALUE, value=b"0")],
        success=[
            rpc.RequestOp(request_put=rpc.PutRequest(key=ns + b"a", value=b"1")),
            rpc.RequestOp(request_put=rpc.PutRequest(key=ns + b"b", value=b"2")),
            rpc.RequestOp(request_range=rpc.RangeRequest(key=ns + b"a")),
        ],
        failure=[rpc.RequestOp(request_put=rpc.PutRequest(key=ns + b"c", value=b"3"))],
    )
    response = await kv.kvstub.Txn(request)
    assert response.succeeded is True
    assert response.header.revision == before + 1
    assert [i.value for i in response.responses[2].response_range.kvs] == [b"1"]
    found = await kv.kvstub.Range(RR(key=ns, range_end=prefix_end(ns)))
    assert {(i.key[len(ns) :], i.mod_revision) for i in found.kvs} == {
        (b"a", before + 1),
        (b"b", before + 1),
        (b"x", before),
    }


async def test_a_read_only_txn_does_not_take_a_revision(kv: EtcdClient, ns: bytes) -> None:
    before = (await kv.put(ns + b"r", b"1")).header.revision
    response = await kv.kvstub.Txn(
        rpc.TxnRequest(success=[rpc.RequestOp(request_range=rpc.RangeRequest(key=ns + b"r"))])
    )
    assert response.header.revision == before
    assert [i.value for i in response.responses[0].response_range.kvs] == [b"1"]


async def test_nested_txns_take_the_branch_their_own_compares_choose(
    kv: EtcdClient, ns: bytes
) -> None:
    inner = rpc.TxnRequest(
        compare=[rpc.Compare(key=ns + b"missing", target=rpc.Compare.VERSION, version=0)],
        success=[rpc.RequestOp(request_put=rpc.PutRequest(key=ns + b"inner", value=b"yes"))],
        failure=[rpc.RequestOp(request_put=rpc.PutRequest(key=ns + b"inner", value=b"no"))],
    )
    outer = rpc.TxnRequest(
        success=[
            rpc.RequestOp(request_put=rpc.PutRequest(key=ns + b"outer", value=b"1")),
            rpc.RequestOp(request_txn=inner),
        ]
    )
    response = await kv.kvstub.Txn(outer)
    assert response.succeeded is True
    assert response.responses[1].response_txn.succeeded is True
    got = await kv.get(ns + b"inner")
    assert got is not None and got.value == b"yes"


async def test_a_txn_that_fails_a_check_changes_nothing(kv: EtcdClient, ns: bytes) -> None:
    before = await kv.current_revision()
    request = rpc.TxnRequest(
        success=[
            rpc.RequestOp(request_put=rpc.PutRequest(key=ns + b"ok", value=b"1")),
            rpc.RequestOp(request_put=rpc.PutRequest(key=ns + b"bad", value=b"1", lease=12345)),
        ]
    )
    code, message = await rpc_error(kv.kvstub.Txn(request))
    assert (code, message) == (grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found")
    assert await kv.get(ns + b"ok") is None
    assert await kv.current_revision() == before


async def test_compaction_and_defrag_give_the_space_of_old_versions_back(
    fresh_kv: EtcdClient,
) -> None:
    kv = fresh_kv
    for i in range(100):
        last = await kv.put(b"big", b"%03d" % i + b"x" * 20_000)
    # etcd commits its backend in batches (every 100 ms): its size shows the 2 MB of versions
    # only after the next commit.
    for _ in range(200):
        before = await kv.maintenancestub.Status(rpc.StatusRequest())
        if before.dbSize >= 1_000_000:
            break
        await asyncio.sleep(0.05)
    await kv.kvstub.Compact(rpc.CompactionRequest(revision=last.header.revision, physical=True))
    await kv.maintenancestub.Defragment(rpc.DefragmentRequest())
    after = await kv.maintenancestub.Status(rpc.StatusRequest())
    assert after.dbSize < before.dbSize / 2
    got = await kv.get(b"big")
    assert got is not None and got.value.startswith(b"099")


async def test_authenticate_answers_that_auth_is_not_enabled(kv: EtcdClient) -> None:
    call = rpc.AuthStub(kv.channel).Authenticate(rpc.AuthenticateRequest(name="u", password="p"))
    assert await rpc_error(call) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "etcdserver: authentication is not enabled",
    )
