"""The store's errors: each raise is a fresh exception, with etcd's status and message.

A real store (backend/kv/apply.Store on a temporary directory), called in process: an error
instance shared between raises would carry every earlier raise's traceback (and its frames)
into the next one.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from aetcd import rpc

from clustertui.backend.kv.apply import Config, Store
from clustertui.backend.kv.errors import StoreError


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(Config(data_dir=tmp_path / "kv"))
    store.recover()
    yield store
    store.wal.close()


CASES: dict[str, tuple[Callable[[Store], object], grpc.StatusCode, str]] = {
    "empty key": (
        lambda store: store.range(rpc.RangeRequest(key=b"")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "etcdserver: key is not provided",
    ),
    "future revision": (
        lambda store: store.range(rpc.RangeRequest(key=b"k", revision=99)),
        grpc.StatusCode.OUT_OF_RANGE,
        "etcdserver: mvcc: required revision is a future revision",
    ),
    "unknown lease": (
        lambda store: store.lease_revoke(12345),
        grpc.StatusCode.NOT_FOUND,
        "etcdserver: requested lease not found",
    ),
    "too many ops": (
        lambda store: store.txn(
            rpc.TxnRequest(success=[rpc.RequestOp(request_range=rpc.RangeRequest(key=b"k"))] * 129)
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "etcdserver: too many operations in txn request",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_raise_is_a_new_error_whose_traceback_does_not_grow(store: Store, case: str) -> None:
    call, code, message = CASES[case]
    caught: list[StoreError] = []
    for _ in range(3):
        with pytest.raises(StoreError) as raised:
            call(store)
        caught.append(raised.value)
    assert len({id(error) for error in caught}) == 3, "the same instance was raised again"
    depths = [len(traceback.extract_tb(error.__traceback__)) for error in caught]
    assert depths == [depths[0]] * 3, f"tracebacks grow from raise to raise: {depths}"
    for error in caught:
        assert (error.code, error.message, str(error)) == (code, message, message)
