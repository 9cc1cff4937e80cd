"""/health, /version and bad requests on both stores' client port, plain and TLS; gRPC on the
same port keeps working whatever HTTP/1.1 clients send."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clustertui.backend.etcd import make_client
from tests.harness.bundled import start_bundled
from tests.harness.etcd import EtcdMember, TLSFiles
from tests.harness.pki import CA
from tests.harness.stores import RunningStore
from tests.http.conftest import request
from tests.kv.tools import etcdctl


def test_health_and_version(store: RunningStore) -> None:
    health = request(store.url, "GET", "/health")
    assert (health.status, health.json) == (200, {"health": "true"})
    version = request(store.url, "GET", "/version")
    assert version.status == 200
    assert set(version.json) == {"etcdserver", "etcdcluster"}
    assert version.json["etcdcluster"] == "3.4.0"
    assert health.headers["access-control-allow-origin"] == "*"


def _raw(url: str, data: bytes) -> bytes:
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        out = b""
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return out


def _status_line(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


BAD = [
    pytest.param("GET", "/nope", None, {}, id="unknown path"),
    pytest.param("POST", "/health", b"", {}, id="wrong method on /health"),
    pytest.param("GET", "/v3/kv/range", None, {}, id="wrong method on the gateway"),
    pytest.param("POST", "/v3/kv/nope", b"{}", {}, id="unknown gateway call"),
    pytest.param("POST", "/v3/kv/range", b"{bad", {}, id="bad JSON"),
    pytest.param("POST", "/v3/kv/put", b'{"key": 5}', {}, id="JSON of the wrong type"),
]


@pytest.mark.parametrize(("method", "path", "body", "headers"), BAD)
def test_bad_requests_get_etcds_status_and_harm_nothing(
    store: RunningStore,
    etcd: EtcdMember,
    method: str,
    path: str,
    body: bytes | None,
    headers: dict[str, str],
    ns: bytes,
) -> None:
    ours = request(store.url, method, path, body=body, headers=headers)
    theirs = request(etcd.url, method, path, body=body, headers=headers)
    assert ours.status == theirs.status
    if theirs.headers.get("content-type", "").startswith("application/json"):
        assert set(ours.json) == set(theirs.json)
        if "code" in theirs.json:
            assert ours.json["code"] == theirs.json["code"]
    else:
        assert ours.raw == theirs.raw
    assert etcdctl(store.url, "put", (ns + b"after").decode(), "ok").rc == 0
    assert request(store.url, "GET", "/health").status == 200


def test_huge_header_and_garbage(store: RunningStore, etcd: EtcdMember) -> None:
    """Go's server answers a head over 1 MiB with 431; ours (64 KiB limit) too. A first line
    that is neither HTTP/2's preface nor an HTTP/1 request line is closed without an answer
    (etcd's cmux matches neither)."""
    huge = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (2 << 20) + b"\r\n\r\n"
    assert _status_line(_raw(store.url, huge)) == _status_line(_raw(etcd.url, huge)) == 431
    garbage = b"\x01\x02 nonsense\r\n\r\n"
    assert _raw(store.url, garbage) == _raw(etcd.url, garbage) == b""
    no_host = b"GET /health HTTP/1.1\r\n\r\n"
    assert _status_line(_raw(store.url, no_host)) == _status_line(_raw(etcd.url, no_host)) == 400
    assert request(store.url, "GET", "/health").status == 200


@pytest.fixture(params=["etcd", "bundled"])
def tls_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    ca = CA(tmp_path / "pki")
    server = ca.issue("server", server=True)
    files = TLSFiles(cert=server.cert, key=server.key, ca=ca.path)
    if request.param == "etcd":
        running: Any = EtcdMember(name="etcd0", data_dir=tmp_path / "etcd0", tls=files)
        running.start().wait_ready()
    else:
        running = start_bundled(tmp_path, tls=files)
    yield running, ca
    running.stop()


def _https(url: str, ca: Any, alpn: list[str] | None) -> tuple[int, Any, str | None]:
    context = ssl.create_default_context(cafile=str(ca.path))
    if alpn is not None:
        context.set_alpn_protocols(alpn)
    port = int(url.rsplit(":", 1)[1])
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    try:
        conn.request("GET", "/health")
        response = conn.getresponse()
        chosen = conn.sock.selected_alpn_protocol() if conn.sock else None
        return response.status, json.loads(response.read()), chosen
    finally:
        conn.close()


async def test_tls_port_serves_grpc_and_http(tls_store: Any) -> None:
    running, ca = tls_store
    # etcd 3.4 offers only h2 by ALPN (a client asking for http/1.1 gets none); ours offers both.
    assert _https(running.url, ca, ["http/1.1"])[:2] == (200, {"health": "true"})
    assert _https(running.url, ca, None)[:2] == (200, {"health": "true"})
    client = make_client([running.url], cacert=str(ca.path))
    try:
        await client.wait_ready()
        await client.put(b"/tls/both", b"yes")
        assert (await client.get(b"/tls/both")).value == b"yes"
    finally:
        await client.close()


def test_client_certificates_apply_to_http_too(tmp_path: Path) -> None:
    ca = CA(tmp_path / "pki")
    server = ca.issue("server", server=True)
    client = ca.issue("client", server=False)
    files = TLSFiles(cert=server.cert, key=server.key, ca=ca.path, client_cert_auth=True)
    running = start_bundled(tmp_path, tls=files)
    try:
        port = int(running.url.rsplit(":", 1)[1])
        bare = ssl.create_default_context(cafile=str(ca.path))
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=bare, timeout=10)
        with pytest.raises((ssl.SSLError, ConnectionError)):
            conn.request("GET", "/health")
            conn.getresponse().read()
        conn.close()
        with_cert = ssl.create_default_context(cafile=str(ca.path))
        with_cert.load_cert_chain(str(client.cert), str(client.key))
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=with_cert, timeout=10)
        conn.request("GET", "/health")
        assert json.loads(conn.getresponse().read()) == {"health": "true"}
        conn.close()
    finally:
        running.stop()
