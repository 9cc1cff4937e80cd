"""Fixtures for the store's HTTP side: real etcd with --enable-v2 beside the bundled store, and
plain HTTP requests that keep status, headers and body."""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest

from tests.harness.bundled import BundledStore, start_bundled
from tests.harness.etcd import EtcdMember
from tests.harness.procs import find_tool, free_port

ETCDCTL = find_tool("etcdctl")


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    raw: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.raw)


def request(
    url: str,
    method: str,
    path: str,
    form: dict[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 10,
    headers: dict[str, str] | None = None,
) -> Answer:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    sent = dict(headers or {})
    if form is not None:
        body = urlencode(form).encode()
        sent["Content-Type"] = "application/x-www-form-urlencoded"
    try:
        conn.request(method, path, body=body, headers=sent)
        response = conn.getresponse()
        return Answer(
            response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        )
    finally:
        conn.close()


def start_etcd_v2(root: Path) -> EtcdMember:
    member = EtcdMember(name="etcd0", data_dir=root / "etcd0", extra=["--enable-v2"])
    return member.start().wait_ready()


def start_bundled_like_etcd(root: Path) -> BundledStore:
    """The bundled store, its member list shaped as the harness's etcd's (a peer URL on
    loopback), so that etcdctl's output differs only in IDs and ports."""
    peer = f"http://127.0.0.1:{free_port()}"
    return start_bundled(root, ["--name", "etcd0", "--initial-advertise-peer-urls", peer])


@pytest.fixture(scope="session")
def bundled_kv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BundledStore]:
    """One bundled store for the worker's comparisons with the shared real etcd."""
    running = start_bundled(tmp_path_factory.mktemp("bundled-http"))
    yield running
    running.stop()


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A real etcd (v2 enabled) and a bundled store, both fresh."""
    etcd = start_etcd_v2(tmp_path / "etcd")
    try:
        bundled = start_bundled_like_etcd(tmp_path / "bundled")
    except BaseException:
        etcd.stop()
        raise
    yield {"etcd": etcd, "bundled": bundled}
    bundled.stop()
    etcd.stop()


def etcdctl2(url: str, *args: str, timeout: float = 15) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ETCDCTL_API": "2"}
    return subprocess.run(
        [ETCDCTL, f"--endpoints={url}", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


_INDEXES = ("createdIndex", "modifiedIndex", "index")


def normalise(value: Any) -> Any:
    """A v2 body with indexes, expirations and TTLs replaced by their kind."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key in _INDEXES:
                out[key] = "N" if isinstance(item, int) and item > 0 else item
            elif key == "expiration":
                out[key] = "T"
            elif key == "ttl":
                out[key] = "ttl"
            elif key == "cause" and isinstance(item, str):
                out[key] = re.sub(r"\d+ != \d+\]", "N != N]", re.sub(r"/\d{20}", "/SEQ", item))
            elif key == "key" and isinstance(item, str):
                out[key] = re.sub(r"/\d{20}", "/SEQ", item)
            else:
                out[key] = normalise(item)
        return out
    if isinstance(value, list):
        return [normalise(item) for item in value]
    return value
