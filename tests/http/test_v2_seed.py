"""The seed page's etcd v2 commands through Debian's etcdctl (ETCDCTL_API=2), against real etcd
with --enable-v2 and against the bundled store: the same output, IDs and ports aside."""

from __future__ import annotations

import os
import re
import subprocess
import time
from typing import Any

from tests.http.conftest import ETCDCTL, etcdctl2, request
from tests.kv.tools import etcdctl

SEED = [
    ["set", "/message", "Hello"],
    ["get", "/message"],
    ["mkdir", "/foo-service"],
    ["set", "/foo-service/container1", "localhost:1111"],
    ["ls", "/foo-service"],
    ["set", "/foo", "Expiring Soon", "--ttl", "20"],
    "watch",
    ["cluster-health"],
    ["member", "list"],
    ["ls", "--sort", "--recursive", "/"],
    ["get", "/foo"],
    ["get", "/nope"],
    ["mkdir", "/foo-service"],
    ["rm", "/foo-service"],
    ["rmdir", "/foo-service"],
    ["rm", "--recursive", "/foo-service"],
    ["ls", "--sort", "/"],
]


def _normalise(text: str) -> str:
    text = re.sub(r"\b[0-9a-f]{12,16}\b", "MEMBER", text)
    text = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", text)
    return re.sub(r"\[\d+\]", "[INDEX]", text)


def _watchers(url: str) -> int:
    return int(request(url, "GET", "/v2/stats/store").json["watchers"])


def _run_seed(url: str) -> list[str]:
    out = []
    for step in SEED:
        if step == "watch":
            env = {**os.environ, "ETCDCTL_API": "2"}
            watch = subprocess.Popen(
                [ETCDCTL, f"--endpoints={url}", "watch", "/foo-service", "--recursive"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            deadline = time.monotonic() + 10
            while _watchers(url) == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            done = etcdctl2(url, "set", "/foo-service/container2", "localhost:2222")
            watched, errors = watch.communicate(timeout=10)
            out.append(f"$ set /foo-service/container2 -> {done.returncode}\n{done.stdout}")
            out.append(f"$ watch -> {watch.returncode}\n{watched}{errors}")
            continue
        assert isinstance(step, list)
        done = etcdctl2(url, *step)
        out.append(f"$ {' '.join(step)} -> {done.returncode}\n{done.stdout}{done.stderr}")
    return [_normalise(text) for text in out]


def test_seed_sequence_same_on_both(pair: dict[str, Any]) -> None:
    etcd, bundled = pair["etcd"], pair["bundled"]
    expected = _run_seed(etcd.url)
    got = _run_seed(bundled.url)
    assert got == expected
    joined = "\n".join(got)
    # What the seed page shows, as it shows it.
    assert "$ get /message -> 0\nHello\n" in joined
    assert "[set] /foo-service/container2\nlocalhost:2222" in joined
    assert "is healthy: got healthy result from http://127.0.0.1:PORT" in joined
    assert "cluster is healthy" in joined


def test_seed_keys_visible_to_v3(pair: dict[str, Any]) -> None:
    """The bundled store's v2 keys are its v3 keys (etcd keeps them apart)."""
    bundled = pair["bundled"]
    assert etcdctl2(bundled.url, "set", "/message", "Hello").returncode == 0
    assert etcdctl2(bundled.url, "mkdir", "/foo-service").returncode == 0
    assert etcdctl2(bundled.url, "set", "/foo-service/c1", "localhost:1111").returncode == 0
    found = etcdctl(bundled.url, "get", "--prefix", "/")
    assert found.out.splitlines() == [
        "/foo-service/", "", "/foo-service/c1", "localhost:1111", "/message", "Hello",
    ]  # fmt: skip
    # and v3 writes appear to v2 clients
    etcdctl(bundled.url, "put", "/foo-service/c2", "from-v3")
    assert etcdctl2(bundled.url, "ls", "--sort", "/foo-service").stdout.splitlines() == [
        "/foo-service/c1",
        "/foo-service/c2",
    ]
    etcd = pair["etcd"]
    etcdctl2(etcd.url, "set", "/message", "Hello")
    assert etcdctl(etcd.url, "get", "--prefix", "/").out == ""
