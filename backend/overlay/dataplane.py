"""The overlay's data plane: follows the leases under ``subnets/`` and programs the kernel.

The backends (``vxlan``, ``host-gw``) say what a peer needs (routes, neighbours, FDB
entries) and program it through netlink (pyroute2). ``DataPlane`` keeps them in step with
the store: a full reconcile at start and after every watch reconnect (which removes entries
left by an earlier run that no lease backs any more), then one change per watch event.

What is ours, and so what a reconcile may remove: routes of protocol :data:`ROUTE_PROTO`
in the main table, and the neighbour and FDB entries on our own ``flannel.<VNI>`` device.
Nothing else is ever touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
from aetcd import rpc

from clustertui.backend.etcd import EtcdClient, EtcdError, typed_error
from clustertui.backend.fleet.tasks import first_completed
from clustertui.backend.keys import prefix_end
from clustertui.backend.overlay.config import NetworkConfig
from clustertui.backend.overlay.lease import Lease, SubnetManager, parse_subnet_key

log = logging.getLogger("clusterd.overlay")

ROUTE_PROTO = 157
"""The routing protocol number our routes carry (``ip route show proto 157``): how a
reconcile tells our routes from everyone else's."""
CAP_NET_ADMIN = 12
_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")

T = TypeVar("T")


class DataPlaneError(ValueError):
    """The data plane cannot run as asked; the message says why and what to do."""


@dataclass(frozen=True)
class Peer:
    """Another host's lease, as the data plane needs it."""

    subnet: ipaddress.IPv4Network
    public_ip: ipaddress.IPv4Address
    backend_type: str
    vtep_mac: str | None = None


def parse_peer(key: bytes, value: bytes) -> Peer | None:
    """A lease read from the store, checked; None when it is unusable (logged)."""
    subnet = parse_subnet_key(key)
    if subnet is None:
        return None
    try:
        doc = json.loads(value)
        raw = doc["PublicIP"]
        if not isinstance(raw, str):
            raise TypeError(raw)
        public_ip = ipaddress.IPv4Address(raw)
    except (ValueError, TypeError, KeyError, UnicodeDecodeError):
        log.warning("ignoring the lease of %s: no valid PublicIP", subnet)
        return None
    backend_type = doc.get("BackendType")
    data = doc.get("BackendData")
    mac = data.get("VtepMAC") if isinstance(data, dict) else None
    if isinstance(mac, str) and _MAC.fullmatch(mac.lower()):
        mac = mac.lower()
        if int(mac[:2], 16) & 1 or mac == "00:00:00:00:00:00":
            mac = None
    else:
        mac = None
    return Peer(subnet, public_ip, backend_type if isinstance(backend_type, str) else "", mac)


# -- checks ------------------------------------------------------------------------------


def has_net_admin() -> bool:
    """True when this process may change the network (CAP_NET_ADMIN in its effective set)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    return False


def ip_forward_enabled() -> bool:
    try:
        return Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == "1"
    except OSError:
        return False


@dataclass(frozen=True)
class Iface:
    """The underlay interface: the one the overlay's packets leave by."""

    name: str
    index: int
    mtu: int
    public_ip: ipaddress.IPv4Address
    networks: tuple[ipaddress.IPv4Network, ...] = field(default=())

    def on_link(self, address: ipaddress.IPv4Address) -> bool:
        """True when ``address`` is on this interface's L2 network (a connected subnet)."""
        return any(address in network for network in self.networks)


def _addresses(ipr: Any, index: int) -> list[ipaddress.IPv4Interface]:
    found = []
    for message in ipr.addr("dump", family=2, index=index):
        if message["index"] != index:
            continue
        found.append(
            ipaddress.IPv4Interface(f"{message.get('IFA_ADDRESS')}/{message['prefixlen']}")
        )
    return found


def resolve_iface(ipr: Any, name: str | None, public_ip: str | None) -> Iface:
    """flannel's choice: ``--iface``, else the holder of ``--public-ip``, else the default route."""
    index = None
    if name:
        found = ipr.link_lookup(ifname=name)
        if not found:
            raise DataPlaneError(
                f"no interface named {name!r} here: give --iface one of "
                f"{', '.join(_link_names(ipr))}"
            )
        index = found[0]
    elif public_ip:
        wanted = ipaddress.IPv4Address(public_ip)
        for message in ipr.addr("dump", family=2):
            if message.get("IFA_ADDRESS") == str(wanted):
                index = message["index"]
                break
    if index is None:
        for route in ipr.route("dump", family=2):
            if route["dst_len"] == 0 and route.get("RTA_TABLE") == 254 and route.get("RTA_OIF"):
                index = route.get("RTA_OIF")
                break
    if index is None:
        raise DataPlaneError("no default route to find the underlay interface: give --iface")
    link = ipr.link("get", index=index)[0]
    addresses = _addresses(ipr, index)
    if public_ip:
        chosen = ipaddress.IPv4Address(public_ip)
    elif addresses:
        chosen = addresses[0].ip
    else:
        raise DataPlaneError(
            f"interface {link.get('IFLA_IFNAME')} has no IPv4 address: give --public-ip"
        )
    return Iface(
        name=link.get("IFLA_IFNAME"),
        index=index,
        mtu=link.get("IFLA_MTU") or 1500,
        public_ip=chosen,
        networks=tuple(address.network for address in addresses),
    )


def _link_names(ipr: Any) -> list[str]:
    return [link.get("IFLA_IFNAME") for link in ipr.link("dump")]


# -- backends ------------------------------------------------------------------------------


class Backend:
    """A data plane backend; every method runs on the netlink thread (pyroute2 is sync)."""

    type = ""
    overhead = 0
    """Bytes of encapsulation per packet: the overlay's MTU is the underlay's less this."""

    def __init__(self, ipr: Any, iface: Iface, config: NetworkConfig) -> None:
        self.ipr = ipr
        self.iface = iface
        self.config = config
        self.refused: set[ipaddress.IPv4Network] = set()

    @property
    def mtu(self) -> int:
        return self.iface.mtu - self.overhead

    def prepare(self) -> dict[str, Any]:
        """Before the lease: create what the lease advertises; returns its BackendData."""
        return {}

    def configure(self, subnet: ipaddress.IPv4Network) -> None:
        """Once the lease is held: configure this host's side for ``subnet``."""

    def reconcile(self, peers: Mapping[ipaddress.IPv4Network, Peer]) -> None:
        """Make the kernel hold exactly what ``peers`` need, removing stale entries of ours."""
        raise NotImplementedError

    def apply(self, old: Peer | None, new: Peer | None) -> None:
        """One lease changed: ``old`` (None if new) became ``new`` (None if gone)."""
        raise NotImplementedError

    def close(self) -> None:
        self.ipr.close()

    # Shared route handling: our routes are the ones of protocol ROUTE_PROTO.

    def our_routes(self) -> dict[ipaddress.IPv4Network, tuple[str | None, int | None]]:
        routes = {}
        for route in self.ipr.route("dump", family=2):
            if route["proto"] != ROUTE_PROTO or route.get("RTA_TABLE") != 254:
                continue
            dst = ipaddress.IPv4Network(f"{route.get('RTA_DST') or '0.0.0.0'}/{route['dst_len']}")
            routes[dst] = (route.get("RTA_GATEWAY"), route.get("RTA_OIF"))
        return routes

    def route_replace(
        self, dst: ipaddress.IPv4Network, gateway: str, oif: int, *, onlink: bool = False
    ) -> None:
        self.ipr.route(
            "replace",
            dst=str(dst),
            gateway=gateway,
            oif=oif,
            proto=ROUTE_PROTO,
            flags=4 if onlink else 0,  # RTNH_F_ONLINK
        )

    def route_delete(self, dst: ipaddress.IPv4Network) -> None:
        with _gone():
            self.ipr.route("del", dst=str(dst), proto=ROUTE_PROTO)

    def refuse(self, peer: Peer, why: str) -> None:
        if peer.subnet not in self.refused:
            self.refused.add(peer.subnet)
            log.error("not routing to %s at %s: %s", peer.subnet, peer.public_ip, why)


@contextlib.contextmanager
def _gone() -> Any:
    """Deleting what is already gone is fine (ENOENT, ESRCH, EADDRNOTAVAIL)."""
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        yield
    except NetlinkError as error:
        if error.code not in (2, 3, 99):
            raise


def make_backend(config: NetworkConfig, iface: Iface, ipr: Any) -> Backend:
    kind = config.backend_type
    if kind == "vxlan":
        from clustertui.backend.overlay.vxlan import VxlanBackend

        return VxlanBackend(ipr, iface, config)
    if kind == "host-gw":
        from clustertui.backend.overlay.hostgw import HostGwBackend

        return HostGwBackend(ipr, iface, config)
    if kind == "udp":
        raise DataPlaneError(
            'backend "udp" is refused: flannel deprecated it (slow, user-space); '
            'set Backend.Type to "vxlan" or "host-gw" in the network config'
        )
    raise DataPlaneError(
        f"backend {json.dumps(kind)} is not supported by clusterd overlay: "
        f'set Backend.Type to "vxlan" or "host-gw" in the network config'
    )


# -- following the leases -------------------------------------------------------------------


class DataPlane:
    """Keeps ``backend`` in step with the leases under ``<prefix>/subnets/``."""

    def __init__(
        self,
        client: EtcdClient,
        backend_factory: Callable[[], Backend],
        *,
        prefix: str,
        masquerade: Any | None = None,
    ) -> None:
        self.client = client
        self.prefix = prefix.rstrip("/")
        self.masquerade = masquerade
        self.peers: dict[ipaddress.IPv4Network, Peer] = {}
        """The leases programmed now, by subnet."""
        self.synced = asyncio.Event()
        """Set after each full reconcile (tests and the bench wait on it)."""
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="netlink")
        self._factory = backend_factory
        self.backend: Backend | None = None
        self._lease_changed = asyncio.Event()

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` on the netlink thread (pyroute2's sync API owns its own event loop)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def prepare(self) -> dict[str, Any]:
        """Create the backend and what the lease advertises; returns the lease's BackendData."""
        from pyroute2.netlink.exceptions import NetlinkError

        self.backend = await self.call(self._factory)
        try:
            return await self.call(self.backend.prepare)
        except NetlinkError as error:
            raise DataPlaneError(
                f"could not set up the {self.backend.type} backend: {error}"
            ) from None

    def on_lease(self, lease: Lease | None, error: str | None) -> None:
        """SubnetManager's on_change: a new or lost lease makes the data plane start over."""
        self._lease_changed.set()

    @property
    def subnets_prefix(self) -> bytes:
        return f"{self.prefix}/subnets/".encode()

    async def run(self, manager: SubnetManager, stop: asyncio.Event) -> None:
        assert self.backend is not None, "prepare() first"
        try:
            while not stop.is_set():
                lease = manager.lease
                if lease is None:
                    await first_completed(stop.wait(), manager.ready.wait())
                    continue
                self._lease_changed.clear()
                await self.call(self.backend.configure, lease.subnet)
                if self.masquerade is not None:
                    await self.masquerade.install(lease.config.network, lease.subnet)
                await first_completed(stop.wait(), self._lease_changed.wait(), self._follow(lease))
        finally:
            if self.masquerade is not None:
                await self.masquerade.remove()
            with contextlib.suppress(Exception):
                await self.call(self.backend.close)
            self._executor.shutdown(wait=False)

    async def _list(self) -> tuple[list[Any], int]:
        key = self.subnets_prefix
        await self.client.connect()
        try:
            response = await self.client.kvstub.Range(
                rpc.RangeRequest(key=key, range_end=prefix_end(key)),
                timeout=self.client.config.timeout,
                metadata=self.client.metadata,
            )
        except grpc.RpcError as error:
            raise typed_error(error) from error
        return list(response.kvs), response.header.revision

    def _peer(self, lease: Lease, key: bytes, value: bytes) -> Peer | None:
        if key == lease.key:
            return None
        peer = parse_peer(key, value)
        if peer is None or peer.subnet == lease.subnet or str(peer.public_ip) == lease.public_ip:
            return None
        if not peer.subnet.subnet_of(lease.config.network):
            return None
        return peer

    async def _follow(self, lease: Lease) -> None:
        assert self.backend is not None
        while True:
            try:
                kvs, revision = await self._list()
                peers = {}
                for kv in kvs:
                    peer = self._peer(lease, kv.key, kv.value)
                    if peer is not None:
                        peers[peer.subnet] = peer
                started = time.monotonic()
                try:
                    await self.call(self.backend.reconcile, dict(peers))
                except Exception as error:  # netlink refused: say so, try again
                    log.error("programming the peers failed: %s; trying again in 1s", error)
                    await asyncio.sleep(1.0)
                    continue
                self.peers = peers
                self.synced.set()
                took = time.monotonic() - started
                log.info("programmed %d peer(s) in %.3fs", len(peers), took)
                key = self.subnets_prefix
                async for batch in self.client.watch_batches(
                    key, prefix_end(key), start_revision=revision + 1
                ):
                    for event in batch.events:
                        await self._event(lease, event)
            except EtcdError as error:
                log.warning("following the leases failed: %s; listing them again", error)
                await asyncio.sleep(1.0)

    async def _event(self, lease: Lease, event: Any) -> None:
        assert self.backend is not None
        subnet = parse_subnet_key(event.kv.key)
        if subnet is None:
            return
        old = self.peers.get(subnet)
        new = None
        if event.type != rpc.Event.DELETE:
            new = self._peer(lease, event.kv.key, event.kv.value)
        if old == new:
            return
        try:
            await self.call(self.backend.apply, old, new)
        except Exception as error:  # netlink said no: log it, the next reconcile retries
            log.error("programming %s failed: %s", subnet, error)
        if new is None:
            self.peers.pop(subnet, None)
            log.info("removed %s (was at %s)", subnet, old.public_ip if old else "?")
        else:
            self.peers[subnet] = new
            log.info("added %s at %s", subnet, new.public_ip)
