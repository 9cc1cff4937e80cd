"""Tests for `clusterd node`'s command line: the machine ID and refused flags."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from clustertui.backend.fleet.cli import machine_id, parse_metadata
from tests.harness.procs import REPO


def test_the_machine_id_is_generated_once_and_kept(tmp_path: Path) -> None:
    first = machine_id(tmp_path, None)
    assert re.fullmatch(r"[0-9a-f]{32}", first)
    assert (tmp_path / "machine-id").read_text() == first + "\n"
    assert machine_id(tmp_path, None) == first
    assert machine_id(tmp_path, "feedface12345678") == "feedface12345678"


def test_metadata_is_comma_separated_pairs() -> None:
    assert parse_metadata("region=us-east, disk=ssd") == {"region": "us-east", "disk": "ssd"}
    with pytest.raises(ValueError, match="not key=value"):
        parse_metadata("region")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--metadata", "region"], "metadata 'region' is not key=value"),
        (["--agent-ttl", "soon"], "invalid time span 'soon'"),
        (["--machine-id", "short"], "--machine-id must be 8 to 64 letters and digits"),
    ],
)
def test_bad_flags_are_refused_with_a_reason(
    tmp_path: Path, flags: list[str], message: str
) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "clustertui.backend.daemon",
            "node",
            "--data-dir",
            str(tmp_path),
            *flags,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert message in result.stderr
