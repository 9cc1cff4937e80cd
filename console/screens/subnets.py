"""Provides the subnets pane: the network config, and who holds which subnet for how long."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.binding import Binding

from clustertui.backend.fleet.model import Subnet, short_id
from clustertui.console.screens.table_pane import TablePane
from clustertui.widgets.line_table import Column, Row
from clustertui.widgets.literal import cell, literal


def countdown(seconds: float) -> str:
    """``23h59m58s``, ``4m05s``, ``12s``: what is left of a lease."""
    left = max(0, int(seconds))
    hours, rest = divmod(left, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def _expiry_order(row: Row) -> float:
    value = row.data
    return value if isinstance(value, float) else float("inf")


class SubnetsPane(TablePane):
    """The Subnets tab: the network config over SUBNET MACHINE PUBLIC-IP BACKEND EXPIRES,
    VTEP-MAC (the lease's vxlan MAC) and ROUTE HERE (this host's route to it, if any)."""

    COLUMNS: ClassVar[list[Column]] = [
        Column("subnet", "SUBNET", sort_key=lambda row: tuple(int(p) for p in
               row.key.replace("-", ".").split(".") if p.isdigit())),
        Column("machine", "MACHINE"),
        Column("public-ip", "PUBLIC-IP"),
        Column("backend", "BACKEND"),
        Column("expires", "EXPIRES", sort_key=_expiry_order),
        Column("vtep-mac", "VTEP-MAC"),
        Column("route", "ROUTE HERE"),
    ]  # fmt: skip

    BINDINGS = [Binding("slash", "filter", "Filter", id="subnets.filter")]

    def build_rows(self) -> list[Row]:
        now = self.model.clock()
        rows = []
        for name, subnet in sorted(self.model.subnets.items(), key=lambda i: i[1].network):
            machine_id = self.model.machine_of_subnet(subnet)
            expires, style, order = self._expiry(subnet, now)
            cells = (
                str(subnet.network),
                cell(short_id(machine_id) if machine_id else "-"),
                cell(f"invalid: {subnet.problem}" if subnet.problem else subnet.public_ip or "-"),
                cell(subnet.backend or "-"),
                expires,
                cell(subnet.vtep_mac or "-"),
                # The device this host routes the subnet through, when the console runs on a node.
                cell(self.model.routes.get(subnet.network, "-")),
            )
            styles = ("bold", "", "", "", style, "dim", "green")
            rows.append(Row(name, cells, styles, data=order))
        return rows

    @staticmethod
    def _expiry(subnet: Subnet, now: float) -> tuple[str, str, float | None]:
        if not subnet.lease:
            return "reserved", "bold magenta", None
        if subnet.expires_at is None:
            return "…", "dim", None
        left = subnet.expires_at - now
        if left <= 0:
            return "expired", "bold red", 0.0
        return f"in {countdown(left)}", "yellow" if left < 300 else "", left

    def status_text(self) -> Text:
        config = self.model.network
        if config is None:
            return literal(self.model.network_error, "bold red")
        text = Text()
        text.append("Network ", style="dim")
        text.append(str(config.network), style="bold")
        text.append("  SubnetLen ", style="dim")
        text.append(str(config.subnet_len), style="bold")
        text.append("  range ", style="dim")
        text.append(f"{config.subnet_min.network_address} to {config.subnet_max.network_address}")
        text.append("  backend ", style="dim")
        text.append_text(literal(config.backend_type, "bold"))
        free = self.model.free_subnets()
        if free is not None:
            text.append(f"   {free[0]:,} of {free[1]:,} free", style="bold green")
        reserved = sum(1 for s in self.model.subnets.values() if not s.lease)
        if reserved:
            text.append(f"   {reserved:,} reserved", style="magenta")
        return text
