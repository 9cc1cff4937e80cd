"""Provides the ``clusterd`` command line: one subcommand per node-side service."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

# Each subcommand lives in its own module with configure(parser) and run(args) -> int,
# imported only when chosen, so `clusterd journal` never pays for gRPC start-up.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "kv": ("clustertui.backend.kv.cli", "run the bundled store that speaks etcd's v3 gRPC API"),
    "node": (
        "clustertui.backend.fleet.cli",
        "run this machine's agent, engine candidate and overlay lease",
    ),
    "overlay": ("clustertui.backend.overlay.cli", "lease this machine's overlay subnet (flannel)"),
    "cat": ("clustertui.backend.journal.cat", "write stdin or a command's output into the journal"),
    "journal": ("clustertui.backend.journal.cli", "read the journal the way journalctl does"),
    "demo": ("clustertui.backend.demo", "run a local demo cluster: store, nodes and sample units"),
}


class _Formatter(argparse.HelpFormatter):
    """argparse's help formatter, told the terminal's width: left alone, it imports shutil
    (and with it bz2 and lzma) for every parser built, which `clusterd journal` would pay."""

    def __init__(self, prog: str) -> None:
        try:
            width = int(os.environ["COLUMNS"])
        except (KeyError, ValueError):
            width = 0
        if width <= 0:
            try:
                width = os.get_terminal_size().columns
            except OSError:
                width = 80
        super().__init__(prog, width=width - 2)


def build_parser(chosen: str | None = None) -> argparse.ArgumentParser:
    """The command line; only ``chosen``'s module is imported (every one when None)."""
    parser = argparse.ArgumentParser(
        prog="clusterd",
        formatter_class=_Formatter,
        description="The node side of clustertui: store, scheduler agent, overlay and journal.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, summary) in SUBCOMMANDS.items():
        if chosen is not None and name != chosen:
            # Listed in --help; never run in this process, so never imported.
            commands.add_parser(name, help=summary, formatter_class=_Formatter)
            continue
        module = importlib.import_module(module_name)
        sub = commands.add_parser(
            name, help=summary, description=module.__doc__, formatter_class=_Formatter
        )
        module.configure(sub)
        sub.set_defaults(_module=module)
    return parser


def _chosen(argv: Sequence[str]) -> str:
    """The subcommand ``argv`` names ("" when none: then no module is needed at all)."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in SUBCOMMANDS else ""
    return ""


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # `clusterd journal` (called by the console and clusterctl for every status) must not
    # pay for gRPC, protobuf and asyncio: import the chosen subcommand's module alone.
    args = build_parser(_chosen(argv)).parse_args(argv)
    try:
        return int(args._module.run(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
