"""Provides the clustertui console: the Textual app and its command line."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
from collections.abc import Iterable, Sequence
from functools import partial
from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Static, TabbedContent, TabPane

from backend.etcd import EtcdError
from console.config import (
    ClusterSettings,
    ConfigFileError,
    ConsoleConfig,
    add_connection_flags,
    load_config,
    parse_keymap,
    resolve_cluster,
)
from console.screens.confirm import ConfirmScreen
from console.screens.edit_value import EditValueScreen
from console.screens.help import HelpRow, HelpScreen
from console.screens.history import HistoryScreen
from console.screens.keys import WRITE_ACTIONS, KeysPane
from console.screens.new_key import NewKeyScreen
from console.screens.ttl import TTLScreen
from console.session import Session
from console.tunnel import TunnelError
from widgets.cluster_header import ClusterHeader
from widgets.filter_bar import FilterBar
from widgets.key_tree import KeyTree

TABS = [
    ("keys", "Keys"),
    ("machines", "Machines"),
    ("units", "Units"),
    ("subnets", "Subnets"),
    ("journal", "Journal"),
]
POLL_SECONDS = 1.0
MAX_BACKOFF = 5.0


class ClusterConsole(App[None]):
    """The console frame: header, the five tabs, the footer of the focused pane's bindings."""

    TITLE = "clustertui"
    CSS_PATH = "console.tcss"
    BINDINGS = [
        Binding("q", "quit", "Quit", id="app.quit"),
        Binding("question_mark", "help", "Help", id="app.help"),
        Binding("colon", "command_palette", "Commands", show=False, id="app.commands"),
        *[
            Binding(str(number), f"show_tab('{tab}')", title, show=False, id=f"app.tab.{tab}")
            for number, (tab, title) in enumerate(TABS, start=1)
        ],
    ]

    def __init__(
        self,
        session: Session,
        *,
        cluster_name: str = "default",
        root: str = "",
        read_only: bool = False,
        theme: str | None = None,
        keymap: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.session = session
        self.cluster_name = cluster_name
        self.root = root
        self.read_only = read_only
        self.requested_theme = theme
        self.user_keymap = parse_keymap(keymap or {})
        self.attempt = 0
        """The current reconnection attempt; 0 while connected."""
        self.cluster_header = ClusterHeader(id="cluster-header")
        """The header, reachable whichever screen is on top."""
        self.keys_pane = KeysPane(session, root=root.encode(), read_only=read_only, id="keys-pane")
        """The Keys tab's pane."""

    def compose(self) -> ComposeResult:
        header = self.cluster_header
        header.cluster = self.cluster_name
        header.endpoint = self.session.endpoint_label
        header.via = self.session.via
        header.read_only = self.read_only
        yield header
        with TabbedContent(id="tabs"):
            with TabPane("1 Keys", id="keys"):
                yield self.keys_pane
            for number, (tab, title) in enumerate(TABS[1:], start=2):
                with TabPane(f"{number} {title}", id=tab):
                    yield Static(
                        Text(f"{title} arrives with the cluster panes.", style="dim italic"),
                        classes="placeholder",
                    )
        yield Footer()

    def on_mount(self) -> None:
        if self.requested_theme:
            if self.requested_theme in self.available_themes:
                self.theme = self.requested_theme
            else:
                known = ", ".join(sorted(self.available_themes))
                self.notify(
                    f"theme {self.requested_theme!r} is unknown; known themes: {known}",
                    severity="warning",
                    markup=False,
                )
        if self.user_keymap:
            self.set_keymap(self.user_keymap)
        self.session.watch_tunnel(self._tunnel_state)
        self.monitor_store()

    def on_unmount(self) -> None:
        self.session.watch_tunnel(None)

    def _tunnel_state(self, state: str, attempt: int) -> None:
        header = self.cluster_header
        header.via = self.session.via
        if state == "reconnecting":
            header.state = f"reconnecting (attempt {attempt})"
        elif state == "connected":
            header.state = "connected"

    @work(exclusive=True, group="store-status")
    async def monitor_store(self) -> None:
        """Poll the store's status for the header; back off while it is unreachable."""
        while True:
            try:
                status = await self.session.status()
            except EtcdError:
                self.attempt += 1
                tunnel = self.session.tunnel
                shown = (
                    tunnel.attempt if tunnel and tunnel.state == "reconnecting" else self.attempt
                )
                self.cluster_header.state = f"reconnecting (attempt {shown})"
                await asyncio.sleep(min(0.5 * 2**self.attempt, MAX_BACKOFF))
                continue
            self.attempt = 0
            header = self.cluster_header
            header.revision = max(header.revision, status.revision)
            header.member = status.member
            header.leader = status.leader
            header.state = "connected"
            await asyncio.sleep(POLL_SECONDS)

    def on_keys_pane_revision_seen(self, message: KeysPane.RevisionSeen) -> None:
        self.cluster_header.revision = max(self.cluster_header.revision, message.revision)

    def action_show_tab(self, tab: str) -> None:
        # Focus left inside a hidden pane would pull TabbedContent back to that pane.
        self.set_focus(None)
        self.screen_stack[0].query_one(TabbedContent).active = tab
        if tab == "keys":
            self.call_after_refresh(self.keys_pane.key_tree.focus)

    def help_rows(self) -> list[HelpRow]:
        """Every binding with the keys it has now (after the user's keymap)."""
        rows: list[HelpRow] = []
        sections = [
            ("Console", self.BINDINGS),
            ("Keys pane", KeysPane.BINDINGS),
            ("Key tree", KeyTree.BINDINGS),
            ("Filter bar", FilterBar.BINDINGS),
            ("Dialogs", [*ConfirmScreen.BINDINGS, *EditValueScreen.BINDINGS,
                         *NewKeyScreen.BINDINGS, *TTLScreen.BINDINGS,
                         *HistoryScreen.BINDINGS]),
        ]  # fmt: skip
        for section, bindings in sections:
            for binding in bindings:
                assert isinstance(binding, Binding)
                if section == "Keys pane" and self.read_only:
                    if binding.action in WRITE_ACTIONS:
                        continue
                keys = self.user_keymap.get(binding.id or "", binding.key)
                shown = ", ".join(self.get_key_display(Binding(key, "")) for key in keys.split(","))
                rows.append((section, shown, binding.description, binding.id or ""))
            if section == "Console":
                rows.append((section, "ctrl+p", "Command palette", "(textual)"))
        return rows

    def action_help(self) -> None:
        self.push_screen(HelpScreen(self.help_rows()))

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for number, (tab, title) in enumerate(TABS, start=1):
            yield SystemCommand(
                f"Show {title}",
                f"switch to the {title} tab ({number})",
                partial(self.action_show_tab, tab),
            )
        yield SystemCommand("Help", "list every binding (?)", self.action_help)
        pane = self.keys_pane
        for binding in KeysPane.BINDINGS:
            assert isinstance(binding, Binding)
            if self.read_only and binding.action in WRITE_ACTIONS:
                continue
            yield SystemCommand(
                f"Keys: {binding.description}",
                f"{binding.description} ({binding.key})",
                partial(self._run_pane_action, pane, binding.action),
            )

    def _run_pane_action(self, pane: KeysPane, action: str) -> None:
        self.action_show_tab("keys")
        self.run_worker(pane.run_action(action), group="palette")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clustertui",
        description="A terminal console for a cluster: keys, machines, units, subnets, journal.",
    )
    add_connection_flags(parser)
    env = os.environ
    parser.add_argument(
        "--prefix",
        default=env.get("CLUSTERTUI_PREFIX", ""),
        help="open the key tree at this directory",
    )
    parser.add_argument(
        "--config",
        default=env.get("CLUSTERTUI_CONFIG"),
        help="config file (default ~/.config/clustertui/config.yaml)",
    )
    parser.add_argument(
        "--demo",
        action="store_true",
        default=env.get("CLUSTERTUI_DEMO", "").lower() in ("1", "true", "yes"),
        help="start a local demo cluster and open it",
    )
    return parser


async def run_console(settings: ClusterSettings, config: ConsoleConfig, root: str = "") -> int:
    """Open the tunnel in the terminal, then hand the screen to the console."""
    session = Session(settings)
    try:
        await session.open_tunnel()
    except TunnelError as error:
        print(f"clustertui: {error}", file=sys.stderr)
        return 1
    app = ClusterConsole(
        session,
        cluster_name=settings.name,
        root=root,
        read_only=settings.read_only,
        theme=config.theme,
        keymap=config.keymap,
    )
    # A closed terminal or a kill ends the console the way q does, so whatever it started
    # (the demo cluster, the tunnel) is stopped on the way out.
    loop = asyncio.get_running_loop()
    for stop in (signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(stop, app.exit)
    try:
        await app.run_async()
    finally:
        for stop in (signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(stop)
        await session.close()
    return 0


async def run_demo(config: ConsoleConfig, read_only: bool) -> int:
    """Start the demo cluster in a temporary directory, open the console on it, stop it."""
    from backend import demo

    with tempfile.TemporaryDirectory(prefix="clustertui-demo-") as root:
        print("clustertui: starting the demo cluster…", file=sys.stderr)
        cluster = await demo.start_cluster(Path(root))
        try:
            settings = ClusterSettings(name="demo", endpoints=(cluster.url,), read_only=read_only)
            return await run_console(settings, config)
        finally:
            cluster.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(Path(args.config) if args.config else None)
        settings = resolve_cluster(args, config)
        if args.demo:
            return asyncio.run(run_demo(config, settings.read_only))
        return asyncio.run(run_console(settings, config, args.prefix))
    except ConfigFileError as error:
        print(f"clustertui: {error}", file=sys.stderr)
        return 2
    except (EtcdError, OSError, RuntimeError) as error:
        print(f"clustertui: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
