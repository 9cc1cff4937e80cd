"""Runs a local demo cluster: `clusterd demo` (a store, N nodes, network config, sample units)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import tempfile
from pathlib import Path

from backend.fleet.demo import SAMPLE_UNITS, seed_scheduler, start_nodes, start_store


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir", help="where the demo keeps its state (a temporary dir by default)"
    )
    parser.add_argument(
        "--port", type=int, default=0, help="client port of the demo store (free by default)"
    )
    parser.add_argument(
        "--machines", type=int, default=3, help="how many `clusterd node` processes to run"
    )


def run(args: argparse.Namespace) -> int:
    if args.machines < 1:
        print("clusterd demo: --machines must be at least 1")
        return 2
    data_dir = Path(args.data_dir or tempfile.mkdtemp(prefix="clusterd-demo-")).resolve()
    # SIGTERM ends the demo the way Ctrl-C does: through the finally below.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        demo = start_store(data_dir, args.port)
    except KeyboardInterrupt:
        return 130
    try:
        start_nodes(demo, args.machines)
        asyncio.run(seed_scheduler(demo.store_url, machines=args.machines))
        print(f"demo cluster: store at {demo.store_url}, {args.machines} machines")
        print(f"data:  {data_dir}")
        print(f"units: {', '.join(sorted(SAMPLE_UNITS))}")
        print(f"try:   clusterctl --endpoint {demo.store_url} list-units")
        print("Ctrl-C stops the demo.", flush=True)
        while True:
            signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        print("stopping the demo cluster...", flush=True)
        demo.stop()
    return 0
