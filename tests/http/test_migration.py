"""The migration path from the bundled store to a real etcd cluster: `etcdctl make-mirror`
copies the keys (v2-written ones included, since they are v3 keys here) and follows writes."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from tests.harness.bundled import start_bundled
from tests.harness.etcd import start_etcd
from tests.http.conftest import ETCDCTL, etcdctl2
from tests.kv.tools import etcdctl


def _keys(url: str) -> list[str]:
    return etcdctl(url, "get", "--prefix", "/", "--keys-only").out.split()


def test_make_mirror_from_the_bundled_store_to_etcd(tmp_path: Path) -> None:
    bundled = start_bundled(tmp_path / "bundled")
    etcd = start_etcd(tmp_path / "etcd")
    mirror = None
    try:
        for index in range(50):
            assert etcdctl(bundled.url, "put", f"/app/k{index:02d}", f"v{index}").rc == 0
        assert etcdctl2(bundled.url, "mkdir", "/foo-service").returncode == 0
        assert etcdctl2(bundled.url, "set", "/message", "Hello").returncode == 0
        env = {**os.environ, "ETCDCTL_API": "3"}
        mirror = subprocess.Popen(
            [ETCDCTL, f"--endpoints={bundled.url}", "make-mirror", etcd.url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        expected = _keys(bundled.url)
        assert len(expected) == 52
        deadline = time.monotonic() + 30
        while _keys(etcd.url) != expected and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _keys(etcd.url) == expected
        # Writes after the copy follow.
        etcdctl(bundled.url, "put", "/app/late", "after")
        etcdctl(bundled.url, "del", "/app/k00")
        deadline = time.monotonic() + 30
        while _keys(etcd.url) != _keys(bundled.url) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _keys(etcd.url) == _keys(bundled.url)
        assert etcdctl(etcd.url, "get", "/message", "--print-value-only").out.strip() == "Hello"
    finally:
        if mirror is not None:
            mirror.terminate()
            mirror.communicate(timeout=10)  # reaps it and closes its pipes
        etcd.stop()
        bundled.stop()
