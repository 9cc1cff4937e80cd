"""The overlay's data plane, measured in network namespaces (root only): `python -m bench.overlay`.

1. join -> connect: a peer's lease appears in the store; how long until a container on
   another host completes a TCP connect to the peer's container (p50, p99 over 50 joins;
   target p99 < 1 s). The peer host is set up once by a real `clusterd overlay` and then
   stopped (its device and routes stay, as flanneld leaves them); the bench deletes its
   lease, waits for the observer to drop the route, and puts the lease back: that put is
   the "join". A prober inside the observer's container connects in a tight loop.
2. 250 peers: 250 leases are in the store before `clusterd overlay` starts; how long until
   all 250 routes, neighbours and FDB entries are in the kernel (target < 2 s), from the
   process start and from the lease.
3. TCP throughput (iperf3, container to container) over vxlan and host-gw, beside the same
   two namespaces joined by a plain veth pair (the limit of this machine).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from clustertui.backend.etcd import make_client
from tests.netns.topology import Topology, in_ns, ip, start_store, sweep_leftovers

PREFIX = "/bench/coreos.com/network"
NETWORK = "10.214.0.0/16"


def kv(url: str, action) -> object:  # type: ignore[no-untyped-def]
    async def go() -> object:
        client = make_client([url])
        try:
            return await action(client)
        finally:
            await client.close()

    return asyncio.run(go())


def put_config(url: str, backend: str) -> None:
    config = {"Network": NETWORK, "Backend": {"Type": backend}}
    kv(url, lambda c: c.put(f"{PREFIX}/config".encode(), json.dumps(config).encode()))


def count(ns: str, what: str) -> int:
    if what == "route":
        return len(json.loads(ip("-j", "-n", ns, "route", "show", "proto", "157").stdout or "[]"))
    if what == "neigh":
        return len(json.loads(ip("-j", "-n", ns, "neigh", "show", "dev", "flannel.1").stdout))
    out = in_ns(ns, "bridge", "-j", "fdb", "show", "dev", "flannel.1")
    return sum(1 for e in json.loads(out or "[]") if "dst" in e)


_PROBER = """
import socket, sys, time
for line in sys.stdin:
    address = line.split()[0]
    while True:
        try:
            with socket.create_connection((address, 7000), timeout=0.02):
                pass
            break
        except OSError:
            time.sleep(0.002)
    print(time.monotonic(), flush=True)
"""


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def join_to_connect(workdir: Path, store_kind: str, joins: int) -> list[float]:
    topology = Topology(workdir).create()
    store = None
    try:
        store = start_store(store_kind, workdir / "store", topology.store_ip)
        put_config(store.url, "vxlan")
        one, two = topology.add_host("h1"), topology.add_host("h2")
        for host in (one, two):
            topology.start_overlay(host, store.url, PREFIX)
        for host in (one, two):
            topology.add_container(host, topology.subnet_env(host))
        topology.serve_whoami(two.container, "0.0.0.0")
        topology.wait_connect(one.container, two.container_ip, timeout=20)
        key = f"{PREFIX}/subnets/{two.subnet.network_address}-{two.subnet.prefixlen}".encode()
        value = kv(store.url, lambda c: c.get(key)).value
        topology.stop_overlay(two)  # its device, routes and FDB stay, as flanneld leaves them
        prober = subprocess.Popen(
            ["ip", "netns", "exec", one.container, sys.executable, "-c", _PROBER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        took = []
        loop = asyncio.new_event_loop()
        client = make_client([store.url])
        try:
            for _ in range(joins):
                loop.run_until_complete(client.delete(key))
                deadline = time.monotonic() + 5
                while str(two.subnet) in ip("-n", one.ns, "route", "show", "proto", "157").stdout:
                    assert time.monotonic() < deadline, "the route never went away"
                    time.sleep(0.01)
                prober.stdin.write(f"{two.container_ip}\n")
                prober.stdin.flush()
                time.sleep(0.05)  # the prober is failing fast against no route
                start = time.monotonic()
                loop.run_until_complete(client.put(key, value))
                took.append(float(prober.stdout.readline()) - start)
        finally:
            prober.kill()
            prober.wait()
            loop.run_until_complete(client.close())
            loop.close()
        return took
    finally:
        topology.destroy()
        if store is not None:
            store.stop()


def many_peers(workdir: Path, store_kind: str, peers: int) -> tuple[float, float]:
    topology = Topology(workdir).create()
    store = None
    try:
        store = start_store(store_kind, workdir / "store", topology.store_ip)
        put_config(store.url, "vxlan")
        rng = random.Random(7)

        async def fill(client) -> None:  # type: ignore[no-untyped-def]
            lease = await client.lease(3600)
            for i in range(peers):
                mac = "02:" + ":".join(f"{rng.randrange(256):02x}" for _ in range(5))
                value = {"PublicIP": f"10.215.{i // 200}.{i % 200 + 1}", "BackendType": "vxlan",
                         "BackendData": {"VtepMAC": mac}}  # fmt: skip
                key = f"{PREFIX}/subnets/10.214.{i + 1}.0-24".encode()
                await client.put(key, json.dumps(value).encode(), lease=lease.id)

        kv(store.url, fill)
        host = topology.add_host("h1")
        started = time.monotonic()
        topology.start_overlay(host, store.url, PREFIX)
        deadline = started + 60
        while not all(count(host.ns, what) >= peers for what in ("route", "neigh", "fdb")):
            assert time.monotonic() < deadline, topology.output(host)
            time.sleep(0.02)
        total = time.monotonic() - started
        found = re.search(r"programmed (\d+) peer\(s\) in ([\d.]+)s", topology.output(host))
        assert found and int(found.group(1)) == peers, topology.output(host)
        return total, float(found.group(2))
    finally:
        topology.destroy()
        if store is not None:
            store.stop()


def iperf(client_ns: str, server_ns: str, address: str, seconds: int) -> float:
    server = subprocess.Popen(
        ["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1", "-B", address],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            out = in_ns(client_ns, "iperf3", "-J", "-c", address, "-t", str(seconds), check=False)
            if out and '"error"' not in out:
                return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e9
            time.sleep(0.05)
        raise RuntimeError(f"iperf3 to {address} never ran")
    finally:
        server.kill()
        server.wait()


def throughput(workdir: Path, store_kind: str, backend: str, seconds: int) -> float:
    topology = Topology(workdir).create()
    store = None
    try:
        store = start_store(store_kind, workdir / "store", topology.store_ip)
        put_config(store.url, backend)
        one, two = topology.add_host("h1"), topology.add_host("h2")
        for host in (one, two):
            topology.start_overlay(host, store.url, PREFIX)
        for host in (one, two):
            topology.add_container(host, topology.subnet_env(host))
        topology.serve_whoami(two.container, "0.0.0.0")
        topology.wait_connect(one.container, two.container_ip, timeout=20)
        return iperf(one.container, two.container, two.container_ip, seconds)
    finally:
        topology.destroy()
        if store is not None:
            store.stop()


def plain_veth(workdir: Path, seconds: int) -> float:
    topology = Topology(workdir)
    try:
        a = topology._ns(f"{topology.tag}a")
        b = topology._ns(f"{topology.tag}b")
        ip("-n", a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", b)
        for ns, address in ((a, "10.216.0.1"), (b, "10.216.0.2")):
            ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
        return iperf(a, b, "10.216.0.2", seconds)
    finally:
        topology.destroy()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.overlay", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="10 joins, 1 s iperf runs")
    parser.add_argument("--store", choices=["etcd", "bundled"], default="etcd")
    parser.add_argument("--joins", type=int, default=50)
    parser.add_argument("--peers", type=int, default=250)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench.overlay builds network namespaces: run it as root", file=sys.stderr)
        return 2
    for tool in ("ip", "bridge", "iperf3"):
        if shutil.which(tool) is None:
            print(f"bench.overlay needs {tool}: bash tests/install-components.sh", file=sys.stderr)
            return 2
    joins = 10 if args.quick else args.joins
    seconds = 1 if args.quick else 3
    sweep_leftovers()
    with tempfile.TemporaryDirectory(prefix="bench-overlay-") as root:
        work = Path(root)
        print(f"store: {args.store} on the underlay; overlay {NETWORK}; vxlan unless said")
        took = join_to_connect(work / "join", args.store, joins)
        print(
            f"join -> first TCP connect across hosts, {len(took)} joins: "
            f"p50 {statistics.median(took) * 1000:.1f} ms, p99 {pct(took, 0.99) * 1000:.1f} ms, "
            f"max {max(took) * 1000:.1f} ms (target p99 < 1000 ms)"
        )
        total, reconcile = many_peers(work / "many", args.store, args.peers)
        print(
            f"{args.peers} peers present at start -> all routes, neighbours and FDB entries "
            f"programmed: {total:.2f} s from the process start, of which the reconcile "
            f"{reconcile * 1000:.0f} ms (target < 2 s)"
        )
        veth = plain_veth(work / "veth", seconds)
        vxlan = throughput(work / "vx", args.store, "vxlan", seconds)
        hostgw = throughput(work / "hg", args.store, "host-gw", seconds)
        print(f"TCP throughput, iperf3 {seconds} s, container to container:")
        print(f"  plain veth (the limit)  {veth:6.2f} Gbit/s")
        print(f"  host-gw                 {hostgw:6.2f} Gbit/s  ({hostgw / veth:.2f} of veth)")
        print(f"  vxlan                   {vxlan:6.2f} Gbit/s  ({vxlan / veth:.2f} of veth)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
