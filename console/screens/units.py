"""Provides the units pane: every unit, its desired and current state, under the keyboard."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from rich.text import Text
from textual import work
from textual.binding import Binding
from textual.message import Message

from clustertui.backend.etcd import EtcdError, error_words
from clustertui.backend.fleet.model import (
    Job,
    TargetState,
    UnitState,
    fence_note,
    is_global,
    machine_legend,
    placement,
    short_id,
    unit_state,
)
from clustertui.backend.fleet.registry import Registry, RegistryError
from clustertui.backend.fleet.unitfile import UnitFileError, normalize_name, parse, validate_name
from clustertui.console.cluster import ClusterModel
from clustertui.console.journal_stream import MachineAccess, read_journal
from clustertui.console.screens.confirm import ConfirmScreen
from clustertui.console.screens.path_prompt import PathPromptScreen
from clustertui.console.screens.table_pane import TablePane
from clustertui.console.screens.text_view import TextScreen
from clustertui.widgets.journal_view import JournalEntry, format_time
from clustertui.widgets.line_table import Column, Row
from clustertui.widgets.literal import cell, literal, plural

CONVERGE_SECONDS = 30.0
"""How long a desired state may take to show before the pane says it did not converge."""
WRITE_ACTIONS = {"start", "stop", "restart", "load", "unload", "destroy", "submit"}
ACTIVE_STYLES = {
    "active": "green",
    "activating": "yellow",
    "deactivating": "yellow",
    "reloading": "yellow",
    "failed": "bold red",
    "inactive": "dim",
}
STATE_STYLES = {"launched": "green", "loaded": "cyan", "inactive": "dim"}
VERBS: dict[TargetState, str] = {"launched": "start", "loaded": "stop", "inactive": "unload"}
DONE = {"start": "started on {where}", "stop": "stopped on {where}",
        "load": "loaded on {where}", "unload": "unloaded from {where}",
        "restart": "stopped on {where}; starting it again",
        "restart-start": "restarted on {where}"}  # fmt: skip
"""What a notification says once the desired state asked by each verb has landed."""


@dataclass
class Pending:
    """A desired state the user set, and when, so the pane can say whether it arrived."""

    want: TargetState
    since: float
    stuck: bool = False
    verb: str = ""
    """What the user asked (start, stop, restart…), for the notification once it lands."""


@dataclass
class UnitsPaneState:
    """What the units pane remembers between batches."""

    pending: dict[str, Pending] = field(default_factory=dict)
    machine: str = ""
    """Only units on this machine are shown, when set (enter on the machines pane)."""


class UnitsPane(TablePane):
    """The Units tab: UNIT MACHINE DSTATE STATE ACTIVE SUB, and the keys that change them."""

    COLUMNS: ClassVar[list[Column]] = [
        Column("unit", "UNIT"),
        Column("machine", "MACHINE"),
        Column("dstate", "DSTATE"),
        Column("state", "STATE"),
        Column("active", "ACTIVE"),
        Column("sub", "SUB"),
    ]
    WRITE_ACTIONS: ClassVar[set[str]] = WRITE_ACTIONS
    TARGET_ACTIONS: ClassVar[set[str]] = {
        "start", "stop", "restart", "load", "unload", "destroy", "cat", "status", "journal",
        "mark",
    }  # fmt: skip
    """Actions that act on the chosen units: the palette names them, or hides the action."""
    MARKABLE = True

    BINDINGS = [
        Binding("s", "start", "Start", id="units.start"),
        Binding("x", "stop", "Stop", id="units.stop"),
        Binding("R", "restart", "Restart", id="units.restart"),
        Binding("L", "load", "Load", show=False, id="units.load"),
        Binding("U", "unload", "Unload", show=False, id="units.unload"),
        Binding("D", "destroy", "Destroy", id="units.destroy"),
        Binding("a", "submit", "Submit", id="units.submit"),
        Binding("c", "cat", "Cat", id="units.cat"),
        Binding("enter", "status", "Status", id="units.status"),
        Binding("j", "journal", "Journal", id="units.journal"),
        Binding("space", "mark", "Mark", id="units.mark"),
        Binding("slash", "filter", "Filter", id="units.filter"),
        Binding("escape", "clear", "Clear marks/machine", show=False, id="units.clear"),
    ]

    @dataclass
    class JournalRequested(Message):
        """Follow the journal of these units."""

        units: list[str]

    def __init__(
        self,
        model: ClusterModel,
        registry: Registry | None,
        access: MachineAccess,
        *,
        read_only: bool = False,
        id: str | None = None,
    ) -> None:
        super().__init__(model, read_only=read_only, id=id)
        self._registry = registry
        self.access = access
        self.memory = UnitsPaneState()
        self.converge_seconds = CONVERGE_SECONDS
        """How long a desired state may take before the pane says it did not converge."""

    @property
    def registry(self) -> Registry:
        """Fleet's keys through the console's client (set once the app runs)."""
        assert self._registry is not None
        return self._registry

    @registry.setter
    def registry(self, registry: Registry) -> None:
        self._registry = registry

    # Rows -------------------------------------------------------------------------------

    def build_rows(self) -> list[Row]:
        fleet = self.model.fleet
        rows: list[Row] = []
        only = self.memory.machine
        for name in sorted(fleet.jobs):
            job = fleet.jobs[name]
            if not job.unit_hash:
                continue
            states = fleet.states.get(name, {})
            shown_state = self._state_cell(job, states)
            if is_global(job):
                places = sorted(states) or [""]
                for machine_id in places:
                    if only and machine_id != only:
                        continue
                    rows.append(self._row(job, machine_id, states.get(machine_id), shown_state))
            else:
                if only and job.target != only:
                    continue
                rows.append(self._row(job, job.target, states.get(job.target), shown_state))
        return rows

    def _state_cell(self, job: Job, states: dict[str, UnitState]) -> tuple[str, str]:
        state = unit_state(job, states)
        pending = self.memory.pending.get(job.name)
        if pending is None:
            return state, STATE_STYLES.get(state, "")
        if pending.stuck:
            return f"{state}, did not reach {pending.want}", "bold red"
        return f"pending → {pending.want}", "yellow"

    def _row(
        self, job: Job, machine_id: str, reported: UnitState | None, state: tuple[str, str]
    ) -> Row:
        machine = self.model.fleet.machines.get(machine_id)
        where = machine_legend(machine, machine_id, False, ellipsis="…") if machine_id else "-"
        active = reported.active_state if reported else "-"
        sub = reported.sub_state if reported else "-"
        sub = fence_note(self.model.fleet.states.get(job.name, {}), reported) or sub
        name = cell(job.name) + (" (invalid name)" if job.problem else "")
        # Every cell is made literal: a state is whatever an agent (or anyone) wrote.
        cells = (name, cell(where), cell(job.target_state), cell(state[0]), cell(active), cell(sub))
        styles = (
            "bold red" if job.problem else "bold",
            "bold red" if machine is not None and machine.problem else "",
            "",
            state[1],
            ACTIVE_STYLES.get(active, ""),
            "",
        )
        key = f"{job.name}\0{machine_id}" if is_global(job) else job.name
        return Row(key, cells, styles, data=job.name)

    def status_text(self) -> Text:
        fleet = self.model.fleet
        jobs = [j for j in fleet.jobs.values() if j.unit_hash]
        running = sum(1 for j in jobs if unit_state(j, fleet.states.get(j.name, {})) == "launched")
        view = self.table.view
        if len(view) != len(self.table.rows):
            # Filtered: what is on view first, so the count never contradicts the table.
            shown = len({str(row.data) for row in view})
            text = Text(f"{shown:,} of {plural(len(jobs), 'unit')} shown (filter), ")
            text.append(f"{running:,} launched in all")
        else:
            text = Text(f"{plural(len(jobs), 'unit')}, {running:,} launched")
        if self.memory.machine:
            text.append("   on machine ")
            text.append(cell(short_id(self.memory.machine, True)), style="bold")
            text.append(" (escape shows all)", style="dim")
        if self.table.marked:
            text.append(f"   {plural(len(self.table.marked), 'marked unit')}", style="bold yellow")
        stuck = [n for n, p in self.memory.pending.items() if p.stuck]
        if stuck:
            text.append(cell(f"   did not converge: {', '.join(sorted(stuck))}"), style="bold red")
        return text

    def show_machine(self, machine_id: str) -> None:
        self.memory.machine = machine_id
        self.update_from_model()

    # Convergence ------------------------------------------------------------------------

    def check_convergence(self) -> None:
        """Clear desired states that arrived; flag those that took too long, once."""
        fleet = self.model.fleet
        now = self.model.clock()
        changed = False
        for name, pending in list(self.memory.pending.items()):
            job = fleet.jobs.get(name)
            state = fleet.unit_state(name)
            if state == pending.want:
                del self.memory.pending[name]
                changed = True
                if pending.stuck:
                    self.notify(f"{name} reached {pending.want} after all", markup=False)
                elif pending.verb in DONE:
                    done = DONE[pending.verb].format(where=self.where(name))
                    self.notify(f"{name} {done}", markup=False)
                continue
            if not pending.stuck and now - pending.since > self.converge_seconds:
                pending.stuck = True
                changed = True
                reason = f": {job.reason}" if job and job.reason else ""
                self.notify(
                    f"{name} did not reach {pending.want} in {self.converge_seconds:.0f}s; "
                    f"it is {state}{reason}",
                    title="Did not converge",
                    severity="error",
                    timeout=10,
                    markup=False,
                )
        if changed:
            self.update_from_model()

    # Actions ----------------------------------------------------------------------------

    def chosen(self) -> list[str]:
        names: list[str] = []
        for row in self.table.chosen():
            name = str(row.data)
            if name not in names:
                names.append(name)
        return names

    def action_mark(self) -> None:
        self.table.toggle_mark()
        self.marks_changed()

    def marks_changed(self) -> None:
        """The status line and the header count the marks."""
        self.status.update(self.status_text())
        header = getattr(self.app, "cluster_header", None)
        if header is not None:
            header.units = f"{len(self.table.marked):,} marked" if self.table.marked else ""

    def action_clear(self) -> None:
        if self.table.marked:
            self.table.clear_marks()
        elif self.memory.machine:
            self.memory.machine = ""
            self.update_from_model()
        self.marks_changed()

    async def _confirmed(self, verb: str, names: list[str], always: bool = False) -> bool:
        if len(names) < 2 and not always:
            return True
        question = Text(f"{verb.capitalize()} {plural(len(names), 'unit')}?\n\n")
        for name in names[:20]:
            question.append("  ")
            question.append_text(literal(name, "bold"))
            question.append("\n")
        if len(names) > 20:
            question.append(f"  … and {len(names) - 20:,} more\n")
        confirm = ConfirmScreen(verb.capitalize(), question, yes_label=verb.capitalize())
        answer: bool | None = await self.app.push_screen_wait(confirm)
        return bool(answer)

    def where(self, name: str) -> str:
        """The machine a unit is on, as notifications name it."""
        job = self.model.fleet.jobs.get(name)
        if job is not None and is_global(job):
            return "every machine it runs on"
        if job is None or not job.target:
            return "no machine yet"
        machine = self.model.fleet.machines.get(job.target)
        ip = f" ({machine.public_ip})" if machine is not None and machine.public_ip else ""
        return f"machine {short_id(job.target)}{ip}"

    async def set_target(self, names: list[str], want: TargetState, verb: str = "") -> None:
        """Write the desired state of each unit; the rows show it pending until it arrives,
        a notification says what was asked of which unit where, and another when it lands."""
        verb = verb or VERBS[want]
        now = self.model.clock()
        asked = []
        for name in names:
            try:
                await self.registry.set_target_state(name, want)
            except (RegistryError, EtcdError) as error:
                words = error_words(error) if isinstance(error, EtcdError) else str(error)
                shown = verb.split("-")[0]
                self.notify(f"cannot {shown} {name}: {words}", severity="error", markup=False)
                continue
            self.memory.pending[name] = Pending(want, now, verb=verb)
            asked.append(name)
        if asked and verb != "restart-start":
            doing = {"start": "starting", "stop": "stopping", "load": "loading",
                     "unload": "unloading", "restart": "restarting"}.get(verb, verb)  # fmt: skip
            what = (
                f"{asked[0]} on {self.where(asked[0])}"
                if len(asked) == 1
                else f"{plural(len(asked), 'unit')}: {', '.join(asked)}"
            )
            self.notify(f"{doing} {what}", markup=False)
        self.update_from_model()

    @work(group="units-write")
    async def _lifecycle(self, verb: str, want: TargetState) -> None:
        names = self.chosen()
        if not names or not await self._confirmed(verb, names):
            return
        await self.set_target(names, want, verb)
        self.table.clear_marks()
        self.marks_changed()

    def action_start(self) -> None:
        self._lifecycle("start", "launched")

    def action_stop(self) -> None:
        self._lifecycle("stop", "loaded")

    def action_load(self) -> None:
        self._lifecycle("load", "loaded")

    def action_unload(self) -> None:
        self._lifecycle("unload", "inactive")

    @work(group="units-write")
    async def action_restart(self) -> None:
        names = self.chosen()
        if not names or not await self._confirmed("restart", names):
            return
        self.table.clear_marks()
        self.marks_changed()
        await self.set_target(names, "loaded", "restart")
        # Like `fleetctl restart`: wait for the stop to land, then start again.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.converge_seconds
        while loop.time() < deadline and any(n in self.memory.pending for n in names):
            await asyncio.sleep(0.1)
            self.check_convergence()
        await self.set_target(names, "launched", "restart-start")

    @work(group="units-write")
    async def action_destroy(self) -> None:
        names = self.chosen()
        if not names or not await self._confirmed("destroy", names, always=True):
            return
        self.table.clear_marks()
        self.marks_changed()
        for name in names:
            try:
                await self.registry.destroy(name)
            except (RegistryError, EtcdError) as error:
                self.notify(f"cannot destroy {name}: {error}", severity="error", markup=False)
                continue
            self.memory.pending.pop(name, None)
        self.notify(f"destroyed {', '.join(names)}", markup=False)

    def action_submit(self) -> None:
        def submitted(answer: str | None) -> None:
            if answer:
                self.submit_files(unit_paths(answer))

        self.app.push_screen(
            PathPromptScreen(
                "Submit unit files",
                "paths separated by spaces (a directory submits every unit file in it)",
                check_unit_files,
            ),
            submitted,
        )

    @work(group="units-write")
    async def submit_files(self, paths: list[Path]) -> None:
        done = []
        for path in paths:
            try:
                await self.registry.create_job(
                    normalize_name(path.name), path.read_text(), replace=True
                )
            except (RegistryError, EtcdError, OSError) as error:
                self.notify(f"cannot submit {path.name}: {error}", severity="error", markup=False)
                continue
            done.append(path.name)
        if done:
            self.notify(f"submitted {', '.join(done)}", markup=False)

    def action_cat(self) -> None:
        names = self.chosen()
        job = self.model.fleet.jobs.get(names[0]) if names else None
        if job is None or job.unit is None:
            self.notify("select a unit to see its file", severity="warning", markup=False)
            return
        self.app.push_screen(TextScreen(literal(job.name), literal(job.unit.raw)))

    @work(group="units-status")
    async def action_status(self) -> None:
        row = self.table.cursor_row
        if row is None:
            return
        name = str(row.data)
        fleet = self.model.fleet
        job = fleet.jobs.get(name)
        if job is None:
            return
        machine_id = row.key.split("\0")[1] if "\0" in row.key else job.target
        states = fleet.states.get(name, {})
        body = status_lines(job, states, machine_id, self.model)
        machine = fleet.machines.get(machine_id)
        if machine is not None:
            try:
                lines = await read_journal(self.access, machine, [name], short_id(machine_id))
            except Exception as error:
                body.append("\n")
                body.append_text(literal(f"(cannot read the journal: {error})", "red"))
            else:
                append_journal(body, lines[-10:])
        await self.app.push_screen_wait(TextScreen(literal(name, "bold"), body))

    def action_journal(self) -> None:
        names = self.chosen()
        if names:
            self.post_message(self.JournalRequested(names))


def status_lines(
    job: Job, states: dict[str, UnitState], machine_id: str, model: ClusterModel
) -> Text:
    """fleetctl status's header: state, machine, and why the engine put it there."""
    reported = states.get(machine_id)
    text = Text()
    description = job.unit.description(job.name) if job.unit else ""
    if description:
        text.append_text(literal(description, "italic"))
        text.append("\n")
    if job.problem:
        text.append_text(literal(f"invalid: {job.problem}", "bold red"))
        text.append("\n")
    text.append("   State: ")
    text.append(cell(f"{unit_state(job, states)} (desired {job.target_state})") + "\n")
    text.append("  Active: ")
    if reported:
        style = ACTIVE_STYLES.get(reported.active_state, "")
        text.append(cell(reported.active_state), style=style)
        text.append(cell(f" ({reported.sub_state}), load {reported.load_state}") + "\n")
    else:
        text.append("inactive (dead)\n", style="dim")
    text.append(" Machine: ")
    machine = model.fleet.machines.get(machine_id)
    if is_global(job):
        text.append(f"global, on {plural(len(states), 'machine')}; this row: ")
    if machine_id:
        text.append(cell(machine_id))
        if machine is not None and machine.problem:
            text.append(cell(f" (invalid: {machine.problem})"), style="bold red")
        elif machine is not None and machine.public_ip:
            text.append(cell(f" ({machine.public_ip})"))
    else:
        text.append("-")
    text.append("\n  Placed: ")
    text.append_text(literal(placement(job)))
    text.append("\n")
    return text


def append_journal(body: Text, entries: list[JournalEntry]) -> None:
    """The status detail's tail: journal lines as `clusterctl status` prints them."""
    body.append("\n")
    for entry in entries:
        body.append(format_time(entry.realtime, "short") + " ", style="cyan")
        body.append_text(literal(entry.message))
        body.append("\n")
    if not entries:
        body.append("-- No entries --\n", style="dim")


def unit_paths(answer: str) -> list[Path]:
    """Unit files named by the answer: each path, or each unit file in a directory."""
    paths: list[Path] = []
    for word in answer.split():
        path = Path(word).expanduser()
        if path.is_dir():
            paths.extend(sorted(p for p in path.iterdir() if p.is_file() and "." in p.name))
        else:
            paths.append(path)
    return paths


def check_unit_files(answer: str) -> Text | None:
    """Every problem with the named files: missing, bad names, syntax errors with line numbers."""
    problems = Text()
    paths = unit_paths(answer)
    if not paths:
        return Text("no unit files there")
    for path in paths:
        try:
            name = normalize_name(path.name)
            validate_name(name)
            parse(path.read_text(), name)
        except UnitFileError as error:
            problems.append_text(literal(str(error)))
            problems.append("\n")
        except (OSError, UnicodeDecodeError) as error:
            reason = error.strerror if isinstance(error, OSError) else None
            problems.append_text(literal(f"{path}: {reason or error}"))
            problems.append("\n")
    return problems if problems.plain else None
