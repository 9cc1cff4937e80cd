"""Unit tests of what a record read from the store must be, and of the one literal cleaner."""

from __future__ import annotations

import os

import pytest

from clustertui.backend.fleet.engine import schedule
from clustertui.backend.fleet.model import UnsafeValue, ssh_target
from clustertui.backend.fleet.registry import ClusterState, Job, Machine
from clustertui.backend.fleet.unitfile import parse
from clustertui.backend.fleet.validate import (
    machine_problem,
    subnet_record_problem,
    unit_name_problem,
)
from clustertui.backend.text import is_plain, literal
from clustertui.console.access import journal_command
from clustertui.console.journal_stream import MachineAccess

GOOD_ID = "85c0c5950123456789abcdef01234567"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("\x1b]0;TITLE\x07", "\\x1b]0;TITLE\\a"),
        ("\x1b[2J\x1b[31mred", "\\x1b[2J\\x1b[31mred"),
        ("a\nb\tc\rd", "a\\nb\\tc\\rd"),
        ("\x00\x08\x0b\x0c\x7f", "\\x00\\b\\v\\f\\x7f"),
        ("c1 \x9b31m \x85", "c1 \\x9b31m \\x85"),
        ("bidi \u202eevil\u202c \u2066x\u2069", "bidi \\u202eevil\\u202c \\u2066x\\u2069"),
    ],
)
def test_the_cleaner_writes_control_characters_out_as_systemctl_does(text: str, shown: str) -> None:
    assert literal(text) == shown
    assert not any(ch in literal(text) for ch in "\x1b\x07\n\r\x9b\u202e")
    assert not is_plain(text)


def test_plain_text_passes_the_cleaner_unchanged_and_lines_can_stay() -> None:
    for text in ("hello.service", "85c0c595.../172.17.8.102", "région=us-west", "web@8080", "a\\b"):
        assert literal(text) == text and is_plain(text)
    assert literal("[Unit]\n\tDescription=x\x1b\n", lines=True) == "[Unit]\n\tDescription=x\\x1b\n"
    assert literal(b"\xff\x1b") == "\\xff\\x1b"


@pytest.mark.parametrize(
    "name",
    [
        "hello.service\n",
        "hello\n.service",
        "-oProxyCommand=x.service",
        "-u.service",
        "a b.service",
        "x\x1b.service",
        "x" * 250 + ".service",
        "noext",
        "hello.serv",
        "@x.service",
    ],
)
def test_unit_names_follow_systemds_rules_matched_whole(name: str) -> None:
    assert unit_name_problem(name)


@pytest.mark.parametrize(
    "name", ["hello.service", "web@8080.service", "web@.service", "a:b_c.d-e.timer", "x\\x2d.mount"]
)
def test_valid_unit_names_pass(name: str) -> None:
    assert unit_name_problem(name) == ""


@pytest.mark.parametrize(
    ("machine", "key", "reason"),
    [
        (Machine(GOOD_ID, "-oProxyCommand=touch pwned"), GOOD_ID, "PublicIP is not an IP address"),
        (Machine(GOOD_ID, "10.0.0.1 -x"), GOOD_ID, "PublicIP is not an IP address"),
        (Machine(GOOD_ID, "fe80::1%-oX"), GOOD_ID, "PublicIP is not an IP address"),
        (Machine("short", "10.0.0.1"), "short", "ID is not 8 to 64 letters and digits"),
        (Machine(GOOD_ID + "\n", "10.0.0.1"), GOOD_ID + "\n", "ID is not 8 to 64"),
        (Machine(GOOD_ID, "10.0.0.1"), "f" * 32, "ID does not match its key"),
        (Machine(GOOD_ID, "", hostname="-oProxyCommand=x"), GOOD_ID, "Hostname is not"),
        (Machine(GOOD_ID, "", {"k": "v\x1b[2J"}), GOOD_ID, "Metadata has a value"),
        (Machine(GOOD_ID, "", {"-k": "v"}), GOOD_ID, "Metadata has a key"),
        (Machine(GOOD_ID, "10.0.0.1", data_dir="relative"), GOOD_ID, "DataDir is not"),
        (Machine(GOOD_ID, "10.0.0.1", data_dir="/a\n/b"), GOOD_ID, "DataDir is not"),
    ],
)
def test_invalid_machine_records_say_why(machine: Machine, key: str, reason: str) -> None:
    assert machine_problem(machine, key).startswith(reason)


def test_valid_machine_records_pass() -> None:
    for machine in (
        Machine(GOOD_ID, "172.17.8.102", {"region": "us-west", "disk": "ssd"}, "core-2"),
        Machine("m1aaaaaaaa"),
        Machine(GOOD_ID, "::1", {}, "", "/var/lib/clusterd/node-1"),
    ):
        assert machine_problem(machine, machine.id) == ""


def test_subnet_records_need_an_ip_and_a_plain_backend() -> None:
    assert subnet_record_problem({"PublicIP": "10.0.0.1", "BackendType": "vxlan"}) == ""
    assert subnet_record_problem({"PublicIP": "-oX"}) == "PublicIP is not an IP address"
    assert subnet_record_problem({"PublicIP": "10.0.0.1", "BackendType": "vx\x1blan"})
    assert subnet_record_problem({"PublicIP": "10.0.0.1", "BackendData": {"MachineID": "-x"}})
    assert subnet_record_problem(["10.0.0.1"])


def test_argv_from_store_data_is_validated_and_ends_options() -> None:
    good = Machine(GOOD_ID, "127.0.0.1", data_dir="/var/lib/clusterd")
    argv = journal_command(good, ["hello.service"], lines="10", follow=True, after_cursor="s=1")
    assert "--unit=hello.service" in argv and "--data-dir=/var/lib/clusterd" in argv
    assert "--after-cursor=s=1" in argv and "-u" not in argv
    assert ssh_target(good) == "127.0.0.1"
    with pytest.raises(UnsafeValue, match="Unit name refused"):
        journal_command(good, ["-x.service"], lines="10", follow=False)
    bad = Machine(GOOD_ID, "-oProxyCommand=touch pwned")
    with pytest.raises(UnsafeValue, match="PublicIP is not an IP address"):
        ssh_target(bad)
    with pytest.raises(UnsafeValue):
        journal_command(bad, ["hello.service"], lines="10", follow=False)
    with pytest.raises(UnsafeValue):
        journal_command(good, [], lines="10", follow=True, after_cursor="x;$(touch y)")


def test_the_scheduler_never_places_a_unit_on_an_invalid_machine() -> None:
    raw = "[Service]\nExecStart=/bin/true\n"
    bad = Machine("a" * 32, "-oProxyCommand=touch pwned")
    bad.problem = machine_problem(bad, bad.id)
    good = Machine("b" * 32, "10.0.0.2")
    jobs = {
        f"u{n}.service": Job(f"u{n}.service", "h", "launched", unit=parse(raw)) for n in range(4)
    }
    # One unit sits on the invalid machine already: it moves.
    jobs["u0.service"].target = bad.id
    alone = schedule(ClusterState(jobs=jobs, machines={bad.id: bad}))
    assert all(d.target == "" for d in alone.values())
    both = schedule(ClusterState(jobs=jobs, machines={bad.id: bad, good.id: good}))
    assert {d.target for d in both.values()} == {good.id}


def test_a_shell_is_refused_on_an_invalid_machine_even_when_it_is_this_host() -> None:
    here = os.uname().nodename
    good = Machine(GOOD_ID, "127.0.0.1", hostname=here, data_dir="/var/lib/clusterd")
    assert MachineAccess().shell_argv(good) == [os.environ.get("SHELL") or "/bin/sh"]
    for bad in (
        Machine(GOOD_ID, "127.0.0.1", hostname=here, data_dir="-rf"),
        Machine(GOOD_ID, "-oProxyCommand=x", hostname=here),
    ):
        with pytest.raises(UnsafeValue):
            MachineAccess().shell_argv(bad)
    argv = MachineAccess(port=2222).shell_argv(Machine(GOOD_ID, "10.0.0.7"))
    assert argv[-3:] == ["-t", "--", "10.0.0.7"]
