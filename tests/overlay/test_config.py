"""Overlay network configs are checked, and defaulted, the way flannel does it."""

from __future__ import annotations

import ipaddress

import pytest

from clustertui.backend.overlay.config import ConfigError, parse_config


def test_defaults_follow_flannel() -> None:
    config = parse_config('{"Network": "10.1.0.0/16"}')
    assert config.subnet_len == 24
    assert config.subnet_min == ipaddress.IPv4Network("10.1.1.0/24")
    assert config.subnet_max == ipaddress.IPv4Network("10.1.255.0/24")
    assert config.backend == {"Type": "vxlan"}
    assert config.mtu == 1450


def test_a_small_network_gets_four_subnets() -> None:
    config = parse_config('{"Network": "10.1.0.0/25"}')
    assert config.subnet_len == 27
    assert config.subnet_min == ipaddress.IPv4Network("10.1.0.32/27")
    assert config.subnet_max == ipaddress.IPv4Network("10.1.0.96/27")


def test_backend_fields_are_kept() -> None:
    config = parse_config('{"Network": "10.1.0.0/16", "Backend": {"Type": "udp", "Port": 8285}}')
    assert config.backend == {"Type": "udp", "Port": 8285}
    assert config.mtu == 1472


@pytest.mark.parametrize(
    ("raw", "field", "reason"),
    [
        ("{", "config", "not valid JSON"),
        ("[]", "config", "must be a JSON object"),
        ('{"SubnetLen": 24}', "Network", "required"),
        ('{"Network": "10.1.0.0/33"}', "Network", "is not an IPv4 CIDR"),
        ('{"Network": 7}', "Network", "must be a CIDR string"),
        ('{"Network": "10.1.0.0/16", "SubnetLen": 31}', "SubnetLen", "at most /30"),
        ('{"Network": "10.1.0.0/16", "SubnetLen": 17}', "SubnetLen", "fewer than 4 subnets"),
        ('{"Network": "10.1.0.0/29"}', "SubnetLen", "at most /30"),
        ('{"Network": "10.1.0.0/16", "SubnetLen": "24"}', "SubnetLen", "must be a prefix length"),
        ('{"Network": "10.1.0.0/16", "SubnetMin": "10.1.1.5"}', "SubnetMin", "boundary"),
        ('{"Network": "10.1.0.0/16", "SubnetMax": "10.2.0.0"}', "SubnetMax", "outside"),
        ('{"Network": "10.1.0.0/16", "SubnetMin": "bogus"}', "SubnetMin", "not an IPv4 address"),
        (
            '{"Network": "10.1.0.0/16", "SubnetMin": "10.1.9.0", "SubnetMax": "10.1.3.0"}',
            "SubnetMin",
            "above SubnetMax",
        ),
        ('{"Network": "10.1.0.0/16", "Backend": "vxlan"}', "Backend", "must be a JSON object"),
        ('{"Network": "10.1.0.0/16", "Backend": {"Type": "warp"}}', "Backend.Type", "unknown"),
    ],
)
def test_bad_configs_are_rejected_with_field_and_reason(raw: str, field: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(raw)
    assert caught.value.field == field
    assert reason in caught.value.reason
    assert str(caught.value).startswith(f"{field}: ")
