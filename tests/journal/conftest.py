"""Provides journal fixtures: a journal holding journalctl's fixture entries, and a CLI runner."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from clustertui.backend.daemon import main
from clustertui.backend.journal.fmt import parse_export
from clustertui.backend.journal.writer import JournalWriter
from tests.harness.procs import REPO

# Real journalctl output (systemd 252) and the export it was made from; see its README.
FIXTURES = REPO / "tests" / "journal" / "fixtures"

Run = Callable[..., subprocess.CompletedProcess[bytes]]

# Fields no two journals share: the cursor names its journal; journalctl 252 (which made
# the fixtures) writes no __SEQNUM/__SEQNUM_ID, 254+ and we do.
UNCOMPARABLE = {"__CURSOR", "__SEQNUM", "__SEQNUM_ID"}


def objects(output: bytes) -> list[dict[str, object]]:
    """JSON (or JSON-seq) output as objects, without the fields that cannot compare."""
    return [
        {k: v for k, v in json.loads(line.lstrip(b"\x1e")).items() if k not in UNCOMPARABLE}
        for line in output.splitlines()
        if line.strip()
    ]


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
        [sys.executable, "-m", "clustertui.backend.daemon", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        timeout=60,
        **kwargs,
    )


@pytest.fixture
def in_process(
    capsysbinary: pytest.CaptureFixture[bytes], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Run]:
    """``in_process(*argv)``: run `clusterd ARGV` in this process (TZ=UTC), output captured.

    The same code as the command line, without a Python start-up per call: these tests
    run dozens of commands.
    """
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()

    def run(*argv: str) -> subprocess.CompletedProcess[bytes]:
        try:
            code = main(list(argv))
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else 1
        out, err = capsysbinary.readouterr()
        return subprocess.CompletedProcess(list(argv), code, out, err)

    yield run
    monkeypatch.undo()
    time.tzset()


@pytest.fixture
def journal(fixture_journal: Path, in_process: Run) -> Run:
    """``journal(*flags)``: `clusterd journal --data-dir <fixture journal> FLAGS`."""

    def run(*flags: str) -> subprocess.CompletedProcess[bytes]:
        return in_process("journal", "--data-dir", str(fixture_journal), *flags)

    return run


class Follower:
    """A running `clusterd journal -f`, its stdout read line by line with deadlines."""

    def __init__(self, data_dir: Path, *flags: str) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "clustertui.backend.daemon",
                "journal",
                "--data-dir",
                str(data_dir),
                "-f",
                *flags,
            ],
            cwd=REPO,
            env={**os.environ, "TZ": "UTC", "PYTHONPATH": str(REPO)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert self.process.stdout is not None
        self.stdout = self.process.stdout
        self._buffer = b""
        self._errors = b""

    def read_lines(self, count: int, timeout: float = 10.0) -> list[bytes]:
        """The next ``count`` lines, or fail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while self._buffer.count(b"\n") < count:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.stdout], [], [], max(0.0, left))
            if not ready:
                raise AssertionError(f"no {count} lines in {timeout}s, got {self._buffer!r}")
            chunk = os.read(self.stdout.fileno(), 65536)
            if not chunk:
                raise AssertionError(f"follower ended early: {self.process.stderr.read()!r}")
            self._buffer += chunk
        lines = self._buffer.split(b"\n")
        taken, rest = lines[:count], lines[count:]
        self._buffer = b"\n".join(rest)
        return taken

    def read_stderr_until(self, text: bytes, timeout: float = 10.0) -> bytes:
        """stderr up to and including the first line holding ``text``, or fail after ``timeout``."""
        assert self.process.stderr is not None
        deadline = time.monotonic() + timeout
        while text not in self._errors or b"\n" not in self._errors[self._errors.index(text) :]:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.process.stderr], [], [], max(0.0, left))
            if not ready:
                raise AssertionError(f"no {text!r} on stderr in {timeout}s, got {self._errors!r}")
            chunk = os.read(self.process.stderr.fileno(), 65536)
            if not chunk:
                raise AssertionError(f"follower ended, stderr {self._errors!r}")
            self._errors += chunk
        end = self._errors.index(b"\n", self._errors.index(text)) + 1
        taken, self._errors = self._errors[:end], self._errors[end:]
        return taken

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.stdout.close()
        self.process.stderr.close()


@pytest.fixture
def follow() -> Iterator[Callable[..., Follower]]:
    """``follow(data_dir, *flags)`` starts a follower; all are killed (by PID) afterwards."""
    started: list[Follower] = []

    def start(data_dir: Path, *flags: str) -> Follower:
        follower = Follower(data_dir, *flags)
        started.append(follower)
        return follower

    yield start
    for follower in started:
        follower.stop()


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[JournalWriter]:
    """A writer on a fresh journal in ``tmp_path``."""
    with JournalWriter(tmp_path, hostname="node-1", machine_id="ab" * 16, boot_id="cd" * 16) as w:
        yield w
