"""Tests for the unit file parser: systemd syntax, [Service] and [X-Fleet] options, bad input."""

from __future__ import annotations

import signal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clustertui.backend.fleet.unitfile import (
    UnitFileError,
    UnitName,
    expand_specifiers,
    normalize_name,
    parse,
    parse_timespan,
    split_words,
    validate_name,
)

HELLO = """\
[Unit]
Description=Hello \\
  world
# a comment
; another comment

[Service]
ExecStartPre=-/bin/false
ExecStart=/bin/sh -c "echo 'hi there'; sleep 1"
Environment="GREETING=hello world" COUNT=3
Environment=EXTRA=1
Restart=on-failure
RestartSec=500ms
TimeoutStopSec=1min 30s
KillSignal=SIGINT
KillMode=process

[X-Fleet]
MachineMetadata=region=us-east disk=ssd
MachineMetadata=region=us-west
Conflicts=hello*.service other.service
"""


def test_sections_keep_repeated_keys_in_order() -> None:
    unit = parse(HELLO, "hello.service")
    assert list(unit.sections) == ["Unit", "Service", "X-Fleet"]
    assert unit.values("Service", "Environment") == ['"GREETING=hello world" COUNT=3', "EXTRA=1"]


def test_backslash_continues_a_value_on_the_next_line() -> None:
    assert parse(HELLO).description() == "Hello  world"


def test_comment_lines_inside_a_continuation_are_skipped() -> None:
    unit = parse("[Unit]\nDescription=a \\\n# skipped\n b\n")
    assert unit.description() == "a  b"


def test_service_options_are_typed() -> None:
    service = parse(HELLO).service("hello.service")
    assert service.exec_start[0].argv == ("/bin/sh", "-c", "echo 'hi there'; sleep 1")
    assert service.exec_start_pre[0].ignore_failure is True
    assert service.exec_start_pre[0].argv == ("/bin/false",)
    assert dict(service.environment) == {"GREETING": "hello world", "COUNT": "3", "EXTRA": "1"}
    assert service.restart == "on-failure"
    assert service.restart_sec == pytest.approx(0.5)
    assert service.timeout_stop_sec == pytest.approx(90)
    assert service.kill_signal == signal.SIGINT
    assert service.kill_mode == "process"


def test_metadata_ands_one_line_and_ors_repeated_keys() -> None:
    fleet = parse(HELLO).fleet("hello.service")
    assert fleet.metadata == {"region": ("us-east", "us-west"), "disk": ("ssd",)}
    assert fleet.conflicts == ("hello*.service", "other.service")


def test_specifiers_expand_for_a_template_instance() -> None:
    raw = "[Service]\nExecStart=/bin/echo %n %N %p %i 100%%\n[X-Fleet]\nConflicts=%p@*.service\n"
    unit = parse(raw, "web@8080.service")
    assert unit.service("web@8080.service").exec_start[0].argv == (
        "/bin/echo",
        "web@8080.service",
        "web@8080",
        "web",
        "8080",
        "100%",
    )
    assert unit.fleet("web@8080.service").conflicts == ("web@*.service",)


def test_template_names_map_instances_to_their_template() -> None:
    instance = UnitName.parse("web@1.service")
    assert instance.is_instance and instance.template == "web@.service"
    assert UnitName.parse("web@.service").is_template
    assert not UnitName.parse("web.service").is_instance
    assert expand_specifiers("%i", "plain.service") == ""


def test_bare_names_get_dot_service() -> None:
    assert normalize_name("hello") == "hello.service"
    assert normalize_name("hello.timer") == "hello.timer"


@pytest.mark.parametrize("name", ["", "hello", "bad name.service", "@x.service", "a/b.service"])
def test_invalid_unit_names_are_refused(name: str) -> None:
    with pytest.raises(UnitFileError):
        validate_name(name)


def test_x_fleet_options_for_placement() -> None:
    raw = (
        "[Service]\nExecStart=/bin/true\n[X-Fleet]\nMachineID=85c0c595\n"
        "MachineOf=db\nGlobal=false\nReplaces=old.service\n"
    )
    fleet = parse(raw).fleet("x.service")
    assert fleet.machine_id == "85c0c595"
    assert fleet.machine_of == ("db.service",)
    assert fleet.replaces == ("old.service",)
    assert fleet.is_global is False
    assert parse("[X-Fleet]\nGlobal=yes\n").fleet("g.service").is_global


def test_oneshot_with_remain_after_exit() -> None:
    service = parse(
        "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/true\nExecStart=/bin/true\n"
    ).service("o.service")
    assert service.type == "oneshot"
    assert service.remain_after_exit
    assert len(service.exec_start) == 2


def test_an_empty_exec_assignment_resets_the_list() -> None:
    service = parse(
        "[Service]\nExecStartPre=/bin/a\nExecStartPre=\nExecStartPre=/bin/b\nExecStart=/bin/c\n"
    ).service("r.service")
    assert [c.argv for c in service.exec_start_pre] == [("/bin/b",)]


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("[Unit\nDescription=x\n", 1, "invalid section header"),
        ("Description=x\n", 1, "assignment outside of a section"),
        ("[Unit]\nDescription=x\nnonsense\n", 3, "missing '='"),
        ("[Service]\nExecStart=/bin/true\nType=forking\n", 3, "Type=forking needs PIDFile="),
        ("[Service]\nExecStart=/bin/true\nType=dbus\n", 3, "Type="),
        ("[Service]\n\nExecStart=/bin/sh -c 'unterminated\n", 3, "unterminated"),
        ("[Service]\nExecStart=/bin/true\nRestartSec=soon\n", 3, "RestartSec="),
        ("[Service]\nExecStart=/bin/true\nKillSignal=SIGNOPE\n", 3, "unknown signal"),
        ("[Service]\nExecStart=/bin/true\nRestart=sometimes\n", 3, "Restart="),
        ("[Service]\nExecStart=/bin/true\n[X-Fleet]\nGlobal=perhaps\n", 4, "Global="),
        ("[Service]\nExecStart=/bin/true\n[X-Fleet]\nMachineID=abc\n", 4, "at least 8"),
        ("[Service]\nExecStart=/bin/true\n[X-Fleet]\nMachineMetadata=region\n", 4, "key=value"),
        ("[Service]\nExecStart=/bin/a\nExecStart=/bin/b\n", 3, "one ExecStart"),
        ("[Unit]\nDescription=x\n[Service]\nUser=nobody\n", 3, "neither ExecStart"),
        ("[Service]\nExecStart=/bin/true\nEnvironment=1BAD=x\n", 3, "NAME=value"),
    ],
)
def test_malformed_units_name_the_line_and_the_reason(text: str, line: int, reason: str) -> None:
    with pytest.raises(UnitFileError) as caught:
        parse(text, "bad.service")
    assert caught.value.line == line
    assert reason in caught.value.reason
    assert str(caught.value).startswith(f"bad.service: line {line}: ")


def test_words_split_like_systemd() -> None:
    assert split_words('a \'b c\' "d \\"e" f\\ g') == ["a", "b c", 'd "e', "f g"]
    with pytest.raises(ValueError):
        split_words("'open")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("5", 5), ("100ms", 0.1), ("1min 30s", 90), ("2h", 7200), ("1.5s", 1.5)],
)
def test_time_spans(text: str, seconds: float) -> None:
    assert parse_timespan(text) == pytest.approx(seconds)


def test_infinity_time_span() -> None:
    assert parse_timespan("infinity") == float("inf")


_PIECES = st.sampled_from(
    [
        "[Unit]", "[Service]", "[X-Fleet]", "[Install]", "[", "]", "=", "\\", "\n", "#", ";",
        "'", '"', "%", "%i", "%n", "ExecStart=", "Type=", "oneshot", "Restart=", "RestartSec=",
        "KillSignal=", "MachineID=", "MachineMetadata=", "Global=", "Conflicts=", "MachineOf=",
        "Environment=", "A=b", " ", "\t", "-", "/bin/true", "\x00", "é", "5s", "yes",
    ]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_PIECES, st.text(max_size=8)), max_size=40).map("".join))
def test_the_parser_never_crashes_on_any_input(text: str) -> None:
    try:
        unit = parse(text, "fuzz@1.service")
    except UnitFileError as error:
        assert error.line >= 0
        return
    # Whatever parses must also yield its typed views without raising.
    unit.service("fuzz@1.service")
    unit.fleet("fuzz@1.service")
