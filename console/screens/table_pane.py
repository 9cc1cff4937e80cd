"""Provides what the machines, units and subnets panes share: a status line, a table, a filter."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Container
from textual.widgets import Input, Static

from clustertui.console.cluster import ClusterModel
from clustertui.widgets.filter_bar import FilterBar
from clustertui.widgets.line_table import Column, LineTable, Row


class TablePane(Container):
    """A cluster pane: one table over the live model; subclasses say how rows are built."""

    DEFAULT_CSS = """
    TablePane {
        height: 1fr;
    }
    TablePane > .pane-status {
        height: 1;
        padding: 0 1;
        background: $panel;
    }
    """

    COLUMNS: ClassVar[list[Column]] = []
    WRITE_ACTIONS: ClassVar[set[str]] = set()
    MARKABLE: ClassVar[bool] = False

    def __init__(self, model: ClusterModel, *, read_only: bool = False, id: str | None = None):
        super().__init__(id=id)
        self.model = model
        self.read_only = read_only

    def compose(self) -> ComposeResult:
        yield Static("", classes="pane-status")
        yield LineTable(self.COLUMNS, markable=self.MARKABLE)
        yield FilterBar()

    @property
    def table(self) -> LineTable:
        return self.query_one(LineTable)

    @property
    def status(self) -> Static:
        return self.query_one(".pane-status", Static)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if self.read_only and action in self.WRITE_ACTIONS:
            return False
        return True

    def build_rows(self) -> list[Row]:
        raise NotImplementedError

    def status_text(self) -> Text:
        return Text("")

    def update_from_model(self) -> None:
        """Rebuild the rows from the model: one repaint per batch of watch events."""
        if not self.query(LineTable):
            # Timers can still fire while the console closes and the table is gone.
            return
        if not self.model.loaded.is_set():
            self.table.empty_text = "loading…"
            self.status.update(Text("waiting for the store…", style="dim italic"))
            return
        self.table.set_rows(self.build_rows())
        status = self.status_text()
        if self.model.state == "reconnecting":
            status.append(
                f"   store unreachable: showing revision {self.model.revision:,}; reconnecting",
                style="bold red",
            )
        self.status.update(status)

    def action_filter(self) -> None:
        self.query_one(FilterBar).open()

    @on(LineTable.Selected)
    def _row_chosen(self) -> None:
        self.run_action_on_enter()

    def run_action_on_enter(self) -> None:
        """What a double click on a row does: the pane's ``enter`` action."""
        for binding in self.BINDINGS:
            if isinstance(binding, Binding) and binding.key == "enter":
                self.run_worker(self.run_action(binding.action))

    @on(FilterBar.Applied)
    def _filter_applied(self, event: FilterBar.Applied) -> None:
        self.table.set_filter(event.matcher)
        self.status.update(self.status_text())

    @on(Input.Submitted)
    def _filter_submitted(self, event: Input.Submitted) -> None:
        if isinstance(event.input, FilterBar):
            self.table.focus()
