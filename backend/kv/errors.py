"""Provides the store's errors with etcd's gRPC status codes and message strings."""

from __future__ import annotations

import grpc


class StoreError(Exception):
    """An error the client sees exactly as etcd would send it: a status code and a message."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _error(code: grpc.StatusCode, message: str) -> StoreError:
    return StoreError(code, message)


_INVALID = grpc.StatusCode.INVALID_ARGUMENT

# Clients map errors by their text (etcd's rpctypes), so these strings are etcd's own.
EMPTY_KEY = _error(_INVALID, "etcdserver: key is not provided")
KEY_NOT_FOUND = _error(_INVALID, "etcdserver: key not found")
VALUE_PROVIDED = _error(_INVALID, "etcdserver: value is provided")
LEASE_PROVIDED = _error(_INVALID, "etcdserver: lease is provided")
TOO_MANY_OPS = _error(_INVALID, "etcdserver: too many operations in txn request")
DUPLICATE_KEY = _error(_INVALID, "etcdserver: duplicate key given in txn request")
REQUEST_TOO_LARGE = _error(_INVALID, "etcdserver: request is too large")
COMPACTED = _error(
    grpc.StatusCode.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted"
)
FUTURE_REV = _error(
    grpc.StatusCode.OUT_OF_RANGE, "etcdserver: mvcc: required revision is a future revision"
)
NO_SPACE = _error(grpc.StatusCode.RESOURCE_EXHAUSTED, "etcdserver: mvcc: database space exceeded")
LEASE_NOT_FOUND = _error(grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found")
LEASE_EXIST = _error(grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: lease already exists")
LEASE_TTL_TOO_LARGE = _error(grpc.StatusCode.OUT_OF_RANGE, "etcdserver: too large lease TTL")
AUTH_NOT_ENABLED = _error(
    grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: authentication is not enabled"
)
MEMBER_NOT_FOUND = _error(grpc.StatusCode.NOT_FOUND, "etcdserver: member not found")
NOT_CAPABLE = _error(grpc.StatusCode.UNAVAILABLE, "etcdserver: not capable")
SINGLE_NODE = _error(
    grpc.StatusCode.UNIMPLEMENTED,
    "clusterd kv: the bundled store is single-node; run a real etcd cluster to add members",
)
