"""Writes stdin, or a command's output, into the journal: `clusterd cat`, as systemd-cat."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="the machine's data directory")
    parser.add_argument("-t", "--identifier", help="SYSLOG_IDENTIFIER of the entries")
    parser.add_argument("-u", "--unit", help="_SYSTEMD_UNIT of the entries")
    parser.add_argument("-p", "--priority", default="info", help="default priority")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="command whose output to record")


def run(args: argparse.Namespace) -> int:
    raise SystemExit("clusterd cat: the journal is not built yet")
