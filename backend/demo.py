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
    # Block the stop signals first, so a Ctrl-C during start-up still stops what started.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    demo = start_store(data_dir, args.port)
    try:
        start_nodes(demo, args.machines)
        asyncio.run(seed_scheduler(demo.store_url))
        print(f"demo cluster: store at {demo.store_url}, {args.machines} machines, data in {data_dir}")
        print(f"units: {', '.join(sorted(SAMPLE_UNITS))}")
        print(f"try:   clusterctl --endpoint {demo.store_url} list-units")
        print("Ctrl-C stops the demo.", flush=True)
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        print("stopping the demo cluster...", flush=True)
        demo.stop()
    return 0
