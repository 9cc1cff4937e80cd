"""Our `clusterd journal` output against real journalctl's, on the same entries."""

# journalctl's fixture outputs were made from input.export (see the fixture README); the
# same entries are imported into our journal here and every format is compared.
#
# What cannot match, and is left out of the comparison on purpose:
# * ``__CURSOR``: journald's cursor names its own file's sequence ID and hashes; ours is
#   opaque too, and each only makes sense to the tool that made it.
# * ``__SEQNUM`` and ``__SEQNUM_ID``: journalctl 254+ writes them, the 252 that made the
#   fixtures does not; we do.
# * The order of JSON members: journalctl writes them in its hash table's order.

from __future__ import annotations

from pathlib import Path

import pytest

from clustertui.backend.journal.fmt import parse_json
from tests.journal.conftest import FIXTURES, UNCOMPARABLE, Run, clusterd, objects


@pytest.mark.parametrize(
    ("flags", "fixture"),
    [
        (["-o", "short"], "out.short"),
        (["-o", "short-iso"], "out.short-iso"),
        (["-o", "short-precise"], "out.short-precise"),
        (["-o", "cat"], "out.cat"),
        (["-o", "cat", "-n", "3"], "out.cat-n3"),
        (["-o", "cat", "-r", "-n", "2"], "out.cat-r-n2"),
        (["-o", "cat", "-p", "err"], "out.cat-p-err"),
        (["-o", "cat", "-g", "error"], "out.cat-g-error"),
        (["-o", "cat", "-g", "ERROR"], "out.cat-g-ERROR"),
    ],
)
def test_text_output_matches_journalctl_byte_for_byte(
    journal: Run, flags: list[str], fixture: str
) -> None:
    result = journal(*flags, "--no-pager")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (FIXTURES / fixture).read_bytes()


@pytest.mark.parametrize(
    ("flags", "fixture"),
    [
        (["-o", "json"], "out.json"),
        (["-o", "json", "--all"], "out.json-all"),
        (["-o", "json", "-u", "redis.service"], "out.json-unit-redis"),
        (["-o", "json", "-u", "redis"], "out.json-unit-redis"),
    ],
)
def test_json_output_matches_journalctl_value_for_value(
    journal: Run, flags: list[str], fixture: str
) -> None:
    result = journal(*flags)
    assert result.returncode == 0, result.stderr
    expected = (FIXTURES / fixture).read_bytes()
    assert objects(result.stdout) == objects(expected)
    # Every line is one compact object, as journalctl writes it.
    assert result.stdout.count(b"\n") == expected.count(b"\n")
    assert b'": "' not in result.stdout and b'", "' not in result.stdout


def test_the_installed_command_prints_the_same_bytes(fixture_journal: Path) -> None:
    result = clusterd("journal", "--data-dir", str(fixture_journal), "-o", "short-precise")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (FIXTURES / "out.short-precise").read_bytes()


def test_json_seq_frames_each_entry_like_journalctl(journal: Run) -> None:
    result = journal("-o", "json-seq")
    expected = (FIXTURES / "out.json-seq").read_bytes()
    assert all(line.startswith(b"\x1e{") for line in result.stdout.splitlines())
    assert objects(result.stdout) == objects(expected)


def test_one_parser_reads_journalctl_json_and_ours_alike(journal: Run) -> None:
    ours = [parse_json(line) for line in journal("-o", "json").stdout.splitlines()]
    theirs = [parse_json(line) for line in (FIXTURES / "out.json").read_bytes().splitlines()]
    strip = [{k: v for k, v in e.items() if k not in UNCOMPARABLE} for e in ours]
    assert strip == [{k: v for k, v in e.items() if k not in UNCOMPARABLE} for e in theirs]
    messages = [entry["MESSAGE"] for entry in theirs]
    assert messages[6] == b"binary \xff\xfe bytes"
    assert messages[7] == b"bell\x07 and escape \x1b[31mred\x1b[0m"
    assert messages[8] == b"line one\nline two"
    assert messages[10] == "unicode: Привет, мир — ok".encode()
    assert messages[11] is None
    # json-seq's record separator is read past too.
    seq = (FIXTURES / "out.json-seq").read_bytes().splitlines()
    assert parse_json(seq[0])["MESSAGE"] == b"Hello from hello.service"
