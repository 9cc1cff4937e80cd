"""Leases this machine's overlay subnet: `clusterd overlay`, as flanneld."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--endpoints", default="http://127.0.0.1:2379", help="store URLs, comma-separated"
    )
    parser.add_argument("--public-ip", help="address other machines reach this one at")
    parser.add_argument("--subnet-file", default="/run/flannel/subnet.env")


def run(args: argparse.Namespace) -> int:
    raise SystemExit("clusterd overlay: the overlay is not built yet")
