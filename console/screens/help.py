"""Provides the help screen: every binding of the console, with its keys and id."""

from __future__ import annotations

from typing import ClassVar

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

HelpRow = tuple[str, str, str, str]
"""Section, keys, description, binding id."""


class HelpScreen(ModalScreen[None]):
    """A table of every binding, grouped by where it applies."""

    DEFAULT_CSS = """
    HelpScreen {
        align: center middle;
    }
    HelpScreen > Vertical {
        width: 84;
        max-width: 100%;
        height: 90%;
        border: thick $accent;
        background: $surface;
        padding: 0 1;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q,question_mark", "close", "Close", id="help.close")
    ]

    def __init__(self, rows: list[HelpRow]) -> None:
        super().__init__()
        self.rows = rows

    def compose(self) -> ComposeResult:
        table = Table(box=None, expand=True, show_edge=False, pad_edge=False)
        table.add_column("keys", style="bold", no_wrap=True)
        table.add_column("action")
        table.add_column("id (for the keymap)", style="dim", no_wrap=True)
        section = None
        for where, keys, description, binding_id in self.rows:
            if where != section:
                section = where
                table.add_row(Text(where, style="bold underline"), "", "")
            table.add_row(Text(keys), Text(description), Text(binding_id))
        with Vertical():
            yield Static(Text("clustertui help   escape closes", style="bold"))
            with VerticalScroll():
                yield Static(table)
            yield Static(
                Text(
                    "filter: text matches a substring, ~text a regex, !text inverts.\n"
                    "keymap: remap a binding by id in ~/.config/clustertui/config.yaml",
                    style="dim",
                )
            )

    def action_close(self) -> None:
        self.dismiss(None)
