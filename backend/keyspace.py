"""Provides the key pane's store operations: directory listings, history, TTLs, deletes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aetcd import rpc

from clustertui.backend.etcd import (
    EtcdClient,
    KeyNotFound,
    RequestTooLarge,
    RevisionCompacted,
    typed_error,
)
from clustertui.backend.keys import prefix_end

MIN_PAGE = 32
MAX_PAGE = 4096
"""Bounds of the keys fetched per keys-only range while listing a directory."""


MAX_REQUEST_BYTES = 1536 * 1024
"""etcd's default --max-request-bytes; a larger value is refused before it is sent."""

TXN_OPS = 100
"""Puts per transaction when a TTL covers a directory (etcd allows 128 by default)."""

HISTORY_LIMIT = 100


@dataclass
class Child:
    """One entry of a directory: a key, or a sub-directory with the number of keys under it."""

    name: str
    path: bytes
    is_dir: bool
    count: int = 1


@dataclass
class Listing:
    """A directory's children in key order, read at one revision."""

    prefix: bytes
    children: list[Child]
    revision: int


@dataclass(frozen=True)
class Entry:
    """A key's value at one revision."""

    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int


def child_of(prefix: bytes, key: bytes) -> tuple[bytes, bool] | None:
    """The entry of directory ``prefix`` that ``key`` lives in: its path and whether a directory.

    The first ``/`` of the rest is skipped, so ``/a/b`` under the root is the directory
    ``/a/`` the way ``etcdctl ls`` shows it, not a directory named by the empty string.
    """
    if not key.startswith(prefix):
        return None
    rest = key[len(prefix) :]
    cut = rest.find(b"/", 1)
    if cut == -1:
        return key, False
    return prefix + rest[: cut + 1], True


def display_name(prefix: bytes, path: bytes) -> str:
    return path[len(prefix) :].decode("utf-8", "backslashreplace")


def range_of(prefix: bytes) -> tuple[bytes, bytes]:
    """The key range of a directory; the whole key space for the empty prefix."""
    return (prefix, prefix_end(prefix)) if prefix else (b"\0", b"\0")


async def _range(client: EtcdClient, request: rpc.RangeRequest) -> Any:
    await client.connect()
    try:
        return await client.kvstub.Range(request, timeout=client._timeout, metadata=client.metadata)
    except Exception as error:
        raise typed_error(error) from error


async def list_dir(
    client: EtcdClient, prefix: bytes, on_page: Callable[[Listing], None] | None = None
) -> Listing:
    """List ``prefix``'s children with keys-only ranges, jumping over each sub-directory.

    Pages start small and grow while they hold plain keys, so a directory of many
    sub-directories costs one short page per sub-directory (their counts come together
    in one transaction at the end), and a directory of many keys costs a few large pages.
    ``on_page`` sees the listing so far after each page, so a view can fill as it arrives.
    """
    start, end = range_of(prefix)
    children: list[Child] = []
    jumped: list[Child] = []
    revision = 0
    page = MIN_PAGE
    while True:
        response = await _range(
            client,
            rpc.RangeRequest(
                key=start, range_end=end, keys_only=True, limit=page, revision=revision
            ),
        )
        revision = revision or response.header.revision
        for kv in response.kvs:
            found = child_of(prefix, kv.key)
            if found is None:
                continue
            path, is_dir = found
            if is_dir and children and children[-1].path == path:
                children[-1].count += 1
            else:
                children.append(Child(display_name(prefix, path), path, is_dir))
        if not response.more or not response.kvs:
            break
        if on_page is not None:
            on_page(Listing(prefix, list(children), revision))
        last = children[-1]
        if last.is_dir:
            jumped.append(last)
            start = prefix_end(last.path)
            page = max(MIN_PAGE, page // 2)
        else:
            start = response.kvs[-1].key + b"\0"
            page = min(page * 4, MAX_PAGE)
    await _count_all(client, jumped, revision)
    return Listing(prefix, children, revision)


SEARCH_LIMIT = 10_000
"""The most keys a filter search shows; it says when there were more."""


@dataclass
class Search:
    """What a filter found in the store: matching keys, the directories down to them."""

    keys: set[bytes]
    directories: set[bytes]
    scanned: int
    truncated: bool


def search_hit(key: bytes, prefix: bytes, matches: Callable[[str], bool]) -> list[bytes] | None:
    """The directories from ``prefix`` down to ``key`` when its path as shown below ``prefix``
    ``matches`` (how the filter tells a hit, in a search and in a watch event); else None."""
    if not matches(key[len(prefix) :].decode("utf-8", "backslashreplace")):
        return None
    directories = []
    at = len(prefix)
    while (cut := key.find(b"/", at + 1)) != -1:
        directories.append(key[: cut + 1])
        at = cut
    return directories


async def search(
    client: EtcdClient, prefix: bytes, matches: Callable[[str], bool], limit: int = SEARCH_LIMIT
) -> Search:
    """Every key under ``prefix`` whose path (as shown, below ``prefix``) ``matches``: the
    whole store is read keys-only, a page at a time, not only the directories listed."""
    start, end = range_of(prefix)
    keys: set[bytes] = set()
    directories: set[bytes] = set()
    scanned = 0
    revision = 0
    while True:
        response = await _range(
            client,
            rpc.RangeRequest(
                key=start, range_end=end, keys_only=True, limit=MAX_PAGE, revision=revision
            ),
        )
        revision = revision or response.header.revision
        for kv in response.kvs:
            scanned += 1
            down = search_hit(kv.key, prefix, matches)
            if down is None:
                continue
            if len(keys) >= limit:
                return Search(keys, directories, scanned, True)
            keys.add(kv.key)
            directories.update(down)
        if not response.more or not response.kvs:
            return Search(keys, directories, scanned, False)
        start = response.kvs[-1].key + b"\0"


async def _count_all(client: EtcdClient, directories: list[Child], revision: int) -> None:
    """Set each directory's count of keys: one transaction of count-only ranges per batch."""
    for at in range(0, len(directories), TXN_OPS):
        batch = directories[at : at + TXN_OPS]
        ranges = [
            rpc.RequestOp(
                request_range=rpc.RangeRequest(
                    key=child.path,
                    range_end=prefix_end(child.path),
                    count_only=True,
                    revision=revision,
                )
            )
            for child in batch
        ]
        try:
            response = await client.kvstub.Txn(
                rpc.TxnRequest(success=ranges), timeout=client._timeout, metadata=client.metadata
            )
        except Exception as error:
            raise typed_error(error) from error
        for child, answer in zip(batch, response.responses, strict=True):
            child.count = answer.response_range.count


async def get_entry(client: EtcdClient, key: bytes, revision: int = 0) -> Entry:
    response = await _range(client, rpc.RangeRequest(key=key, revision=revision))
    if not response.kvs:
        raise KeyNotFound(f"{key.decode('utf-8', 'backslashreplace')} is not in the store")
    kv = response.kvs[0]
    return Entry(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease)


async def lease_ttl(client: EtcdClient, lease: int) -> int | None:
    """Seconds left on ``lease``, or None when it has gone."""
    await client.connect()
    try:
        response = await client.leasestub.LeaseTimeToLive(
            rpc.LeaseTimeToLiveRequest(ID=lease), timeout=client._timeout, metadata=client.metadata
        )
    except Exception as error:
        raise typed_error(error) from error
    return None if response.TTL < 0 else response.TTL


async def history(
    client: EtcdClient, key: bytes, limit: int = HISTORY_LIMIT
) -> tuple[list[Entry], bool]:
    """Earlier values of ``key``, newest first, by historical reads; and whether compaction
    cut the list short."""
    entries: list[Entry] = []
    try:
        entry = await get_entry(client, key)
    except KeyNotFound:
        return entries, False
    while True:
        entries.append(entry)
        if entry.version <= 1 or len(entries) >= limit:
            return entries, False
        try:
            entry = await get_entry(client, key, revision=entry.mod_revision - 1)
        except RevisionCompacted:
            return entries, True
        except KeyNotFound:
            return entries, False


async def count_under(client: EtcdClient, path: bytes, is_dir: bool) -> int:
    if not is_dir:
        return 1
    start, end = range_of(path)
    response = await _range(client, rpc.RangeRequest(key=start, range_end=end, count_only=True))
    return int(response.count)


async def put(
    client: EtcdClient, key: bytes, value: bytes, ttl: int | None = None, lease: int = 0
) -> int:
    """Put ``value`` at ``key`` under ``lease``, or a new lease of ``ttl`` seconds; the revision."""
    if len(key) + len(value) > MAX_REQUEST_BYTES:
        raise RequestTooLarge(
            f"the value is {len(value):,} bytes; the store takes at most "
            f"{MAX_REQUEST_BYTES:,} bytes per request"
        )
    if ttl:
        lease = (await client.lease(ttl)).id
    await client.connect()
    try:
        response = await client.kvstub.Put(
            rpc.PutRequest(key=key, value=value, lease=lease),
            timeout=client._timeout,
            metadata=client.metadata,
        )
    except Exception as error:
        raise typed_error(error) from error
    return int(response.header.revision)


async def delete(client: EtcdClient, path: bytes, is_dir: bool) -> int:
    """Delete a key, or every key under a directory; how many went."""
    await client.connect()
    start, end = range_of(path) if is_dir else (path, b"")
    try:
        response = await client.kvstub.DeleteRange(
            rpc.DeleteRangeRequest(key=start, range_end=end),
            timeout=client._timeout,
            metadata=client.metadata,
        )
    except Exception as error:
        raise typed_error(error) from error
    return int(response.deleted)


async def set_ttl(client: EtcdClient, path: bytes, is_dir: bool, ttl: int | None) -> int:
    """Attach one new lease of ``ttl`` seconds to the key or every key under the directory.

    ``ttl`` None detaches any lease instead. Values stay as they are (``ignore_value``).
    Returns how many keys changed.
    """
    if is_dir:
        start, end = range_of(path)
        response = await _range(client, rpc.RangeRequest(key=start, range_end=end, keys_only=True))
        keys = [kv.key for kv in response.kvs]
    else:
        keys = [path]
    lease = (await client.lease(ttl)).id if ttl else 0
    for at in range(0, len(keys), TXN_OPS):
        puts = [
            rpc.RequestOp(request_put=rpc.PutRequest(key=key, lease=lease, ignore_value=True))
            for key in keys[at : at + TXN_OPS]
        ]
        try:
            await client.kvstub.Txn(
                rpc.TxnRequest(success=puts), timeout=client._timeout, metadata=client.metadata
            )
        except Exception as error:
            raise typed_error(error) from error
    return len(keys)
