"""Alarms as etcd keeps them (one per member ID as given, 0 included, and type), seen through
the gateway and /health on both stores."""

from __future__ import annotations

import json
from typing import Any

from tests.http.conftest import request


def _post(url: str, path: str, body: dict[str, Any]) -> Any:
    return request(url, "POST", path, body=json.dumps(body).encode()).json


def _sequence(url: str) -> list[Any]:
    me = _post(url, "/v3/maintenance/status", {})["header"]["member_id"]
    out: list[Any] = []

    def alarm(action: str, member: str = "0") -> None:
        answer = _post(
            url, "/v3/maintenance/alarm", {"action": action, "memberID": member, "alarm": "NOSPACE"}
        )
        listed = _post(url, "/v3/maintenance/alarm", {"action": "GET"})
        errors = _post(url, "/v3/maintenance/status", {}).get("errors", [])
        mine = [
            dict(a, memberID="ME") if a.get("memberID") == me else a
            for a in answer.get("alarms", [])
        ]
        every = [
            dict(a, memberID="ME") if a.get("memberID") == me else a
            for a in listed.get("alarms", [])
        ]
        # etcd lists them in Go's map order: compared as sets.
        every.sort(key=lambda a: a.get("memberID", ""))
        out.append((mine, every, sorted(e.replace(me, "ME") for e in errors)))

    alarm("ACTIVATE")
    health = request(url, "GET", "/health")
    out.append((health.status, health.json["health"]))
    put = request(
        url, "POST", "/v3/kv/put", body=json.dumps({"key": "YQ==", "value": "Yg=="}).encode()
    )
    out.append((put.status, put.json.get("code")))
    alarm("ACTIVATE", me)
    alarm("DEACTIVATE")
    alarm("DEACTIVATE")  # no longer there
    alarm("DEACTIVATE", me)
    health = request(url, "GET", "/health")
    out.append((health.status, health.json["health"]))
    return out


def test_alarms_per_member_as_etcd(pair: dict[str, Any]) -> None:
    ours = _sequence(pair["bundled"].url)
    theirs = _sequence(pair["etcd"].url)
    assert ours == theirs
    assert ours[0][1] == [{"alarm": "NOSPACE"}]  # member 0 kept as 0
    assert ours[1] == (503, "false")
    assert ours[2] == (429, 8)  # etcdserver: mvcc: database space exceeded (ResourceExhausted)


def test_health_gives_the_reason(pair: dict[str, Any]) -> None:
    url = pair["bundled"].url
    _post(url, "/v3/maintenance/alarm", {"action": "ACTIVATE", "memberID": "0", "alarm": "NOSPACE"})
    answer = request(url, "GET", "/health")
    assert (answer.status, answer.json) == (503, {"health": "false", "reason": "ALARM NOSPACE"})
    _post(
        url, "/v3/maintenance/alarm", {"action": "DEACTIVATE", "memberID": "0", "alarm": "NOSPACE"}
    )
    assert request(url, "GET", "/health").json == {"health": "true"}
