"""Provides the one seam between unit output and the machine's journal."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Protocol


class LineSink(Protocol):
    """Where the runner writes each line a unit prints (the journal's writer interface)."""

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


class JsonLinesSink:
    """A journal stand-in for machines without the journal: one JSON object per line."""

    def __init__(self, path: Path, *, hostname: str, machine_id: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.hostname = hostname
        self.machine_id = machine_id
        self._file = path.open("a", encoding="utf-8")

    def line(
        self,
        message: bytes,
        *,
        unit: str,
        identifier: str,
        pid: int,
        priority: int = 6,
        stream: str = "stdout",
    ) -> None:
        record = {
            "__REALTIME_TIMESTAMP": str(time.time_ns() // 1000),
            "_HOSTNAME": self.hostname,
            "_MACHINE_ID": self.machine_id,
            "_SYSTEMD_UNIT": unit,
            "SYSLOG_IDENTIFIER": identifier,
            "_PID": str(pid),
            "PRIORITY": str(priority),
            "_TRANSPORT": stream,
            "MESSAGE": message.decode("utf-8", errors="replace"),
        }
        self._file.write(json.dumps(record) + "\n")

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def open_journal(data_dir: Path, *, hostname: str, machine_id: str) -> LineSink:
    """The machine's journal writer; a JSON-lines file until the journal is built in."""
    try:
        from backend.journal.writer import JournalWriter  # type: ignore[import-not-found]
    except ImportError:
        return JsonLinesSink(
            data_dir / "unit-output.jsonl", hostname=hostname, machine_id=machine_id
        )
    return JournalWriter(data_dir, hostname=hostname, machine_id=machine_id)  # type: ignore[no-any-return]
