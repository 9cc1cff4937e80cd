"""`clusterd overlay` carries packets: three hosts as network namespaces on one underlay bridge.

Each host runs the real `clusterd overlay --iface eth0` (inside its namespace, through
`ip netns exec`) against a real store listening on the underlay; each has a container
namespace on a bridge holding FLANNEL_SUBNET's first address. TCP between the containers
is the proof; the kernel's own tables (`ip -j route`, `ip -j neigh`, `bridge -j fdb`) are
read back to check what was programmed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from clustertui.backend.etcd import EtcdClient, make_client
from tests.harness.procs import REPO
from tests.netns.topology import Host, Topology, in_ns, ip

pytestmark = pytest.mark.slow

PREFIX = "/t/coreos.com/network"
NETWORK = "10.214.0.0/16"
PROTO = "157"


def routes(ns: str) -> dict[str, dict]:
    """Our routes (protocol 157) in ``ns``, by destination."""
    found = json.loads(ip("-j", "-n", ns, "route", "show", "proto", PROTO).stdout or "[]")
    return {route["dst"]: route for route in found}


def neighbours(ns: str, dev: str = "flannel.1") -> dict[str, str]:
    found = json.loads(ip("-j", "-n", ns, "neigh", "show", "dev", dev).stdout or "[]")
    return {n["dst"]: n.get("lladdr") for n in found if "PERMANENT" in n.get("state", [])}


def fdb(ns: str, dev: str = "flannel.1") -> dict[str, str]:
    out = in_ns(ns, "bridge", "-j", "fdb", "show", "dev", dev)
    return {e["mac"]: e["dst"] for e in json.loads(out or "[]") if "dst" in e}


def mac_of(ns: str, dev: str = "flannel.1") -> str:
    return json.loads(ip("-j", "-n", ns, "link", "show", dev).stdout)[0]["address"]


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``check`` every 20 ms; return how long it took, fail after ``timeout``."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.02)
    return time.monotonic() - start


def put_config(url: str, backend: dict) -> None:
    async def put() -> None:
        client = make_client([url])
        try:
            config = {"Network": NETWORK, "Backend": backend}
            await client.put(f"{PREFIX}/config".encode(), json.dumps(config).encode())
        finally:
            await client.close()

    asyncio.run(put())


def run_kv(url: str, action: Callable[[EtcdClient], object]) -> object:
    async def go() -> object:
        client = make_client([url])
        try:
            return await action(client)  # type: ignore[misc]
        finally:
            await client.close()

    return asyncio.run(go())


def lease_of(
    url: str, host: Host, timeout: float = 10.0, prefix: str = PREFIX
) -> tuple[bytes, dict, int]:
    """The store's key, value and lease id for ``host``'s subnet (waited for)."""
    assert host.subnet is not None
    key = f"{prefix}/subnets/{host.subnet.network_address}-{host.subnet.prefixlen}".encode()
    deadline = time.monotonic() + timeout
    while (found := run_kv(url, lambda c: c.get(key))) is None:
        assert time.monotonic() < deadline, f"no lease for {host.name}"
        time.sleep(0.05)
    return key, json.loads(found.value), found.lease


def start_hosts(topology: Topology, url: str, count: int = 3, *extra: str) -> list[Host]:
    hosts = [topology.add_host(f"h{i}") for i in range(1, count + 1)]
    for host in hosts:
        topology.start_overlay(host, url, PREFIX, *extra)
    for host in hosts:
        topology.add_container(host, topology.subnet_env(host))
        assert host.container is not None
        topology.serve_whoami(host.container, "0.0.0.0")
    return hosts


def all_programmed(topology: Topology, hosts: list[Host]) -> Callable[[], bool]:
    def check() -> bool:
        for host in hosts:
            want = {str(h.subnet) for h in hosts if h is not host}
            if set(routes(host.ns)) != want:
                return False
        return True

    return check


@pytest.mark.parametrize("underlay_store", ["etcd", "bundled"], indirect=True)
@pytest.mark.parametrize("backend", ["vxlan", "host-gw"])
def test_a_container_on_one_host_reaches_the_containers_on_the_others(
    topology: Topology, underlay_store, backend: str
) -> None:
    put_config(underlay_store.url, {"Type": backend})
    hosts = start_hosts(topology, underlay_store.url)
    wait_for(all_programmed(topology, hosts), 10, "routes to every peer")
    one = hosts[0]
    for other in hosts[1:]:
        # The server sees the container's own address: overlay to overlay is not NATed.
        assert topology.wait_connect(one.container, other.container_ip) == one.container_ip
    # ...and back, from the third host to the second.
    assert topology.wait_connect(hosts[2].container, hosts[1].container_ip) == (
        hosts[2].container_ip
    )

    table = routes(one.ns)
    for other in hosts[1:]:
        route = table[str(other.subnet)]
        _, value, _ = lease_of(underlay_store.url, other)
        assert value["BackendType"] == backend
        if backend == "vxlan":
            gateway = str(other.subnet.network_address)
            assert route["dev"] == "flannel.1" and route["gateway"] == gateway
            assert "onlink" in route["flags"]
            vtep = value["BackendData"]["VtepMAC"]
            assert vtep == mac_of(other.ns)
            assert neighbours(one.ns)[gateway] == vtep
            assert fdb(one.ns)[vtep] == other.address
        else:
            assert route["dev"] == "eth0" and route["gateway"] == other.address
    if backend == "vxlan":
        link = json.loads(ip("-j", "-d", "-n", one.ns, "link", "show", "flannel.1").stdout)[0]
        info = link["linkinfo"]["info_data"]
        assert (info["id"], info["port"], info["learning"]) == (1, 8472, False)
        assert link["mtu"] == 1450
        addresses = json.loads(ip("-j", "-4", "-n", one.ns, "addr", "show", "flannel.1").stdout)
        held = [(a["local"], a["prefixlen"]) for a in addresses[0]["addr_info"]]
        assert held == [(str(one.subnet.network_address), 32)]


def test_a_host_that_leaves_is_gone_within_a_second_and_comes_back_with_a_new_vtep_mac(
    topology: Topology, underlay_store
) -> None:
    url = underlay_store.url
    put_config(url, {"Type": "vxlan"})
    one, two, three = start_hosts(topology, url)
    wait_for(all_programmed(topology, [one, two, three]), 10, "routes to every peer")
    assert topology.wait_connect(one.container, three.container_ip) == one.container_ip
    _, value, lease_id = lease_of(url, three)
    old_mac = value["BackendData"]["VtepMAC"]
    gateway = str(three.subnet.network_address)

    # Host 3 dies and its lease is revoked: the others forget it within a second.
    topology.stop_overlay(three, signal.SIGKILL)
    run_kv(url, lambda c: c.revoke_lease(lease_id))
    took = wait_for(
        lambda: str(three.subnet) not in routes(one.ns) and str(three.subnet) not in routes(two.ns),
        1.0,
        "the route to the host that left removed",
    )
    assert gateway not in neighbours(one.ns) and old_mac not in fdb(one.ns)
    assert topology.connect(one.container, three.container_ip, timeout=0.5) is None
    print(f"removed after {took:.3f}s")

    # It comes back with a new device (so a new VtepMAC): reachable again, old MAC gone.
    ip("-n", three.ns, "link", "del", "flannel.1")
    topology.start_overlay(three, url, PREFIX)
    topology.add_container(three, topology.subnet_env(three))
    _, value, _ = lease_of(url, three)
    new_mac = value["BackendData"]["VtepMAC"]
    assert new_mac != old_mac and new_mac == mac_of(three.ns)
    wait_for(lambda: fdb(one.ns).get(new_mac) == three.address, 1.0, "the new VtepMAC programmed")
    assert old_mac not in fdb(one.ns)
    assert neighbours(one.ns)[str(three.subnet.network_address)] == new_mac
    assert topology.wait_connect(one.container, three.container_ip) == one.container_ip


def test_a_restart_keeps_subnet_and_routes_cleans_stale_entries_and_spares_foreign_ones(
    topology: Topology, underlay_store
) -> None:
    url = underlay_store.url
    put_config(url, {"Type": "vxlan"})
    one, two, three = start_hosts(topology, url)
    wait_for(all_programmed(topology, [one, two, three]), 10, "routes to every peer")
    subnet = one.subnet
    before = routes(one.ns)

    # A clean stop leaves the routes in place (as flanneld does): traffic goes on meanwhile.
    assert topology.stop_overlay(one) == 0
    assert routes(one.ns) == before
    assert topology.wait_connect(one.container, two.container_ip) == one.container_ip

    # While host 1 is down: host 2 leaves for good (its key deleted), an earlier run's
    # entries are left behind, and an admin adds entries of their own.
    topology.stop_overlay(two)
    key_two, value_two, _ = lease_of(url, two)
    run_kv(url, lambda c: c.delete(key_two))
    two_mac = value_two["BackendData"]["VtepMAC"]
    stale_mac = "02:aa:bb:cc:dd:ee"
    ns = one.ns
    ip("-n", ns, "neigh", "add", "10.214.251.0", "lladdr", stale_mac, "dev", "flannel.1",
       "nud", "permanent")  # fmt: skip
    in_ns(ns, "bridge", "fdb", "append", stale_mac, "dev", "flannel.1", "dst", "10.213.0.99")
    ip("-n", ns, "route", "add", "10.214.251.0/24", "via", "10.214.251.0", "dev", "flannel.1",
       "onlink", "proto", PROTO)  # fmt: skip
    foreign = f"{topology.underlay_net.network_address + 77}"
    ip("-n", ns, "route", "add", "10.214.252.0/24", "via", foreign, "dev", "eth0")
    ip("-n", ns, "route", "add", "10.99.0.0/24", "via", foreign, "dev", "eth0", "proto", "static")
    ip("-n", ns, "neigh", "add", foreign, "lladdr", "02:11:22:33:44:55", "dev", "eth0",
       "nud", "permanent")  # fmt: skip

    topology.start_overlay(one, url, PREFIX)
    env = topology.subnet_env(one)
    assert ipaddress.IPv4Interface(env["FLANNEL_SUBNET"]).network == subnet
    want = {str(three.subnet)}
    wait_for(lambda: set(routes(ns)) == want, 10, "only the live peer's route")
    # Routes, neighbours and FDB entries are one reconcile, but not one kernel transaction:
    # on a busy machine the FDB's turn can come a moment after the routes'.
    three_mac = lease_of(url, three)[1]["BackendData"]["VtepMAC"]
    wait_for(lambda: set(fdb(ns)) == {three_mac}, 10, "only the live peer's FDB entry")
    assert set(neighbours(ns)) == {str(three.subnet.network_address)}
    assert two_mac not in fdb(ns) and stale_mac not in fdb(ns)
    # Entries that are not ours survive: other protocols' routes, other devices' neighbours.
    table = {r["dst"] for r in json.loads(ip("-j", "-n", ns, "route").stdout)}
    assert {"10.214.252.0/24", "10.99.0.0/24"} <= table
    assert neighbours(ns, "eth0").get(foreign) == "02:11:22:33:44:55"
    assert lease_of(url, one)[0] is not None
    assert topology.wait_connect(one.container, three.container_ip) == one.container_ip


def test_host_gw_refuses_a_peer_off_its_l2_network_and_names_it(
    topology: Topology, underlay_store
) -> None:
    url = underlay_store.url
    put_config(url, {"Type": "host-gw"})
    one, two = start_hosts(topology, url, 2)
    far = {"PublicIP": "192.168.77.5", "BackendType": "host-gw", "BackendData": {}}
    run_kv(url, lambda c: c.put(f"{PREFIX}/subnets/10.214.250.0-24".encode(),
                                json.dumps(far).encode()))  # fmt: skip
    wait_for(lambda: "192.168.77.5" in topology.output(one), 5, "the refusal logged")
    assert "not routing to 10.214.250.0/24 at 192.168.77.5" in topology.output(one)
    assert "not on eth0" in topology.output(one)
    assert "10.214.250.0/24" not in routes(one.ns)
    assert topology.wait_connect(one.container, two.container_ip) == one.container_ip


def overlay_once(host: Host, url: str, *extra: str, prefix_argv: tuple[str, ...] = ()) -> str:
    """Run `clusterd overlay` in ``host``'s namespace until it exits or 8 s pass; its output."""
    argv = ["ip", "netns", "exec", host.ns, *prefix_argv,
            sys.executable, "-m", "clustertui.backend.daemon", "overlay",
            "--endpoints", url, "--data-dir", str(host.data_dir), "--prefix", PREFIX,
            *extra]  # fmt: skip
    process = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out, _ = process.communicate(timeout=8)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=15)
    return f"exit {process.returncode}\n" + out.decode()


@pytest.mark.parametrize(
    ("backend", "message"),
    [
        ("udp", 'backend "udp" is refused: flannel deprecated it'),
        ("ipip", 'backend "ipip" is not supported by clusterd overlay'),
    ],
)
def test_udp_and_other_backends_are_refused(
    topology: Topology, underlay_store, backend: str, message: str
) -> None:
    put_config(underlay_store.url, {"Type": backend})
    host = topology.add_host("h1")
    out = overlay_once(host, underlay_store.url, "--iface", "eth0")
    assert out.startswith("exit 2\n") and message in out, out
    assert "flannel.1" not in ip("-n", host.ns, "link").stdout


def test_checks_say_what_is_wrong(topology: Topology, underlay_store) -> None:
    url = underlay_store.url
    put_config(url, {"Type": "vxlan"})
    host = topology.add_host("h1", forwarding=False)
    host.data_dir.mkdir(parents=True)

    out = overlay_once(host, url, "--iface", "eth9")
    assert out.startswith("exit 2\n") and "no interface named 'eth9'" in out, out

    # Without CAP_NET_ADMIN: lease-only mode, said once and loudly; nothing programmed.
    drop = ("setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin")
    out = overlay_once(host, url, "--iface", "eth0", prefix_argv=drop)
    assert out.count("LEASE-ONLY MODE") == 1, out
    assert (host.data_dir / "subnet.env").exists()
    assert "flannel.1" not in ip("-n", host.ns, "link").stdout

    # With it, but forwarding off: it runs, and says how to turn forwarding on.
    out = overlay_once(host, url, "--iface", "eth0")
    assert "IP forwarding is off" in out and "sysctl -w net.ipv4.ip_forward=1" in out, out
    assert "flannel.1" in ip("-n", host.ns, "link").stdout
    assert "LEASE-ONLY" not in out


def test_ip_masq_hides_containers_from_the_outside_but_not_from_each_other(
    topology: Topology, underlay_store
) -> None:
    url = underlay_store.url
    put_config(url, {"Type": "vxlan"})
    outside = topology.add_outside()
    topology.serve_whoami(outside.ns, outside.address)
    one, two = start_hosts(topology, url, 2, "--ip-masq")
    wait_for(all_programmed(topology, [one, two]), 10, "routes to every peer")
    tables = json.loads(in_ns(one.ns, "nft", "-j", "list", "tables"))["nftables"]
    assert any(t.get("table", {}).get("name") == "clusterd-overlay" for t in tables)

    # To the outside (which has no route into the overlay): the host's address.
    assert topology.wait_connect(one.container, outside.address) == one.address
    # Overlay to overlay: the container's own address.
    assert topology.wait_connect(one.container, two.container_ip) == one.container_ip
    # The host itself reaching another host's container: from its flannel.1 address, kept.
    assert topology.wait_connect(one.ns, two.container_ip) == str(one.subnet.network_address)

    assert topology.stop_overlay(one) == 0
    tables = json.loads(in_ns(one.ns, "nft", "-j", "list", "tables"))["nftables"]
    assert not any(t.get("table", {}).get("name") == "clusterd-overlay" for t in tables)


def test_direct_routing_skips_vxlan_on_one_l2_network_and_the_mtu_follows_the_underlay(
    topology: Topology, underlay_store
) -> None:
    url = underlay_store.url
    put_config(url, {"Type": "vxlan", "DirectRouting": True, "VNI": 7})
    one, two = topology.add_host("h1"), topology.add_host("h2")
    ip("-n", one.ns, "link", "set", "eth0", "mtu", "1400")
    # A flannel.7 of other settings (an older config's port) is made again with these.
    ip("-n", two.ns, "link", "add", "flannel.7", "type", "vxlan", "id", "7", "dstport", "4789")
    for host in (one, two):
        topology.start_overlay(host, url, PREFIX)
    env = topology.subnet_env(one)
    assert env["FLANNEL_MTU"] == "1350"
    link = json.loads(ip("-j", "-d", "-n", one.ns, "link", "show", "flannel.7").stdout)[0]
    assert link["mtu"] == 1350 and link["linkinfo"]["info_data"]["id"] == 7
    for host in (one, two):
        topology.add_container(host, topology.subnet_env(host))
        topology.serve_whoami(host.container, "0.0.0.0")
    wait_for(all_programmed(topology, [one, two]), 10, "routes to every peer")
    route = routes(one.ns)[str(two.subnet)]
    assert route["dev"] == "eth0" and route["gateway"] == two.address
    assert fdb(one.ns, "flannel.7") == {} and neighbours(one.ns, "flannel.7") == {}
    link = json.loads(ip("-j", "-d", "-n", two.ns, "link", "show", "flannel.7").stdout)[0]
    assert link["linkinfo"]["info_data"]["port"] == 8472
    assert link["linkinfo"]["info_data"]["local"] == two.address
    assert topology.wait_connect(one.container, two.container_ip) == one.container_ip


def test_clusterd_node_with_iface_programs_the_overlay_too(
    topology: Topology, underlay_store
) -> None:
    url = underlay_store.url
    run_kv(url, lambda c: c.put(b"/coreos.com/network/config",
                                json.dumps({"Network": NETWORK}).encode()))  # fmt: skip
    one, two = topology.add_host("h1"), topology.add_host("h2")
    for host in (one, two):
        host.data_dir.mkdir(parents=True)
        host.log = topology.workdir / f"{host.name}.log"
        with host.log.open("ab") as out:
            host.process = subprocess.Popen(
                ["ip", "netns", "exec", host.ns,
                 sys.executable, "-m", "clustertui.backend.daemon", "node",
                 "--endpoints", url, "--data-dir", str(host.data_dir), "--iface", "eth0",
                 "--disable-engine"],
                cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
    for host in (one, two):
        topology.add_container(host, topology.subnet_env(host))
        topology.serve_whoami(host.container, "0.0.0.0")
    wait_for(all_programmed(topology, [one, two]), 10, "routes to every peer")
    _, value, _ = lease_of(url, two, prefix="/coreos.com/network")
    assert value["PublicIP"] == two.address and set(value["BackendData"]) == {
        "MachineID",
        "VtepMAC",
    }
    assert topology.wait_connect(one.container, two.container_ip) == one.container_ip


def test_the_overlay_follows_the_leases_again_after_the_store_restarts(
    topology: Topology, underlay_store
) -> None:
    url = underlay_store.url
    put_config(url, {"Type": "vxlan"})
    one, two = start_hosts(topology, url, 2)
    wait_for(all_programmed(topology, [one, two]), 10, "routes to every peer")
    underlay_store.stop()
    underlay_store.start().wait_ready()
    # A peer that joins after the restart is programmed: the watch came back.
    peer = {"PublicIP": "10.213.0.99", "BackendType": "vxlan",
            "BackendData": {"VtepMAC": "02:00:00:00:00:99"}}  # fmt: skip
    run_kv(url, lambda c: c.put(f"{PREFIX}/subnets/10.214.250.0-24".encode(),
                                json.dumps(peer).encode()))  # fmt: skip
    wait_for(lambda: "10.214.250.0/24" in routes(one.ns), 15, "the new peer's route")
    assert fdb(one.ns)["02:00:00:00:00:99"] == "10.213.0.99"
    assert topology.wait_connect(one.container, two.container_ip) == one.container_ip


def test_masquerade_rules_left_by_a_killed_run_are_replaced_not_doubled(
    topology: Topology, underlay_store
) -> None:
    url = underlay_store.url
    put_config(url, {"Type": "vxlan"})
    (one,) = start_hosts(topology, url, 1, "--ip-masq")
    wait_for(lambda: "clusterd-overlay" in in_ns(one.ns, "nft", "list", "tables"), 10, "rules")
    topology.stop_overlay(one, signal.SIGKILL)
    assert "clusterd-overlay" in in_ns(one.ns, "nft", "list", "tables")  # left by the kill
    topology.start_overlay(one, url, PREFIX, "--ip-masq")
    # Both runs log to the same file: the second "masquerading" line is the new run's.
    wait_for(lambda: topology.output(one).count("masquerading traffic") >= 2, 10, "rules again")
    rules = in_ns(one.ns, "nft", "list", "table", "ip", "clusterd-overlay")
    assert rules.count("masquerade") == 2 and rules.count("return") == 2, rules
    assert topology.stop_overlay(one) == 0
    assert "clusterd-overlay" not in in_ns(one.ns, "nft", "list", "tables")
