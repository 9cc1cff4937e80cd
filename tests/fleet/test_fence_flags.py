"""`clusterd node --fence-margin`: a fraction of the TTL (or a percentage), 0 to turn it off."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from clustertui.backend.fleet.fence import parse_margin
from tests.harness.procs import REPO


def test_the_margin_is_a_fraction_or_a_percentage_of_the_ttl() -> None:
    assert parse_margin("0.3") == pytest.approx(0.3)
    assert parse_margin("25%") == pytest.approx(0.25)
    assert parse_margin("0") == 0
    for bad in ("1", "-0.1", "95%"):
        with pytest.raises(ValueError, match=r"between 0 and 0\.9"):
            parse_margin(bad)


@pytest.mark.parametrize("value", ["2", "half"])
def test_a_bad_margin_is_refused_before_the_node_starts(tmp_path: Path, value: str) -> None:
    result = subprocess.run(
        [
            *(
                sys.executable,
                "-m",
                "clustertui.backend.daemon",
                "node",
                "--data-dir",
                str(tmp_path / "n"),
            ),
            *("--fence-margin", value, "--endpoints", "http://127.0.0.1:9"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "clusterd node:" in result.stderr
