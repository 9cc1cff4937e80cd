"""Provides ``DemoNetwork``: the demo's hosts as network namespaces on one underlay bridge.

For `clusterd demo --netns` (root only): each demo node runs in a namespace of its own with
``eth0`` on a bridge, the store listens on a veth from the root namespace into that bridge,
and each node gets a "container" namespace on a bridge holding its FLANNEL_SUBNET's first
address, with a small TCP server in it. Everything is private to this machine (10.213.N.0/24
for the underlay, the overlay's network for containers) and removed by ``destroy()``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field

UNDERLAY_BASE = "10.213"

WHOAMI = """
import socket, sys
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((sys.argv[1], int(sys.argv[2])))
server.listen(64)
while True:
    conn, peer = server.accept()
    with conn:
        conn.sendall(f"{sys.argv[3]} answers {peer[0]}".encode())
"""

PING = """
import ipaddress, socket, subprocess, time
while True:
    routes = subprocess.run(["ip", "-4", "route", "show", "proto", "157"],
                            capture_output=True, text=True).stdout.split("\\n")
    for line in routes:
        if not line.strip():
            continue
        subnet = ipaddress.IPv4Network(line.split()[0])
        target = str(subnet.network_address + 2)
        started = time.monotonic()
        try:
            with socket.create_connection((target, 7000), timeout=1) as conn:
                answer = conn.recv(200).decode()
            took = (time.monotonic() - started) * 1000
            print(f"{target}: {answer} ({took:.1f} ms over the overlay)", flush=True)
        except OSError as error:
            print(f"{target}: unreachable ({error})", flush=True)
    time.sleep(3)
"""


def _ip(*argv: str) -> None:
    result = subprocess.run(["ip", *argv], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(argv)}: {result.stderr.strip()}")


@dataclass
class DemoNetwork:
    tag: str = field(default_factory=lambda: f"ctuidemo{os.getpid()}")
    octet: int = 0
    namespaces: list[str] = field(default_factory=list)
    servers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def store_ip(self) -> str:
        return f"{UNDERLAY_BASE}.{self.octet}.1"

    def node_ip(self, index: int) -> str:
        return f"{UNDERLAY_BASE}.{self.octet}.{10 + index}"

    def node_ns(self, index: int) -> str:
        return f"{self.tag}n{index}"

    def _ns(self, name: str) -> str:
        _ip("netns", "add", name)
        self.namespaces.append(name)
        _ip("-n", name, "link", "set", "lo", "up")
        return name

    def create(self, nodes: int) -> DemoNetwork:
        routes = subprocess.run(
            ["ip", "-4", "route", "show", "table", "all"], capture_output=True, text=True
        ).stdout
        used = {int(m) for m in re.findall(rf"{re.escape(UNDERLAY_BASE)}\.(\d+)\.", routes)}
        self.octet = next(n for n in range(200, 255) if n not in used)
        underlay = self._ns(f"{self.tag}u")
        _ip("-n", underlay, "link", "add", "br0", "type", "bridge")
        _ip("-n", underlay, "link", "set", "br0", "up")
        root_end = f"ctd{os.getpid()}"[:15]
        _ip("link", "add", root_end, "type", "veth", "peer", "name", "st", "netns", underlay)
        _ip("addr", "add", f"{self.store_ip}/24", "dev", root_end)
        _ip("link", "set", root_end, "up")
        _ip("-n", underlay, "link", "set", "st", "master", "br0", "up")
        for index in range(1, nodes + 1):
            ns = self._ns(self.node_ns(index))
            port = f"n{index}"
            _ip("-n", underlay, "link", "add", port, "type", "veth", "peer", "name", "eth0",
                "netns", ns)  # fmt: skip
            _ip("-n", underlay, "link", "set", port, "master", "br0", "up")
            _ip("-n", ns, "addr", "add", f"{self.node_ip(index)}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            subprocess.run(
                ["ip", "netns", "exec", ns, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"],
                check=True,
            )
        return self

    def add_container(self, index: int, env: dict[str, str]) -> str:
        """A container namespace on node ``index``'s bridge, with a TCP server on port 7000."""
        host = self.node_ns(index)
        gateway = ipaddress.IPv4Interface(env["FLANNEL_SUBNET"])
        address = str(gateway.ip + 1)
        container = self._ns(f"{host}c")
        _ip("-n", host, "link", "add", "cbr0", "type", "bridge")
        _ip("-n", host, "addr", "add", str(gateway), "dev", "cbr0")
        _ip("-n", host, "link", "set", "cbr0", "up")
        _ip("-n", host, "link", "add", "c0", "type", "veth", "peer", "name", "eth0",
            "netns", container)  # fmt: skip
        _ip("-n", host, "link", "set", "c0", "master", "cbr0", "up")
        _ip("-n", container, "link", "set", "eth0", "mtu", env.get("FLANNEL_MTU", "1450"), "up")
        _ip("-n", container, "addr", "add", f"{address}/{gateway.network.prefixlen}", "dev",
            "eth0")  # fmt: skip
        _ip("-n", container, "route", "add", "default", "via", str(gateway.ip))
        argv = ["ip", "netns", "exec", container, sys.executable, "-c", WHOAMI, address,
                "7000", f"container on node{index}"]  # fmt: skip
        server = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL
        )
        self.servers.append(server)
        return address

    def destroy(self) -> None:
        for server in self.servers:
            if server.poll() is None:
                server.kill()
                server.wait()
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.namespaces.clear()
