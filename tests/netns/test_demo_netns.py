"""`clusterd demo --netns`: demo nodes in network namespaces, a unit talking across the overlay."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.harness.procs import REPO
from tests.netns.conftest import _require_root
from tests.netns.topology import ip

pytestmark = pytest.mark.slow


def test_demo_netns_shows_a_unit_talking_across_hosts_and_cleans_up(tmp_path: Path) -> None:
    _require_root()
    out_file = tmp_path / "demo.out"
    with out_file.open("wb") as out:
        demo = subprocess.Popen(
            [sys.executable, "-m", "clustertui.backend.daemon", "demo", "--netns",
             "--machines", "2", "--data-dir", str(tmp_path / "demo")],
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
    tag = f"ctuidemo{demo.pid}"
    try:
        deadline = time.monotonic() + 60
        while not (found := re.search(r"demo cluster at (http://[\d.:]+\d)", out_file.read_text())):
            assert demo.poll() is None, out_file.read_text()
            assert time.monotonic() < deadline, out_file.read_text()
            time.sleep(0.2)
        url = found.group(1)
        namespaces = ip("netns", "list").stdout
        assert f"{tag}n1c" in namespaces and f"{tag}n2c" in namespaces
        # overlay-ping.service, a global unit, connects from each node to the other's container.
        answered = ""
        deadline = time.monotonic() + 60
        while "container on node" not in answered:
            assert time.monotonic() < deadline, answered
            time.sleep(1)
            answered = subprocess.run(
                [sys.executable, "-m", "clustertui.console.ctl", "--endpoint", url, "journal",
                 "--lines", "10", "overlay-ping.service"],
                cwd=REPO, capture_output=True, text=True,
            ).stdout  # fmt: skip
        assert re.search(r"10\.1\.\d+\.2: container on node\d answers 10\.1\.\d+\.0", answered)
    finally:
        demo.send_signal(signal.SIGINT)
        started = time.monotonic()
        ended = "it stopped"
        try:
            demo.wait(timeout=60)
        except subprocess.TimeoutExpired:
            ended = "it was killed after 60 s"
            demo.kill()
            demo.wait()
        ended += f" {time.monotonic() - started:.1f} s after ctrl+c"
        leftover = [n for n in ip("netns", "list").stdout.split() if n.startswith(tag)]
        for name in leftover:
            ip("netns", "del", name, check=False)
    said = out_file.read_text()[-3000:]
    assert leftover == [], f"the demo left namespaces behind ({ended}); it said:\n{said}"
