"""Provides the edit dialog: a key's value in a TextArea, saved with ctrl+s."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Static, TextArea

from clustertui.backend.keyspace import MAX_REQUEST_BYTES
from clustertui.widgets.literal import literal


class EditValueScreen(ModalScreen[str | None]):
    """Edits one value; dismisses with the new text, or None when cancelled."""

    DEFAULT_CSS = """
    EditValueScreen {
        align: center middle;
    }
    EditValueScreen > Vertical {
        width: 90%;
        height: 80%;
        border: thick $accent;
        background: $surface;
        padding: 0 1;
    }
    EditValueScreen TextArea {
        height: 1fr;
    }
    EditValueScreen #edit-error {
        color: $error;
        height: auto;
    }
    EditValueScreen #edit-buttons {
        height: auto;
        align: right middle;
    }
    EditValueScreen Button {
        margin-left: 2;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+s", "save", "Save", id="edit.save"),
        Binding("escape", "cancel", "Cancel", id="edit.cancel"),
    ]

    def __init__(self, key: bytes, value: str, language: str | None = None) -> None:
        super().__init__()
        self.key = key
        self.value = value
        self.language = language

    def compose(self) -> ComposeResult:
        with Vertical():
            title = Text("edit ", style="bold")
            title.append_text(literal(self.key))
            yield Static(title)
            area = TextArea(self.value, id="edit-value", show_line_numbers=True, soft_wrap=True)
            if self.language in area.available_languages:
                area.language = self.language
            yield area
            yield Static("", id="edit-error")
            with Horizontal(id="edit-buttons"):
                yield Static(Text("ctrl+s saves, escape cancels", style="dim"))
                yield Button("Cancel", id="cancel")
                yield Button("Save", variant="primary", id="save")

    def on_mount(self) -> None:
        self.query_one(TextArea).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "save":
            self.action_save()
        else:
            self.action_cancel()

    def action_save(self) -> None:
        text = self.query_one(TextArea).text
        size = len(text.encode()) + len(self.key)
        if size > MAX_REQUEST_BYTES:
            limit = f"{MAX_REQUEST_BYTES:,}"
            refusal = f"refused: {size:,} bytes is over the store limit of {limit} bytes a request"
            self.query_one("#edit-error", Static).update(Text(refusal))
            return
        self.dismiss(text)

    def action_cancel(self) -> None:
        self.dismiss(None)
