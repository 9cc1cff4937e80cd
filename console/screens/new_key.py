"""Provides the new-key dialog: path, value and an optional TTL."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import ClassVar

from rich.text import Text
from textual import events, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static, TextArea


@dataclass(frozen=True)
class NewKey:
    """What the user asked to create."""

    key: bytes
    value: bytes
    ttl: int | None


def parse_ttl(text: str) -> int | None:
    """Seconds from ``30``, ``30s``, ``5m`` or ``2h``; empty means none; ValueError if bad."""
    text = text.strip().lower()
    if not text:
        return None
    scale = {"s": 1, "m": 60, "h": 3600}.get(text[-1])
    number = text[:-1] if scale else text
    if not number.isdigit() or int(number) <= 0:
        raise ValueError(f"TTL {text!r} is not a positive number of seconds (30, 5m, 2h)")
    return int(number) * (scale or 1)


class NewKeyScreen(ModalScreen[NewKey | None]):
    """Asks for a key, its value and a TTL; dismisses with a :class:`NewKey` or None."""

    DEFAULT_CSS = """
    NewKeyScreen {
        align: center middle;
    }
    NewKeyScreen > Vertical {
        width: 80%;
        height: auto;
        max-height: 90%;
        border: thick $accent;
        background: $surface;
        padding: 0 1;
    }
    NewKeyScreen TextArea {
        height: 8;
    }
    NewKeyScreen #new-error {
        color: $error;
        height: auto;
    }
    NewKeyScreen #new-buttons {
        height: auto;
        align: right middle;
    }
    NewKeyScreen Button {
        margin-left: 2;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+s", "save", "Create", id="new.save"),
        Binding("escape", "cancel", "Cancel", id="new.cancel"),
    ]

    def __init__(
        self, directory: str, save: Callable[[NewKey], Awaitable[str | None]] | None = None
    ) -> None:
        super().__init__()
        self.directory = directory
        self._early: list[events.Key] = []
        """Keys typed behind `n` before the fields were up, in the order typed."""
        self._ready = False
        """Whether those keys went into the fields: later ones are typed straight in."""
        self.save = save
        """Writes the key; returns why it failed. The dialog stays open until it succeeds,
        so a write refused during an outage loses nothing typed."""

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(Text("new key", style="bold"))
            yield Label("key")
            # Not selected on focus: what is typed goes after the directory, not over it.
            yield Input(self.directory, id="new-key", select_on_focus=False)
            yield Label("value")
            yield TextArea("", id="new-value")
            yield Label("TTL (empty for none; 30, 5m, 2h)")
            yield Input("", id="new-ttl")
            yield Static("", id="new-error")
            with Horizontal(id="new-buttons"):
                yield Button("Cancel", id="cancel")
                yield Button("Create", variant="primary", id="save")

    AUTO_FOCUS = "#new-key"

    def on_mount(self) -> None:
        path = self.query_one("#new-key", Input)
        # Focused now, not at the next idle: the keys typed behind `n` are typed into the
        # fields here, in order, before any key that follows them can reach a field.
        self.set_focus(path)
        path.cursor_position = len(path.value)
        early, self._early = self._early, []
        for event in early:
            self._take(event, tab=True)
        self._ready = True

    def on_key(self, event: events.Key) -> None:
        """Keys typed right behind `n` that reach the screen before a field has focus."""
        if self._take(event):
            event.stop()
            event.prevent_default()

    def type_ahead(self, event: events.Key) -> None:
        """A key typed behind `n` that reached the pane below first: kept until the fields
        are up, then typed into them in order (a tab moves on to the next field)."""
        if self._ready:
            self._take(event, tab=True)
        else:
            self._early.append(event)

    def _take(self, event: events.Key, tab: bool = False) -> bool:
        target = self.focused
        if tab and event.key in ("tab", "shift+tab"):
            (self.focus_next if event.key == "tab" else self.focus_previous)()
            return True
        if not event.is_printable or not event.character:
            return False
        if isinstance(target, Input):
            target.insert_text_at_cursor(event.character)
        elif isinstance(target, TextArea):
            target.insert(event.character)
        else:
            return False
        return True

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "save":
            self.action_save()
        else:
            self.action_cancel()

    def on_input_submitted(self) -> None:
        self.action_save()

    def action_save(self) -> None:
        error = self.query_one("#new-error", Static)
        key = self.query_one("#new-key", Input).value
        if not key or key.endswith("/"):
            error.update(Text("the key needs a name after its directory"))
            return
        try:
            ttl = parse_ttl(self.query_one("#new-ttl", Input).value)
        except ValueError as problem:
            error.update(Text(str(problem)))
            return
        value = self.query_one("#new-value", TextArea).text
        answer = NewKey(key.encode(), value.encode(), ttl)
        if self.save is None:
            self.dismiss(answer)
        else:
            self._write(answer)

    @work(exclusive=True, group="new-key-save")
    async def _write(self, answer: NewKey) -> None:
        assert self.save is not None
        error = self.query_one("#new-error", Static)
        error.update(Text("writing…"))
        problem = await self.save(answer)
        if problem is None:
            self.dismiss(answer)
            return
        error.update(Text(f"{problem}\nnothing is lost: ctrl+s tries again, escape gives up"))

    def action_cancel(self) -> None:
        self.dismiss(None)
