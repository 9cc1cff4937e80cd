"""Provides network-namespace topologies for the overlay's tests and bench: hosts on one underlay.

A :class:`Topology` owns everything it makes, named ``ctui<pid>x<n>…`` (namespaces) so a
session sweep can find leftovers of dead runs; deleting its namespaces removes every link
it made (the root-side end of the store's veth goes with its peer).

Layout (all addresses private to this machine: nothing is routed outside it)::

    root ns: store on 10.213.N.1 ──veth── [U: bridge br0] ──veth── H1 eth0 10.213.N.11
                                                          ├─veth── H2 eth0 10.213.N.12 …
    H1: clusterd overlay --iface eth0; bridge cbr0 with FLANNEL_SUBNET's first address,
        veth into container namespace C1 (address .2 of the subnet, default route via .1)
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import itertools
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.harness.procs import REPO, Child, port_open
from tests.harness.stores import RunningStore

PREFIX = "ctui"
UNDERLAY_BASE = "10.213"
_counter = itertools.count()
_LOCK = Path("/tmp/clustertui-netns.lock")


def ip(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *argv], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(argv)}: {result.stderr.strip()}")
    return result


def in_ns(ns: str, *argv: str, check: bool = True, timeout: float = 30) -> str:
    result = subprocess.run(
        ["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"in {ns}: {' '.join(argv)}: {result.stderr.strip()}")
    return result.stdout


def sweep_leftovers() -> list[str]:
    """Delete our namespaces whose creating process is gone (a crashed or killed run)."""
    removed = []
    for line in ip("netns", "list").stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        # ctui<pid>x<n>… (tests, bench) and ctuidemo<pid>… (`clusterd demo --netns`).
        match = re.fullmatch(rf"{PREFIX}(?:demo)?(\d+)(?:x\d+)?[a-z]\w*", name)
        if not match:
            continue
        pid = int(match.group(1))
        try:
            os.kill(pid, 0)
            continue
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        ip("netns", "del", name, check=False)
        removed.append(name)
    return removed


def _free_underlay() -> int:
    """A third octet N such that the root namespace has no route into 10.213.N.0/24."""
    routes = ip("-4", "route", "show", "table", "all").stdout
    used = {int(m) for m in re.findall(rf"{re.escape(UNDERLAY_BASE)}\.(\d+)\.", routes)}
    start = (os.getpid() * 7 + next(_counter)) % 200
    for step in range(250):
        candidate = (start + step) % 250 + 1
        if candidate not in used:
            return candidate
    raise RuntimeError("no free 10.213.N.0/24 underlay subnet left in the root namespace")


@dataclass
class Host:
    name: str
    ns: str
    address: str
    container: str | None = None
    container_ip: str | None = None
    subnet: ipaddress.IPv4Network | None = None
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    data_dir: Path | None = None


@dataclass
class Topology:
    """An underlay bridge, a store address in the root namespace, and hosts on the bridge."""

    workdir: Path
    tag: str = field(default_factory=lambda: f"{PREFIX}{os.getpid()}x{next(_counter)}")
    namespaces: list[str] = field(default_factory=list)
    hosts: list[Host] = field(default_factory=list)
    servers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    octet: int = 0

    @property
    def underlay(self) -> str:
        return f"{self.tag}u"

    @property
    def store_ip(self) -> str:
        return f"{UNDERLAY_BASE}.{self.octet}.1"

    @property
    def underlay_net(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"{UNDERLAY_BASE}.{self.octet}.0/24")

    def _ns(self, name: str) -> str:
        ip("netns", "add", name)
        self.namespaces.append(name)
        in_ns(name, "ip", "link", "set", "lo", "up")
        return name

    def create(self) -> Topology:
        """The underlay namespace and bridge, and the root side's veth holding ``store_ip``."""
        self._ns(self.underlay)
        u = self.underlay
        ip("-n", u, "link", "add", "br0", "type", "bridge")
        ip("-n", u, "link", "set", "br0", "up")
        root_end = f"{self.tag}r"[-15:]
        with _LOCK.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.octet = _free_underlay()
            ip("link", "add", root_end, "type", "veth", "peer", "name", "st", "netns", u)
            ip("addr", "add", f"{self.store_ip}/24", "dev", root_end)
            ip("link", "set", root_end, "up")
        ip("-n", u, "link", "set", "st", "master", "br0", "up")
        return self

    def add_host(self, name: str, *, forwarding: bool = True, last_octet: int = 0) -> Host:
        """A host namespace with ``eth0`` on the underlay bridge."""
        index = len(self.hosts) + 1
        ns = self._ns(f"{self.tag}{name}")
        u = self.underlay
        port = f"p{name}"[:15]
        ip("-n", u, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
        ip("-n", u, "link", "set", port, "master", "br0", "up")
        address = f"{UNDERLAY_BASE}.{self.octet}.{last_octet or 10 + index}"
        ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
        ip("-n", ns, "link", "set", "eth0", "up")
        in_ns(ns, "sysctl", "-q", "-w", f"net.ipv4.ip_forward={1 if forwarding else 0}")
        host = Host(name, ns, address, data_dir=self.workdir / name)
        self.hosts.append(host)
        return host

    def add_outside(self, name: str = "out", last_octet: int = 250) -> Host:
        """A namespace on the underlay that is outside the overlay (no route back into it)."""
        return self.add_host(name, forwarding=False, last_octet=last_octet)

    # -- the overlay process ---------------------------------------------------------------

    def start_overlay(self, host: Host, store_url: str, prefix: str, *extra: str) -> Host:
        assert host.data_dir is not None
        host.data_dir.mkdir(parents=True, exist_ok=True)
        host.log = self.workdir / f"{host.name}.log"
        with host.log.open("ab") as out:
            host.process = subprocess.Popen(
                ["ip", "netns", "exec", host.ns, sys.executable, "-m", "clustertui.backend.daemon",
                 "overlay", "--endpoints", store_url, "--iface", "eth0",
                 "--data-dir", str(host.data_dir), "--prefix", prefix, "-v", *extra],
                cwd=REPO,
                env={**os.environ, "PYTHONPATH": str(REPO)},
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
        return host

    def stop_overlay(self, host: Host, sig: int = signal.SIGTERM) -> int | None:
        if host.process is None:
            return None
        if host.process.poll() is None:
            host.process.send_signal(sig)
            try:
                host.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                host.process.kill()
                host.process.wait(timeout=15)
        code = host.process.returncode
        host.process = None
        return code

    def output(self, host: Host) -> str:
        return host.log.read_text(errors="replace") if host.log and host.log.exists() else ""

    def subnet_env(self, host: Host, timeout: float = 20.0) -> dict[str, str]:
        assert host.data_dir is not None
        path = host.data_dir / "subnet.env"
        deadline = time.monotonic() + timeout
        while not path.exists():
            if host.process is not None and host.process.poll() is not None:
                raise RuntimeError(f"overlay on {host.name} exited:\n{self.output(host)}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no subnet.env on {host.name}:\n{self.output(host)}")
            time.sleep(0.05)
        return dict(line.split("=", 1) for line in path.read_text().splitlines())

    def add_container(self, host: Host, env: dict[str, str]) -> Host:
        """A container namespace on a bridge holding FLANNEL_SUBNET's first address."""
        gateway = ipaddress.IPv4Interface(env["FLANNEL_SUBNET"])
        host.subnet = gateway.network
        host.container_ip = str(gateway.ip + 1)
        if host.container is None:
            host.container = self._ns(f"{host.ns}c")
            ip("-n", host.ns, "link", "add", "cbr0", "type", "bridge")
            ip("-n", host.ns, "link", "add", "c0", "type", "veth", "peer", "name", "eth0",
               "netns", host.container)  # fmt: skip
            ip("-n", host.ns, "link", "set", "c0", "master", "cbr0", "up")
        ip("-n", host.ns, "addr", "flush", "dev", "cbr0")
        ip("-n", host.ns, "addr", "add", str(gateway), "dev", "cbr0")
        ip("-n", host.ns, "link", "set", "cbr0", "up")
        c = host.container
        mtu = env.get("FLANNEL_MTU", "1500")
        ip("-n", c, "addr", "flush", "dev", "eth0")
        ip("-n", c, "link", "set", "eth0", "mtu", mtu, "up")
        ip("-n", c, "addr", "add", f"{host.container_ip}/{gateway.network.prefixlen}", "dev",
           "eth0")  # fmt: skip
        ip("-n", c, "route", "replace", "default", "via", str(gateway.ip))
        return host

    # -- traffic ---------------------------------------------------------------------------

    def serve_whoami(self, ns: str, address: str, port: int = 7000) -> None:
        """A TCP server in ``ns`` that answers each connection with the caller's address."""
        process = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", _WHOAMI, address, str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
        self.servers.append(process)
        assert process.stdout is not None
        assert process.stdout.readline().strip() == b"listening"

    def connect(self, ns: str, address: str, port: int = 7000, timeout: float = 2.0) -> str | None:
        """From ``ns``, connect to ``address`` and return what the server says (None: failed)."""
        code = (
            "import socket,sys\n"
            "try:\n"
            f"    s = socket.create_connection(({address!r}, {port}), timeout={timeout})\n"
            "    print(s.recv(100).decode())\n"
            "except OSError as e:\n"
            "    print('FAILED', e)\n"
        )
        out = in_ns(ns, sys.executable, "-c", code, timeout=timeout + 20).strip()
        return None if out.startswith("FAILED") else out

    def wait_connect(self, ns: str, address: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            answer = self.connect(ns, address, timeout=1.0)
            if answer is not None:
                return answer
            if time.monotonic() > deadline:
                raise AssertionError(f"{ns} never reached {address}")

    def destroy(self) -> None:
        for host in self.hosts:
            with contextlib.suppress(Exception):
                self.stop_overlay(host, signal.SIGKILL)
        for server in self.servers:
            with contextlib.suppress(Exception):
                server.kill()
                server.communicate(timeout=5)  # reaps it and closes its stdout pipe
        for ns in reversed(self.namespaces):
            ip("netns", "del", ns, check=False)
        self.namespaces.clear()


_WHOAMI = """
import socket, sys
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((sys.argv[1], int(sys.argv[2])))
server.listen(64)
print("listening", flush=True)
while True:
    conn, peer = server.accept()
    with conn:
        conn.sendall(peer[0].encode())
"""


# -- the store, listening on the underlay ------------------------------------------------------


def start_store(kind: str, root: Path, host: str) -> RunningStore:
    """The harness's real etcd or bundled store, listening on ``host`` instead of loopback."""
    from tests.harness.bundled import BundledStore
    from tests.harness.etcd import EtcdMember

    if kind == "etcd":

        @dataclass
        class UnderlayEtcd(EtcdMember):
            host: str = "127.0.0.1"

            @property
            def url(self) -> str:
                return f"http://{self.host}:{self.client_port}"

        member = UnderlayEtcd(name="etcd0", data_dir=root / "etcd0", host=host)
        return member.start().wait_ready()

    @dataclass
    class UnderlayBundled(BundledStore):
        host: str = "127.0.0.1"

        @property
        def url(self) -> str:
            return f"http://{self.host}:{self.port}"

        def start(self, timeout: float = 30.0) -> UnderlayBundled:
            log = self.data_dir.parent / f"{self.data_dir.name}.log"
            self.child = Child("clusterd kv", self.argv(), log, cwd=REPO)
            self.child.start()
            self.child.wait_until(
                lambda: b"serving" in log.read_bytes() and port_open(self.port, self.host),
                timeout,
            )
            return self

    # The underlay is a private bridge of this test: plaintext there is what the test wants.
    extra = ["--allow-insecure-remote"]
    return UnderlayBundled(data_dir=root / "kv", host=host, extra=extra).start()
