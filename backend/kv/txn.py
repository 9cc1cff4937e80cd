"""Provides etcd's transactions: Range, Put, DeleteRange and Txn over the key space and the
leases its keys are attached to (etcd's ``server/etcdserver/txn``).

What is here reads and changes the in-memory state only: the checks of a request, the reads,
and the writes made through a ``Writer``, whose finished batch the caller logs. Durability,
quota and response headers beyond the revision are the ``Store``'s (backend/kv/apply.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, TypeVar

from aetcd import rpc

from clustertui.backend.kv import errors
from clustertui.backend.kv.lease import Lessor
from clustertui.backend.kv.mvcc import FROM_KEY, Batch, KeySpace, Writer

if TYPE_CHECKING:
    from _typeshed import SupportsRichComparison

RANGE_CHUNK_KEYS = 10_000
"""A range over more keys than this is read in chunks of this many, yielding between them."""

_ASCEND = rpc.RangeRequest.ASCEND
_DESCEND = rpc.RangeRequest.DESCEND
_NONE = rpc.RangeRequest.NONE
_SORT_KEYS: dict[int, Callable[[rpc.KeyValue], SupportsRichComparison]] = {
    rpc.RangeRequest.KEY: lambda kv: kv.key,
    rpc.RangeRequest.VERSION: lambda kv: kv.version,
    rpc.RangeRequest.CREATE: lambda kv: kv.create_revision,
    rpc.RangeRequest.MOD: lambda kv: kv.mod_revision,
    rpc.RangeRequest.VALUE: lambda kv: kv.value,
}

_Ordered = TypeVar("_Ordered", bytes, int)
"""What a Compare compares: a value, or a version, revision or lease."""

Header = Callable[[int], rpc.ResponseHeader]
"""The response header at a revision (``Store.header``)."""


# -- checks made before the state is looked at (etcd's v3rpc checks) -------------------------


def check_range_request(request: rpc.RangeRequest) -> None:
    if not request.key:
        raise errors.EmptyKey()


def check_put_request(request: rpc.PutRequest) -> None:
    if not request.key:
        raise errors.EmptyKey()
    if request.ignore_value and request.value:
        raise errors.ValueProvided()
    if request.ignore_lease and request.lease:
        raise errors.LeaseProvided()


def check_delete_request(request: rpc.DeleteRangeRequest) -> None:
    if not request.key:
        raise errors.EmptyKey()


def check_txn_request(request: rpc.TxnRequest, max_txn_ops: int) -> None:
    if max(len(request.compare), len(request.success), len(request.failure)) > max_txn_ops:
        raise errors.TooManyOps()
    for compare in request.compare:
        if not compare.key:
            raise errors.EmptyKey()
    for op in (*request.success, *request.failure):
        which = op.WhichOneof("request")
        if which == "request_range":
            check_range_request(op.request_range)
        elif which == "request_put":
            check_put_request(op.request_put)
        elif which == "request_delete_range":
            check_delete_request(op.request_delete_range)
        elif which == "request_txn":
            check_txn_request(op.request_txn, max_txn_ops)


def put_cost(request: rpc.TxnRequest, steps: Iterator[bool]) -> int:
    """The bytes the puts on the branches taken add to the key space, for the quota."""
    succeeded = next(steps)
    cost = 0
    for op in request.success if succeeded else request.failure:
        which = op.WhichOneof("request")
        if which == "request_put":
            cost += len(op.request_put.key) + len(op.request_put.value) + 48
        elif which == "request_txn":
            cost += put_cost(op.request_txn, steps)
    return cost


class Txns:
    """Range, Put, DeleteRange and Txn over one key space and its lessor."""

    def __init__(self, space: KeySpace, lessor: Lessor, header: Header) -> None:
        self.space = space
        self.lessor = lessor
        self.header = header

    # -- Range ---------------------------------------------------------------------------

    def range(self, request: rpc.RangeRequest, revision: int | None = None) -> rpc.RangeResponse:
        check_range_request(request)
        space = self.space
        at = space.check_revision(request.revision)
        current = space.revision if revision is None else revision
        key = request.key
        end = request.range_end
        if not end:
            # The common case: one key at the newest revision.
            if at == space.revision:
                kv = space.get(key)
                found = [] if kv is None else [kv]
            else:
                history = space.index.get(key)
                kv = None if history is None else history.at(at)
                found = [] if kv is None else [kv]
        elif self._pages(request, at):
            # A page or a count of the newest revision in key order, as the console and
            # etcdctl ask for it: counted from the indexes, and only the page is read.
            return self._page(request, key, end, current)
        else:
            found = space.range(key, end, at)
        return self._respond(request, found, current)

    def _respond(
        self,
        request: rpc.RangeRequest,
        found: list[rpc.KeyValue],
        current: int,
        copy: bool = True,
    ) -> rpc.RangeResponse:
        """The response to a range that found ``found``: filtered, sorted, limited. Without
        ``copy`` the records are left for the caller to add, and ``found`` is cut to them."""
        count = len(found)
        if (
            request.min_mod_revision
            or request.max_mod_revision
            or request.min_create_revision
            or request.max_create_revision
        ):
            found[:] = _filter_revisions(found, request)
        order = request.sort_order
        target = request.sort_target
        if target != rpc.RangeRequest.KEY and order == _NONE:
            order = _ASCEND
        # As in etcd 3.4, an unknown order means unsorted and an unknown target means key.
        if order == _DESCEND or (order == _ASCEND and target != rpc.RangeRequest.KEY):
            by = _SORT_KEYS.get(target, _SORT_KEYS[rpc.RangeRequest.KEY])
            found.sort(key=by, reverse=order == _DESCEND)
        more = False
        limit = request.limit
        if limit > 0 and len(found) > limit:
            del found[limit:]
            more = not request.count_only  # etcd reads no keys for a count, so none are left
        response = rpc.RangeResponse(header=self.header(current), more=more, count=count)
        if request.count_only or not copy:
            return response
        if request.keys_only:
            response.kvs.extend(_without_value(kv) for kv in found)
        else:
            response.kvs.extend(found)
        return response

    async def range_yielding(self, request: rpc.RangeRequest) -> rpc.RangeResponse:
        """``range``, but a range over many keys is read and copied in chunks that yield to
        the event loop between them, so one big read cannot hold every other client.

        The read stays at the revision it started at: later chunks read each key's history
        at that revision (writes made meanwhile are not seen), and a compaction past it in
        the meantime fails the read as etcd fails a read of a compacted revision.
        """
        space = self.space
        end = request.range_end
        if not end or not request.key:
            return self.range(request)
        at = space.check_revision(request.revision)
        if (end != FROM_KEY and end <= request.key) or self._pages(request, at):
            return self.range(request)
        keys = space.keys_in(request.key, end)
        if len(keys) <= RANGE_CHUNK_KEYS:
            return self.range(request)
        current = space.revision
        index = space.index
        found: list[rpc.KeyValue] = []
        for first in range(0, len(keys), RANGE_CHUNK_KEYS):
            if first:
                await asyncio.sleep(0)
                if space.compacted > at:
                    raise errors.Compacted()
            for k in keys[first : first + RANGE_CHUNK_KEYS]:
                history = index.get(k)
                rec = None if history is None else history.at(at)
                if rec is not None:
                    found.append(rec)
        response = self._respond(request, found, current, copy=False)
        kvs = response.kvs
        if request.count_only:
            return response
        for first in range(0, len(found), RANGE_CHUNK_KEYS):
            if first:
                await asyncio.sleep(0)
            part = found[first : first + RANGE_CHUNK_KEYS]
            if request.keys_only:
                kvs.extend(_without_value(kv) for kv in part)
            else:
                kvs.extend(part)
        return response

    def _pages(self, request: rpc.RangeRequest, at: int) -> bool:
        """Whether a range is answered from the live-key index (see ``range``)."""
        return (
            at == self.space.revision
            and (request.limit > 0 or request.count_only)
            and request.sort_order in (_NONE, _ASCEND)
            and request.sort_target == rpc.RangeRequest.KEY
            and not (
                request.min_mod_revision
                or request.max_mod_revision
                or request.min_create_revision
                or request.max_create_revision
            )
        )

    def _page(
        self, request: rpc.RangeRequest, key: bytes, end: bytes, current: int
    ) -> rpc.RangeResponse:
        space = self.space
        count = space.count_live(key, end)
        limit = request.limit
        response = rpc.RangeResponse(
            header=self.header(current),
            more=0 < limit < count and not request.count_only,
            count=count,
        )
        if request.count_only:
            return response
        found = space.first_live(key, end, limit)
        if request.keys_only:
            response.kvs.extend(_without_value(kv) for kv in found)
        else:
            response.kvs.extend(found)
        return response

    # -- Put and DeleteRange -------------------------------------------------------------

    def put(self, request: rpc.PutRequest) -> tuple[Batch, rpc.KeyValue | None]:
        """Apply a checked Put; the batch to log, and the key's previous record."""
        self._check_put_apply(request)
        writer = Writer(self.space)
        prev = self._apply_put(writer, request)
        batch = writer.finish()
        assert batch is not None
        return batch, prev

    def delete_range(
        self, request: rpc.DeleteRangeRequest
    ) -> tuple[Batch | None, list[rpc.KeyValue]]:
        """Apply a checked DeleteRange; the batch to log (None: nothing was deleted), and
        the records deleted."""
        writer = Writer(self.space)
        deleted = self._apply_delete(writer, request.key, request.range_end)
        return writer.finish(), deleted

    def revoke(self, lease_id: int) -> Batch | None:
        """Revoke a lease and delete its keys; the batch to log, if it had keys."""
        lease = self.lessor.revoke(lease_id)
        writer = Writer(self.space)
        for key in sorted(lease.keys):
            writer.delete(key, b"")
        return writer.finish()

    def _check_put_apply(self, request: rpc.PutRequest) -> None:
        """Checks that depend on the state, made before anything in the request applies."""
        if (request.ignore_value or request.ignore_lease) and self.space.get(request.key) is None:
            raise errors.KeyNotFound()
        if request.lease and request.lease not in self.lessor.leases:
            raise errors.LeaseNotFound()

    def _apply_put(self, writer: Writer, request: rpc.PutRequest) -> rpc.KeyValue | None:
        key = request.key
        value = request.value
        lease = request.lease
        if request.ignore_value or request.ignore_lease:
            current = self.space.get(key)
            assert current is not None
            if request.ignore_value:
                value = current.value
            if request.ignore_lease:
                lease = current.lease
        _rec, prev = writer.put(key, value, lease)
        old_lease = prev.lease if prev is not None else 0
        if old_lease != lease:
            if old_lease:
                self.lessor.detach(old_lease, key)
            if lease:
                self.lessor.attach(lease, key)
        return prev

    def _apply_delete(self, writer: Writer, key: bytes, end: bytes) -> list[rpc.KeyValue]:
        deleted = writer.delete(key, end)
        for kv in deleted:
            if kv.lease:
                self.lessor.detach(kv.lease, kv.key)
        return deleted

    # -- Txn -----------------------------------------------------------------------------

    def prepare(self, request: rpc.TxnRequest) -> list[bool]:
        """The checks of a Txn that depend on the state; returns the branch taken at every
        level, depth first: etcd decides them all up front, against the state before it."""
        _check_intervals(list(request.success))
        _check_intervals(list(request.failure))
        path = self._choose(request)
        self._check_txn_apply(request, iter(path))
        return path

    def txn(
        self, request: rpc.TxnRequest, path: list[bool]
    ) -> tuple[rpc.TxnResponse, Batch | None]:
        """Apply a prepared Txn along ``path``; the response (its own header left for the
        caller) and the batch to log, if it wrote."""
        writer = Writer(self.space)
        response = rpc.TxnResponse()
        self._apply_txn(writer, request, iter(path), response)
        return response, writer.finish()

    def _choose(self, request: rpc.TxnRequest) -> list[bool]:
        """Evaluate every compare up front, nested ones too, against the state before the txn."""
        path: list[bool] = []
        succeeded = all(self._compare(compare) for compare in request.compare)
        path.append(succeeded)
        for op in request.success if succeeded else request.failure:
            if op.WhichOneof("request") == "request_txn":
                path.extend(self._choose(op.request_txn))
        return path

    def _check_txn_apply(self, request: rpc.TxnRequest, steps: Iterator[bool]) -> None:
        succeeded = next(steps)
        for op in request.success if succeeded else request.failure:
            which = op.WhichOneof("request")
            if which == "request_put":
                self._check_put_apply(op.request_put)
            elif which == "request_range":
                self.space.check_revision(op.request_range.revision)
            elif which == "request_txn":
                self._check_txn_apply(op.request_txn, steps)

    def _apply_txn(
        self,
        writer: Writer,
        request: rpc.TxnRequest,
        steps: Iterator[bool],
        response: rpc.TxnResponse,
    ) -> None:
        succeeded = next(steps)
        response.succeeded = succeeded
        revision = writer.batch.revision
        for op in request.success if succeeded else request.failure:
            which = op.WhichOneof("request")
            out = response.responses.add()
            if which == "request_range":
                result = out.response_range
                result.CopyFrom(self.range(op.request_range, self.space.revision))
                # etcd's responses inside a Txn carry only the revision in their header.
                result.header.Clear()
                result.header.revision = self.space.revision
            elif which == "request_put":
                put = op.request_put
                prev = self._apply_put(writer, put)
                result = out.response_put
                result.header.revision = revision
                if put.prev_kv and prev is not None:
                    result.prev_kv.CopyFrom(prev)
            elif which == "request_delete_range":
                delete = op.request_delete_range
                deleted = self._apply_delete(writer, delete.key, delete.range_end)
                result = out.response_delete_range
                result.header.revision = revision
                result.deleted = len(deleted)
                if delete.prev_kv:
                    result.prev_kvs.extend(deleted)
            elif which == "request_txn":
                self._apply_txn(writer, op.request_txn, steps, out.response_txn)

    def _compare(self, compare: rpc.Compare) -> bool:
        space = self.space
        if compare.range_end:
            found = space.range(compare.key, compare.range_end, space.revision)
        else:
            kv = space.get(compare.key)
            found = [] if kv is None else [kv]
        target = compare.target
        if not found:
            if target == rpc.Compare.VALUE:
                return False
            return _compare_kv(compare, rpc.KeyValue())
        return all(_compare_kv(compare, kv) for kv in found)


def _without_value(kv: rpc.KeyValue) -> rpc.KeyValue:
    return rpc.KeyValue(
        key=kv.key,
        create_revision=kv.create_revision,
        mod_revision=kv.mod_revision,
        version=kv.version,
        lease=kv.lease,
    )


def _filter_revisions(found: list[rpc.KeyValue], request: rpc.RangeRequest) -> list[rpc.KeyValue]:
    lo_mod, hi_mod = request.min_mod_revision, request.max_mod_revision
    lo_create, hi_create = request.min_create_revision, request.max_create_revision
    return [
        kv
        for kv in found
        if (not lo_mod or kv.mod_revision >= lo_mod)
        and (not hi_mod or kv.mod_revision <= hi_mod)
        and (not lo_create or kv.create_revision >= lo_create)
        and (not hi_create or kv.create_revision <= hi_create)
    ]


def _compare_kv(compare: rpc.Compare, kv: rpc.KeyValue) -> bool:
    target = compare.target
    result: int = compare.result
    if target == rpc.Compare.VALUE:
        value: bytes = kv.value
        return _holds(result, value, compare.value)
    if target == rpc.Compare.VERSION:
        ours: int = kv.version
        theirs: int = compare.version
    elif target == rpc.Compare.CREATE:
        ours, theirs = kv.create_revision, compare.create_revision
    elif target == rpc.Compare.MOD:
        ours, theirs = kv.mod_revision, compare.mod_revision
    else:
        ours, theirs = kv.lease, compare.lease
    return _holds(result, ours, theirs)


def _holds(result: int, ours: _Ordered, theirs: _Ordered) -> bool:
    """Whether a Compare's ``result`` (EQUAL, NOT_EQUAL, GREATER or LESS) holds."""
    if result == rpc.Compare.EQUAL:
        return ours == theirs
    if result == rpc.Compare.NOT_EQUAL:
        return ours != theirs
    if result == rpc.Compare.GREATER:
        return ours > theirs
    return ours < theirs


def _in_interval(key: bytes, start: bytes, end: bytes) -> bool:
    if not end:
        return key == start
    if end == FROM_KEY:
        return key >= start
    return start <= key < end


def _check_intervals(ops: list[rpc.RequestOp]) -> tuple[set[bytes], list[tuple[bytes, bytes]]]:
    """etcd's rule: no key is written twice, or written and deleted, in one branch."""
    dels = [
        (op.request_delete_range.key, op.request_delete_range.range_end)
        for op in ops
        if op.WhichOneof("request") == "request_delete_range"
    ]
    puts: set[bytes] = set()

    def deleted(key: bytes) -> bool:
        return any(_in_interval(key, start, end) for start, end in dels)

    for op in ops:
        if op.WhichOneof("request") != "request_txn":
            continue
        then_puts, then_dels = _check_intervals(list(op.request_txn.success))
        else_puts, else_dels = _check_intervals(list(op.request_txn.failure))
        for key in then_puts:
            if key in puts or deleted(key):
                raise errors.DuplicateKey()
            puts.add(key)
        for key in else_puts:
            # then and else exclude each other, so the same key in both is fine
            if (key in puts and key not in then_puts) or deleted(key):
                raise errors.DuplicateKey()
            puts.add(key)
        dels.extend(then_dels)
        dels.extend(else_dels)
    for op in ops:
        if op.WhichOneof("request") != "request_put":
            continue
        key = op.request_put.key
        if key in puts or deleted(key):
            raise errors.DuplicateKey()
        puts.add(key)
    return puts, dels
