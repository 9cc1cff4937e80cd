"""Provides the machines pane: every machine of the cluster, its metadata, units and presence."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from typing import ClassVar

from rich.text import Text
from textual.app import SuspendNotSupported
from textual.binding import Binding
from textual.message import Message

from clustertui.backend.fleet.demo import clusterd_path
from clustertui.backend.fleet.model import UnsafeValue, format_metadata, short_id
from clustertui.console.access import MachineAccess
from clustertui.console.cluster import ClusterModel
from clustertui.console.screens.table_pane import TablePane
from clustertui.widgets.line_table import Column, Row
from clustertui.widgets.literal import cell, plural


def _shortened(text: str, room: int = 24) -> str:
    """What an invalid record holds, cut short: the row must still show why it is invalid."""
    text = cell(text)
    return text if len(text) <= room else text[: room - 1] + "…"


class MachinesPane(TablePane):
    """The Machines tab: MACHINE IP METADATA UNITS STATE."""

    COLUMNS: ClassVar[list[Column]] = [
        Column("machine", "MACHINE"),
        Column("ip", "IP"),
        Column("metadata", "METADATA"),
        Column("units", "UNITS", sort_key=lambda row: int(row.cells[3])),
        Column("state", "STATE"),
    ]
    WRITE_ACTIONS: ClassVar[set[str]] = {"shell"}
    TARGET_ACTIONS: ClassVar[set[str]] = {"units", "shell", "journal"}
    """Actions on the machine under the cursor: the palette names it."""

    BINDINGS = [
        Binding("enter", "units", "Its units", id="machines.units"),
        Binding("o", "shell", "Shell", id="machines.shell"),
        Binding("j", "journal", "Journal", id="machines.journal"),
        Binding("l", "long_ids", "Full IDs", id="machines.long"),
        Binding("slash", "filter", "Filter", id="machines.filter"),
    ]

    @dataclass
    class UnitsRequested(Message):
        """Show the units pane filtered to this machine."""

        machine_id: str

    @dataclass
    class JournalRequested(Message):
        """Follow this machine's whole journal."""

        machine_id: str

    def __init__(
        self,
        model: ClusterModel,
        access: MachineAccess,
        *,
        read_only: bool = False,
        id: str | None = None,
    ) -> None:
        super().__init__(model, read_only=read_only, id=id)
        self.access = access
        self.full_ids = False

    def build_rows(self) -> list[Row]:
        fleet = self.model.fleet
        counts: dict[str, int] = {}
        for name, job in fleet.jobs.items():
            if not job.unit_hash:
                continue
            places = set(fleet.states.get(name, {}))
            if job.target:
                places.add(job.target)
            for machine_id in places:
                counts[machine_id] = counts.get(machine_id, 0) + 1
        rows = []
        for machine_id in sorted(fleet.machines):
            machine = fleet.machines[machine_id]
            gone = self.model.machine_gone(machine_id)
            state = "gone" if gone else "alive"
            if machine_id == fleet.leader:
                state += ", engine leader"
            if machine.problem:
                # Shown, never used: no shell, no journal, no units scheduled onto it.
                state = f"invalid: {machine.problem}"
            cells = (
                cell(short_id(machine_id, self.full_ids)),
                cell(
                    _shortened(machine.public_ip) if machine.problem else machine.public_ip or "-"
                ),
                cell(format_metadata(machine.metadata)),
                str(counts.get(machine_id, 0)),
                cell(state),
            )
            bad = gone or bool(machine.problem)
            styles = ("bold", "", "", "", "bold red" if bad else "green")
            rows.append(Row(machine_id, cells, styles, style="dim" if gone else "", data=machine))
        return rows

    def status_text(self) -> Text:
        machines = self.model.fleet.machines
        gone = sum(1 for m in machines if self.model.machine_gone(m))
        text = Text(plural(len(machines), "machine"))
        if gone:
            text.append(f", {gone:,} gone", style="bold red")
        if self.model.fleet.leader:
            text.append(cell(f"   engine leader {short_id(self.model.fleet.leader)}"))
        return text

    def action_long_ids(self) -> None:
        self.full_ids = not self.full_ids
        self.update_from_model()

    def action_units(self) -> None:
        row = self.table.cursor_row
        if row is not None:
            self.post_message(self.UnitsRequested(row.key))

    def action_journal(self) -> None:
        row = self.table.cursor_row
        if row is not None:
            self.post_message(self.JournalRequested(row.key))

    def action_shell(self) -> None:
        row = self.table.cursor_row
        if row is None:
            return
        machine = self.model.fleet.machines.get(row.key)
        if machine is None:
            return
        try:
            argv = self.access.shell_argv(machine)
        except UnsafeValue as error:
            self.notify(str(error), title="Refused", severity="error", markup=False)
            return
        try:
            with self.app.suspend():
                print(f"clustertui: {' '.join(argv)} (exit the shell to return)", flush=True)
                local = self.access.is_local(machine)
                cwd = machine.data_dir if local else None
                # A local shell finds the `clusterd` this console runs (a venv is not on PATH).
                env = {**os.environ, "PATH": clusterd_path()} if local else None
                try:
                    subprocess.run(argv, cwd=cwd or None, env=env, check=False)
                except OSError as error:
                    print(f"clustertui: cannot run {argv[0]}: {error.strerror}", flush=True)
        except SuspendNotSupported:
            self.notify("this terminal cannot hand over the screen for a shell", severity="error")
