"""Chaos on a real 3-member etcd and on the bundled store: faults one at a time and overlapping.

The seed is printed (and taken from $CHAOS_SEED when set) so a failing run can be replayed.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest

from tests.chaos.world import GLOBAL, SETTLE, UNITS, World

pytestmark = pytest.mark.slow
FAULTS = int(os.environ.get("CHAOS_FAULTS", "8"))


@pytest.mark.parametrize("store_kind", ["etcd", "bundled"])
def test_no_unit_runs_twice_and_every_unit_comes_back(store_kind: str, tmp_path: Path) -> None:
    seed = int(os.environ.get("CHAOS_SEED") or random.randrange(1 << 31))
    print(f"\nchaos seed {seed} (CHAOS_SEED={seed} to replay) on {store_kind}", flush=True)
    world = World(tmp_path, store_kind, seed)
    began = time.monotonic()
    try:
        world.start()
        missing = world.check_all_running(30)
        assert not missing, f"seed {seed}: never started: {missing}"
        world.run_faults(FAULTS)
        world.check_acked()
    finally:
        world.stop()
    report = world.report
    print(report.summary(), f"in {time.monotonic() - began:.0f}s", flush=True)
    assert len(report.faults) == FAULTS
    assert report.checks > 100 * len(UNITS)
    assert report.acked > 0
    assert not report.violations, f"seed {seed}: {report.violations}"
    # Global units never stop for a fault elsewhere than their own node's process.
    assert set(report.longest_down) <= set(UNITS)
    assert all(report.longest_down.get(u, 0.0) < SETTLE + 10 for u in GLOBAL)
