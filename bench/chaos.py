"""Soaks the cluster under chaos: faults for N minutes, invariants checked throughout.

The world of tests/chaos (3 nodes behind cuttable proxies, 10 heartbeat units, a real
3-member etcd or the bundled store); faults one at a time and overlapping, chosen by a seed.

    python -m bench.chaos --minutes N [--store etcd|bundled] [--seed S]

Prints the faults survived, the invariant checks made, and the longest unavailability per
unit; exits 1 when an invariant broke.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import re
import tempfile
import time
from pathlib import Path

from tests.chaos.world import World


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--store", choices=("etcd", "bundled"), default="etcd")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--keep", metavar="DIR", help="run in DIR and keep it (node logs, heartbeats) afterwards"
    )
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    print(f"chaos soak: {args.minutes:g} min on {args.store}, seed {seed}", flush=True)
    with contextlib.ExitStack() as stack:
        if args.keep:
            tmp = args.keep
            Path(tmp).mkdir(parents=True, exist_ok=True)
        else:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="chaos-"))
        world = World(Path(tmp), args.store, seed)
        began = time.monotonic()
        try:
            world.start()
            missing = world.check_all_running(30)
            if missing:
                print(f"never started: {missing}")
                return 1
            deadline = began + args.minutes * 60
            while time.monotonic() < deadline:
                world.run_faults(1 if world.rng.random() < 0.6 else 2, overlap_every=1)
            world.check_acked()
        finally:
            world.stop()
        report = world.report
        print(report.summary(), f"in {time.monotonic() - began:.0f}s")
        for violation in report.violations[:20]:
            print("  violation:", violation)
        faults: dict[str, int] = {}
        for fault in report.faults:
            kind = re.sub(r"\b(node|m)\d+\b", "X", fault)
            faults[kind] = faults.get(kind, 0) + 1
        print("faults:", ", ".join(f"{k} x{n}" for k, n in sorted(faults.items())))
        return 1 if report.violations else 0


if __name__ == "__main__":
    raise SystemExit(main())
