"""Runs a cluster node: `clusterd node` (agent, engine candidate, overlay lease)."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--endpoints", default="http://127.0.0.1:2379", help="store URLs, comma-separated"
    )
    parser.add_argument(
        "--data-dir", required=False, help="directory for machine-id and the journal"
    )
    parser.add_argument("--machine-id", help="32 hex characters; generated once by default")
    parser.add_argument("--metadata", default="", help="k=v,k=v for MachineMetadata constraints")
    parser.add_argument("--public-ip", help="address other machines reach this one at")


def run(args: argparse.Namespace) -> int:
    raise SystemExit("clusterd node: the scheduler is not built yet")
