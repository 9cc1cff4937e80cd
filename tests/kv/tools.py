"""Provides command-line helpers for the store tests: the real etcdctl and `clusterd kv`."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

from tests.harness.procs import REPO, find_tool

ETCDCTL = find_tool("etcdctl")


@dataclass
class Result:
    """One etcdctl run."""

    rc: int
    out: str
    err: str


def etcdctl(url: str, *args: str, stdin: str | None = None, timeout: float = 15) -> Result:
    env = {**os.environ, "ETCDCTL_API": "3"}
    done = subprocess.run(
        [ETCDCTL, f"--endpoints={url}", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    return Result(done.returncode, done.stdout, done.stderr)


def run_kv(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clustertui.backend.daemon", "kv", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
