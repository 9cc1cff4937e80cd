"""Provides the overlay's network config: parsed and checked the way flannel does it."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from typing import Any

DEFAULT_PREFIX = "/coreos.com/network"
DEFAULT_BACKEND = "vxlan"
# Encapsulation overhead per backend, taken off a 1500-byte link for FLANNEL_MTU.
BACKEND_OVERHEAD = {
    "vxlan": 50,
    "udp": 28,
    "host-gw": 0,
    "ipip": 20,
    "wireguard": 80,
    "ipsec": 73,
    "alloc": 0,
    "aws-vpc": 0,
    "gce": 0,
    "ali-vpc": 0,
    "tencent-vpc": 0,
}
LINK_MTU = 1500


class ConfigError(ValueError):
    """The network config is unusable; ``field`` names the culprit, ``reason`` says why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class NetworkConfig:
    """A checked network config, every default filled in."""

    network: ipaddress.IPv4Network
    subnet_len: int
    subnet_min: ipaddress.IPv4Network
    subnet_max: ipaddress.IPv4Network
    backend: dict[str, Any] = field(default_factory=lambda: {"Type": DEFAULT_BACKEND})

    @property
    def backend_type(self) -> str:
        return str(self.backend["Type"])

    @property
    def mtu(self) -> int:
        return LINK_MTU - BACKEND_OVERHEAD[self.backend_type]

    def subnet_at(self, index: int) -> ipaddress.IPv4Network:
        """The ``index``-th subnet of SubnetLen in the network (0 is the first)."""
        size = 1 << (32 - self.subnet_len)
        address = int(self.network.network_address) + index * size
        return ipaddress.IPv4Network((address, self.subnet_len))

    def index_of(self, subnet: ipaddress.IPv4Network) -> int:
        return (int(subnet.network_address) - int(self.network.network_address)) >> (
            32 - self.subnet_len
        )

    def allows(self, subnet: ipaddress.IPv4Network) -> bool:
        """True when ``subnet`` may be handed out: right size, between SubnetMin and SubnetMax."""
        return (
            subnet.prefixlen == self.subnet_len
            and self.subnet_min.network_address
            <= subnet.network_address
            <= self.subnet_max.network_address
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "Network": str(self.network),
            "SubnetLen": self.subnet_len,
            "SubnetMin": str(self.subnet_min.network_address),
            "SubnetMax": str(self.subnet_max.network_address),
            "Backend": self.backend,
        }


def _address(raw: Any, name: str) -> ipaddress.IPv4Address:
    if not isinstance(raw, str):
        raise ConfigError(name, f"must be an IPv4 address string, not {json.dumps(raw)}")
    try:
        return ipaddress.IPv4Address(raw)
    except ValueError:
        raise ConfigError(name, f"{raw!r} is not an IPv4 address") from None


def parse_config(raw: bytes | str) -> NetworkConfig:
    """Parse and check a config as flanneld does; raises :class:`ConfigError`."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise ConfigError("config", f"not valid JSON ({error})") from None
    if not isinstance(doc, dict):
        raise ConfigError("config", "must be a JSON object")

    raw_network = doc.get("Network")
    if not raw_network:
        raise ConfigError("Network", "required: give the overlay's CIDR, e.g. 10.1.0.0/16")
    if not isinstance(raw_network, str):
        raise ConfigError("Network", f"must be a CIDR string, not {json.dumps(raw_network)}")
    try:
        network = ipaddress.IPv4Network(raw_network, strict=False)
    except ValueError:
        raise ConfigError("Network", f"{raw_network!r} is not an IPv4 CIDR") from None

    subnet_len = doc.get("SubnetLen") or 0
    if not isinstance(subnet_len, int) or isinstance(subnet_len, bool) or subnet_len < 0:
        raise ConfigError("SubnetLen", f"must be a prefix length, not {json.dumps(subnet_len)}")
    if subnet_len == 0:
        subnet_len = 24 if network.prefixlen <= 22 else network.prefixlen + 2
    if subnet_len > 30:
        raise ConfigError("SubnetLen", f"/{subnet_len} is too small: at most /30")
    if subnet_len < network.prefixlen + 2:
        raise ConfigError(
            "SubnetLen",
            f"/{subnet_len} leaves {network} room for fewer than 4 subnets",
        )

    size = 1 << (32 - subnet_len)
    base = int(network.network_address)
    count = 1 << (subnet_len - network.prefixlen)
    bounds = {}
    for name, default in (("SubnetMin", base + size), ("SubnetMax", base + (count - 1) * size)):
        if doc.get(name):
            address = int(_address(doc[name], name))
            if address not in range(base, base + network.num_addresses):
                raise ConfigError(name, f"{doc[name]} is outside the network {network}")
            if (address - base) % size:
                raise ConfigError(name, f"{doc[name]} is not on a /{subnet_len} boundary")
        else:
            address = default
        bounds[name] = ipaddress.IPv4Network((address, subnet_len))
    if bounds["SubnetMin"].network_address > bounds["SubnetMax"].network_address:
        raise ConfigError("SubnetMin", "is above SubnetMax")

    backend = doc.get("Backend") or {}
    if not isinstance(backend, dict):
        raise ConfigError("Backend", 'must be a JSON object such as {"Type": "vxlan"}')
    backend = {**backend, "Type": backend.get("Type") or DEFAULT_BACKEND}
    if backend["Type"] not in BACKEND_OVERHEAD:
        raise ConfigError(
            "Backend.Type",
            f"unknown backend {json.dumps(backend['Type'])}; "
            f"known: {', '.join(sorted(BACKEND_OVERHEAD))}",
        )
    return NetworkConfig(network, subnet_len, bounds["SubnetMin"], bounds["SubnetMax"], backend)
