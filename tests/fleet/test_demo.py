"""Tests for `clusterd demo`: a store, nodes and sample units that start and stop together."""

from __future__ import annotations

import re
import signal
import sys
from pathlib import Path

import pytest

from clustertui.backend.etcd import make_client
from clustertui.backend.fleet.registry import Registry
from clustertui.backend.fleet.runner import group_alive
from tests.fleet.conftest import eventually
from tests.harness.procs import REPO, Child, port_open


@pytest.mark.slow
async def test_the_demo_runs_sample_units_on_its_machines_and_stops_cleanly(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "demo"
    demo = Child(
        "clusterd demo",
        [
            sys.executable,
            "-m",
            "clustertui.backend.daemon",
            "demo",
            "--machines",
            "2",
            "--data-dir",
            str(data_dir),
        ],
        tmp_path / "demo.log",
        cwd=REPO,
    ).start()
    try:
        demo.wait_until(lambda: "ctrl+c stops it" in demo.output(), timeout=60)
        url = re.search(r"demo cluster at (\S+):", demo.output()).group(1)  # type: ignore[union-attr]
        client = make_client([url])
        registry = Registry(client)
        try:

            async def all_running() -> bool:
                states = await registry.unit_states()
                active = {
                    (u, m)
                    for u, by in states.items()
                    for m, s in by.items()
                    if s.active_state == "active"
                }
                units = {u for u, _ in active}
                monitors = {m for u, m in active if u == "monitor.service"}
                wanted = {
                    "hello.service",
                    "ssd-cache.service",
                    "web@8080.service",
                    "web@8081.service",
                    "monitor.service",
                }
                return wanted <= units and len(monitors) == 2

            await eventually(all_running, within=30, what="the sample units running")
            machines = await registry.machines()
            assert sorted(m.metadata["region"] for m in machines.values()) == ["us-east", "us-west"]
            unit_groups = [
                int(record.read_text().split('"pgid": ')[1].split(",")[0])
                for record in data_dir.glob("node*/run/*.json")
            ]
            assert unit_groups
        finally:
            await client.close()
        port = int(url.rsplit(":", 1)[1])
        demo.stop(signal.SIGTERM, timeout=40)
        assert demo.process is not None and demo.process.returncode == 0
        assert not port_open(port), "the store outlived the demo"
        assert not any(group_alive(group) for group in unit_groups), "units outlived the demo"
    finally:
        demo.kill()
