"""Constants written once: the version in pyproject.toml (every command reports the installed
distribution's, read by backend/version.py with importlib.metadata), and etcd's event types in
backend/etcd.py."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.harness.procs import REPO

ASSIGNED = re.compile(r"^\s*\w*VERSION\w*\s*[:=][^=\n]*[\"']\d+\.\d+\.\d+", re.MULTILINE)
"""A module-level constant set to a version literal, e.g. ``VERSION = "0.1.0"``."""
ETCD_LEVELS = {"API_VERSION", "SERVER_VERSION", "CLUSTER_VERSION"}
"""etcd's versions, which the store reports as etcd does: not ours."""


EVENT_TYPE = re.compile(
    r"^\s*(?:\w+\s*,\s*)*(?:PUT|DELETE)\b(?:\s*,\s*\w+)*\s*(?::[^=\n]*)?=(?!=)"
    r"|\.type\s*[!=]=\s*\d",
    re.MULTILINE,
)
"""``PUT = ...``, ``PUT, DELETE = 0, 1``, or an event type compared with a bare number."""


def _modules() -> list[Path]:
    return sorted(
        path for layer in ("backend", "console", "widgets") for path in (REPO / layer).rglob("*.py")
    )


def test_etcds_event_types_are_defined_in_one_module() -> None:
    found = [
        f"{path.relative_to(REPO)}: {match.group().strip()}"
        for path in _modules()
        if path != REPO / "backend" / "etcd.py"
        for match in EVENT_TYPE.finditer(path.read_text())
    ]
    assert not found, "an event type defined outside backend/etcd.py:\n" + "\n".join(found)


def test_no_module_writes_our_version_again() -> None:
    found = []
    for path in _modules():
        for match in ASSIGNED.finditer(path.read_text()):
            name = match.group().split("=")[0].split(":")[0].strip()
            if name not in ETCD_LEVELS:
                found.append(f"{path.relative_to(REPO)}: {match.group().strip()}")
    assert not found, "the version is written outside pyproject.toml:\n" + "\n".join(found)


def test_clusterctl_reports_the_distributions_version(tmp_path: Path) -> None:
    # A distribution named clustertui found first on the path, at a version no source holds.
    info = tmp_path / "meta" / "clustertui-9.8.7.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: clustertui\nVersion: 9.8.7\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(info.parent), str(REPO)]))
    code = "import sys; from console.ctl import main; sys.argv[0] = 'clusterctl'; main()"
    for args in (["version"], ["--version"]):
        result = subprocess.run(
            [sys.executable, "-c", code, *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert (result.returncode, result.stdout) == (0, "clusterctl version 9.8.7\n"), (
            result.stderr
        )
