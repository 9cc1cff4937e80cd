"""Provides the header: cluster, endpoint, tunnel, revision, member and leader, connection state."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widgets import Static

from widgets.literal import literal


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

    def render(self) -> Text:
        line = Text()
        line.append("clustertui ", style="bold")
        line.append_text(literal(self.cluster, "bold"))
        line.append("  ")
        line.append_text(literal(self.endpoint))
        if self.via:
            line.append("  via ")
            line.append_text(literal(self.via))
        if self.revision:
            line.append(f"  rev {self.revision}")
        if self.member:
            line.append("  member ")
            line.append_text(literal(self.member))
        if self.leader:
            line.append("  leader ")
            line.append_text(literal(self.leader))
        if self.read_only:
            line.append("  read-only", style="bold yellow")
        style = "bold green" if self.state == "connected" else "bold yellow"
        line.append("  ")
        line.append_text(literal(self.state, style))
        return line
