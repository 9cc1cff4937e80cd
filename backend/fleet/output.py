"""Provides the one seam between unit output and the machine's journal."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from clustertui.backend.journal.writer import JournalWriter


class LineSink(Protocol):
    """Where the runner writes each line a unit prints (the journal writer's interface)."""

    def line(
        self,
        message: bytes,
        *,
        unit: str,
        identifier: str,
        pid: int,
        priority: int = 6,
        stream: str = "stdout",
    ) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


def open_journal(data_dir: Path, *, hostname: str, machine_id: str) -> LineSink:
    """The machine's journal writer, in ``data_dir / "journal"``."""
    return JournalWriter(data_dir, hostname=hostname, machine_id=machine_id)
