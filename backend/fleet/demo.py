"""Provides the demo cluster's scheduler side: store and node processes, network config, units."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from backend.etcd import make_client
from backend.fleet.registry import DEFAULT_PREFIX, Registry
from backend.keys import prefix_end

REPO = Path(__file__).resolve().parents[2]
NETWORK_KEY = "/coreos.com/network/config"
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
class DemoProcesses:
    """The store and nodes the demo started, stopped together by PID."""

    store_url: str
    data_dir: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def stop(self) -> None:
        # Nodes first (they stop their units and leave), the store last.
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for process in reversed(self.processes):
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _spawn(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with log.open("ab") as out:
        return subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True,
        )  # fmt: skip


def store_command(data_dir: Path, port: int) -> list[str]:
    """The bundled store when this build has it, else a real etcd from PATH."""
    url = f"http://127.0.0.1:{port}"
    flags = ["--data-dir", str(data_dir), "--listen-client-urls", url]
    flags += ["--advertise-client-urls", url]
    if importlib.util.find_spec("backend.kv.server") is not None:
        return [sys.executable, "-m", "backend.daemon", "kv", *flags]
    etcd = shutil.which("etcd")
    if etcd is None:
        raise RuntimeError("no store: this build has no `clusterd kv` and etcd is not on PATH")
    peer = f"http://127.0.0.1:{_free_port()}"
    return [etcd, *flags, "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"default={peer}", "--log-level", "error"]  # fmt: skip


def start_store(data_dir: Path, port: int = 0) -> DemoProcesses:
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or _free_port()
    demo = DemoProcesses(f"http://127.0.0.1:{port}", data_dir)
    demo.processes.append(_spawn(store_command(data_dir / "store", port), data_dir / "store.log"))
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return demo
        except OSError:
            if demo.processes[0].poll() is not None or time.monotonic() > deadline:
                demo.stop()
                log = (data_dir / "store.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the demo store did not start:\n{log}") from None
            time.sleep(0.1)


def start_nodes(demo: DemoProcesses, count: int) -> None:
    """N `clusterd node` processes on this host, each with its own data dir and loopback IP."""
    for index in range(count):
        data_dir = demo.data_dir / f"node{index + 1}"
        argv = [
            sys.executable, "-m", "backend.daemon", "node",
            "--endpoints", demo.store_url,
            "--data-dir", str(data_dir),
            "--metadata", METADATA[index % len(METADATA)],
            "--public-ip", f"127.0.0.{index + 1}",
            "--agent-ttl", "5s",
            "--engine-reconcile-interval", "2s",
        ]  # fmt: skip
        demo.processes.append(_spawn(argv, demo.data_dir / f"node{index + 1}.log"))


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


async def seed_scheduler(store_url: str, *, machines: int, prefix: str = DEFAULT_PREFIX) -> None:
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
    finally:
        await client.close()
