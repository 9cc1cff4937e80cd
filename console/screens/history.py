"""Provides the history dialog: a key's earlier values, read at earlier revisions."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from clustertui.backend.keyspace import Entry
from clustertui.widgets.literal import literal

PREVIEW = 400


def revision_line(entry: Entry, older: list[Entry]) -> Text:
    """``rev 12  version 3  lease 694d…``, and what changed from the revision before: a
    write that kept the value but changed the lease says so."""
    text = Text(f"rev {entry.mod_revision}  version {entry.version}")
    text.append(f"  lease {entry.lease:x}" if entry.lease else "  no lease")
    if not older:
        text.append("  (created)" if entry.version == 1 else "")
        return text
    before = older[0]
    if entry.value == before.value and entry.lease != before.lease:
        was = f"{before.lease:x}" if before.lease else "none"
        text.append(f"  only the lease changed (was {was})", style="bold yellow")
    elif entry.value == before.value:
        text.append("  same value written again", style="yellow")
    elif entry.lease != before.lease:
        text.append("  value and lease changed", style="yellow")
    return text


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

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q,h", "close", "Close", id="history.close")
    ]

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
                for index, entry in enumerate(self.entries):
                    yield Static(revision_line(entry, self.entries[index + 1 :][:1]),
                                 classes="history-rev")  # fmt: skip
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
