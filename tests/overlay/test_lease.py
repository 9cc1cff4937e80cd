"""Overlay subnet leasing against every store: acquisition, restarts, reservations, renewal."""

from __future__ import annotations

import asyncio
import ipaddress
import json
from pathlib import Path

import pytest

from clustertui.backend.etcd import EtcdClient, make_client
from clustertui.backend.overlay.lease import (
    Lease,
    OutOfSubnets,
    SubnetManager,
    read_subnet_env,
    subnet_key,
)


async def put_config(kv: EtcdClient, prefix: str, config: dict) -> None:
    await kv.put(f"{prefix}/config".encode(), json.dumps(config).encode())


def prefix_of(ns: bytes) -> str:
    return ns.decode().rstrip("/") + "/coreos.com/network"


@pytest.mark.slow
async def test_250_machines_acquiring_at_once_get_250_distinct_subnets(
    kv: EtcdClient, store, ns: bytes, tmp_path: Path
) -> None:
    prefix = prefix_of(ns)
    await put_config(kv, prefix, {"Network": "10.7.0.0/16"})
    clients = [kv] + [make_client([store.url]) for _ in range(3)]
    try:
        managers = [
            SubnetManager(
                clients[i % len(clients)],
                f"192.168.{i // 200}.{i % 200 + 1}",
                tmp_path / f"m{i}",
                prefix=prefix,
            )
            for i in range(250)
        ]
        leases = await asyncio.gather(*(m.acquire() for m in managers))
    finally:
        for client in clients[1:]:
            await client.close()

    subnets = [lease.subnet for lease in leases]
    assert len(set(subnets)) == 250
    network = ipaddress.IPv4Network("10.7.0.0/16")
    assert all(s.prefixlen == 24 and s.subnet_of(network) for s in subnets)
    # SubnetMin defaults to the second subnet: the first is never handed out.
    assert ipaddress.IPv4Network("10.7.0.0/24") not in subnets
    stored = await kv.get_prefix(f"{prefix}/subnets/".encode())
    owners = {json.loads(item.value)["PublicIP"] for item in stored}
    assert len(stored) == 250 and len(owners) == 250


async def test_a_restarted_machine_keeps_its_subnet(
    kv: EtcdClient, ns: bytes, tmp_path: Path
) -> None:
    prefix = prefix_of(ns)
    await put_config(kv, prefix, {"Network": "10.8.0.0/16", "Backend": {"Type": "vxlan", "VNI": 4}})
    first = await SubnetManager(kv, "192.168.1.1", tmp_path, prefix=prefix).acquire()
    again = await SubnetManager(kv, "192.168.1.1", tmp_path / "elsewhere", prefix=prefix).acquire()
    assert again.subnet == first.subnet
    value = json.loads((await kv.get(again.key)).value)
    assert value == {"PublicIP": "192.168.1.1", "BackendType": "vxlan", "BackendData": {}}


async def test_a_machine_whose_lease_expired_takes_its_previous_subnet_from_subnet_env(
    kv: EtcdClient, ns: bytes, tmp_path: Path
) -> None:
    prefix = prefix_of(ns)
    await put_config(kv, prefix, {"Network": "10.9.0.0/16"})
    stop = asyncio.Event()
    manager = SubnetManager(kv, "192.168.1.2", tmp_path, prefix=prefix)
    task = asyncio.create_task(manager.run(stop))
    await asyncio.wait_for(manager.ready.wait(), 10)
    held = manager.lease
    stop.set()
    await task
    env = read_subnet_env(tmp_path / "subnet.env")
    assert env["FLANNEL_SUBNET"] == f"{held.subnet.network_address + 1}/24"
    assert env == {
        "FLANNEL_NETWORK": "10.9.0.0/16",
        "FLANNEL_SUBNET": env["FLANNEL_SUBNET"],
        "FLANNEL_MTU": "1450",
        "FLANNEL_IPMASQ": "false",
    }
    # The lease is gone (as after a long outage); subnet.env still remembers the subnet.
    await kv.revoke_lease(held.lease_id)
    again = await SubnetManager(kv, "192.168.1.2", tmp_path, prefix=prefix).acquire()
    assert again.subnet == held.subnet


async def test_reserved_subnets_are_never_handed_out(
    kv: EtcdClient, ns: bytes, tmp_path: Path
) -> None:
    prefix = prefix_of(ns)
    await put_config(kv, prefix, {"Network": "10.10.0.0/28", "SubnetLen": 30})
    # /28 in /30s: four subnets, SubnetMin skips the first, so three can be leased.
    for reserved in ("10.10.0.4", "10.10.0.12"):
        key = subnet_key(prefix, ipaddress.IPv4Network(f"{reserved}/30"))
        await kv.put(key, json.dumps({"PublicIP": "172.16.0.9", "BackendType": "vxlan"}).encode())
    lease = await SubnetManager(kv, "192.168.1.3", tmp_path, prefix=prefix).acquire()
    assert lease.subnet == ipaddress.IPv4Network("10.10.0.8/30")


async def test_a_reservation_made_for_a_machine_is_used_by_it(
    kv: EtcdClient, ns: bytes, tmp_path: Path
) -> None:
    prefix = prefix_of(ns)
    await put_config(kv, prefix, {"Network": "10.11.0.0/16"})
    key = subnet_key(prefix, ipaddress.IPv4Network("10.11.200.0/24"))
    await kv.put(key, json.dumps({"PublicIP": "192.168.1.4", "BackendType": "vxlan"}).encode())
    lease = await SubnetManager(kv, "192.168.1.4", tmp_path, prefix=prefix).acquire()
    assert lease.subnet == ipaddress.IPv4Network("10.11.200.0/24")
    assert lease.lease_id == 0
    assert (await kv.get(key)).lease == 0


async def test_a_tiny_network_runs_out_with_a_clear_error(
    kv: EtcdClient, ns: bytes, tmp_path: Path
) -> None:
    prefix = prefix_of(ns)
    await put_config(kv, prefix, {"Network": "10.12.0.0/28", "SubnetLen": 30})
    got = [
        await SubnetManager(kv, f"192.168.2.{i}", tmp_path / str(i), prefix=prefix).acquire()
        for i in range(1, 4)
    ]
    assert len({lease.subnet for lease in got}) == 3
    with pytest.raises(OutOfSubnets, match="out of subnets"):
        await SubnetManager(kv, "192.168.2.9", tmp_path / "9", prefix=prefix).acquire()


@pytest.mark.slow
async def test_renewal_keeps_the_lease_alive_past_its_ttl(
    kv: EtcdClient, ns: bytes, tmp_path: Path
) -> None:
    prefix = prefix_of(ns)
    await put_config(kv, prefix, {"Network": "10.13.0.0/16"})
    stop = asyncio.Event()
    manager = SubnetManager(kv, "192.168.1.5", tmp_path, prefix=prefix, ttl=2, renew_margin=1)
    task = asyncio.create_task(manager.run(stop))
    await asyncio.wait_for(manager.ready.wait(), 10)
    held = manager.lease
    await asyncio.sleep(held.ttl * 2.5)
    found = await kv.get(held.key)
    assert found is not None and found.lease == held.lease_id
    assert manager.lease == held
    stop.set()
    await task


class States:
    """The (lease, error) pairs a SubnetManager reports, to be awaited one by one."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[Lease | None, str | None]] = asyncio.Queue()

    def __call__(self, lease: Lease | None, error: str | None) -> None:
        self.queue.put_nowait((lease, error))

    async def next(self) -> tuple[Lease | None, str | None]:
        return await asyncio.wait_for(self.queue.get(), 15)


async def test_a_deleted_lease_is_acquired_again(kv: EtcdClient, ns: bytes, tmp_path: Path) -> None:
    prefix = prefix_of(ns)
    await put_config(kv, prefix, {"Network": "10.14.0.0/16"})
    stop = asyncio.Event()
    states = States()
    manager = SubnetManager(kv, "192.168.1.6", tmp_path, prefix=prefix, on_change=states)
    task = asyncio.create_task(manager.run(stop))
    first, _ = await states.next()
    await kv.delete(first.key)
    lost, reason = await states.next()
    assert lost is None and reason == f"lost {first.subnet}: its key was deleted"
    again, _ = await states.next()
    assert again.lease_id != first.lease_id
    # subnet.env still names the old subnet, which is free again: flannel takes it back.
    assert again.subnet == first.subnet
    assert await kv.get(again.key) is not None
    stop.set()
    await task


async def test_a_revoked_lease_is_acquired_again(kv: EtcdClient, ns: bytes, tmp_path: Path) -> None:
    prefix = prefix_of(ns)
    await put_config(kv, prefix, {"Network": "10.16.0.0/16"})
    stop = asyncio.Event()
    states = States()
    manager = SubnetManager(kv, "192.168.1.8", tmp_path, prefix=prefix, on_change=states)
    task = asyncio.create_task(manager.run(stop))
    first, _ = await states.next()
    await kv.revoke_lease(first.lease_id)
    lost, reason = await states.next()
    assert lost is None and "lost" in reason
    again, _ = await states.next()
    assert again.subnet == first.subnet and again.lease_id != first.lease_id
    stop.set()
    await task


async def test_a_bad_config_is_reported_and_retried_until_it_is_fixed(
    kv: EtcdClient, ns: bytes, tmp_path: Path
) -> None:
    prefix = prefix_of(ns)
    await put_config(kv, prefix, {"SubnetLen": 24})
    stop = asyncio.Event()
    states = States()
    manager = SubnetManager(kv, "192.168.1.7", tmp_path, prefix=prefix, on_change=states)
    task = asyncio.create_task(manager.run(stop))
    lease, error = await states.next()
    assert lease is None and error.startswith("Network: required")
    assert not task.done()
    await put_config(kv, prefix, {"Network": "10.15.0.0/16"})
    while lease is None:
        lease, error = await states.next()
    assert error is None
    assert lease.subnet.subnet_of(ipaddress.IPv4Network("10.15.0.0/16"))
    stop.set()
    await task


async def test_without_a_config_the_node_waits_for_one(
    kv: EtcdClient, ns: bytes, tmp_path: Path
) -> None:
    prefix = prefix_of(ns)
    stop = asyncio.Event()
    states = States()
    manager = SubnetManager(kv, "192.168.1.9", tmp_path, prefix=prefix, on_change=states)
    task = asyncio.create_task(manager.run(stop))
    _, error = await states.next()
    assert error == f"config: no network config at {prefix}/config: put one there first"
    stop.set()
    await task
