"""Runs a local demo cluster: `clusterd demo` (a store with a sample key tree for now)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from backend.etcd import EtcdClient, make_client

READY_SECONDS = 20.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def store_command(data_dir: Path, port: int) -> list[str]:
    """The demo store's command line: the bundled `clusterd kv`. The one place that picks it."""
    return [
        sys.executable, "-m", "backend.daemon", "kv",
        "--name", "demo",
        "--data-dir", str(data_dir / "store"),
        "--listen-client-urls", f"http://127.0.0.1:{port}",
    ]  # fmt: skip


def _child_env() -> dict[str, str]:
    """Our environment, with this checkout importable even when nothing is installed."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


@dataclass
class DemoStore:
    """The running demo store: its client URL and its process."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def start_store(data_dir: Path, port: int = 0) -> DemoStore:
    """Start the demo store under ``data_dir`` and wait until it takes connections."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or _free_port()
    log = data_dir / "store.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            store_command(data_dir, port),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=_child_env(),
        )
    store = DemoStore(f"http://127.0.0.1:{port}", process, log)
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the demo store exited early; see {log}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return store
        except OSError:
            time.sleep(0.05)
    store.stop()
    raise RuntimeError(f"the demo store did not start in {READY_SECONDS:.0f}s; see {log}")


SAMPLE: dict[str, object] = {
    "/config/app/database": {"host": "db.internal", "port": 5432, "pool": {"min": 2, "max": 20}},
    "/config/app/features": {"new_ui": True, "beta": ["alice", "bob"]},
    "/config/app/log-level": "info",
    "/config/web/nginx.yaml": (
        "server:\n  listen: 80\n  root: /srv/www\nupstreams:\n  - app1\n  - app2\n"
    ),
    "/config/web/motd": "Welcome to the demo cluster.\nChanges here show up live.\n",
    "/services/web/10.1.15.2:80": {"host": "10.1.15.2", "port": 80},
    "/services/web/10.1.16.2:80": {"host": "10.1.16.2", "port": 80},
    "/services/api/10.1.15.3:8080": {"host": "10.1.15.3", "port": 8080},
    "/_coreos.com/fleet/machines/8a3d1b/object": {"ID": "8a3d1b", "PublicIP": "172.17.8.101"},
    "/coreos.com/network/config": {"Network": "10.1.0.0/16", "Backend": {"Type": "vxlan"}},
}
BINARY_KEY = "/binary/blob"
BINARY_VALUE = bytes(range(0, 256, 7)) + b"\x00\xff\x1b[31m"

TTL_KEY = "/locks/deploy"
TTL_SECONDS = 600
QUEUE_DIR = "/queue/jobs/"


async def seed(client: EtcdClient) -> None:
    """Write the sample tree: nested directories, JSON and plain values, a TTL key, a queue."""
    for key, value in SAMPLE.items():
        if isinstance(value, str):
            data = value.encode()
        else:
            data = json.dumps(value).encode()
        await client.put(key.encode(), data)
    await client.put(BINARY_KEY.encode(), BINARY_VALUE)
    lease = await client.lease(TTL_SECONDS)
    await client.put(TTL_KEY.encode(), b"held by deployer@ops-1", lease=lease)
    for number in range(1, 13):
        # Queue-like: fixed-width sequence numbers sort in arrival order, like etcd's in-order keys.
        job = {"task": "resize-images", "batch": number}
        await client.put(f"{QUEUE_DIR}{number:020d}".encode(), json.dumps(job).encode())


async def seed_store(url: str) -> None:
    client = make_client([url])
    try:
        await client.wait_ready()
        await seed(client)
    finally:
        await client.close()


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir", help="where the demo keeps its state (a temporary dir by default)"
    )
    parser.add_argument(
        "--port", type=int, default=0, help="client port of the demo store (free by default)"
    )


def run(args: argparse.Namespace) -> int:
    import tempfile

    root = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="clusterd-demo-"))
    store = start_store(root, args.port)
    # systemd and `timeout` stop with SIGTERM; the store must not outlive us then either.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        asyncio.run(seed_store(store.url))
        print(f"demo store at {store.url} (data in {root}); ctrl+c stops it", flush=True)
        print(f"  clustertui --endpoints {store.url}", flush=True)
        store.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        store.stop()
    return 0
