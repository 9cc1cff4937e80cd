"""Provides `clusterctl`: fleetctl's commands and output columns over fleet's model.

``args`` parses the command line (fleetctl's flags and their environment), ``commands``
runs the verbs over :mod:`backend.fleet.model` and the registry, and machines are reached
through :mod:`console.access`, which the console uses too.
"""

from __future__ import annotations

from console.ctl.args import VERSION, apply_environment, build_parser
from console.ctl.commands import Ctl, CtlError, execute, main, tabulate

__all__ = [
    "VERSION",
    "Ctl",
    "CtlError",
    "apply_environment",
    "build_parser",
    "execute",
    "main",
    "tabulate",
]
