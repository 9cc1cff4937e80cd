"""Injection through `clusterctl`: hostile records in a real store, the real command as a process.

A machine record whose PublicIP is ``-oProxyCommand=touch <file>`` must never make ssh run
that command (on `ssh`, `journal` or `status`), and a unit state holding escape sequences
must never reach the terminal: no ESC byte in any output, the escapes written out as text.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clustertui.backend.etcd import EtcdClient
from clustertui.backend.fleet.registry import Machine, Registry, UnitState
from clustertui.backend.fleet.unitfile import unit_hash
from tests.harness.procs import REPO
from tests.harness.stores import RunningStore

BAD = "badc0ffee0ddf00d0123456789abcdef"
GOOD = "600d600d600d600d600d600d600d600d"
TITLE = "\x1b]0;TITLE\x07"
CLEAR = "\x1b[2J\x9b31m\u202e"
UNIT = "[Unit]\nDescription=evil \x1b[5m\n[Service]\nExecStart=/bin/sleep 60\n"


@pytest.fixture
def registry(kv: EtcdClient, ns: bytes) -> Registry:
    return Registry(kv, ns.decode() + "fleet/")


@pytest.fixture
def pwned(tmp_path: Path) -> Path:
    return tmp_path / "pwned"


async def seed(registry: Registry, pwned: Path) -> None:
    """An option-like PublicIP on one machine, a unit on it whose state holds escapes."""
    option = f"-oProxyCommand=touch {pwned}"
    bad = Machine(BAD, option, {"role": "evil"}, "not-this-host-1")
    await registry.register_machine(bad, 0)
    await registry.register_machine(Machine(GOOD, "127.0.0.9", {}, "not-this-host-2"), 0)
    await registry.create_job("evil.service", UNIT)
    await registry.set_target_state("evil.service", "launched")
    await registry.txn([], [registry.put_op(registry.key("job", "evil.service", "target"), BAD)])
    state = UnitState("loaded", TITLE, CLEAR, unit_hash(UNIT), BAD)
    await registry.publish_state("evil.service", state, 0)
    # A unit on the good machine whose state is fine, and a target state full of escapes.
    await registry.create_job("odd.service", UNIT)
    key = registry.key("job", "odd.service", "target-state")
    await registry.txn([], [registry.put_op(key, TITLE)])


def clusterctl(registry: Registry, url: str, *argv: str) -> subprocess.CompletedProcess[bytes]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CLUSTERCTL_", "FLEETCTL_"))}
    base = ["--endpoint", url, "--key-prefix", registry.prefix, "--request-timeout", "5"]
    return subprocess.run(
        [sys.executable, "-m", "clustertui.console.ctl", *base, "--ssh-timeout", "2", *argv],
        cwd=REPO,
        env=clean,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=30,
    )


async def run(registry: Registry, url: str, *argv: str) -> subprocess.CompletedProcess[bytes]:
    return await asyncio.to_thread(clusterctl, registry, url, *argv)


def no_escape_reaches_the_terminal(result: subprocess.CompletedProcess[bytes]) -> None:
    for stream in (result.stdout, result.stderr):
        assert b"\x1b" not in stream and b"\x07" not in stream, stream
        assert "\x9b".encode() not in stream and "\u202e".encode() not in stream, stream


@pytest.mark.parametrize(
    "argv",
    [
        ("ssh", BAD[:8], "true"),
        ("ssh", BAD, "true"),
        ("ssh", "evil.service", "true"),
        ("journal", "evil.service"),
        ("journal", "--lines", "3", "evil"),
        ("status", "evil.service"),
    ],
    ids=lambda a: "-".join(a)[:30],
)
async def test_an_option_like_public_ip_never_reaches_ssh(
    store: RunningStore, registry: Registry, pwned: Path, argv: tuple[str, ...]
) -> None:
    await seed(registry, pwned)
    result = await run(registry, store.url, *argv)
    assert not pwned.exists(), "ssh ran the record's ProxyCommand"
    assert result.returncode != 0
    assert f"Machine {BAD} is invalid: PublicIP is not an IP address".encode() in result.stderr
    no_escape_reaches_the_terminal(result)


async def test_the_status_of_a_unit_on_an_invalid_machine_shows_its_state_escaped(
    store: RunningStore, registry: Registry, pwned: Path
) -> None:
    await seed(registry, pwned)
    result = await run(registry, store.url, "status", "evil.service")
    no_escape_reaches_the_terminal(result)
    out = result.stdout.decode()
    assert "   Active: \\x1b]0;TITLE\\a (\\x1b[2J\\x9b31m\\u202e)" in out
    assert f"  Machine: {BAD}/invalid\n  Invalid: PublicIP is not an IP address\n" in out
    assert not pwned.exists()


async def test_listings_write_escapes_out_and_name_invalid_machines(
    store: RunningStore, registry: Registry, pwned: Path
) -> None:
    await seed(registry, pwned)
    units = await run(registry, store.url, "list-units", "--fields", "unit,machine,active,sub")
    no_escape_reaches_the_terminal(units)
    assert units.returncode == 0
    lines = units.stdout.decode().splitlines()
    assert lines[1].split("\t")[0] == "evil.service"
    assert [c for c in lines[1].split("\t") if c][1:] == [
        "badc0ffe.../invalid",
        "\\x1b]0;TITLE\\a",
        "\\x1b[2J\\x9b31m\\u202e",
    ]
    machines = await run(registry, store.url, "list-machines", "-l")
    no_escape_reaches_the_terminal(machines)
    rows = [[c for c in line.split("\t") if c] for line in machines.stdout.decode().splitlines()]
    assert [BAD, "invalid: PublicIP is not an IP address", "role=evil"] in rows
    assert [GOOD, "127.0.0.9", "-"] in rows
    files = await run(registry, store.url, "list-unit-files", "--fields", "unit,dstate")
    no_escape_reaches_the_terminal(files)
    assert ["odd.service", "\\x1b]0;TITLE\\a"] in [
        [c for c in line.split("\t") if c] for line in files.stdout.decode().splitlines()
    ]
    cat = await run(registry, store.url, "cat", "evil.service")
    no_escape_reaches_the_terminal(cat)
    assert cat.stdout.decode() == UNIT.replace("\x1b", "\\x1b")
    assert not pwned.exists()


async def test_a_subnet_lease_with_an_option_like_public_ip_is_shown_invalid(
    store: RunningStore, registry: Registry, kv: EtcdClient, ns: bytes, pwned: Path
) -> None:
    await seed(registry, pwned)
    overlay = ns.decode() + "network/"
    value = {"PublicIP": f"-oProxyCommand=touch {pwned}", "BackendType": "vx\x1b]0;T\x07lan"}
    await kv.put((overlay + "subnets/10.1.15.0-24").encode(), json.dumps(value).encode())
    result = await run(registry, store.url, "--overlay-prefix", overlay, "list-subnets")
    no_escape_reaches_the_terminal(result)
    row = [c for c in result.stdout.decode().splitlines()[1].split("\t") if c]
    assert row[:3] == ["10.1.15.0/24", "-", "invalid: PublicIP is not an IP address"]


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (("journal", "--", "-oProxyCommand=x.service"), "Unit name refused: invalid unit name"),
        (("status", "--", "-u.service"), "Unit name refused: invalid unit name"),
        (("journal", "hello\n"), "Unit name refused: invalid unit name 'hello\\n.service'"),
        (("start", "--no-block", "hello\n"), "invalid unit name 'hello\\n.service'"),
        (("submit", "--", "-oX.service"), "invalid unit name '-oX.service'"),
    ],
    ids=["journal-dash", "status-dash", "journal-newline", "start-newline", "submit-dash"],
)
async def test_unit_names_that_would_be_options_or_span_lines_are_refused(
    store: RunningStore, registry: Registry, pwned: Path, argv: tuple[str, ...], said: str
) -> None:
    await seed(registry, pwned)
    result = await run(registry, store.url, *argv)
    assert result.returncode == 1
    assert said.encode() in result.stderr, result.stderr
    assert not pwned.exists()


async def test_a_stored_job_whose_name_is_not_a_unit_name_is_never_put_on_a_command_line(
    store: RunningStore, registry: Registry, pwned: Path
) -> None:
    await seed(registry, pwned)
    name = "-oProxyCommand=touch x.service"
    await registry.create_job(name, UNIT)
    snapshot = await registry.snapshot(("job", "unit"))
    assert snapshot.jobs[name].problem.startswith("invalid unit name")
    assert snapshot.jobs["evil.service"].problem == ""
    machines = await registry.machines()
    assert machines[BAD].problem == "PublicIP is not an IP address"
    assert machines[GOOD].problem == ""
