"""Provides ``kernel_routes()``: this host's IPv4 routes, from /proc/net/route (no privilege)."""

from __future__ import annotations

import ipaddress
import socket
import struct
from pathlib import Path

PROC_ROUTE = Path("/proc/net/route")


def kernel_routes(path: Path = PROC_ROUTE) -> dict[ipaddress.IPv4Network, str]:
    """Destination network -> the interface of its route, for this network namespace.

    The console's Subnets pane uses it to say whether this host routes each lease's subnet
    (and through which device: ``flannel.1`` for vxlan, the underlay for host-gw).
    Empty when the file cannot be read (not Linux, no /proc).
    """
    routes: dict[ipaddress.IPv4Network, str] = {}
    try:
        lines = path.read_text().splitlines()[1:]
    except OSError:
        return routes
    for line in lines:
        fields = line.split()
        if len(fields) < 8:
            continue
        try:
            destination = socket.inet_ntoa(struct.pack("<I", int(fields[1], 16)))
            mask = socket.inet_ntoa(struct.pack("<I", int(fields[7], 16)))
            network = ipaddress.IPv4Network(f"{destination}/{mask}")
        except (ValueError, struct.error, OSError):
            continue
        routes.setdefault(network, fields[0])
    return routes
