"""v2 keys semantics, request by request, against real etcd's v2 and the bundled store: the same
statuses and the same JSON bodies (indexes, expirations and TTLs compared by kind)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

from tests.http.conftest import Answer, normalise, request

Step = tuple[str, str, dict[str, str] | None]
Scenario = list[Step | Callable[[list[Answer]], Step]]


def _run(url: str, scenario: Scenario) -> tuple[list[tuple[int, Any]], list[Answer]]:
    answers: list[Answer] = []
    seen = []
    for step in scenario:
        method, path, form = step(answers) if callable(step) else step
        answer = request(url, method, path, form=form)
        answers.append(answer)
        try:
            body = normalise(answer.json)
        except json.JSONDecodeError:
            body = answer.raw.decode()
        seen.append((answer.status, body))
    return seen, answers


def _same(pair: dict[str, Any], scenario: Scenario) -> list[tuple[int, Any]]:
    expected, _ = _run(pair["etcd"].url, scenario)
    got, _ = _run(pair["bundled"].url, scenario)
    assert got == expected
    return got


def test_errors(pair: dict[str, Any]) -> None:
    seen = _same(
        pair,
        [
            ("GET", "/v2/keys/t/missing", None),
            ("PUT", "/v2/keys/t/file", {"value": "v"}),
            ("PUT", "/v2/keys/t/file/under", {"value": "v"}),  # 104 Not a directory
            ("PUT", "/v2/keys/t", {"value": "v"}),  # 102 Not a file
            ("DELETE", "/v2/keys/t", None),  # 102 Not a file
            ("DELETE", "/v2/keys/t?dir=true", None),  # 108 Directory not empty
            ("PUT", "/v2/keys/t/file", {"value": "w", "prevExist": "false"}),  # 105
            ("PUT", "/v2/keys/t/none", {"value": "w", "prevExist": "true"}),  # 100
            ("PUT", "/v2/keys/", {"value": "w"}),  # 107 root
            ("DELETE", "/v2/keys/t/missing", None),
            ("PUT", "/v2/keys/t/ttl", {"value": "w", "ttl": "abc"}),  # 202
        ],
    )
    codes = [body.get("errorCode") if isinstance(body, dict) else None for _, body in seen]
    assert codes == [100, None, 104, 102, 102, 108, 105, 100, 107, 100, 202]
    assert [status for status, _ in seen] == [404, 201, 400, 403, 403, 403, 412, 404, 400, 404, 400]


def test_set_create_update_and_compare_and_swap(pair: dict[str, Any]) -> None:
    def cas_index(answers: list[Answer]) -> Step:
        return (
            "PUT",
            "/v2/keys/c/k",
            {"value": "v3", "prevIndex": str(answers[-1].json["node"]["modifiedIndex"])},
        )

    seen = _same(
        pair,
        [
            ("PUT", "/v2/keys/c/k", {"value": "v1", "prevExist": "false"}),
            ("PUT", "/v2/keys/c/k", {"value": "v2", "prevExist": "true"}),
            ("PUT", "/v2/keys/c/k", {"value": "x", "prevValue": "nope"}),
            ("PUT", "/v2/keys/c/k", {"value": "x", "prevIndex": "1"}),
            ("PUT", "/v2/keys/c/k", {"value": "x", "prevValue": "nope", "prevIndex": "1"}),
            ("PUT", "/v2/keys/c/k", {"value": "v2b", "prevValue": "v2"}),
            cas_index,
            ("GET", "/v2/keys/c/k", None),
            ("DELETE", "/v2/keys/c/k?prevValue=nope", None),
            ("DELETE", "/v2/keys/c/k?prevValue=v3", None),
            ("PUT", "/v2/keys/c/k", {"value": "again"}),
            ("PUT", "/v2/keys/c/k", {"value": "replaced"}),
        ],
    )
    actions = [body.get("action") for _, body in seen]
    assert actions == [
        "create", "update", None, None, None, "compareAndSwap", "compareAndSwap", "get", None,
        "compareAndDelete", "set", "set",
    ]  # fmt: skip
    assert [status for status, _ in seen][-2:] == [201, 200]


def test_directories(pair: dict[str, Any]) -> None:
    seen = _same(
        pair,
        [
            ("PUT", "/v2/keys/d", {"dir": "true"}),
            ("GET", "/v2/keys/d", None),
            ("PUT", "/v2/keys/d", {"dir": "true"}),  # 102 on an existing directory
            ("PUT", "/v2/keys/d/a/b/c", {"value": "deep"}),
            ("PUT", "/v2/keys/d/f", {"value": "flat"}),
            ("GET", "/v2/keys/d?sorted=true", None),
            ("GET", "/v2/keys/d?recursive=true&sorted=true", None),
            ("DELETE", "/v2/keys/d/a?dir=true", None),  # 108
            ("DELETE", "/v2/keys/d/a?recursive=true", None),
            ("GET", "/v2/keys/d/a", None),
            ("DELETE", "/v2/keys/d/f", None),
            ("DELETE", "/v2/keys/d?dir=true", None),  # now empty: removed
            ("GET", "/v2/keys/d", None),
        ],
    )
    assert seen[1][1]["node"]["dir"] is True
    assert [n["key"] for n in seen[6][1]["node"]["nodes"]] == ["/d/a", "/d/f"]
    assert seen[-1][0] == 404


def test_in_order_keys(pair: dict[str, Any]) -> None:
    seen = _same(
        pair,
        [
            ("POST", "/v2/keys/queue", {"value": "first"}),
            ("POST", "/v2/keys/queue", {"value": "second"}),
            ("POST", "/v2/keys/queue", {"value": "third"}),
            ("GET", "/v2/keys/queue?sorted=true", None),
        ],
    )
    assert [status for status, _ in seen[:3]] == [201, 201, 201]
    assert [n["value"] for n in seen[3][1]["node"]["nodes"]] == ["first", "second", "third"]
    for url in (pair["etcd"].url, pair["bundled"].url):
        nodes = request(url, "GET", "/v2/keys/queue?sorted=true").json["node"]["nodes"]
        names = [n["key"] for n in nodes]
        assert names == sorted(names) and all(len(n.rsplit("/", 1)[1]) == 20 for n in names)


def test_ttl_expiry(pair: dict[str, Any]) -> None:
    for url in (pair["etcd"].url, pair["bundled"].url):
        answer = request(url, "PUT", "/v2/keys/ttl/k", form={"value": "soon", "ttl": "2"})
        assert answer.status == 201
        node = request(url, "GET", "/v2/keys/ttl/k").json["node"]
        assert 0 < node["ttl"] <= 2 and node["expiration"].endswith("Z")
    time.sleep(3.5)
    for url in (pair["etcd"].url, pair["bundled"].url):
        answer = request(url, "GET", "/v2/keys/ttl/k")
        assert answer.status == 404, url
        assert answer.json["errorCode"] == 100


def _wait(url: str, path: str, out: list[Answer]) -> threading.Thread:
    thread = threading.Thread(target=lambda: out.append(request(url, "GET", path, timeout=15)))
    thread.start()
    return thread


def test_recursive_wait_and_wait_index(pair: dict[str, Any]) -> None:
    results = {}
    for kind in ("etcd", "bundled"):
        url = pair[kind].url
        first = request(url, "PUT", "/v2/keys/w/a", form={"value": "1"}).json
        request(url, "PUT", "/v2/keys/w/b", form={"value": "2"})
        index = first["node"]["modifiedIndex"]
        # History: a wait from an old index answers at once with the change at that index.
        past = request(url, "GET", f"/v2/keys/w?wait=true&recursive=true&waitIndex={index + 1}")
        # Live: a recursive wait is answered by a change under the directory, not elsewhere.
        live: list[Answer] = []
        thread = _wait(url, "/v2/keys/w?wait=true&recursive=true", live)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if request(url, "GET", "/v2/stats/store").json["watchers"] >= 1:
                break
            time.sleep(0.05)
        request(url, "PUT", "/v2/keys/elsewhere", form={"value": "x"})
        request(url, "DELETE", "/v2/keys/w/a")
        thread.join(15)
        # A non-recursive wait on a key sees only that key.
        single: list[Answer] = []
        thread = _wait(url, "/v2/keys/w/b?wait=true", single)
        time.sleep(0.5)
        request(url, "PUT", "/v2/keys/w/c", form={"value": "3"})
        request(url, "PUT", "/v2/keys/w/b", form={"value": "22"})
        thread.join(15)
        results[kind] = [(a.status, normalise(a.json)) for a in (past, live[0], single[0])]
    assert results["bundled"] == results["etcd"]
    past, live, single = results["etcd"]
    assert past[1]["node"]["key"] == "/w/b"
    assert live[1]["action"] == "delete" and live[1]["node"]["key"] == "/w/a"
    assert single[1]["node"]["value"] == "22"


def test_members_and_stats(pair: dict[str, Any]) -> None:
    shapes = {}
    for kind in ("etcd", "bundled"):
        url = pair[kind].url
        members = request(url, "GET", "/v2/members").json["members"]
        leader = request(url, "GET", "/v2/stats/leader").json
        self_ = request(url, "GET", "/v2/stats/self").json
        assert leader["leader"] == members[0]["id"] == self_["id"] == self_["leaderInfo"]["leader"]
        shapes[kind] = (
            sorted(members[0]),
            sorted(self_),
            sorted(self_["leaderInfo"]),
            self_["state"],
            sorted(request(url, "GET", "/v2/stats/store").json),
        )
    assert shapes["bundled"] == shapes["etcd"]


def test_expire_count_counts_keys_whose_ttl_ran_out(pair: dict[str, Any]) -> None:
    """/v2/stats/store's expireCount goes up by one for a key whose TTL ran out, in both, and
    not for a key deleted by hand."""
    counts = {}
    for kind in ("etcd", "bundled"):
        url = pair[kind].url

        def expired(url: str = url) -> int:
            return int(request(url, "GET", "/v2/stats/store").json["expireCount"])

        before = expired()
        request(url, "PUT", "/v2/keys/t/expire/soon", form={"value": "v", "ttl": "1"})
        request(url, "PUT", "/v2/keys/t/expire/byhand", form={"value": "v", "ttl": "60"})
        request(url, "DELETE", "/v2/keys/t/expire/byhand")
        deadline = time.monotonic() + 15
        while expired() == before and time.monotonic() < deadline:
            time.sleep(0.2)
        assert request(url, "GET", "/v2/keys/t/expire/soon").status == 404
        counts[kind] = expired() - before
    assert counts == {"etcd": 1, "bundled": 1}
