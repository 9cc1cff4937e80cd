"""Both front ends read fleet's rules from one model: the console imports nothing from the
CLI, and each rule is defined once, in backend/fleet/model.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.harness.procs import REPO

CLI_IMPORT = re.compile(r"^\s*(?:from\s+console\.ctl\b|import\s+console\.ctl\b)", re.MULTILINE)


def _sources(*layers: str) -> list[Path]:
    return sorted(path for layer in layers for path in (REPO / layer).rglob("*.py"))


def test_the_console_imports_nothing_from_clusterctl() -> None:
    modules = [p for p in _sources("console") if "ctl" not in p.relative_to(REPO).parts[1:2]]
    assert len(modules) > 10, "too few console modules to prove anything"
    importing = [str(p.relative_to(REPO)) for p in modules if CLI_IMPORT.search(p.read_text())]
    assert importing == []


@pytest.mark.parametrize(
    "rule",
    [
        "is_global",
        "unit_state",
        "current_state",
        "short_id",
        "machine_legend",
        "format_metadata",
        "fence_note",
        "status_block",
        "subnet_owner",
        "ssh_target",
        "check_machine",
    ],
)
def test_each_fleet_rule_is_defined_once_in_the_model(rule: str) -> None:
    definition = re.compile(rf"^\s*def {rule}\(", re.MULTILINE)
    places = [
        str(path.relative_to(REPO))
        for path in _sources("backend/fleet", "backend/overlay", "console", "widgets")
        if definition.search(path.read_text())
    ]
    assert places == ["backend/fleet/model.py"]
