"""Provides `clusterctl`: fleetctl's commands and output columns over the console's client code."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clusterctl", description="fleetctl-compatible cluster control."
    )
    parser.add_argument("--endpoint", help="store URLs, comma-separated")
    parser.add_argument("--tunnel", help="[user@]host[:port] to reach the store through SSH")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    sub.add_parser("list-machines", help="list the machines in the cluster")
    sub.add_parser("list-units", help="list the units and their states")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    build_parser().parse_args(argv)
    print("clusterctl: not built yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
