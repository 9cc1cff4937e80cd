"""Provides `clusterctl`: fleetctl's commands and output columns over fleet's model.

``args`` parses the command line (fleetctl's flags and their environment); ``session`` holds
one invocation's store client, tunnel and output; ``listings``, ``lifecycle`` and ``remote``
are the verbs, thin over :mod:`backend.fleet.model` and the registry; ``commands`` runs one.
Machines are reached through :mod:`console.access`, which the console uses too.
"""

from __future__ import annotations

from clustertui.console.ctl.args import VERSION, apply_environment, build_parser
from clustertui.console.ctl.commands import execute, main
from clustertui.console.ctl.session import CtlError, Session, tabulate

__all__ = [
    "VERSION",
    "CtlError",
    "Session",
    "apply_environment",
    "build_parser",
    "execute",
    "main",
    "tabulate",
]
