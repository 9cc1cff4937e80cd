"""Runs the bundled store: `clusterd kv`, with etcd's flag names and defaults."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir", default="default.etcd", help="directory for the WAL and snapshots"
    )
    parser.add_argument("--listen-client-urls", default="http://127.0.0.1:2379")
    parser.add_argument("--name", default="default")


def run(args: argparse.Namespace) -> int:
    raise SystemExit("clusterd kv: the bundled store is not built yet")
