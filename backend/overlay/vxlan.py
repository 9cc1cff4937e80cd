"""The vxlan backend, as flannel's: one ``flannel.<VNI>`` device, per peer a route, ARP and FDB.

For each other host's lease (subnet S, network address N, VtepMAC M, PublicIP P):

* ``S via N dev flannel.<VNI> onlink`` (protocol ROUTE_PROTO);
* a permanent neighbour ``N lladdr M`` on the device;
* an FDB entry ``M dst P`` on the device (where the encapsulated frame is sent).

With ``Backend.DirectRouting`` a peer on the same L2 network gets ``S via P dev <iface>``
instead, and no encapsulation.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping
from typing import Any

from clustertui.backend.overlay.dataplane import ROUTE_PROTO, Backend, DataPlaneError, Peer, _gone
from clustertui.backend.overlay.nlbatch import Batch

log = logging.getLogger("clusterd.overlay")

DEFAULT_VNI = 1
DEFAULT_PORT = 8472
OVERHEAD = 50
NUD_PERMANENT = 0x80
NTF_SELF = 0x02


class VxlanBackend(Backend):
    type = "vxlan"
    overhead = OVERHEAD

    def __init__(self, ipr: Any, iface: Any, config: Any) -> None:
        super().__init__(ipr, iface, config)
        backend = config.backend
        self.vni = _int(backend, "VNI", DEFAULT_VNI)
        self.port = _int(backend, "Port", DEFAULT_PORT)
        self.direct_routing = bool(backend.get("DirectRouting", False))
        self.device = f"flannel.{self.vni}"
        self.index = 0
        self.mac = ""

    # -- the device ----------------------------------------------------------------------

    def prepare(self) -> dict[str, Any]:
        self.index = self._ensure_device()
        link = self.ipr.link("get", index=self.index)[0]
        self.mac = link.get("IFLA_ADDRESS")
        return {"VtepMAC": self.mac}

    def _ensure_device(self) -> int:
        found: list[int] = self.ipr.link_lookup(ifname=self.device)
        if found:
            link = self.ipr.link("get", index=found[0])[0]
            if self._matches(link):
                log.info("using the existing %s", self.device)
                self._up(found[0])
                return found[0]
            log.info("%s exists with other settings: creating it again", self.device)
            self.ipr.link("del", index=found[0])
        self.ipr.link(
            "add",
            ifname=self.device,
            kind="vxlan",
            vxlan_id=self.vni,
            vxlan_port=self.port,
            vxlan_learning=0,
            vxlan_local=str(self.iface.public_ip),
            vxlan_link=self.iface.index,
        )
        index: int = self.ipr.link_lookup(ifname=self.device)[0]
        self._up(index)
        log.info(
            "created %s (VNI %d, UDP port %d, local %s, on %s)",
            self.device,
            self.vni,
            self.port,
            self.iface.public_ip,
            self.iface.name,
        )
        return index

    def _up(self, index: int) -> None:
        self.ipr.link("set", index=index, mtu=self.mtu, state="up")

    def _matches(self, link: Any) -> bool:
        info = link.get(("IFLA_LINKINFO", "IFLA_INFO_DATA"))
        kind = link.get(("IFLA_LINKINFO", "IFLA_INFO_KIND"))
        if kind != "vxlan" or info is None:
            return False
        return (
            info.get("IFLA_VXLAN_ID") == self.vni
            and info.get("IFLA_VXLAN_PORT") == self.port
            and info.get("IFLA_VXLAN_LOCAL") == str(self.iface.public_ip)
            and info.get("IFLA_VXLAN_LINK") == self.iface.index
            and not info.get("IFLA_VXLAN_LEARNING")
        )

    def configure(self, subnet: ipaddress.IPv4Network) -> None:
        """The device holds the subnet's network address /32, and nothing else of IPv4."""
        wanted = str(subnet.network_address)
        for message in self.ipr.addr("dump", family=2, index=self.index):
            if message["index"] != self.index:
                continue
            address = message.get("IFA_ADDRESS")
            if address != wanted or message["prefixlen"] != 32:
                with _gone():
                    self.ipr.addr(
                        "del", index=self.index, address=address, prefixlen=message["prefixlen"]
                    )
        present = {
            m.get("IFA_ADDRESS")
            for m in self.ipr.addr("dump", family=2, index=self.index)
            if m["index"] == self.index
        }
        if wanted not in present:
            self.ipr.addr("add", index=self.index, address=wanted, prefixlen=32)

    # -- the peers -----------------------------------------------------------------------

    def _direct(self, peer: Peer) -> bool:
        return self.direct_routing and self.iface.on_link(peer.public_ip)

    def _usable(self, peer: Peer | None) -> Peer | None:
        if peer is None:
            return None
        if peer.backend_type != self.type:
            self.refuse(peer, f"its lease is for backend {peer.backend_type!r}, not vxlan")
            return None
        if peer.vtep_mac is None and not self._direct(peer):
            self.refuse(peer, "its lease has no valid VtepMAC")
            return None
        self.refused.discard(peer.subnet)
        return peer

    def reconcile(self, peers: Mapping[ipaddress.IPv4Network, Peer]) -> None:
        if not self.index:
            raise DataPlaneError(f"{self.device} is not set up")
        wanted = {s: p for s, p in peers.items() if self._usable(p) is not None}
        encap = {s: p for s, p in wanted.items() if not self._direct(p)}
        want_neigh = {str(p.subnet.network_address): p.vtep_mac for p in encap.values()}
        want_fdb = {p.vtep_mac: str(p.public_ip) for p in encap.values()}
        # Stale routes of ours: any subnet no lease backs, or a route that is not the one wanted.
        for dst, (gateway, oif) in self.our_routes().items():
            peer = wanted.get(dst)
            if peer is None or (gateway, oif) != self._route_of(peer):
                self.route_delete(dst)
        for neigh in self.ipr.neigh("dump", family=2, ifindex=self.index):
            if neigh["ifindex"] != self.index:
                continue
            dst = neigh.get("NDA_DST")
            if want_neigh.get(dst) != neigh.get("NDA_LLADDR"):
                with _gone():
                    self.ipr.neigh("del", ifindex=self.index, dst=dst)
        for entry in self.ipr.fdb("dump", ifindex=self.index):
            if entry["ifindex"] != self.index or not entry.get("NDA_DST"):
                continue
            mac = entry.get("NDA_LLADDR")
            if want_fdb.get(mac) != entry.get("NDA_DST"):
                self._fdb_delete(mac, entry.get("NDA_DST"))
        batch = Batch()
        for peer in wanted.values():
            if self._direct(peer):
                batch.route(peer.subnet, str(peer.public_ip), self.iface.index, ROUTE_PROTO,
                            onlink=False)  # fmt: skip
                continue
            if peer.vtep_mac is None:  # never: _usable keeps only direct peers without one
                continue
            gateway = str(peer.subnet.network_address)
            batch.fdb(peer.vtep_mac, str(peer.public_ip), self.index)
            batch.neighbour(gateway, peer.vtep_mac, self.index)
            batch.route(peer.subnet, gateway, self.index, ROUTE_PROTO, onlink=True)
        batch.send()

    def apply(self, old: Peer | None, new: Peer | None) -> None:
        old, new = self._usable(old), self._usable(new)
        if old is not None:
            if new is None:
                self.route_delete(old.subnet)
            if not self._direct(old):
                moved = new is None or self._direct(new)
                if (
                    new is None
                    or moved
                    or (new.vtep_mac, new.public_ip) != (old.vtep_mac, old.public_ip)
                ):
                    self._fdb_delete(old.vtep_mac, str(old.public_ip))
                if moved:
                    with _gone():
                        self.ipr.neigh(
                            "del", ifindex=self.index, dst=str(old.subnet.network_address)
                        )
        if new is not None:
            self._add(new)

    def _route_of(self, peer: Peer) -> tuple[str, int]:
        if self._direct(peer):
            return str(peer.public_ip), self.iface.index
        return str(peer.subnet.network_address), self.index

    def _add(self, peer: Peer) -> None:
        if self._direct(peer):
            self.route_replace(peer.subnet, str(peer.public_ip), self.iface.index)
            return
        gateway = str(peer.subnet.network_address)
        # The order matters: the neighbour and the FDB entry before the route that uses them.
        self.ipr.fdb(
            "replace",
            ifindex=self.index,
            lladdr=peer.vtep_mac,
            dst=str(peer.public_ip),
            state=NUD_PERMANENT,
            flags=NTF_SELF,
        )
        self.ipr.neigh(
            "replace", ifindex=self.index, dst=gateway, lladdr=peer.vtep_mac, state=NUD_PERMANENT
        )
        self.route_replace(peer.subnet, gateway, self.index, onlink=True)

    def _fdb_delete(self, mac: str | None, dst: str) -> None:
        if mac is None:
            return
        with _gone():
            self.ipr.fdb("del", ifindex=self.index, lladdr=mac, dst=dst, flags=NTF_SELF)


def _int(backend: dict[str, Any], name: str, default: int) -> int:
    value = backend.get(name, default) or default
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise DataPlaneError(f"Backend.{name} must be a positive number, not {value!r}")
    return value
