"""Runs a local demo cluster: `clusterd demo` (a store, a sample key tree, nodes and units)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from backend import filemodes
from backend.etcd import EtcdClient, make_client
from backend.fleet.demo import DemoNodes, seed_scheduler, start_nodes, store_command

READY_SECONDS = 20.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
    # 0700, as tempfile.mkdtemp makes the default one: it holds the store and the logs.
    filemodes.make_dirs(data_dir, filemodes.PRIVATE_DIR)
    port = port or _free_port()
    log = data_dir / "store.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            store_command(data_dir / "store", port),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
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


PLACEHOLDER_MACHINE = "/_coreos.com/fleet/machines/8a3d1b/"


async def _delete_prefix(url: str, prefix: str) -> None:
    client = make_client([url])
    try:
        await client.delete_prefix(prefix.encode())
    finally:
        await client.close()


@dataclass
class DemoCluster:
    """The whole demo: the store with its sample tree, and the nodes running sample units."""

    store: DemoStore
    nodes: DemoNodes

    @property
    def url(self) -> str:
        return self.store.url

    def stop(self) -> None:
        self.nodes.stop()
        self.store.stop()


async def start_cluster(root: Path, machines: int = 3, port: int = 0) -> DemoCluster:
    """Start the store, seed its tree, start ``machines`` nodes and launch the sample units."""
    store = await asyncio.to_thread(start_store, root, port)
    nodes = DemoNodes(root)
    try:
        await seed_store(store.url)
        # The tree's placeholder machine has no agent: units placed on it would never run.
        await _delete_prefix(store.url, PLACEHOLDER_MACHINE)
        start_nodes(nodes, store.url, machines)
        await seed_scheduler(store.url, machines=machines)
    except BaseException:
        nodes.stop()
        store.stop()
        raise
    return DemoCluster(store, nodes)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir", help="where the demo keeps its state (a temporary dir by default)"
    )
    parser.add_argument(
        "--port", type=int, default=0, help="client port of the demo store (free by default)"
    )
    parser.add_argument(
        "--machines", type=int, default=3, help="how many `clusterd node` processes to run"
    )


def run(args: argparse.Namespace) -> int:
    import tempfile

    if args.machines < 1:
        print("clusterd demo: --machines must be at least 1", file=sys.stderr)
        return 2
    temporary = not args.data_dir
    root = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="clusterd-demo-"))
    root = root.resolve()
    # SIGTERM and a closed terminal end the demo the way Ctrl-C does: through the finally.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGHUP, signal.default_int_handler)
    cluster = None
    try:
        cluster = asyncio.run(start_cluster(root, args.machines, args.port))
        print(f"demo cluster at {cluster.url}: {args.machines} machines (data in {root})")
        print(f"  clustertui --endpoints {cluster.url}")
        print(f"  clusterctl --endpoint {cluster.url} list-units")
        print("ctrl+c stops it", flush=True)
        cluster.store.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        if cluster is not None:
            with contextlib.suppress(OSError):
                print("stopping the demo cluster…", flush=True)
            cluster.stop()
        if temporary:
            # A temporary directory goes with the demo, whichever way it ended.
            shutil.rmtree(root, ignore_errors=True)
    return 0
