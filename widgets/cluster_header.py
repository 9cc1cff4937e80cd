"""Provides the header: cluster, endpoint, tunnel, revision, member and leader, connection state."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widgets import Static

from clustertui.widgets.literal import literal


class ClusterHeader(Static):
    """One line that says where the console is connected and whether the link is up."""

    DEFAULT_CSS = """
    ClusterHeader {
        dock: top;
        height: 1;
        background: $panel;
        color: $text;
        padding: 0 1;
    }
    """

    cluster: reactive[str] = reactive("")
    endpoint: reactive[str] = reactive("")
    via: reactive[str] = reactive("")
    revision: reactive[int] = reactive(0)
    member: reactive[str] = reactive("")
    leader: reactive[str] = reactive("")
    state: reactive[str] = reactive("connecting")
    """"connected", "connecting", "reconnecting (attempt N)" or an error."""
    read_only: reactive[bool] = reactive(False)

    units: reactive[str] = reactive("")
    """What the units pane shows, e.g. ``3 of 6 units shown, 2 marked``; empty when unknown."""

    def render(self) -> Text:
        """The line, abbreviated to the width it has: the connection state always shows;
        member, units, leader, revision, tunnel and endpoint give way first, in that order."""
        width = self.content_region.width or self.size.width or 10_000
        style = "bold green" if self.state == "connected" else "bold yellow"
        state = literal(self.state, style)
        state.truncate(max(width - 2, 8), overflow="ellipsis")
        head = Text()
        head.append("clustertui ", style="bold")
        head.append_text(literal(self.cluster, "bold"))
        # Each optional piece: full text, a short form, in the order they give way.
        pieces: list[tuple[str, Text, Text | None]] = []
        pieces.append(("endpoint", literal(self.endpoint), None))
        if self.via:
            pieces.append(("via", Text("via ") + literal(self.via), None))
        if self.revision:
            pieces.append(("revision", Text(f"rev {self.revision}"), None))
        if self.member:
            pieces.append(("member", Text("member ") + literal(self.member), None))
        if self.leader:
            pieces.append(("leader", Text("leader ") + literal(self.leader), None))
        if self.units:
            pieces.append(("units", literal(self.units), None))
        if self.read_only:
            pieces.append(("read-only", Text("read-only", style="bold yellow"), Text("ro")))
        order = ["member", "units", "leader", "revision", "via", "endpoint"]
        shown = {name: text for name, text, _ in pieces}

        def line() -> Text:
            out = head.copy()
            for name, _, _ in pieces:
                if name in shown:
                    out.append("  ")
                    out.append_text(shown[name])
            out.append("  ")
            out.append_text(state)
            return out

        result = line()
        for name in order:
            if result.cell_len <= width:
                break
            if name in ("endpoint", "via") and name in shown:
                # Shortened before dropped: the end of an address says most.
                room = shown[name].cell_len - (result.cell_len - width)
                if room >= 12:
                    text = shown[name].copy()
                    text.truncate(room, overflow="ellipsis")
                    shown[name] = text
                    result = line()
                    continue
            shown.pop(name, None)
            result = line()
        if result.cell_len > width and "read-only" in shown:
            shown["read-only"] = Text("ro", style="bold yellow")
            result = line()
        return result
