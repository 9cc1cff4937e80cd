"""Provides the store's errors with etcd's gRPC status codes and message strings.

Each error is a class, raised afresh every time (``raise errors.EmptyKey()``): an exception
instance shared between raises would keep every raise's traceback, and the frames in it.
"""

from __future__ import annotations

from typing import ClassVar

import grpc

_INVALID = grpc.StatusCode.INVALID_ARGUMENT


class StoreError(Exception):
    """An error the client sees exactly as etcd would send it: a status code and a message."""

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNKNOWN
    message: ClassVar[str] = ""

    def __init__(self) -> None:
        super().__init__(self.message)


# Clients map errors by their text (etcd's rpctypes), so these strings are etcd's own.


class EmptyKey(StoreError):
    code = _INVALID
    message = "etcdserver: key is not provided"


class KeyNotFound(StoreError):
    code = _INVALID
    message = "etcdserver: key not found"


class ValueProvided(StoreError):
    code = _INVALID
    message = "etcdserver: value is provided"


class LeaseProvided(StoreError):
    code = _INVALID
    message = "etcdserver: lease is provided"


class TooManyOps(StoreError):
    code = _INVALID
    message = "etcdserver: too many operations in txn request"


class DuplicateKey(StoreError):
    code = _INVALID
    message = "etcdserver: duplicate key given in txn request"


class RequestTooLarge(StoreError):
    code = _INVALID
    message = "etcdserver: request is too large"


class Compacted(StoreError):
    code = grpc.StatusCode.OUT_OF_RANGE
    message = "etcdserver: mvcc: required revision has been compacted"


class FutureRev(StoreError):
    code = grpc.StatusCode.OUT_OF_RANGE
    message = "etcdserver: mvcc: required revision is a future revision"


class NoSpace(StoreError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    message = "etcdserver: mvcc: database space exceeded"


class LeaseNotFound(StoreError):
    code = grpc.StatusCode.NOT_FOUND
    message = "etcdserver: requested lease not found"


class LeaseExist(StoreError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    message = "etcdserver: lease already exists"


class LeaseTTLTooLarge(StoreError):
    code = grpc.StatusCode.OUT_OF_RANGE
    message = "etcdserver: too large lease TTL"


class AuthNotEnabled(StoreError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    message = "etcdserver: authentication is not enabled"


class SingleNode(StoreError):
    code = grpc.StatusCode.UNIMPLEMENTED
    message = (
        "clusterd kv: the bundled store is single-node; run a real etcd cluster to add members"
    )
