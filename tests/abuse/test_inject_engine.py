"""Injection through the scheduler: the engine never places a unit on an invalid machine record."""

from __future__ import annotations

import json

import pytest

from clustertui.backend.etcd import EtcdClient
from clustertui.backend.fleet.engine import Engine
from clustertui.backend.fleet.registry import Machine, Registry

BAD = "badc0ffee0ddf00d0123456789abcdef"
LIAR = "11111111222222223333333344444444"
GOOD = "600d600d600d600d600d600d600d600d"
ENGINE = "engine0001"
SIMPLE = "[Service]\nExecStart=/bin/true\n"


@pytest.fixture
def registry(kv: EtcdClient, ns: bytes) -> Registry:
    return Registry(kv, ns.decode() + "fleet/")


async def test_the_engine_never_schedules_onto_an_invalid_machine_record(
    registry: Registry, kv: EtcdClient
) -> None:
    await registry.txn([], [registry.put_op(registry.leader_key, ENGINE)])
    await registry.register_machine(Machine(BAD, "-oProxyCommand=touch /tmp/pwned"), 0)
    # A record that names another machine than its key, and one whose metadata is unsafe.
    liar = {"ID": GOOD, "PublicIP": "127.0.0.2", "Metadata": {}}
    await kv.put(registry.key("machines", LIAR, "object"), json.dumps(liar).encode())
    await registry.register_machine(Machine("dddddddd", "127.0.0.3", {"k": "$(x)"}), 0)
    names = [f"u{n}.service" for n in range(3)]
    for name in names:
        await registry.create_job(name, SIMPLE)
        await registry.set_target_state(name, "launched")
    # One unit was placed on the bad record before it went bad: it must move off it.
    await registry.txn([], [registry.put_op(registry.key("job", names[0], "target"), BAD)])
    engine = Engine(kv, registry, ENGINE)

    await engine.reconcile()
    jobs = await registry.list_jobs()
    assert {name: (jobs[name].target, jobs[name].reason) for name in names} == dict.fromkeys(
        names, ("", "no machines are in the cluster")
    )

    await registry.register_machine(Machine(GOOD, "127.0.0.1"), 0)
    await engine.reconcile()
    jobs = await registry.list_jobs()
    assert {jobs[name].target for name in names} == {GOOD}
