"""The host-gw backend, as flannel's: a route to each peer's subnet via its PublicIP.

No encapsulation: the underlay carries the containers' packets as they are, so every
peer must be on this host's L2 network (its PublicIP in a subnet connected to ``--iface``).
A peer that is not is refused with a message naming it, and gets no route.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

from clustertui.backend.overlay.dataplane import ROUTE_PROTO, Backend, Peer
from clustertui.backend.overlay.nlbatch import Batch


class HostGwBackend(Backend):
    type = "host-gw"

    def _usable(self, peer: Peer | None) -> Peer | None:
        if peer is None:
            return None
        if peer.backend_type != self.type:
            self.refuse(peer, f"its lease is for backend {peer.backend_type!r}, not host-gw")
            return None
        if not self.iface.on_link(peer.public_ip):
            networks = ", ".join(str(n) for n in self.iface.networks) or "none"
            self.refuse(
                peer,
                f"host-gw needs every host on one L2 network, and {peer.public_ip} is not on "
                f"{self.iface.name} ({networks}); use the vxlan backend across networks",
            )
            return None
        self.refused.discard(peer.subnet)
        return peer

    def reconcile(self, peers: Mapping[ipaddress.IPv4Network, Peer]) -> None:
        wanted = {s: p for s, p in peers.items() if self._usable(p) is not None}
        for dst, (gateway, oif) in self.our_routes().items():
            peer = wanted.get(dst)
            if peer is None or (gateway, oif) != (str(peer.public_ip), self.iface.index):
                self.route_delete(dst)
        batch = Batch()
        for peer in wanted.values():
            batch.route(peer.subnet, str(peer.public_ip), self.iface.index, ROUTE_PROTO,
                        onlink=False)  # fmt: skip
        batch.send()

    def apply(self, old: Peer | None, new: Peer | None) -> None:
        new = self._usable(new)
        if new is None:
            if old is not None:
                self.route_delete(old.subnet)
            return
        self.route_replace(new.subnet, str(new.public_ip), self.iface.index)
