"""v2 watch answers name the action etcd's v2 names for the same requests: create, set,
update, compareAndSwap, compareAndDelete, delete, expire, with prevNode where etcd gives one.
Each store's own history is read back with waitIndex, so the answers are the ones etcd keeps."""

from __future__ import annotations

import time
from typing import Any

from tests.http.conftest import normalise, request
from tests.kv.tools import etcdctl

WRITES: list[tuple[str, str, dict[str, str] | None]] = [
    ("PUT", "/v2/keys/act/k", {"value": "1", "prevExist": "false"}),  # create
    ("PUT", "/v2/keys/act/k", {"value": "2"}),  # set over a value
    ("PUT", "/v2/keys/act/k", {"value": "3", "prevExist": "true"}),  # update
    ("PUT", "/v2/keys/act/k", {"value": "4", "prevValue": "3"}),  # compareAndSwap
    ("PUT", "/v2/keys/act/k", {"value": "5", "prevIndex": "LAST"}),  # compareAndSwap
    ("DELETE", "/v2/keys/act/k?prevValue=5", None),  # compareAndDelete
    ("PUT", "/v2/keys/act/k", {"value": "6"}),  # set of a new key
    ("DELETE", "/v2/keys/act/k?prevIndex=LAST", None),  # compareAndDelete
    ("PUT", "/v2/keys/act/k", {"value": "7"}),
    ("DELETE", "/v2/keys/act/k", None),  # delete
    ("POST", "/v2/keys/act/queue", {"value": "in order"}),  # create
    ("PUT", "/v2/keys/act/dir", {"dir": "true", "prevExist": "false"}),  # mkdir: create
    ("DELETE", "/v2/keys/act/dir?dir=true", None),  # rmdir: delete
    ("PUT", "/v2/keys/act/dir2", {"dir": "true"}),  # set
    ("PUT", "/v2/keys/act/tree/a", {"value": "a"}),
    ("PUT", "/v2/keys/act/tree/b/c", {"value": "c"}),
    ("DELETE", "/v2/keys/act/tree?recursive=true", None),  # delete of the directory
    ("PUT", "/v2/keys/act/ttl", {"value": "soon", "ttl": "2"}),  # set; later expire
]


def _history(url: str) -> list[tuple[int, Any]]:
    """Each write's watch answer, read back from the store's history by its index."""
    indexes = []
    last = 0
    for method, path, form in WRITES:
        path = path.replace("LAST", str(last))
        if form is not None:
            form = {k: v.replace("LAST", str(last)) for k, v in form.items()}
        answer = request(url, method, path, form=form)
        assert answer.status in (200, 201), (path, answer.raw)
        last = answer.json["node"]["modifiedIndex"]
        indexes.append(last)
    seen = []
    for index in indexes:
        answer = request(url, "GET", f"/v2/keys/act?wait=true&recursive=true&waitIndex={index}")
        seen.append((answer.status, normalise(answer.json)))
    # The TTL's lease runs out: a wait from the next index is answered by the expiry.
    deadline = time.monotonic() + 15
    expired = request(url, "GET", f"/v2/keys/act/ttl?wait=true&waitIndex={last + 1}", timeout=15)
    assert time.monotonic() < deadline
    seen.append((expired.status, normalise(expired.json)))
    return seen


def test_watch_actions_match_etcd(pair: dict[str, Any]) -> None:
    expected = _history(pair["etcd"].url)
    got = _history(pair["bundled"].url)
    assert [body["action"] for _, body in got] == [body["action"] for _, body in expected]
    assert [body["action"] for _, body in expected] == [
        "create", "set", "update", "compareAndSwap", "compareAndSwap", "compareAndDelete",
        "set", "compareAndDelete", "set", "delete", "create", "create", "delete", "set", "set",
        "set", "delete", "set", "expire",
    ]  # fmt: skip
    for index, (ours, theirs) in enumerate(zip(got, expected, strict=True)):
        assert ours == theirs, (index, WRITES[index] if index < len(WRITES) else "expire")


def test_v3_writes_are_set_and_delete(bundled_kv: Any, ns: bytes) -> None:
    """Ours alone (etcd keeps v2 and v3 keys apart): a write made through v3 has no v2 action
    recorded, so a v2 watch reports it as set or delete, whatever it was."""
    url = bundled_kv.url
    key = ns.decode().rstrip("/") + "/v3"
    created = request(url, "PUT", f"/v2/keys{key}", form={"value": "v2", "prevExist": "false"})
    assert created.json["action"] == "create"
    index = created.json["node"]["modifiedIndex"]
    assert etcdctl(url, "put", key, "from v3").rc == 0
    assert etcdctl(url, "del", key).rc == 0
    actions = [
        request(url, "GET", f"/v2/keys{key}?wait=true&waitIndex={index + step}").json
        for step in range(3)
    ]
    assert [a["action"] for a in actions] == ["create", "set", "delete"]
    assert actions[1]["node"]["value"] == "from v3" and actions[1]["prevNode"]["value"] == "v2"
