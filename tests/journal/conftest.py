"""Provides journal fixtures: a journal holding journalctl's fixture entries, and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from backend.journal.fmt import parse_export
from backend.journal.writer import JournalWriter
from tests.harness.procs import REPO

FIXTURES = Path("/work/shared/fixtures/journalctl")
if not FIXTURES.exists():
    FIXTURES = REPO / "tests" / "journal" / "fixtures"

Run = Callable[..., subprocess.CompletedProcess[bytes]]


def import_export(data_dir: Path, export: bytes) -> None:
    """Write journald export-format entries into our journal, keeping their timestamps."""
    with JournalWriter(data_dir, hostname="unused", machine_id="0" * 32) as writer:
        for fields in parse_export(export):
            stamps = {name: int(value) for name, value in fields if name.endswith("_TIMESTAMP")}
            writer.append(
                fields,
                realtime=stamps["__REALTIME_TIMESTAMP"],
                monotonic=stamps["__MONOTONIC_TIMESTAMP"],
            )


@pytest.fixture
def fixture_journal(tmp_path: Path) -> Path:
    """A data dir whose journal holds the entries journalctl's fixture outputs were made from."""
    import_export(tmp_path, (FIXTURES / "input.export").read_bytes())
    return tmp_path


def clusterd(*args: str, tz: str = "UTC", **kwargs: object) -> subprocess.CompletedProcess[bytes]:
    """Run ``clusterd ARGS`` as a real child process, output captured."""
    env = {**os.environ, "TZ": tz, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "backend.daemon", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        timeout=60,
        **kwargs,
    )


@pytest.fixture
def journal(fixture_journal: Path) -> Run:
    """``journal(*flags)``: run `clusterd journal --data-dir <fixture journal> FLAGS`."""

    def run(*flags: str, **kwargs: object) -> subprocess.CompletedProcess[bytes]:
        return clusterd("journal", "--data-dir", str(fixture_journal), *flags, **kwargs)

    return run
