"""Provides a read-only text dialog: a unit file (`c`), a unit's status and journal (`enter`)."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static


class TextScreen(ModalScreen[None]):
    """Shows ``body`` under ``title``; escape or q closes it."""

    DEFAULT_CSS = """
    TextScreen {
        align: center middle;
    }
    TextScreen > Vertical {
        width: 90%;
        max-width: 110;
        height: auto;
        max-height: 90%;
        border: thick $primary;
        background: $surface;
        padding: 0 1;
    }
    TextScreen #text-title {
        text-style: bold;
        padding-bottom: 1;
    }
    TextScreen VerticalScroll {
        height: auto;
        max-height: 30;
    }
    TextScreen #text-hint {
        color: $text-muted;
        padding-top: 1;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q,enter", "close", "Close", id="text.close")
    ]

    def __init__(self, title: Text | str, body: Text) -> None:
        super().__init__()
        self.title_text = title
        self.body = body

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self.title_text, id="text-title")
            with VerticalScroll():
                yield Static(self.body, id="text-body")
            yield Static("escape closes", id="text-hint")

    def action_close(self) -> None:
        self.dismiss(None)
