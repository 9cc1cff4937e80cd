"""Provides the clustertui console: the Textual app and its command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from textual.app import App, ComposeResult
from textual.widgets import Footer, Header, Static


class ClusterConsole(App[None]):
    """The console frame; the panes arrive with the console issues."""

    TITLE = "clustertui"
    BINDINGS = [("q", "quit", "Quit")]

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        yield Static("clustertui: the key, machine, unit, subnet and journal panes arrive here.")
        yield Footer()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clustertui", description="A terminal console for a cluster."
    )
    parser.add_argument("--endpoints", help="store URLs, comma-separated")
    parser.add_argument("--tunnel", help="[user@]host[:port] to reach the store through SSH")
    parser.add_argument(
        "--demo", action="store_true", help="start a local demo cluster and open it"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    build_parser().parse_args(argv)
    ClusterConsole().run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
