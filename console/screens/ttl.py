"""Provides the TTL dialog: set or clear the lease on a key or on every key of a directory."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Static

from clustertui.console.screens.new_key import parse_ttl


@dataclass(frozen=True)
class TTLChoice:
    """The TTL asked for; None clears it."""

    ttl: int | None


class TTLScreen(ModalScreen[TTLChoice | None]):
    """Asks for a TTL; an empty answer clears the lease. Dismisses None when cancelled."""

    DEFAULT_CSS = """
    TTLScreen {
        align: center middle;
    }
    TTLScreen > Vertical {
        width: 64;
        max-width: 100%;
        height: auto;
        border: thick $accent;
        background: $surface;
        padding: 0 1;
    }
    TTLScreen #ttl-error {
        color: $error;
        height: auto;
    }
    TTLScreen #ttl-buttons {
        height: auto;
        align: right middle;
    }
    TTLScreen Button {
        margin-left: 2;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel", id="ttl.cancel")]

    def __init__(self, what: Text) -> None:
        super().__init__()
        self.what = what

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(Text("TTL", style="bold"))
            yield Static(self.what)
            yield Input(
                "", placeholder="seconds (30, 5m, 2h); empty clears the TTL", id="ttl-value"
            )
            yield Static("", id="ttl-error")
            with Horizontal(id="ttl-buttons"):
                yield Button("Cancel", id="cancel")
                yield Button("Apply", variant="primary", id="apply")

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "apply":
            self._apply()
        else:
            self.action_cancel()

    def on_input_submitted(self) -> None:
        self._apply()

    def _apply(self) -> None:
        try:
            ttl = parse_ttl(self.query_one(Input).value)
        except ValueError as problem:
            self.query_one("#ttl-error", Static).update(Text(str(problem)))
            return
        self.dismiss(TTLChoice(ttl))

    def action_cancel(self) -> None:
        self.dismiss(None)
