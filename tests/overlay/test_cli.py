"""`clusterd overlay` as a real process: subnet.env, the same subnet after a restart, clean stop."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from clustertui.backend.etcd import EtcdClient
from tests.harness.procs import REPO, spawned


def start_overlay(
    url: str, data_dir: Path, prefix: str, *extra: str
) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    return spawned(
        [sys.executable, "-m", "clustertui.backend.daemon", "overlay", "--endpoints", url,
         "--data-dir", str(data_dir), "--public-ip", "10.0.0.5", "--prefix", prefix,
         "--lease-only", *extra],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip


def wait_for_file(path: Path, process: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + 20
    while not path.exists():
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)
    return path.read_text()


async def test_overlay_writes_subnet_env_and_a_restart_keeps_the_subnet(
    kv: EtcdClient, store, ns: bytes, tmp_path: Path
) -> None:
    prefix = ns.decode().rstrip("/") + "/coreos.com/network"
    await kv.put(f"{prefix}/config".encode(), b'{"Network": "10.20.0.0/16"}')
    env_file = tmp_path / "subnet.env"
    with start_overlay(store.url, tmp_path, prefix, "--ip-masq") as first:
        text = wait_for_file(env_file, first)
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=20) == 0
    values = dict(line.split("=", 1) for line in text.splitlines())
    assert values["FLANNEL_NETWORK"] == "10.20.0.0/16"
    assert values["FLANNEL_MTU"] == "1450" and values["FLANNEL_IPMASQ"] == "true"
    subnet = values["FLANNEL_SUBNET"]
    assert subnet.startswith("10.20.") and subnet.endswith(".1/24")
    key = f"{prefix}/subnets/{subnet.removesuffix('.1/24')}.0-24".encode()
    stored = await kv.get(key)
    assert json.loads(stored.value)["PublicIP"] == "10.0.0.5"

    env_file.unlink()
    with start_overlay(store.url, tmp_path, prefix) as second:
        again = wait_for_file(env_file, second)
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=20)
    assert f"FLANNEL_SUBNET={subnet}\n" in again


def test_overlay_refuses_a_bad_duration(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "clustertui.backend.daemon", "overlay", "--data-dir", str(tmp_path),
         "--public-ip", "10.0.0.5", "--subnet-lease-ttl", "5 parsecs"],
        cwd=REPO,
        capture_output=True,
    )  # fmt: skip
    assert result.returncode == 2
    assert b"is not a duration" in result.stderr
