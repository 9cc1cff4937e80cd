"""Provides the watch log: events under one prefix as they happen (`etcdctl watch --prefix`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.text import Text
from textual.widgets import RichLog

from clustertui.backend.etcd import DELETE
from clustertui.widgets.literal import literal

MAX_LINES = 2000
VALUE_PREVIEW = 80


class WatchLog(RichLog):
    """A bounded log of watch events; one write per batch."""

    DEFAULT_CSS = """
    WatchLog {
        height: 12;
        border-top: solid $panel;
        display: none;
    }
    WatchLog.-active {
        display: block;
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(max_lines=MAX_LINES, wrap=False, markup=False, highlight=False, id=id)
        self.prefix: bytes | None = None
        """The prefix watched, or None when the log is closed."""

    def start(self, prefix: bytes) -> None:
        self.prefix = prefix
        self.clear()
        self.add_class("-active")
        self.border_title = Text(f"watching {literal(prefix).plain or '/'}")

    def stop(self) -> None:
        self.prefix = None
        self.remove_class("-active")

    def add_events(self, revision: int, events: Iterable[Any]) -> None:
        lines = Text()
        for event in events:
            kind = "DELETE" if event.type == DELETE else "PUT"
            lines.append(f"{revision:>8} ", style="dim")
            lines.append(f"{kind:<6} ", style="red" if kind == "DELETE" else "green")
            lines.append_text(literal(event.kv.key))
            if kind == "PUT":
                value = event.kv.value[:VALUE_PREVIEW]
                lines.append(" = ", style="dim")
                lines.append_text(literal(value.replace(b"\n", b" ")))
            lines.append("\n")
        if lines:
            lines.rstrip()
            self.write(lines)

    def note(self, message: str) -> None:
        self.write(literal(message, "italic yellow"))
