"""Provides the ``clusterd`` command line: one subcommand per node-side service."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Each subcommand lives in its own module with configure(parser) and run(args) -> int,
# imported only when chosen, so `clusterd journal` never pays for gRPC start-up.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "kv": ("backend.kv.cli", "run the bundled store that speaks etcd's v3 gRPC API"),
    "node": ("backend.fleet.cli", "run this machine's agent, engine candidate and overlay lease"),
    "overlay": ("backend.overlay.cli", "lease this machine's overlay subnet (flannel)"),
    "cat": ("backend.journal.cat", "write stdin or a command's output into the journal"),
    "journal": ("backend.journal.cli", "read the journal the way journalctl does"),
    "demo": ("backend.demo", "run a local demo cluster: store, nodes and sample units"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clusterd",
        description="The node side of clustertui: store, scheduler agent, overlay and journal.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, summary) in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        sub = commands.add_parser(name, help=summary, description=module.__doc__)
        module.configure(sub)
        sub.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._module.run(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
