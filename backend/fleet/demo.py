"""Provides the demo cluster's scheduler side: the store choice, nodes, network config, units."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clustertui.backend.etcd import make_client
from clustertui.backend.fleet.registry import DEFAULT_PREFIX, Registry
from clustertui.backend.keys import prefix_end
from clustertui.backend.overlay.config import DEFAULT_PREFIX as NETWORK_PREFIX


def clusterd_command() -> list[str]:
    """How to run `clusterd` so `ps` names it so: the installed `clusterd` command beside
    this Python (the kernel names a `#!` script's process after the script), else the one on
    PATH, else this Python running the installed module."""
    script = Path(sys.executable).with_name("clusterd")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    found = shutil.which("clusterd")
    if found:
        return [found]
    return [sys.executable, "-m", "clustertui.backend.daemon"]


def clusterd_path() -> str:
    """PATH with the directory of this `clusterd` first: a shell opened on a local machine
    finds the same `clusterd` the demo runs."""
    here = str(Path(sys.executable).parent)
    rest = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d and d != here]
    return os.pathsep.join([here, *rest])


NETWORK_KEY = f"{NETWORK_PREFIX}/config"
NETWORK_CONFIG = {"Network": "10.1.0.0/16", "SubnetLen": 24, "Backend": {"Type": "vxlan"}}
# Node i gets METADATA[i % len(METADATA)], so MachineMetadata units have somewhere to go.
METADATA = ("region=us-east,disk=ssd", "region=us-west,disk=hdd", "region=us-west,disk=ssd")

SAMPLE_UNITS: dict[str, str] = {
    "hello.service": """\
[Unit]
Description=Says hello every second

[Service]
ExecStart=/bin/sh -c 'while true; do echo "Hello from $(hostname) at $(date +%%T)"; sleep 1; done'
""",
    "monitor.service": """\
[Unit]
Description=Reports the load average on every machine

[Service]
ExecStart=/bin/sh -c 'while true; do echo "load $(cut -d" " -f1-3 /proc/loadavg)"; sleep 5; done'

[X-Fleet]
Global=true
""",
    "ssd-cache.service": """\
[Unit]
Description=A cache that wants a fast disk

[Service]
ExecStart=/bin/sh -c 'echo "cache warming on an SSD"; while true; do sleep 10; echo hit; done'

[X-Fleet]
MachineMetadata=disk=ssd
""",
    "web@.service": """\
[Unit]
Description=Web server %i

[Service]
Environment=PORT=%i
ExecStartPre=/bin/echo "preparing web %i"
ExecStart=/bin/sh -c 'echo "listening on port $PORT"; \
  while true; do sleep 3; echo "GET / 200"; done'
ExecStop=/bin/echo "draining web %i"

[X-Fleet]
Conflicts=web@*.service
""",
    "flaky.service": """\
[Unit]
Description=Fails every few seconds and is restarted

[Service]
ExecStart=/bin/sh -c 'echo "starting up"; sleep 4; echo "something broke" >&2; exit 1'
Restart=always
RestartSec=3
""",
}
# What the demo starts: the template's instances stand in for the template itself.
LAUNCH = ("hello.service", "monitor.service", "ssd-cache.service", "web@8080.service",
          "web@8081.service", "flaky.service")  # fmt: skip


@dataclass
class DemoNodes:
    """The `clusterd node` processes of the demo, stopped together by PID."""

    data_dir: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def stop(self) -> None:
        """SIGTERM every node (each stops its units and leaves), then wait for them."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for process in self.processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _spawn(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip


def store_command(data_dir: Path, port: int, host: str = "127.0.0.1") -> list[str]:
    """The demo's store: the bundled `clusterd kv` on loopback (or the --netns underlay)."""
    url = f"http://{host}:{port}"
    # With --netns the store listens on the demo's private underlay bridge, not loopback.
    remote = [] if host == "127.0.0.1" else ["--allow-insecure-remote"]
    return [
        *clusterd_command(), "kv", "--data-dir", str(data_dir),
        "--listen-client-urls", url, "--advertise-client-urls", url, *remote,
    ]  # fmt: skip


def start_nodes(nodes: DemoNodes, store_url: str, count: int, network: Any = None) -> None:
    """N `clusterd node` processes on this host, each with its own data dir and loopback IP.

    With ``network`` (a DemoNetwork, `--netns`), node i runs in its namespace with
    ``--iface eth0``: its overlay programs vxlan there.
    """
    for index in range(count):
        data_dir = nodes.data_dir / f"node{index + 1}"
        public_ip = f"127.0.0.{index + 1}" if network is None else network.node_ip(index + 1)
        argv = [
            *clusterd_command(), "node",
            "--endpoints", store_url,
            "--data-dir", str(data_dir),
            "--metadata", METADATA[index % len(METADATA)],
            "--public-ip", public_ip,
            "--agent-ttl", "5s",
            "--engine-reconcile-interval", "2s",
        ]  # fmt: skip
        if network is not None:
            argv = ["ip", "netns", "exec", network.node_ns(index + 1), *argv, "--iface", "eth0"]
        nodes.processes.append(_spawn(argv, nodes.data_dir / f"node{index + 1}.log"))


async def _wait_for_machines(registry: Registry, count: int) -> None:
    state = await registry.snapshot(("machines",))
    if len(state.machines) >= count:
        return
    base = registry.key("machines") + b"/"
    async for _ in registry.client.watch_batches(
        base, prefix_end(base), start_revision=state.revision + 1
    ):
        if len(await registry.machines()) >= count:
            return


async def seed_scheduler(
    store_url: str,
    *,
    machines: int,
    prefix: str = DEFAULT_PREFIX,
    extra_units: dict[str, str] | None = None,
) -> None:
    """Write the overlay's network config; once ``machines`` are up, launch the sample units."""
    client = make_client([store_url])
    try:
        await client.wait_ready(30)
        await client.put(NETWORK_KEY.encode(), json.dumps(NETWORK_CONFIG).encode())
        registry = Registry(client, prefix)
        # Submitting before every node has registered would put everything on the first.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(30):
                await _wait_for_machines(registry, machines)
        for name in LAUNCH:
            template = name.split("@")[0] + "@.service" if "@" in name else name
            await registry.create_job(name, SAMPLE_UNITS[template], replace=True)
            await registry.set_target_state(name, "launched")
        for name, text in (extra_units or {}).items():
            await registry.create_job(name, text, replace=True)
            await registry.set_target_state(name, "launched")
    finally:
        await client.close()
