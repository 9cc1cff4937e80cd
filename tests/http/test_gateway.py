"""The v3 JSON gateway on both stores: raw requests compared field by field, and etcd3gw (a
gateway client nobody here wrote) getting the same results from each."""

from __future__ import annotations

import base64
import json
import threading
import time
from typing import Any

from etcd3gw.client import Etcd3Client

from tests.harness.bundled import BundledStore
from tests.harness.etcd import EtcdMember
from tests.http.conftest import request

_VOLATILE = {"cluster_id", "member_id", "revision", "raft_term", "ID", "leader", "raftIndex"}
_VOLATILE |= {"raftAppliedIndex", "dbSize", "dbSizeInUse", "create_revision", "mod_revision"}
_VOLATILE |= {"version", "compact_revision", "TTL", "grantedTTL", "id", "watch_id"}


def shape(value: Any) -> Any:
    """The JSON with IDs, revisions and sizes replaced by their JSON type."""
    if isinstance(value, dict):
        return {
            key: type(item).__name__ if key in _VOLATILE else shape(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [shape(item) for item in value]
    return value


def b64(text: bytes) -> str:
    return base64.b64encode(text).decode()


def _post(url: str, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    answer = request(url, "POST", path, body=json.dumps(body).encode())
    return answer.status, answer.json


def _calls(ns: bytes) -> list[tuple[str, dict[str, Any]]]:
    return [
        ("/v3/kv/put", {"key": b64(ns + b"a"), "value": b64(b"1")}),
        ("/v3/kv/put", {"key": b64(ns + b"b"), "value": b64(b"2"), "prev_kv": True}),
        ("/v3/kv/put", {"key": b64(ns + b"b"), "value": b64(b"3"), "prev_kv": True}),
        ("/v3/kv/range", {"key": b64(ns + b"a")}),
        ("/v3/kv/range", {"key": b64(ns), "range_end": b64(ns[:-1] + b"0")}),
        ("/v3/kv/range", {"key": b64(ns), "range_end": b64(ns[:-1] + b"0"), "count_only": True}),
        ("/v3/kv/range", {"key": b64(ns), "range_end": b64(ns[:-1] + b"0"), "limit": 1}),
        (
            "/v3/kv/txn",
            {
                "compare": [
                    {
                        "key": b64(ns + b"a"),
                        "target": "VALUE",
                        "result": "EQUAL",
                        "value": b64(b"1"),
                    }
                ],
                "success": [{"request_put": {"key": b64(ns + b"t"), "value": b64(b"yes")}}],
                "failure": [{"request_range": {"key": b64(ns + b"a")}}],
            },
        ),
        (
            "/v3/kv/txn",
            {
                "compare": [
                    {
                        "key": b64(ns + b"a"),
                        "target": "VALUE",
                        "result": "EQUAL",
                        "value": b64(b"x"),
                    }
                ],
                "failure": [{"request_range": {"key": b64(ns + b"a")}}],
            },
        ),
        ("/v3/kv/deleterange", {"key": b64(ns + b"b"), "prev_kv": True}),
        ("/v3/kv/deleterange", {"key": b64(ns + b"none")}),
        ("/v3/kv/compaction", {"revision": "99999999"}),
        ("/v3/kv/put", {"key": b64(ns + b"l"), "value": b64(b"v"), "lease": "12345"}),
        ("/v3/lease/timetolive", {"ID": "12345"}),
        ("/v3/maintenance/status", {}),
    ]


def test_raw_calls_field_by_field(bundled_kv: BundledStore, etcd: EtcdMember, ns: bytes) -> None:
    for path, body in _calls(ns):
        ours = _post(bundled_kv.url, path, body)
        theirs = _post(etcd.url, path, body)
        assert shape(ours) == shape(theirs), path


def test_lease_calls(bundled_kv: BundledStore, etcd: EtcdMember, ns: bytes) -> None:
    results = {}
    for kind, url in (("bundled", bundled_kv.url), ("etcd", etcd.url)):
        status, granted = _post(url, "/v3/lease/grant", {"TTL": 60})
        lease = granted["ID"]
        put = _post(url, "/v3/kv/put", {"key": b64(ns + b"k"), "value": b64(b"v"), "lease": lease})
        ttl = _post(url, "/v3/lease/timetolive", {"ID": lease, "keys": True})
        keepalive = request(
            url, "POST", "/v3/lease/keepalive", body=json.dumps({"ID": lease}).encode(), timeout=5
        )
        leases = _post(url, "/v3/lease/leases", {})
        revoke = _post(url, "/v3/lease/revoke", {"ID": lease})
        after = _post(url, "/v3/kv/range", {"key": b64(ns + b"k")})
        assert any(item["ID"] == lease for item in leases[1]["leases"])
        assert ttl[1]["keys"] == [b64(ns + b"k")]
        first = json.loads(keepalive.raw.splitlines()[0])
        results[kind] = shape([granted, put, ttl, first, revoke, after]), status
    assert results["bundled"] == results["etcd"]


def _watch_first(url: str, ns: bytes) -> list[Any]:
    """Opens /v3/watch, writes a key, and returns the stream's first two JSON objects."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    create = {"create_request": {"key": b64(ns + b"w"), "prev_kv": True}}
    conn.request("POST", "/v3/watch", body=json.dumps(create).encode())
    response = conn.getresponse()
    assert response.status == 200
    first = json.loads(response.readline())
    threading.Timer(
        0.3, lambda: _post(url, "/v3/kv/put", {"key": b64(ns + b"w"), "value": b64(b"x")})
    ).start()
    second = json.loads(response.readline())
    conn.close()
    return [first, second]


def test_watch_stream(bundled_kv: BundledStore, etcd: EtcdMember, ns: bytes) -> None:
    ours = _watch_first(bundled_kv.url, ns)
    theirs = _watch_first(etcd.url, ns)
    assert shape(ours) == shape(theirs)
    assert ours[1]["result"]["events"][0]["kv"]["value"] == b64(b"x")


def _etcd3gw_session(url: str, ns: bytes) -> list[Any]:
    host, port = url.rsplit("//", 1)[1].split(":")
    client = Etcd3Client(host=host, port=int(port), timeout=10)
    key = (ns + b"gw").decode()
    out: list[Any] = []
    out.append(client.put(key, "one"))
    out.append(client.get(key))
    out.append(client.create(key, "two"))  # exists: False
    out.append(client.create(key + "/new", "two"))
    out.append(client.replace(key, "one", "three"))
    out.append(client.replace(key, "nope", "four"))
    out.append(sorted(v for v, _ in client.get_prefix(key)))
    lease = client.lease(ttl=30)
    out.append(client.put(key + "/leased", "l", lease=lease))
    out.append(sorted(k[len(ns) :] for k in lease.keys()))
    out.append(0 < lease.ttl() <= 30)
    out.append(lease.refresh())
    out.append(lease.revoke())
    out.append(client.get(key + "/leased"))
    lock = client.lock(ttl=10)
    out.append(lock.acquire())
    out.append(lock.is_acquired())
    out.append(lock.release())
    out.append(client.delete(key))
    out.append(client.delete(key))
    out.append(client.delete_prefix(key))
    status = client.status()
    out.append(sorted(status))
    out.append(len(client.members()))
    events: list[Any] = []
    done = threading.Event()

    def watch() -> None:
        events.append(client.watch_once(key + "/watched", timeout=10))
        done.set()

    thread = threading.Thread(target=watch)
    thread.start()
    time.sleep(0.5)
    client.put(key + "/watched", "seen")
    thread.join(15)
    out.append(events[0]["kv"]["value"] if events else None)
    return out


def test_etcd3gw_sees_the_same(bundled_kv: BundledStore, etcd: EtcdMember, ns: bytes) -> None:
    ours = _etcd3gw_session(bundled_kv.url, ns)
    theirs = _etcd3gw_session(etcd.url, ns + b"e/")
    assert ours == theirs
    assert ours[1] == [b"one"]
