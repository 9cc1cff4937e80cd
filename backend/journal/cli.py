"""Reads the journal: `clusterd journal`, with journalctl's flags and output formats."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="the machine's data directory")
    parser.add_argument("-u", "--unit", action="append", default=[], help="show entries of UNIT")
    parser.add_argument(
        "-f", "--follow", action="store_true", help="print new entries as they come"
    )
    parser.add_argument("-n", "--lines", default=None, help="how many recent entries (or 'all')")
    parser.add_argument(
        "-o",
        "--output",
        default="short",
        help="short, short-iso, short-precise, json, json-seq, cat",
    )


def run(args: argparse.Namespace) -> int:
    raise SystemExit("clusterd journal: the journal is not built yet")
