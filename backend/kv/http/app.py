"""Routes the store's HTTP/1.1 requests: /health, /version, /metrics, /v2/*, /v3/*."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

from aetcd import rpc

from clustertui.backend.kv.apply import Store
from clustertui.backend.kv.http.conn import Request, Response, text
from clustertui.backend.kv.http.gateway import Gateway
from clustertui.backend.kv.http.metrics import StoreMetrics
from clustertui.backend.kv.http.v2keys import V2Keys

SERVER_VERSION = "3.4.23"
"""The etcd release whose behaviour the bundled store follows (reported by /version)."""
CLUSTER_VERSION = "3.4.0"


def _json(body: Any, status: int = 200, headers: list[tuple[str, str]] | None = None) -> Response:
    return Response(status, json.dumps(body, separators=(",", ":")).encode(), headers=headers or [])


def _not_found() -> Response:
    response = text(404, "404 page not found")
    response.headers.append(("X-Content-Type-Options", "nosniff"))
    return response


def _not_allowed(allow: str) -> Response:
    response = text(405, "Method Not Allowed")
    response.headers += [("Allow", allow), ("X-Content-Type-Options", "nosniff")]
    return response


def _rfc3339(seconds: float) -> str:
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond:06d}000Z"


def _duration(seconds: float) -> str:
    return f"{seconds:.9f}".rstrip("0").rstrip(".") + "s"


class HTTPApp:
    """The handler every HTTP/1.1 connection of the store calls."""

    def __init__(self, store: Store, metrics: StoreMetrics | None = None) -> None:
        self.store = store
        self.v2 = V2Keys(store)
        self.gateway = Gateway(store)
        self.metrics = metrics or StoreMetrics(store)
        self.started = time.time()

    async def __call__(self, request: Request) -> Response:
        path = request.path
        method = request.method
        if path == "/health":
            if method not in ("GET", "HEAD"):
                return _not_allowed("GET")
            return self.health()
        if path == "/version":
            if method not in ("GET", "HEAD"):
                return _not_allowed("GET")
            return _json({"etcdserver": SERVER_VERSION, "etcdcluster": CLUSTER_VERSION})
        if path == "/metrics":
            if method not in ("GET", "HEAD"):
                return _not_allowed("GET")
            body, kind = self.metrics.render(request.headers.get("accept", ""))
            return Response(200, body, kind)
        if path == "/v2/keys" or path.startswith("/v2/keys/"):
            from clustertui.backend.kv.http.v2keys import _clean

            return await self.v2.handle(request, _clean(path[len("/v2/keys") :]))
        if path in ("/v2/members", "/v2/members/"):
            if method != "GET":
                return _not_allowed("GET")
            return _json({"members": [self._member()]}, headers=self._cluster_header())
        if path == "/v2/members/leader":
            return _json(self._member(), headers=self._cluster_header())
        if path.startswith("/v2/stats/"):
            return self.stats(path[len("/v2/stats/") :])
        if path.startswith("/v3/") or path.startswith("/v3beta/") or path.startswith("/v3alpha/"):
            return await self.gateway.handle(request)
        return _not_found()

    def health(self) -> Response:
        """etcd 3.4's /health: 200 and true, or 503 and false (with the reason, as 3.5 gives)."""
        store = self.store
        reason = ""
        if store.alarms:
            names = ",".join(f"ALARM {rpc.AlarmType.Name(alarm)}" for alarm in sorted(store.alarms))
            reason = names
        elif getattr(store.wal, "_failed", None) is not None:
            reason = "WAL write failed"
        if reason:
            # As etcd answers it (http.Error: text/plain, a newline, nosniff), with 3.5's reason.
            body = json.dumps({"health": "false", "reason": reason}, separators=(",", ":"))
            response = text(503, body)
            response.headers.append(("X-Content-Type-Options", "nosniff"))
            return response
        response = _json({"health": "true"})
        response.content_type = "text/plain; charset=utf-8"
        return response

    def _member_hex(self) -> str:
        return f"{self.store.member_id:x}"

    def _cluster_header(self) -> list[tuple[str, str]]:
        return [("X-Etcd-Cluster-Id", f"{self.store.cluster_id:x}")]

    def _member(self) -> dict[str, Any]:
        config = self.store.config
        return {
            "id": self._member_hex(),
            "name": config.name,
            "peerURLs": list(config.peer_urls),
            "clientURLs": list(config.client_urls),
        }

    def stats(self, which: str) -> Response:
        member = self._member_hex()
        if which == "self":
            now = time.time()
            return _json(
                {
                    "name": self.store.config.name,
                    "id": member,
                    "state": "StateLeader",
                    "startTime": _rfc3339(self.started),
                    "leaderInfo": {
                        "leader": member,
                        "uptime": _duration(now - self.started),
                        "startTime": _rfc3339(self.started),
                    },
                    "recvAppendRequestCnt": 0,
                    "sendAppendRequestCnt": 0,
                }
            )
        if which == "leader":
            return _json({"leader": member, "followers": {}})
        if which == "store":
            return _json(self.v2.stats)
        return _not_found()
