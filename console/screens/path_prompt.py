"""Provides the path prompt: unit files to submit (`a`), a file to save the journal to (`S`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Static

Check = Callable[[str], Text | None]
"""Returns what is wrong with the answer (shown under it), or None when it is good."""


class PathPromptScreen(ModalScreen[str | None]):
    """Asks for a path; a failed check keeps the dialog open with the reason under it."""

    DEFAULT_CSS = """
    PathPromptScreen {
        align: center middle;
    }
    PathPromptScreen > Vertical {
        width: 80;
        max-width: 100%;
        height: auto;
        border: thick $primary;
        background: $surface;
        padding: 1 2;
    }
    PathPromptScreen #prompt-title {
        text-style: bold;
    }
    PathPromptScreen #prompt-help {
        color: $text-muted;
    }
    PathPromptScreen #prompt-error {
        color: $error;
        height: auto;
        max-height: 12;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel", id="prompt.cancel")
    ]

    def __init__(self, title: str, help_text: str, check: Check, value: str = "") -> None:
        super().__init__()
        self.title_text = title
        self.help_text = help_text
        self.check = check
        self.value = value

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self.title_text, id="prompt-title")
            yield Static(self.help_text, id="prompt-help")
            yield Input(self.value, placeholder="path", id="prompt-input")
            yield Static("", id="prompt-error")

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        event.stop()
        answer = event.value.strip()
        if not answer:
            return
        problem = self.check(answer)
        if problem is not None:
            self.query_one("#prompt-error", Static).update(problem)
            return
        self.dismiss(answer)

    def action_cancel(self) -> None:
        self.dismiss(None)
