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
from typing import Any

from clustertui.backend import filemodes
from clustertui.backend.etcd import EtcdClient, make_client
from clustertui.backend.fleet.demo import DemoNodes, seed_scheduler, start_nodes, store_command
from clustertui.backend.overlay.config import DEFAULT_PREFIX as NETWORK_PREFIX

READY_SECONDS = 20.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


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


def start_store(data_dir: Path, port: int = 0, host: str = "127.0.0.1") -> DemoStore:
    """Start the demo store under ``data_dir`` and wait until it takes connections."""
    # 0700, as tempfile.mkdtemp makes the default one: it holds the store and the logs.
    filemodes.make_dirs(data_dir, filemodes.PRIVATE_DIR)
    port = port or _free_port()
    log = data_dir / "store.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            store_command(data_dir / "store", port, host),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    store = DemoStore(f"http://{host}:{port}", process, log)
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the demo store exited early; see {log}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
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
    f"{NETWORK_PREFIX}/config": {"Network": "10.1.0.0/16", "Backend": {"Type": "vxlan"}},
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
    network: Any = None
    """With --netns: the DemoNetwork (namespaces, bridges, containers) to remove on stop."""

    @property
    def url(self) -> str:
        return self.store.url

    def stop(self) -> None:
        try:
            self.nodes.stop()
            self.store.stop()
        finally:
            # Namespaces and bridges outlive the process: they go even if a stop above fails.
            if self.network is not None:
                self.network.destroy()


def netns_possible() -> str | None:
    """None when `--netns` can run here, else why not (it needs root and iproute2)."""
    import os
    import shutil

    if os.geteuid() != 0:
        return "--netns needs root (network namespaces); the demo runs without them"
    if shutil.which("ip") is None:
        return "--netns needs iproute2's ip command; the demo runs without namespaces"
    return None


OVERLAY_PING = """\
[Unit]
Description=Talks to every other node's container across the overlay, every 3 seconds

[Service]
ExecStart={python} {script}

[X-Fleet]
Global=true
"""


async def start_cluster(
    root: Path, machines: int = 3, port: int = 0, *, netns: bool = False
) -> DemoCluster:
    """Start the store, seed its tree, start ``machines`` nodes and launch the sample units.

    With ``netns`` (root only) every node runs in a network namespace of its own, its
    overlay programs vxlan, each node has a container namespace, and a global unit,
    overlay-ping.service, talks from every node to the others' containers.
    """
    network = None
    extra: dict[str, str] = {}
    try:
        if netns:
            from clustertui.backend.overlay.netns import DemoNetwork

            network = DemoNetwork()
            extra = await asyncio.to_thread(_prepare_netns, network, root, machines)
        host = network.store_ip if network is not None else "127.0.0.1"
        store = await asyncio.to_thread(start_store, root, port, host)
    except BaseException:
        if network is not None:
            network.destroy()
        raise
    nodes = DemoNodes(root)
    try:
        await seed_store(store.url)
        # The tree's placeholder machine has no agent: units placed on it would never run.
        await _delete_prefix(store.url, PLACEHOLDER_MACHINE)
        start_nodes(nodes, store.url, machines, network)
        await seed_scheduler(store.url, machines=machines, extra_units=extra)
        if network is not None:
            await asyncio.to_thread(_add_containers, network, root, machines)
    except BaseException:
        nodes.stop()
        store.stop()
        if network is not None:
            network.destroy()
        raise
    return DemoCluster(store, nodes, network)


def _prepare_netns(network: Any, root: Path, machines: int) -> dict[str, str]:
    """Create the namespaces and write the overlay-ping script; its unit, by name."""
    from clustertui.backend.overlay.netns import PING

    network.create(machines)
    root.mkdir(parents=True, exist_ok=True)
    script = root / "overlay-ping.py"
    script.write_text(PING)
    return {"overlay-ping.service": OVERLAY_PING.format(python=sys.executable, script=script)}


def _add_containers(network: Any, root: Path, machines: int) -> None:
    from clustertui.backend.overlay.lease import read_subnet_env

    for index in range(1, machines + 1):
        path = root / f"node{index}" / "subnet.env"
        deadline = time.monotonic() + READY_SECONDS
        while not read_subnet_env(path).get("FLANNEL_SUBNET"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"node{index} never leased a subnet; see {root}/node{index}.log")
            time.sleep(0.1)
        network.add_container(index, read_subnet_env(path))


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
    parser.add_argument(
        "--netns",
        action="store_true",
        help="(root) each node in its own network namespace, the overlay carrying real traffic",
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
    netns = args.netns
    if netns and (why := netns_possible()):
        print(f"clusterd demo: {why}", file=sys.stderr)
        netns = False
    try:
        cluster = asyncio.run(start_cluster(root, args.machines, args.port, netns=netns))
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
