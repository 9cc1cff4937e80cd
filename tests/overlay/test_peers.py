"""Leases read by the data plane are untrusted: only a well-formed one becomes a peer."""

from __future__ import annotations

import ipaddress
import json

import pytest

from clustertui.backend.overlay.dataplane import Peer, parse_peer
from clustertui.backend.overlay.routes import kernel_routes

KEY = b"/coreos.com/network/subnets/10.1.7.0-24"


def test_a_well_formed_lease_is_a_peer() -> None:
    value = {"PublicIP": "192.168.5.2", "BackendType": "vxlan",
             "BackendData": {"VtepMAC": "0A:1b:2c:3d:4e:5f"}}  # fmt: skip
    assert parse_peer(KEY, json.dumps(value).encode()) == Peer(
        ipaddress.IPv4Network("10.1.7.0/24"),
        ipaddress.IPv4Address("192.168.5.2"),
        "vxlan",
        "0a:1b:2c:3d:4e:5f",
    )


@pytest.mark.parametrize(
    "value",
    [
        b"not json",
        b"[1, 2]",
        b'{"PublicIP": 5}',
        b'{"PublicIP": "300.1.1.1"}',
        b'{"PublicIP": "192.168.5.2; rm -rf /"}',
        b'{"BackendType": "vxlan"}',
        b"\xff\xfe",
    ],
)
def test_a_lease_without_a_valid_public_ip_is_ignored(value: bytes) -> None:
    assert parse_peer(KEY, value) is None


@pytest.mark.parametrize(
    "mac",
    ["", "zz:zz:zz:zz:zz:zz", "01:00:5e:00:00:01", "00:00:00:00:00:00", "0a:1b:2c:3d:4e",
     "0a:1b:2c:3d:4e:5f dev lo", 42, None, ["0a:1b:2c:3d:4e:5f"]],
)  # fmt: skip
def test_a_bad_vtep_mac_is_dropped_but_the_lease_still_read(mac: object) -> None:
    value = {"PublicIP": "192.168.5.2", "BackendType": "vxlan", "BackendData": {"VtepMAC": mac}}
    peer = parse_peer(KEY, json.dumps(value).encode())
    assert peer is not None and peer.vtep_mac is None


def test_a_key_that_is_not_a_subnet_is_no_peer() -> None:
    assert parse_peer(b"/coreos.com/network/subnets/garbage", b'{"PublicIP": "10.0.0.1"}') is None


def test_kernel_routes_reads_proc_net_route(tmp_path) -> None:
    table = tmp_path / "route"
    table.write_text(
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
        "eth0\t00000000\t0102000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
        "flannel.1\t0007010A\t0007010A\t0007\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
        "broken\tzz\n"
    )
    assert kernel_routes(table) == {
        ipaddress.IPv4Network("0.0.0.0/0"): "eth0",
        ipaddress.IPv4Network("10.1.7.0/24"): "flannel.1",
    }
    assert kernel_routes(tmp_path / "missing") == {}
