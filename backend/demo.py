"""Runs a local demo cluster: `clusterd demo` (a store with a sample key tree for now)."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir", help="where the demo keeps its state (a temporary dir by default)"
    )
    parser.add_argument(
        "--port", type=int, default=0, help="client port of the demo store (free by default)"
    )


def run(args: argparse.Namespace) -> int:
    raise SystemExit("clusterd demo: not built yet")
