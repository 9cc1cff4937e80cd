"""etcd's v2 keys API (`/v2/keys`) over the store's v3 key space.

A v2 key ``/a/b`` is the v3 key ``/a/b``; v2 indexes are revisions. A directory is a prefix:
``/a`` is a directory while a key lives under ``/a/`` or while its marker, the v3 key ``/a/``
(empty value; what `etcdctl mkdir` writes), exists. A TTL is a lease of that many seconds
(at least the store's minimum lease TTL). Unlike etcd, which keeps its v2 and v3 keys apart,
both APIs here see the same keys, so the console shows what v2 clients write.

A v2 watch answer names the action etcd's v2 gives for the write (``create``, ``update``,
``compareAndSwap``, ``compareAndDelete``, ``set``, ``delete``, ``expire``): the v3 key space
keeps no such thing, so this handler records, per revision, the kind of write it made (the
last ``ACTIONS_KEPT`` of them, in memory). A change it did not make, or one older than that
record or than the process, is reported as ``set`` or ``delete``, and so are writes through
v3; the exception is the deletion of a key whose v2 TTL lease ran out: ``expire``.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from aetcd import rpc

from clustertui.backend.kv.apply import Store
from clustertui.backend.kv.errors import StoreError
from clustertui.backend.kv.http.conn import Request, Response
from clustertui.backend.kv.http.watching import responses
from clustertui.backend.kv.watch import WatchStream

# etcd's v2 error codes, messages and HTTP statuses (etcdserver/api/v2error).
KEY_NOT_FOUND, TEST_FAILED, NOT_FILE, NOT_DIR, NODE_EXIST, ROOT_RONLY, DIR_NOT_EMPTY = (
    100,
    101,
    102,
    104,
    105,
    107,
    108,
)
PREV_VALUE_REQUIRED, TTL_NAN, INDEX_NAN, INVALID_FIELD, INDEX_CLEARED = 201, 202, 203, 209, 401
RAFT_INTERNAL = 300
_MESSAGES = {
    100: "Key not found",
    101: "Compare failed",
    102: "Not a file",
    104: "Not a directory",
    105: "Key already exists",
    107: "Root is read only",
    108: "Directory not empty",
    201: "PrevValue is Required in POST form",
    202: "The given TTL in POST form is not a number",
    203: "The given index in POST form is not a number",
    209: "Invalid field",
    300: "Raft Internal Error",
    401: "The event in requested index is outdated and cleared",
}
_STATUS = {100: 404, 101: 412, 102: 403, 105: 412, 108: 403, 300: 500}
ACTIONS_KEPT = 4096
"""How many of its writes' actions the v2 handler remembers (and of its TTL leases)."""


class V2Error(Exception):
    def __init__(self, code: int, cause: str, request: bool = False) -> None:
        super().__init__(code, cause)
        self.code = code
        self.cause = cause
        self.request = request
        """A malformed request: etcd answers it before the store, with index 0."""


def _field_error(code: int, name: str) -> V2Error:
    return V2Error(code, f'invalid value for "{name}"', request=True)


def _prefix_end(prefix: bytes) -> bytes:
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


def _clean(path: str) -> str:
    """``/v2/keys//a/b/`` -> ``/a/b`` (etcd's path.Clean of the key); the root is ``/``."""
    parts = [part for part in path.split("/") if part and part != "."]
    return "/" + "/".join(parts)


def _bool(value: str | None) -> bool:
    return (value or "").lower() in ("true", "1", "t")


def _rfc3339(seconds: float) -> str:
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond:06d}000Z"


class V2Keys:
    """Answers /v2/keys requests from the store."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.stats = dict.fromkeys(
            (
                "getsSuccess",
                "getsFail",
                "setsSuccess",
                "setsFail",
                "deleteSuccess",
                "deleteFail",
                "updateSuccess",
                "updateFail",
                "createSuccess",
                "createFail",
                "compareAndSwapSuccess",
                "compareAndSwapFail",
                "compareAndDeleteSuccess",
                "compareAndDeleteFail",
                "expireCount",
                "watchers",
            ),
            0,
        )
        self.actions: dict[int, str] = {}
        """The action of each v2 write, by its revision (the last ACTIONS_KEPT)."""
        self.dir_deletes: dict[int, dict[str, Any]] = {}
        """The answer to each directory delete, by its revision (the last ACTIONS_KEPT)."""
        self.ttl_leases: dict[int, None] = {}
        """The leases v2 TTLs were granted as (the last ACTIONS_KEPT): their end is ``expire``."""
        store.on_expired.append(self._expired)

    def _expired(self, lease: int, keys: int) -> None:
        """A lease ran out: its keys count as expired (``expireCount``) if v2 set their TTL."""
        if lease in self.ttl_leases:
            self.stats["expireCount"] += keys

    def _record(self, revision: int, action: str) -> None:
        actions = self.actions
        actions[revision] = action
        if len(actions) > ACTIONS_KEPT:
            del actions[next(iter(actions))]

    # -- reading the key space

    def _get(self, key: str) -> rpc.KeyValue | None:
        kvs = self.store.range(rpc.RangeRequest(key=key.encode())).kvs
        return kvs[0] if kvs else None

    def _under(self, path: str) -> list[rpc.KeyValue]:
        prefix = b"/" if path == "/" else path.encode() + b"/"
        return list(
            self.store.range(rpc.RangeRequest(key=prefix, range_end=_prefix_end(prefix))).kvs
        )

    def _is_dir(self, path: str) -> bool:
        return path == "/" or bool(self._under(path))

    def _node(self, path: str, kv: rpc.KeyValue, value: bool = True) -> dict[str, Any]:
        node: dict[str, Any] = {"key": path}
        if value:
            node["value"] = kv.value.decode("utf-8", "replace")
        if kv.lease:
            lease = self.store.lessor.leases.get(kv.lease)
            if lease is not None:
                remaining = max(0.0, lease.expiry - time.monotonic())
                node["expiration"] = _rfc3339(time.time() + remaining)
                node["ttl"] = lease.remaining()
        node["modifiedIndex"] = kv.mod_revision
        node["createdIndex"] = kv.create_revision
        return node

    def _dir_node(
        self, path: str, kvs: list[rpc.KeyValue], recursive: bool, listing: bool = True
    ) -> dict[str, Any]:
        """The directory ``path`` from the keys under it (sorted, as the v3 range gives them)."""
        prefix = "/" if path == "/" else path + "/"
        node: dict[str, Any] = {"key": path, "dir": True} if path != "/" else {"dir": True}
        marker = None
        groups: dict[str, list[rpc.KeyValue]] = {}
        files: dict[str, rpc.KeyValue] = {}
        for kv in kvs:
            rest = kv.key.decode("utf-8", "replace")[len(prefix) :]
            if rest == "":
                marker = kv
                continue
            name, slash, _ = rest.partition("/")
            if slash:
                groups.setdefault(name, []).append(kv)
            elif name:
                files[name] = kv
        if listing:
            nodes: list[dict[str, Any]] = []
            for name in sorted(set(groups) | set(files)):
                child = prefix + name
                if name in files:
                    nodes.append(self._node(child, files[name]))
                else:
                    nodes.append(self._dir_node(child, groups[name], recursive, recursive))
            if nodes:
                node["nodes"] = nodes
        if path != "/":
            first = marker if marker is not None else min(kvs, key=lambda kv: kv.create_revision)
            if marker is not None and marker.lease:
                node.update(
                    {
                        k: v
                        for k, v in self._node(path, marker).items()
                        if k in ("expiration", "ttl")
                    }
                )
            node["modifiedIndex"] = first.mod_revision
            node["createdIndex"] = first.create_revision
        return node

    def _missing(self, path: str) -> str:
        """The cause etcd gives for a missing key: the first part of its path that is missing."""
        parts = path.split("/")[1:]
        for depth in range(1, len(parts)):
            parent = "/" + "/".join(parts[:depth])
            if self._get(parent) is None and not self._under(parent):
                return parent
        return path

    def _check_parents(self, path: str) -> None:
        """A key cannot live under a file: etcd's 104 names the file in the way."""
        parts = path.split("/")[1:-1]
        for depth in range(1, len(parts) + 1):
            parent = "/" + "/".join(parts[:depth])
            if self._get(parent) is not None:
                raise V2Error(NOT_DIR, parent)

    # -- the API

    async def handle(self, request: Request, path: str) -> Response:
        store = self.store
        try:
            params = request.params()
            method = request.method
            if method in ("GET", "HEAD"):
                barrier = store.read_barrier()
                if barrier is not None:
                    await barrier
                if _bool(params.get("wait")):
                    return await self._wait(path, params)
                return self._answer(self._read(path, params))
            if method == "PUT":
                result = self._put(path, params)
            elif method == "POST":
                result = self._post(path, params)
            elif method == "DELETE":
                result = self._delete(path, params)
            else:
                return Response(
                    405,
                    b"Method Not Allowed\n",
                    "text/plain; charset=utf-8",
                    [("Allow", "GET, HEAD, POST, PUT, DELETE")],
                )
            try:
                await store.durable()
            except OSError as error:
                raise V2Error(RAFT_INTERNAL, f"WAL write failed: {error}") from error
            return self._answer(*result)
        except V2Error as error:
            return self._error(error)
        except StoreError as error:
            return self._error(V2Error(RAFT_INTERNAL, error.message))

    def _headers(self) -> list[tuple[str, str]]:
        store = self.store
        return [
            ("X-Etcd-Cluster-Id", f"{store.cluster_id:x}"),
            ("X-Etcd-Index", str(store.space.revision)),
        ]

    def _answer(self, body: dict[str, Any], status: int = 200) -> Response:
        data = json.dumps(body, separators=(",", ":")).encode() + b"\n"
        return Response(status, data, "application/json", self._headers())

    def _error(self, error: V2Error) -> Response:
        code = error.code
        body = {
            "errorCode": code,
            "message": _MESSAGES.get(code, "Unknown error"),
            "cause": error.cause,
            "index": 0 if error.request else self.store.space.revision,
        }
        data = json.dumps(body, separators=(",", ":")).encode() + b"\n"
        return Response(_STATUS.get(code, 400), data, "application/json", self._headers())

    def _read(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        kv = None if path == "/" else self._get(path)
        if kv is not None:
            self.stats["getsSuccess"] += 1
            return {"action": "get", "node": self._node(path, kv)}
        kvs = self._under(path)
        if not kvs and path != "/":
            self.stats["getsFail"] += 1
            raise V2Error(KEY_NOT_FOUND, self._missing(path))
        self.stats["getsSuccess"] += 1
        return {"action": "get", "node": self._dir_node(path, kvs, _bool(params.get("recursive")))}

    def _ttl(self, params: dict[str, str]) -> int:
        text = params.get("ttl", "")
        if text == "":
            return 0
        try:
            ttl = int(text)
        except ValueError as error:
            raise _field_error(TTL_NAN, "ttl") from error
        if ttl < 0:
            raise _field_error(TTL_NAN, "ttl")
        return ttl

    def _lease(self, ttl: int) -> int:
        if not ttl:
            return 0
        lease: int = self.store.lease_grant(rpc.LeaseGrantRequest(TTL=ttl)).ID
        leases = self.ttl_leases
        leases[lease] = None
        if len(leases) > ACTIONS_KEPT:
            del leases[next(iter(leases))]
        return lease

    def _put(self, path: str, params: dict[str, str]) -> tuple[dict[str, Any], int]:
        if path == "/":
            raise V2Error(ROOT_RONLY, "/")
        ttl = self._ttl(params)
        is_dir = _bool(params.get("dir"))
        value = params.get("value", "")
        prev_exist = params.get("prevExist")
        prev_value = params.get("prevValue")
        prev_index_text = params.get("prevIndex")
        if prev_value is not None and prev_value == "" and "prevValue" in params:
            raise V2Error(PREV_VALUE_REQUIRED, "CompareAndSwap")
        prev_index = 0
        if prev_index_text:
            try:
                prev_index = int(prev_index_text)
            except ValueError as error:
                raise _field_error(INDEX_NAN, "prevIndex") from error
        if is_dir and value:
            raise V2Error(INVALID_FIELD, '"value" cannot be set when "dir" is true')
        current = self._get(path)
        existing_dir = current is None and self._is_dir(path)
        action = "set"
        if prev_value is not None or prev_index:
            action = "compareAndSwap"
            if current is None:
                raise V2Error(NOT_FILE if existing_dir else KEY_NOT_FOUND, self._missing(path))
            value_ok = prev_value is None or current.value.decode("utf-8", "replace") == prev_value
            index_ok = not prev_index or current.mod_revision == prev_index
            if not (value_ok and index_ok):
                self.stats["compareAndSwapFail"] += 1
                shown = current.value.decode("utf-8", "replace")
                if not index_ok and value_ok:
                    cause = f"[{prev_index} != {current.mod_revision}]"
                elif not value_ok and index_ok:
                    cause = f"[{prev_value} != {shown}]"
                else:
                    cause = f"[{prev_value} != {shown}] [{prev_index} != {current.mod_revision}]"
                raise V2Error(TEST_FAILED, cause)
        elif prev_exist is not None and _bool(prev_exist):
            action = "update"
            if current is None and not existing_dir:
                self.stats["updateFail"] += 1
                raise V2Error(KEY_NOT_FOUND, self._missing(path))
            if existing_dir and not is_dir:
                raise V2Error(NOT_FILE, path)
        elif prev_exist is not None:
            action = "create"
            if current is not None or existing_dir:
                self.stats["createFail"] += 1
                raise V2Error(NODE_EXIST, path)
        elif existing_dir:
            self.stats["setsFail"] += 1
            raise V2Error(NOT_FILE, path)
        self._check_parents(path)
        lease = self._lease(ttl)
        store = self.store
        if is_dir:
            if current is not None:
                store.delete_range(rpc.DeleteRangeRequest(key=path.encode()))
            response = store.put(
                rpc.PutRequest(key=path.encode() + b"/", lease=lease, prev_kv=True)
            )
            self._record(response.header.revision, action)
            kv = self._get(path + "/")
            assert kv is not None
            node = self._node(path, kv, value=False)
            node = {"key": path, "dir": True, **{k: v for k, v in node.items() if k != "key"}}
        else:
            response = store.put(
                rpc.PutRequest(key=path.encode(), value=value.encode(), lease=lease, prev_kv=True)
            )
            self._record(response.header.revision, action)
            kv = self._get(path)
            assert kv is not None
            node = self._node(path, kv)
        body: dict[str, Any] = {"action": action, "node": node}
        if current is not None:
            body["prevNode"] = self._node(path, current)
        elif response.HasField("prev_kv") and is_dir:
            prev = self._node(path, response.prev_kv, value=False)
            body["prevNode"] = {
                "key": path,
                "dir": True,
                **{k: v for k, v in prev.items() if k != "key"},
            }
        self.stats[
            {"set": "setsSuccess", "update": "updateSuccess", "create": "createSuccess"}.get(
                action, "compareAndSwapSuccess"
            )
        ] += 1
        created = action == "create" or (action == "set" and "prevNode" not in body)
        return body, 201 if created else 200

    def _post(self, path: str, params: dict[str, str]) -> tuple[dict[str, Any], int]:
        """An in-order key: the directory's new child is named after the next index."""
        if self._get(path) is not None:
            raise V2Error(NOT_DIR, path)
        self._check_parents(path + "/x")
        ttl = self._ttl(params)
        lease = self._lease(ttl)
        store = self.store
        child = f"{'' if path == '/' else path}/{store.space.revision + 1:020d}"
        response = store.put(
            rpc.PutRequest(key=child.encode(), value=params.get("value", "").encode(), lease=lease)
        )
        self._record(response.header.revision, "create")
        kv = self._get(child)
        assert kv is not None
        self.stats["createSuccess"] += 1
        return {"action": "create", "node": self._node(child, kv)}, 201

    def _delete(self, path: str, params: dict[str, str]) -> tuple[dict[str, Any], int]:
        if path == "/":
            raise V2Error(ROOT_RONLY, "/")
        store = self.store
        recursive = _bool(params.get("recursive"))
        is_dir = _bool(params.get("dir"))
        prev_value = params.get("prevValue")
        prev_index = params.get("prevIndex")
        current = self._get(path)
        if current is not None:
            action = "delete"
            if prev_value is not None or prev_index:
                action = "compareAndDelete"
                value_ok = prev_value is None or current.value.decode() == prev_value
                try:
                    index_ok = not prev_index or current.mod_revision == int(prev_index)
                except ValueError as error:
                    raise _field_error(INDEX_NAN, "prevIndex") from error
                if not (value_ok and index_ok):
                    self.stats["compareAndDeleteFail"] += 1
                    shown = current.value.decode("utf-8", "replace")
                    if not index_ok and value_ok:
                        cause = f"[{prev_index} != {current.mod_revision}]"
                    elif not value_ok and index_ok:
                        cause = f"[{prev_value} != {shown}]"
                    else:
                        cause = (
                            f"[{prev_value} != {shown}] [{prev_index} != {current.mod_revision}]"
                        )
                    raise V2Error(TEST_FAILED, cause)
            response = store.delete_range(rpc.DeleteRangeRequest(key=path.encode()))
            revision = response.header.revision
            self._record(revision, action)
            node = {"key": path, "modifiedIndex": revision, "createdIndex": current.create_revision}
            self.stats["deleteSuccess" if action == "delete" else "compareAndDeleteSuccess"] += 1
            return {"action": action, "node": node, "prevNode": self._node(path, current)}, 200
        kvs = self._under(path)
        if not kvs:
            self.stats["deleteFail"] += 1
            raise V2Error(KEY_NOT_FOUND, self._missing(path))
        if prev_value is not None:
            raise V2Error(NOT_FILE, path)
        if not (is_dir or recursive):
            self.stats["deleteFail"] += 1
            raise V2Error(NOT_FILE, path)
        prefix = path.encode() + b"/"
        if not recursive and any(kv.key != prefix for kv in kvs):
            self.stats["deleteFail"] += 1
            raise V2Error(DIR_NOT_EMPTY, path)
        before = self._dir_node(path, kvs, False, listing=False)
        response = store.delete_range(
            rpc.DeleteRangeRequest(key=prefix, range_end=_prefix_end(prefix))
        )
        node = {
            "key": path,
            "dir": True,
            "modifiedIndex": response.header.revision,
            "createdIndex": before["createdIndex"],
        }
        self.stats["deleteSuccess"] += 1
        body = {"action": "delete", "node": node, "prevNode": before}
        # One v2 event for the directory, as etcd gives, where v3 has one per key under it.
        self._record(response.header.revision, "delete")
        answers = self.dir_deletes
        answers[response.header.revision] = body
        if len(answers) > ACTIONS_KEPT:
            del answers[next(iter(answers))]
        return body, 200

    # -- waiting

    async def _wait(self, path: str, params: dict[str, str]) -> Response:
        store = self.store
        recursive = _bool(params.get("recursive"))
        start = 0
        if params.get("waitIndex"):
            try:
                start = int(params["waitIndex"])
            except ValueError as error:
                raise _field_error(INDEX_NAN, "waitIndex") from error
        compacted = store.space.compacted
        if 0 < start <= compacted:
            raise V2Error(
                INDEX_CLEARED,
                f"the requested history has been cleared [{compacted + 1}/{start}]",
            )
        key = path.encode()
        stream = WatchStream(store)
        stream.create(
            rpc.WatchCreateRequest(
                key=b"/" if path == "/" else key,
                range_end=_prefix_end(b"/" if path == "/" else key),
                start_revision=start,
                prev_kv=True,
            )
        )
        self.stats["watchers"] += 1
        prefix = b"/" if path == "/" else key + b"/"

        def wanted(event_key: bytes) -> bool:
            if event_key == key or event_key == key + b"/":
                return True
            if recursive and event_key.startswith(prefix):
                return True
            # A non-recursive watch on a directory sees its direct children, as etcd's does.
            return False

        async def body() -> AsyncIterator[bytes]:
            try:
                async for response in responses(stream):
                    for event in response.events:
                        if wanted(event.kv.key):
                            yield self._event(event)
                            return
            finally:
                self.stats["watchers"] -= 1
                stream.close()

        return Response(200, b"", "application/json", self._headers(), stream=body())

    def _event(self, event: rpc.Event) -> bytes:
        kv = event.kv
        name = kv.key.decode("utf-8", "replace")
        is_dir = name.endswith("/") and name != "/"
        path = name.rstrip("/") or "/"
        if event.type == rpc.Event.DELETE and kv.mod_revision in self.dir_deletes:
            answer = self.dir_deletes[kv.mod_revision]
            return json.dumps(answer, separators=(",", ":")).encode() + b"\n"
        action = self.actions.get(kv.mod_revision)
        if event.type == rpc.Event.PUT:
            node = self._node(path, kv, value=not is_dir)
            action = action or "set"
        else:
            node = {"key": path, "modifiedIndex": kv.mod_revision}
            prev_lease = event.prev_kv.lease if event.HasField("prev_kv") else 0
            if event.HasField("prev_kv"):
                node["createdIndex"] = event.prev_kv.create_revision
            if action is None:
                expired = prev_lease in self.ttl_leases and (
                    prev_lease not in self.store.lessor.leases
                )
                action = "expire" if expired else "delete"
        if is_dir:
            node = {"key": path, "dir": True, **{k: v for k, v in node.items() if k != "key"}}
        body: dict[str, Any] = {"action": action, "node": node}
        if event.HasField("prev_kv") and event.prev_kv.create_revision:
            prev = self._node(path, event.prev_kv, value=not is_dir)
            if is_dir:
                prev = {"key": path, "dir": True, **{k: v for k, v in prev.items() if k != "key"}}
            if action == "expire" and "expiration" not in prev:
                # etcd keeps the expired node's expiration (and no ttl); the lease is gone,
                # so this is when the answer is made, the expiry's time or a little after.
                expiration = {"expiration": _rfc3339(time.time())}
                prev = {**{k: v for k, v in prev.items() if "Index" not in k}, **expiration}
                prev["modifiedIndex"] = event.prev_kv.mod_revision
                prev["createdIndex"] = event.prev_kv.create_revision
            body["prevNode"] = prev
        return json.dumps(body, separators=(",", ":")).encode() + b"\n"
