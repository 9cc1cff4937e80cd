"""Provides the clustertui console: the Textual app and its command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import ClassVar

from textual import on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding, BindingType
from textual.css.query import NoMatches
from textual.notifications import SeverityLevel
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Footer, TabbedContent, TabPane

from clustertui.backend.etcd import EtcdError, diagnose, error_words
from clustertui.backend.fleet.model import short_id
from clustertui.backend.text import literal as text_literal
from clustertui.console.access import MachineAccess
from clustertui.console.cluster import ClusterFeed, ClusterModel
from clustertui.console.config import (
    ClusterSettings,
    ConfigFileError,
    ConsoleConfig,
    add_connection_flags,
    load_config,
    parse_keymap,
    resolve_cluster,
)
from clustertui.console.journal_stream import readers_ended
from clustertui.console.screens.confirm import ConfirmScreen
from clustertui.console.screens.edit_value import EditValueScreen
from clustertui.console.screens.help import HelpRow, HelpScreen
from clustertui.console.screens.history import HistoryScreen
from clustertui.console.screens.journal import JournalPane, Target
from clustertui.console.screens.keys import WRITE_ACTIONS, KeysPane
from clustertui.console.screens.machines import MachinesPane
from clustertui.console.screens.new_key import NewKeyScreen
from clustertui.console.screens.path_prompt import PathPromptScreen
from clustertui.console.screens.subnets import SubnetsPane
from clustertui.console.screens.table_pane import TablePane
from clustertui.console.screens.text_view import TextScreen
from clustertui.console.screens.ttl import TTLScreen
from clustertui.console.screens.units import UnitsPane
from clustertui.console.session import STATUS_TIMEOUT, Session
from clustertui.console.tunnel import TunnelError, TunnelState
from clustertui.widgets.cluster_header import ClusterHeader
from clustertui.widgets.filter_bar import FilterBar
from clustertui.widgets.journal_view import DEFAULT_LIMIT, JournalView
from clustertui.widgets.key_tree import KeyTree
from clustertui.widgets.line_table import LineTable
from clustertui.widgets.literal import plural

TABS = [
    ("keys", "Keys"),
    ("machines", "Machines"),
    ("units", "Units"),
    ("subnets", "Subnets"),
    ("journal", "Journal"),
]
POLL_SECONDS = 1.0
MAX_BACKOFF = 5.0
CLUSTER_FLUSH_SECONDS = 0.1
"""How often queued watch batches reach the cluster panes: one repaint per interval."""
TICK_SECONDS = 1.0
"""How often leases are read again and countdowns move."""


class ClusterFooter(Footer):
    """The footer with `? Help` and `q Quit` first, so a narrow terminal keeps them;
    compact below 100 columns."""

    # Compact gives every key a right margin, the docked `^p` key too: that left the last
    # column uncovered, showing a stray letter of the bindings that scroll beneath it.
    DEFAULT_CSS = """
    ClusterFooter.-compact FooterKey.-command-palette {
        margin-right: 0;
    }
    """

    def compose(self) -> ComposeResult:
        keys = list(super().compose())
        first = [key for key in keys if getattr(key, "action", "") in ("help", "quit")]
        yield from first
        yield from (key for key in keys if key not in first)

    def on_resize(self) -> None:
        self.compact = self.size.width < 100


class ClusterConsole(App[None]):
    """The console frame: header, the five tabs, the footer of the focused pane's bindings."""

    TITLE = "clustertui"
    CSS_PATH = "console.tcss"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "Quit", id="app.quit"),
        Binding("question_mark", "help", "Help", id="app.help"),
        Binding("colon", "command_palette", "Commands", show=False, id="app.commands"),
        # Textual adds its own ctrl+p only when no binding opens the palette; `:` does, so
        # ctrl+p is bound here too (as a priority, like Textual's: it works in every pane).
        Binding(
            "ctrl+p", "command_palette", "Commands", show=False, priority=True, id="app.palette"
        ),
        # Textual's ctrl+c only says "press ctrl+q"; here it quits, as in a shell.
        Binding("ctrl+c", "quit", "Quit", show=False, id="app.interrupt"),
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
        journal_limit: int = DEFAULT_LIMIT,
        remote_clusterd: str = "clusterd",
        clock: Callable[[], float] = time.time,
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
        self.model = ClusterModel(clock=clock)
        """Fleet's and flannel's keys as the watches deliver them; the cluster panes show it."""
        self.feed: ClusterFeed | None = None
        self._was_reconnecting = False
        self.unreachable_words = ""
        """Why the store did not answer, as last notified; empty while it answers."""
        settings = session.settings
        self.access = MachineAccess(
            tunnel=session.tunnel,
            username=settings.ssh_username,
            identity=settings.identity,
            known_hosts=settings.known_hosts_file,
            strict=settings.strict_host_key_checking,
            remote_clusterd=remote_clusterd,
        )
        """How shells and journal readers reach machines."""
        self.machines_pane = MachinesPane(
            self.model, self.access, read_only=read_only, id="machines-pane"
        )
        self.units_pane = UnitsPane(
            self.model, None, self.access, read_only=read_only, id="units-pane"
        )
        self.subnets_pane = SubnetsPane(self.model, read_only=read_only, id="subnets-pane")
        self.journal_pane = JournalPane(self.access, limit=journal_limit, id="journal-pane")

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
            panes = [self.machines_pane, self.units_pane, self.subnets_pane, self.journal_pane]
            for number, ((tab, title), pane) in enumerate(
                zip(TABS[1:], panes, strict=True), start=2
            ):
                with TabPane(f"{number} {title}", id=tab):
                    yield pane
        yield ClusterFooter()

    def notify(
        self,
        message: str,
        *,
        title: str = "",
        severity: SeverityLevel = "information",
        timeout: float | None = None,
        markup: bool = True,
    ) -> None:
        """Every notification of every pane and dialog, made literal first: what the store
        holds (a unit name, a state, an error quoting a key) shows its escapes as text."""
        super().notify(
            text_literal(message, lines=True),
            title=text_literal(title),
            severity=severity,
            timeout=timeout,
            markup=markup,
        )

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
        # What is alive once the console is up (modules, widgets, styles) lives as long as
        # it does: out of the collector's sight, full collections stay short while a
        # journal streams in (they cost tens of milliseconds of input latency otherwise).
        gc.freeze()
        self.feed = ClusterFeed(self.session.client, self.model)
        self.units_pane.registry = self.feed.registry
        self.follow_cluster()
        self.set_interval(CLUSTER_FLUSH_SECONDS, self._flush_cluster)
        self.lease_timer = self.set_interval(TICK_SECONDS, self.read_leases)
        """Reads leases and moves countdowns; screenshots stop it to hold the picture still."""
        for pane in self.table_panes:
            pane.update_from_model()

    @property
    def table_panes(self) -> list[TablePane]:
        return [self.machines_pane, self.units_pane, self.subnets_pane]

    @work(group="cluster-watch")
    async def follow_cluster(self) -> None:
        """List and watch fleet's and flannel's keys for the cluster panes."""
        assert self.feed is not None
        await self.feed.run()

    def _flush_cluster(self) -> None:
        if self.feed is None or not self.feed.drain():
            return
        for pane in self.table_panes:
            pane.update_from_model()
        self.units_pane.check_convergence()
        self.cluster_header.revision = max(self.cluster_header.revision, self.model.revision)
        journal = self.journal_pane
        if journal.whole_cluster or (not journal.title and self._active_tab() == "journal"):
            followed = sorted(f.machine.id for f in journal.followers)
            machines = sorted(i for i, m in self.model.fleet.machines.items() if not m.problem)
            if followed != machines:
                self.follow_whole_cluster()

    def _active_tab(self) -> str:
        return self.screen_stack[0].query_one(TabbedContent).active

    @work(exclusive=True, group="cluster-leases")
    async def read_leases(self) -> None:
        """Read presence and subnet leases, then move the countdowns and convergence checks."""
        if self.feed is None or not self.model.loaded.is_set():
            return
        if self.model.state != "reconnecting":
            await self.feed.read_leases()
        # The console may have started closing while the leases were read.
        with contextlib.suppress(NoMatches):
            self.machines_pane.update_from_model()
            self.subnets_pane.update_from_model()
            if self.model.state == "reconnecting" or self._was_reconnecting:
                self.units_pane.update_from_model()
            self._was_reconnecting = self.model.state == "reconnecting"
            self.units_pane.check_convergence()

    @on(UnitsPane.JournalRequested)
    def _journal_of_units(self, event: UnitsPane.JournalRequested) -> None:
        fleet = self.model.fleet
        by_machine: dict[str, list[str]] = {}
        for name in event.units:
            job = fleet.jobs.get(name)
            if job is None:
                continue
            places = set(fleet.states.get(name, {}))
            if job.target:
                places.add(job.target)
            for machine_id in sorted(places):
                by_machine.setdefault(machine_id, []).append(name)
        invalid = [m for m in by_machine if m in fleet.machines and fleet.machines[m].problem]
        for machine_id in invalid:
            problem = fleet.machines[machine_id].problem
            self.notify(
                f"not reading the journal of machine {short_id(machine_id)}: invalid: {problem}",
                severity="error",
                markup=False,
            )
        targets = [
            Target(fleet.machines[m], units, short_id(m))
            for m, units in by_machine.items()
            if m in fleet.machines and m not in invalid
        ]
        if not targets:
            self.notify("none of these units is on a machine yet", severity="warning")
            return
        what = event.units[0] if len(event.units) == 1 else f"{len(event.units)} units"
        where = short_id(targets[0].machine.id) if len(targets) == 1 else f"{len(targets)} machines"
        self.journal_pane.follow(targets, f"{what} on {where}")
        self.action_show_tab("journal")

    def follow_whole_cluster(self) -> None:
        """The journal pane on every machine, merged by time: what it shows when nothing
        was chosen (j on a unit or a machine narrows it)."""
        machines = [m for _, m in sorted(self.model.fleet.machines.items()) if not m.problem]
        if not machines:
            return
        targets = [Target(machine, [], short_id(machine.id)) for machine in machines]
        title = f"the whole cluster: {plural(len(machines), 'machine')}"
        self.journal_pane.follow(targets, title, whole_cluster=True)

    @on(MachinesPane.JournalRequested)
    def _journal_of_machine(self, event: MachinesPane.JournalRequested) -> None:
        machine = self.model.fleet.machines.get(event.machine_id)
        if machine is None:
            return
        label = short_id(machine.id)
        self.journal_pane.follow([Target(machine, [], label)], f"machine {label}")
        self.action_show_tab("journal")

    @on(MachinesPane.UnitsRequested)
    def _units_of_machine(self, event: MachinesPane.UnitsRequested) -> None:
        self.units_pane.show_machine(event.machine_id)
        self.action_show_tab("units")

    def on_unmount(self) -> None:
        self.session.watch_tunnel(None)
        gc.unfreeze()

    def _tunnel_state(self, state: TunnelState, attempt: int) -> None:
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
            except EtcdError as error:
                self.attempt += 1
                await self._say_why_unreachable(error)
                tunnel = self.session.tunnel
                shown = (
                    tunnel.attempt if tunnel and tunnel.state == "reconnecting" else self.attempt
                )
                self.cluster_header.state = f"reconnecting (attempt {shown})"
                await asyncio.sleep(min(0.5 * 2**self.attempt, MAX_BACKOFF))
                continue
            self.attempt = 0
            if self.unreachable_words:
                self.notify(f"the store answers again at {self.session.endpoint_label}")
            self.unreachable_words = ""
            header = self.cluster_header
            header.revision = max(header.revision, status.revision)
            header.member = status.member
            header.leader = status.leader
            header.state = "connected"
            await asyncio.sleep(POLL_SECONDS)

    async def _say_why_unreachable(self, error: EtcdError) -> None:
        """Tell why the store does not answer (once per distinct reason) in the words
        clusterctl uses."""
        typed = await diagnose(self.session.client, error)
        words = error_words(
            typed,
            list(self.session.settings.endpoints),
            timeout=STATUS_TIMEOUT,
            waited_for="the store's status",
        )
        if self.session.tunnel is not None:
            words = f"{words} (through the tunnel via {self.session.via})"
        if words != self.unreachable_words:
            self.unreachable_words = words
            self.notify(words, title="store unreachable", severity="error", markup=False)

    def on_keys_pane_revision_seen(self, message: KeysPane.RevisionSeen) -> None:
        self.cluster_header.revision = max(self.cluster_header.revision, message.revision)

    def action_show_tab(self, tab: str) -> None:
        # Focus left inside a hidden pane would pull TabbedContent back to that pane.
        self.set_focus(None)
        self.screen_stack[0].query_one(TabbedContent).active = tab
        if tab == "keys":
            self.call_after_refresh(self.keys_pane.key_tree.focus)
        elif tab == "journal":
            if not self.journal_pane.title:
                self.follow_whole_cluster()
            self.call_after_refresh(self.journal_pane.view.focus)
        else:
            pane = {"machines": self.machines_pane, "units": self.units_pane,
                    "subnets": self.subnets_pane}[tab]  # fmt: skip
            self.call_after_refresh(pane.query_one(LineTable).focus)

    def help_rows(self) -> list[HelpRow]:
        """Every binding with the keys it has now (after the user's keymap)."""
        rows: list[HelpRow] = []
        for section, bindings, hidden in self._sections():
            for binding in bindings:
                assert isinstance(binding, Binding)
                if binding.action in hidden:
                    continue
                keys = self.user_keymap.get(binding.id or "", binding.key)
                shown = ", ".join(self.get_key_display(Binding(key, "")) for key in keys.split(","))
                rows.append((section, shown, binding.description, binding.id or ""))
        return rows

    def _sections(self) -> list[tuple[str, list[BindingType], set[str]]]:
        """Each pane's bindings, with the write actions read-only mode takes away."""

        def hidden(actions: set[str]) -> set[str]:
            return actions if self.read_only else set()

        return [
            ("Console", self.BINDINGS, set()),
            ("Keys pane", KeysPane.BINDINGS, hidden(WRITE_ACTIONS)),
            ("Key tree", KeyTree.BINDINGS, set()),
            ("Filter bar", FilterBar.BINDINGS, set()),
            ("Tables", LineTable.BINDINGS, set()),
            ("Machines", MachinesPane.BINDINGS, hidden(MachinesPane.WRITE_ACTIONS)),
            ("Units", UnitsPane.BINDINGS, hidden(UnitsPane.WRITE_ACTIONS)),
            ("Subnets", SubnetsPane.BINDINGS, set()),
            ("Journal", JournalPane.BINDINGS, set()),
            ("Journal view", JournalView.BINDINGS, set()),
            (
                "Dialogs",
                [
                    *ConfirmScreen.BINDINGS,
                    *EditValueScreen.BINDINGS,
                    *NewKeyScreen.BINDINGS,
                    *TTLScreen.BINDINGS,
                    *HistoryScreen.BINDINGS,
                    *TextScreen.BINDINGS,
                    *PathPromptScreen.BINDINGS,
                ],
                set(),
            ),
        ]

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
        # Only the pane on view offers its actions, each naming what it will act on: nothing
        # acts on a selection out of sight, and one with no target is not offered at all.
        panes = {
            "Keys pane": ("keys", self.keys_pane),
            "Machines": ("machines", self.machines_pane),
            "Units": ("units", self.units_pane),
            "Subnets": ("subnets", self.subnets_pane),
            "Journal": ("journal", self.journal_pane),
        }
        active = self._active_tab()
        for section, bindings, hidden in self._sections():
            if section not in panes or panes[section][0] != active:
                continue
            tab, pane = panes[section]
            title = "Keys" if section == "Keys pane" else section
            for binding in bindings:
                if not isinstance(binding, Binding) or binding.action in hidden:
                    continue
                target = palette_target(pane, binding.action)
                if target is None:
                    continue
                on = f" {target}" if target else ""
                yield SystemCommand(
                    f"{title}: {binding.description}{on}",
                    f"{binding.description}{on} ({binding.key})",
                    partial(self._run_pane_action, tab, pane, binding.action),
                )

    def _run_pane_action(self, tab: str, pane: Widget, action: str) -> None:
        self.action_show_tab(tab)
        self.run_worker(pane.run_action(action), group="palette")


def palette_target(pane: Widget, action: str) -> str | None:
    """What a palette command of ``pane`` acts on, as its title names it: "" when it needs
    no target, None when it needs one and nothing is chosen (it is then not offered)."""
    if isinstance(pane, UnitsPane) and action in UnitsPane.TARGET_ACTIONS:
        names = pane.chosen()
        if not names:
            return None
        return names[0] if len(names) == 1 else f"{len(names)} marked units"
    if isinstance(pane, MachinesPane) and action in MachinesPane.TARGET_ACTIONS:
        row = pane.table.cursor_row
        return f"machine {short_id(row.key)}" if row is not None else None
    if isinstance(pane, KeysPane) and action in KeysPane.TARGET_ACTIONS:
        child = pane.key_tree.cursor_child
        if child is None or not child.path:
            return None
        if child.is_dir and action in ("edit", "history"):
            return None
        return text_literal(child.path.decode("utf-8", "backslashreplace"))
    return ""


def _line_count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of lines (1 or more)")
    return int(text)


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
    parser.add_argument(
        "--netns",
        action="store_true",
        help="with --demo, as root: each demo node in its own network namespace, the overlay "
        "carrying real traffic between them",
    )
    parser.add_argument(
        "--journal-lines",
        type=_line_count,
        default=env.get("CLUSTERTUI_JOURNAL_LINES", str(DEFAULT_LIMIT)),
        help=f"lines the journal pane keeps (default {DEFAULT_LIMIT:,})",
    )
    parser.add_argument(
        "--remote-clusterd",
        default=env.get("CLUSTERTUI_REMOTE_CLUSTERD", "clusterd"),
        help="the command that runs clusterd on a machine over SSH (default clusterd)",
    )
    return parser


async def run_console(
    settings: ClusterSettings,
    config: ConsoleConfig,
    root: str = "",
    *,
    journal_limit: int = DEFAULT_LIMIT,
    remote_clusterd: str = "clusterd",
    on_hangup: Callable[[], None] | None = None,
) -> int:
    """Open the tunnel in the terminal, then hand the screen to the console.

    ``on_hangup`` stops whatever the caller started when the terminal goes away.
    """
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
        journal_limit=journal_limit,
        remote_clusterd=remote_clusterd,
    )
    # A kill ends the console the way q does, so whatever it started (the demo cluster, the
    # tunnel) is stopped on the way out and the terminal is put back.
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, app.exit)
    loop.add_signal_handler(signal.SIGHUP, partial(_hang_up, on_hangup))
    try:
        await app.run_async()
    finally:
        for stop in (signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(stop)
        # The journal readers the panes started end with their workers, which outlive the
        # app by a moment: wait for them, so no `clusterd journal -f` outlives the console.
        await readers_ended()
        await session.close()
    return 0


def _hang_up(on_hangup: Callable[[], None] | None) -> None:
    """The terminal is gone: stop what the console started, then leave at once.

    There is no terminal to restore and no one to tell, and Textual's orderly shutdown
    would block for ever writing its goodbye to the dead terminal.
    """
    if on_hangup is not None:
        with contextlib.suppress(Exception):
            on_hangup()
    os._exit(128 + signal.SIGHUP)


async def run_demo(
    config: ConsoleConfig, read_only: bool, journal_limit: int, netns: bool = False
) -> int:
    """Start the demo cluster (store, nodes, units) in a temporary directory, open it, stop it."""
    from clustertui.backend import demo

    if netns and (why := demo.netns_possible()):
        print(f"clustertui: {why}", file=sys.stderr)
        netns = False
    with tempfile.TemporaryDirectory(prefix="clustertui-demo-") as root:
        print("clustertui: starting the demo cluster (store, 3 nodes, units)…", file=sys.stderr)
        cluster = await demo.start_cluster(Path(root), netns=netns)

        def hang_up() -> None:
            # The hang-up leaves at once (os._exit): no `with` block is left to clean up.
            cluster.stop()
            shutil.rmtree(root, ignore_errors=True)

        try:
            settings = ClusterSettings(name="demo", endpoints=(cluster.url,), read_only=read_only)
            return await run_console(
                settings, config, journal_limit=journal_limit, on_hangup=hang_up
            )
        finally:
            # Nothing printed here: after a hang-up the terminal is gone, and a failed
            # write would leave the cluster running.
            cluster.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(Path(args.config) if args.config else None)
        settings = resolve_cluster(args, config)
        if args.demo:
            return asyncio.run(run_demo(config, settings.read_only, args.journal_lines, args.netns))
        return asyncio.run(
            run_console(
                settings,
                config,
                args.prefix,
                journal_limit=args.journal_lines,
                remote_clusterd=args.remote_clusterd,
            )
        )
    except ConfigFileError as error:
        print(f"clustertui: {error}", file=sys.stderr)
        return 2
    except (EtcdError, OSError, RuntimeError) as error:
        print(f"clustertui: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
