"""Provides the history dialog: a key's earlier values, read at earlier revisions."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from console.keyspace import Entry
from widgets.literal import literal

PREVIEW = 400


class HistoryScreen(ModalScreen[None]):
    """Lists the revisions of one key, newest first."""

    DEFAULT_CSS = """
    HistoryScreen {
        align: center middle;
    }
    HistoryScreen > Vertical {
        width: 90%;
        height: 80%;
        border: thick $accent;
        background: $surface;
        padding: 0 1;
    }
    HistoryScreen .history-rev {
        color: $text-muted;
        margin-top: 1;
    }
    """

    BINDINGS = [Binding("escape,q,h", "close", "Close", id="history.close")]

    def __init__(self, key: bytes, entries: list[Entry], compacted: bool) -> None:
        super().__init__()
        self.key = key
        self.entries = entries
        self.compacted = compacted

    def compose(self) -> ComposeResult:
        with Vertical():
            title = Text("history of ", style="bold")
            title.append_text(literal(self.key))
            title.append(f"  ({len(self.entries)} revisions)", style="dim")
            yield Static(title)
            with VerticalScroll():
                for entry in self.entries:
                    yield Static(
                        Text(f"rev {entry.mod_revision}  version {entry.version}"),
                        classes="history-rev",
                    )
                    value = entry.value[:PREVIEW]
                    more = "…" if len(entry.value) > PREVIEW else ""
                    yield Static(literal(value.decode("utf-8", "backslashreplace") + more))
                if self.compacted:
                    yield Static(
                        Text("older revisions are compacted", style="italic"),
                        classes="history-rev",
                    )
                elif not self.entries:
                    yield Static(Text("the key has no history", style="italic"))

    def action_close(self) -> None:
        self.dismiss(None)
