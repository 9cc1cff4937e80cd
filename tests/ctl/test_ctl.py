"""Tests for clusterctl: fleetctl's columns, messages and exit codes, on each store kind."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from aetcd import rpc

from clustertui.backend.etcd import EtcdClient
from clustertui.backend.fleet.registry import Machine, Registry, UnitState
from clustertui.backend.fleet.unitfile import unit_hash
from clustertui.backend.journal.writer import JournalWriter
from clustertui.backend.keys import prefix_end
from clustertui.console.ctl import tabulate
from tests.ctl.conftest import CtlRunner
from tests.fleet.conftest import NodeFactory, eventually
from tests.harness.etcd import TLSFiles, start_etcd
from tests.harness.pki import CA
from tests.harness.procs import REPO
from tests.harness.sshd import SSHServer

M1 = "85c0c5950123456789abcdef01234567"
M2 = "113f16a7fedcba9876543210fedcba98"
HELLO = "[Unit]\nDescription=Hello World\n[Service]\nExecStart=/bin/sleep 60\n"
GLOBAL = HELLO + "[X-Fleet]\nGlobal=true\n"


async def seed(registry: Registry) -> None:
    await registry.register_machine(
        Machine(M1, "172.17.8.102", {"region": "us-west", "disk": "ssd"}, "core-2"), 0
    )
    await registry.register_machine(Machine(M2, "172.17.8.103", {}, "core-3"), 0)
    await registry.create_job("hello.service", HELLO)
    await registry.set_target_state("hello.service", "launched")
    await registry.txn([], [registry.put_op(registry.key("job", "hello.service", "target"), M1)])
    state = UnitState("loaded", "active", "running", unit_hash(HELLO), M1)
    await registry.publish_state("hello.service", state, 0)
    await registry.create_job("monitor.service", GLOBAL)
    await registry.set_target_state("monitor.service", "launched")
    for machine in (M1, M2):
        state = UnitState("loaded", "active", "running", unit_hash(GLOBAL), machine)
        await registry.publish_state("monitor.service", state, 0)
    await registry.create_job("idle.service", HELLO.replace("Hello World", "Idle"))


def test_tables_pad_with_tabs_like_gos_tabwriter() -> None:
    text = tabulate(
        [
            ["UNIT", "MACHINE", "ACTIVE", "SUB"],
            ["hello.service", "113f16a7.../172.17.8.103", "active", "running"],
        ]
    )
    assert text == (
        "UNIT\t\tMACHINE\t\t\t\tACTIVE\tSUB\n"
        "hello.service\t113f16a7.../172.17.8.103\tactive\trunning\n"
    )


async def test_list_machines_shows_short_ids_ips_and_metadata(
    ctl: CtlRunner, registry: Registry
) -> None:
    await seed(registry)
    result = await ctl("list-machines")
    assert result.code == 0
    assert result.rows == [
        ["MACHINE", "IP", "METADATA"],
        ["113f16a7...", "172.17.8.103", "-"],
        ["85c0c595...", "172.17.8.102", "disk=ssd,region=us-west"],
    ]


async def test_list_machines_full_and_no_legend(ctl: CtlRunner, registry: Registry) -> None:
    await seed(registry)
    result = await ctl("list-machines", "--full", "--no-legend")
    assert [row[0] for row in result.rows] == [M2, M1]
    result = await ctl("list-machines", "-l", "--fields", "ip,machine", "--no-legend")
    assert result.rows[1] == ["172.17.8.102", M1]


async def test_list_units_shows_one_row_per_reported_state(
    ctl: CtlRunner, registry: Registry
) -> None:
    await seed(registry)
    result = await ctl("list-units")
    assert result.code == 0
    assert result.rows == [
        ["UNIT", "MACHINE", "ACTIVE", "SUB"],
        ["hello.service", "85c0c595.../172.17.8.102", "active", "running"],
        ["monitor.service", "113f16a7.../172.17.8.103", "active", "running"],
        ["monitor.service", "85c0c595.../172.17.8.102", "active", "running"],
    ]
    full = await ctl("list-units", "--full", "--no-legend", "--fields", "unit,machine,hash")
    assert full.rows[0] == ["hello.service", f"{M1}/172.17.8.102", unit_hash(HELLO)]


async def test_list_unit_files_shows_hash_desired_and_current_state_and_target(
    ctl: CtlRunner, registry: Registry
) -> None:
    await seed(registry)
    result = await ctl("list-unit-files")
    assert result.rows == [
        ["UNIT", "HASH", "DSTATE", "STATE", "TARGET"],
        ["hello.service", unit_hash(HELLO)[:7], "launched", "launched", "85c0c595.../172.17.8.102"],
        [
            "idle.service",
            unit_hash(HELLO.replace("Hello World", "Idle"))[:7],
            "inactive",
            "inactive",
            "-",
        ],
        ["monitor.service", unit_hash(GLOBAL)[:7], "launched", "-", "global"],
    ]
    described = await ctl("list-unit-files", "--fields", "unit,desc,global", "--no-legend")
    assert described.rows[0] == ["hello.service", "Hello World", "false"]


async def test_an_unknown_field_is_an_error(ctl: CtlRunner, registry: Registry) -> None:
    result = await ctl("list-units", "--fields", "unit,colour")
    assert result.code == 1
    assert result.err == "Invalid key in output format: 'colour'\n"
    assert result.out == ""


async def test_submitting_a_malformed_unit_names_the_line_and_stores_nothing(
    ctl: CtlRunner, kv: EtcdClient, prefix: str, tmp_path: Path
) -> None:
    path = tmp_path / "broken.service"
    path.write_text("[Service]\nExecStart=/bin/true\nRestart=sometimes\n")
    result = await ctl("submit", str(path))
    assert result.code == 1
    assert "broken.service: line 3: Restart=" in result.err
    stored = await kv.kvstub.Range(
        rpc.RangeRequest(
            key=prefix.encode(), range_end=prefix_end(prefix.encode()), count_only=True
        ),
        metadata=kv.metadata,
    )
    assert stored.count == 0


async def test_submit_then_cat_returns_the_same_text(
    ctl: CtlRunner, registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "hello.service").write_text(HELLO)
    monkeypatch.chdir(tmp_path)
    assert (await ctl("submit", "hello")).code == 0
    cat = await ctl("cat", "hello")
    assert cat.out == HELLO
    job = await registry.job("hello.service")
    assert job is not None and job.target_state == "inactive"


async def test_a_different_local_file_is_kept_out_unless_replace(
    ctl: CtlRunner, registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "hello.service").write_text(HELLO)
    await ctl("submit", "hello.service")
    (tmp_path / "hello.service").write_text(HELLO.replace("60", "61"))
    result = await ctl("submit", "hello.service")
    assert "WARNING: Unit hello.service in registry differs from local unit file" in result.err
    assert (await ctl("cat", "hello.service")).out == HELLO
    assert (await ctl("submit", "--replace", "hello.service")).code == 0
    assert "sleep 61" in (await ctl("cat", "hello.service")).out


async def test_a_template_instance_is_created_from_the_template_file(
    ctl: CtlRunner, registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "web@.service").write_text("[Service]\nExecStart=/bin/echo %i\n")
    result = await ctl("load", "--no-block", "web@8080")
    assert result.code == 0
    assert result.out == "Triggered unit web@8080.service load\n"
    job = await registry.job("web@8080.service")
    assert job is not None and job.target_state == "loaded"


async def test_start_of_an_unknown_unit_fails_with_fleetctls_message(ctl: CtlRunner) -> None:
    result = await ctl("start", "nowhere.service")
    assert result.code == 1
    assert result.err == (
        "Error creating units: unable to find Unit(nowhere.service) in Registry or on filesystem\n"
    )


async def test_status_of_an_unplaceable_unit_gives_the_reason(
    ctl: CtlRunner, registry: Registry
) -> None:
    await registry.create_job("far.service", HELLO)
    await registry.set_target_state("far.service", "launched")
    reason = "no machine has the metadata region=eu"
    await registry.txn([], [registry.put_op(registry.key("job", "far.service", "reason"), reason)])
    result = await ctl("status", "far")
    assert result.code == 3
    assert f"   Reason: {reason}" in result.out.splitlines()
    missing = await ctl("status", "ghost")
    assert missing.code == 1 and missing.err == "Unit ghost.service does not exist.\n"


async def test_destroy_removes_the_unit(ctl: CtlRunner, registry: Registry) -> None:
    await seed(registry)
    result = await ctl("destroy", "hello")
    assert result.out == "Destroyed hello.service\n"
    assert await registry.job("hello.service") is None


async def test_a_global_start_is_triggered_without_waiting(
    ctl: CtlRunner, registry: Registry
) -> None:
    await registry.create_job("monitor.service", GLOBAL)
    result = await ctl("start", "monitor")
    assert result.out == "Triggered global unit monitor.service start\n"


async def test_start_blocks_until_launched_and_stop_until_loaded(
    ctl: CtlRunner,
    nodes: NodeFactory,
    registry: Registry,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    node = nodes.start("n1", ttl="2s")
    machine_id_file = nodes.root / "n1" / "machine-id"
    node.wait_until(machine_id_file.exists)
    machine = machine_id_file.read_text().strip()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "hello.service").write_text(HELLO)
    started = await ctl("start", "--block-attempts", "40", "hello.service")
    assert started.code == 0, started.err
    assert started.out == f"Unit hello.service launched on {machine[:8]}.../127.0.0.1\n"
    listed = await ctl("list-units", "--no-legend")
    assert listed.rows == [["hello.service", f"{machine[:8]}.../127.0.0.1", "active", "running"]]
    stopped = await ctl("stop", "--block-attempts", "40", "hello")
    assert stopped.code == 0
    assert stopped.out == f"Unit hello.service loaded on {machine[:8]}.../127.0.0.1\n"
    assert stopped.err == "Successfully stopped units [hello.service].\n"
    unloaded = await ctl("unload", "hello")
    assert unloaded.out == "Unit hello.service inactive\n"
    assert unloaded.err == "Successfully unloaded units [hello.service].\n"


async def test_block_attempts_give_up_with_an_error(ctl: CtlRunner, registry: Registry) -> None:
    await registry.create_job("hello.service", HELLO)
    result = await ctl("start", "--block-attempts", "2", "hello")
    assert result.code == 1
    assert result.err == (
        "Error waiting for units: timed out waiting for unit hello.service to report state "
        "launched\n"
    )


async def test_stop_of_an_inactive_unit_is_refused(ctl: CtlRunner, registry: Registry) -> None:
    await registry.create_job("hello.service", HELLO)
    result = await ctl("stop", "hello")
    assert result.code == 1
    assert result.err == "Unable to stop unit hello.service in state inactive\n"


def cli(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CLUSTERCTL_", "FLEETCTL_"))}
    return subprocess.run(
        [sys.executable, "-m", "clustertui.console.ctl", *argv],
        cwd=REPO,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


async def test_flags_come_from_clusterctl_then_fleetctl_environment(
    store: object, registry: Registry, prefix: str
) -> None:
    await seed(registry)
    url = store.url  # type: ignore[attr-defined]
    by_fleetctl = cli(
        "list-machines",
        "--no-legend",
        env={"FLEETCTL_ENDPOINT": url, "FLEETCTL_KEY_PREFIX": prefix},
    )
    assert by_fleetctl.returncode == 0, by_fleetctl.stderr
    assert len(by_fleetctl.stdout.splitlines()) == 2
    both = cli(
        "list-machines",
        env={
            "CLUSTERCTL_ENDPOINT": url,
            "FLEETCTL_ENDPOINT": "http://127.0.0.1:1",
            "CLUSTERCTL_KEY_PREFIX": prefix,
        },
    )
    assert both.returncode == 0, both.stderr


def test_an_unreachable_store_is_an_error_on_stderr() -> None:
    result = cli(
        "--endpoint", "http://127.0.0.1:1", "--request-timeout", "1", "list-machines", env={}
    )
    assert result.returncode == 1
    assert result.stdout == ""
    # #13.2: the reason and the next step, in the words the console uses.
    assert result.stderr == (
        "Error: nobody answers at http://127.0.0.1:1: connection refused; "
        "is the store running there?\n"
    )


async def test_ssh_runs_a_command_on_a_machine_through_real_sshd(
    ctl: CtlRunner, registry: Registry, sshd: SSHServer
) -> None:
    await registry.register_machine(Machine(M1, "127.0.0.1", {}, "far-away"), 0)
    result = await _ssh(ctl, sshd, "ssh", M1[:8], "echo", "hello from", "$((6*7))")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello from 42\n"


async def _ssh(ctl: CtlRunner, sshd: SSHServer, *argv: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        cli,
        "--endpoint", ctl.url,
        "--key-prefix", ctl.prefix,
        "--ssh-username", sshd.user,
        "--ssh-port", str(sshd.port),
        "--ssh-identity-file", str(sshd.client_key),
        "--known-hosts-file", str(sshd.known_hosts),
        *argv,
        env={},
    )  # fmt: skip


async def test_ssh_to_a_unit_reaches_its_machine(
    ctl: CtlRunner, registry: Registry, sshd: SSHServer
) -> None:
    await seed(registry)
    await registry.register_machine(Machine(M1, "127.0.0.1", {}, "far-away"), 0)
    result = await _ssh(ctl, sshd, "ssh", "hello.service", "hostname")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == os.uname().nodename


async def test_ssh_to_an_unknown_machine_fails(ctl: CtlRunner) -> None:
    result = await ctl("ssh", "deadbeef")
    assert result.code == 1
    assert result.err == "Could not find machine or unit 'deadbeef'\n"


async def test_status_and_journal_show_the_units_lines(
    ctl: CtlRunner, nodes: NodeFactory, registry: Registry
) -> None:
    node = nodes.start("n1", ttl="2s")
    node.wait_until((nodes.root / "n1" / "machine-id").exists)
    await registry.create_job(
        "talk.service",
        "[Service]\nExecStart=/bin/sh -c 'for i in 1 2 3; do echo line $i; done; sleep 60'\n",
    )
    await registry.set_target_state("talk.service", "launched")

    async def three_lines() -> bool:
        result = await ctl("journal", "--lines", "5", "talk")
        return result.code == 0 and "line 3" in result.out

    await eventually(three_lines, within=15, what="the unit's lines in the journal")
    status = await ctl("status", "talk")
    assert status.code == 0
    assert "   Active: active (running)" in status.out
    assert [line.rsplit(": ", 1)[-1] for line in status.out.splitlines() if "]: line" in line] == [
        "line 1",
        "line 2",
        "line 3",
    ]


def _ssh_flags(sshd: SSHServer) -> list[str]:
    return [
        "--ssh-username", sshd.user,
        "--ssh-port", str(sshd.port),
        "--ssh-identity-file", str(sshd.client_key),
        "--known-hosts-file", str(sshd.known_hosts),
    ]  # fmt: skip


async def test_the_tunnel_reaches_the_store_through_real_sshd(
    ctl: CtlRunner, registry: Registry, sshd: SSHServer
) -> None:
    await seed(registry)
    result = await ctl(*_ssh_flags(sshd), "--tunnel", sshd.spec, "list-machines", "--no-legend")
    assert result.code == 0, result.err
    assert [row[0] for row in result.rows] == ["113f16a7...", "85c0c595..."]


async def test_a_tunnel_host_with_an_unknown_key_is_refused(
    ctl: CtlRunner, sshd: SSHServer, tmp_path: Path
) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    flags = _ssh_flags(sshd)
    flags[flags.index("--known-hosts-file") + 1] = str(empty)
    result = await ctl(*flags, "--tunnel", sshd.spec, "list-machines")
    assert result.code == 1
    assert result.err.startswith("Unable to initialize client: failed initializing SSH client:")


async def test_journal_of_a_remote_unit_runs_clusterd_journal_over_ssh_via_the_tunnel(
    ctl: CtlRunner, registry: Registry, sshd: SSHServer, tmp_path: Path
) -> None:
    writer = JournalWriter(tmp_path / "far", hostname="far-away", machine_id=M1)
    for number in range(1, 6):
        writer.line(f"remote line {number}".encode(), unit="far.service", identifier="sh", pid=7)
    writer.close()
    await registry.register_machine(
        Machine(M1, "127.0.0.1", {}, "far-away", str(tmp_path / "far")), 0
    )
    await registry.create_job("far.service", HELLO)
    await registry.txn([], [registry.put_op(registry.key("job", "far.service", "target"), M1)])
    remote = f"env PYTHONPATH={REPO} {sys.executable} -m clustertui.backend.daemon"
    result = await ctl(
        *_ssh_flags(sshd), "--tunnel", sshd.spec, "--remote-clusterd", remote,
        "journal", "--lines", "2", "far",
    )  # fmt: skip
    assert result.code == 0, result.err
    assert [line.split(": ", 1)[1] for line in result.out.splitlines()] == [
        "remote line 4",
        "remote line 5",
    ]
    assert all("far-away sh[7]" in line for line in result.out.splitlines())


async def test_ssh_hops_through_the_tunnel_host(
    ctl: CtlRunner, registry: Registry, sshd: SSHServer
) -> None:
    await registry.register_machine(Machine(M1, "127.0.0.1", {}, "far-away"), 0)
    result = await ctl(*_ssh_flags(sshd), "--tunnel", sshd.spec, "ssh", M1, "echo", "hopped")
    assert result.code == 0, result.err
    assert result.out == "hopped\n"


async def test_list_subnets_shows_leases_and_reservations(
    ctl: CtlRunner, registry: Registry, kv: EtcdClient, ns: bytes
) -> None:
    await seed(registry)
    overlay = ns.decode() + "network/"
    lease = await kv.lease(600)
    leased = {"PublicIP": "172.17.8.102", "BackendType": "vxlan", "BackendData": {"MachineID": M1}}
    await kv.put(
        f"{overlay}subnets/10.1.15.0-24".encode(), json.dumps(leased).encode(), lease=lease
    )
    reserved = {"PublicIP": "172.17.8.200", "BackendType": "vxlan"}
    await kv.put(f"{overlay}subnets/10.1.99.0-24".encode(), json.dumps(reserved).encode())
    result = await ctl("--overlay-prefix", overlay, "list-subnets")
    assert result.code == 0, result.err
    header, first, second = result.rows
    assert header == ["SUBNET", "MACHINE", "PUBLIC-IP", "BACKEND", "EXPIRES"]
    assert first[:4] == ["10.1.15.0/24", "85c0c595...", "172.17.8.102", "vxlan"]
    expires = dt.datetime.strptime(first[4], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    remaining = (expires - dt.datetime.now(dt.UTC)).total_seconds()
    assert 550 < remaining <= 601
    assert second == ["10.1.99.0/24", "-", "172.17.8.200", "vxlan", "reserved"]


async def test_restart_stops_then_starts_the_unit_in_a_new_process(
    ctl: CtlRunner, nodes: NodeFactory, registry: Registry
) -> None:
    node = nodes.start("n1", ttl="2s")
    node.wait_until((nodes.root / "n1" / "machine-id").exists)
    await registry.create_job("svc.service", HELLO)
    started = await ctl("start", "--block-attempts", "40", "svc")
    assert started.code == 0, started.err
    record = nodes.root / "n1" / "run" / "svc.service.json"
    before = json.loads(record.read_text())["pid"]
    restarted = await ctl("restart", "--block-attempts", "40", "svc")
    assert restarted.code == 0, restarted.err
    lines = restarted.out.splitlines()
    assert [line.split(" on ")[0] for line in lines] == [
        "Unit svc.service loaded",
        "Unit svc.service launched",
    ]
    assert json.loads(record.read_text())["pid"] != before


@pytest.mark.slow
def test_tls_flags_reach_a_store_that_demands_client_certificates(tmp_path: Path) -> None:
    ca = CA(tmp_path / "pki")
    server = ca.issue("etcd-server", server=True)
    member = start_etcd(tmp_path, tls=TLSFiles(server.cert, server.key, ca.path, True))
    try:
        operator = ca.issue("operator", server=False)
        tls = ["--cacert", str(ca.path), "--cert", str(operator.cert), "--key", str(operator.key)]
        listed = cli("--endpoints", member.url, *tls, "list-machines", env={})
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout == "MACHINE\tIP\tMETADATA\n"
        refused = cli("--endpoint", member.url, "--ca-file", str(ca.path), "list-machines", env={})
        assert refused.returncode == 1
        assert refused.stdout == ""
        # gRPC's own TLS diagnostics may come first; clusterctl's word is the last line.
        assert refused.stderr.splitlines()[-1].startswith("Error:")
    finally:
        member.stop()


async def test_journal_of_a_global_unit_reads_this_hosts_copy(
    ctl: CtlRunner, registry: Registry, tmp_path: Path
) -> None:
    here = os.uname().nodename
    writer = JournalWriter(tmp_path / "here", hostname=here, machine_id=M2)
    writer.line(b"monitoring here", unit="monitor.service", identifier="sh", pid=9)
    writer.close()
    await registry.register_machine(Machine(M1, "172.17.8.102", {}, "elsewhere"), 0)
    await registry.register_machine(Machine(M2, "127.0.0.1", {}, here, str(tmp_path / "here")), 0)
    await registry.create_job("monitor.service", GLOBAL)
    for machine in (M1, M2):
        state = UnitState("loaded", "active", "running", unit_hash(GLOBAL), machine)
        await registry.publish_state("monitor.service", state, 0)
    result = await ctl("journal", "monitor")
    assert result.code == 0, result.err
    assert result.out.rstrip().endswith("sh[9]: monitoring here")
